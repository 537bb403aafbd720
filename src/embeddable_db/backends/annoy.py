"""Annoy: a forest of random-projection trees in one mmap-able file; immutable once built.

Defaults and why: real all-MiniLM-L6-v2 vectors with noisy copies, 500 held-out real queries,
p50 through the store (``benchmarks/bench_scale_search.py``, ``bench_crossover.py``, 2026-12-02):
- ``search_k`` by size (``default_search_k``): 14,000 up to 100k items, 25,000 at 1M. A search
  costs ~0.2 us per unit of search_k (a 1.5 KB node fetched at random per candidate), and recall
  at a fixed search_k falls as the index grows. At 100k, search_k 8,400 / 11,200 / 14,000 /
  17,500 / 22,400: 1.70 / 2.19 / 2.66 / 3.14 / 3.96 ms at recall@10 0.921 / 0.940 / 0.957 /
  0.966 / 0.976; 14,000 is the least that keeps 0.95 (the fixed 20,000 before: 3.4 ms). At 1M,
  12,000 / 16,000 / 20,000 / 25,000 / 32,000: 3.2 / 4.4 / 4.9 / 5.8 / 7.6 ms at 0.872 / 0.889 /
  0.896 / 0.911 / 0.928; 25,000 is the least that keeps 0.90. Annoy's own default (n_trees * k)
  reads 0.43.
- ``n_trees=10``: at 100k and search_k 9,000, 10 / 20 / 30 trees read 0.925 / 0.949 / 0.951 at
  1.91 / 1.83 / 1.77 ms: even 30 trees miss 1.7 ms at 0.95, each 10 trees add 8% of the raw
  vectors to the file (1M: 2.52x to 2.60x on disk) and a 10-tree build's time, and a new default would
  rebuild every existing store's index at its next open (read-only opens: every time, in memory).
- ``exact_below=50_000``: under that size a numpy scan is faster than the trees, and exact, so
  small stores give the same answers as FAISS flat. Exact scan / Annoy p50, side by side, at
  20k / 40k / 50k / 60k / 80k / 100k: 0.70 / 1.99 / 2.34 / 2.91 / 4.19 / 5.49 ms against
  1.77 / 2.28 / 2.32 / 2.43 / 2.70 / 2.81 ms; they cross at 50k. (64,000 with search_k 20,000.)
- Loading with ``prefault=True`` changed nothing (p50 1.55 vs 1.54 ms at 100k): the pages are
  cached; the cost is the random node fetches.
Items are stored at dense positions 0..n-1 (Annoy allocates up to the largest id), mapped to
labels by the ascending label list the caller keeps in the metadata.
"""

from __future__ import annotations

import math
import os

import numpy as np
from annoy import AnnoyIndex

from . import VectorIndex, bounded_int
from .exact import exact_top_k

DEFAULT_TREES = 10
#: search_k at 100k and at 1M items (see the module docstring); log-log between and past them.
SEARCH_K_100K, SEARCH_K_1M = 14_000, 25_000
DEFAULT_EXACT_BELOW = 50_000
# Bounds checked at construction: 1,000 trees build ~100x slower than the default and a
# search_k past 10**8 reads more nodes than any index of this size holds (Annoy takes a C int).
MAX_TREES = 1_000
MAX_SEARCH_K = 100_000_000
MAX_EXACT_BELOW = 100_000_000


def _node_dtype(dim: int) -> np.dtype:
    """An angular item as Annoy lays it out: int32 descendants (1), two int32 children, floats."""
    return np.dtype([("descendants", "<i4"), ("children", "<i4", 2), ("v", "<f4", dim)])


def default_search_k(n: int) -> int:
    """``search_k`` for an index of ``n`` items: recall at a fixed search_k falls as n grows,
    so it grows past 100k items, as a power of n through the two measured points."""
    if n <= 100_000:
        return SEARCH_K_100K
    growth = math.log10(SEARCH_K_1M / SEARCH_K_100K)
    return round(SEARCH_K_100K * (n / 100_000) ** growth)


