"""Opening, closing and sharing a store the wrong way (issue 10, items 3, 14, 25 and 30).

3: opening with another model (``allow_model_change=True``) writes nothing; the store's real
   model still finds every vector afterwards.
25: ``read_only=True`` writes nothing (not even a lock file), searches a store whose index
   files are missing or stale, and refuses every write; SQLite errors name the file.
14: a store used in a child process after ``fork()`` says to open it again there.
30: after ``close()`` every public method says the store is closed, the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from hostile_helpers import HERE, NotesDB, tree_digest

from embeddable_db import EmbeddingError
from embeddable_db.databases import BotDB, BotRecord, WorkflowDB, WorkflowRecord
from embeddable_db.engine.sqlite.manifest import read_manifest
from embeddable_db.errors import ClosedStoreError, ReadOnlyError

BACKENDS = ["annoy", "faiss"]
SRC = str(HERE.parent.parent / "src")


def filled_notes(path, n=20, **options):
    """A closed NotesDB of ``n`` notes embedded with hash:32; returns the query vector of note 3."""
    db = NotesDB(str(path), model_name="hash:32", **options)
    for i in range(n):
        db.add_note(f"note {i} about subject {i % 7} and word{i}")
    db.backfill_embeddings()
    query = db.get_vector(3)
    db.close()
    db.conn.close()
    return query


def open_notes(path, **options):
    options.setdefault("model_name", "hash:32")
    return NotesDB(str(path), **options)


def shut(db):
    db.close()
    db.conn.close()


# -- item 3: opening with another model writes nothing ----------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_open_with_another_model_changes_no_file(tmp_path, backend):
    query = filled_notes(tmp_path / "n.db", backend=backend)
    before = tree_digest(tmp_path)
    other = open_notes(tmp_path / "n.db", model_name="hash:16", allow_model_change=True,
                       backend=backend)
    # The other model has no vectors yet: nothing to count or find, and nothing mixed in.
    assert other.embedding_count() == 0
    assert other.search_by_vector([1.0] * 16, top_k=3) == []
    assert other.model_counts() == {"hash:32": 20}
    shut(other)
    assert tree_digest(tmp_path) == before  # every file byte-identical
    real = open_notes(tmp_path / "n.db", backend=backend)
    assert real.embedding_count() == 20
    assert real.search_by_vector(query, top_k=1)[0][0] == "3"
    result = real.backfill_embeddings()
    assert (result.unchanged, result.embedded, result.reembedded) == (20, 0, 0)
    assert real.verify_index().ok
    shut(real)


def test_dry_run_and_save_with_another_model_change_no_file(tmp_path):
    """A dry run, and even save_index(), have nothing of the other model to write."""
    filled_notes(tmp_path / "n.db")
    before = tree_digest(tmp_path)
    other = open_notes(tmp_path / "n.db", model_name="hash:16", allow_model_change=True)
    result = other.backfill_embeddings(dry_run=True)
    assert result.reembedded == 20
    other.save_index()
    shut(other)
    assert tree_digest(tmp_path) == before
    assert open_notes(tmp_path / "n.db").embedding_count() == 20


def test_files_change_once_the_new_model_writes(tmp_path):
    """Only vectors of the new model replace the old model's files (then a backfill re-embeds)."""
    filled_notes(tmp_path / "n.db")
    other = open_notes(tmp_path / "n.db", model_name="hash:16", allow_model_change=True)
    assert other.backfill_embeddings().reembedded == 20
    shut(other)
    assert read_manifest(str(tmp_path / "n_embeddings.json")).model == "hash:16"
    again = open_notes(tmp_path / "n.db", model_name="hash:16")
    assert again.embedding_count() == 20
    shut(again)


def test_half_switched_store_opened_with_the_other_model_changes_no_file(tmp_path):
    filled_notes(tmp_path / "n.db")
    new = open_notes(tmp_path / "n.db", model_name="hash:16", allow_model_change=True)
    new.add_embedding(1, {"body": "note 1 again"}, "note")
    new.save_index()  # the files now hold the new model's one vector
    shut(new)
    before = tree_digest(tmp_path)
    old = open_notes(tmp_path / "n.db", allow_model_change=True)
    old.search_by_vector([1.0] * 32, top_k=3)
    shut(old)
    assert tree_digest(tmp_path) == before


