"""Issue 10, items 4, 5, 18, 22 and 31: input that got past the checks.

A careless user shares one embeddings table between two classes, passes a kind or source id
SQLite cannot store (or 1 MB of it), an embedding_version past SQLite's integers, a model of
ten billion dimensions or an index option that builds for minutes, or the same id twice.
Each is refused before anything is written (or, for duplicates, counted as what was stored),
and a refused call inside the caller's own transaction leaves the caller's work in place.
"""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest
from hostile_helpers import NotesDB, VectorDB, file_bytes, sqlite_dump, tree_digest

from embeddable_db import (
    BotDB,
    BotRecord,
    EmbeddableDBMixin,
    HashingEncoder,
    InvalidInputError,
    StoreConflictError,
)


def _notes(path, **options):
    options.setdefault("encoder", HashingEncoder(16))
    return NotesDB(str(path), **options)


def _close(db):
    db.close()
    db.conn.close()


def _committed_notes(path) -> list[str]:
    """What another connection sees: only committed rows."""
    conn = sqlite3.connect(str(path))
    try:
        return [body for (body,) in conn.execute("SELECT body FROM notes ORDER BY id")]
    finally:
        conn.close()


def _store_files(folder, name="notes"):
    return file_bytes(folder / f"{name}_embeddings.index", folder / f"{name}_embeddings.json")


class TodoDB(EmbeddableDBMixin):
    """Another store class on the same SQLite file, keeping the default embedding_table."""

    def __init__(self, path, **options):
        self.conn = sqlite3.connect(str(path), timeout=60)
        self.conn.execute("CREATE TABLE IF NOT EXISTS todos(id INTEGER PRIMARY KEY, task TEXT)")
        self.conn.commit()
        options.setdefault("encoder", HashingEncoder(16))
        super().__init__(**options)

    def embedding_text(self, record):
        return record["task"]

    def iter_records(self):
        for rid, task in self.conn.execute("SELECT id, task FROM todos ORDER BY id"):
            yield f"todo-{rid}", {"task": task}, "todo"


# -- item 5: bad kind, source_id or embedding_version; the caller's transaction ----------------
@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda db: db.add_embedding(1, {"body": "x"}, "\ud800"), "kind"),
        (lambda db: db.add_embedding(1, {"body": "x"}, "note", source_id="\udfff"), "source_id"),
        (lambda db: db.add_embeddings([(1, {"body": "x"}, "note")], source_ids=["a\ud800"]),
         "source_id"),
        (lambda db: db.update_embedding_versions(["seed"], embedding_version=2**63),
         "embedding_version"),
        (lambda db: db.update_embedding_version("seed", embedding_version=2**64 + 1),
         "embedding_version"),
    ],
)
def test_bad_input_is_refused_before_writing_and_keeps_the_callers_pending_row(
    tmp_path, call, named
):
    db = _notes(tmp_path / "notes.db")
    db.add_embedding("seed", {"body": "seed text"}, "note")
    db.save_index()
    stored = sqlite_dump(tmp_path / "notes.db")
    files = _store_files(tmp_path)
    db.conn.execute("INSERT INTO notes(body) VALUES ('my own row')")  # not committed
    with pytest.raises(InvalidInputError, match=named) as error:
        call(db)
    assert "Unicode" in str(error.value) or "2**63" in str(error.value)
    # The caller's transaction is still open, with its row, and commits as usual.
    assert db.conn.in_transaction
    assert db.conn.execute("SELECT body FROM notes").fetchall() == [("my own row",)]
    assert sqlite_dump(tmp_path / "notes.db") == stored  # nothing of the store's was written
    assert _store_files(tmp_path) == files
    db.conn.commit()
    assert _committed_notes(tmp_path / "notes.db") == ["my own row"]
    assert db.embedding_count() == 1
    _close(db)


