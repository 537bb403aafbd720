"""FAISS: inner product on unit vectors (= cosine), ids stored inside the index.

``index_type="flat"`` (default) is exact and adds and removes by id. ``"hnsw"`` is a graph
index: fast approximate search, adds in place, but FAISS cannot remove from it, so changed and
removed vectors are tombstoned by the caller and the graph is rebuilt when they pile up.
HNSW defaults ``M=32``, ``efConstruction=80`` and ``efSearch`` by size (``default_ef_search``:
64 up to 100k vectors, 512 at 1M). Measured through the store on real sentence vectors with
noisy copies (``benchmarks/bench_scale_search.py``, 2026-12-02): at 100k, efSearch 32 / 64 /
128: recall@10 0.951 / 0.976 / 0.994 at 0.13 / 0.18 / 0.28 ms. At 1M (bare FAISS, one thread),
efSearch 64 / 128 / 256 / 512 / 1024 read 0.603 / 0.688 / 0.784 / 0.872 / 0.921 at 0.11 / 0.20 /
0.36 / 0.67 / 1.37 ms: this set holds 62 noisy copies of each real vector, and the graph
links them poorly. ``ef_construction=200`` fixes that (0.786 / 0.865 / 0.934 / 0.963 / 0.976 at
0.14 / 0.23 / 0.39 / 0.73 / 1.60 ms: 0.95 under 1 ms at efSearch 512) but builds 2.7x slower
(81 s vs 220 s at 1M) and, as a default, would rebuild every HNSW store at its next open, so it
is an option (``index_options={"ef_construction": 200}``); 128 is not enough (0.940 at 512),
nor is M=48 (0.951 at 0.92 ms, a larger file).

Files are memory-mapped at open (``IO_FLAG_MMAP_IFC``), not read: a fresh process answers its
first search from a 100k-vector store in ~0.4 s instead of ~0.5 s, and processes share the
pages. A mapped flat index takes no changes (the caller's exact delta holds them until a
compaction folds them in, so ``close()`` after a few adds need not rewrite 154 MB); a mapped
HNSW index is copied into memory at its first add.
"""

from __future__ import annotations

import math
import os

import faiss
import numpy as np

from . import VectorIndex, bounded_int

# One query at a time gains nothing from OpenMP; on a busy 2-core machine its threads made flat
# search 2-7x slower (100k vectors: 6-9 ms on 1 thread, 16-98 ms on 2) and starved numpy's
# scan of the delta. So searches run on one thread, set around each call and put back after:
# torch shares the OpenMP runtime, and a process-wide setting halved the model's speed in
# every process that imported this module. OMP_NUM_THREADS, when set, decides instead.
_ONE_SEARCH_THREAD = "OMP_NUM_THREADS" not in os.environ

INDEX_TYPES = ("flat", "hnsw")
# Bounds checked at construction: HNSW stores 2*M links per vector per level (M=256 already
# costs 2 KiB a vector), and an ef past 10,000 searches more of the graph than a flat scan.
MAX_HNSW_M = 256
MAX_EF = 10_000
#: efSearch up to 100k vectors and at 1M (see the module docstring); a power of n between and past.
EF_SEARCH_100K, EF_SEARCH_1M = 64, 512


def default_ef_search(n: int) -> int:
    """efSearch for an HNSW graph of ``n`` vectors: recall at a fixed efSearch falls as the graph
    grows, so it grows past 100k vectors, as a power of n through the two measured points."""
    if n <= 100_000:
        return EF_SEARCH_100K
    growth = math.log10(EF_SEARCH_1M / EF_SEARCH_100K)
    return min(MAX_EF, round(EF_SEARCH_100K * (n / 100_000) ** growth))


