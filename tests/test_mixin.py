"""The mixin's public API with a fake encoder: storage, search, backfill, persistence."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from conftest import NotesDB, VectorDB, file_bytes, unit_vectors
from embeddable_db import (
    BackfillResult,
    EmbeddingError,
    HashingEncoder,
    ModelConflictError,
)

BACKENDS = ["annoy", "faiss"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_search_get_remove(make_notes, backend):
    db = make_notes(backend=backend)
    db.add_embedding(1, {"body": "the cat sat on the mat"}, "note")
    db.add_embedding("two", {"body": "stock prices fell sharply"}, "note", source_id=7)
    hits = db.search_by_text("a cat on a mat", top_k=2)
    assert [h[0] for h in hits] == ["1", "two"]
    assert all(isinstance(h[0], str) for h in hits)
    assert hits[0][1] < hits[1][1]
    assert db.get_vector(1) == pytest.approx(db.encode_text("the cat sat on the mat"), abs=1e-6)
    assert db.remove_embedding(1) is True
    assert db.remove_embedding(1) is False
    assert db.get_vector(1) is None
    assert [h[0] for h in db.search_by_text("cat mat", top_k=5)] == ["two"]
    assert db.embedding_count() == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_distance_is_one_minus_cosine(tmp_path, backend):
    vectors = unit_vectors(50, 16, seed=1)
    db = VectorDB(str(tmp_path / "v.db"), backend=backend)
    db.add_embeddings([(f"r{i}", {"vec": v.tolist()}, "item") for i, v in enumerate(vectors)])
    query = unit_vectors(1, 16, seed=2)[0]
    hits = db.search_by_vector(query.tolist(), top_k=50)
    expected = 1.0 - vectors @ query
    order = np.argsort(expected)
    assert [h[0] for h in hits] == [f"r{i}" for i in order]
    assert [h[1] for h in hits] == pytest.approx(expected[order].tolist(), abs=1e-5)
    # Opposite vector: distance 2.
    assert db.search_by_vector((-vectors[3]).tolist(), top_k=50)[-1] == ("r3", pytest.approx(2.0, abs=1e-5))
    db.close()


def test_backends_agree(tmp_path):
    """Exact indexes give the same ids and distances (to 1e-4) whichever backend answers."""
    vectors = unit_vectors(300, 24, seed=3)
    queries = unit_vectors(20, 24, seed=4)
    results = {}
    for backend in BACKENDS:
        db = VectorDB(str(tmp_path / f"{backend}.db"), backend=backend)
        db.add_embeddings([(i, {"vec": v}, "item") for i, v in enumerate(vectors)])
        db.save_index()
        results[backend] = [db.search_by_vector(q, top_k=10) for q in queries]
        db.close()
    for annoy_hits, faiss_hits in zip(results["annoy"], results["faiss"], strict=True):
        assert [h[0] for h in annoy_hits] == [h[0] for h in faiss_hits]
        assert [h[1] for h in annoy_hits] == pytest.approx([h[1] for h in faiss_hits], abs=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kind_filter_still_returns_top_k(tmp_path, backend):
    vectors = unit_vectors(400, 16, seed=5)
    db = VectorDB(str(tmp_path / "k.db"), backend=backend)
    items = [(i, {"vec": v}, "rare" if i % 50 == 0 else "common") for i, v in enumerate(vectors)]
    db.add_embeddings(items)
    db.save_index()
    hits = db.search_by_vector(vectors[1], top_k=5, kind="rare")
    assert len(hits) == 5
    assert all(int(rid) % 50 == 0 for rid, _ in hits)
    rare = [i for i in range(400) if i % 50 == 0]
    expected = sorted(rare, key=lambda i: 1 - vectors[i] @ vectors[1])[:5]
    assert [int(rid) for rid, _ in hits] == expected
    assert len(db.search_by_vector(vectors[1], top_k=100, kind="rare")) == 8
    db.close()


def test_backfill_counts_and_batches(make_notes, encoder):
    db = make_notes()
    for i in range(25):
        db.add_note(f"note {i} about subject {i % 4}")
    encoder.calls = 0
    result = db.backfill_embeddings(batch_size=10)
    assert isinstance(result, BackfillResult)
    assert (result.embedded, result.reembedded, result.removed, result.unchanged, result.failed) == (
        25, 0, 0, 0, 0)
    assert encoder.calls == 3  # one model call per batch of 10
    again = db.backfill_embeddings(batch_size=10)
    assert (again.embedded, again.unchanged) == (0, 25)
    db.conn.execute("UPDATE notes SET body = 'rewritten entirely' WHERE id = 3")
    db.conn.execute("DELETE FROM notes WHERE id IN (4, 5)")
    db.conn.execute("INSERT INTO notes(body) VALUES ('')")  # nothing to embed: reported
    db.conn.commit()
    third = db.backfill_embeddings(batch_size=10)
    assert (third.embedded, third.reembedded, third.removed, third.unchanged, third.failed) == (
        0, 1, 2, 22, 1)
    assert third.failures[0][0] == "26" and "empty" in third.failures[0][1]
    assert db.search_by_text("rewritten entirely", top_k=1)[0][0] == "3"
    assert db.embedding_count() == 23


def test_backfill_reembeds_older_embedding_version(make_notes, tmp_path, encoder):
    db = make_notes()
    for i in range(5):
        db.add_note(f"text {i}")
    db.backfill_embeddings()
    db.close()
    db.conn.close()
    newer = make_notes(embedding_version=2)
    result = newer.backfill_embeddings()
    assert result.reembedded == 5
    assert newer.backfill_embeddings().unchanged == 5
    # Marking a record current without re-encoding (the seed's API):
    newer3 = make_notes("notes.db", embedding_version=3)
    assert newer3.update_embedding_version(1) is True
    assert newer3.update_embedding_versions([2, 3, 99]) == 2
    result = newer3.backfill_embeddings()
    assert (result.reembedded, result.unchanged) == (2, 3)


def test_model_change_needs_consent_then_reembeds(make_notes):
    db = make_notes(encoder=HashingEncoder(32))
    db.add_note("alpha beta")
    db.add_note("gamma delta")
    db.backfill_embeddings()
    with pytest.raises(ModelConflictError, match="hash:32"):
        make_notes(encoder=HashingEncoder(16))
    switched = make_notes(encoder=HashingEncoder(16), allow_model_change=True)
    assert switched.embedding_count() == 0  # old-model vectors are never mixed in
    result = switched.backfill_embeddings()
    assert result.reembedded == 2
    assert switched.dimension == 16
    assert switched.search_by_text("alpha", top_k=1)[0][0] == "1"


def test_vector_override_works_one_record_at_a_time(tmp_path):
    db = VectorDB(str(tmp_path / "v.db"))
    vectors = unit_vectors(5, 8, seed=7)
    for i, v in enumerate(vectors):
        db.conn.execute("INSERT INTO items VALUES (?, ?)", (f"i{i}", json.dumps(v.tolist())))
    db.conn.commit()
    result = db.backfill_embeddings(batch_size=2)
    assert result.embedded == 5
    assert db.search_by_vector(vectors[2], top_k=1)[0][0] == "i2"
    db.conn.execute("UPDATE items SET vec = ? WHERE id = 'i0'", (json.dumps(vectors[4].tolist()),))
    db.conn.commit()
    assert db.backfill_embeddings().reembedded == 1
    db.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_deleted_files_rebuild_without_encoding(make_notes, encoder, backend):
    db = make_notes(backend=backend)
    for i in range(40):
        db.add_note(f"record {i} on theme {i % 5}")
    db.backfill_embeddings()
    query = db.encode_text("theme 3")
    before = db.search_by_vector(query, top_k=8)
    db.close()
    os.remove(db.index_path)
    os.remove(db.metadata_path)
    encoder.calls = 0
    reopened = make_notes(backend=backend)
    assert reopened.search_by_vector(query, top_k=8) == before
    assert encoder.calls == 0
    assert os.path.exists(reopened.index_path) and os.path.exists(reopened.metadata_path)


def test_annoy_adds_go_to_delta_not_file(make_notes):
    db = make_notes(backend="annoy")
    for i in range(30):
        db.add_note(f"bulk note {i}")
    db.backfill_embeddings()
    stamp = os.stat(db.index_path).st_mtime_ns, os.path.getsize(db.metadata_path)
    generation = json.load(open(db.metadata_path))["generation"]
    for i in range(20):
        db.add_embedding(f"new{i}", {"body": f"fresh item {i}"}, "note")
    assert (os.stat(db.index_path).st_mtime_ns, os.path.getsize(db.metadata_path)) == stamp
    assert db.search_by_text("fresh item 7", top_k=1)[0][0] == "new7"
    db.save_index()
    manifest = json.load(open(db.metadata_path))
    assert manifest["generation"] == generation + 1 and manifest["count"] == 50


def test_manifest_contents(make_notes):
    db = make_notes(backend="faiss")
    db.add_embedding(5, {"body": "some text"}, "note", source_id="src-1")
    db.save_index()
    manifest = json.load(open(db.metadata_path))
    assert manifest["backend"] == "faiss" and manifest["metric"] == "cosine"
    assert manifest["dim"] == 32 and manifest["model"] == "hash:32"
    assert manifest["embedding_version"] == 1 and manifest["generation"] >= 1
    assert manifest["store_id"] and manifest["index_checksum"]
    # Columns in label order (schema 3); values of few kinds as a list and runs of its codes.
    assert manifest["count"] == 1 and manifest["record_ids"] == ["5"]
    assert manifest["kinds"] == {"values": ["note"], "runs": [[0, 1]]}
    details = manifest["details"]
    assert details["source_id"] == {"values": ["src-1"], "runs": [[0, 1]]}
    assert details["created_at"]["values"][0].endswith("+00:00")
    assert details["embedding_version"] == {"values": [1], "runs": [[0, 1]]}
    assert "vector" not in open(db.metadata_path).read()


def test_other_connection_writes_are_seen(make_notes):
    writer = make_notes()
    reader = make_notes()
    writer.add_embedding("w1", {"body": "written elsewhere"}, "note")
    assert reader.search_by_text("written elsewhere", top_k=1)[0][0] == "w1"
    writer.remove_embedding("w1")
    assert reader.search_by_text("written elsewhere", top_k=1) == []


def test_rebuild_and_verify(make_notes, encoder):
    db = make_notes()
    for i in range(12):
        db.add_note(f"verify me {i}")
    db.backfill_embeddings()
    report = db.verify_index()
    assert report.ok and report.sqlite_count == report.index_count == report.metadata_count == 12
    assert report.file_count == 12 and report.pending_changes == 0
    encoder.calls = 0
    db.rebuild_index()
    assert encoder.calls == 0 and db.verify_index().ok
    with open(db.index_path, "r+b") as handle:
        handle.truncate(100)
    broken = db.verify_index()
    assert not broken.ok and "checksum" in broken.problems[0]
    fixed = db.verify_index(repair=True)
    assert fixed.ok and fixed.repaired


def test_damaged_metadata_is_rebuilt_with_one_warning(make_notes, caplog):
    db = make_notes()
    for i in range(10):
        db.add_note(f"warn {i}")
    db.backfill_embeddings()
    before = db.search_by_text("warn 4", top_k=3)
    db.close()
    with open(db.metadata_path, "w") as handle:
        handle.write("{ not json")
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        reopened = make_notes()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert reopened.search_by_text("warn 4", top_k=3) == before


def test_try_add_embedding_logs_and_returns_false(make_notes, caplog):
    db = make_notes()
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        assert db.try_add_embedding(1, {"body": ""}, "note") is False
    assert "empty" in caplog.text
    assert db.try_add_embedding(1, {"body": "fine"}, "note") is True


class RecordingEncoder(HashingEncoder):
    """Remembers the texts of every model call."""

    def __init__(self):
        super().__init__(32)
        self.batches = []

    def encode(self, texts, batch_size=None):
        self.batches.append(list(texts))
        return super().encode(texts)


def test_backfill_batches_texts_of_similar_length(tmp_path):
    rng = np.random.default_rng(3)
    encoder = RecordingEncoder()
    db = NotesDB(str(tmp_path / "n.db"), encoder=encoder)
    bodies = [" ".join(["word"] * int(n)) + f" {i}" for i, n in enumerate(rng.integers(1, 60, 95))]
    for body in bodies:
        db.add_note(body)
    result = db.backfill_embeddings(batch_size=10)
    assert result.embedded == 95
    assert [len(batch) for batch in encoder.batches] == [10] * 9 + [5]  # one call per batch
    lengths = [len(text) for batch in encoder.batches for text in batch]
    assert lengths == sorted(lengths)  # shortest first: little padding inside each batch
    assert sorted(text for batch in encoder.batches for text in batch) == sorted(bodies)
    assert db.search_by_text(bodies[7], top_k=1)[0][0] == "8"
    db.close()


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_faiss_index_opened_from_its_file_takes_changes(tmp_path, index_type):
    """The index is mapped from its file at open; changing it must not touch that file."""
    vectors = unit_vectors(301, 16, seed=4)
    path = str(tmp_path / "m.db")
    db = VectorDB(path, backend="faiss", index_type=index_type)
    db.add_embeddings([(i, {"vec": v}, "item") for i, v in enumerate(vectors[:300])])
    db.close()
    index_file = db.index_path
    before = file_bytes(index_file)
    reopened = VectorDB(path, backend="faiss", index_type=index_type)
    reopened.add_embedding(300, {"vec": vectors[300]}, "item")
    reopened.add_embedding(5, {"vec": vectors[6]}, "item")
    reopened.remove_embedding(7)
    assert file_bytes(index_file) == before
    assert reopened.search_by_vector(vectors[300], top_k=1)[0][0] == "300"
    assert {h[0] for h in reopened.search_by_vector(vectors[6], top_k=2)} == {"5", "6"}
    assert "7" not in [h[0] for h in reopened.search_by_vector(vectors[7], top_k=5)]
    reopened.save_index()  # folds the changes into the index: it must copy it first
    assert file_bytes(index_file) != before
    assert reopened.search_by_vector(vectors[300], top_k=1)[0][0] == "300"
    reopened.add_embedding(8, {"vec": vectors[9]}, "item")
    assert {h[0] for h in reopened.search_by_vector(vectors[9], top_k=2)} == {"8", "9"}
    reopened.close()
    third = VectorDB(path, backend="faiss", index_type=index_type)
    assert third.embedding_count() == 300
    assert third.search_by_vector(vectors[300], top_k=1)[0][0] == "300"
    assert third.verify_index().ok
    third.close()


def test_faiss_hnsw_option(tmp_path):
    vectors = unit_vectors(300, 16, seed=9)
    db = VectorDB(str(tmp_path / "h.db"), backend="faiss", index_type="hnsw")
    db.add_embeddings([(i, {"vec": v}, "item") for i, v in enumerate(vectors)])
    db.save_index()
    assert db.search_by_vector(vectors[10], top_k=1)[0][0] == "10"
    db.remove_embedding(10)  # HNSW cannot remove: tombstoned
    assert "10" not in [h[0] for h in db.search_by_vector(vectors[10], top_k=5)]
    db.add_embedding(10, {"vec": vectors[11]}, "item")  # changed: found at its new place
    assert {h[0] for h in db.search_by_vector(vectors[11], top_k=2)} == {"10", "11"}
    db.close()
    reopened = VectorDB(str(tmp_path / "h.db"), backend="faiss", index_type="hnsw")
    assert {h[0] for h in reopened.search_by_vector(vectors[11], top_k=2)} == {"10", "11"}
    reopened.close()


def test_add_embeddings_is_all_or_nothing(make_notes):
    db = make_notes()
    with pytest.raises(EmbeddingError, match="'b'"):
        db.add_embeddings([("a", {"body": "fine"}, "note"), ("b", {"body": " "}, "note")])
    assert db.embedding_count() == 0
    # One record stored three times is one record stored (issue 10, item 22).
    assert db.add_embeddings([("a", {"body": "fine"}, "note")] * 3) == 1
    assert db.embedding_count() == 1


def test_in_memory_database_works_without_files():
    db = NotesDB(":memory:", encoder=HashingEncoder(8))
    db.add_embedding(1, {"body": "memory only"}, "note")
    assert db.index_path is None
    assert db.search_by_text("memory only", top_k=1)[0][0] == "1"
    db.save_index()
    assert db.verify_index().ok
    db.close()


def test_closed_store_refuses_work(make_notes):
    db = make_notes()
    db.close()
    with pytest.raises(EmbeddingError, match="closed"):
        db.search_by_vector([1.0] * 32)


def test_encoder_failure_is_not_reported_as_bad_input(make_notes):
    from embeddable_db import EncodingError

    class Broken(HashingEncoder):
        def encode(self, texts, batch_size=None):
            raise RuntimeError("model crashed")

    db = make_notes(encoder=Broken(8))
    with pytest.raises(EncodingError, match="model crashed") as caught:
        db.add_embedding(1, {"body": "fine text"}, "note")
    assert not isinstance(caught.value, ValueError)
    db.add_note("another fine text")
    result = db.backfill_embeddings()
    assert result.failed == 1 and "encoder failed" in result.failures[0][1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_is_exact_with_many_tombstones(tmp_path, backend):
    """Updated vectors leave tombstones in the built index; results must still be the best k."""
    vectors = unit_vectors(300, 16, seed=11)
    moved = unit_vectors(300, 16, seed=12)
    db = VectorDB(str(tmp_path / "t.db"), backend=backend)
    db.add_embeddings([(i, {"vec": v}, "item") for i, v in enumerate(vectors)])
    db.save_index()
    db.add_embeddings([(i, {"vec": moved[i]}, "item") for i in range(250)])  # 250 tombstones
    current = np.concatenate([moved[:250], vectors[250:]])
    for q in unit_vectors(5, 16, seed=13):
        hits = db.search_by_vector(q, top_k=10)
        expected = np.argsort(1 - current @ q)[:10]
        assert [h[0] for h in hits] == [str(i) for i in expected]
    db.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_small_backfill_defers_the_index_rewrite_and_truncates_the_wal(make_notes, backend):
    """A backfill that changed a few records leaves them as a delta (SQLite holds them; the
    next open replays them) instead of rebuilding and rewriting the whole index, and gives
    the WAL it grew back to the file system (issue 12)."""
    db = make_notes(backend=backend)
    ids = [db.add_note(f"kept note {i}") for i in range(40)]
    db.backfill_embeddings()
    files = file_bytes(db.index_path, db.metadata_path)
    for rid in ids[:3]:
        db.conn.execute("UPDATE notes SET body = ? WHERE id = ?", (f"edited note {rid}", rid))
    db.conn.commit()
    result = db.backfill_embeddings()
    assert result.reembedded == 3
    assert file_bytes(db.index_path, db.metadata_path) == files  # not rebuilt, not rewritten
    wal = db.conn.execute("PRAGMA database_list").fetchone()[2] + "-wal"
    assert os.path.getsize(wal) == 0  # truncated by the backfill's end
    assert db.search_by_text(f"edited note {ids[1]}", top_k=1)[0][0] == str(ids[1])
    db.close()
    reopened = make_notes(backend=backend)
    assert reopened.search_by_text(f"edited note {ids[2]}", top_k=1)[0][0] == str(ids[2])
    assert reopened.verify_index().ok and reopened.embedding_count() == 40
    reopened.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_defers_a_small_delta(make_notes, encoder, caplog, backend):
    """Closing after a few adds costs no rebuild or rewrite of the index; the next open replays
    them. (A FAISS flat index mapped from its file keeps changes in the delta.)"""
    db = make_notes(backend=backend)
    for i in range(30):
        db.add_note(f"kept note {i}")
    db.backfill_embeddings()
    db.close()
    db = make_notes(backend=backend)
    files = file_bytes(db.index_path, db.metadata_path)
    db.add_embedding("late", {"body": "added just before closing"}, "note")
    db.close()
    assert file_bytes(db.index_path, db.metadata_path) == files  # no rebuild at close
    encoder.texts_encoded = 0
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        reopened = make_notes(backend=backend)
    assert caplog.records == []
    assert reopened.search_by_text("added just before closing", top_k=1)[0][0] == "late"
    assert reopened.embedding_count() == 31 and reopened.verify_index().ok
    reopened.save_index()  # an explicit save always flushes
    assert file_bytes(reopened.index_path, reopened.metadata_path) != files
    # encoding the queries above was the only model work: nothing was re-embedded
    assert encoder.texts_encoded == 1


def test_a_long_walk_over_current_records_reports_progress_as_it_reads(make_notes, monkeypatch):
    """A no-op backfill has no batch to report; it still tells progress every READ_TICK
    records read (issue 12: a 1M-record no-op backfill read for seconds in silence)."""
    from embeddable_db import backfill

    db = make_notes()
    db.add_embeddings([(i, {"body": f"note {i}"}, "note") for i in range(2_500)])
    for i in range(2_500):
        db.conn.execute("INSERT INTO notes(id, body) VALUES (?, ?)", (i, f"note {i}"))
    db.conn.commit()
    monkeypatch.setattr(backfill, "READ_TICK", 500)
    seen = []
    result = db.backfill_embeddings(progress=lambda r: seen.append(r.processed))
    assert result.unchanged == 2_500 and result.embedded == 0
    assert len(seen) >= 4 and seen == sorted(seen) and seen[-1] == 2_500
    assert seen[0] < 2_500  # told before the end, while reading
    db.close()


def test_a_backfill_finds_an_orphan_even_when_writes_during_it_balance_the_counts(make_notes):
    """A walk that read as many stored keys as the store holds skips the orphan scan only if
    nothing was written meanwhile. Here, between the walk's first chunk of records (1,000) and
    its second, record 1's vector is removed and record 2000 gets one, so the counts match
    though record 1001's vector has lost its record."""
    db = make_notes()
    db.conn.executemany("INSERT INTO notes(id, body) VALUES (?, ?)",
                        [(i, f"note {i}") for i in range(1, 1002)])
    db.conn.commit()
    db.backfill_embeddings(batch_size=500)
    db.conn.execute("DELETE FROM notes WHERE id = 1001")
    db.conn.execute("INSERT INTO notes(id, body) VALUES (2000, 'note 2000')")
    db.conn.commit()
    read = db.iter_records

    def records_while_others_write():
        for n, item in enumerate(read()):
            if n == 1_000:  # the first record of the second chunk
                db.remove_embedding(1)
                db.add_embedding(2000, {"body": "note 2000"}, "note")
            yield item

    db.iter_records = records_while_others_write
    result = db.backfill_embeddings(batch_size=500)
    assert result.removed == 1 and db.get_vector(1001) is None
    db.iter_records = read
    assert db.backfill_plan().orphaned == 0
    assert db.backfill_embeddings().removed == 0  # and a quiet walk finds none either


def test_a_no_op_backfill_still_finds_a_record_deleted_by_plain_sql(make_notes):
    db = make_notes()
    for i in range(1, 6):
        db.add_note(f"note {i}")
    db.backfill_embeddings()
    db.conn.execute("DELETE FROM notes WHERE id = 4")
    db.conn.commit()
    assert db.backfill_plan().orphaned == 1
    result = db.backfill_embeddings()
    assert (result.removed, result.unchanged) == (1, 4) and db.get_vector(4) is None