def test_a_failing_write_in_the_callers_transaction_rolls_back_only_the_stores_changes(tmp_path):
    db = _notes(tmp_path / "notes.db")
    db.add_embedding("seed", {"body": "seed text"}, "note")
    # Something SQLite itself refuses mid-write (here the user's own trigger).
    db.conn.execute(
        "CREATE TRIGGER no_more BEFORE INSERT ON embeddings "
        "BEGIN SELECT RAISE(ABORT, 'no more vectors'); END"
    )
    db.conn.commit()
    db.conn.execute("INSERT INTO notes(body) VALUES ('my own row')")
    with pytest.raises(sqlite3.IntegrityError, match="no more vectors"):
        db.add_embedding("new", {"body": "new text"}, "note")
    assert db.conn.in_transaction  # the store rolled back to its savepoint, not everything
    db.conn.commit()
    assert _committed_notes(tmp_path / "notes.db") == ["my own row"]
    assert db.get_vector("new") is None
    assert db.embedding_count() == 1
    # A successful write leaves the commit to the transaction's owner: row and vector
    # commit together when the caller commits.
    db.conn.execute("DROP TRIGGER no_more")
    db.conn.commit()
    db.conn.execute("INSERT INTO notes(body) VALUES ('second row')")
    db.add_embedding("new", {"body": "new text"}, "note")
    assert db.conn.in_transaction
    assert _committed_notes(tmp_path / "notes.db") == ["my own row"]
    db.conn.commit()
    assert _committed_notes(tmp_path / "notes.db") == ["my own row", "second row"]
    assert db.embedding_count() == 2
    _close(db)


def test_embedding_version_past_sqlite_integers_is_refused_at_construction(tmp_path):
    db = _notes(tmp_path / "notes.db")
    db.add_embedding("seed", {"body": "seed"}, "note")
    _close(db)
    stored, files = sqlite_dump(tmp_path / "notes.db"), _store_files(tmp_path)
    with pytest.raises(InvalidInputError, match=r"embedding_version must be at most 2\*\*63 - 1"):
        _notes(tmp_path / "notes.db", embedding_version=2**63)
    assert (sqlite_dump(tmp_path / "notes.db"), _store_files(tmp_path)) == (stored, files)
    db = _notes(tmp_path / "notes.db", embedding_version=2**63 - 1)  # the largest one works
    assert db.update_embedding_version("seed") is True
    _close(db)


# -- item 22: the same id twice in one call ----------------------------------------------------
def test_an_id_given_twice_is_stored_once_from_its_last_item_and_counted_once(tmp_path):
    db = _notes(tmp_path / "notes.db")
    assert db.add_embeddings(
        [(1, {"body": "first apple"}, "note"), ("1", {"body": "second banana"}, "note")]
    ) == 1
    assert db.embedding_count() == 1
    assert db.get_vector(1) == db.encode_text("second banana")  # the last occurrence wins
    assert db.search_by_text("second banana", top_k=5) == [("1", pytest.approx(0.0, abs=1e-5))]
    assert db.add_embeddings(
        [(2, {"body": "a"}, "note"), (3, {"body": "b"}, "note"), (2, {"body": "c"}, "note")]
    ) == 2
    assert db.embedding_count() == 3
    rows = db.prepare_embeddings([(4, {"body": "d"}, "note")])
    assert db.store_embeddings(rows + rows) == 1
    assert db.embedding_count() == 4
    _close(db)


# -- item 31: kinds and source ids are capped --------------------------------------------------
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda db: db.add_embedding("a", {"body": "x"}, "k" * 1_000_000), "kind is 1000000 char"),
        (lambda db: db.add_embedding("a", {"body": "x"}, "note", source_id="s" * 1_000_000),
         "source_id is longer than 1024"),
        (lambda db: db.add_embedding("a", {"body": "x"}, "note", source_id=10**2000),
         "source_id has more than 1024 digits"),
        (lambda db: db.search_by_vector([1.0] * 16, kind="k" * 257), "keep them under 257"),
    ],
)
def test_huge_kinds_and_source_ids_are_refused_and_change_nothing(tmp_path, call, message):
    db = _notes(tmp_path / "notes.db")
    db.add_embedding("seed", {"body": "seed"}, "note")
    db.save_index()
    before = tree_digest(tmp_path)
    with pytest.raises(InvalidInputError, match=message):
        call(db)
    assert tree_digest(tmp_path) == before
    assert db.add_embedding("a", {"body": "x"}, "k" * 256) is None  # the cap itself is fine
    _close(db)


