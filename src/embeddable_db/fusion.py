"""Hybrid search: a keyword ranking and a vector ranking fused into one.

Weighted reciprocal rank fusion (RRF): a record ranked ``r`` by a side adds ``w / (rrf_k + r)``
to its score. Equal weights lose to the better side on each kind of query (measured on the
labelled set, ``benchmarks/eval``): a paraphrase shares few words with its answer, so the
keyword side ranks noise and drags the fusion below vector search; a literal query (a name, an
error code) is found best by its words. So the keyword weight follows the query: it is
``weights[0] * KEYWORD_GAIN * coverage ** COVERAGE_POWER``, where ``coverage`` (0..1, the engine's
``keyword_coverage``) is how much of the query's information the best keyword match holds —
on SQLite, its BM25 score over the score of a record holding every query word once (the sum of
the words' IDF), so a match of all the rare words scores about 1 and a match of only "how" and
"file" about 0. A literal query then counts three times the vector side, a paraphrase
(coverage ~0.4) next to nothing. ``adaptive=False`` gives plain weighted RRF.

The constants were chosen on the labelled set (143 queries over 5,178 stdlib docstrings),
from a grid of gain 1-6, power 2-8 and rrf_k 10/20/60; the README gives the table. Through the
store, equal RRF (k 60) read nDCG@10 0.199 on paraphrases (vector alone: 0.385); gain 3,
power 3, rrf_k 20 read 0.378 on paraphrases, 0.856 on literal queries (keyword alone: 0.894)
and 0.595 overall (vector alone 0.501). The region is flat (gain 3-4, power 3, rrf_k 10-20
all came close), but rrf_k 60 (LanceDB's default) lets the keyword side's noise in.

How many candidates each side gives (``candidates``): enough that no record missing from both
lists could enter the fused top k. A record beyond depth ``D`` on both sides scores less than
``(w_v + w_k) / (rrf_k + D)``, and the fused k-th score is at least ``max(w) / (rrf_k + k)``
(the better-weighted side's own k-th record), so ``D = (w_v + w_k) / max(w) * (rrf_k + k) -
rrf_k`` suffices: 80 for the defaults (k 10, rrf_k 60, equal weights).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .engine import Engine
from .errors import EmbeddingError, InvalidInputError

#: The keyword weight is ``KEYWORD_GAIN * coverage ** COVERAGE_POWER`` (module docstring).
KEYWORD_GAIN = 3.0
COVERAGE_POWER = 3.0
#: The default ``rrf_k`` (module docstring).
RRF_K = 20
#: Candidates each side gives at least.
MIN_CANDIDATES = 100
#: Candidates no side gives more than (a top_k of 500 with rrf_k 60 asks for 1,060).
MAX_CANDIDATES = 2_000


class HybridHit(NamedTuple):
    """One hybrid search result. ``score``: the fused score, higher is better (a reranker's
    score when one reordered the hits); ``distance``: 1 - cosine similarity to the query;
    ``vector_rank`` / ``keyword_rank``: 1-based rank on each side, None where it did not
    find the record."""

    record_id: str
    score: float
    distance: float
    vector_rank: int | None
    keyword_rank: int | None


def candidates(top_k: int, rrf_k: float) -> int:
    """How many candidates each side gives for a stable fused top_k (module docstring): the
    depth that suffices for any weights (equal ones need the most: ``rrf_k + 2 * top_k``)."""
    return min(MAX_CANDIDATES, max(top_k, MIN_CANDIDATES, math.ceil(rrf_k + 2 * top_k)))


def keyword_weight(weight: float, coverage: float, adaptive: bool) -> float:
    """The keyword side's weight for a query whose best match has this ``coverage``."""
    return weight * KEYWORD_GAIN * coverage**COVERAGE_POWER if adaptive else weight


