"""Bad input at every public entry point: a clear error, and the store byte-for-byte unchanged.

Extends tests/test_bad_input.py (bad vectors for search and ``vector()``, a few bad ids and
texts for ``add_embedding``, bad ``top_k`` for ``search_by_vector``, constructor options,
foreign metadata) to the entry points and values it does not reach. "Unchanged" compares
the SQLite dump and the bytes of the index and metadata files (DESIGN invariant 9).
"""

from __future__ import annotations

import math
import sqlite3
from decimal import Decimal

import numpy as np
import pytest
from reliability_helpers import Notes, fill_notes, snapshot

from embeddable_db import (
    BackendUnavailableError,
    EmbeddingError,
    HashingEncoder,
    InvalidInputError,
    InvalidVectorError,
)

# Ids that are neither an int nor a usable str (None, True, 1.5 and "" are in test_bad_input).
UNUSUAL_IDS = [
    b"1",
    bytearray(b"1"),
    (1,),
    [1],
    {1: 2},
    {1},
    1.0,
    math.nan,
    np.float64(1),
    Decimal(1),
    1j,
    object(),
    "x" * 1025,
    " \t\n",
    "\udc80",
    10**1100,
    None,
    True,
]

# One call per entry point that takes record ids.
ID_ENTRY_POINTS = {
    "add_embedding": lambda db, rid: db.add_embedding(rid, {"body": "some text"}, "note"),
    "add_embeddings": lambda db, rid: db.add_embeddings(
        [(1, {"body": "fine"}, "note"), (rid, {"body": "some text"}, "note")]
    ),
    "remove_embedding": lambda db, rid: db.remove_embedding(rid),
    "remove_embeddings": lambda db, rid: db.remove_embeddings([1, 2, rid]),
    "get_vector": lambda db, rid: db.get_vector(rid),
    "update_embedding_version": lambda db, rid: db.update_embedding_version(
        rid, embedding_version=3
    ),
    "update_embedding_versions": lambda db, rid: db.update_embedding_versions(
        [1, rid], embedding_version=3
    ),
}


@pytest.fixture
def store(tmp_path):
    """Ten embedded notes, files saved; also two notes not yet embedded (so a backfill that
    wrongly started would change something)."""
    fill_notes(tmp_path / "b.db", 10)
    db = Notes(tmp_path / "b.db", encoder=HashingEncoder(32))
    db.backfill_embeddings()
    fill_notes(tmp_path / "b.db", 2, start=11)
    yield db
    db.shut()


def refused(db, call, error=InvalidInputError, match=None):
    """``call(db)`` raises ``error`` (matching ``match``) and the store is unchanged."""
    before = snapshot(db)
    with pytest.raises(error, match=match) as caught:
        call(db)
    assert isinstance(caught.value, EmbeddingError | ValueError)
    assert snapshot(db) == before, "a refused call changed the store"
    return caught.value


@pytest.mark.parametrize("entry", list(ID_ENTRY_POINTS))
def test_unusual_record_ids(store, entry):
    for rid in UNUSUAL_IDS:
        error = refused(store, lambda db, rid=rid: ID_ENTRY_POINTS[entry](db, rid))
        assert "record_id" in str(error), (entry, rid, error)


def test_numpy_integer_ids_are_ids(store):
    store.add_embedding(np.int64(77), {"body": "numpy id"}, "note")
    assert store.get_vector(77) == store.get_vector("77") is not None
    assert store.remove_embeddings(np.array([77])) == 1


WRONG_SHAPES = [
    (lambda db: db.remove_embeddings("12"), "record_ids must be a list"),
    (lambda db: db.remove_embeddings(None), "record_ids must be a list"),
    (lambda db: db.remove_embeddings(5), "record_ids must be a list"),
    (lambda db: db.update_embedding_versions("12", embedding_version=2), "record_ids"),
    (lambda db: db.update_embedding_versions([1], embedding_version=2.0), "embedding_version"),
    (lambda db: db.add_embeddings(None), "items must be a list"),
    (lambda db: db.add_embeddings("abc"), "items must be a list"),
    (lambda db: db.add_embeddings([1, 2]), r"\(record_id, record, kind\)"),
    (lambda db: db.add_embeddings([(1, {"body": "x"})]), r"\(record_id, record, kind\)"),
    (lambda db: db.add_embeddings(["abc"]), r"\(record_id, record, kind\)"),
    (lambda db: db.add_embeddings([(1, {"body": "x"}, "note")], source_ids=[1, 2]),
     "source_ids"),
    (lambda db: db.add_embeddings([(1, {"body": "x"}, "note")], source_ids="7"),
     "source_ids"),
    (lambda db: db.add_embeddings([(1, {"body": "x"}, "note")], batch_size=0), "batch_size"),
    (lambda db: db.encode_texts("abc"), "texts must be a list"),
    (lambda db: db.encode_texts(None), "texts must be a list"),
]


