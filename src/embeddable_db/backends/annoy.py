"""Annoy: a forest of random-projection trees in one mmap-able file; immutable once built.

Defaults and why (from ``benchmarks/bench_search.py`` on 100k sentence vectors):
- ``search_k=20_000``: Annoy's default ``search_k`` (``n_trees * k``) gives poor recall (0.43
  with 10 trees; 0.29 on 88k real vectors); a fixed 20,000 gives recall@10 0.97 for ~4 ms.
  10,000 would read 0.93 here, too close to 0.90 on harder real data.
- ``n_trees=10``: at a fixed ``search_k`` more trees barely help (50 trees: 0.98 vs 0.97) but
  build 4-5x slower and make a larger file.
- ``exact_below=64_000``: under that size a numpy scan is faster than the trees, and exact,
  so small stores give the same answers as FAISS flat. Measured by ``bench_crossover.py``
  (real vectors, p50 over 500 queries, 2026-12-02): exact 0.67 / 1.25 / 2.02 / 3.49 / 5.33 ms
  against Annoy 1.57 / 1.98 / 2.48 / 2.90 / 3.00 ms at 20k / 40k / 60k / 80k / 100k; the
  curves cross near 69k. (It was 20,000: a 21k-record store searched in 3.4 ms instead of 0.7.)
Items are stored at dense positions 0..n-1 (Annoy allocates up to the largest id), mapped to
labels by the ascending label list the caller keeps in the metadata.
"""

from __future__ import annotations

import os

import numpy as np
from annoy import AnnoyIndex

from . import VectorIndex, bounded_int
from .exact import exact_top_k

DEFAULT_TREES = 10
DEFAULT_SEARCH_K = 20_000
DEFAULT_EXACT_BELOW = 64_000
# Bounds checked at construction: 1,000 trees build ~100x slower than the default and a
# search_k past 10**8 reads more nodes than any index of this size holds (Annoy takes a C int).
MAX_TREES = 1_000
MAX_SEARCH_K = 100_000_000
MAX_EXACT_BELOW = 100_000_000


class AnnoyVectorIndex(VectorIndex):
    name = "annoy"

    def __init__(
        self,
        dim: int,
        *,
        n_trees: int = DEFAULT_TREES,
        search_k: int = DEFAULT_SEARCH_K,
        exact_below: int = DEFAULT_EXACT_BELOW,
    ) -> None:
        super().__init__(dim)
        # Annoy reads n_trees <= 0 as "build until memory runs out" (a negative value got a
        # test process OOM-killed), answers nothing with zero trees, took minutes to build
        # 10**5 trees and overflowed a C int at the first save with 2**31.
        self.n_trees = bounded_int("n_trees", n_trees, 1, MAX_TREES)
        self.search_k = bounded_int("search_k", search_k, 1, MAX_SEARCH_K)
        self.exact_below = bounded_int("exact_below", exact_below, 0, MAX_EXACT_BELOW)
        self._index: AnnoyIndex | None = None
        self._path: str | None = None  # the file loaded, for stored_items
        self._labels = np.empty(0, np.int64)
        self._matrix: np.ndarray | None = None

    def params(self) -> dict:
        return {"n_trees": self.n_trees}

    @property
    def exact(self) -> bool:
        return self._matrix is not None

    def build(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self.build_from(labels, [vectors])

    def build_from(self, labels: np.ndarray, chunks) -> None:
        """Items are copied into Annoy chunk by chunk: a rebuild holds one chunk beside it."""
        index = AnnoyIndex(self.dim, "angular")
        exact = len(labels) <= self.exact_below
        kept, position = [], 0
        for chunk in chunks:
            for vector in chunk:
                # A list, not the numpy row: Annoy reads a row element by element, and a list's
                # elements come 2x faster (10 vs 21 us an item at 384 dimensions).
                index.add_item(position, vector.tolist())
                position += 1
            if exact:
                kept.append(np.array(chunk, np.float32))
        index.build(self.n_trees, n_jobs=-1)
        self._index = index
        self._path = None
        self._labels = np.asarray(labels, np.int64)
        self._matrix = None
        if exact:
            self._matrix = np.concatenate(kept) if kept else np.empty((0, self.dim), np.float32)

    def save(self, path: str) -> None:
        assert self._index is not None
        self._index.save(path)  # Annoy then maps the saved file instead of its heap copy.

    def load(self, path: str, labels: np.ndarray) -> None:
        index = AnnoyIndex(self.dim, "angular")
        index.load(path)
        if index.get_n_items() != len(labels):
            raise ValueError(
                f"Annoy file holds {index.get_n_items()} items, metadata lists {len(labels)}"
            )
        self._index = index
        self._path = path
        self._labels = np.asarray(labels, np.int64)
        self._matrix = None
        if len(labels) <= self.exact_below:  # read in one go, never item by item (issue 12)
            self._matrix = np.array(self.stored_items()[1], np.float32)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None or k <= 0 or len(self._labels) == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if self._matrix is not None:
            positions, distances = exact_top_k(self._matrix, query, k)
            return self._labels[positions], distances
        search_k = max(self.search_k, k * self.n_trees)
        positions, angular = self._index.get_nns_by_vector(
            query, k, search_k=search_k, include_distances=True
        )
        angular = np.asarray(angular, np.float32)
        # Annoy's angular distance is sqrt(2 - 2 cos) on unit vectors: 1 - cos = d^2 / 2.
        return self._labels[np.asarray(positions, np.int64)], angular * angular / 2.0

    def stored_items(self) -> tuple[np.ndarray, np.ndarray]:
        """The vectors as the file holds them (never the exact-scan copy in memory). Read as
        Annoy lays out an angular item (int32 descendants = 1, two int32 children, the floats)
        from the start of the file: ``get_item_vector`` per item took 10 s at 100k."""
        n = len(self._labels)
        if self._index is None or n == 0:
            return self._labels, np.empty((0, self.dim), np.float32)
        node = np.dtype([("descendants", "<i4"), ("children", "<i4", 2), ("v", "<f4", self.dim)])
        if self._path is not None and os.path.getsize(self._path) >= n * node.itemsize:
            items = np.fromfile(self._path, node, count=n)
            if (items["descendants"] == 1).all() and np.array_equal(
                items["v"][-1], np.asarray(self._index.get_item_vector(n - 1), np.float32)
            ):
                return self._labels, items["v"]
        get = self._index.get_item_vector  # another layout: the slow way
        vectors = np.array([get(i) for i in range(n)], np.float32).reshape(n, self.dim)
        return self._labels, vectors

    def __len__(self) -> int:
        return len(self._labels)
