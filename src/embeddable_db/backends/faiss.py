"""FAISS: inner product on unit vectors (= cosine), ids stored inside the index.

``index_type="flat"`` (default) is exact and adds and removes by id. ``"hnsw"`` is a graph
index: fast approximate search, adds in place, but FAISS cannot remove from it, so changed and
removed vectors are tombstoned by the caller and the graph is rebuilt when they pile up.
HNSW defaults ``M=32``, ``efConstruction=80``, ``efSearch=64``: recall@10 about 0.98 at
well under a millisecond on 100k real sentence vectors.
"""

from __future__ import annotations

import os

import faiss
import numpy as np

from . import VectorIndex

# One query at a time gains nothing from OpenMP; on a busy 2-core machine its threads made flat
# search 2-7x slower (100k vectors: 6-9 ms on 1 thread, 16-98 ms on 2) and starved numpy's
# scan of the delta. OMP_NUM_THREADS, when set, still decides.
if "OMP_NUM_THREADS" not in os.environ:
    faiss.omp_set_num_threads(1)

INDEX_TYPES = ("flat", "hnsw")


class FaissVectorIndex(VectorIndex):
    name = "faiss"
    can_add = True

    def __init__(
        self,
        dim: int,
        *,
        index_type: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
    ) -> None:
        super().__init__(dim)
        if index_type not in INDEX_TYPES:
            raise ValueError(f"unknown FAISS index_type {index_type!r}: choose one of {INDEX_TYPES}")
        self.index_type = index_type
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        if self.hnsw_m < 2 or self.ef_construction < 1 or self.ef_search < 1:
            raise ValueError(
                "hnsw_m must be at least 2, ef_construction and ef_search positive, got "
                f"hnsw_m={hnsw_m!r}, ef_construction={ef_construction!r}, ef_search={ef_search!r}"
            )
        self._index = self._new()

    @property
    def can_remove(self) -> bool:  # type: ignore[override]
        return self.index_type == "flat"

    @property
    def exact(self) -> bool:
        return self.index_type == "flat"

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
            inner.hnsw.efSearch = self.ef_search
        return faiss.IndexIDMap2(inner)

    def build(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self._index = self._new()
        self.add(labels, vectors)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        if len(labels):
            self._index.add_with_ids(
                np.ascontiguousarray(vectors, np.float32), np.asarray(labels, np.int64)
            )

    def remove(self, labels: np.ndarray) -> None:
        if len(labels):
            self._index.remove_ids(np.asarray(labels, np.int64))

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self._index.ntotal)
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if self.index_type == "hnsw":
            self._set_ef(max(self.ef_search, k))
        scores, labels = self._index.search(np.asarray(query, np.float32)[None, :], k)
        keep = labels[0] >= 0
        return labels[0][keep], (1.0 - scores[0][keep]).astype(np.float32)

    def _set_ef(self, ef: int) -> None:
        """Set efSearch only when it changes: the downcast costs more than the search itself."""
        if getattr(self, "_ef_for", None) != (id(self._index), ef):
            faiss.downcast_index(self._index.index).hnsw.efSearch = ef
            self._ef_for = (id(self._index), ef)

    def save(self, path: str) -> None:
        faiss.write_index(self._index, path)

    def load(self, path: str, labels: np.ndarray) -> None:
        index = faiss.read_index(path)
        if index.ntotal != len(labels) or index.d != self.dim:
            raise ValueError(
                f"FAISS file holds {index.ntotal} vectors of dimension {index.d}, "
                f"metadata lists {len(labels)} of dimension {self.dim}"
            )
        if self.index_type == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = self.ef_search
        self._index = index

    def __len__(self) -> int:
        return self._index.ntotal