def test_other_models_files_survive_an_open_that_can_search(tmp_path):
    """The files hold model B's vectors while SQLite's latest writes are model A's: an open
    with A (which can search its own vectors) and no writes leaves B's files alone."""
    filled_notes(tmp_path / "n.db")
    b = open_notes(tmp_path / "n.db", model_name="hash:16", allow_model_change=True)
    b.add_embedding(1, {"body": "note 1 again"}, "note")
    b.save_index()
    shut(b)
    b_files = {p.name: p.read_bytes() for p in tmp_path.glob("n_embeddings.*")}
    a = open_notes(tmp_path / "n.db", allow_model_change=True)
    a.add_embedding(1, {"body": "note 1 back"}, "note")  # A's again, and A's files
    shut(a)
    for name, content in b_files.items():
        (tmp_path / name).write_bytes(content)
    before = tree_digest(tmp_path)
    a = open_notes(tmp_path / "n.db", allow_model_change=True)
    assert a.embedding_count() == 20
    shut(a)
    assert tree_digest(tmp_path) == before


def test_empty_index_left_by_an_earlier_model_change_is_not_trusted(tmp_path):
    """Before the fix, such an open left an empty metadata file without a model: the real model
    then saw no vectors at all. Reopening now rebuilds from SQLite and finds them all."""
    query = filled_notes(tmp_path / "n.db")
    meta = tmp_path / "n_embeddings.json"
    data = json.loads(meta.read_text())
    data.update(model=None, dim=None, records=[], index_size=None, index_checksum=None)
    meta.write_text(json.dumps(data))
    os.remove(tmp_path / "n_embeddings.index")
    real = open_notes(tmp_path / "n.db")
    assert real.embedding_count() == 20
    assert real.search_by_vector(query, top_k=1)[0][0] == "3"
    assert real.backfill_embeddings().unchanged == 20
    shut(real)


# -- item 25: read-only ----------------------------------------------------------------------------
class ReadOnlyNotes(NotesDB):
    """NotesDB on a connection that cannot write (NotesDB itself creates its table)."""

    def __init__(self, path, **options):
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        super(NotesDB, self).__init__(**options)


WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    sys.path.insert(0, sys.argv[3])
    from conftest import NotesDB
    db = NotesDB(sys.argv[1], model_name="hash:32", backend=sys.argv[4])
    deadline = time.monotonic() + 1.0
    n = 0
    while time.monotonic() < deadline:
        for _ in range(5):
            n += 1
            db.add_embedding(f"w{n}", {"body": f"written while reading {n} w{n}"}, "note")
        db.remove_embedding(f"w{n - 2}")
        db.save_index()  # replaces the index and its metadata, again and again
    db.close()
    print(n)
    """
)


def test_read_only_open_while_another_process_saves(tmp_path, backend="annoy"):
    """Read-only opens take no lock: while a writer replaces the files over and over, every
    open still finds each vector it holds under its own id."""
    path = tmp_path / "n.db"
    filled_notes(path, backend=backend)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writer = subprocess.Popen(
        [sys.executable, str(script), str(path), SRC, str(HERE.parent), backend],
        stdout=subprocess.PIPE, text=True,
    )
    opens = 0
    try:
        while writer.poll() is None:
            db = ReadOnlyNotes(path, model_name="hash:32", backend=backend, read_only=True)
            assert db.embedding_count() >= 20
            for key in ("3", "17"):
                vector = db.get_vector(key)
                assert db.search_by_vector(vector, top_k=1)[0][0] == key
            report = db.verify_index()
            assert report.ok, report.problems
            db.close()
            db.conn.close()
            opens += 1
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0 and int(writer.stdout.read()) > 10
    assert opens > 3
def bots(n=12):
    subjects = ["invoices", "weather", "thumbnails", "deployments", "recipes", "backups"]
    return [
        BotRecord(f"bot {i}", purpose=f"handles {subjects[i % 6]} number {i}", tags=[f"t{i}"])
        for i in range(n)
    ]


def filled_bots(data_dir, backend="annoy"):
    """A closed BotDB with 12 bots; returns what a search answered."""
    with BotDB(data_dir=data_dir, model_name="hash:32", backend=backend) as db:
        for bot in bots():
            db.add(bot)
        db.save_index()
        return [(hit.record_id, round(hit.distance, 5)) for hit in db.search("weather", top_k=4)]


def digest_without_sqlite_sidecars(folder):
    """Every file but SQLite's -wal/-shm, which SQLite itself may create for a WAL reader."""
    return {
        name: digest for name, digest in tree_digest(folder).items()
        if not name.endswith(("-wal", "-shm"))
    }


