"""Score retrieval on the labelled stdlib set: hit@10, MRR@10 and nDCG@10, per kind and overall.

A searcher is any ``search(query, k) -> [doc_id, ...]`` best first, so the store's own keyword,
vector and hybrid search can be scored the same way once they exist. Three baselines run today:

* keyword: SQLite FTS5 bm25 over the corpus in memory; the query's words, each quoted, OR-ed,
  and bound as a parameter (no SQL is built from query text);
* vector: ``all-MiniLM-L6-v2`` (the project's default encoder), exact cosine top k with numpy;
  the corpus and query vectors are cached under ``benchmarks/.cache/`` by a hash of their texts;
* hybrid: reciprocal rank fusion of the two top-100 lists (k=60, equal weights), plus a few
  other settings (k, weights, candidates per side) side by side.

Run: ``PYTHONPATH=src python benchmarks/eval/score.py`` (the first run encodes ~5,200 texts).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import platform
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from corpus import build_corpus  # noqa: E402
from queries import KINDS, check_queries, load_queries, overlap_report, words  # noqa: E402

CACHE = HERE.parent / ".cache"
K = 10
DEPTH = 100  # candidates each side hands to the fusion
Search = Callable[[str, int], list[str]]


# -- metrics (binary relevance: a document is an answer or it is not) ------------------------------
def hit_at_k(ranked: Sequence[str], answers: set[str], k: int = K) -> float:
    return float(any(doc in answers for doc in ranked[:k]))


def mrr_at_k(ranked: Sequence[str], answers: set[str], k: int = K) -> float:
    return next((1.0 / rank for rank, doc in enumerate(ranked[:k], 1) if doc in answers), 0.0)


def ndcg_at_k(ranked: Sequence[str], answers: set[str], k: int = K) -> float:
    dcg = sum(1.0 / math.log2(rank + 1) for rank, doc in enumerate(ranked[:k], 1) if doc in answers)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(answers), k) + 1))
    return dcg / ideal if ideal else 0.0


METRICS = {"hit@10": hit_at_k, "MRR@10": mrr_at_k, "nDCG@10": ndcg_at_k}


def score(rankings: dict[str, list[str]], queries: list[dict]) -> dict[str, dict[str, float]]:
    """{kind or "overall": {metric: mean}} of the ranked lists, one per query text."""
    groups = {kind: [q for q in queries if q["kind"] == kind] for kind in KINDS}
    groups["overall"] = queries
    return {
        group: {name: statistics.fmean(fn(rankings[q["query"]], set(q["answers"])) for q in members)
                for name, fn in METRICS.items()}
        for group, members in groups.items() if members
    }


def run(search: Search, queries: list[dict], k: int = DEPTH) -> tuple[dict[str, list[str]], float]:
    """(ranked list per query text, median ms per query) of ``search`` over every query."""
    rankings, times = {}, []
    for q in queries:
        started = time.perf_counter()
        rankings[q["query"]] = list(search(q["query"], k))
        times.append((time.perf_counter() - started) * 1e3)
    return rankings, statistics.median(times)


# -- baselines --------------------------------------------------------------------------------------
class KeywordSearch:
    """FTS5 bm25 over the corpus: any of the query's words, rarer and denser matches first."""

    def __init__(self, corpus: list[tuple[str, str]]) -> None:
        self.conn = sqlite3.connect(":memory:")
        self.conn.execute("CREATE VIRTUAL TABLE docs USING fts5(doc_id UNINDEXED, body)")
        self.conn.executemany("INSERT INTO docs(doc_id, body) VALUES (?, ?)", corpus)

    def __call__(self, query: str, k: int) -> list[str]:
        terms = dict.fromkeys(words(query))  # letters and digits only: nothing FTS5 could parse
        if not terms:
            return []
        match = " OR ".join(f'"{term}"' for term in terms)
        rows = self.conn.execute(
            "SELECT doc_id FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) LIMIT ?", (match, k)
        )
        return [doc_id for (doc_id,) in rows]


def _log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def cached_vectors(texts: list[str], label: str) -> np.ndarray:
    """Unit vectors of ``texts`` by the default model, encoded once and kept by a hash of the texts."""
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"eval-{label}-{digest}.npy"
    if not path.exists():
        from embeddable_db import get_encoder

        _log(f"encoding {len(texts)} {label} texts once (cached in {path.name})")
        started = time.perf_counter()
        vectors = get_encoder().model.encode(texts, batch_size=128, normalize_embeddings=True)
        _log(f"encoded in {time.perf_counter() - started:.0f} s")
        CACHE.mkdir(exist_ok=True)
        np.save(path, np.asarray(vectors, np.float32))
    return np.load(path)


