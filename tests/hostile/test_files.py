"""Hostile paths (issue 10, items 1, 2, 13, 15, 21, 26, 27, 28, 31): the store replaces only its
own regular files, never the database, a user's file, a device or a FIFO; it says what is wrong
with a path in one clear line, and keeps the permissions a user gave its files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import sqlite3
import stat

import pytest
from hostile_helpers import NotesDB, file_bytes
from hostile_helpers import tree_digest as _tree_digest

from embeddable_db import EmbeddingError, HashingEncoder, InvalidInputError, StoreConflictError
from embeddable_db.databases import BotDB


def tree_digest(folder):
    """Every file's digest, leaving out what opening any WAL database creates (its -shm
    file and an empty -wal): the subclass's own sqlite3.connect makes those, not the store."""
    return {
        name: digest
        for name, digest in _tree_digest(folder).items()
        if not name.endswith("-shm") and not (name.endswith("-wal") and digest == _EMPTY)
    }


_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _notes(folder, name="n.db", **options):
    options.setdefault("encoder", HashingEncoder(16))
    return NotesDB(str(folder / name), **options)


def _filled(folder, name="n.db", count=5, **options):
    db = _notes(folder, name, **options)
    for i in range(count):
        db.add_note(f"note {i} about owls")
    db.backfill_embeddings()
    return db


class _Blocked(BaseException):
    """Not an OSError, which the store would catch and take for damage."""


