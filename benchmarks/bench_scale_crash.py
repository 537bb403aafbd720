"""Issue 12 at scale, a crash: a backfill of 1M records SIGKILLed at about the middle.

bench_scale_backfill's ``notes`` store (``hash:384``, default Annoy) is filled with ``LARGE``
records (``SCALE_LARGE`` in the environment, 1M by default) and backfilled in a child process,
killed with SIGKILL once SQLite, read from here, holds about half the vectors. Then, each in a
fresh process: the reopen (open + first vector search, which replays what the index files
lack), the same open once the files are current (the cold open the crash is compared with),
``rebuild_index()`` alone (the replay's cost, measured apart), and a resumed backfill. A sample
of the committed vectors is read straight from SQLite at the kill, after the reopen and after
the resumed backfill: none may be lost or changed, and each must be its record's encoding.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_scale_backfill import DIM, fill
from common import HERE, figure, log, ratio, run_child

from embeddable_db import HashingEncoder
from embeddable_db.validation import check_rows

LARGE = int(os.environ.get("SCALE_LARGE", 1_000_000))
COLD_TARGET = 0.5  # seconds, open + first vector search (issue 12)
SAMPLE = 1_000  # committed vectors compared at each step, plus the last LAST before the kill
LAST = 100


def _query(path: Path, sql: str, params: tuple = ()) -> list:
    conn = sqlite3.connect(path, timeout=60)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _progress(path: Path) -> int:
    """The highest label committed: a first backfill numbers its vectors 1, 2, ... and the
    primary key answers this at once (a COUNT reads the whole table)."""
    rows = _query(path, "SELECT MAX(label) FROM embeddings")
    return rows[0][0] or 0


def _kill_midway(path: Path, n: int) -> float:
    """Backfill in a child process and SIGKILL it once half the vectors are committed."""
    child = subprocess.Popen(
        [sys.executable, str(HERE / "child.py"), "notes_backfill", "annoy", str(path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        started = time.perf_counter()
        while _progress(path) < n // 2:
            assert child.poll() is None, "the backfill ended before the kill"
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
        return time.perf_counter() - started
    finally:
        child.wait()
        child.stdout.close()


def _vectors(path: Path, labels: list[int]) -> dict[str, bytes]:
    marks = ",".join("?" * len(labels))
    return dict(_query(path, f"SELECT record_id, vector FROM embeddings WHERE deleted = 0 "
                             f"AND label IN ({marks})", tuple(labels)))


def _not_their_encoding(path: Path, vectors: dict[str, bytes]) -> int:
    """How many of these vectors differ from what the encoder gives for their record."""
    ids = [int(i) for i in vectors]
    marks = ",".join("?" * len(ids))
    bodies = dict(_query(path, f"SELECT id, body FROM notes WHERE id IN ({marks})", tuple(ids)))
    expected = check_rows(HashingEncoder(DIM).encode([bodies[i] for i in ids]), DIM)
    return sum(row.tobytes() != vectors[str(i)] for i, row in zip(ids, expected, strict=True))


def _changed(before: dict[str, bytes], path: Path, labels: list[int]) -> int:
    after = _vectors(path, labels)
    return sum(after.get(rid) != blob for rid, blob in before.items())


def run(n: int, folder: Path) -> dict:
    path = folder / "notes.db"
    fill(path, n)
    out: dict = {}
    log(f"backfilling {n:,} records in a child process, killed at about the middle")
    out["kill_after"] = _kill_midway(path, n)
    out["committed"], last_label = _query(
        path, "SELECT COUNT(*), MAX(label) FROM embeddings WHERE deleted = 0")[0]
    manifest = json.loads((folder / "notes_embeddings.json").read_text())
    out["in_files"], synced = manifest["count"], manifest["synced_seq"]
    out["replayed"] = _query(path, "SELECT COUNT(*) FROM embeddings WHERE seq > ?", (synced,))[0][0]
    labels = random.Random(0).sample(range(1, last_label + 1), min(SAMPLE, last_label))
    labels += range(max(1, last_label - LAST + 1), last_label + 1)
    sample = _vectors(path, labels)
    out["sample"] = len(sample)
    out["mixed_at_kill"] = _not_their_encoding(path, sample)

    log("reopening in a fresh process")
    _, report = run_child("notes", "annoy", path)
    out["reopen"], out["reopen_open"] = report["answer_s"], report["open_s"]
    out["after_reopen"] = _query(path, "SELECT COUNT(*) FROM embeddings WHERE deleted = 0")[0][0]
    out["changed_by_reopen"] = _changed(sample, path, labels)
    _, report = run_child("notes", "annoy", path)  # the files are current now: a plain cold open
    out["clean"], out["clean_open"] = report["answer_s"], report["open_s"]
    out["rebuild"] = run_child("notes_rebuild", "annoy", path)[1]["rebuild_s"]

    log("resuming the backfill in a fresh process")
    _, report = run_child("notes_backfill", "annoy", path)
    out.update(resume=report["backfill_s"], resume_open=report["open_s"],
               embedded=report["embedded"], unchanged=report["unchanged"],
               redone=report["reembedded"] + report["removed"] + report["failed"])
    out["final"] = _query(path, "SELECT COUNT(*) FROM embeddings WHERE deleted = 0")[0][0]
    out["changed_by_resume"] = _changed(sample, path, labels)
    new = random.Random(1).sample(range(last_label + 1, n + 1), min(SAMPLE, n - last_label))
    out["mixed_after_resume"] = _not_their_encoding(path, _vectors(path, new))
    return out


def main() -> None:
    n = LARGE
    with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_TMP")) as tmp:
        r = run(n, Path(tmp))
    committed = r["committed"]
    replay_budget = COLD_TARGET + r["rebuild"]
    lost = max(0, committed - r["after_reopen"]) + r["changed_by_reopen"] + r["changed_by_resume"]
    print(f"-- {n:,} records, backfill SIGKILLed at about the middle")
    figure("backfill until the kill", r["kill_after"], "s")
    figure("vectors committed to SQLite at the kill", committed, "", f"{committed / n:.0%} of records")
    figure("  of them in the index files (manifest count)", r["in_files"], "",
           "a backfill writes the files only at its end")
    figure("  changed after the manifest's synced_seq: replayed from SQLite", r["replayed"], "")
    figure("fresh process after the kill: open + first vector search", r["reopen"], "s",
           f"target <= {COLD_TARGET} s + replay = {replay_budget:.2f} s; open() "
           f"{r['reopen_open']:.3f} s")
    figure("the same, next fresh process (files current): a cold open", r["clean"], "s",
           f"target <= {COLD_TARGET} s; open() {r['clean_open']:.3f} s")
    figure("replay alone: rebuild_index() of the committed vectors", r["rebuild"], "s",
           f"reopen - cold open = {r['reopen'] - r['clean']:.2f} s")
    figure("committed vectors in SQLite after the reopen", r["after_reopen"], "",
           f"target >= {committed:,} (at the kill)")
    figure(f"sampled committed vectors lost or changed (of {r['sample']:,})",
           r["changed_by_reopen"] + r["changed_by_resume"], "",
           "after the reopen and the resumed backfill; target 0")
    figure("sampled vectors that are not their record's encoding", r["mixed_at_kill"]
           + r["mixed_after_resume"], "", "at the kill and after resuming; target 0")
    figure("resumed backfill in a fresh process", r["resume"], "s",
           f"embedded {r['embedded']:,} (records - committed {n - committed:,}), "
           f"unchanged {r['unchanged']:,}; open() {r['resume_open']:.3f} s")
    figure("vectors in SQLite after the resumed backfill", r["final"], "", f"target {n:,}")
    ratio("reopen after the kill / (cold-open target + replay)", r["reopen"] / replay_budget,
          "<= 1", r["reopen"] <= replay_budget)
    extra = (r["reopen"] - r["clean"]) / r["rebuild"]  # what the crash adds, cold open aside
    ratio("(reopen after the kill - cold open) / replay", extra, "<= 1.1", extra <= 1.1)
    ratio("committed vectors lost or changed", lost, "0", lost == 0)
    exact = (r["embedded"], r["unchanged"], r["redone"], r["final"]) == (
        n - committed, committed, 0, n)
    ratio("resumed backfill embedded / (records - committed)",
          r["embedded"] / max(1, n - committed), "1, nothing else touched", exact)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
