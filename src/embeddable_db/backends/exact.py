"""Exact top-k by brute force: one matrix product and a partial sort, numpy only.

The live index searches its delta with it and the Annoy backend its small indexes. It lives
here, not in a backend's module, so that using it imports no ANN library: a FAISS-only store
never imports ``annoy``.
"""

from __future__ import annotations

import numpy as np


def exact_top_k(
    matrix: np.ndarray, query: np.ndarray, k: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Positions and distances (1 - cosine) of the ``k`` rows nearest ``query``, best first.

    Rows are unit vectors, so the dot product is the cosine. Equal scores go to the lower
    label (``labels``: one per row) or else the lower position, at the cut-off too: the answer
    does not depend on how the partial sort split them."""
    n = matrix.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    scores = matrix @ query
    if k < n:  # the rows scoring at least the k-th best, ascending: ties at the cut-off too
        candidates = np.flatnonzero(scores >= np.partition(scores, n - k)[n - k])
    else:
        candidates = np.arange(n)
    picked = scores[candidates]
    if labels is None:
        order = np.argsort(-picked, kind="stable")
    else:
        order = np.lexsort((labels[candidates], -picked))
    top = candidates[order[:k]]
    return top.astype(np.int64), (1.0 - scores[top]).astype(np.float32)
