"""Corrupt files: a damaged, emptied or deleted index or metadata file is rebuilt from SQLite.

Opening logs exactly one warning, rebuilds without re-encoding, answers exactly as before and
never crashes or comes back empty. Metadata of another store, model or dimension is refused
and left as it is (DESIGN invariants 1, 3 and 5). Refusals that tests/test_bad_input.py
already covers (shared index path, copied files, another model in SQLite, edited dimension)
are not repeated here.
"""

from __future__ import annotations

import json
import logging
import os
import random

import pytest
from reliability_helpers import Notes, assert_same_answers, file_bytes, fill_notes, temp_files

from embeddable_db import HashingEncoder, ModelConflictError, StoreConflictError
from embeddable_db.engine.sqlite.manifest import read_manifest

QUERIES = ["note3 alpha", "bravo charlie", "opal prairie lagoon", "note17", "zulu"]


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _zero_fill(path):
    open(path, "wb").write(b"\0" * os.path.getsize(path))


def _garbage(path):
    rng = random.Random(path)
    open(path, "wb").write(bytes(rng.randrange(256) for _ in range(os.path.getsize(path))))


def _empty(path):
    open(path, "wb").close()


DAMAGE = {
    "truncate": _truncate,
    "zero-fill": _zero_fill,
    "garbage": _garbage,
    "empty": _empty,
    "delete": os.unlink,
}

# Metadata that parses as JSON but is not ours to trust.
BAD_JSON = {
    "list": "[]",
    "null": "null",
    "future-schema": json.dumps({"schema_version": 99}),
    "missing-fields": json.dumps({"schema_version": 1, "store_id": "x"}),
    "deep-nesting": "[" * 100_000 + "]" * 100_000,
}


@pytest.fixture(params=["annoy", "faiss"])
def saved_store(request, tmp_path, encoder_counts):
    """A closed store of 60 notes; yields (open_again, the answers it gave, the closed store)."""
    backend = request.param
    fill_notes(tmp_path / "c.db", 60)
    db = Notes(tmp_path / "c.db", backend=backend, encoder=encoder_counts)
    db.backfill_embeddings()
    answers = {q: db.search_by_text(q, top_k=10) for q in QUERIES}
    db.shut()
    opened = []

    def open_again():
        store = Notes(tmp_path / "c.db", backend=backend, encoder=encoder_counts)
        opened.append(store)
        return store

    yield open_again, answers, db
    for store in opened:
        store.shut()


@pytest.fixture
def encoder_counts():
    return HashingEncoder(32)


def _open_and_check(open_again, answers, db, caplog, encoder):
    encoded_before = encoder.texts_encoded
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        store = open_again()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "rebuilding" in warnings[0]
    assert store.embedding_count() == 60, "rebuilt silently empty"
    for query, expected in answers.items():
        assert_same_answers(store.search_by_text(query, top_k=10), expected)
    assert encoder.texts_encoded - encoded_before == len(answers), "stored vectors re-encoded"
    assert store.verify_index().ok
    # The rebuilt files are whole again: the next open is silent.
    store.shut()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        again = open_again()
    assert caplog.records == []
    assert again.embedding_count() == 60
    assert temp_files(os.path.dirname(db.index_path)) == []