# -- item 18: sizes and options are bounded when the store is constructed ----------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model_name": "hash:10000000000", "encoder": None}, "1 to 65,536 dimensions"),
        ({"index_options": {"n_trees": 10**5}}, "n_trees must be an int from 1 to 1,000"),
        ({"index_options": {"n_trees": 2**31}}, "n_trees must be an int from 1 to 1,000"),
        ({"index_options": {"n_trees": 12.5}}, "n_trees must be an int"),
        ({"index_options": {"search_k": 2**31}}, "search_k must be an int from 1 to 100,000,000"),
        ({"index_options": {"exact_below": 10**12}}, "exact_below must be an int from 0"),
        ({"backend": "faiss", "index_type": "hnsw", "index_options": {"hnsw_m": 10**4}},
         "hnsw_m must be an int from 2 to 256"),
        ({"backend": "faiss", "index_type": "hnsw", "index_options": {"ef_search": 10**6}},
         "ef_search must be an int from 1 to 10,000"),
        ({"backend": "faiss", "index_type": "hnsw", "index_options": {"ef_construction": 2**31}},
         "ef_construction must be an int from 1 to 10,000"),
        ({"embedding_version": 2**63}, "embedding_version must be at most"),
    ],
)
def test_out_of_bounds_sizes_and_options_are_refused_at_construction(tmp_path, options, message):
    if options.get("backend") == "faiss":
        pytest.importorskip("faiss")
    db = _notes(tmp_path / "notes.db")
    db.add_embedding("seed", {"body": "seed"}, "note")
    _close(db)
    stored, files = sqlite_dump(tmp_path / "notes.db"), _store_files(tmp_path)
    with pytest.raises(InvalidInputError, match=message):
        _notes(tmp_path / "notes.db", **options)
    assert sqlite_dump(tmp_path / "notes.db") == stored
    assert _store_files(tmp_path) == files


def test_bounds_themselves_are_accepted(tmp_path):
    db = _notes(tmp_path / "a.db", index_options={"n_trees": 1000, "search_k": 10**8})
    db.add_embedding("a", {"body": "x"}, "note")
    _close(db)
    db = NotesDB(str(tmp_path / "b.db"), model_name="hash:65536")  # the hash encoder, lazily
    assert db.model_id == "hash:65536"
    _close(db)


def test_a_vector_of_too_many_dimensions_is_refused_before_writing(tmp_path):
    db = VectorDB(str(tmp_path / "v.db"))
    with pytest.raises(InvalidInputError, match="1 to 65,536 dimensions"):
        db.add_embedding("big", {"vec": [1.0] * 70_000}, "item")
    assert db.embedding_count() == 0
    assert db.conn.execute("SELECT COUNT(*) FROM embeddings").fetchone() == (0,)
    db.add_embedding("fine", {"vec": [1.0] * 8}, "item")
    assert db.embedding_count() == 1
    _close(db)


# -- item 4: two store classes on one embeddings table -----------------------------------------
def test_a_second_class_on_the_same_table_is_refused_and_changes_nothing(tmp_path):
    path = tmp_path / "shared.db"
    notes = _notes(path)
    notes.add_embeddings([(i, {"body": f"note number {i}"}, "note") for i in range(5)])
    _close(notes)
    stored, files = sqlite_dump(path), _store_files(tmp_path, "shared")
    with pytest.raises(StoreConflictError) as error:
        TodoDB(path)
    message = str(error.value)
    assert "embedding_table" in message and "NotesDB" in message and "TodoDB" in message
    assert "'todo" in message.lower()  # a suggested table name
    assert [line for line in sqlite_dump(path) if "todos" not in line] == stored
    assert _store_files(tmp_path, "shared") == files
    # Given its own table, the second class works beside the first, and neither sees the other.
    class OwnTodoDB(TodoDB):
        embedding_table = "todo_embeddings"

    todos = OwnTodoDB(path)
    todos.conn.execute("INSERT INTO todos(task) VALUES ('buy note paper')")
    todos.conn.commit()
    assert todos.backfill_embeddings().embedded == 1
    assert [rid for rid, _ in todos.search_by_text("note number 1", top_k=10)] == ["todo-1"]
    _close(todos)
    notes = _notes(path)
    assert notes.backfill_embeddings().embedded == 0  # nothing of the notes was overwritten
    assert all(not rid.startswith("todo") for rid, _ in notes.search_by_text("note", top_k=10))
    _close(notes)


def test_subclasses_of_a_store_class_open_its_store(tmp_path):
    path = tmp_path / "notes.db"
    db = _notes(path)
    db.add_embedding(1, {"body": "the only note"}, "note")
    _close(db)

    class Notes(NotesDB):
        pass

    class ShoutingNotes(NotesDB):  # another text, same records: the same store
        def embedding_text(self, record):
            return record["body"].upper()

    for count, cls in enumerate((Notes, ShoutingNotes), start=1):
        sub = cls(str(path), encoder=HashingEncoder(16))
        assert sub.embedding_count() == count
        sub.add_embedding(f"{cls.__name__}-note", {"body": "another"}, "note")
        _close(sub)
    bots = BotDB(tmp_path / "bot.db", model_name="hash:16")
    bots.add(BotRecord("alpha", purpose="sorts mail"))
    bots.close()

    class MyBots(BotDB):
        pass

    mine = MyBots(tmp_path / "bot.db", model_name="hash:16")
    assert [hit.record.name for hit in mine.search("sorts mail", top_k=1)] == ["alpha"]
    mine.close()


