"""Small helpers the part tests share: unit vectors and the brute-force reference answer."""

from __future__ import annotations

import math

import numpy as np


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def sign_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors of entries +-1/sqrt(dim), dim a power of 4: their dot products are exact in
    float32 in any summation order, so equal scores are equal on every BLAS (and frequent)."""
    assert math.isqrt(dim) ** 2 == dim and (math.isqrt(dim) & (math.isqrt(dim) - 1)) == 0
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n, dim))
    return (signs / math.isqrt(dim)).astype(np.float32)


def cosine(a, b) -> float:
    """Correctly rounded, row by row in Python: equal vectors always score equally (a BLAS
    matrix product need not give two equal rows the same float)."""
    a, b = np.asarray(a, np.float64).tolist(), np.asarray(b, np.float64).tolist()
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(math.fsum(x * x for x in a) * math.fsum(y * y for y in b))


def exact_answer(labels, matrix, query, k):
    """(labels, 1 - cosine) of the ``k`` nearest rows; equal scores go to the lower label."""
    labels = np.asarray(labels, np.int64)
    scores = [cosine(row, query) for row in matrix]
    order = sorted(range(len(labels)), key=lambda i: (-scores[i], labels[i]))[: max(k, 0)]
    return labels[order], 1.0 - np.array([scores[i] for i in order], np.float64)
