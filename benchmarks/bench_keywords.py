"""Issue 13, step 1: what the keyword index costs, side by side with the code before it.

The store of ``bench_scale_backfill.py`` (a plain mixin store over ``notes``, ``hash:384``,
Annoy) at ``KEYWORD_N`` records (100k by default). Each measurement runs in a fresh child
process; with ``BEFORE_SRC`` set to another checkout's ``src`` (the main branch, say), the
same steps run with that code too, alternately, so the two are compared in one run:

- full backfill, no-op backfill, files after close (and the keyword tables' share, by dbstat);
- a store made by the code before, opened by this code: the migration, then the backfill that
  fills the keyword index without the model;
- ``search_by_keyword`` p50 for a rare word, a common word, three words, and a word in every
  record.

    PYTHONPATH=src BEFORE_SRC=/work/main/src python benchmarks/bench_keywords.py
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N = int(os.environ.get("KEYWORD_N", 100_000))
DIM = 384
ROUNDS = int(os.environ.get("KEYWORD_ROUNDS", 2))
HERE = Path(__file__).resolve().parent
SRC = str(HERE.parent / "src")
QUERIES = {
    "rare word (1 record)": "7919",
    "common word (1/9 of records)": "gamma",
    "three words": "alpha beta gamma",
    "a word in every record": "note",
}


def _store_class():
    """bench-scale's store, imported in the child so it runs on the src the child was given."""
    from bench_scale_backfill import Notes

    return Notes


def fill(path: str, n: int) -> None:
    """The notes of bench_scale_backfill.py."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"]
    conn.executemany(
        "INSERT INTO notes(body) VALUES (?)",
        ((f"note {i}: {words[i % 9]} {words[(i // 9) % 9]} {words[(i // 81) % 9]} {i * 7919}",)
         for i in range(n)),
    )
    conn.commit()
    conn.close()


def table_bytes(path: str) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
    finally:
        conn.close()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


# -- the child's steps ------------------------------------------------------------------------------
def child_build(folder: str) -> dict:
    path = str(Path(folder) / "notes.db")
    fill(path, N)
    db = _store_class()(path, model_name=f"hash:{DIM}")
    started = time.perf_counter()
    result = db.backfill_embeddings(batch_size=1_000)
    out = {"backfill": time.perf_counter() - started}
    assert result.embedded == N, result
    started = time.perf_counter()
    db.backfill_embeddings(batch_size=1_000)
    out["noop"] = time.perf_counter() - started
    db.close()
    db.conn.close()
    out["files"] = folder_bytes(Path(folder))
    out["tables"] = table_bytes(path)
    return out


def child_migrate(folder: str) -> dict:
    """Open a store the code before made, fill its keyword index, search it."""
    path = str(Path(folder) / "notes.db")
    started = time.perf_counter()
    db = _store_class()(path, model_name=f"hash:{DIM}")
    out = {"open": time.perf_counter() - started}
    calls = []
    encode = db.encoder.encode
    db.encoder.encode = lambda texts, *a, **k: calls.append(len(texts)) or encode(texts, *a, **k)
    started = time.perf_counter()
    result = db.backfill_embeddings(batch_size=1_000)
    out["fill"] = time.perf_counter() - started
    out["filled"] = result.keyword_filled
    out["model_calls"] = len(calls)
    assert result.embedded == result.reembedded == 0, result
    started = time.perf_counter()
    db.backfill_embeddings(batch_size=1_000)
    out["noop"] = time.perf_counter() - started
    out["search_ms"] = {}
    for label, query in QUERIES.items():
        times = []
        for _ in range(21):
            started = time.perf_counter()
            hits = db.search_by_keyword(query, top_k=10)
            times.append((time.perf_counter() - started) * 1000)
        assert hits, query
        out["search_ms"][label] = statistics.median(times)
    started = time.perf_counter()
    report = db.verify_index()
    out["verify"] = time.perf_counter() - started
    assert report.ok, report.problems
    started = time.perf_counter()
    db.rebuild_index()
    out["rebuild"] = time.perf_counter() - started
    db.close()
    db.conn.close()
    out["files"] = folder_bytes(Path(folder))
    out["tables"] = table_bytes(path)
    return out


# -- the parent ---------------------------------------------------------------------------------------
def run_child(src: str, step: str, folder: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=src)
    done = subprocess.run(
        [sys.executable, __file__, step, str(folder)], env=env, capture_output=True, text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{step} with {src} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def keyword_tables(tables: dict[str, int]) -> dict[str, int]:
    return {name: size for name, size in tables.items()
            if name.startswith(("embeddings_text", "embeddings_fts"))}


def keyword_share(tables: dict[str, int]) -> int:
    return sum(keyword_tables(tables).values())


def main() -> None:
    before = os.environ.get("BEFORE_SRC")
    raw = N * DIM * 4
    codes = {"this": SRC, **({"before": before} if before else {})}
    runs: dict[str, list[dict]] = {name: [] for name in codes}
    migrations = []
    for _ in range(ROUNDS):
        for name, src in codes.items():
            with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_TMP")) as tmp:
                runs[name].append(run_child(src, "build", Path(tmp)))
                if name == "before":  # the same store, now opened by this code
                    migrations.append(run_child(SRC, "migrate", Path(tmp)))
    print(f"-- {N:,} records, raw vectors {raw / 2**20:.0f} MiB; {ROUNDS} round(s), min shown")
    for name, results in runs.items():
        best = {key: min(r[key] for r in results) for key in ("backfill", "noop", "files")}
        keywords = keyword_share(results[-1]["tables"])
        print(f"{name:>7}: backfill {best['backfill']:.2f} s, no-op backfill {best['noop']:.2f} s, "
              f"files after close {best['files'] / raw:.3f}x raw "
              f"({best['files'] / 2**20:.0f} MiB; keyword tables {keywords / 2**20:.1f} MiB)")
    print("keyword tables:", {name: f"{size / 2**20:.1f} MiB"
                              for name, size in keyword_tables(runs["this"][-1]["tables"]).items()})
    for m in migrations:
        print(f"migrated: open {m['open']:.2f} s, fill backfill {m['fill']:.2f} s "
              f"({m['filled']:,} rows, {m['model_calls']} model calls), no-op after {m['noop']:.2f} s, "
              f"verify {m['verify']:.2f} s, rebuild_index {m['rebuild']:.2f} s, "
              f"files {m['files'] / raw:.3f}x raw")
        print("  search_by_keyword p50:",
              ", ".join(f"{label} {ms:.2f} ms" for label, ms in m["search_ms"].items()))


if __name__ == "__main__":
    if len(sys.argv) == 3:
        step, folder = sys.argv[1:]
        print(json.dumps({"build": child_build, "migrate": child_migrate}[step](folder)))
    else:
        main()
