"""The manifest's per-record metadata in columns (schema 3), and the rows of schema 2.

Schema 2 kept one six-element row per record: at 1M records its 62 MB took 0.8 s to parse and
another 0.5 s to turn into maps, on an open whose target is 0.5 s. Schema 3 keeps columns in
label order. Labels are written as runs of consecutive values (``[[first, count], ...]``) and
columns of few distinct values (kind, source id, creation time, version) as a list of values and runs of
codes, so what opening needs parses as two short lists and one list of record ids. The rest
(source ids, creation times, versions) sits in ``details``, after everything else, and is
parsed only by the readers that use it (``verify_index()``, a user's script).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The per-record fields, as schema 2 named them and as ``Records.rows()`` gives them.
RECORD_FIELDS = ["label", "record_id", "kind", "source_id", "created_at", "embedding_version"]
_EMPTY = np.empty(0, np.int64)


class ColumnError(ValueError):
    """A column of the wrong shape (the manifest is then refused and rebuilt)."""


@dataclass(eq=False)
class Records:
    """Label, record id and kind of every record, ascending by label; ``details`` holds
    (source_ids, created_ats, embedding_versions) when they were read or are to be written."""

    labels: np.ndarray
    record_ids: list[str]
    kinds: list[str]  # the distinct kinds, in first-seen order
    kind_codes: np.ndarray  # index into ``kinds`` per record
    details: tuple[list[str], list[str], list[int]] | None = None

    def __len__(self) -> int:
        return len(self.record_ids)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Records)
            and np.array_equal(self.labels, other.labels)
            and self.record_ids == other.record_ids
            and self.kind_list() == other.kind_list()
            and self.details == other.details
        )

    def kind_list(self) -> list[str]:
        names = self.kinds
        return [names[code] for code in self.kind_codes.tolist()]

    def pairs(self) -> dict[int, tuple[str, str]]:
        """label -> (record_id, kind), for ``verify_index()``."""
        pairs = zip(self.record_ids, self.kind_list(), strict=True)
        return dict(zip(self.labels.tolist(), pairs, strict=True))

    def rows(self) -> list[list[Any]]:
        """One row per record in ``RECORD_FIELDS`` order (needs the details)."""
        if self.details is None:
            raise ColumnError("the details were not read")
        return [list(row) for row in zip(
            self.labels.tolist(), self.record_ids, self.kind_list(), *self.details, strict=True
        )]

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any]]) -> Records:
        """From rows in ``RECORD_FIELDS`` order (schema 2, and tests), ascending by label."""
        columns = list(zip(*rows, strict=True)) or [()] * len(RECORD_FIELDS)
        labels, ids, kinds, sources, created, versions = columns
        return cls.from_columns(labels, list(ids), kinds, (list(sources), list(created),
                                                          list(versions)))

    @classmethod
    def from_columns(
        cls, labels: Sequence[int] | np.ndarray, record_ids: list[str], kinds: Iterable[str],
        details: tuple[list[str], list[str], list[int]] | None = None,
    ) -> Records:
        names, codes = encode(kinds)
        return cls(np.asarray(labels, np.int64).reshape(-1), record_ids, names, codes, details)

    # -- JSON ------------------------------------------------------------------------------------
    def to_json_fields(self) -> dict[str, Any]:
        """The columns as schema 3 writes them; ``details`` last (readers may stop before it)."""
        sources, created, versions = self.details or ([""] * len(self), [""] * len(self),
                                                      [0] * len(self))
        return {
            "labels": label_runs(self.labels),
            "record_ids": self.record_ids,
            "kinds": {"values": self.kinds, "runs": code_runs(self.kind_codes)},
            "details": {
                "source_id": coded(sources),
                "created_at": coded(created),  # one time per write batch: few runs
                "embedding_version": coded(versions),
            },
        }

    @classmethod
    def from_json_fields(cls, data: dict[str, Any], details: Any = None) -> Records:
        """Check and decode schema 3's columns; ``details`` is the parsed object or None."""
        ids = data["record_ids"]
        if type(ids) is not list or not _all_of(ids, str):
            raise ColumnError("record_ids is not a list of strings")
        labels = runs_to_labels(data["labels"], len(ids))
        names, codes = decoded_codes(data["kinds"], len(labels), str)
        records = cls(labels, ids, names, codes)
        if details is not None:
            if not isinstance(details, dict):
                raise ColumnError("details is not an object")
            created_names, created_codes = decoded_codes(details.get("created_at"), len(ids), str)
            source_names, source_codes = decoded_codes(details.get("source_id"), len(ids), str)
            version_names, version_codes = decoded_codes(
                details.get("embedding_version"), len(ids), int
            )
            records.details = (
                [source_names[c] for c in source_codes.tolist()],
                [created_names[c] for c in created_codes.tolist()],
                [version_names[c] for c in version_codes.tolist()],
            )
        return records