def test_a_renamed_class_opens_its_store_through_embedding_owner(tmp_path):
    path = tmp_path / "notes.db"
    db = _notes(path)
    db.add_embedding(1, {"body": "kept across the rename"}, "note")
    _close(db)

    class NotebookDB(NotesDB):  # NotesDB renamed, with its own iter_records
        def iter_records(self):
            yield from NotesDB.iter_records(self)

    with pytest.raises(StoreConflictError, match="embedding_owner = 'NotesDB'"):
        NotebookDB(str(path), encoder=HashingEncoder(16))

    class RenamedNotebookDB(NotebookDB):
        embedding_owner = "NotesDB"

    db = RenamedNotebookDB(str(path), encoder=HashingEncoder(16))
    assert db.search_by_text("kept across the rename", top_k=1)[0][0] == "1"
    _close(db)


def test_a_store_made_before_owners_opens_as_before_and_records_its_owner_on_first_write(tmp_path):
    path = tmp_path / "old.db"
    db = _notes(path)
    db.add_embedding(1, {"body": "old note"}, "note")
    db.conn.execute("DELETE FROM embeddings_meta WHERE key = 'owner'")  # as an older version made it
    db.conn.commit()
    _close(db)
    stored = sqlite_dump(path)
    db = _notes(path)  # opens, writes nothing
    assert sqlite_dump(path) == stored
    other = TodoDB(path)  # no owner recorded yet: nobody can tell, so it opens too...
    db.add_embedding(2, {"body": "new note"}, "note")  # ...until the first write claims it
    assert ("INSERT INTO \"embeddings_meta\" VALUES('owner','NotesDB');") in sqlite_dump(path)
    other.conn.execute("INSERT INTO todos(task) VALUES ('mine')")  # the caller's pending row
    with pytest.raises(StoreConflictError, match="embedding_table"):
        other.add_embedding("todo-1", {"task": "mine"}, "todo")
    assert other.conn.in_transaction  # its own row survived the refusal
    other.conn.commit()
    _close(other)
    assert db.get_vector("todo-1") is None
    with pytest.raises(StoreConflictError, match="holds the vectors of NotesDB, not TodoDB"):
        TodoDB(path)
    _close(db)


def test_embedding_owner_must_be_a_name(tmp_path):
    class Odd(NotesDB):
        embedding_owner = ""

    with pytest.raises(InvalidInputError, match="embedding_owner must be a non-empty str"):
        Odd(str(tmp_path / "odd.db"), encoder=HashingEncoder(16))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "\ud800"}, "kind contains characters"),
        ({"source_id": "x" * 2000}, "source_id is longer"),
        ({"embedding_version": 2**63}, "embedding_version must be at most"),
        ({"record_id": " "}, "record_id is empty"),
    ],
)
def test_rows_changed_after_prepare_are_checked_again_before_writing(tmp_path, change, message):
    db = _notes(tmp_path / "notes.db")
    (row,) = db.prepare_embeddings([("a", {"body": "x"}, "note")])
    db.conn.execute("INSERT INTO notes(body) VALUES ('my own row')")
    with pytest.raises(InvalidInputError, match=message):
        db.store_embeddings([dataclasses.replace(row, **change)])
    assert db.conn.in_transaction and db.embedding_count() == 0
    assert db.store_embeddings([dataclasses.replace(row, record_id=7)]) == 1  # stored as "7"
    assert db.get_vector("7") is not None
    db.conn.commit()  # the caller's transaction: the caller commits
    assert _committed_notes(tmp_path / "notes.db") == ["my own row"]
    assert db.embedding_count() == 1
    _close(db)


@pytest.mark.parametrize("dim", [0, 10_000_000_000, True, 2.5])
def test_a_hashing_encoder_of_an_impossible_size_is_refused(dim):
    """get_encoder("hash:10000000000") used to allocate 37 GiB per record at the first text."""
    from embeddable_db import InvalidInputError, get_encoder

    with pytest.raises(InvalidInputError, match="dimension"):
        HashingEncoder(dim)
    if isinstance(dim, int) and not isinstance(dim, bool):
        with pytest.raises(InvalidInputError, match="65,536"):
            get_encoder(f"hash:{dim}")
