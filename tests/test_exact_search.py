"""Exact top-k (backends/exact.py) on its own, and the stores that use it.

Its answers must equal a plain numpy cosine scan, ties included; and since it no longer lives
in the Annoy backend's module, a FAISS store must work without ever importing ``annoy``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import unit_vectors
from embeddable_db.backends.exact import exact_top_k
from embeddable_db.engine.sqlite.live_index import LiveIndex

SRC = Path(__file__).resolve().parents[1] / "src"


def plain_cosine(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: full cosine, full stable sort (equal scores keep position order)."""
    scores = (matrix @ query) / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    order = np.argsort(-(matrix @ query), kind="stable")[: max(k, 0)]
    return order, 1.0 - scores[order]


@pytest.mark.parametrize("n", [1, 7, 100, 2_000])
@pytest.mark.parametrize("k", [0, 1, 5, 10, 100, 5_000])
def test_exact_top_k_equals_a_plain_cosine_scan(n, k):
    matrix = unit_vectors(n, 24, seed=n)
    for seed in range(3):
        query = unit_vectors(1, 24, seed=1_000 + seed)[0]
        positions, distances = exact_top_k(matrix, query, k)
        expected, expected_distances = plain_cosine(matrix, query, k)
        assert positions.dtype == np.int64 and distances.dtype == np.float32
        np.testing.assert_array_equal(positions, expected)
        np.testing.assert_allclose(distances, expected_distances, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 4, 5, 9, 16, 40])
def test_ties_go_to_the_lower_position_even_at_the_cut_off(k):
    """Equal vectors score equally: which of them make the top k must not depend on how the
    partial sort happened to split them (the live index and verify compare such answers)."""
    rng = np.random.default_rng(7)
    distinct = unit_vectors(6, 8, seed=3)
    matrix = distinct[rng.integers(0, 6, size=60)]  # ten copies of each vector, shuffled
    for query in (*distinct, unit_vectors(1, 8, seed=11)[0]):
        positions, distances = exact_top_k(matrix, query, k)
        expected, expected_distances = plain_cosine(matrix, query, k)
        np.testing.assert_array_equal(positions, expected)
        np.testing.assert_allclose(distances, expected_distances, atol=1e-6)


def test_all_equal_scores():
    matrix = np.tile(unit_vectors(1, 4, seed=0), (50, 1))
    positions, distances = exact_top_k(matrix, matrix[0], 5)
    assert positions.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(distances, 0.0, atol=1e-6)


def test_the_live_index_delta_answers_like_a_plain_scan():
    """No backend: every vector is in the exact delta; ties are broken by label."""
    vectors = unit_vectors(300, 16, seed=5)
    vectors[200:] = vectors[:100]  # labels 200..299 tie with 0..99
    live = LiveIndex(None, None)
    for label in range(300):
        live.upsert(label, f"r{label}", "doc", vectors[label])
    for label in (3, 150, 250):
        live.discard(label)  # moves the delta's last rows: positions no longer follow labels
    kept = [label for label in range(300) if label not in (3, 150, 250)]
    matrix = vectors[kept]
    queries = [(vectors[10], 12), (vectors[120], 12), (unit_vectors(1, 16, seed=9)[0], 12)]
    # Label 299 now sits at the delta's row 3, ahead of its twin 99: the label still wins.
    queries += [(vectors[99], 1), (vectors[99], 2), (vectors[98], 1)]
    for query, k in queries:
        expected, distances = plain_cosine(matrix, query, k)
        hits = live.search(query, k)
        assert [rid for rid, _ in hits] == [f"r{kept[i]}" for i in expected]
        np.testing.assert_allclose([d for _, d in hits], distances, atol=1e-6)
    assert [rid for rid, _ in live.search(vectors[99], 1)] == ["r99"]


def test_annoy_small_index_is_exact_with_ties_by_label():
    pytest.importorskip("annoy")
    from embeddable_db.backends.annoy import AnnoyVectorIndex

    vectors = unit_vectors(500, 16, seed=2)
    vectors[250:] = vectors[:250]
    labels = np.arange(10, 510, dtype=np.int64)
    index = AnnoyVectorIndex(16, n_trees=2)
    index.build(labels, vectors)
    assert index.exact
    for query in (vectors[0], vectors[77], unit_vectors(1, 16, seed=4)[0]):
        expected, distances = plain_cosine(vectors, query, 20)
        found, found_distances = index.search(query, 20)
        np.testing.assert_array_equal(found, labels[expected])
        np.testing.assert_allclose(found_distances, distances, atol=1e-6)


def test_a_faiss_store_never_imports_annoy(tmp_path):
    """Open, write, save, reopen (index from the file) and search a FAISS store, with both
    the backend and the exact delta answering, in a fresh process: ``annoy`` is never loaded."""
    pytest.importorskip("faiss")
    script = textwrap.dedent(
        f"""
        import json, sqlite3, sys
        from embeddable_db import EmbeddableDBMixin

        class Notes(EmbeddableDBMixin):
            def __init__(self, path, **options):
                self.conn = sqlite3.connect(path)
                super().__init__(**options)

            def embedding_text(self, record):
                return record

            def iter_records(self):
                return iter(())

        path = {str(tmp_path / "notes.db")!r}
        words = ["apple pie", "river boat", "mountain snow", "city lights", "apple tree"]
        with Notes(path, backend="faiss", model_name="hash:32") as db:
            db.add_embeddings([(i, text, "note") for i, text in enumerate(words)])
            db.save_index()
        with Notes(path, backend="faiss", model_name="hash:32") as db:
            db.add_embedding(99, "apple orchard", "note")  # the mapped file takes none: delta
            hits = db.search_by_text("apple", top_k=3)
            pending = db._engine.view.live.pending
        print(json.dumps({{"hits": [h[0] for h in hits], "pending": pending,
                          "annoy": sorted(m for m in sys.modules if m.split(".")[0] == "annoy"
                                          or m == "embeddable_db.backends.annoy")}}))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["annoy"] == []
    assert result["pending"] >= 1  # the delta was searched too
    assert set(result["hits"]) == {"0", "4", "99"}
