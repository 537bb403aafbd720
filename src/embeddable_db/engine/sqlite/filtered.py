"""Search within a set of record ids (``ids=``): top_k whenever that many of them have vectors.

Filtering after a nearest-neighbour search returns fewer than k hits when the filter keeps few
records (sqlite-vec#196, txtai#915). Here the ids are resolved first, in the live index's own
label table (``LabelTable.find``: no SQL at all; through SQLite's record_id index the lookups
took 2.6 of the 7.5 ms a 1,000-id search took at 100k, and the live-index check 1.8 more),
and then:

- a small set is searched exactly (``EXACT_IDS_UP_TO``): its vectors are gathered from the
  live index in bulk (the delta, the Annoy file's map, FAISS by id; SQLite for a backend that
  cannot) and scored by brute force;
- a large set is searched by the live index, asking for enough hits that ``k`` of them are
  likely in the set and widening until they are (``LiveIndex.search(allowed=...)``); if an
  approximate backend still falls short, the set is searched exactly after all.

Only vectors the live index holds are answered, as it holds them (SQLite may show a caller's
uncommitted write, or another model's vectors, which a search never returns).
"""

from __future__ import annotations

import json

import numpy as np

from ...backends.exact import exact_top_k
from .live_index import LiveIndex
from .store import EmbeddingStore

#: Up to this many ids the set is scored exactly. Measured side by side at 100k real vectors
#: (``benchmarks/bench_filters.py``): see ``FILTER_CROSSOVER`` in the README.
EXACT_IDS_UP_TO = 3_000


def _stored_vectors(store: EmbeddingStore, labels: list[int], dim: int) -> np.ndarray:
    """The vectors of these labels as SQLite holds them (a backend that cannot read its own
    back in bulk)."""
    blobs = dict(store.conn.execute(
        f"SELECT label, vector FROM {store.table} WHERE label IN (SELECT value FROM json_each(?))",
        (json.dumps(labels),),
    ))
    return np.frombuffer(b"".join(blobs[label] for label in labels), "<f4").reshape(-1, dim)


def _exact(
    store: EmbeddingStore, live: LiveIndex, query: np.ndarray, k: int, kept: list[tuple[int, str]],
) -> list[tuple[str, float]]:
    if not kept:
        return []
    labels = [label for label, _ in kept]
    matrix = live.vectors_of(labels)
    if matrix is None:
        matrix = _stored_vectors(store, labels, live.dim)
    positions, distances = exact_top_k(matrix, query, k, np.array(labels, np.int64))
    return [(kept[p][1], float(d)) for p, d in zip(positions.tolist(), distances, strict=True)]


def search_within(
    store: EmbeddingStore, live: LiveIndex, query: np.ndarray, k: int, kind: str | None,
    ids: list[str],
) -> list[tuple[str, float]]:
    """The ``k`` best ``(record_id, distance)`` among ``ids`` (distinct keys), best first."""
    if not ids or live.dim is None or not len(live):
        return []
    kept = live.table.find(ids, kind)
    if len(kept) <= EXACT_IDS_UP_TO:
        return _exact(store, live, query, k, kept)
    hits = live.search(query, k, allowed={label for label, _ in kept})
    if len(hits) < min(k, len(kept)):  # an approximate backend fell short
        return _exact(store, live, query, k, kept)
    return hits