def remove_lock_files(folder):
    for path in folder.rglob("*.lock"):
        path.unlink()


def leave_files_behind(data, change, backend="annoy"):
    """Apply ``change(db)`` with a writable BotDB, then put back the index files as they were:
    intact files that are behind SQLite (as after a crash, or another process's writes)."""
    folder = data / "bot"
    saved = {path.name: path.read_bytes() for path in folder.glob("bot_embeddings.*")
             if not path.name.endswith(".lock")}
    with BotDB(data_dir=data, model_name="hash:32", backend=backend) as writer:
        change(writer)
    for name, content in saved.items():
        (folder / name).write_bytes(content)


def ghosts(n, first=1000):
    """Vectors for ``n`` records that have no row (search skips them; backfill would drop them)."""
    return lambda db: db.add_embeddings(
        [(f"bot:{first + i}", BotRecord(f"ghost {i}", purpose="haunts"), "bot") for i in range(n)]
    )


@pytest.mark.parametrize("damage", ["intact", "no index files", "stale index"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_open_writes_nothing_and_still_searches(tmp_path, backend, damage):
    data = tmp_path / "data"
    answer = filled_bots(data, backend)
    if damage == "no index files":
        for path in (data / "bot").glob("bot_embeddings.*"):
            path.unlink()
    elif damage == "stale index":
        leave_files_behind(data, ghosts(3), backend)
    remove_lock_files(data)
    before = digest_without_sqlite_sidecars(tmp_path)
    db = BotDB(data_dir=data, model_name="hash:32", backend=backend, read_only=True)
    hits = [(hit.record_id, round(hit.distance, 5)) for hit in db.search("weather", top_k=4)]
    assert hits == answer
    assert db.count() == 12 and db.get(2).name == "bot 1" and len(db.fetch(3)) == 3
    expected = 15 if damage == "stale index" else 12
    assert db.embedding_count() == expected
    report = db.verify_index()
    assert report.sqlite_count == report.index_count == expected
    assert db.backfill_embeddings(dry_run=True).unchanged == 12
    db.load_index()
    assert db.embedding_count() == expected
    db.close()
    assert digest_without_sqlite_sidecars(tmp_path) == before
    assert not list(data.rglob("*.lock")), "a read-only open created a lock file"
    assert not list(data.rglob("*.tmp*"))


def test_read_only_big_delta_is_compacted_in_memory_only(tmp_path, monkeypatch):
    """Files far behind SQLite: a writable open would compact and write; read-only does it in
    memory, both at open and when a search catches up with a writer's new vectors."""
    import embeddable_db.engine.sqlite.live_view as live_view

    data = tmp_path / "data"
    answer = filled_bots(data)
    leave_files_behind(data, ghosts(30))
    monkeypatch.setattr(live_view, "MIN_PENDING", 2)
    monkeypatch.setattr(live_view, "MAX_PENDING", 2)
    remove_lock_files(data)
    before = digest_without_sqlite_sidecars(tmp_path)
    db = BotDB(data_dir=data, model_name="hash:32", read_only=True)
    assert db.embedding_count() == 42
    assert digest_without_sqlite_sidecars(tmp_path) == before
    monkeypatch.setattr(live_view, "MIN_PENDING", 10_000)
    monkeypatch.setattr(live_view, "MAX_PENDING", 50_000)
    with BotDB(data_dir=data, model_name="hash:32") as writer:  # another writer, meanwhile
        ghosts(5, first=2000)(writer)
        writer._engine._can_defer_flush = lambda: True
    remove_lock_files(data)
    before = digest_without_sqlite_sidecars(tmp_path)
    monkeypatch.setattr(live_view, "MIN_PENDING", 2)
    monkeypatch.setattr(live_view, "MAX_PENDING", 2)
    assert db.embedding_count() == 47  # caught up, compacted in memory
    assert [(hit.record_id, round(hit.distance, 5)) for hit in db.search("weather", top_k=4)] == (
        answer
    )
    db.close()
    assert digest_without_sqlite_sidecars(tmp_path) == before
    assert not list(data.rglob("*.lock"))


WRITES = {
    "add": lambda db: db.add(BotRecord("new bot", purpose="new")),
    "update": lambda db: db.update(1, purpose="changed"),
    "delete": lambda db: db.delete(1),
    "add_embedding": lambda db: db.add_embedding("bot:99", BotRecord("x", purpose="y"), "bot"),
    "add_embeddings": lambda db: db.add_embeddings([("bot:99", BotRecord("x", purpose="y"), "bot")]),
    "store_embeddings": lambda db: db.store_embeddings([]),
    "remove_embedding": lambda db: db.remove_embedding("bot:1"),
    "remove_embeddings": lambda db: db.remove_embeddings(["bot:1"]),
    "update_embedding_version": lambda db: db.update_embedding_version("bot:1"),
    "backfill_embeddings": lambda db: db.backfill_embeddings(),
    "save_index": lambda db: db.save_index(),
    "rebuild_index": lambda db: db.rebuild_index(),
    "verify_index(repair=True)": lambda db: db.verify_index(repair=True),
}


def test_read_only_refuses_every_write_and_changes_nothing(tmp_path):
    data = tmp_path / "data"
    filled_bots(data)
    remove_lock_files(data)
    before = digest_without_sqlite_sidecars(tmp_path)

    class Unusable:
        def encode(self, texts):
            raise AssertionError("a refused write must not encode anything")

    db = BotDB(data_dir=data, model_name="hash:32", read_only=True)
    db._encoding._encoder = Unusable()  # the encoder the store would call (encoding.py)
    for name, write in WRITES.items():
        with pytest.raises(ReadOnlyError) as refused:
            write(db)
        assert "BotDB opened read-only" in str(refused.value), name
        assert "without read_only=True" in str(refused.value), name
    db.close()
    assert digest_without_sqlite_sidecars(tmp_path) == before
    assert not list(data.rglob("*.lock"))
    with BotDB(data_dir=data, model_name="hash:32") as again:
        assert again.count() == 12 and again.get(1).purpose.startswith("handles")


def test_read_only_workflow_status_update_is_refused(tmp_path):
    data = tmp_path / "data"
    with WorkflowDB(data_dir=data, model_name="hash:32") as db:
        db.add(WorkflowRecord(["step one"], title="flow"))
    with WorkflowDB(data_dir=data, model_name="hash:32", read_only=True) as db:
        with pytest.raises(ReadOnlyError, match="opened read-only"):
            db.update_status(1, "done")
        assert db.get(1).status != "done"


def test_read_only_missing_database_creates_nothing(tmp_path):
    with pytest.raises(EmbeddingError, match=r"bot\.db.*no such database file"):
        BotDB(data_dir=tmp_path / "data", model_name="hash:32", read_only=True)
    assert list(tmp_path.iterdir()) == []


def test_read_only_store_without_an_embeddings_table_is_empty(tmp_path):
    """The mixin on a database never embedded: read-only creates no table, finds nothing."""
    path = tmp_path / "n.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes(body) VALUES ('a lonely note')")
    conn.commit()
    conn.close()
    before = tree_digest(tmp_path)
    db = ReadOnlyNotes(path, model_name="hash:32", read_only=True)
    assert db.embedding_count() == 0
    assert db.search_by_vector([1.0] * 32, top_k=3) == []
    assert db.model_counts() == {}
    assert db.backfill_embeddings(dry_run=True).embedded == 1
    assert db.verify_index().sqlite_count == 0
    db.close()
    db.conn.close()
    assert digest_without_sqlite_sidecars(tmp_path) == {
        k: v for k, v in before.items() if not k.endswith(("-wal", "-shm"))
    }
    tables = sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("notes",)]


