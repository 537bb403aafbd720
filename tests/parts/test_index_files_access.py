"""IndexFiles (index_files.py): who may touch the files. A read-only instance writes nothing,
not even the lock file; the lock is exclusive between instances (shared between readers);
a user's file at the index or metadata path is refused and kept."""

from __future__ import annotations

import os
import threading

import pytest

from embeddable_db.engine.sqlite import index_files
from embeddable_db.engine.sqlite.manifest import temp_path
from embeddable_db.errors import EmbeddingError, StoreConflictError

from .stored import (
    DIM,
    files_for,
    folder_bytes,
    load_with_warning,
    read,
    replace_file,
    row,
    rows,
    save,
    saved,
    view_of,
)

WAIT = 10.0  # seconds a thread may take to get somewhere; only reached when a test fails


# -- read-only ---------------------------------------------------------------------------------
def test_read_only_writes_nothing_where_there_is_nothing(store, folder):
    store.upsert(rows(5))
    view = view_of(store)
    files = files_for(store, folder, read_only=True)
    with files.locked():
        files.prepare()
        assert files.load(DIM) == (None, None)
        files.write(view.live)
    assert os.listdir(folder) == []  # not even the lock file


def test_read_only_reads_a_writers_files_and_changes_none(store, folder):
    view, writer = saved(store, folder)
    os.unlink(writer.lock.lock_file)
    stale_temp = temp_path(writer.index_path)  # as a save killed midway leaves
    with open(stale_temp, "wb") as handle:
        handle.write(b"half an index")
    store.upsert([row("later", seed=50)])
    view.sync()
    before = folder_bytes(folder)

    reader = files_for(store, folder, read_only=True)
    with reader.locked():
        reader.prepare()
        loaded, manifest = reader.load(DIM)
        reader.write(view.live)
    assert loaded is not None and manifest.count == 24 and reader.unchanged()
    assert folder_bytes(folder) == before  # no lock file, the temporary file kept

    with writer.locked():  # a writer clears what a killed save left
        writer.prepare()
    assert not os.path.exists(stale_temp)


def reader_racing_a_save(db, store, folder):
    """A read-only IndexFiles whose first read of the index file follows a save by another
    connection that replaced both files after the metadata was read."""
    _, writer = saved(store, folder)
    os.unlink(writer.lock.lock_file)  # no lock file: a reader reads without the lock
    theirs = db.store()
    their_view, their_files = view_of(theirs), files_for(theirs, folder)
    reader = files_for(store, folder, read_only=True)
    load_files, calls = reader._load_files, []

    def a_save_midway(manifest):
        if not calls:  # after the metadata was read, before the index file is
            theirs.upsert([row("midway", seed=88)])
            save(their_view, their_files)
        calls.append(manifest)
        return load_files(manifest)

    reader._load_files = a_save_midway
    return reader, calls


def test_a_reader_reads_again_when_a_save_replaced_the_files_meanwhile(db, store, folder):
    reader, calls = reader_racing_a_save(db, store, folder)
    live, manifest = reader.load(DIM)
    assert len(calls) == 2 and manifest.count == 25
    assert live is not None and "midway" in live.label_of and live.synced_seq == store.last_seq()


def test_a_reader_racing_a_save_warns_of_nothing(db, store, folder, caplog):
    reader, calls = reader_racing_a_save(db, store, folder)
    (live, _), warnings = load_with_warning(reader, caplog)
    assert live is not None and len(calls) == 2
    assert warnings == []


# -- the lock -----------------------------------------------------------------------------------
def hold_in_thread(files):
    """Hold ``files.locked()`` in a thread until ``release`` is set."""
    holding, release = threading.Event(), threading.Event()

    def hold():
        with files.locked():
            holding.set()
            release.wait(WAIT)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert holding.wait(WAIT)
    return thread, release


def enter_in_thread(files, events):
    entered = threading.Event()

    def enter():
        with files.locked():
            events.append("second in")
            entered.set()

    thread = threading.Thread(target=enter, daemon=True)
    thread.start()
    return thread, entered


@pytest.mark.parametrize("second_read_only", [False, True])
def test_the_lock_is_exclusive_between_two_instances(store, folder, second_read_only):
    first = files_for(store, folder)
    with first.locked():
        pass  # the lock file exists, as after any writer (a reader only uses an existing one)
    second = files_for(store, folder, read_only=second_read_only)
    events: list[str] = []
    holder, release = hold_in_thread(first)
    waiter, entered = enter_in_thread(second, events)
    assert not entered.wait(0.3)  # still waiting while the first holds it
    events.append("first out")
    release.set()
    assert entered.wait(WAIT)
    holder.join(WAIT)
    waiter.join(WAIT)
    assert events == ["first out", "second in"]


def test_two_readers_share_the_lock(store, folder):
    with files_for(store, folder).locked():
        pass
    holder, release = hold_in_thread(files_for(store, folder, read_only=True))
    try:
        waiter, entered = enter_in_thread(files_for(store, folder, read_only=True), [])
        assert entered.wait(WAIT)
        waiter.join(WAIT)
    finally:
        release.set()
        holder.join(WAIT)


def test_a_lock_held_too_long_is_said(store, folder, monkeypatch):
    monkeypatch.setattr(index_files, "LOCK_TIMEOUT_SECONDS", 0.05)
    first, second = files_for(store, folder), files_for(store, folder)
    with first.locked():
        with pytest.raises(EmbeddingError, match="delete the lock file"), second.locked():
            pass
    with second.locked():  # free again
        pass


# -- refusing a user's files --------------------------------------------------------------------
@pytest.mark.parametrize("which", ["index_path", "metadata_path"])
@pytest.mark.parametrize("content", [b"my notes, not an index", b'{"mine": true}'])
def test_check_before_open_refuses_a_users_file_and_keeps_it(store, folder, which, content):
    files = files_for(store, folder)
    path = getattr(files, which)
    with open(path, "wb") as handle:
        handle.write(content)
    with pytest.raises(StoreConflictError, match="not this store's") as caught:
        files.check_before_open()
    assert path in str(caught.value)
    assert os.listdir(folder) == [os.path.basename(path)]  # no lock file either
    assert read(path) == content


@pytest.mark.parametrize("content", [b"", b"\x00" * 4096])
def test_a_file_holding_nothing_may_be_replaced(store, folder, content):
    files = files_for(store, folder)
    with open(files.index_path, "wb") as handle:
        handle.write(content)
    files.check_before_open()


def test_a_users_file_put_in_place_of_the_stores_index_is_refused(store, folder):
    view, files = saved(store, folder)
    with open(files.index_path, "r+b") as handle:  # damaged in place: still the store's file
        handle.write(b"\xff" * 16)
    files.check_before_open()

    replace_file(files.index_path, b"a user's file, now at the index path")
    store.upsert([row("new", seed=40)])
    view.sync()
    for each in (files, files_for(store, folder)):
        with pytest.raises(StoreConflictError, match="not this store's index"):
            each.check_before_open()
        with pytest.raises(StoreConflictError), each.locked():
            each.write(view.live)
        assert read(each.index_path) == b"a user's file, now at the index path"
