"""Search within a set of record ids (``ids=``): top_k whenever that many of them have vectors.

Filtering after a nearest-neighbour search returns fewer than k hits when the filter keeps few
records (sqlite-vec#196, txtai#915). Here the ids are resolved first, through the record_id
index (bound as one JSON array parameter: no SQL is built from them, and no limit on how many
host parameters one statement takes), and then:

- a small set is searched exactly: its vectors are read from SQLite and scored by brute force
  (``EXACT_IDS_UP_TO``);
- a large set is searched by the live index, asking for enough hits that ``k`` of them are
  likely in the set and widening until they are (``LiveIndex.search(allowed=...)``); if an
  approximate backend still falls short, the set is searched exactly after all.

Only vectors the live index holds are answered (SQLite may show a caller's uncommitted write,
or another model's vectors, which a search never returns).
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


def _rows(store: EmbeddingStore, ids: list[str], model: str, dim: int, vectors: bool) -> list:
    columns = "label, vector" if vectors else "label"
    return store.conn.execute(
        f"SELECT {columns} FROM {store.table} WHERE record_id IN "
        "(SELECT value FROM json_each(?)) AND deleted = 0 AND model = ? AND dim = ?",
        (json.dumps(ids), model, dim),
    ).fetchall()


def _live(live: LiveIndex, labels: list[int], kind: str | None) -> list[tuple[int, str]]:
    """(label, record_id) of those of ``labels`` the live index holds, of ``kind`` if given."""
    return [
        (label, entry[0])
        for label, entry in zip(labels, live.table.lookup(labels), strict=True)
        if entry is not None and (kind is None or entry[1] == kind)
    ]


def _exact(
    store: EmbeddingStore, live: LiveIndex, query: np.ndarray, k: int, kind: str | None,
    ids: list[str], model: str,
) -> list[tuple[str, float]]:
    rows = _rows(store, ids, model, live.dim, vectors=True)
    blobs = dict(rows)
    kept = _live(live, [label for label, _ in rows], kind)
    if not kept:
        return []
    labels = np.fromiter((label for label, _ in kept), np.int64, len(kept))
    matrix = np.frombuffer(b"".join(blobs[label] for label, _ in kept), "<f4")
    positions, distances = exact_top_k(matrix.reshape(len(kept), live.dim), query, k, labels)
    return [(kept[p][1], float(d)) for p, d in zip(positions.tolist(), distances, strict=True)]


def search_within(
    store: EmbeddingStore, live: LiveIndex, query: np.ndarray, k: int, kind: str | None,
    ids: list[str], model: str,
) -> list[tuple[str, float]]:
    """The ``k`` best ``(record_id, distance)`` among ``ids`` (distinct keys), best first."""
    if not ids or live.dim is None or not len(live):
        return []
    if len(ids) <= EXACT_IDS_UP_TO:
        return _exact(store, live, query, k, kind, ids, model)
    labels = [label for (label,) in _rows(store, ids, model, live.dim, vectors=False)]
    allowed = {label for label, _ in _live(live, labels, kind)}
    hits = live.search(query, k, allowed=allowed)
    if len(hits) < min(k, len(allowed)):  # an approximate backend fell short
        return _exact(store, live, query, k, kind, ids, model)
    return hits