def test_read_only_needs_tables_it_cannot_create(tmp_path):
    path = tmp_path / "bot.db"
    sqlite3.connect(path).execute("CREATE TABLE unrelated(x)").connection.commit()
    before = tree_digest(tmp_path)
    with pytest.raises(ReadOnlyError, match=r"bot\.db has no up-to-date table 'bots'.*without read_only"):
        BotDB(path, model_name="hash:32", read_only=True)
    assert tree_digest(tmp_path) == before


def test_read_only_is_a_bool(tmp_path):
    with pytest.raises(ValueError, match="read_only must be True or False"):
        BotDB(data_dir=tmp_path / "data", model_name="hash:32", read_only="yes")
    assert list(tmp_path.iterdir()) == []


MOUNT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[2])
    from embeddable_db.databases import BotDB
    from embeddable_db.errors import EmbeddingError, ReadOnlyError
    out = {}
    try:
        BotDB(data_dir=sys.argv[1], model_name="hash:32")
    except EmbeddingError as exc:
        out["writable"] = [type(exc).__name__, str(exc)]
    with BotDB(data_dir=sys.argv[1], model_name="hash:32", read_only=True) as db:
        out["hits"] = [[h.record_id, round(h.distance, 5)] for h in db.search("weather", top_k=4)]
        out["count"] = db.embedding_count()
        out["ok"] = db.verify_index().ok
        try:
            db.add(db.get(1))
        except ReadOnlyError as exc:
            out["add"] = str(exc)
    print(json.dumps(out))
    """
)


def test_read_only_mount(tmp_path):
    """A real read-only mount (root cannot write there either): a writable open says which
    file it cannot write; a read-only open searches, counts and verifies."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount")
    data = tmp_path / "data"
    answer = filled_bots(data)
    remove_lock_files(data)
    mounted = tmp_path / "ro"
    mounted.mkdir()
    script = tmp_path / "probe.py"
    script.write_text(MOUNT_SCRIPT)
    mount = f"mount --bind {data} {mounted} && mount -o remount,bind,ro {mounted}"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"{mount} && ! touch {mounted}/x"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.strip()}")
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{mount} && {sys.executable} {script} {mounted} {SRC}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    _reads_but_refuses_writes(json.loads(proc.stdout), answer)


