"""The data that crosses the engine seam: a vector to write, a change to follow, a stored state.

Plain frozen dataclasses with no storage in them, so the encoding, backfill and every engine
share them without depending on one another (``store.py`` re-exports them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


@dataclass(frozen=True, slots=True)
class VectorRow:
    """One embedding to write: what it is, what it was made from and by which model."""

    record_id: str
    kind: str
    source_id: str
    vector: np.ndarray
    text_hash: str
    model: str
    embedding_version: int
    #: The text the vector was encoded from (its keyword row), None when the store's records
    #: give ``vector()`` only: then the record has no keyword row.
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """A row changed after some ``seq``: an upsert, or a removal when ``vector`` is None."""

    label: int
    record_id: str
    kind: str
    model: str | None
    vector: np.ndarray | None
    seq: int


class StoredState(NamedTuple):
    """What backfill compares against to decide whether a record's vector is stale (a tuple:
    a backfill reads one per record, and builds them a million at a time)."""

    text_hash: str
    model: str
    embedding_version: int
    source_id: str = ""  # kept when the vector is re-embedded
    kind: str = ""
    #: Whether the vector's text is in the keyword index (a store migrated to the keyword
    #: index has none until a backfill fills them, from the records, without the model).
    keyword: bool = True

    def current_for(self, text_hash: str, kind: str, model: str, embedding_version: int) -> bool:
        """Whether a backfill has nothing to do for a record with this hash and kind: the
        vector was made from this text, by this model and version, and has its keyword row."""
        return (self.text_hash == text_hash and self.model == model and self.kind == kind
                and self.embedding_version >= embedding_version and bool(self.keyword))
