"""A model of the whole API: random operation sequences against a plain dict of id -> vector.

Hypothesis drives add / update / remove / backfill / save / reopen / rebuild / backend switch
(plus writes through a second connection, and compaction forced by a tiny delta limit); after
every step the store's counts and search results (ids and distances) must equal an exact cosine
search over the reference. Distances are compared to 1e-4; among results whose distances tie
(the same vector drawn twice) any order is accepted, everything else must match exactly.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile

import faiss
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from embeddable_db import EmbeddableDBMixin
from embeddable_db.engine.sqlite import live_view as mixin_module

faiss.omp_set_num_threads(1)  # single queries on tiny indexes: see reliability_helpers.py
DIM = 8
IDS = [f"r{i}" for i in range(10)] + ["7", "long-" + "x" * 200]
QUERIES = np.random.default_rng(99).normal(size=(3, DIM))
QUERIES /= np.linalg.norm(QUERIES, axis=1, keepdims=True)


# HNSW is approximate, but on stores this small its searches are exact.
INDEXES = {
    "annoy": {"backend": "annoy"},
    "faiss": {"backend": "faiss"},
    "hnsw": {"backend": "faiss", "index_type": "hnsw"},
}


def vector_of(seed: int) -> list[float]:
    """A vector picked by seed: equal seeds give equal vectors, different seeds never tie."""
    return np.random.default_rng(seed).normal(size=DIM).round(6).tolist()


def unit(vector: list[float]) -> np.ndarray:
    array = np.asarray(vector, np.float64)
    return (array / np.linalg.norm(array)).astype(np.float32)


def kind_of(record_id: str) -> str:
    return "even" if sum(map(ord, record_id)) % 2 == 0 else "odd"


class Items(EmbeddableDBMixin):
    """Records with ready-made vectors (the seed's ``vector(record)`` contract)."""

    def __init__(self, path, **options):
        self.conn = sqlite3.connect(path)
        self.conn.execute("CREATE TABLE IF NOT EXISTS items(id TEXT PRIMARY KEY, vec TEXT)")
        self.conn.commit()
        if options.get("backend") == "annoy":
            options["index_options"] = {"n_trees": 5}
        super().__init__(model_name="precomputed", **options)

    def vector(self, record):
        return record["vec"]

    def iter_records(self):
        for rid, vec in self.conn.execute("SELECT id, vec FROM items ORDER BY id"):
            yield rid, {"vec": json.loads(vec)}, kind_of(rid)

    def put_record(self, record_id: str, vector: list[float]) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO items(id, vec) VALUES (?, ?)", (record_id, json.dumps(vector))
        )
        self.conn.commit()

    def drop_record(self, record_id: str) -> None:
        self.conn.execute("DELETE FROM items WHERE id = ?", (record_id,))
        self.conn.commit()


ids = st.sampled_from(IDS)
seeds = st.integers(0, 40)  # few seeds: the same vector sometimes comes back (exact ties)


class StoreModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="edb-model-")
        self.path = f"{self.folder}/model.db"
        self.table: dict[str, list[float]] = {}  # the records the subclass holds
        self.ref: dict[str, list[float]] = {}  # the vectors the store should hold
        self.db: Items | None = None
        self.saved_min_pending = mixin_module.MIN_PENDING

    @initialize(backend=st.sampled_from(list(INDEXES)), min_pending=st.sampled_from([2, 10_000]))
    def start(self, backend, min_pending):
        # A tiny delta limit makes writes fold the delta into the backend (and write files).
        mixin_module.MIN_PENDING = min_pending
        self.backend = backend
        self.db = self._open()

    def teardown(self):
        mixin_module.MIN_PENDING = self.saved_min_pending
        if self.db is not None:
            self.db.close()
            self.db.conn.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- writes --------------------------------------------------------------------------------
    @rule(record_id=ids, seed=seeds)
    def add(self, record_id, seed):
        vector = vector_of(seed)
        self.db.put_record(record_id, vector)
        self.db.add_embedding(record_id, {"vec": vector}, kind_of(record_id))
        self.table[record_id] = self.ref[record_id] = vector

    @rule(pairs=st.lists(st.tuples(ids, seeds), min_size=1, max_size=6, unique_by=lambda p: p[0]))
    def add_many(self, pairs):
        items = []
        for record_id, seed in pairs:
            vector = vector_of(seed)
            self.db.put_record(record_id, vector)
            items.append((record_id, {"vec": vector}, kind_of(record_id)))
            self.table[record_id] = self.ref[record_id] = vector
        assert self.db.add_embeddings(items, batch_size=4) == len(items)

    @rule(record_id=ids, seed=seeds)
    def change_record_only(self, record_id, seed):
        """The record changes in its table; its vector is stale until the next backfill."""
        vector = vector_of(seed)
        self.db.put_record(record_id, vector)
        self.table[record_id] = vector

    @rule(record_id=ids)
    def remove(self, record_id):
        assert self.db.remove_embedding(record_id) == (record_id in self.ref)
        self.db.drop_record(record_id)
        self.ref.pop(record_id, None)
        self.table.pop(record_id, None)

    @rule(record_id=ids)
    def remove_vector_only(self, record_id):
        assert self.db.remove_embedding(record_id) == (record_id in self.ref)
        self.ref.pop(record_id, None)

    @rule(record_id=ids)
    def delete_record_only(self, record_id):
        """The record goes; its vector stays until a backfill drops it."""
        self.db.drop_record(record_id)
        self.table.pop(record_id, None)

    @rule(batch_size=st.integers(1, 5))
    def backfill(self, batch_size):
        before = dict(self.ref)
        result = self.db.backfill_embeddings(batch_size=batch_size)
        self.ref = dict(self.table)
        assert result.embedded == len(self.table.keys() - before.keys())
        assert result.reembedded == sum(
            1 for k in self.table.keys() & before.keys() if self.table[k] != before[k]
        )
        assert result.removed == len(before.keys() - self.table.keys())
        assert result.failed == 0

    @rule(record_id=ids, seed=seeds)
    def add_through_another_connection(self, record_id, seed):
        """Another process's write shows up here without reopening."""
        vector = vector_of(seed)
        other = self._open()
        try:
            other.put_record(record_id, vector)
            other.add_embedding(record_id, {"vec": vector}, kind_of(record_id))
        finally:
            other.close()
            other.conn.close()
        self.table[record_id] = self.ref[record_id] = vector

    # -- flush points ----------------------------------------------------------------------------
    @rule()
    def save(self):
        self.db.save_index()
        self._files_hold_everything()

    @rule()
    def rebuild(self):
        self.db.rebuild_index()
        self._files_hold_everything()

    def _files_hold_everything(self):
        """After a flush the files alone give the current answers (nothing left to replay)."""
        report = self.db.verify_index()
        assert report.ok, report.problems
        assert report.pending_changes == 0
        assert report.metadata_count == len(self.ref)

    @rule()
    def reopen(self):
        self.db.close()
        self.db.conn.close()
        self.db = self._open()

    def _open(self) -> Items:
        return Items(self.path, **INDEXES[self.backend])

    @rule()
    def switch_backend(self):
        self.db.close()
        self.db.conn.close()
        names = list(INDEXES)
        self.backend = names[(names.index(self.backend) + 1) % len(names)]
        self.db = self._open()

    @precondition(lambda self: self.ref)
    @rule()
    def verify(self):
        report = self.db.verify_index()
        assert report.ok, report.problems

    # -- what must hold after every step -------------------------------------------------------
    @invariant()
    def counts_agree(self):
        if self.db is None:
            return
        assert self.db.embedding_count() == len(self.ref)
        for record_id in IDS[:3]:
            stored = self.db.get_vector(record_id)
            if record_id in self.ref:
                assert np.allclose(stored, unit(self.ref[record_id]), atol=1e-6)
            else:
                assert stored is None

    @invariant()
    def searches_agree(self):
        if self.db is None or not self.ref:
            return
        for query in QUERIES:
            for top_k in (1, 3, len(self.ref) + 2):
                self._check(self.db.search_by_vector(query, top_k=top_k), query, top_k, None)
        for kind in ("even", "odd"):
            self._check(self.db.search_by_vector(QUERIES[0], top_k=4, kind=kind), QUERIES[0], 4,
                        kind)

    def _check(self, hits, query, top_k, kind):
        truth = {
            rid: 1.0 - float(unit(vec).astype(np.float64) @ query)
            for rid, vec in self.ref.items()
            if kind is None or kind_of(rid) == kind
        }
        expected = sorted(truth.values())[:top_k]
        got_ids = [h[0] for h in hits]
        assert len(set(got_ids)) == len(got_ids), hits
        assert [h[1] for h in hits] == pytest_approx(expected), (hits, expected)
        for rid, distance in hits:
            assert rid in truth, f"{rid} should not be found"
            assert abs(truth[rid] - distance) < 1e-4, (rid, distance, truth[rid])
        # Every record strictly closer than the last returned one is among the results.
        if expected:
            cutoff = expected[-1] - 1e-4
            assert {rid for rid, d in truth.items() if d < cutoff} <= set(got_ids)


def pytest_approx(values):
    import pytest

    return pytest.approx(values, abs=1e-4)


StoreModel.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_store_agrees_with_a_plain_dict = StoreModel.TestCase
