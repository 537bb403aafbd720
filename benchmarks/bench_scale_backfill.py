"""Issue 12 at scale, the write side: backfill, small backfill, no-op backfill, adds, disk.

A plain mixin store over a ``notes`` table (the README's example), the ``hash:384`` encoder so
the model is out of the figures, default Annoy backend. Runs the same steps at ``SMALL`` and
``LARGE`` records (100k and 1M; ``SCALE_LARGE`` in the environment changes the large size)
and prints each figure with its target. Items built into the backend are counted by wrapping
the backend's ``build``: rebuilds during a backfill must stay geometric.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from common import figure, fmt, log, ratio, run_child

from embeddable_db import EmbeddableDBMixin
from embeddable_db.backends.annoy import AnnoyVectorIndex

SMALL = 100_000
LARGE = int(os.environ.get("SCALE_LARGE", 1_000_000))
DIM = 384
EDITS = 1_000
ADDS = 2_000
BACKENDS = ("annoy", "faiss", "hnsw")
BUILT = [0]


def _count_builds() -> None:
    """Count the items every Annoy build takes (``build`` goes through ``build_from``)."""
    build_from = AnnoyVectorIndex.build_from

    def counted(self, labels, chunks):
        BUILT[0] += len(labels)
        return build_from(self, labels, chunks)

    AnnoyVectorIndex.build_from = counted


class Notes(EmbeddableDBMixin):
    """The README's store, as a new user writes it."""

    def __init__(self, path, **options):
        self.conn = sqlite3.connect(path)
        self.conn.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
        self.conn.commit()
        super().__init__(**options)

    def embedding_text(self, record):
        return record["body"]

    def iter_records(self):
        for rid, body in self.conn.execute("SELECT id, body FROM notes"):
            yield rid, {"body": body}, "note"


def fill(path: Path, n: int) -> None:
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


def rss_mib() -> float:
    """This process's peak RSS so far (VmHWM: ru_maxrss would count a large parent's pages)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def files_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def backends_at(n: int) -> tuple[str, ...]:
    """The backends opened cold at ``n``: at the large size HNSW's figures come from
    bench_scale_search's store (real vectors), which builds that index anyway (minutes at 1M)."""
    return BACKENDS if n < LARGE else tuple(b for b in BACKENDS if b != "hnsw")


def run(n: int, folder: Path) -> dict[str, float]:
    path = folder / "notes.db"
    fill(path, n)
    out: dict[str, float] = {}
    db = Notes(str(path), model_name="hash:384")
    BUILT[0] = 0
    started = time.perf_counter()
    result = db.backfill_embeddings(batch_size=1_000)
    out["backfill"] = time.perf_counter() - started
    out["built"] = BUILT[0]
    assert result.embedded == n, result
    out["peak_mib"] = rss_mib()  # the process's peak so far: the large run's backfill
    out["disk_after_backfill"] = files_bytes(folder)
    started = time.perf_counter()
    db.add_embedding(n + 1, {"body": "the first add after a backfill"}, "note")
    out["first_add_ms"] = (time.perf_counter() - started) * 1000
    db.conn.executemany(
        "UPDATE notes SET body = body || ' (edited)' WHERE id = ?",
        ((i,) for i in range(1, n, n // EDITS)),
    )
    db.conn.commit()
    BUILT[0] = 0
    started = time.perf_counter()
    edited = db.backfill_embeddings(batch_size=1_000)
    out["small_backfill"] = time.perf_counter() - started
    out["small_built"] = BUILT[0]
    out["edited"] = edited.reembedded
    started = time.perf_counter()
    noop = db.backfill_embeddings(batch_size=1_000)
    out["noop_backfill"] = time.perf_counter() - started
    assert noop.embedded == noop.reembedded == 0, noop
    started = time.perf_counter()
    for i in range(ADDS):  # single adds, each durable on return, then close (its flush share)
        db.add_embedding(n + 10 + i, {"body": f"a single add, number {i}"}, "note")
    db.close()
    out["add_ms"] = (time.perf_counter() - started) * 1000 / ADDS
    db.conn.close()
    out["disk_after_close"] = files_bytes(folder)
    out["raw"] = n * DIM * 4
    for backend in backends_at(n):
        if backend != "annoy":  # the same vectors, indexed by another backend (no encoding)
            started = time.perf_counter()
            other = Notes(str(path), model_name="hash:384", backend="faiss",
                          **({"index_type": "hnsw"} if backend == "hnsw" else {}))
            other.close()
            other.conn.close()
            out[f"{backend}_build"] = time.perf_counter() - started
        _, report = run_child("notes", backend, path)
        assert not report["torch"]
        out[f"{backend}_cold"] = report["answer_s"]
        out[f"{backend}_open"] = report["open_s"]
        out[f"{backend}_rss"] = report["hwm_mb"]
        out[f"{backend}_baseline"] = run_child("baseline", backend)[1]["hwm_mb"]
    return out


def main() -> None:
    _count_builds()
    baseline = rss_mib()
    results = {}
    for n in (SMALL, LARGE):
        with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_TMP")) as tmp:
            log(f"{n:,} records")
            results[n] = run(n, Path(tmp))
    for n, r in results.items():
        raw = r["raw"]
        print(f"-- {n:,} records (raw vectors {raw / 2**20:,.0f} MiB)")
        figure("full backfill", r["backfill"], "s")
        figure("  items built into the index / records", r["built"] / n, "x", "target <= 2")
        figure(f"backfill after editing {r['edited']:,} records", r["small_backfill"], "s",
               f"index items built {fmt(r['small_built'])}")
        figure("no-op backfill", r["noop_backfill"], "s", "target <= 5 s at 1M")
        figure("first add after the backfill", r["first_add_ms"], "ms", "target <= 10 ms")
        figure(f"single add, amortised over {ADDS:,} adds and close()", r["add_ms"], "ms",
               "target <= 1 ms")
        figure("peak RSS of the process (backfill included)", r["peak_mib"], "MiB",
               f"{(r['peak_mib'] - baseline) * 2**20 / raw:.2f}x raw above the baseline "
               "(target <= 2 at 1M)")
        figure("files after backfill / raw vectors", r["disk_after_backfill"] / raw, "x",
               "target <= 2.5")
        figure("files after close / raw vectors", r["disk_after_close"] / raw, "x", "target <= 2.5")
        for backend in backends_at(n):
            if backend != "annoy":
                figure(f"{backend}: index built from SQLite (no encoding)", r[f"{backend}_build"], "s")
            figure(f"{backend}: fresh process, open + first vector search", r[f"{backend}_cold"],
                   "s", f"target <= 0.5 s; open() {r[f'{backend}_open']:.3f} s")
            above = (r[f"{backend}_rss"] - r[f"{backend}_baseline"]) * 2**20 / raw
            figure(f"{backend}: open store + 201 searches, RSS above baseline / raw", above, "x",
                   "target <= 1.5")
        if "hnsw" not in backends_at(n):
            print("hnsw: cold open and memory at this size: bench_scale_search.py", flush=True)
    small, large = results[SMALL], results[LARGE]
    scale = LARGE / SMALL
    ratio(f"full backfill {LARGE:,} / {SMALL:,}", large["backfill"] / small["backfill"],
          f"<= {1.1 * scale:g}", large["backfill"] / small["backfill"] <= 1.1 * scale)
    ratio("items built / records, large", large["built"] / LARGE, "<= 2",
          large["built"] <= 2 * LARGE)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