def fuse(
    vector_hits: Sequence[tuple[str, float]],
    keyword_hits: Sequence[tuple[str, float]],
    weights: tuple[float, float],
    rrf_k: float,
) -> list[tuple[str, float, int | None, int | None]]:
    """``(record_id, fused score, vector rank, keyword rank)`` best first; equal scores in
    record id order, so the answer does not depend on dict order. ``weights``: (keyword,
    vector), already adapted to the query."""
    w_keyword, w_vector = weights
    scores: dict[str, float] = {}
    vector_rank: dict[str, int] = {}
    keyword_rank: dict[str, int] = {}
    for rank, (record_id, _) in enumerate(vector_hits, 1):
        vector_rank[record_id] = rank
        scores[record_id] = w_vector / (rrf_k + rank)
    for rank, (record_id, _) in enumerate(keyword_hits, 1):
        keyword_rank[record_id] = rank
        scores[record_id] = scores.get(record_id, 0.0) + w_keyword / (rrf_k + rank)
    order = sorted(scores, key=lambda record_id: (-scores[record_id], record_id))
    return [
        (record_id, scores[record_id], vector_rank.get(record_id), keyword_rank.get(record_id))
        for record_id in order
    ]


#: How many fused candidates a reranker reorders by default.
RERANK_CANDIDATES = 50


def hybrid_search(
    engine: Engine, vector: np.ndarray, text: str, top_k: int, *, kind: str | None,
    ids: list[str] | None, weights: tuple[float, float], rrf_k: float, adaptive: bool,
    reranker: Any = None, rerank_candidates: int = RERANK_CANDIDATES,
) -> list[HybridHit]:
    """Both searches, fused (and reranked), as ``HybridHit``s best first (arguments checked)."""
    pool = max(top_k, rerank_candidates) if reranker is not None else top_k
    depth = max(candidates(top_k, rrf_k), pool)
    vector_hits = engine.search(vector, depth, kind, ids)
    # The keyword side gives up to ``depth`` candidates, but a commoner word is searched only
    # while the rarer ones match fewer than top_k: more of its matches would rank below
    # the vector side's (sentence queries: hybrid p50 13.5 ms against 5.5 ms for vectors).
    keyword_hits = engine.keyword_search(text, depth, kind, ids, fill=top_k)
    coverage = engine.keyword_coverage(text, keyword_hits[0][1]) if keyword_hits else 0.0
    adapted = (keyword_weight(weights[0], coverage, adaptive), weights[1])
    fused = fuse(vector_hits, keyword_hits, adapted, rrf_k)[:pool]
    distances = _distances(engine, vector, dict(vector_hits), [hit[0] for hit in fused])
    if reranker is not None:
        fused = _reranked(engine, reranker, text, fused)
    return [
        HybridHit(record_id, score, distances[record_id], vector_rank, keyword_rank)
        for record_id, score, vector_rank, keyword_rank in fused[:top_k]
    ]


def _distances(
    engine: Engine, vector: np.ndarray, known: dict[str, float], keys: list[str]
) -> dict[str, float]:
    """The cosine distance of every hit; for those only the keyword side found, from its
    stored vector (NaN while it is another model's: a model switch not yet backfilled)."""
    query = np.asarray(vector, np.float64)
    for key in keys:
        if key not in known:
            stored = engine.get_vector(key)
            same = stored is not None and stored.shape == query.shape
            known[key] = float(1.0 - stored.astype(np.float64) @ query) if same else math.nan
    return known


def _reranked(engine: Engine, reranker: Any, text: str, fused: list) -> list:
    """``fused`` ordered by the reranker's scores of the hits' texts (ties: fused order); each
    hit's score becomes the reranker's."""
    rank = getattr(reranker, "rank", None)
    if not callable(rank):
        raise InvalidInputError(
            f"reranker must have a rank(query, texts) -> scores method, got {reranker!r}"
        )
    texts = engine.keyword_texts([hit[0] for hit in fused])
    kept = [hit for hit in fused if hit[0] in texts]
    scores = list(rank(text, [texts[hit[0]] for hit in kept]))
    if len(scores) != len(kept) or not all(
        isinstance(s, numbers.Real) and math.isfinite(s) for s in scores
    ):
        raise EmbeddingError(
            f"reranker {type(reranker).__name__}.rank returned {len(scores)} scores for "
            f"{len(kept)} texts (or a score that is not a finite number): it must return one "
            "number per text, higher is better"
        )
    order = sorted(range(len(kept)), key=lambda i: -float(scores[i]))
    return [(kept[i][0], float(scores[i]), kept[i][2], kept[i][3]) for i in order]