@pytest.mark.parametrize(("call", "match"), WRONG_SHAPES)
def test_arguments_of_the_wrong_shape(store, call, match):
    """A lone string is refused, not iterated: remove_embeddings("12") must not remove 1 and 2."""
    refused(store, call, match=match)


BAD_RECORDS = [
    (lambda db: db.add_embedding(1, None, "note"), "record '1' could not be embedded"),
    (lambda db: db.add_embedding(1, "a plain string", "note"), "could not be embedded"),
    (lambda db: db.add_embedding(1, {"body": 5}, "note"), "text must be a str"),
    (lambda db: db.add_embedding(1, {"body": ["a"]}, "note"), "text must be a str"),
    (lambda db: db.add_embedding(1, {"body": "ok"}, None), "kind"),
    (lambda db: db.add_embedding(1, {"body": "ok"}, 7), "kind"),
    (lambda db: db.add_embeddings([(20, {"body": "good"}, "note"),
                                   (21, {"body": b"\xc3\x28"}, "note")]), "UTF-8"),
    (lambda db: db.add_embeddings([(20, {"body": "good"}, "note"),
                                   (21, {"body": "   "}, "note")]), "empty"),
]


@pytest.mark.parametrize(("call", "match"), BAD_RECORDS)
def test_bad_records_write_nothing(store, call, match):
    """The subclass failing on a record is an error about that record; batches are all or nothing."""
    refused(store, call, match=match)


def test_try_add_embedding_with_bad_input_changes_nothing(store):
    before = snapshot(store)
    for rid, record, kind in [(None, {"body": "x"}, "note"), (1, {"body": b"\xff"}, "note"),
                              (1, {"body": "x"}, ""), ([1], {"body": "x"}, "note"),
                              (1, None, "note")]:
        assert store.try_add_embedding(rid, record, kind) is False
    assert snapshot(store) == before


BAD_SEARCHES = [
    (lambda db: db.search_by_text(b"\xff\xfe"), "UTF-8"),
    (lambda db: db.search_by_text(bytearray(b"ok \xc3")), "UTF-8"),
    (lambda db: db.search_by_text("\ud800 lone surrogate"), "Unicode"),
    (lambda db: db.search_by_text(None), "None"),
    (lambda db: db.search_by_text(42), "str"),
    (lambda db: db.search_by_text(["note1"]), "str"),
    (lambda db: db.search_by_text("note1", top_k=0), "top_k"),
    (lambda db: db.search_by_text("note1", top_k=2.0), "top_k"),
    (lambda db: db.search_by_text("note1", top_k=None), "top_k"),
    (lambda db: db.search_by_text("note1", top_k=True), "top_k"),
    (lambda db: db.search_by_text("note1", kind=""), "kind"),
    (lambda db: db.search_by_text("note1", kind=3), "kind"),
    (lambda db: db.search_by_vector([0.1] * 32, kind=5), "kind"),
    (lambda db: db.encode_texts(["fine", b"\xc3\x28"]), "UTF-8"),
    (lambda db: db.encode_text(""), "empty"),
]


@pytest.mark.parametrize(("call", "match"), BAD_SEARCHES)
def test_bad_search_and_encode_arguments(store, call, match):
    refused(store, call, match=match)


NOT_NUMBERS = [
    (["0.5"] * 32, "numbers"),  # numpy would quietly parse the strings
    ([1j] * 32, "numbers"),  # numpy would quietly drop the imaginary part
    ({"a": 1.0}, "numbers"),
    (b"\x00" * 32, "numbers"),
    ([None] * 32, "numbers"),
]


@pytest.mark.parametrize(("vector", "match"), NOT_NUMBERS)
def test_vectors_that_only_look_like_numbers(store, vector, match):
    refused(store, lambda db: db.search_by_vector(vector), InvalidVectorError, match)


def test_extreme_but_valid_vectors_keep_their_direction(store):
    """[1e308]*n overflowed the norm (every distance came back 1.0); [1e-320]*n underflowed."""
    direction = store.get_vector(3)
    expected = store.search_by_vector(direction, top_k=5)
    for scale in (1e308, 1e-320):
        hits = store.search_by_vector([x * scale for x in direction], top_k=5)
        assert [h[0] for h in hits] == [e[0] for e in expected]
        assert [h[1] for h in hits] == pytest.approx([e[1] for e in expected], abs=1e-5)


def test_huge_top_k_everywhere(store):
    assert len(store.search_by_text("note1", top_k=10**9)) == 10
    assert len(store.search_by_text("note1", top_k=2**80, kind="note")) == 10
    assert store.search_by_text("note1", top_k=10**9, kind="nothing-of-this-kind") == []
    assert len(store.search_by_vector(store.get_vector(1), top_k=np.int64(3))) == 3


