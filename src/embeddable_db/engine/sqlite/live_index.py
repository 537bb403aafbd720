"""The in-memory view a store searches: a backend index, an exact delta and tombstones.

Backends are built in bulk (Annoy cannot change at all after ``build``; FAISS HNSW cannot
remove). So a vector that is new goes straight into the backend when it can add, and otherwise,
like every changed vector, into a small exact delta searched by brute force and merged with the
backend's hits; a backend item that was changed or removed is tombstoned and filtered out. The
delta is folded back into the backend at flush points (``compact``), in bulk: never per add.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ...backends import VectorIndex
from ...backends.exact import exact_top_k
from ...rows import Change
from .label_table import LabelSet, LabelTable


class ExactDelta:
    """A growable matrix of vectors with O(1) upsert and removal by label.

    Rows live in blocks of at most ``BLOCK`` rows: growing never copies more than one block.
    One contiguous matrix grown by 1.5x held the old and the new copy at once, and a 1M-vector
    backfill's delta (which waits for the one rebuild at its end) peaked at 2.2x the raw
    vectors; in blocks it holds them once, plus one block."""

    BLOCK = 1 << 15

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._blocks: list[np.ndarray] = []  # all full (BLOCK rows) but the last
        self._labels: list[np.ndarray] = []
        self._row: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, label: int) -> bool:
        return label in self._row

    def _place(self, row: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(block, its labels, offset) of ``row``, making room for it when it is new."""
        b, offset = divmod(row, self.BLOCK)
        if b == len(self._blocks):
            self._blocks.append(np.empty((16, self.dim), np.float32))
            self._labels.append(np.empty(16, np.int64))
        if offset == self._blocks[b].shape[0]:
            self._grow(b, min(self.BLOCK, offset + offset // 2))
        return self._blocks[b], self._labels[b], offset

    def _grow(self, b: int, capacity: int) -> None:
        """Room for ``capacity`` rows in the last block: its rows copied into new arrays.
        (``np.resize`` would first tile the old array to twice its size.)"""
        old, labels = self._blocks[b], self._labels[b]
        n = old.shape[0]
        self._blocks[b] = np.empty((capacity, self.dim), np.float32)
        self._blocks[b][:n] = old
        self._labels[b] = np.empty(capacity, np.int64)
        self._labels[b][:n] = labels

    def upsert(self, label: int, vector: np.ndarray) -> None:
        row = self._row.get(label)
        if row is None:
            row = len(self._row)
            self._row[label] = row
            block, labels, offset = self._place(row)
            labels[offset] = label
        else:
            block, _, offset = self._place(row)
        block[offset] = vector

    def discard(self, label: int) -> None:
        row = self._row.pop(label, None)
        if row is None:
            return
        last = len(self._row)
        if row != last:  # move the last row into the hole
            block, labels, offset = self._place(row)
            b, at = divmod(last, self.BLOCK)
            moved = int(self._labels[b][at])
            block[offset] = self._blocks[b][at]
            labels[offset] = moved
            self._row[moved] = row
        if last % self.BLOCK == 0:  # the last block is empty now
            del self._blocks[last // self.BLOCK :], self._labels[last // self.BLOCK :]

    def _used(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(vectors, labels) of each block's rows in use."""
        n = len(self._row)
        return [
            (block[: min(self.BLOCK, n - b * self.BLOCK)],
             labels[: min(self.BLOCK, n - b * self.BLOCK)])
            for b, (block, labels) in enumerate(zip(self._blocks, self._labels, strict=True))
            if b * self.BLOCK < n
        ]

    def vectors(self, labels: list[int]) -> np.ndarray:
        """The rows of these labels (all in the delta), in their order."""
        rows = np.fromiter((self._row[label] for label in labels), np.int64, len(labels))
        out = np.empty((len(labels), self.dim), np.float32)
        blocks, offsets = np.divmod(rows, self.BLOCK)
        for b in np.unique(blocks).tolist():
            mine = blocks == b
            out[mine] = self._blocks[b][offsets[mine]]
        return out

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        used = self._used()
        if not used:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        labels = np.concatenate([lab for _, lab in used])
        order = np.argsort(labels, kind="stable")
        return labels[order], np.concatenate([vec for vec, _ in used])[order]

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels and distances of the ``k`` nearest, best first; ties to the lower label,
        across blocks too (each block's candidates are scored in float64 alike)."""
        found = []
        for vectors, labels in self._used():
            positions, distances = exact_top_k(vectors, query, k, labels)
            found.append((labels[positions], distances))
        if not found:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if len(found) == 1:
            return found[0]
        labels = np.concatenate([lab for lab, _ in found])
        distances = np.concatenate([dist for _, dist in found])
        order = np.lexsort((labels, distances))[:k]
        return labels[order], distances[order]

    def clear(self) -> None:
        self.__init__(self.dim)


class LiveIndex:
    """Everything a store can search right now, current up to SQLite ``seq`` = ``synced_seq``."""

    def __init__(
        self,
        backend: VectorIndex | None,
        dim: int | None,
        table: LabelTable | None = None,
        synced_seq: int = 0,
        generation: int = 0,
    ) -> None:
        self.backend = backend
        self.dim = dim
        self.synced_seq = synced_seq
        self.generation = generation  # of the files the backend was loaded from or saved to
        #: label -> (record_id, kind) of the live vectors (columns, see label_table.py).
        self.table = table if table is not None else LabelTable()
        #: The labels the backend holds, live or tombstoned: at first, all of the table's.
        self.in_backend = LabelSet(self.table.labels())
        self.tombstones: set[int] = set()
        self.delta = ExactDelta(dim) if dim else None

    def __len__(self) -> int:
        return len(self.table)

    # Maps of every label, made when asked (verify, tests): searches and writes go through
    # ``table``; keeping these as dicts cost ~0.5 s and ~200 MB when opening 1M records.
    @property
    def label_of(self) -> dict[str, int]:
        """record_id -> label."""
        return {record_id: label for label, record_id, _ in self.table.items()}

    @property
    def record_ids(self) -> dict[int, str]:
        return {label: record_id for label, record_id, _ in self.table.items()}

    @property
    def kind_of(self) -> dict[int, str]:
        return {label: kind for label, _, kind in self.table.items()}

    @property
    def pending(self) -> int:
        """How far the backend is from the live set: what a compaction would fold in."""
        return len(self.tombstones) + (len(self.delta) if self.delta else 0)

    # -- changes -----------------------------------------------------------------------------
    def apply(self, changes: Iterable[Change], model: str) -> None:
        """Bring the view up to date with rows read from SQLite (in ``seq`` order)."""
        for change in changes:
            vector = change.vector
            if (
                vector is None
                or change.model != model
                or (self.dim is not None and vector.shape[0] != self.dim)
            ):
                self.discard(change.label)
            else:
                self.upsert(change.label, change.record_id, change.kind, vector)
            self.synced_seq = max(self.synced_seq, change.seq)

    def upsert(self, label: int, record_id: str, kind: str, vector: np.ndarray) -> None:
        if self.delta is None:
            self.dim = vector.shape[0]
            self.delta = ExactDelta(self.dim)
        self.table.set(label, record_id, kind)
        if label in self.in_backend:
            self.tombstones.add(label)
            self.delta.upsert(label, vector)
        elif (
            self.backend is not None
            and self.backend.can_add
            and label not in self.delta
        ):
            self.backend.add(np.array([label], np.int64), vector.reshape(1, -1))
            self.in_backend.add(label)
        else:
            self.delta.upsert(label, vector)

    def discard(self, label: int) -> None:
        self.table.remove(label)
        if self.delta is not None:
            self.delta.discard(label)
        if label in self.in_backend:
            self.tombstones.add(label)

    def fold_in_place(self) -> bool:
        """Fold the delta into a backend that can remove (FAISS flat, which then also adds, once
        it holds its own copy); else False."""
        backend = self.backend
        if backend is None or not backend.can_remove:
            return False
        if self.tombstones:
            backend.remove(np.fromiter(self.tombstones, np.int64))
            self.in_backend.difference_update(self.tombstones)
            self.tombstones.clear()
        if self.delta is not None and len(self.delta):
            labels, vectors = self.delta.items()
            backend.add(labels, vectors)
            self.in_backend.update(labels.tolist())
            self.delta.clear()
        return True

    def vectors_of(self, labels: list[int]) -> np.ndarray | None:
        """The live vectors of these live labels, one row each: the delta's where it holds
        them, else the backend's (None when the backend cannot read them back in bulk)."""
        out = np.empty((len(labels), self.dim or 0), np.float32)
        delta = self.delta
        in_delta = [i for i, label in enumerate(labels) if delta is not None and label in delta]
        if in_delta:
            out[in_delta] = delta.vectors([labels[i] for i in in_delta])
        if len(in_delta) < len(labels):
            marked = set(in_delta)
            rest = [i for i in range(len(labels)) if i not in marked]
            found = None if self.backend is None else self.backend.vectors_of(
                np.array([labels[i] for i in rest], np.int64))
            if found is None:
                return None
            out[rest] = found
        return out

    # -- search ------------------------------------------------------------------------------
    def search(
        self, query: np.ndarray, k: int, kind: str | None = None, allowed: set[int] | None = None
    ) -> list[tuple[str, float]]:
        """The ``k`` best (record_id, distance); with ``kind`` or ``allowed`` (the labels a
        filter keeps), widen until ``k`` match or all were seen. A filter keeping a share ``s``
        of the records starts by asking for ``2k/s``: about twice what it should need."""
        live = len(self.table)
        if live == 0 or k <= 0 or (allowed is not None and not allowed):
            return []
        fetch = min(k, live) if allowed is None else min(live, 2 * k * live // len(allowed) + k)
        while True:
            hits = self._search_labels(query, fetch)
            if allowed is not None:
                hits = [hit for hit in hits if hit[1] in allowed]
            found = self.table.lookup([label for _, label in hits])
            results = [
                (entry[0], distance)
                for (distance, _), entry in zip(hits, found, strict=True)
                if kind is None or entry[1] == kind
            ]
            if len(results) >= k or fetch >= live:
                return results[:k]
            fetch = min(live, fetch * 4)

    def _search_labels(self, query: np.ndarray, k: int) -> list[tuple[float, int]]:
        """The ``k`` best live (distance, label), best first (ties by label)."""
        backend, delta = self.backend, self.delta
        merged = self._search_backend(query, k) if backend is not None and len(backend) else []
        if delta is not None and len(delta):
            labels, distances = delta.search(query, k)
            merged += zip(distances.tolist(), labels.tolist(), strict=True)
        merged.sort()
        del merged[k:]
        return merged

    def _search_backend(self, query: np.ndarray, k: int) -> list[tuple[float, int]]:
        """The backend's ``k`` best live items: ask for ``k`` plus the tombstones' expected
        share, widening only when more of them turned up (asking for ``k`` + all tombstones
        made every search after 5,000 updates fetch 5,000 hits)."""
        n, tomb = len(self.backend), self.tombstones
        if not tomb:
            labels, distances = self.backend.search(query, min(n, k))
            return list(zip(distances.tolist(), labels.tolist(), strict=True))
        want = min(n, k + 2 * k * len(tomb) // n + 8)
        while True:
            labels, distances = self.backend.search(query, want)
            found = [
                (d, label)
                for label, d in zip(labels.tolist(), distances.tolist(), strict=True)
                if label not in tomb
            ]
            if len(found) >= k or want >= n or len(labels) < want:
                return found
            want = min(n, want * 4)
