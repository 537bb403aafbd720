"""IndexFiles (index_files.py) on its own, over a real store and files in tmp_path: what it
writes loads back with the same answers; a damaged, stale or missing file is rebuilt (None,
after a warning), never trusted and never an exception; a file of another store or model is
refused and left as it was. Read-only use, the lock and users' files: test_index_files_access."""

from __future__ import annotations

import os
import sqlite3

import pytest

from embeddable_db.engine.sqlite import index_files
from embeddable_db.engine.sqlite.live_index import LiveIndex
from embeddable_db.engine.sqlite.manifest import read_manifest
from embeddable_db.engine.sqlite.opening import EmptyStore
from embeddable_db.errors import ModelConflictError, StoreConflictError

from .stored import (
    DIM,
    MODEL,
    Connections,
    assert_answers_match_store,
    files_for,
    folder_bytes,
    load_with_warning,
    queries,
    read,
    row,
    rows,
    save,
    saved,
    view_of,
)
from .vectors import unit_vectors


# -- round trip ---------------------------------------------------------------------------------
def test_written_files_load_back_with_the_same_answers(store, folder, backend):
    view, files = saved(store, folder, backend)
    assert sorted(os.listdir(folder)) == sorted(
        [f"index.{backend}", f"index.{backend}.lock", "index.meta.json"]
    )
    loaded, manifest = files_for(store, folder, backend=backend).load(view.current_dim())
    assert loaded is not None and manifest.count == len(view) == 24
    assert (manifest.model, manifest.dim, manifest.backend) == (MODEL, DIM, backend)
    assert manifest.store_id == store.store_id and manifest.synced_seq == store.last_seq()
    assert loaded.synced_seq == store.last_seq() and loaded.pending == 0
    assert loaded.label_of == view.live.label_of and loaded.kind_of == view.live.kind_of
    probes = [*queries(), unit_vectors(20, DIM, seed=1)[5]]
    assert_answers_match_store(loaded, store, probes, k=8)
    assert_answers_match_store(loaded, store, probes, k=3, kind="faq")


def test_a_second_write_replaces_the_files_with_a_higher_generation(store, folder):
    view, files = saved(store, folder)
    first = read_manifest(files.metadata_path).generation
    store.upsert([row("late", seed=30)])
    save(view, files)
    manifest = read_manifest(files.metadata_path)
    assert manifest.generation == first + 1 == view.live.generation
    assert "late" in manifest.records.record_ids
    assert not [name for name in os.listdir(folder) if ".~tmp-" in name]


def test_an_empty_store_writes_a_manifest_only_and_loads_it(store, folder):
    view = view_of(store)
    files = files_for(store, folder)
    assert files.may_write(view.live)
    save(view, files)
    assert sorted(os.listdir(folder)) == ["index.faiss.lock", "index.meta.json"]
    loaded, manifest = files_for(store, folder).load(None)
    assert loaded is not None and len(loaded) == 0 and manifest.count == 0

    # Once SQLite holds vectors, that empty index says nothing about them: rebuild.
    store.upsert(rows(3))
    loaded, manifest = files_for(store, folder).load(DIM)
    assert loaded is None and manifest is not None


# -- stamps ------------------------------------------------------------------------------------
def test_stamps_say_whether_the_files_on_disk_are_the_ones_known(db, store, folder):
    store.upsert(rows(10))
    view = view_of(store)
    files = files_for(store, folder)
    assert files.stamp is None and not files.unchanged() and not files.current(view.live)
    save(view, files)
    assert files.unchanged() and files.current(view.live)

    store.upsert([row("new", seed=40)])
    view.sync()  # FAISS flat takes it in place: nothing pending, but not on disk
    assert view.live.pending == 0
    assert files.unchanged() and not files.current(view.live)

    loader = files_for(store, folder)
    loaded, _ = loader.load(DIM)
    assert loader.unchanged() and loader.current(loaded)

    # Another writer (another connection, another IndexFiles) replaces the files.
    theirs = db.store()
    their_view = view_of(theirs)
    save(their_view, files_for(theirs, folder))
    assert not files.unchanged() and not files.current(view.live)
    assert not loader.unchanged()

    os.unlink(files.metadata_path)
    assert not files_for(store, folder).unchanged()