# -- items 30 and 14: closed, and inherited through fork() ------------------------------------------
MIXIN_CALLS = {
    "get_vector": lambda db: db.get_vector("1"),
    "embedding_count": lambda db: db.embedding_count(),
    "model_counts": lambda db: db.model_counts(),
    "search_by_vector": lambda db: db.search_by_vector([1.0] * 32, top_k=2),
    "search_by_text": lambda db: db.search_by_text("note", top_k=2),
    "encode_texts": lambda db: db.encode_texts(["note"]),
    "encode_text": lambda db: db.encode_text("note"),
    "add_embedding": lambda db: db.add_embedding("1", {"body": "x"}, "note"),
    "add_embeddings": lambda db: db.add_embeddings([("1", {"body": "x"}, "note")]),
    "prepare_embeddings": lambda db: db.prepare_embeddings([("1", {"body": "x"}, "note")]),
    "store_embeddings": lambda db: db.store_embeddings([]),
    "remove_embedding": lambda db: db.remove_embedding("1"),
    "remove_embeddings": lambda db: db.remove_embeddings(["1"]),
    "update_embedding_version": lambda db: db.update_embedding_version("1"),
    "update_embedding_versions": lambda db: db.update_embedding_versions(["1"]),
    "backfill_embeddings": lambda db: db.backfill_embeddings(),
    "backfill_embeddings(dry_run)": lambda db: db.backfill_embeddings(dry_run=True),
    "save_index": lambda db: db.save_index(),
    "load_index": lambda db: db.load_index(),
    "rebuild_index": lambda db: db.rebuild_index(),
    "verify_index": lambda db: db.verify_index(),
}
RECORD_CALLS = {
    **{name: call for name, call in MIXIN_CALLS.items() if "embedding" not in name},
    "get_vector": lambda db: db.get_vector("bot:1"),
    "add_embedding": lambda db: db.add_embedding("bot:1", BotRecord("x", purpose="y"), "bot"),
    "remove_embedding": lambda db: db.remove_embedding("bot:1"),
    "backfill_embeddings": lambda db: db.backfill_embeddings(),
    "embedding_count": lambda db: db.embedding_count(),
    "add": lambda db: db.add(BotRecord("new bot", purpose="new")),
    "get": lambda db: db.get(1),
    "update": lambda db: db.update(1, purpose="changed"),
    "delete": lambda db: db.delete(1),
    "fetch": lambda db: db.fetch(3),
    "count": lambda db: db.count(),
    "search": lambda db: db.search("weather", top_k=2),
    "search(vector)": lambda db: db.search([1.0] * 32, top_k=2),
    "iter_records": lambda db: list(db.iter_records()),
    "find_by_name": lambda db: db.find_by_name("bot 1"),
}


