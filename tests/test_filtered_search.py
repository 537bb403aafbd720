"""Filters that still return k (issue 13): ``ids=`` on the vector, text and keyword searches.

A filter applied after a nearest-neighbour search returns fewer than k hits when it keeps few
records. These tests check that every search within a set of ids returns ``top_k`` hits
whenever that many of those ids have vectors, exactly for small sets and by a widened ANN
search for large ones, with the same answers a brute-force scan of the set gives."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import VectorDB, unit_vectors
from embeddable_db import InvalidInputError
from embeddable_db.engine.sqlite import filtered

BACKENDS = {
    "annoy": {},
    "annoy-trees": {"index_options": {"exact_below": 0}},  # a real forest even when small
    "faiss-flat": {"backend": "faiss"},
    "faiss-hnsw": {"backend": "faiss", "index_type": "hnsw"},
}
N, DIM = 3_000, 16


@pytest.fixture(scope="module")
def vectors():
    return unit_vectors(N, DIM, seed=7)


@pytest.fixture(params=sorted(BACKENDS))
def store(request, tmp_path, vectors):
    db = VectorDB(str(tmp_path / "items.db"), **BACKENDS[request.param])
    db.add_embeddings(
        [(i, {"vec": vectors[i].tolist()}, "even" if i % 2 == 0 else "odd") for i in range(N)],
        batch_size=1_000,
    )
    db.save_index()
    yield db
    db.close()
    db.conn.close()


def brute_force(vectors, query, within, k):
    """The k nearest of ``within`` (ints), by a plain cosine scan, ties to the lower id."""
    within = sorted(within)
    scores = vectors[within] @ query
    order = np.lexsort((within, -scores.astype(np.float64)))[:k]
    return [str(within[i]) for i in order]


def hit_ids(hits):
    return [record_id for record_id, _ in hits]


@pytest.mark.parametrize("size", [1, 5, 30, 300])
def test_a_small_set_is_searched_exactly_and_fills_top_k(store, vectors, size):
    rng = np.random.default_rng(size)
    within = rng.choice(N, size, replace=False).tolist()
    query = unit_vectors(1, DIM, seed=size)[0]
    hits = store.search_by_vector(query, 10, ids=within)
    assert len(hits) == min(10, size)
    assert hit_ids(hits) == brute_force(vectors, query, within, 10)
    for record_id, distance in hits:  # each distance is the hit's own cosine distance
        assert distance == pytest.approx(1 - float(vectors[int(record_id)] @ query), abs=1e-5)


def test_a_large_set_widens_the_ann_search_until_top_k_are_found(store, vectors, monkeypatch):
    monkeypatch.setattr(filtered, "EXACT_IDS_UP_TO", 10)  # the ANN path, at a testable size
    recalls = []
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        within = rng.choice(N, 30, replace=False).tolist()  # 1% of the store
        query = unit_vectors(1, DIM, seed=100 + seed)[0]
        hits = hit_ids(store.search_by_vector(query, 10, ids=within))
        assert len(hits) == 10 and len(set(hits)) == 10
        assert set(hits) <= {str(i) for i in within}
        recalls.append(len(set(hits) & set(brute_force(vectors, query, within, 10))) / 10)
    assert np.mean(recalls) >= 0.9


def test_kind_and_ids_together(store, vectors):
    within = list(range(0, 200))
    query = vectors[11]
    hits = store.search_by_vector(query, 5, kind="odd", ids=within)
    assert hit_ids(hits) == brute_force(vectors, query, [i for i in within if i % 2], 5)
    assert hit_ids(hits)[0] == "11"


def test_unknown_removed_and_repeated_ids_are_ignored(store, vectors):
    store.remove_embedding(4)
    query = vectors[4]
    hits = store.search_by_vector(query, 10, ids=[4, "4", 5, 5, "no such record", 6])
    assert hit_ids(hits) == brute_force(vectors, query, [5, 6], 10)
    assert store.search_by_vector(query, 10, ids=[]) == []
    assert store.search_by_vector(query, 10, ids=["no such record"]) == []


def test_a_changed_vector_is_searched_as_it_is_now(store, vectors):
    store.add_embedding(3, {"vec": vectors[1000].tolist()}, "odd")  # in the delta, not the index
    hits = store.search_by_vector(vectors[1000], 2, ids=[3, 1000, 7])
    assert hit_ids(hits) == ["3", "1000"] or hit_ids(hits) == ["1000", "3"]
    assert all(distance == pytest.approx(0, abs=1e-5) for _, distance in hits)


@pytest.mark.parametrize("bad", ["12", b"12", 12, object()])
def test_ids_must_be_a_collection_of_record_ids(store, vectors, bad):
    before = store.embedding_count()
    with pytest.raises(InvalidInputError, match="ids must be a list"):
        store.search_by_vector(vectors[0], 3, ids=bad)
    assert store.embedding_count() == before


def test_a_bad_record_id_in_ids_is_named(store, vectors):
    with pytest.raises(InvalidInputError, match="record_id"):
        store.search_by_vector(vectors[0], 3, ids=[1, None])


# -- keyword search within ids ----------------------------------------------------------------
def test_keyword_search_within_ids_fills_top_k(make_notes):
    db = make_notes()
    db.add_embeddings([(i, {"body": f"timeout in service {i}"}, "note") for i in range(500)])
    db.add_embeddings([(1000 + i, {"body": "timeout timeout timeout"}, "note") for i in range(50)])
    within = [3, 77, 140, 1001, 499, "missing"]
    hits = db.search_by_keyword("timeout", top_k=4, ids=within)
    assert len(hits) == 4
    assert hit_ids(hits)[0] == "1001"  # the densest match of the set comes first
    assert set(hit_ids(hits)) <= {"3", "77", "140", "1001", "499"}
    assert hit_ids(db.search_by_keyword("service 77", top_k=10, ids=[77])) == ["77"]
    assert db.search_by_keyword("timeout", ids=[]) == []


def test_search_by_text_within_ids(make_notes):
    db = make_notes()
    db.add_embeddings([(i, {"body": f"note number {i}"}, "note") for i in range(50)])
    hits = db.search_by_text("note number 7", top_k=3, ids=range(10, 14))
    assert len(hits) == 3 and set(hit_ids(hits)) <= {"10", "11", "12", "13"}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_reopened_store_reads_the_set_from_its_files(tmp_path, vectors, backend):
    # Reopened, the vectors come from the loaded index (Annoy: its mapped file), not memory
    # the build left behind.
    path = str(tmp_path / "items.db")
    db = VectorDB(path, **BACKENDS[backend])
    db.add_embeddings([(i, {"vec": vectors[i].tolist()}, "v") for i in range(N)], batch_size=1_000)
    db.close()
    db.conn.close()
    db = VectorDB(path, **BACKENDS[backend])
    try:
        db.add_embedding(5, {"vec": vectors[2999].tolist()}, "v")  # one changed since the files
        for seed in range(5):
            within = np.random.default_rng(seed).choice(N, 200, replace=False).tolist() + [5]
            query = vectors[within[0]]
            assert hit_ids(db.search_by_vector(query, 10, ids=within)) == brute_force(
                np.vstack([vectors[:5], vectors[2999:], vectors[6:]]), query, within, 10
            )
    finally:
        db.close()
        db.conn.close()


def test_a_backend_that_cannot_give_vectors_back_is_answered_from_sqlite(store, vectors, monkeypatch):
    """``LiveIndex.vectors_of`` None (a backend without bulk reads): the set's vectors come
    from SQLite, and the answers are the same."""
    from embeddable_db.engine.sqlite.live_index import LiveIndex

    within = list(range(0, N, 7))[:200]
    query = unit_vectors(1, DIM, seed=99)[0]
    expected = brute_force(vectors, query, within, 10)
    monkeypatch.setattr(LiveIndex, "vectors_of", lambda self, labels: None)
    hits = store.search_by_vector(query.tolist(), top_k=10, ids=within)
    assert hit_ids(hits) == expected
    for record_id, distance in hits:
        assert distance == pytest.approx(1 - float(vectors[int(record_id)] @ query), abs=1e-5)