def test_a_failed_write_forgets_the_stamp(store, folder, monkeypatch):
    view, files = saved(store, folder)
    assert files.unchanged()
    store.upsert([row("new", seed=40)])
    view.sync()

    def full_disk(path, manifest):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index_files, "write_manifest_temp", full_disk)
    before = folder_bytes(folder)
    with pytest.raises(OSError, match="No space"), files.locked():
        files.write(view.live)
    assert not files.unchanged() and not files.current(view.live)  # the next flush writes
    assert folder_bytes(folder) == before  # the old pair is intact, no temporary file left


# -- damaged and stale files --------------------------------------------------------------------
DAMAGED_MANIFESTS = {
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: b"\x00\xff not json at all",
    "empty": lambda data: b"",
    "edited": lambda data: data.replace(b'"r1",', b'"x1",', 1),  # its checksum fails
    "not an object": lambda data: b"[1, 2, 3]",
}


@pytest.mark.parametrize("damage", list(DAMAGED_MANIFESTS))
def test_a_damaged_manifest_is_rebuilt_after_a_warning(store, folder, caplog, damage, backend):
    _, files = saved(store, folder, backend)
    data = read(files.metadata_path)
    changed = DAMAGED_MANIFESTS[damage](data)
    assert changed != data
    with open(files.metadata_path, "wb") as handle:  # damaged in place
        handle.write(changed)
    (live, _), warnings = load_with_warning(files_for(store, folder, backend=backend), caplog)
    assert live is None
    assert len(warnings) == 1
    assert files.metadata_path in warnings[0] and "damaged" in warnings[0]


DAMAGED_INDEXES = {
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: bytes((b * 7 + 3) % 256 for b in data),  # same size
    "empty": lambda data: b"",
    "one byte flipped": lambda data: data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:],
}


@pytest.mark.parametrize("damage", [*DAMAGED_INDEXES, "missing"])
def test_a_damaged_or_missing_index_is_rebuilt_after_a_warning(
    store, folder, caplog, damage, backend
):
    _, files = saved(store, folder, backend)
    if damage == "missing":
        os.unlink(files.index_path)
    else:
        data = read(files.index_path)
        with open(files.index_path, "wb") as handle:
            handle.write(DAMAGED_INDEXES[damage](data))
    (live, manifest), warnings = load_with_warning(
        files_for(store, folder, backend=backend), caplog
    )
    assert live is None and manifest is not None and manifest.count == 24
    assert len(warnings) == 1
    assert files.index_path in warnings[0] and "cannot be used" in warnings[0]


def test_a_missing_manifest_is_said_once_there_are_vectors(store, folder, caplog):
    _, files = saved(store, folder)
    os.unlink(files.metadata_path)
    (live, manifest), warnings = load_with_warning(files_for(store, folder), caplog)
    assert (live, manifest) == (None, None)
    assert len(warnings) == 1 and "missing" in warnings[0]


def test_files_newer_than_the_database_are_not_trusted(store, folder, caplog):
    _, files = saved(store, folder)
    with store.write():  # the database restored from an older backup
        store.set_meta("seq", "2")
    (live, manifest), warnings = load_with_warning(files_for(store, folder), caplog)
    assert live is None and manifest is not None
    assert len(warnings) == 1 and "newer than its database" in warnings[0]


def test_files_of_another_backend_are_rebuilt_quietly(store, folder, caplog):
    _, files = saved(store, folder, "faiss")
    other = files_for(store, folder, backend="annoy")
    other.index_path = files.index_path  # the same files, opened with another backend
    (live, manifest), warnings = load_with_warning(other, caplog)
    assert live is None and manifest.backend == "faiss" and warnings == []