def outcomes(db, calls):
    """name -> the error each call raised (type and message), or "returned"."""
    out = {}
    for name, call in calls.items():
        try:
            call(db)
        except Exception as exc:  # noqa: BLE001 - what the user sees is the point
            out[name] = [type(exc).__name__, str(exc)]
        else:
            out[name] = "returned"
    return out


def test_closed_store_says_so_from_every_method(tmp_path):
    filled_notes(tmp_path / "n.db")
    notes = open_notes(tmp_path / "n.db")
    notes.close()  # the connection stays open: it is the caller's
    filled_bots(tmp_path / "data")
    bots_db = BotDB(data_dir=tmp_path / "data", model_name="hash:32")
    bots_db.close()
    before = digest_without_sqlite_sidecars(tmp_path)
    for db, calls in ((notes, MIXIN_CALLS), (bots_db, RECORD_CALLS)):
        name = type(db).__name__
        for call, outcome in outcomes(db, calls).items():
            assert outcome == [ClosedStoreError.__name__, f"{name} is closed: open it again ({name}(...)) "
                               "to use it"], call
        assert db.try_add_embedding("bot:1", BotRecord("x", purpose="y"), "bot") is False
        db.close()  # twice is fine
    notes.conn.close()
    assert digest_without_sqlite_sidecars(tmp_path) == before