class VectorSearch:
    """Exact cosine top k over the corpus vectors; query vectors are encoded ahead, in one batch."""

    def __init__(self, corpus: list[tuple[str, str]], query_texts: list[str]) -> None:
        self.ids = [doc_id for doc_id, _ in corpus]
        self.matrix = cached_vectors([text for _, text in corpus], "corpus")
        self.queries = dict(zip(query_texts, cached_vectors(query_texts, "queries"), strict=True))

    def __call__(self, query: str, k: int) -> list[str]:
        scores = self.matrix @ self.queries[query]
        top = np.argpartition(-scores, k - 1)[:k]
        return [self.ids[i] for i in top[np.argsort(-scores[top])]]


class CachedEncoder:
    """The default model's vectors of the corpus and the queries, looked up instead of
    computed, so the store's own searches are scored without running the model again."""

    model_name = "all-MiniLM-L6-v2 (cached for the eval)"

    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        self.row = {text: i for i, text in enumerate(texts)}
        self.vectors = vectors
        self.dimension = vectors.shape[1]

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        return self.vectors[[self.row[text] for text in texts]]


class StoreSearch:
    """The library's keyword, vector and hybrid search over the corpus in a real store (a
    mixin over a ``docs`` table in a temporary SQLite file, default backend)."""

    def __init__(self, corpus: list[tuple[str, str]], query_texts: list[str], folder: str) -> None:
        import sqlite3 as sqlite

        from embeddable_db import EmbeddableDBMixin

        texts = [text for _, text in corpus] + query_texts
        vectors = np.concatenate([cached_vectors([t for _, t in corpus], "corpus"),
                                  cached_vectors(query_texts, "queries")])

        class Docs(EmbeddableDBMixin):
            def __init__(self, path: str, **options) -> None:
                self.conn = sqlite.connect(path)
                self.conn.execute("CREATE TABLE IF NOT EXISTS docs(id TEXT PRIMARY KEY, body TEXT)")
                self.conn.executemany("INSERT OR REPLACE INTO docs VALUES (?, ?)", corpus)
                self.conn.commit()
                super().__init__(**options)

            def iter_records(self):
                for doc_id, body in self.conn.execute("SELECT id, body FROM docs ORDER BY id"):
                    yield doc_id, body, "doc"

            def embedding_text(self, record):
                return record

        self.store = Docs(f"{folder}/docs.db", encoder=CachedEncoder(texts, vectors))
        self.store.backfill_embeddings(batch_size=500)

    def keyword(self, query: str, k: int) -> list[str]:
        return [doc for doc, _ in self.store.search_by_keyword(query, k)]

    def vector(self, query: str, k: int) -> list[str]:
        return [doc for doc, _ in self.store.search_by_text(query, k)]

    def hybrid(self, **settings) -> Search:
        def search(query: str, k: int) -> list[str]:
            return [hit.record_id for hit in self.store.search_hybrid(query, k, **settings)]
        return search


def rrf(lists: Sequence[Sequence[str]], k: int = 60, weights: Sequence[float] | None = None) -> list[str]:
    """Reciprocal rank fusion: each list adds ``weight / (k + rank)`` to the documents it ranks."""
    weights = weights or [1.0] * len(lists)
    fused: dict[str, float] = {}
    for ranked, weight in zip(lists, weights, strict=True):
        for rank, doc in enumerate(ranked, 1):
            fused[doc] = fused.get(doc, 0.0) + weight / (k + rank)
    return sorted(fused, key=lambda doc: (-fused[doc], doc))


# -- output -----------------------------------------------------------------------------------------
def table(results: dict[str, dict[str, dict[str, float]]], latency: dict[str, float]) -> str:
    groups = [*KINDS, "overall"]
    head = f"{'method':<34}" + "".join(f"| {g:^26}" for g in groups) + "| ms/query"
    sub = f"{'':<34}" + "| hit@10  MRR@10  nDCG@10  " * len(groups) + "|"
    lines = [head, sub, "-" * len(head)]
    for method, by_group in results.items():
        cells = "".join(
            "| " + "  ".join(f"{by_group[g][m]:>6.3f}" for m in METRICS) + "  " for g in groups
        )
        ms = f"{latency[method]:.2f}" if method in latency else "-"
        lines.append(f"{method:<34}{cells}| {ms}")
    return "\n".join(lines)