# -- files that are not this store's ----------------------------------------------------------
def test_a_manifest_of_another_store_is_refused_and_kept(tmp_path, store, folder):
    others = Connections(str(tmp_path / "other.db"))
    try:
        theirs = others.store()
        theirs.upsert(rows(6, seed=9))
        save(view_of(theirs), files_for(theirs, folder))
        before = folder_bytes(folder)

        store.upsert(rows(4))
        view = view_of(store)
        mine = files_for(store, folder)
        with pytest.raises(StoreConflictError, match="belongs to another store"):
            mine.load(DIM)
        with pytest.raises(StoreConflictError, match="another store"):
            mine.check_before_open()
        with pytest.raises(StoreConflictError), mine.locked():
            mine.write(view.live)
        assert folder_bytes(folder) == before
    finally:
        others.close()


def test_files_of_an_earlier_database_of_the_same_name_are_replaced(tmp_path, folder, caplog):
    path = str(tmp_path / "again.db")
    first = Connections(path)
    old = first.store()
    old.upsert(rows(6, seed=9))
    save(view_of(old), files_for(old, folder))
    first.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)

    second = Connections(path)  # deleted and created again: a new store id, the same name
    try:
        new = second.store()
        new.upsert(rows(3, seed=1))
        files = files_for(new, folder)
        files.check_before_open()
        (live, manifest), warnings = load_with_warning(files, caplog)
        assert (live, manifest) == (None, None)
        assert len(warnings) == 1 and "earlier database" in warnings[0]
        save(view_of(new), files)
        manifest = read_manifest(files.metadata_path)
        assert manifest.store_id == new.store_id and manifest.count == 3
    finally:
        second.close()


def test_another_models_manifest_is_refused_unless_a_model_change_is_allowed(store, folder):
    _, files = saved(store, folder)
    before = folder_bytes(folder)
    with pytest.raises(ModelConflictError, match="allow_model_change") as caught:
        files_for(store, folder, model="m2").load(None)
    assert "'m'" in str(caught.value) and "'m2'" in str(caught.value)

    changing = files_for(store, folder, model="m2", allow_model_change=True)
    live, manifest = changing.load(None)
    assert live is None and manifest.model == MODEL and changing.foreign
    empty = view_of(store, model="m2").live
    assert len(empty) == 0 and not changing.may_write(empty)
    with changing.locked():
        changing.write(empty)  # would claim there are no vectors: nothing is written
    assert folder_bytes(folder) == before

    store.upsert(rows(3, seed=5, model="m2"))  # the new model's vectors: now they may replace
    view = view_of(store, model="m2")
    assert changing.may_write(view.live)
    save(view, changing)
    manifest = read_manifest(files.metadata_path)
    assert manifest.model == "m2" and manifest.count == 3


def test_may_write(store, folder):
    store.upsert(rows(3, prefix="o", model="other"))
    empty = view_of(store).live
    files = files_for(store, folder)
    assert len(empty) == 0 and not files.may_write(empty)  # SQLite holds other models' vectors
    with files.locked():
        files.write(empty)
    assert sorted(os.listdir(folder)) == ["index.faiss.lock"]  # no index, no manifest

    store.upsert(rows(2))
    view = view_of(store)
    assert files.may_write(view.live)
    assert not files_for(store, folder, read_only=True).may_write(view.live)
    store.remove(["r0", "r1", "o0", "o1", "o2"])
    assert files.may_write(LiveIndex(None, None))  # nothing anywhere: an empty index is true


def test_a_store_without_its_table_loads_nothing(tmp_path, folder, store):
    """A read-only open of a database whose table was never made must not take its files."""
    save(view_of(store), files_for(store, folder))
    conn = sqlite3.connect(str(tmp_path / "bare.db"))
    try:
        empty = EmptyStore(conn, "embeddings")
        files = files_for(empty, folder, read_only=True)
        assert files.load(None) == (None, None)
    finally:
        conn.close()