class FaissVectorIndex(VectorIndex):
    name = "faiss"

    def __init__(
        self,
        dim: int,
        *,
        index_type: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int | None = None,
    ) -> None:
        super().__init__(dim)
        if index_type not in INDEX_TYPES:
            raise ValueError(f"unknown FAISS index_type {index_type!r}: choose one of {INDEX_TYPES}")
        self.index_type = index_type
        self.hnsw_m = bounded_int("hnsw_m", hnsw_m, 2, MAX_HNSW_M)
        self.ef_construction = bounded_int("ef_construction", ef_construction, 1, MAX_EF)
        # None: by the index's size (default_ef_search), as recall at a fixed efSearch falls.
        self.ef_search = None if ef_search is None else bounded_int("ef_search", ef_search, 1, MAX_EF)
        self._use(self._new())

    @property
    def can_add(self) -> bool:  # type: ignore[override]
        """False for a flat index still mapped from its file: the first change would copy all of
        it, so new vectors wait in the caller's exact delta (as fast to search) until a
        compaction folds them in. HNSW copies on its first add instead: folding a delta into a
        graph means rebuilding it, which costs far more than the copy."""
        return not (self._mapped and self.index_type == "flat")

    @property
    def can_remove(self) -> bool:  # type: ignore[override]
        return self.index_type == "flat"

    @property
    def exact(self) -> bool:
        return self.index_type == "flat"

    @property
    def effective_ef_search(self) -> int:
        """The efSearch a search uses now: the caller's, else by the index's size."""
        return self.ef_search or default_ef_search(self._count)

    def params(self) -> dict:
        if self.index_type == "flat":
            return {"index_type": "flat"}
        return {"index_type": "hnsw", "M": self.hnsw_m, "ef_construction": self.ef_construction}

    def _new(self) -> faiss.Index:
        if self.index_type == "flat":
            inner = faiss.IndexFlatIP(self.dim)
        else:
            inner = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.ef_construction
            inner.hnsw.efSearch = self.ef_search or EF_SEARCH_100K  # each search sets its own
        return faiss.IndexIDMap2(inner)

    def _use(self, index: faiss.Index, *, mapped: bool = False) -> None:
        """Search ``index`` from now on. Its size and HNSW graph are kept in Python: a SWIG call
        costs a few microseconds after a search has flushed the CPU caches."""
        self._index = index
        self._mapped = mapped
        self._count = index.ntotal
        self._hnsw = faiss.downcast_index(index.index).hnsw if self.index_type == "hnsw" else None
        self._ef = None

    def build(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self.build_from(labels, [vectors])

    def build_from(self, labels: np.ndarray, chunks) -> None:
        """Vectors are added chunk by chunk: a rebuild holds one chunk beside the index."""
        self._use(self._new())
        labels = np.asarray(labels, np.int64)
        start = 0
        for chunk in chunks:
            self.add(labels[start : start + len(chunk)], chunk)
            start += len(chunk)

    def _own(self) -> None:
        """Copy a mapped index into memory before changing it: FAISS cannot grow a mapped index
        (it aborts the process). Costs about what ``read_index`` would have cost at open."""
        if self._mapped:
            self._use(faiss.deserialize_index(faiss.serialize_index(self._index)))

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        if len(labels):
            self._own()
            self._index.add_with_ids(
                np.ascontiguousarray(vectors, np.float32), np.asarray(labels, np.int64)
            )
            self._count = self._index.ntotal

    def remove(self, labels: np.ndarray) -> None:
        if len(labels):
            self._own()
            self._index.remove_ids(np.asarray(labels, np.int64))
            self._count = self._index.ntotal

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self._count)
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if self._hnsw is not None:
            ef = max(self.effective_ef_search, k)
            if ef != self._ef:  # set only when it changes: the SWIG call costs more than a search
                self._hnsw.efSearch = self._ef = ef
        query = np.asarray(query, np.float32).reshape(1, -1)
        threads = faiss.omp_get_max_threads() if _ONE_SEARCH_THREAD else 1
        if threads == 1:
            scores, labels = self._index.search(query, k)
        else:
            faiss.omp_set_num_threads(1)  # this thread only: OpenMP settings are per thread
            try:
                scores, labels = self._index.search(query, k)
            finally:
                faiss.omp_set_num_threads(threads)
        labels, distances = labels[0], 1.0 - scores[0]
        if labels[-1] < 0:  # FAISS pads a short answer with -1 at the end (HNSW can fall short)
            keep = labels >= 0
            return labels[keep], distances[keep]
        return labels, distances

    def save(self, path: str) -> None:
        faiss.write_index(self._index, path)

    def load(self, path: str, labels: np.ndarray) -> None:
        """Map the file's vectors instead of reading them: opening a 100k-vector store takes
        ~5 ms instead of ~150 ms, and processes searching the same file share its pages. Saves
        replace the file (never write into it), so a mapping stays valid; ``_own`` copies it
        before the first change."""
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC)
        if index.ntotal != len(labels) or index.d != self.dim:
            raise ValueError(
                f"FAISS file holds {index.ntotal} vectors of dimension {index.d}, "
                f"metadata lists {len(labels)} of dimension {self.dim}"
            )
        # FAISS answers with the ids stored in the file: they must be the metadata's labels,
        # or search returns labels that name no record (or the wrong one). ~1 ms at 100k.
        stored = faiss.vector_to_array(index.id_map)
        if not np.array_equal(stored, labels) and not np.array_equal(np.sort(stored), labels):
            raise ValueError("the FAISS file's ids are not the labels its metadata lists")
        self._use(index, mapped=True)

    def stored_items(self) -> tuple[np.ndarray, np.ndarray]:
        n = self._count
        if n == 0:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        labels = faiss.vector_to_array(self._index.id_map)
        vectors = self._index.index.reconstruct_n(0, n)  # flat and HNSW keep raw float32
        return labels, np.asarray(vectors, np.float32).reshape(n, self.dim)

    def vectors_of(self, labels: np.ndarray) -> np.ndarray | None:
        if not len(labels):
            return np.empty((0, self.dim), np.float32)
        vectors = self._index.reconstruct_batch(np.asarray(labels, np.int64))  # by id (IDMap2)
        return np.asarray(vectors, np.float32).reshape(len(labels), self.dim)

    def __len__(self) -> int:
        return self._count