class Typed(Notes):
    embedding_kinds = ("note", "memo")


@pytest.mark.parametrize(
    "call",
    [
        lambda db: db.search_by_text("note1", kind="letter"),
        lambda db: db.add_embeddings([(30, {"body": "a memo"}, "memo"),
                                      (31, {"body": "a letter"}, "letter")]),
        lambda db: db.add_embedding(30, {"body": "a letter"}, "Note"),
    ],
)
def test_unknown_kinds_of_a_store_that_declares_them(tmp_path, call):
    fill_notes(tmp_path / "t.db", 5)
    db = Typed(tmp_path / "t.db", encoder=HashingEncoder(32))
    db.backfill_embeddings()
    refused(db, call, match="unknown kind 'letter'|unknown kind 'Note'")
    db.shut()


BAD_BACKFILLS = [
    ({"batch_size": -1}, "batch_size"),
    ({"batch_size": "10"}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"batch_size": None}, "batch_size"),
    # Found only after the first batch was committed, a bad progress left half a backfill.
    ({"progress": 5}, "progress"),
    ({"progress": "bar"}, "progress"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD_BACKFILLS)
def test_bad_backfill_arguments(store, kwargs, match):
    refused(store, lambda db: db.backfill_embeddings(**kwargs), match=match)


def test_backfill_reports_a_record_that_is_not_utf8_and_goes_on(tmp_path):
    """One bad record is reported and skipped, not fatal (DESIGN invariant 10)."""
    fill_notes(tmp_path / "u.db", 6)
    conn = sqlite3.connect(str(tmp_path / "u.db"))
    conn.execute("UPDATE notes SET body = ? WHERE id = 3", (b"caf\xe9 latin-1 bytes",))
    conn.commit()
    conn.close()

    class BytesNotes(Notes):
        def embedding_text(self, record):
            return record["body"]  # bytes as SQLite hands them back

    db = BytesNotes(tmp_path / "u.db", encoder=HashingEncoder(32))
    result = db.backfill_embeddings(batch_size=4)
    assert (result.embedded, result.failed) == (5, 1)
    assert result.failures[0][0] == "3" and "UTF-8" in result.failures[0][1]
    assert db.get_vector(3) is None and db.embedding_count() == 5
    db.shut()


def test_save_index_inside_an_open_transaction(store):
    store.conn.execute("INSERT INTO notes(body) VALUES ('uncommitted')")
    index_files = snapshot(store)[1]
    with pytest.raises(EmbeddingError, match="commit or roll back"):
        store.save_index()
    store.conn.rollback()
    assert snapshot(store)[1] == index_files


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"index_options": 5}, InvalidInputError, "index_options must be a dict"),
        ({"index_options": [("n_trees", 3)]}, InvalidInputError, "index_options must be a dict"),
        # Annoy reads a negative n_trees as "until memory runs out": the process was OOM-killed.
        ({"index_options": {"n_trees": -5}}, InvalidInputError, "n_trees"),
        ({"index_options": {"n_trees": 0}}, InvalidInputError, "n_trees"),
        ({"index_options": {"search_k": 0}}, InvalidInputError, "search_k"),
        ({"backend": "faiss", "index_type": "hnsw", "index_options": {"hnsw_m": 0}},
         InvalidInputError, "hnsw_m"),
        ({"backend": "faiss", "index_options": {"ef_search": -1}}, InvalidInputError, "ef_search"),
        ({"index_path": 5}, InvalidInputError, "must be paths"),
        ({"index_path": "FOLDER"}, InvalidInputError, "is a folder"),
        ({"metadata_path": "FOLDER"}, InvalidInputError, "is a folder"),
        ({"model_name": "hash:1"}, InvalidInputError, "hash:<dimension>"),
        ({"model_name": "hash:"}, InvalidInputError, "hash:<dimension>"),
        ({"backend": "FAISS"}, BackendUnavailableError, "annoy, faiss"),
        ({"embedding_version": True}, InvalidInputError, "embedding_version"),
    ],
)
def test_bad_constructor_options_write_nothing(tmp_path, options, error, match):
    folder = tmp_path / "folder"
    folder.mkdir()
    options = {k: (str(folder) if v == "FOLDER" else v) for k, v in options.items()}
    if "model_name" not in options:
        options["encoder"] = HashingEncoder(8)
    with pytest.raises(error, match=match):
        Notes(tmp_path / "fresh.db", **options)
    conn = sqlite3.connect(str(tmp_path / "fresh.db"))
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == {"notes"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "fresh.db"]
    assert list(folder.iterdir()) == []