@pytest.mark.parametrize("target", ["index", "metadata", "both"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_files_are_rebuilt_with_one_warning(
    saved_store, encoder_counts, caplog, target, damage
):
    open_again, answers, db = saved_store
    paths = {"index": [db.index_path], "metadata": [db.metadata_path],
             "both": [db.index_path, db.metadata_path]}[target]
    for path in paths:
        DAMAGE[damage](path)
    _open_and_check(open_again, answers, db, caplog, encoder_counts)


@pytest.mark.parametrize("content", list(BAD_JSON))
def test_metadata_that_is_json_but_not_a_manifest(saved_store, encoder_counts, caplog, content):
    open_again, answers, db = saved_store
    with open(db.metadata_path, "w") as handle:
        handle.write(BAD_JSON[content])
    _open_and_check(open_again, answers, db, caplog, encoder_counts)


@pytest.mark.parametrize("edit", ["fewer-records", "label-not-int", "checksum", "size"])
def test_metadata_that_disagrees_with_its_index(saved_store, encoder_counts, caplog, edit):
    open_again, answers, db = saved_store
    manifest = json.load(open(db.metadata_path))
    if edit == "fewer-records":
        manifest["record_ids"] = manifest["record_ids"][:-5]
    elif edit == "label-not-int":
        manifest["labels"][0][0] = "one"
    elif edit == "checksum":
        manifest["index_checksum"] = "0" * 32
    else:
        manifest["index_size"] += 1
    json.dump(manifest, open(db.metadata_path, "w"))
    _open_and_check(open_again, answers, db, caplog, encoder_counts)


# -- refused, never overwritten ------------------------------------------------------------------
def _foreign(db, tmp_path, what: str) -> None:
    """Turn the metadata beside ``db`` into that of another store, model or dimension."""
    manifest = json.load(open(db.metadata_path))
    if what == "store":
        manifest["store_id"] = "f" * 32
        manifest["database"] = str(tmp_path / "other.db")
    elif what == "model":
        manifest["model"] = "hash:32-other-model"
    else:
        manifest["dim"] = 48
    json.dump(manifest, open(db.metadata_path, "w"))


ERRORS = {"store": (StoreConflictError, "another store"),
          "model": (ModelConflictError, "hash:32-other-model"),
          "dimension": (StoreConflictError, "48-dimensional")}


@pytest.mark.parametrize("index", ["intact", "deleted", "garbage"])
@pytest.mark.parametrize("what", list(ERRORS))
def test_foreign_metadata_is_refused_even_with_a_broken_index(
    saved_store, tmp_path, what, index
):
    """Refusal comes before repair: a broken index does not license overwriting foreign metadata."""
    open_again, _, db = saved_store
    _foreign(db, tmp_path, what)
    if index == "deleted":
        os.unlink(db.index_path)
    elif index == "garbage":
        _garbage(db.index_path)
    before = file_bytes(db.index_path, db.metadata_path)
    error, message = ERRORS[what]
    with pytest.raises(error, match=message):
        open_again()
    assert file_bytes(db.index_path, db.metadata_path) == before


@pytest.mark.parametrize("call", ["save_index", "rebuild_index", "verify_repair", "close"])
def test_foreign_metadata_appearing_while_open_is_not_overwritten(
    saved_store, tmp_path, call
):
    """Another store's metadata copied in while this one is open: its writes are refused."""
    open_again, _, db = saved_store
    store = open_again()
    store.add_embedding(500, {"body": "pending change"}, "note")
    other = tmp_path / "elsewhere"
    other.mkdir()
    fill_notes(other / "o.db", 3)
    foreign = Notes(other / "o.db", encoder=HashingEncoder(32))
    foreign.backfill_embeddings()
    foreign.shut()
    os.replace(foreign.metadata_path, db.metadata_path)
    before = file_bytes(db.index_path, db.metadata_path)
    with pytest.raises(StoreConflictError, match="another store"):
        if call == "verify_repair":
            store.verify_index(repair=True)
        elif call == "close":
            store.close()
        else:
            getattr(store, call)()
    assert file_bytes(db.index_path, db.metadata_path) == before
    assert "belongs to another store" in " ".join(store.verify_index().problems)
    # The store itself still answers from SQLite.
    assert store.search_by_text("pending change", top_k=1)[0][0] == "500"
    os.unlink(db.metadata_path)  # what the error tells the user to do; then closing works


def test_metadata_is_never_unpickled(saved_store, encoder_counts, caplog):
    """A pickle where the JSON should be is damage like any other, not code to run."""
    import pickle

    open_again, answers, db = saved_store
    marker = os.path.join(os.path.dirname(db.index_path), "pwned")

    class Evil:
        def __reduce__(self):
            return (open, (marker, "w"))

    open(db.metadata_path, "wb").write(pickle.dumps(Evil()))
    _open_and_check(open_again, answers, db, caplog, encoder_counts)
    assert not os.path.exists(marker)
    assert read_manifest(db.metadata_path) is not None
