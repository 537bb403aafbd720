"""Transactions have one owner: whoever begins one commits it (issue 11's fix).

Before, the store's write committed whatever transaction was open, so a caller's rows were
committed by the vector write and a failure after it could no longer be rolled back; the six
databases relied on the vector write being the last step of their block.
"""

import sqlite3

import pytest

from conftest import NotesDB
from embeddable_db import BotDB, BotRecord, HashingEncoder


def _notes(tmp_path, **options) -> NotesDB:
    return NotesDB(str(tmp_path / "notes.db"), encoder=HashingEncoder(32), **options)


def _committed(path) -> tuple[list[str], list[str]]:
    """(note bodies, vector ids) as another connection sees them: what is committed."""
    conn = sqlite3.connect(path)
    try:
        notes = [r[0] for r in conn.execute("SELECT body FROM notes ORDER BY id")]
        vectors = [r[0] for r in conn.execute(
            "SELECT record_id FROM embeddings WHERE deleted = 0 ORDER BY record_id"
        )]
    finally:
        conn.close()
    return notes, vectors


def test_a_vector_written_first_is_rolled_back_with_the_row_that_fails_after_it(tmp_path):
    db = _notes(tmp_path)
    db.conn.execute("INSERT INTO notes(id, body) VALUES (1, 'taken')")
    db.conn.commit()
    with pytest.raises(sqlite3.IntegrityError), db.embedding_transaction():
        db.add_embedding(2, {"body": "a new note"}, "note")  # the vector first ...
        db.conn.execute("INSERT INTO notes(id, body) VALUES (1, 'clash')")  # ... then the row
    assert not db.conn.in_transaction
    assert _committed(tmp_path / "notes.db") == (["taken"], [])
    assert db.get_vector(2) is None and db.embedding_count() == 0
    assert db.search_by_text("a new note", top_k=3) == []
    # The same block without the clash commits both, in that order.
    with db.embedding_transaction():
        db.add_embedding(2, {"body": "a new note"}, "note")
        db.conn.execute("INSERT INTO notes(id, body) VALUES (2, 'a new note')")
    assert _committed(tmp_path / "notes.db") == (["taken", "a new note"], ["2"])
    assert [hit[0] for hit in db.search_by_text("a new note", top_k=1)] == ["2"]
    db.close()


def test_the_callers_own_transaction_is_committed_or_rolled_back_by_the_caller(tmp_path):
    db = _notes(tmp_path)
    db.conn.execute("INSERT INTO notes(body) VALUES ('mine')")  # Python opens a transaction
    db.add_embedding(1, {"body": "mine"}, "note")
    db.remove_embedding(1)
    db.add_embedding(1, {"body": "mine again"}, "note")
    assert db.conn.in_transaction  # still the caller's
    assert _committed(tmp_path / "notes.db") == ([], [])
    db.conn.rollback()
    assert db.get_vector(1) is None and db.embedding_count() == 0
    assert db.search_by_text("mine again", top_k=3) == []
    # Sequence numbers rolled back are handed out again: the next writes are all seen.
    db.add_embeddings([(i, {"body": f"note {i}"}, "note") for i in range(3)])
    assert db.embedding_count() == 3
    assert db.verify_index().ok
    db.conn.execute("INSERT INTO notes(body) VALUES ('kept')")
    db.add_embedding(9, {"body": "kept"}, "note")
    db.conn.commit()
    assert _committed(tmp_path / "notes.db") == (["kept"], ["0", "1", "2", "9"])
    assert db.embedding_count() == 4 and db.search_by_text("kept", top_k=1)[0][0] == "9"
    db.close()
    again = _notes(tmp_path)
    assert again.embedding_count() == 4 and again.verify_index().ok
    again.close()


def test_a_nested_transaction_that_fails_rolls_back_only_itself(tmp_path):
    db = _notes(tmp_path)
    with db.embedding_transaction():
        db.add_embedding("outer", {"body": "outer"}, "note")
        with pytest.raises(RuntimeError), db.embedding_transaction():
            db.add_embedding("inner", {"body": "inner"}, "note")
            raise RuntimeError("the inner block fails")
        assert db.conn.in_transaction
    assert _committed(tmp_path / "notes.db")[1] == ["outer"]
    assert db.get_vector("inner") is None and db.embedding_count() == 1
    db.close()


def test_a_database_write_that_fails_after_its_vector_changes_nothing(tmp_path, monkeypatch):
    """BotDB writes the row, then the vector; a failure after both rolls both back."""
    db = BotDB(tmp_path / "bot.db", encoder=HashingEncoder(32))
    kept = db.add(BotRecord("kept", purpose="stays"))
    store = db.store_embeddings

    def store_then_fail(rows):
        store(rows)
        raise OSError("the disk went away after the vector was written")

    monkeypatch.setattr(db, "store_embeddings", store_then_fail)
    with pytest.raises(OSError, match="went away"):
        db.add(BotRecord("lost", purpose="never committed"))
    with pytest.raises(OSError, match="went away"):
        db.update(kept, purpose="a new purpose, never committed")
    monkeypatch.undo()
    assert [bot.name for bot in db.fetch(10)] == ["kept"]
    assert db.get(kept).purpose == "stays"
    assert db.embedding_count() == 1
    assert [hit.record_id for hit in db.search("never committed", top_k=5)] == [kept]
    assert db.verify_index().ok
    assert db.backfill_embeddings(dry_run=True).processed == 1  # and it is current
    assert db.backfill_embeddings(dry_run=True).unchanged == 1
    db.close()


def test_backfill_and_flushes_refuse_the_callers_open_transaction(tmp_path):
    db = _notes(tmp_path)
    db.add_note("one")
    db.conn.execute("INSERT INTO notes(body) VALUES ('pending')")
    for call, message in [
        (db.backfill_embeddings, r"before backfill_embeddings\(\)"),
        (db.save_index, r"before save_index\(\)"),
        (db.rebuild_index, r"before rebuild_index\(\)"),
    ]:
        with pytest.raises(Exception, match=message):
            call()
    assert db.conn.in_transaction  # the caller's transaction is left as it was
    db.conn.commit()
    assert db.backfill_embeddings().embedded == 2
    db.close()