HYBRIDS = {  # name: search_hybrid's settings
    "hybrid: search_hybrid (default)": {},
    "hybrid adaptive rrf_k=20": {"rrf_k": 20},
    "hybrid adaptive rrf_k=60": {"rrf_k": 60},
    "hybrid adaptive kw x2": {"weights": (2.0, 1.0)},
    "hybrid plain RRF 1:1 k=60": {"adaptive": False, "rrf_k": 60},
    "hybrid plain RRF 1:1 k=10": {"adaptive": False},
    "hybrid plain RRF kw0.5 k=60": {"adaptive": False, "rrf_k": 60, "weights": (0.5, 1.0)},
}


def print_targets(results: dict[str, dict[str, dict[str, float]]]) -> None:
    """Issue 13's quality targets for the default hybrid search, as RATIO lines with verdicts."""
    def ndcg(method: str, group: str) -> float:
        return results[method][group]["nDCG@10"]

    hybrid, vector, keyword = ("hybrid: search_hybrid (default)", "vector: search_by_text",
                               "keyword: search_by_keyword")
    checks = [
        ("hybrid / better side, nDCG@10 overall", "overall", max(ndcg(vector, "overall"),
                                                                 ndcg(keyword, "overall")), 1.05),
        ("hybrid / vector, nDCG@10 on paraphrases", "paraphrase", ndcg(vector, "paraphrase"), 0.95),
        ("hybrid / keyword, nDCG@10 on literal queries", "literal", ndcg(keyword, "literal"), 0.95),
    ]
    for label, group, side, target in checks:
        value = ndcg(hybrid, group) / side
        goal = "met" if value >= target else "MISSED"
        print(f"RATIO {label}: {value:.3f} (target >= {target}: {goal})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-vector", action="store_true", help="keyword only (no model, no cache)")
    parser.add_argument("--misses", action="store_true", help="list the queries each method misses")
    args = parser.parse_args(argv)

    corpus = build_corpus()
    texts = dict(corpus)
    queries = load_queries()
    check_queries(queries, set(texts))
    counts = {kind: sum(q["kind"] == kind for q in queries) for kind in KINDS}
    digest = hashlib.sha256("\x00".join(f"{i}\x01{t}" for i, t in corpus).encode()).hexdigest()[:16]
    print(f"corpus: {len(corpus):,} docstrings of the Python {platform.python_version()} stdlib "
          f"(sha256 {digest}); queries: {len(queries)} {counts}")
    for kind, stats in overlap_report(queries, texts).items():
        print(f"word overlap with the answer, {kind}: mean {stats['mean']:.2f}, median "
              f"{stats['median']:.2f}, none {stats['none']:.0%}, half or more {stats['half_or_more']:.0%}")

    runs = {"keyword (FTS5 bm25, bare)": run(KeywordSearch(corpus), queries)}
    if not args.no_vector:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            store = StoreSearch(corpus, [q["query"] for q in queries], folder)
            runs["keyword: search_by_keyword"] = run(store.keyword, queries)
            runs["vector: search_by_text"] = run(store.vector, queries)
            for name, settings in HYBRIDS.items():
                runs[name] = run(store.hybrid(**settings), queries, K)
            store.store.close()
            store.store.conn.close()
    results = {method: score(rankings, queries) for method, (rankings, _) in runs.items()}
    latency = {method: ms for method, (_, ms) in runs.items()}
    print(f"\nscores at 10 (binary relevance); ms/query is the median of one search on "
          f"{len(corpus):,} documents here, not at 100k")
    print(table(results, latency))
    if "hybrid: search_hybrid (default)" in results:
        print_targets(results)
    if args.misses:
        for method, (rankings, _) in runs.items():
            missed = [q for q in queries if not set(q["answers"]) & set(rankings[q["query"]][:K])]
            print(f"\n{method} misses {len(missed)}:")
            for q in missed:
                print(f"  [{q['kind']}] {q['query']!r}: wanted {q['answers'][0]}, "
                      f"got {rankings[q['query']][:3]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
