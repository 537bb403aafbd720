"""Keyword search (issue 13, step 1): an FTS5 index of the text each vector was made from,
written and removed with the vector, migrated into older stores and filled without the model,
checked by ``verify_index()`` and repaired by ``rebuild_index()``."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import (
    CountingEncoder,
    NotesDB,
    VectorDB,
    as_before_keywords,
    file_bytes,
    sqlite_dump,
)
from embeddable_db import EmbeddingError, InvalidInputError, StoreConflictError

DOCS = {
    1: "the database connection failed with a timeout error",
    2: "network timeout while fetching the page",
    3: "C++ template error messages are long",
    4: "party emoji 🙂 tonight",
    5: "foo-bar configuration file",
    6: "nothing to see here",
}


def ids(hits) -> list[str]:
    return [record_id for record_id, _ in hits]


def fill(db, docs=DOCS) -> None:
    db.conn.executemany("INSERT INTO notes(id, body) VALUES (?, ?)", list(docs.items()))
    db.conn.commit()
    db.backfill_embeddings()


@pytest.fixture
def notes(make_notes):
    db = make_notes()
    fill(db)
    return db


# -- searching -----------------------------------------------------------------------------------
def test_best_first_higher_is_better_and_any_word_finds_a_record(notes):
    hits = notes.search_by_keyword("timeout error")
    # Both words first; either word alone still finds a record (OR, ranked by bm25).
    assert ids(hits)[0] == "1"
    assert set(ids(hits)) == {"1", "2", "3"}
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True) and all(score > 0 for score in scores)
    assert ids(notes.search_by_keyword("timeout error", top_k=1)) == ["1"]
    assert notes.search_by_keyword("absent") == []


def test_the_model_is_not_called(notes, encoder):
    calls = encoder.calls
    notes.search_by_keyword("timeout")
    assert encoder.calls == calls


def test_kind_filters_before_top_k(make_notes):
    db = make_notes()
    db.add_embeddings([(i, {"body": "timeout timeout timeout"}, "a") for i in range(20)])
    db.add_embeddings([(100 + i, {"body": f"a slow timeout number {i}"}, "b") for i in range(5)])
    hits = db.search_by_keyword("timeout", top_k=3, kind="b")
    assert len(hits) == 3 and all(rid.startswith("10") for rid in ids(hits))
    assert set(ids(db.search_by_keyword("timeout", top_k=30, kind="a"))) == {
        str(i) for i in range(20)
    }
    # A record's kind change moves it, with no new text.
    db.add_embedding(100, {"body": "a slow timeout number 0"}, "a")
    assert "100" not in ids(db.search_by_keyword("slow", top_k=10, kind="b"))
    assert ids(db.search_by_keyword("slow", top_k=10, kind="a")) == ["100"]


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("C++", {"3"}),  # the tokenizer's "c"
        ("🙂", {"4"}),
        ("foo-bar", {"5"}),  # the two tokens side by side
        ("bar-foo", set()),
        ('"timeout"', {"1", "2"}),  # quotes are text
        ('timeout"', {"1", "2"}),
        ("-timeout", {"1", "2"}),  # not a negation
        ("NOT timeout", {"1", "2"}),  # NOT, AND, OR are words
        ("timeout AND", {"1", "2"}),
        ("OR", set()),
        ("time*", set()),  # not a prefix query
        ("text:timeout", set()),  # not a column filter
        ("(timeout", {"1", "2"}),
        ("NEAR(timeout error)", {"1", "3"}),  # "near timeout" side by side, or "error"
        ("^timeout +error", {"1", "2", "3"}),
        ("{text}: ; --", set()),
        ("'; DROP TABLE notes; --", set()),
        ("!!!", set()),  # no words: nothing matches, and no error
        ("time\x00out timeout", {"1", "2"}),
        ("TIMEOUT Timeout timeout", {"1", "2"}),
    ],
)
def test_any_user_text_is_a_valid_query(notes, query, found):
    assert set(ids(notes.search_by_keyword(query, top_k=10))) == found
    assert notes.conn.execute("SELECT COUNT(*) FROM notes").fetchone()[0] == len(DOCS)


def test_an_empty_query_is_a_clear_error_and_changes_nothing(notes, tmp_path):
    before = sqlite_dump(tmp_path / "notes.db")
    for query in ("", "   ", "\n\t"):
        with pytest.raises(InvalidInputError, match="keyword query is empty"):
            notes.search_by_keyword(query)
    for query in (None, 3, b"timeout", ["timeout"]):
        with pytest.raises(InvalidInputError, match="must be a str"):
            notes.search_by_keyword(query)
    with pytest.raises(InvalidInputError, match="not valid Unicode"):
        notes.search_by_keyword("bad \ud800 surrogate")
    with pytest.raises(InvalidInputError, match="top_k"):
        notes.search_by_keyword("timeout", top_k=0)
    assert sqlite_dump(tmp_path / "notes.db") == before


def test_a_store_without_embedding_text_says_so(tmp_path):
    db = VectorDB(str(tmp_path / "v.db"))
    db.add_embedding("a", {"vec": [1.0, 0.0, 0.0]}, "item")
    with pytest.raises(EmbeddingError, match=r"embedding_text\(record\)"):
        db.search_by_keyword("anything")
    assert db.verify_index().ok  # vectors without text are not a keyword problem
    db.close()


# -- any text never gets an FTS5 error (property) --------------------------------------------------
FRAGMENTS = ['"', '""', "'", "AND", "OR", "NOT", "NEAR", "NEAR(", "*", "-", "+", "^", ":", "(",
             ")", "{", "}", "[", "]", ",", ".", "C++", "🙂", "\x00", "\\", "col:", "timeout",
             "rank", "bm25", "MATCH", "%", "_", "\u200b", "é", "ｆｕｌｌ", "中文"]
QUERIES = st.text(max_size=300) | st.lists(
    st.sampled_from(FRAGMENTS) | st.text(max_size=6), max_size=20
).map(lambda parts: "".join(parts) if len(parts) % 2 else " ".join(parts))


def _module_notes(tmp_path_factory):
    db = NotesDB(str(tmp_path_factory.mktemp("kw") / "notes.db"), encoder=CountingEncoder(16))
    fill(db)
    yield db
    db.close()
    db.conn.close()


shared_notes = pytest.fixture(scope="module")(_module_notes)  # searched, never written
word_notes = pytest.fixture(scope="module")(_module_notes)  # written by the word property


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=QUERIES, top_k=st.integers(1, 8))
def test_random_user_text_never_raises_an_fts5_error(shared_notes, query, top_k):
    if not query.strip():
        with pytest.raises(InvalidInputError, match="empty"):
            shared_notes.search_by_keyword(query)
        return
    hits = shared_notes.search_by_keyword(query, top_k=top_k)  # no sqlite3 error, ever
    assert len(hits) <= top_k and set(ids(hits)) <= {str(i) for i in DOCS}
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True)


WORD = st.text(st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(words=st.lists(WORD, min_size=1, max_size=6))
def test_a_word_of_a_record_finds_it(word_notes, words):
    """The query is split by the same tokenizer as the stored text, whatever the characters."""
    word_notes.add_embedding("w", {"body": "zz " + " ".join(words)}, "note")
    for word in words:
        if any(ch.isalnum() for ch in word):
            assert "w" in ids(word_notes.search_by_keyword(word, top_k=len(DOCS) + 1)), word


# -- written, replaced and removed with the vector ------------------------------------------------------
def _other(tmp_path, encoder) -> NotesDB:
    """Another connection on the same file: it sees only what is committed."""
    return NotesDB(str(tmp_path / "notes.db"), encoder=encoder, read_only=True)


def test_a_removed_record_leaves_the_keyword_index_in_the_same_commit(notes, tmp_path, encoder):
    other = _other(tmp_path, encoder)
    with notes.embedding_transaction():
        notes.remove_embedding(2)
        assert "2" not in ids(notes.search_by_keyword("network"))  # this connection: gone
        assert ids(other.search_by_keyword("network")) == ["2"]  # not committed yet
        assert other.get_vector(2) is not None
    assert other.search_by_keyword("network") == [] and other.get_vector(2) is None
    # Rolled back: the vector and its keywords stay, together.
    with pytest.raises(RuntimeError), notes.embedding_transaction():
        notes.remove_embedding(1)
        raise RuntimeError("changed my mind")
    assert ids(notes.search_by_keyword("database")) == ["1"] and notes.get_vector(1) is not None
    other.close()
    other.conn.close()


def test_a_re_embedded_record_is_updated_in_the_same_commit(notes, tmp_path, encoder):
    other = _other(tmp_path, encoder)
    old_vector = other.get_vector(6)
    with notes.embedding_transaction():
        notes.conn.execute("UPDATE notes SET body = 'something completely different' WHERE id = 6")
        notes.add_embedding(6, {"body": "something completely different"}, "note")
        assert ids(other.search_by_keyword("nothing")) == ["6"]
        assert other.get_vector(6) == old_vector
    assert other.search_by_keyword("nothing") == []
    assert ids(other.search_by_keyword("different")) == ["6"]
    assert other.get_vector(6) != old_vector
    # Through the user's own table and a backfill, too.
    notes.conn.execute("UPDATE notes SET body = 'a timeout of its own' WHERE id = 5")
    notes.conn.execute("DELETE FROM notes WHERE id = 4")
    notes.conn.commit()
    result = notes.backfill_embeddings()
    assert (result.reembedded, result.removed) == (1, 1)
    assert notes.search_by_keyword("configuration") == [] and notes.search_by_keyword("🙂") == []
    assert "5" in ids(other.search_by_keyword("timeout"))
    assert notes.verify_index().ok
    other.close()
    other.conn.close()


def test_keywords_survive_reopen_and_a_model_switch(make_notes):
    db = make_notes()
    fill(db)
    db.close()
    db.conn.close()
    db = make_notes(encoder=CountingEncoder(24), allow_model_change=True)
    assert set(ids(db.search_by_keyword("timeout"))) == {"1", "2"}
    result = db.backfill_embeddings()
    assert result.reembedded == len(DOCS) and result.keyword_filled == 0
    assert set(ids(db.search_by_keyword("timeout"))) == {"1", "2"}
    assert db.verify_index().ok


# -- migration -----------------------------------------------------------------------------------------
def test_an_older_store_is_migrated_on_open_and_filled_without_the_model(make_notes, tmp_path):
    db = make_notes()
    fill(db)
    db.close()
    db.conn.close()
    as_before_keywords(tmp_path / "notes.db")
    encoder = CountingEncoder(32)
    db = make_notes(encoder=encoder)
    version = db.conn.execute("SELECT value FROM embeddings_meta WHERE key = 'schema'").fetchone()
    assert version == ("2",)
    assert db.search_by_keyword("timeout") == []  # migrated, not filled yet
    report = db.verify_index()
    assert not report.ok and report.keyword_count == 0
    assert any("no keyword row" in p and "backfill_embeddings()" in p for p in report.problems)
    assert db.backfill_plan().keyword_missing == len(DOCS)
    result = db.backfill_embeddings(batch_size=2)
    assert encoder.calls == 0, "filling the keyword index called the model"
    assert (result.keyword_filled, result.unchanged, result.embedded) == (len(DOCS), len(DOCS), 0)
    assert ids(db.search_by_keyword("timeout error"))[0] == "1"
    assert db.verify_index().ok and db.verify_index().keyword_count == len(DOCS)
    assert db.backfill_embeddings().keyword_filled == 0


def test_a_read_only_open_of_an_older_store_migrates_nothing(make_notes, tmp_path, encoder):
    db = make_notes()
    fill(db)
    db.close()
    db.conn.close()
    as_before_keywords(tmp_path / "notes.db")
    before = file_bytes(tmp_path / "notes.db")
    reader = make_notes(read_only=True)
    assert ids(reader.search_by_vector(reader.encode_text(DOCS[2]), top_k=1)) == ["2"]
    with pytest.raises(EmbeddingError, match="without read_only=True"):
        reader.search_by_keyword("timeout")
    assert reader.verify_index().keyword_count is None
    reader.close()
    assert file_bytes(tmp_path / "notes.db") == before


def test_a_store_of_a_newer_schema_is_refused(make_notes, tmp_path):
    db = make_notes()
    db.close()
    db.conn.close()
    conn = sqlite3.connect(tmp_path / "notes.db")
    with conn:
        conn.execute("UPDATE embeddings_meta SET value = '3' WHERE key = 'schema'")
    conn.close()
    for options in ({}, {"read_only": True}):
        with pytest.raises(StoreConflictError, match="newer embeddable_db"):
            NotesDB(str(tmp_path / "notes.db"), encoder=CountingEncoder(8), **options)


# -- verify and rebuild ---------------------------------------------------------------------------------
def _tamper(db, how: str) -> str:
    """Damage the keyword index the way ``how`` says, behind the store's back; returns the
    words of the problem ``verify_index()`` must report."""
    conn = db.conn
    label = "SELECT label FROM embeddings WHERE record_id = ?"
    if how == "orphan":  # the text of a removed vector stays
        conn.execute("DELETE FROM notes WHERE id = 2")
        db.remove_embedding(2)
        conn.execute(f"INSERT INTO embeddings_text(label, text) VALUES (({label}), 'ghost')", ("2",))
        expected = "vectors that are gone"
    elif how == "stale":  # another text than the vector was made from
        conn.execute(f"UPDATE embeddings_text SET text = 'ghost' WHERE label = ({label})", ("2",))
        expected = "other text"
    elif how == "index":  # the FTS5 index loses a record's entries; its text stays
        conn.execute(
            "INSERT INTO embeddings_fts(embeddings_fts, rowid, text) "
            f"SELECT 'delete', label, text FROM embeddings_text WHERE label = ({label})", ("1",)
        )
        expected = "does not match the text"
    else:  # "missing": a vector without its keyword row
        conn.execute(f"DELETE FROM embeddings_text WHERE label = ({label})", ("1",))
        expected = "no keyword row"
    conn.commit()
    return expected


@pytest.mark.parametrize("how", ["orphan", "stale", "index", "missing"])
def test_verify_reports_keyword_disagreement_and_rebuild_repairs_it(notes, encoder, how):
    assert notes.verify_index().ok
    expected = _tamper(notes, how)
    report = notes.verify_index()
    assert not report.ok and any(expected in problem for problem in report.problems), report
    notes.rebuild_index()
    calls = encoder.calls
    notes.backfill_embeddings()  # what "stale" and "missing" need: the records' text again
    assert encoder.calls == calls, "the keyword repair called the model"
    assert notes.verify_index().ok
    assert notes.search_by_keyword("ghost") == []
    live = {str(i) for i in DOCS} - ({"2"} if how == "orphan" else set())
    assert set(ids(notes.search_by_keyword("timeout network database"))) == {"1", "2"} & live


def test_verify_repair_rebuilds_only_the_keyword_index(notes, tmp_path):
    notes.save_index()
    _tamper(notes, "index")
    files = file_bytes(notes.index_path, notes.metadata_path)
    report = notes.verify_index(repair=True)
    assert report.repaired and report.ok, report.problems
    assert ids(notes.search_by_keyword("database")) == ["1"]
    assert file_bytes(notes.index_path, notes.metadata_path) == files  # vectors were fine
