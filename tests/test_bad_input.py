"""Bad input gets a clear error that names the problem, and changes nothing on disk."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import sys

import pytest

from conftest import NotesDB, file_bytes, sqlite_dump
from embeddable_db import (
    BackendUnavailableError,
    DimensionMismatchError,
    EmbeddingError,
    HashingEncoder,
    InvalidInputError,
    InvalidVectorError,
    ModelConflictError,
    StoreConflictError,
)


@pytest.fixture
def filled(make_notes):
    db = make_notes()
    for i in range(10):
        db.add_note(f"filled note {i}")
    db.backfill_embeddings()
    return db


def snapshot(db):
    return sqlite_dump(db.conn.execute("PRAGMA database_list").fetchone()[2]), file_bytes(
        db.index_path, db.metadata_path
    )


BAD_VECTORS = [
    (None, InvalidVectorError, "None"),
    ([0.1] * 31, DimensionMismatchError, "31 dimensions"),
    ([0.1] * 33, DimensionMismatchError, "32-dimensional"),
    ([math.nan] + [0.1] * 31, InvalidVectorError, "NaN"),
    ([math.inf] + [0.1] * 31, InvalidVectorError, "infinity"),
    ([0.0] * 32, InvalidVectorError, "all zeros"),
    ("not a vector", InvalidVectorError, "numbers"),
    ([[0.1] * 32], InvalidVectorError, "1-D"),
]


@pytest.mark.parametrize(("vector", "error", "message"), BAD_VECTORS)
def test_bad_query_vectors(filled, vector, error, message):
    before = snapshot(filled)
    with pytest.raises(error, match=message):
        filled.search_by_vector(vector)
    assert snapshot(filled) == before


@pytest.mark.parametrize(("vector", "error", "message"), BAD_VECTORS)
def test_bad_vectors_from_vector_override(tmp_path, vector, error, message):
    from conftest import VectorDB

    db = VectorDB(str(tmp_path / "v.db"))
    db.add_embedding("ok", {"vec": [0.5] * 32}, "item")
    db.save_index()
    before = sqlite_dump(tmp_path / "v.db"), file_bytes(db.index_path, db.metadata_path)
    with pytest.raises(error, match=message):
        db.add_embedding("bad", {"vec": vector}, "item")
    assert (sqlite_dump(tmp_path / "v.db"), file_bytes(db.index_path, db.metadata_path)) == before
    db.close()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda db: db.add_embedding(None, {"body": "x"}, "note"), "record_id"),
        (lambda db: db.add_embedding(1.5, {"body": "x"}, "note"), "record_id"),
        (lambda db: db.add_embedding(True, {"body": "x"}, "note"), "record_id"),
        (lambda db: db.add_embedding("", {"body": "x"}, "note"), "empty"),
        (lambda db: db.add_embedding(1, {"body": "x"}, ""), "kind"),
        (lambda db: db.add_embedding(1, {"body": None}, "note"), "None"),
        (lambda db: db.add_embedding(1, {"body": "   "}, "note"), "empty"),
        (lambda db: db.add_embedding(1, {"body": b"\xff\xfe"}, "note"), "UTF-8"),
        (lambda db: db.add_embedding(1, {"body": "\ud800"}, "note"), "Unicode"),
        (lambda db: db.search_by_vector([0.1] * 32, top_k=0), "top_k"),
        (lambda db: db.search_by_vector([0.1] * 32, top_k=-3), "top_k"),
        (lambda db: db.search_by_vector([0.1] * 32, top_k="5"), "top_k"),
        (lambda db: db.search_by_text("", top_k=3), "empty"),
        (lambda db: db.backfill_embeddings(batch_size=0), "batch_size"),
        (lambda db: db.update_embedding_versions([1], embedding_version=0), "embedding_version"),
    ],
)
def test_bad_arguments(filled, call, message):
    before = snapshot(filled)
    with pytest.raises(InvalidInputError, match=message):
        call(filled)
    assert snapshot(filled) == before


def test_huge_top_k_and_long_text_are_fine(filled):
    assert len(filled.search_by_vector([0.1] * 32, top_k=10**9)) == 10
    filled.add_embedding("long", {"body": "word " * 200_000}, "note")
    assert filled.search_by_text("word", top_k=1)[0][0] == "long"


def test_unknown_kind_is_refused_when_kinds_are_declared(tmp_path):
    class Typed(NotesDB):
        embedding_kinds = ("note", "memo")

    db = Typed(str(tmp_path / "t.db"), encoder=HashingEncoder(8))
    with pytest.raises(InvalidInputError, match="note, memo"):
        db.search_by_vector([1.0] * 8, kind="letter")
    with pytest.raises(InvalidInputError, match="unknown kind"):
        db.add_embedding(1, {"body": "x"}, "letter")
    db.close()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"backend": "milvus"}, BackendUnavailableError, "annoy, faiss"),
        ({"backend": None}, BackendUnavailableError, "unknown backend"),
        ({"embedding_version": 0}, InvalidInputError, "embedding_version"),
        ({"embedding_version": "2"}, InvalidInputError, "embedding_version"),
        ({"model_name": ""}, InvalidInputError, "model_name"),
        ({"backend": "annoy", "index_type": "hnsw"}, InvalidInputError, "FAISS option"),
        ({"backend": "faiss", "index_type": "ivf"}, InvalidInputError, "index_type"),
        ({"index_options": {"no_such": 1}}, InvalidInputError, "options"),
        ({"encoder": object()}, InvalidInputError, "encode"),
    ],
)
def test_bad_constructor_options_write_nothing(tmp_path, options, error, message):
    path = tmp_path / "fresh.db"
    options.setdefault("encoder", HashingEncoder(8))
    with pytest.raises(error, match=message):
        NotesDB(str(path), **options)
    conn = sqlite3.connect(str(path))
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == {"notes"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.db"]


def test_missing_backend_library(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "embeddable_db.backends.faiss", raising=False)
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(BackendUnavailableError, match="pip install faiss-cpu"):
        NotesDB(str(tmp_path / "n.db"), backend="faiss", encoder=HashingEncoder(8))
    assert not (tmp_path / "n_embeddings.json").exists()


def test_metadata_of_another_store_is_refused(make_notes, tmp_path):
    first = make_notes("first.db")
    first.add_embedding(1, {"body": "first store"}, "note")
    first.save_index()
    shared_index = first.index_path
    before = file_bytes(first.index_path, first.metadata_path)
    with pytest.raises(StoreConflictError, match="belongs to another store"):
        make_notes("second.db", index_path=shared_index)
    assert file_bytes(first.index_path, first.metadata_path) == before


def test_metadata_of_another_model_is_refused(make_notes, tmp_path):
    db = make_notes(encoder=HashingEncoder(32))
    db.add_embedding(1, {"body": "model one"}, "note")
    db.close()
    before = file_bytes(db.index_path, db.metadata_path)
    with pytest.raises(ModelConflictError, match="allow_model_change"):
        make_notes(encoder=HashingEncoder(24))
    assert file_bytes(db.index_path, db.metadata_path) == before


def test_metadata_with_another_dimension_is_refused(make_notes):
    db = make_notes()
    db.add_embedding(1, {"body": "dimension check"}, "note")
    db.save_index()
    db.close()
    manifest = json.load(open(db.metadata_path))
    manifest["dim"] = 384
    with open(db.metadata_path, "w") as handle:
        json.dump(manifest, handle)
    before = file_bytes(db.index_path, db.metadata_path)
    with pytest.raises(StoreConflictError, match="384-dimensional"):
        make_notes()
    assert file_bytes(db.index_path, db.metadata_path) == before


def test_copied_store_files_are_refused(make_notes, tmp_path):
    """Copying one store's index next to another store is caught by the store id."""
    first = make_notes("a.db")
    first.add_embedding(1, {"body": "a"}, "note")
    first.close()
    shutil.copy(first.metadata_path, tmp_path / "b_embeddings.json")
    with pytest.raises(StoreConflictError):
        make_notes("b.db")


def test_conn_must_be_set(tmp_path):
    from embeddable_db import EmbeddableDBMixin

    class NoConn(EmbeddableDBMixin):
        pass

    with pytest.raises(EmbeddingError, match="self.conn"):
        NoConn()
