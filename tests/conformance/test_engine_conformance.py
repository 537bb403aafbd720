"""What every storage engine must show, through the public mixin API only.

Each test runs once per engine variant (the ``engine`` fixture, ``conftest.py``). Vectors are
chosen exactly with the ``vectors:<dim>`` fake encoder (the text is the vector); backfill
tests use the hashing encoder (``hash:<dim>``), which records every text it encoded. The
truth each answer is checked against is a plain dict of what the test wrote.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from embeddable_db import ModelConflictError

from .encoders import make_encoder, unit_vectors, vector_text

DIM = 16
TOL = 1e-4  # search distances against exact 1 - cosine (README: "the same distances (to 1e-4)")
# An approximate index (FAISS HNSW) must find at least this share of the true neighbours on
# the suite's small stores: the README's recall target for HNSW (0.98 measured at 100k).
MIN_RECALL = 0.95


def items(vectors, kind="a", start=0):
    return [(start + i, {"body": vector_text(v)}, kind) for i, v in enumerate(vectors)]


def as_float32(values) -> np.ndarray:
    array = np.asarray(values, np.float64)
    assert np.array_equal(array, array.astype(np.float32)), "not float32 values"
    return array.astype(np.float32)


def exact_distances(query, truth: dict) -> dict[str, float]:
    query = np.asarray(query, np.float64)
    query = query / np.linalg.norm(query)
    return {rid: 1.0 - float(np.dot(query, v / np.linalg.norm(v))) for rid, v in truth.items()}


def check_hits(hits, query, truth: dict, top_k: int, where: str = "") -> tuple[list[str], list[str]]:
    """Every hit's distance is exact 1 - cosine to 1e-4, best first, ids distinct and known;
    returns (the ids found, the exact top-k ids)."""
    exact = exact_distances(query, truth)
    ids = [rid for rid, _ in hits]
    assert all(isinstance(rid, str) for rid in ids), where
    assert len(ids) == len(set(ids)) == min(top_k, len(truth)), where
    assert set(ids) <= set(truth), f"{where}: a hit names no live record"
    for rid, distance in hits:
        assert distance == pytest.approx(exact[rid], abs=TOL), f"{where}: record {rid}"
    distances = [d for _, d in hits]
    assert distances == sorted(distances), f"{where}: hits are not sorted by distance"
    return ids, sorted(exact, key=exact.get)[:top_k]


def check_search(store, engine, queries, truth: dict, top_k: int, where: str = "") -> None:
    """``check_hits`` for each query; exact engines return the brute-force top-k, approximate
    ones at least ``MIN_RECALL`` of it."""
    found = wanted = 0
    for query in queries:
        hits = store.search_by_vector(query, top_k=top_k)
        ids, best = check_hits(hits, query, truth, top_k, where)
        if engine.exact:
            assert ids == best, f"{where}: an exact engine must return the brute-force top-k"
        found += len(set(ids) & set(best))
        wanted += len(best)
    assert found >= math.ceil(MIN_RECALL * wanted), f"{where}: recall {found / wanted:.3f}"


# -- round trip ----------------------------------------------------------------------------------
def test_vectors_come_back_as_written(engine):
    store = engine.open(encoder=f"vectors:{DIM}")
    vectors = unit_vectors(40, DIM, seed=11)
    for rid, record, kind in items(vectors[:10]):
        store.add_embedding(rid, record, kind)
    assert store.add_embeddings(items(vectors[10:], start=10)) == 30
    assert store.embedding_count() == 40
    for i, vector in enumerate(vectors):
        got = as_float32(store.get_vector(i))
        assert got == pytest.approx(vector, abs=1e-6)
    assert store.get_vector("no such record") is None
    before = [store.get_vector(i) for i in range(40)]
    store = engine.reopen(store)
    assert store.embedding_count() == 40
    assert [store.get_vector(i) for i in range(40)] == before, "a vector changed across reopen"


def test_upsert_replaces_the_vector_and_the_kind(engine):
    store = engine.open(encoder=f"vectors:{DIM}")
    old, new = unit_vectors(2, DIM, seed=12)
    others = unit_vectors(20, DIM, seed=13)
    store.add_embeddings(items(others, start=100))
    store.add_embedding("x", {"body": vector_text(old)}, "a")
    store.add_embedding("x", {"body": vector_text(new)}, "b")
    assert store.embedding_count() == 21
    assert as_float32(store.get_vector("x")) == pytest.approx(new, abs=1e-6)
    assert store.search_by_vector(new, top_k=1) == [("x", pytest.approx(0.0, abs=1e-5))]
    assert "x" not in [rid for rid, _ in store.search_by_vector(old, top_k=21, kind="a")]
    assert [rid for rid, _ in store.search_by_vector(old, top_k=5, kind="b")] == ["x"]
    # One id twice in one call: stored once, from its last item.
    assert store.add_embeddings([("y", {"body": vector_text(old)}, "a"),
                                 ("y", {"body": vector_text(new)}, "a")]) == 1
    assert store.embedding_count() == 22
    assert as_float32(store.get_vector("y")) == pytest.approx(new, abs=1e-6)
    store = engine.reopen(store)
    assert as_float32(store.get_vector("x")) == pytest.approx(new, abs=1e-6)
    assert [rid for rid, _ in store.search_by_vector(new, top_k=2)] in (["x", "y"], ["y", "x"])


def test_remove_drops_the_vector_from_count_get_and_search(engine):
    store = engine.open(encoder=f"vectors:{DIM}")
    vectors = unit_vectors(30, DIM, seed=14)
    store.add_embeddings(items(vectors))
    assert store.remove_embedding(3) is True
    assert store.remove_embedding(3) is False
    assert store.remove_embeddings([4, 5, 6, "absent"]) == 3
    gone = {"3", "4", "5", "6"}
    for state in ("live", "reopened"):
        assert store.embedding_count() == 26, state
        assert all(store.get_vector(rid) is None for rid in gone), state
        for i in (3, 4, 5, 6):
            hits = store.search_by_vector(vectors[i], top_k=30)
            assert len(hits) == 26 and not gone & {rid for rid, _ in hits}, state
        store = engine.reopen(store)


def test_record_ids_are_strings_and_1_is_the_same_record_as_str_1(engine):
    store = engine.open(encoder=f"vectors:{DIM}")
    first, second, third = unit_vectors(3, DIM, seed=15)
    store.add_embedding(1, {"body": vector_text(first)}, "a")
    store.add_embedding("1", {"body": vector_text(second)}, "a")
    store.add_embedding(2, {"body": vector_text(third)}, "a")
    assert store.embedding_count() == 2
    assert store.get_vector(1) == store.get_vector("1")
    assert as_float32(store.get_vector(1)) == pytest.approx(second, abs=1e-6)
    hits = store.search_by_vector(second, top_k=2)
    assert [rid for rid, _ in hits] == ["1", "2"]
    assert store.remove_embedding("1") is True
    assert store.remove_embedding(1) is False
    assert store.get_vector(1) is None and store.embedding_count() == 1


# -- distances and nearest neighbours -----------------------------------------------------------
def test_distances_are_exact_cosine_and_the_nearest_are_found(engine):
    """In every state an index goes through: as written; saved, then updated and removed
    from (changes over a built index); reopened from disk; changed again over the reopened
    index; reopened again."""
    store = engine.open(encoder=f"vectors:{DIM}")
    vectors = unit_vectors(300, DIM, seed=21)
    store.add_embeddings(items(vectors))
    truth = {str(i): v for i, v in enumerate(vectors)}
    queries = unit_vectors(20, DIM, seed=22)

    def change(ids, seed):
        new = unit_vectors(len(ids), DIM, seed=seed)
        pairs = list(zip(ids, new, strict=True))
        store.add_embeddings([(i, {"body": vector_text(v)}, "a") for i, v in pairs])
        truth.update({str(i): v for i, v in pairs})
        check_search(store, engine, new[:5], truth, top_k=1, where="a changed vector finds itself")

    def remove(ids):
        assert store.remove_embeddings(ids) == len(ids)
        for i in ids:
            del truth[str(i)]

    def check(state):
        check_search(store, engine, queries, truth, top_k=10, where=state)
        every = store.search_by_vector(queries[3], top_k=len(truth) + 50)
        check_hits(every, queries[3], truth, len(truth) + 50, where=state)

    check("as written")
    store.save_index()
    change(range(0, 30), seed=23)
    remove(range(30, 60))
    check("changed after a save")
    store = engine.reopen(store)
    check("reopened")
    change([*range(60, 90), *range(300, 320)], seed=24)
    remove(range(90, 100))
    check("changed after reopening")
    store = engine.reopen(store)
    check("reopened again")


def test_kind_filter_returns_top_k_of_that_kind(engine):
    """Every "a" record is nearer the query than every "b" one: a filter applied only to the
    first k hits would find no "b" at all."""
    rng = np.random.default_rng(31)
    query = unit_vectors(1, DIM, seed=32)[0]
    near = query + 0.3 * rng.normal(size=(200, DIM)) / math.sqrt(DIM)
    far = -query + 0.8 * rng.normal(size=(25, DIM)) / math.sqrt(DIM)
    near = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)
    far = (far / np.linalg.norm(far, axis=1, keepdims=True)).astype(np.float32)
    assert (near @ query).min() > (far @ query).max()  # the set-up is what the test says

    store = engine.open(encoder=f"vectors:{DIM}")
    store.add_embeddings(items(near, kind="a") + items(far, kind="b", start=1000))
    kind_of = {str(i): "a" for i in range(200)} | {str(1000 + i): "b" for i in range(25)}
    b_truth = {str(1000 + i): v for i, v in enumerate(far)}
    for state in ("live", "reopened"):
        assert {kind_of[rid] for rid, _ in store.search_by_vector(query, top_k=10)} == {"a"}
        hits = store.search_by_vector(query, top_k=10, kind="b")
        assert len(hits) == 10, state
        assert {kind_of[rid] for rid, _ in hits} == {"b"}, state
        ids, best = check_hits(hits, query, b_truth, 10)
        if engine.exact:
            assert ids == best, state
        assert len(store.search_by_vector(query, top_k=50, kind="b")) == 25, state  # all there are
        assert store.search_by_vector(query, top_k=5, kind="no such kind") == []
        store = engine.reopen(store)


# -- stale detection ------------------------------------------------------------------------------
def texts(n: int, start: int = 1) -> dict[int, str]:
    return {i: f"record{i} about topic{i % 5} and word{i * 7}" for i in range(start, start + n)}


def counts(result) -> tuple[int, int, int, int, int]:
    return result.embedded, result.reembedded, result.unchanged, result.removed, result.failed


def test_backfill_reembeds_exactly_the_records_whose_text_changed(engine):
    records = texts(30)
    store = engine.open(records, encoder="hash:64")
    assert counts(store.backfill_embeddings(batch_size=8)) == (30, 0, 0, 0, 0)
    assert sorted(store.encoder.texts) == sorted(records.values())
    edited = {4: "a rewritten record four entirely", 17: "seventeen was edited too"}
    engine.put_records(edited)
    store.encoder.texts.clear()
    assert counts(store.backfill_embeddings(batch_size=8)) == (0, 2, 28, 0, 0)
    assert sorted(store.encoder.texts) == sorted(edited.values())
    fresh = make_encoder("hash:64").encode([edited[4]])[0]
    assert as_float32(store.get_vector(4)) == pytest.approx(fresh / np.linalg.norm(fresh), abs=1e-6)
    calls = store.encoder.calls
    assert counts(store.backfill_embeddings()) == (0, 0, 30, 0, 0)
    assert store.encoder.calls == calls
    assert store.search_by_text(edited[17], top_k=1)[0][0] == "17"


def test_backfill_reembeds_vectors_of_an_older_embedding_version(engine):
    records = texts(12)
    store = engine.open(records, encoder="hash:64", embedding_version=1)
    store.backfill_embeddings()
    kept = {rid: store.get_vector(rid) for rid in (3, 5, 7)}
    store = engine.reopen(store, embedding_version=2)
    assert store.update_embedding_versions([3, 5, "absent"]) == 2  # current without re-encoding
    assert store.update_embedding_version(7) is True
    store.encoder.texts.clear()
    assert counts(store.backfill_embeddings()) == (0, 9, 3, 0, 0)
    assert sorted(store.encoder.texts) == sorted(t for i, t in records.items() if i not in kept)
    assert {rid: store.get_vector(rid) for rid in kept} == kept
    assert counts(store.backfill_embeddings()) == (0, 0, 12, 0, 0)


def test_backfill_reembeds_everything_for_another_model(engine):
    records = texts(10)
    store = engine.open(records, encoder="hash:64")
    store.backfill_embeddings()
    engine.close(store)
    with pytest.raises(ModelConflictError):
        engine.open(encoder="hash:32")
    store = engine.open(encoder="hash:32", allow_model_change=True)
    assert store.embedding_count() == 0  # the old model's vectors are never searched
    assert counts(store.backfill_embeddings()) == (0, 10, 0, 0, 0)
    assert sorted(store.encoder.texts) == sorted(records.values())
    assert store.dimension == 32 and len(store.get_vector(1)) == 32
    assert store.embedding_count() == 10
    assert store.search_by_text(records[6], top_k=1)[0][0] == "6"
    assert counts(store.backfill_embeddings()) == (0, 0, 10, 0, 0)


def test_backfill_drops_the_vectors_of_removed_records(engine):
    records = texts(15)
    store = engine.open(records, encoder="hash:64")
    store.backfill_embeddings()
    old_two = store.get_vector(2)
    engine.delete_records([2, 9])
    engine.put_records({16: "a brand new sixteenth record"})
    store.encoder.texts.clear()
    assert counts(store.backfill_embeddings()) == (1, 0, 13, 2, 0)
    assert store.encoder.texts == ["a brand new sixteenth record"]
    for state in ("live", "reopened"):
        assert store.get_vector(2) is None and store.get_vector(9) is None, state
        assert store.embedding_count() == 14, state
        hits = store.search_by_vector(old_two, top_k=20)
        assert len(hits) == 14 and not {"2", "9"} & {rid for rid, _ in hits}, state
        store = engine.reopen(store)


def test_backfill_follows_a_record_whose_kind_changed(engine):
    store = engine.open({1: "alpha beta", 2: "gamma delta"}, kinds="a", encoder="hash:64")
    store.backfill_embeddings()
    engine.put_records({1: "alpha beta"}, kinds="b")
    assert store.backfill_plan().stale_kind == 1
    result = store.backfill_embeddings()
    assert (result.reembedded, result.unchanged) == (1, 1)
    assert [rid for rid, _ in store.search_by_text("alpha", top_k=2, kind="b")] == ["1"]
    assert [rid for rid, _ in store.search_by_text("alpha", top_k=2, kind="a")] == ["2"]
    store = engine.reopen(store)
    assert [rid for rid, _ in store.search_by_text("alpha", top_k=2, kind="a")] == ["2"]


def test_the_seam_names_exactly_the_records_a_backfill_may_have_to_act_on(engine):
    """``Engine.stale_states`` (the no-op backfill's fast path) against the rule spelled out
    in Python (``StoredState.current_for``) on every kind of difference."""
    store = engine.open({1: "one", 2: "two", 3: "three", 4: "four"}, kinds="a", encoder="hash:64")
    store.backfill_embeddings()
    seam = store._engine
    states = seam.states_of(["1", "2", "3", "4"])
    model = store.model_id
    asked = [("1", states["1"].text_hash, "a"),  # current
             ("2", "another text hash", "a"),  # text changed
             ("3", states["3"].text_hash, "b"),  # kind changed
             ("4", states["4"].text_hash, "a"),  # current
             ("5", "no vector yet", "a")]
    assert seam.stale_states(asked, model, 1) == {"2": states["2"], "3": states["3"], "5": None}
    assert set(seam.stale_states(asked, model, 2)) == {"1", "2", "3", "4", "5"}  # older version
    assert set(seam.stale_states(asked, "another/model", 1)) == {"1", "2", "3", "4", "5"}
    for key, digest, kind in asked[:4]:
        current = key not in seam.stale_states(asked, model, 1)
        assert states[key].current_for(digest, kind, model, 1) is current


def test_the_seam_says_which_vectors_were_written_after_a_backfill_began(engine):
    """``last_seq``/``written_since``/``remove(through_seq=)``: what a backfill uses not to
    write over, nor remove, a vector another writer made while it ran."""
    store = engine.open({1: "one", 2: "two", 3: "three"}, kinds="a", encoder="hash:64")
    store.backfill_embeddings()
    seam = store._engine
    began = seam.last_seq()
    assert seam.written_since(["1", "2", "3", "4"], began) == set()
    store.remove_embedding("3")
    store.add_embedding(2, {"body": "two, written again"}, "a")  # another writer, meanwhile
    # a removal leaves a trace on SQLite (a soft delete), none on PostgreSQL (the row goes)
    assert {"2"} <= seam.written_since(["1", "2", "3", "4"], began) <= {"2", "3"}
    assert seam.remove(["1", "2"], through_seq=began) == {"1"}  # 2 is newer: it stays
    assert seam.states_of(["1", "2"]).keys() == {"2"}


# -- rebuilding never encodes -----------------------------------------------------------------
def test_rebuild_and_reopen_without_index_files_never_encode(engine):
    """Vectors come from a backfill of records (so the model made them); the JSON vectors
    have no ties, so "the same results" is the same ids in the same order."""
    vectors = unit_vectors(200, DIM, seed=41)
    records = {i: vector_text(v) for i, v in enumerate(vectors)}
    kinds = {i: "a" if i % 3 else "b" for i in records}
    store = engine.open(records, kinds=kinds, encoder=f"vectors:{DIM}")
    assert store.backfill_embeddings(batch_size=50).embedded == 200
    encoder = store.encoder
    queries = [*vectors[[1, 50, 99, 150]], *unit_vectors(4, DIM, seed=42)]

    def answers(store):
        return [store.search_by_vector(q, top_k=10, kind=kind) for q in queries for kind in (None, "b")]

    def same(got, expected):
        assert [[rid for rid, _ in hits] for hits in got] == [[rid for rid, _ in hits] for hits in expected]
        assert [d for hits in got for _, d in hits] == pytest.approx(
            [d for hits in expected for _, d in hits], abs=1e-6)

    before = answers(store)
    assert all(len(hits) == 10 for hits in before)
    calls = encoder.calls
    store.rebuild_index()
    assert encoder.calls == calls, "rebuild_index() called the model"
    same(answers(store), before)
    assert store.verify_index().ok

    store = engine.reopen(store, discard_derived=True)
    assert store.embedding_count() == 200
    same(answers(store), before)
    report = store.verify_index()
    assert report.ok, report.problems
    assert encoder.calls == calls, "reopening without index files called the model"


# -- crash and reopen ----------------------------------------------------------------------------
def test_writes_of_a_sigkilled_process_are_all_found_after_reopen(engine):
    """README Guarantees: a killed process loses nothing committed; the store reopens and
    ``verify_index()`` agrees -- without ``repair=True`` (opening repairs what the kill left)."""
    vectors = unit_vectors(61, DIM, seed=51)
    kind = {i: "b" if i % 4 == 0 else "a" for i in range(60)}
    row = {i: (i, vector_text(vectors[i]), kind[i]) for i in range(60)}
    steps = [("add", *row[i]) for i in range(20)]
    steps += [("save",), ("add_many", [row[i] for i in range(20, 50)])]
    steps += [("add", 5, vector_text(vectors[60]), "b"), ("remove", 7)]
    steps += [("add_many", [row[i] for i in range(50, 60)])]
    truth = {str(i): vectors[i] for i in range(60)} | {"5": vectors[60]}
    del truth["7"]
    kind[5] = "b"

    store = engine.crash_and_reopen(steps, encoder=f"vectors:{DIM}")
    report = store.verify_index()
    assert report.ok, report.problems
    assert not report.repaired
    assert store.embedding_count() == 59
    assert store.get_vector(7) is None
    for rid, vector in truth.items():
        assert as_float32(store.get_vector(rid)) == pytest.approx(vector, abs=1e-6), rid
    found = sum(store.search_by_vector(v, top_k=1)[0][0] == rid for rid, v in truth.items())
    assert found >= (len(truth) if engine.exact else math.ceil(MIN_RECALL * len(truth)))
    b_hits = store.search_by_vector(vectors[0], top_k=59, kind="b")
    assert sorted(rid for rid, _ in b_hits) == sorted(str(i) for i in range(60) if kind[i] == "b")
    assert store.encoder.calls == 0, "reopening after the crash called the model"


# -- keyword search ----------------------------------------------------------------------------
def test_keyword_search_follows_the_records_through_reopen_and_a_crash(engine):
    """The keyword index holds the text of exactly the live vectors: best first, higher is
    better, any text a valid query; kept by backfill, reopen without derived data, a kill."""
    records = {1: "alpha timeout", 2: "beta timeout error", 3: "gamma", 4: "an error in delta"}
    store = engine.open(records, kinds={1: "a", 2: "a", 3: "b", 4: "b"}, encoder="hash:64")
    store.backfill_embeddings()

    def found(query, **options):
        hits = store.search_by_keyword(query, **options)
        scores = [score for _, score in hits]
        assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores), hits
        return [rid for rid, _ in hits]

    assert found("timeout error")[0] == "2"
    assert set(found("timeout error")) == {"1", "2", "4"}
    assert found("error", kind="b") == ["4"]
    assert found('"alpha" AND (NOT x) -y* col:z') == ["1"]  # words, never query syntax
    engine.put_records({3: "gamma timeout"}, kinds={3: "b"})
    engine.delete_records([1])
    store.backfill_embeddings()
    assert set(found("timeout")) == {"2", "3"} and found("alpha") == []
    calls = store.encoder.calls
    store = engine.reopen(store, discard_derived=True)
    assert set(found("timeout")) == {"2", "3"}
    assert store.verify_index().ok and store.encoder.calls == calls
    engine.close(store)

    store = engine.crash_and_reopen(
        [("add", 10, "zeta timeout", "a"), ("remove", 2)], encoder="hash:64"
    )
    assert set(found("timeout")) == {"3", "10"}
    report = store.verify_index()
    assert report.ok and not report.repaired, report.problems
