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
    does not depend on how the partial sort split them. The BLAS product that finds the
    candidates can score equal rows one float32 step apart (a blocked kernel sums the last
    rows of a block another way), so the candidates near the cut-off are scored again, row by
    row in float64: equal rows then get equal scores, and the tie rule holds."""
    n = matrix.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    scores = matrix @ query
    if k < n:  # the rows scoring at least the k-th best (less the product's error), ascending
        cut = np.partition(scores, n - k)[n - k]
        candidates = np.flatnonzero(scores >= cut - _SLACK)
    else:
        candidates = np.arange(n)
    picked = np.einsum(
        "ij,j->i", matrix[candidates].astype(np.float64), np.asarray(query, np.float64)
    )
    if labels is None:
        order = np.lexsort((candidates, -picked))
    else:
        order = np.lexsort((labels[candidates], -picked))
    chosen = order[:k]
    return candidates[chosen].astype(np.int64), (1.0 - picked[chosen]).astype(np.float32)


#: How far a float32 BLAS score of unit vectors may be from the exact one (384 terms, a few
#: ulps each, is ~1e-6 at most); rows this close to the cut-off are scored again exactly.
_SLACK = 1e-5