@contextlib.contextmanager
def _deadline(seconds=20):
    """A FIFO must never block the store: fail the test instead of hanging the suite."""

    def alarm(signum, frame):
        raise _Blocked(f"the store blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _prepared_db(folder, name="n.db"):
    """A NotesDB file with its table and notes, but no store opened on it yet."""
    conn = sqlite3.connect(folder / name)
    conn.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes(body) VALUES (?)", [("owls",), ("larks",)])
    conn.commit()
    conn.close()
    return str(folder / name)


# -- item 1: files the store did not write ---------------------------------------------------------
@pytest.mark.parametrize("which", ["index_path", "metadata_path"])
@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_the_database_file_itself_is_refused(tmp_path, which, suffix):
    db = _filled(tmp_path)
    db.close()
    db.conn.close()
    before = tree_digest(tmp_path)
    target = str(tmp_path / "n.db") + suffix
    other = {"index_path": str(tmp_path / "x.index")} if which == "metadata_path" else {}
    with pytest.raises(StoreConflictError, match="database's own file") as info:
        _notes(tmp_path, **{which: target}, **other)
    assert target in str(info.value)
    assert tree_digest(tmp_path) == before


def test_an_index_whose_lock_file_would_be_the_database_is_refused(tmp_path):
    path = _prepared_db(tmp_path, "n.lock")
    before = tree_digest(tmp_path)
    with pytest.raises(StoreConflictError, match="lock file .* is the database's own file"):
        NotesDB(path, encoder=HashingEncoder(16), index_path=str(tmp_path / "n"),
                metadata_path=str(tmp_path / "n.json"))
    assert tree_digest(tmp_path) == before


def test_a_hard_link_to_the_database_is_refused(tmp_path):
    path = _prepared_db(tmp_path)
    os.link(path, tmp_path / "alias.index")
    before = tree_digest(tmp_path)
    with pytest.raises(StoreConflictError, match="database's own file"):
        _notes(tmp_path, index_path=str(tmp_path / "alias.index"))
    assert tree_digest(tmp_path) == before


def test_a_default_metadata_path_that_is_the_database_is_refused(tmp_path):
    """A database named bot_embeddings.json gets bot_embeddings.index beside it, whose
    default metadata path is the database itself."""
    with pytest.raises(StoreConflictError, match="database's own file"):
        BotDB(str(tmp_path / "bot_embeddings.json"), encoder=HashingEncoder(16))
    conn = sqlite3.connect(tmp_path / "bot_embeddings.json")  # still a database
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def _another_sqlite_file(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE precious(x)")
    conn.execute("INSERT INTO precious VALUES ('the user''s data')")
    conn.commit()
    conn.close()


FOREIGN = {
    "sqlite": _another_sqlite_file,
    "user-json": lambda p: open(p, "w").write('{"settings": {"theme": "dark"}}'),
    "random-bytes": lambda p: open(p, "wb").write(random.Random(1).randbytes(5000)),
    "text": lambda p: open(p, "w").write("my notes\n"),
}


@pytest.mark.parametrize("which", ["index", "metadata"])
@pytest.mark.parametrize("content", list(FOREIGN))
@pytest.mark.parametrize("filled", [True, False], ids=["with-vectors", "empty-store"])
def test_a_users_file_at_a_store_path_is_refused_and_kept(tmp_path, which, content, filled):
    path = _prepared_db(tmp_path)
    if not filled:
        sqlite3.connect(path).execute("DELETE FROM notes").connection.commit()
    foreign = tmp_path / f"mine.{which}"
    FOREIGN[content](foreign)
    options = {"index_path": str(tmp_path / "n.index")}
    options[f"{which}_path"] = str(foreign)
    before = tree_digest(tmp_path)
    with pytest.raises(StoreConflictError, match="choose another index_path") as info:
        db = NotesDB(path, encoder=HashingEncoder(16), **options)
        db.backfill_embeddings()
    assert str(foreign) in str(info.value)
    assert "delete the file" in str(info.value)
    assert tree_digest(tmp_path) == before, "refused, yet something was written"


def test_a_users_file_replacing_the_index_of_an_open_empty_store_is_not_deleted(tmp_path):
    """An empty store used to unlink whatever sat at its index path on every save."""
    db = _notes(tmp_path)
    db.save_index()
    FOREIGN["random-bytes"](db.index_path)
    before = file_bytes(db.index_path)
    with pytest.raises(StoreConflictError, match="not this store's index"):
        db.rebuild_index()
    assert file_bytes(db.index_path) == before


def test_own_files_damaged_by_a_copy_over_them_are_refused_but_damage_in_place_rebuilds(
    tmp_path, caplog
):
    db = _filled(tmp_path)
    db.close()
    db.conn.close()
    # In place (same inode, as tests/reliability/test_corrupt_files.py does): ours, rebuilt.
    with open(db.index_path, "r+b") as handle:
        handle.write(b"\xff" * 64)
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        again = _notes(tmp_path)
    assert again.embedding_count() == 5
    assert again.verify_index().ok
    again.close()
    again.conn.close()
    # A different file put at the path: the store never wrote it, so it is not replaced.
    shutil.copyfile(tmp_path / "n.db", tmp_path / "copy.tmp")
    os.replace(tmp_path / "copy.tmp", again.index_path)
    before = tree_digest(tmp_path)
    with pytest.raises(StoreConflictError, match="not this store's index"):
        _notes(tmp_path)
    assert tree_digest(tmp_path) == before


def test_a_stranger_reusing_a_replaced_files_inode_number_is_refused(tmp_path):
    """Inode numbers of deleted files are reused at once: after a save, the replaced files'
    ids must no longer vouch for whatever file gets them next."""
    db = _filled(tmp_path)
    freed = {(os.stat(p).st_dev, os.stat(p).st_ino) for p in (db.index_path, db.metadata_path)}
    db.add_embedding(99, {"body": "one more"}, "note")
    db.save_index()  # replaces both files: their inode numbers are free again
    for attempt in range(200):
        stranger = tmp_path / f"stranger{attempt}"
        FOREIGN["random-bytes"](stranger)
        st = os.stat(stranger)
        if (st.st_dev, st.st_ino) in freed:
            break
    else:
        pytest.skip("this file system did not reuse an inode number")
    os.replace(stranger, db.index_path)
    before = file_bytes(db.index_path)
    db.add_embedding(100, {"body": "and another"}, "note")
    with pytest.raises(StoreConflictError, match="not this store's index"):
        db.save_index()
    assert file_bytes(db.index_path) == before


def test_a_zero_filled_stranger_is_harmless_and_replaced(tmp_path):
    """An empty or zero-filled file holds nothing to lose: it may be replaced."""
    _prepared_db(tmp_path)
    (tmp_path / "z.index").write_bytes(b"\0" * 4096)
    (tmp_path / "z.json").write_bytes(b"")
    db = _notes(tmp_path, index_path=str(tmp_path / "z.index"))
    db.backfill_embeddings()
    assert db.verify_index().ok
    db.close()


# -- item 2: special files -------------------------------------------------------------------------
def _fifo(path):
    os.mkfifo(path)


def _null_copy(path):
    st = os.stat("/dev/null")
    os.mknod(path, stat.S_IFCHR | 0o666, st.st_rdev)


def _zero_link(path):
    os.symlink("/dev/zero", path)


SPECIAL = {"fifo": _fifo, "dev-null-copy": _null_copy, "link-to-dev-zero": _zero_link}


@pytest.mark.parametrize("which", ["index", "metadata"])
@pytest.mark.parametrize("kind", list(SPECIAL))
def test_special_files_are_refused_without_blocking(tmp_path, which, kind):
    path = _prepared_db(tmp_path)
    special = tmp_path / f"s.{which}"
    SPECIAL[kind](special)
    options = {"index_path": str(tmp_path / "n.index"), f"{which}_path": str(special)}
    with _deadline(), pytest.raises(StoreConflictError, match="not a regular file"):
        NotesDB(path, encoder=HashingEncoder(16), **options)
    assert not stat.S_ISREG(os.stat(special).st_mode), "the special file was replaced"
    assert not os.path.exists(tmp_path / "n.index")


@pytest.mark.parametrize("kind", ["fifo", "dev-null-copy"])
def test_a_special_file_appearing_while_open_is_not_replaced(tmp_path, kind):
    db = _filled(tmp_path)
    os.unlink(db.metadata_path)
    SPECIAL[kind](db.metadata_path)
    db.add_embedding(99, {"body": "one more"}, "note")
    with _deadline(), pytest.raises(StoreConflictError, match="not a regular file"):
        db.save_index()
    assert not stat.S_ISREG(os.stat(db.metadata_path).st_mode)


def test_a_fifo_replacing_the_index_of_an_open_store_does_not_block_a_reload(tmp_path):
    db = _filled(tmp_path)
    os.unlink(db.index_path)
    os.mkfifo(db.index_path)
    with _deadline(), pytest.raises(StoreConflictError, match="not a regular file"):
        db.load_index()
    assert stat.S_ISFIFO(os.stat(db.index_path).st_mode)


# -- item 13: neighbours' temporary files ----------------------------------------------------------
def test_opening_a_store_leaves_a_neighbours_in_flight_temp_files_alone(tmp_path):
    """``a.index`` and ``a.index.v2`` in one folder: opening the first mid-save of the second."""
    second = _filled(tmp_path, "b.db", index_path=str(tmp_path / "a.index.v2"))
    second.add_embedding(99, {"body": "a change to save"}, "note")
    second._engine.view.compact()
    backend = second._engine.view.live.backend
    save = backend.save
    opened = []

    def save_while_a_neighbour_opens(path):
        save(path)
        opened.append(_filled(tmp_path, "a.db", index_path=str(tmp_path / "a.index")))

    backend.save = save_while_a_neighbour_opens
    second.save_index()  # FileNotFoundError at publish when the neighbour swept its temp file
    assert opened and opened[0].verify_index().ok
    second.close()
    second.conn.close()
    again = _notes(tmp_path, "b.db", index_path=str(tmp_path / "a.index.v2"))
    assert again.embedding_count() == 6
    assert again.verify_index().ok
    names = sorted(os.listdir(tmp_path))
    assert not [n for n in names if "tmp" in n], names


def test_a_killed_writers_own_temp_files_are_still_swept(tmp_path):
    from embeddable_db.engine.sqlite.manifest import write_temp

    db = _filled(tmp_path)
    db.close()
    db.conn.close()
    stale = [write_temp(db.index_path, lambda p: open(p, "wb").write(b"half"))
             for _ in range(2)] + [write_temp(db.metadata_path, lambda p: None)]
    keep = tmp_path / ".n_embeddings.index.notes.tmp"  # a user's file of a similar name
    keep.write_text("keep me")
    _notes(tmp_path).close()
    assert not any(os.path.exists(p) for p in stale)
    assert keep.read_text() == "keep me"


# -- item 15: paths that are not UTF-8 -------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["bytes", "surrogate-str"])
@pytest.mark.parametrize("which", ["index_path", "metadata_path"])
def test_a_non_utf8_index_path_is_one_clear_error(tmp_path, spelling, which):
    path = _prepared_db(tmp_path)
    bad = os.fsencode(str(tmp_path)) + b"/\xff.index"
    value = bad if spelling == "bytes" else os.fsdecode(bad)
    options = {"index_path": str(tmp_path / "n.index"), which: value}
    before = tree_digest(tmp_path)
    with pytest.raises(InvalidInputError, match="not valid UTF-8"):
        NotesDB(path, encoder=HashingEncoder(16), **options)
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("which", ["path", "index_path", "data_dir"])
def test_a_database_with_a_non_utf8_path_is_one_clear_error(tmp_path, which):
    bad = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xff")
    options = {
        "path": {"path": bad + ".db"},
        "index_path": {"path": str(tmp_path / "b.db"), "index_path": bad + ".index"},
        "data_dir": {"data_dir": bad},
    }[which]
    with pytest.raises(InvalidInputError, match="not valid UTF-8"):
        BotDB(encoder=HashingEncoder(16), **options)
    assert os.listdir(tmp_path) == [], "nothing is created for a refused path"


def test_a_mixin_database_at_a_non_utf8_path_is_one_clear_error(tmp_path):
    conn_path = os.fsencode(str(tmp_path)) + b"/\xff.db"
    with pytest.raises(InvalidInputError, match="not valid UTF-8"):
        NotesDB(conn_path, encoder=HashingEncoder(16))


# -- item 21: symlinks -----------------------------------------------------------------------------
def test_symlinked_paths_are_resolved_and_share_the_targets_lock(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    db = _filled(tmp_path, index_path=str(real / "x.index"), metadata_path=str(real / "x.json"))
    db.close()
    db.conn.close()
    os.symlink(real / "x.index", tmp_path / "link.index")
    os.symlink(real / "x.json", tmp_path / "link.json")
    via_link = _notes(tmp_path, index_path=str(tmp_path / "link.index"),
                      metadata_path=str(tmp_path / "link.json"))
    direct = _notes(tmp_path, index_path=str(real / "x.index"),
                    metadata_path=str(real / "x.json"))
    assert via_link.index_path == direct.index_path == str(real / "x.index")
    assert via_link._engine.files.lock.lock_file == direct._engine.files.lock.lock_file
    via_link.add_embedding(99, {"body": "through the link"}, "note")
    via_link.save_index()
    assert os.path.islink(tmp_path / "link.index") and os.path.islink(tmp_path / "link.json")
    direct.load_index()
    assert direct.embedding_count() == 6
    assert not os.path.exists(tmp_path / "link.index.lock")


# -- item 26: umask and permission denied ----------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_new_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        db = _filled(tmp_path)
        db.save_index()
    finally:
        os.umask(old)
    for path in (db.index_path, db.metadata_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path


@pytest.mark.parametrize("which", ["index", "metadata"])
def test_an_unreadable_file_says_permission_denied(tmp_path, monkeypatch, caplog, which):
    """Tests run as root, which file modes do not stop: os.open is made to refuse instead."""
    db = _filled(tmp_path)
    db.close()
    db.conn.close()
    denied = getattr(db, f"{which}_path")
    before = tree_digest(tmp_path)
    real_open = os.open

    def denying_open(path, flags, *args, **kwargs):
        if os.fspath(path) == denied:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denying_open)
    with caplog.at_level(logging.WARNING, logger="embeddable_db"), pytest.raises(
        EmbeddingError, match="permission denied"
    ) as info:
        _notes(tmp_path)
    assert denied in str(info.value) and "chmod" in str(info.value)
    assert not [r for r in caplog.records if "rebuilding" in r.getMessage()]
    monkeypatch.undo()
    assert tree_digest(tmp_path) == before


def test_a_file_that_cannot_be_replaced_says_permission_denied(tmp_path, monkeypatch):
    """Another user's file in a sticky folder cannot be replaced: said so, naming the file."""
    db = _filled(tmp_path)
    db.add_embedding(99, {"body": "pending"}, "note")

    def denying_replace(src, dst):
        raise PermissionError(1, "Operation not permitted", dst)

    monkeypatch.setattr(os, "replace", denying_replace)
    with pytest.raises(EmbeddingError, match="permission denied to replace") as info:
        db.save_index()
    assert db.index_path in str(info.value)
    monkeypatch.undo()
    assert not [n for n in os.listdir(tmp_path) if "~tmp-" in n], "temporary files left behind"


# -- item 27: a recreated database -----------------------------------------------------------------
def test_a_recreated_database_rebuilds_with_a_warning_that_says_so(tmp_path, caplog):
    db = _filled(tmp_path)
    db.close()
    db.conn.close()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(tmp_path / "n.db") + suffix)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        again = _filled(tmp_path, count=3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "created again" in warnings[0] and "discarded" in warnings[0]
    assert again.embedding_count() == 3
    assert again.verify_index().ok
    again.close()
    again.conn.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        third = _notes(tmp_path)
    assert caplog.records == [], "the next open is silent"
    assert third.embedding_count() == 3


def test_a_manifest_of_another_database_is_still_refused(tmp_path):
    one = tmp_path / "one"
    two = tmp_path / "two"
    one.mkdir()
    two.mkdir()
    first = _filled(one, index_path=str(one / "x.index"))
    first.close()
    for name in ("x.index", "x.json"):
        shutil.copy(one / name, two / name)
    before = tree_digest(two)
    with pytest.raises(StoreConflictError, match="another store"):
        _filled(two, index_path=str(two / "x.index"))
    after = tree_digest(two)
    assert {k: after[k] for k in ("x.index", "x.json")} == {
        k: before[k] for k in ("x.index", "x.json")
    }


# -- item 28: a symlink at the lock path -----------------------------------------------------------
def test_a_symlink_planted_at_the_lock_path_is_named(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "n.index.lock")
    _prepared_db(tmp_path)
    with pytest.raises(EmbeddingError, match="is a symlink") as info:
        _notes(tmp_path, index_path=str(tmp_path / "n.index"))
    assert str(tmp_path / "n.index.lock") in str(info.value) and "delete it" in str(info.value)
    assert victim.read_text() == "precious"


def test_a_symlink_planted_at_the_lock_path_while_open_is_named(tmp_path):
    db = _filled(tmp_path)
    lock = db._engine.files.lock.lock_file
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock)
    os.symlink(tmp_path / "elsewhere", lock)
    db.add_embedding(99, {"body": "pending"}, "note")
    with pytest.raises(EmbeddingError, match="is a symlink"):
        db.save_index()


# -- item 31: file modes are kept ------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o444, 0o640])
def test_a_save_keeps_the_files_permissions(tmp_path, mode):
    """0444 is kept, not refused: the index is a cache of SQLite and must follow it, and a
    read-only mode never stopped os.replace in a writable folder; the user's bits survive."""
    db = _filled(tmp_path)
    os.chmod(db.index_path, mode)
    os.chmod(db.metadata_path, mode)
    generation = db._engine.view.live.generation
    db.add_embedding(99, {"body": "one more owl"}, "note")
    db.save_index()
    assert db._engine.view.live.generation == generation + 1
    for path in (db.index_path, db.metadata_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path
    db.close()
    db.conn.close()
    assert _notes(tmp_path).embedding_count() == 6