def _all_of(values: list, kind: type) -> bool:
    """Every value exactly of ``kind`` (a bool is no int): ~20 ms per million."""
    return not values or set(map(type, values)) == {kind}


def encode(values: Iterable[Any]) -> tuple[list[Any], np.ndarray]:
    """(distinct values in first-seen order, the code of each value)."""
    index: dict[Any, int] = {}
    codes = [index.setdefault(value, len(index)) for value in values]
    return list(index), np.array(codes, np.int64)


def coded(values: list[Any]) -> dict[str, Any]:
    names, codes = encode(values)
    return {"values": names, "runs": code_runs(codes)}


def _runs(starts: np.ndarray, values: np.ndarray) -> list[list[int]]:
    """[[values[start], length], ...] for the runs beginning at ``starts``."""
    lengths = np.diff(np.append(starts, len(values)))
    return np.column_stack([values[starts], lengths]).tolist()


def code_runs(codes: np.ndarray) -> list[list[int]]:
    """Runs of equal codes: ``[[code, count], ...]``."""
    if not len(codes):
        return []
    return _runs(np.flatnonzero(np.diff(codes, prepend=codes[0] - 1)), codes)


def label_runs(labels: np.ndarray) -> list[list[int]]:
    """Runs of consecutive labels: ``[[first, count], ...]``."""
    if not len(labels):
        return []
    return _runs(np.flatnonzero(np.diff(labels, prepend=labels[0] - 2) != 1), labels)


def _pairs(value: Any, what: str) -> np.ndarray:
    """A list of [int, positive int] pairs as an (n, 2) int64 array."""
    if type(value) is not list:
        raise ColumnError(f"{what} is not a list of runs")
    if not value:
        return np.empty((0, 2), np.int64)
    if not all(type(pair) is list and len(pair) == 2 for pair in value) or not _all_of(
        [x for pair in value for x in pair], int
    ):
        raise ColumnError(f"{what} is not a list of [value, count] integer pairs")
    try:
        pairs = np.array(value, np.int64)
    except OverflowError as exc:
        raise ColumnError(f"{what} holds a number out of range") from exc
    if (pairs[:, 1] <= 0).any():
        raise ColumnError(f"{what} has a run that is not positive")
    return pairs


def _total(pairs: np.ndarray, n: int, what: str) -> None:
    """Runs must cover exactly ``n`` records: checked before any is expanded (a forged run
    of 10**12 must not allocate terabytes)."""
    counts = pairs[:, 1]
    if (int(counts.max()) > n if len(counts) else n) or int(counts.sum()) != n:
        raise ColumnError(f"{what} does not cover the {n} records")


def runs_to_labels(value: Any, n: int) -> np.ndarray:
    pairs = _pairs(value, "labels")
    _total(pairs, n, "labels")
    if not len(pairs):
        return _EMPTY
    firsts, counts = pairs[:, 0], pairs[:, 1]
    offsets = np.cumsum(counts) - counts  # where each run starts in the output
    return np.repeat(firsts - offsets, counts) + np.arange(int(counts.sum()), dtype=np.int64)


def decoded_codes(value: Any, n: int, kind: type) -> tuple[list[Any], np.ndarray]:
    """(values, one code per record) of a ``{"values": [...], "runs": [[code, count], ...]}``."""
    if not isinstance(value, dict) or type(value.get("values")) is not list:
        raise ColumnError("a coded column is not {values, runs}")
    names = value["values"]
    if not _all_of(names, kind):
        raise ColumnError(f"a coded column's values are not all {kind.__name__}")
    pairs = _pairs(value.get("runs"), "runs")
    _total(pairs, n, "a coded column")
    codes = np.repeat(pairs[:, 0], pairs[:, 1]) if len(pairs) else _EMPTY
    if len(codes) and (codes.min() < 0 or codes.max() >= len(names)):
        raise ColumnError("a coded column does not give one known value per label")
    return names, codes