def run_in_child(work) -> dict:
    """Run ``work()`` in a child made by os.fork(); returns the JSON it produced."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(read_end)
            with os.fdopen(write_end, "w") as out:
                json.dump(work(), out)
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as result:
        text = result.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
    return json.loads(text)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forked_child_is_told_to_open_the_store_again(tmp_path, backend):
    data = tmp_path / "data"
    answer = filled_bots(data, backend)
    db = BotDB(data_dir=data, model_name="hash:32", backend=backend)
    db.add(BotRecord("late bot", purpose="added after the last save"))  # close() would flush
    before = tree_digest(tmp_path)

    def child():
        seen = outcomes(db, RECORD_CALLS)
        db.close()  # must neither flush nor touch the parent's files or connection
        after_close = outcomes(db, {"count": lambda d: d.count()})
        with BotDB(data_dir=data, model_name="hash:32", backend=backend) as mine:
            hits = [[hit.record_id, round(hit.distance, 5)] for hit in mine.search("weather", 4)]
        return {"seen": seen, "after_close": after_close, "hits": hits}

    out = run_in_child(child)
    for call, outcome in out["seen"].items():
        kind, message = outcome
        assert kind == ClosedStoreError.__name__, (call, outcome)
        assert "fork()" in message and "open the store again in the child process" in message
    assert out["after_close"]["count"][0] == "ClosedStoreError"
    assert len(out["hits"]) == 4
    assert tree_digest(tmp_path) == before, "the child's calls or close() changed the files"
    # The parent's store is untouched and still works.
    assert db.count() == 13
    assert [(h.record_id, round(h.distance, 5)) for h in db.search("weather", top_k=4)] != []
    assert db.search("weather", top_k=4)[0].record_id == answer[0][0]
    db.add(BotRecord("parent bot", purpose="after the fork"))
    db.close()
    with BotDB(data_dir=data, model_name="hash:32", backend=backend) as again:
        assert again.count() == 14 and again.verify_index().ok


def test_forked_child_of_a_mixin_store(tmp_path):
    filled_notes(tmp_path / "n.db")
    db = open_notes(tmp_path / "n.db")
    db.add_embedding("99", {"body": "pending"}, "note")
    before = tree_digest(tmp_path)

    def child():
        seen = outcomes(db, MIXIN_CALLS)
        db.close()
        return seen

    for call, (kind, message) in run_in_child(child).items():
        assert kind == "ClosedStoreError" and "open the store again in the child" in message, call
    assert tree_digest(tmp_path) == before
    assert db.embedding_count() == 21
    shut(db)


def test_read_only_copy_searched_by_another_user(tmp_path):
    """``chmod -R a-w`` on a copy, read by a user other than root (whom permissions stop)."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to run as another user")
    import stat
    import tempfile

    user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    can_import = subprocess.run(
        [*user, "-c", f"import sys; sys.path.insert(0, {SRC!r}); import embeddable_db.databases"],
        capture_output=True, text=True, timeout=120, cwd="/",
    )
    if can_import.returncode != 0:  # e.g. a checkout or virtualenv under a 0700 folder
        pytest.skip(f"user 65534 cannot import this checkout: {can_import.stderr.strip()[-200:]}")
    answer = filled_bots(tmp_path / "data")
    remove_lock_files(tmp_path / "data")
    shared = tempfile.mkdtemp(prefix="embeddable-ro-")
    try:
        copy = os.path.join(shared, "data")
        shutil.copytree(tmp_path / "data", copy)
        script = os.path.join(shared, "probe.py")
        with open(script, "w") as handle:
            handle.write(MOUNT_SCRIPT)
        for root, dirs, files in os.walk(shared):
            for name in dirs + files + [""]:
                path = os.path.join(root, name)
                mode = stat.S_IMODE(os.stat(path).st_mode) | 0o555 if os.path.isdir(path) else 0o444
                os.chmod(path, mode & ~0o222)
        before = tree_digest(shared)
        proc = subprocess.run(
            [*user, script, copy, SRC],
            capture_output=True, text=True, timeout=120, cwd="/",
        )
        if proc.returncode != 0 and "setpriv" in proc.stderr:
            pytest.skip(f"cannot switch user: {proc.stderr.strip()}")
        assert proc.returncode == 0, proc.stderr
        _reads_but_refuses_writes(json.loads(proc.stdout), answer)
        assert tree_digest(shared) == before  # not even SQLite's -wal/-shm
    finally:
        for root, dirs, _ in os.walk(shared):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
        os.chmod(shared, 0o755)
        shutil.rmtree(shared)


def test_reopening_each_database_changes_no_file(tmp_path):
    """Open, search and close each of the six databases, writable then read-only: intact
    files stay byte-identical (a writable open only repairs a damaged or missing cache)."""
    from databases.cases import CASES

    for name, case in CASES.items():
        data = tmp_path / name
        with case.cls(data_dir=data, model_name="hash:32") as db:
            for record in case.records():
                db.add(record)
        before = tree_digest(data)
        for read_only in (False, True, False):
            with case.cls(data_dir=data, model_name="hash:32", read_only=read_only) as db:
                assert len(db.search(case.queries[0], top_k=3)) == 3
                assert db.count() == len(case.records())
                assert db.verify_index().ok
            after = tree_digest(data)
            if read_only:  # SQLite's own -wal/-shm may appear beside a WAL database
                after = {k: v for k, v in after.items() if not k.endswith(("-wal", "-shm"))}
            assert after == before, (name, read_only)


def _reads_but_refuses_writes(out: dict, answer) -> None:
    """What the read-only child reported: its search, count and verify worked, and opening
    to write and adding were refused saying what to do."""
    kind, message = out["writable"]
    assert kind == "ReadOnlyError" and "bot.db" in message and "read_only=True" in message
    assert [tuple(hit) for hit in out["hits"]] == answer
    assert out["count"] == 12 and out["ok"]
    assert "opened read-only" in out["add"]
