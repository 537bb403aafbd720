"""Which record and kind each label of the live index stands for, and which labels the
backend holds, kept as sorted columns plus the changes since.

At 1M records, dicts and sets of every label cost 0.5 s and ~200 MB to build when a store
opened, for searches that look up ten labels. Here the columns come straight from the
manifest (or a rebuild); a search looks its hits up by binary search, and a write touches only
a small dict of changes. Nothing here is rebuilt per write: the columns are replaced only when
the engine compacts, which is already a pass over every vector.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .manifest_records import Records

_EMPTY = np.empty(0, np.int64)


def _find(labels: np.ndarray, label: int) -> int:
    """The position of ``label`` in the sorted ``labels``, or -1."""
    i = int(np.searchsorted(labels, label))
    return i if i < len(labels) and labels[i] == label else -1


class LabelTable:
    """label -> (record_id, kind) for the live vectors."""

    __slots__ = ("_labels", "_ids", "_kinds", "_codes", "_changed", "_size", "_by_hash",
                 "_version", "_changed_ids")

    def __init__(self, records: Records | None = None) -> None:
        records = records or Records(_EMPTY, [], [], _EMPTY)
        self._labels = records.labels  # ascending
        self._ids = records.record_ids
        self._kinds = records.kinds
        self._codes = records.kind_codes
        #: Since the columns: label -> (record_id, kind), or None for a label removed.
        self._changed: dict[int, tuple[str, str] | None] = {}
        self._size = len(self._labels)
        self._by_hash: tuple[np.ndarray, np.ndarray] | None = None  # made by find(), once
        self._version = 0  # moves with every change, for find()'s view of _changed
        self._changed_ids: tuple[int, dict[str, tuple[int, str]]] | None = None

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence]) -> LabelTable:
        """From (label, record_id, kind, ...) rows ascending by label (a rebuild's query)."""
        labels: list[int] = []
        ids: list[str] = []
        kinds: list[str] = []
        for row in rows:
            labels.append(row[0])
            ids.append(row[1])
            kinds.append(row[2])
        return cls(Records.from_columns(labels, ids, kinds))

    def __len__(self) -> int:
        return self._size

    def __contains__(self, label: int) -> bool:
        return self.get(label) is not None

    def _base(self, label: int) -> tuple[str, str] | None:
        i = _find(self._labels, label)
        return None if i < 0 else (self._ids[i], self._kinds[self._codes[i]])

    def get(self, label: int) -> tuple[str, str] | None:
        if label in self._changed:
            return self._changed[label]
        return self._base(label)

    def lookup(self, labels: list[int]) -> list[tuple[str, str] | None]:
        """``get`` of each label, the columns searched once for all of them (in numpy: a
        filtered search looks up thousands)."""
        changed, base = self._changed, self._labels
        found: list[tuple[str, str] | None] = [None] * len(labels)
        if len(base) and len(labels):
            wanted = np.asarray(labels, np.int64)
            positions = np.minimum(np.searchsorted(base, wanted), len(base) - 1)
            at = np.flatnonzero(base[positions] == wanted)
            ids, kinds, codes = self._ids, self._kinds, self._codes
            for i, p in zip(at.tolist(), positions[at].tolist(), strict=True):
                found[i] = (ids[p], kinds[codes[p]])
        if changed:
            for i, label in enumerate(labels):
                if label in changed:
                    found[i] = changed[label]
        return found

    def find(self, record_ids: list[str], kind: str | None = None) -> list[tuple[int, str]]:
        """(label, record_id) of those of ``record_ids`` (distinct) that are live, of ``kind``
        if given: a filtered search's set, without asking SQLite. The columns' record ids are
        hashed and sorted the first time (16 bytes a record); a hash match is confirmed by
        comparing the id itself, so a collision costs a comparison, never a wrong record."""
        if self._by_hash is None:
            hashes = np.fromiter(map(hash, self._ids), np.int64, len(self._ids))
            order = np.argsort(hashes, kind="stable")
            self._by_hash = (hashes[order], order)
        hashes, order = self._by_hash
        if self._changed_ids is None or self._changed_ids[0] != self._version:
            live = {v[0]: (label, v[1]) for label, v in self._changed.items() if v is not None}
            self._changed_ids = (self._version, live)
        changed_ids, changed = self._changed_ids[1], self._changed
        wanted = np.fromiter(map(hash, record_ids), np.int64, len(record_ids))
        n = len(hashes)
        found: list[tuple[int, str]] = []
        if not n:
            starts = np.zeros(len(record_ids), np.int64)
            first = np.full(len(record_ids), -1, np.int64)
        else:
            starts = np.searchsorted(hashes, wanted)
            first = order[np.minimum(starts, n - 1)]  # the first record with that hash
            first[hashes[np.minimum(starts, n - 1)] != wanted] = -1
        ids, labels, kinds, codes = self._ids, self._labels, self._kinds, self._codes
        for i, (record_id, p) in enumerate(zip(record_ids, first.tolist(), strict=True)):
            entry = changed_ids.get(record_id)
            if entry is not None:
                if kind is None or entry[1] == kind:
                    found.append((entry[0], record_id))
                continue
            if p >= 0 and ids[p] != record_id:  # a hash collision: look at the others
                p = self._colliding(record_id, int(wanted[i]), int(starts[i]))
            if p >= 0:
                label = int(labels[p])
                if label not in changed and (kind is None or kinds[codes[p]] == kind):
                    found.append((label, record_id))
        return found

    def _colliding(self, record_id: str, h: int, start: int) -> int:
        """The position of ``record_id`` among the records whose id hashes to ``h``, or -1."""
        hashes, order = self._by_hash
        j = start
        while j < len(hashes) and hashes[j] == h:
            if self._ids[int(order[j])] == record_id:
                return int(order[j])
            j += 1
        return -1

    def set(self, label: int, record_id: str, kind: str) -> None:
        self._version += 1
        if self.get(label) is None:
            self._size += 1
        self._changed[label] = (record_id, kind)

    def remove(self, label: int) -> bool:
        """Forget ``label``; True if it was there."""
        self._version += 1
        if self.get(label) is None:
            return False
        self._size -= 1
        if _find(self._labels, label) >= 0:
            self._changed[label] = None
        else:
            del self._changed[label]
        return True

    def items(self) -> Iterator[tuple[int, str, str]]:
        """(label, record_id, kind) of every live label, ascending."""
        changed, ids, kinds, codes = self._changed, self._ids, self._kinds, self._codes
        base = (
            (label, ids[i], kinds[codes[i]])
            for i, label in enumerate(self._labels.tolist())
            if label not in changed
        )
        if not changed:
            yield from base
            return
        added = sorted((label, *value) for label, value in changed.items() if value is not None)
        yield from heapq.merge(base, added)

    def labels(self) -> np.ndarray:
        """Every live label, ascending (the columns themselves while nothing changed)."""
        if not self._changed:
            return self._labels
        return np.fromiter((label for label, _, _ in self.items()), np.int64, self._size)

    def records(self) -> Records:
        """The live labels as manifest columns (in one pass)."""
        labels: list[int] = []
        ids: list[str] = []
        kinds: list[str] = []
        for label, record_id, kind in self.items():
            labels.append(label)
            ids.append(record_id)
            kinds.append(kind)
        return Records.from_columns(labels, ids, kinds)


class LabelSet:
    """A set of labels: a sorted array plus what was added and removed since."""

    __slots__ = ("_base", "_added", "_removed")

    def __init__(self, base: np.ndarray = _EMPTY) -> None:
        self._base = base
        self._added: set[int] = set()
        self._removed: set[int] = set()

    def __len__(self) -> int:
        return len(self._base) + len(self._added) - len(self._removed)

    def __contains__(self, label: int) -> bool:
        if label in self._added:
            return True
        return label not in self._removed and _find(self._base, label) >= 0

    def add(self, label: int) -> None:
        if label in self:
            return
        if label in self._removed:
            self._removed.discard(label)
        else:
            self._added.add(label)

    def update(self, labels: Iterable[int]) -> None:
        for label in labels:
            self.add(label)

    def discard(self, label: int) -> None:
        if label in self._added:
            self._added.discard(label)
        elif _find(self._base, label) >= 0:
            self._removed.add(label)

    def difference_update(self, labels: Iterable[int]) -> None:
        for label in labels:
            self.discard(label)