class AnnoyVectorIndex(VectorIndex):
    name = "annoy"

    def __init__(
        self,
        dim: int,
        *,
        n_trees: int = DEFAULT_TREES,
        search_k: int | None = None,
        exact_below: int = DEFAULT_EXACT_BELOW,
    ) -> None:
        super().__init__(dim)
        # Annoy reads n_trees <= 0 as "build until memory runs out" (a negative value got a
        # test process OOM-killed), answers nothing with zero trees, took minutes to build
        # 10**5 trees and overflowed a C int at the first save with 2**31.
        self.n_trees = bounded_int("n_trees", n_trees, 1, MAX_TREES)
        # None: by the index's size (default_search_k), set at each build and load.
        self.search_k = None if search_k is None else bounded_int(
            "search_k", search_k, 1, MAX_SEARCH_K
        )
        self.effective_search_k = self.search_k or SEARCH_K_100K
        self.exact_below = bounded_int("exact_below", exact_below, 0, MAX_EXACT_BELOW)
        self._index: AnnoyIndex | None = None
        self._path: str | None = None  # the file loaded, for stored_items
        self._labels = np.empty(0, np.int64)
        self._matrix: np.ndarray | None = None
        self._items = None

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
        self._use(labels)
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
        self._use(labels)
        if len(labels) <= self.exact_below:  # read in one go, never item by item (issue 12)
            self._matrix = np.array(self.stored_items()[1], np.float32)

    def _use(self, labels: np.ndarray) -> None:
        self._labels = np.asarray(labels, np.int64)
        self._matrix = None
        self._items = None  # the mapped file's items, read by vectors_of when first asked
        self.effective_search_k = self.search_k or default_search_k(len(labels))

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None or k <= 0 or len(self._labels) == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if self._matrix is not None:
            positions, distances = exact_top_k(self._matrix, query, k)
            return self._labels[positions], distances
        search_k = max(self.effective_search_k, k * self.n_trees)
        # A list: Annoy reads a numpy query element by element, ~20 us slower a search.
        positions, angular = self._index.get_nns_by_vector(
            np.asarray(query, np.float32).tolist(), k, search_k=search_k, include_distances=True
        )
        angular = np.asarray(angular, np.float32)
        # Annoy's angular distance is sqrt(2 - 2 cos) on unit vectors: 1 - cos = d^2 / 2.
        return self._labels[np.asarray(positions, np.int64)], angular * angular / 2.0

    def vectors_of(self, labels: np.ndarray) -> np.ndarray | None:
        """From the exact-scan copy, or gathered from the mapped file in one numpy step when
        it has the layout ``stored_items`` checks; else item by item."""
        positions = np.searchsorted(self._labels, np.asarray(labels, np.int64))
        if self._matrix is not None:
            return self._matrix[positions]
        if self._items is None:
            self._items = self._mapped_items()
        if self._items is not False:
            return np.array(self._items["v"][positions], np.float32)
        get = self._index.get_item_vector
        return np.array([get(int(p)) for p in positions], np.float32).reshape(-1, self.dim)

    def _mapped_items(self):
        """The file's items as a read-only numpy map (False when the layout is not Annoy's
        usual one, which the first and last items are checked against)."""
        n = len(self._labels)
        node = _node_dtype(self.dim)
        if self._path is None or n == 0 or os.path.getsize(self._path) < n * node.itemsize:
            return False
        items = np.memmap(self._path, node, mode="r", shape=(n,))
        ends_agree = all(
            items["descendants"][i] == 1
            and np.array_equal(items["v"][i], np.asarray(self._index.get_item_vector(i), np.float32))
            for i in (0, n - 1)
        )
        return items if ends_agree else False

    def stored_items(self) -> tuple[np.ndarray, np.ndarray]:
        """The vectors as the file holds them (never the exact-scan copy in memory). Read as
        Annoy lays out an angular item (int32 descendants = 1, two int32 children, the floats)
        from the start of the file: ``get_item_vector`` per item took 10 s at 100k."""
        n = len(self._labels)
        if self._index is None or n == 0:
            return self._labels, np.empty((0, self.dim), np.float32)
        node = _node_dtype(self.dim)
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
