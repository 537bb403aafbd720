"""Issue 13: hybrid and filtered search latency at 100k records, side by side in one run.

A plain mixin store (default backend, Annoy) of 100,000 records: the 16,000 real stdlib texts
of ``make bench`` and noisy copies of their vectors (each copy's text is its original's, with
its number appended). Queries: the 500 held-out real texts, whole (a sentence, ~12 words) and
cut to their first four words; their own vectors stand in for the model (which is timed by
``bench_encoder.py``, not here), so every search below is the store's work alone.

- p50 of ``search_by_vector``, ``search_by_keyword`` and ``search_hybrid`` (its encoding is a
  table lookup here), and hybrid / vector (target <= 2);
- filtered search: ``ids=`` keeping 0.1% .. 50% of the records, p50 by the exact path and by
  the widened ANN path side by side (the crossover sets ``filtered.EXACT_IDS_UP_TO``), and
  whether every search returned top_k (target: always, and p50 <= 5 ms at 1%).

    PYTHONPATH=src python benchmarks/bench_hybrid.py
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
from common import (
    N_BASE,
    N_VECTORS,
    TOP_K,
    figure,
    latencies_ms,
    log,
    noisy_copies,
    p50_p95,
    ratio,
    real_vectors,
    timed,
)

from embeddable_db import EmbeddableDBMixin
from embeddable_db.engine.sqlite import filtered

N = int(os.environ.get("HYBRID_N", N_VECTORS))
SHARES = (0.001, 0.01, 0.05, 0.2, 0.5)
FILTER_QUERIES = 100


class LookupEncoder:
    """Vectors looked up by text: a record's text ends with ``#<row>``; a query is its own."""

    model_name = "precomputed:all-MiniLM-L6-v2"

    def __init__(self, rows: np.ndarray, queries: dict[str, np.ndarray]) -> None:
        self.rows, self.queries = rows, queries

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        return np.stack([
            self.queries[t] if t in self.queries else self.rows[int(t.rsplit("#", 1)[1])]
            for t in texts
        ])


class Texts(EmbeddableDBMixin):
    def __init__(self, path: str, **options) -> None:
        self.conn = sqlite3.connect(path)
        self.conn.execute("CREATE TABLE IF NOT EXISTS texts(id INTEGER PRIMARY KEY, body TEXT)")
        self.conn.commit()
        super().__init__(**options)

    def embedding_text(self, record: str) -> str:
        return record

    def iter_records(self):
        for rid, body in self.conn.execute("SELECT id, body FROM texts ORDER BY id"):
            yield rid, body, "text"


def build(folder: Path, encoder: LookupEncoder, texts: list[str]) -> Texts:
    store = Texts(str(folder / "texts.db"), encoder=encoder)
    store.conn.executemany(
        "INSERT INTO texts(id, body) VALUES (?, ?)",
        ((i, f"{texts[i % N_BASE]} #{i}") for i in range(N)),
    )
    store.conn.commit()
    seconds, _ = timed(lambda: store.backfill_embeddings(batch_size=2_000))
    log(f"built {N:,} records in {seconds:.0f} s")
    store.close()
    return Texts(str(folder / "texts.db"), encoder=encoder)


def main() -> None:
    texts, vectors = real_vectors()
    base, held_out = vectors[:N_BASE], vectors[N_BASE:]
    query_texts = texts[N_BASE:]
    short = [" ".join(t.split()[:4]) for t in query_texts]
    lookup = {t: v for t, v in zip(query_texts, held_out, strict=True)}
    lookup.update({t: v for t, v in zip(short, held_out, strict=True)})
    folder = Path(tempfile.mkdtemp(prefix="bench-hybrid-"))
    try:
        store = build(folder, LookupEncoder(noisy_copies(base, N), lookup), texts)
        run(store, query_texts, short, held_out)
        store.close()
        store.conn.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def p50(fn, items) -> float:
    ms, _ = latencies_ms(fn, items)
    return p50_p95(ms)[0]


def run(store: Texts, sentences: list[str], short: list[str], held_out: np.ndarray) -> None:
    vector_p50 = p50(lambda v: store.search_by_vector(v, TOP_K), held_out)
    figure(f"search_by_vector p50, {N:,} records", vector_p50, "ms")
    for name, queries in (("sentence queries", sentences), ("four-word queries", short)):
        keyword = p50(lambda q: store.search_by_keyword(q, TOP_K), queries)
        hybrid = p50(lambda q: store.search_hybrid(q, TOP_K), queries)
        figure(f"search_by_keyword p50, {name}", keyword, "ms")
        figure(f"search_hybrid p50, {name}", hybrid, "ms")
        ratio(f"hybrid / vector p50, {name}", hybrid / vector_p50, "<= 2", hybrid / vector_p50 <= 2)
    filtered_search(store, held_out[:FILTER_QUERIES], sentences[:FILTER_QUERIES])


def within_p50(store: Texts, queries: np.ndarray, within: list[list[int]], size: int):
    """(p50 ms, how many searches returned fewer than top_k) of searches within the sets."""
    short = 0

    def search(i: int) -> None:
        nonlocal short
        hits = store.search_by_vector(queries[i], TOP_K, ids=within[i])
        short += len(hits) < min(TOP_K, size)

    return p50(search, range(len(queries))), short


def filtered_search(store: Texts, queries: np.ndarray, texts: list[str]) -> None:
    rng = np.random.default_rng(0)
    threshold = filtered.EXACT_IDS_UP_TO
    for share in SHARES:
        size = max(1, int(N * share))
        within = [rng.choice(N, size, replace=False).tolist() for _ in queries]
        paths = {}
        for path, up_to in (("exact", N + 1), ("ANN", 0)):
            filtered.EXACT_IDS_UP_TO = up_to
            paths[path], short = within_p50(store, queries, within, size)
            figure(f"ids={share:.1%} of records ({size:,}): {path} path p50", paths[path], "ms",
                   f"{short} of {len(queries)} short of top_k")
        filtered.EXACT_IDS_UP_TO = threshold
        chosen = "exact" if size <= threshold else "ANN"
        figure(f"ids={share:.1%}: the default takes the {chosen} path", paths[chosen], "ms")
        if share == 0.01:
            ratio("1% filter p50 (ms, default path)", paths[chosen], "<= 5", paths[chosen] <= 5)
            sets = within
            keyword = p50(lambda i, sets=sets: store.search_by_keyword(texts[i], TOP_K, ids=sets[i]),
                          range(len(queries)))
            figure("search_by_keyword p50 within 1%", keyword, "ms")


if __name__ == "__main__":
    main()
