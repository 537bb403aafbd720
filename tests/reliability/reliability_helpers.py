"""Shared pieces of the reliability tests; also imported by the subprocesses in ``child.py``.

Everything here runs on the hashing encoder (``model_name="hash:<dim>"``), so no process ever
imports torch, and on real SQLite files in the test's temporary folder.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import faiss

from embeddable_db import HashingEncoder
from embeddable_db.engine.sqlite.store import blob_to_vector

# These tests make thousands of single queries on tiny indexes: FAISS's OpenMP thread pool only
# adds wake-up latency there (milliseconds per query on a busy 2-core machine), which is why the
# Makefile runs the tests with OMP_NUM_THREADS=1. Do the same when they are run directly.
faiss.omp_set_num_threads(1)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/conftest.py holds the snapshot helpers
from conftest import (  # noqa: E402,F401 - re-exported to the tests
    NotesDB,
    as_before_keywords,
    file_bytes,
    sqlite_dump,
)

CHILD = str(HERE / "child.py")
DIM = 32
MODEL = f"hash:{DIM}"
WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu amber basil "
    "cedar dune ember fjord grove heath islet jade knoll lagoon marsh nectar opal prairie"
).split()


class Notes(NotesDB):
    """A notes table embedded in batches: the shape of the six ready databases."""

    def __init__(self, path, **options):
        options.setdefault("model_name", MODEL)
        super().__init__(str(path), **options)

    def shut(self) -> None:
        try:
            self.close()
        finally:
            self.conn.close()


class SlowEncoder(HashingEncoder):
    """The hashing encoder, sleeping per model call so that batches are in flight when killed."""

    def __init__(self, dim: int = DIM, delay: float = 0.01) -> None:
        super().__init__(dim)
        self.delay = delay

    def encode(self, texts, batch_size=None):
        time.sleep(self.delay)
        return super().encode(texts, batch_size)


def note_text(i: int, rng: random.Random) -> str:
    return f"note{i} " + " ".join(rng.sample(WORDS, 3))


def fill_notes(path, n: int, seed: int = 0, start: int = 1) -> dict[int, str]:
    """Insert notes ``start .. start+n-1`` (no vectors yet); returns id -> text."""
    rng = random.Random(seed)
    texts = {i: note_text(i, rng) for i in range(start, start + n)}
    conn = sqlite3.connect(str(path), timeout=60)
    conn.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes(id, body) VALUES (?, ?)", list(texts.items()))
    conn.commit()
    conn.close()
    return texts


def live_vectors(path, table: str = "embeddings") -> dict[str, bytes]:
    """record_id -> vector BLOB of every live row, read straight from SQLite."""
    conn = sqlite3.connect(str(path), timeout=60)
    try:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)
        ).fetchone()
        if not exists:
            return {}
        rows = conn.execute(f"SELECT record_id, vector FROM {table} WHERE deleted = 0").fetchall()
    finally:
        conn.close()
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), "a record has more than one live vector"
    return dict(rows)


def keyword_disagreement(path, *, complete: bool = True, table: str = "embeddings") -> list[str]:
    """How the keyword index disagrees with the vectors, read straight from SQLite: rows of
    vectors that are gone, text that is not what the vector was made from (by its hash), an
    FTS5 index that does not match its text, and (``complete``) live vectors without a row."""
    conn = sqlite3.connect(str(path), timeout=60)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (f"{table}_text",)
                            ).fetchone():
            return ["no keyword tables"]
        live = dict(conn.execute(f"SELECT label, text_hash FROM {table} WHERE deleted = 0"))
        texts = dict(conn.execute(f"SELECT label, text FROM {table}_text"))
        problems = []
        if texts.keys() - live.keys():
            problems.append(f"{len(texts.keys() - live.keys())} keyword rows of removed vectors")
        if complete and live.keys() - texts.keys():
            problems.append(f"{len(live.keys() - texts.keys())} vectors without a keyword row")
        stale = [label for label, text in texts.items() if label in live
                 and hashlib.sha256(text.encode()).hexdigest() != live[label]]
        if stale:
            problems.append(f"{len(stale)} keyword rows of another text")
        try:
            with conn:
                conn.execute(f"INSERT INTO {table}_fts({table}_fts, rank) "
                             "VALUES ('integrity-check', 1)")
        except sqlite3.DatabaseError as exc:
            problems.append(f"FTS5 integrity-check: {exc}")
        return problems
    finally:
        conn.close()


def assert_searchable(db, ids=None, texts: dict | None = None) -> None:
    """Each record's own vector (and own text, when given) finds it, at distance 0.

    The hashing encoder gives some different texts the same vector, so ``top_k`` is the size
    of the record's group of identical vectors: all of them tie at distance 0.
    """
    path = db.conn.execute("PRAGMA database_list").fetchone()[2]
    vectors = live_vectors(path, db.embedding_table)
    groups: dict[bytes, int] = defaultdict(int)
    for blob in vectors.values():
        groups[blob] += 1
    for rid in vectors if ids is None else ids:
        blob = vectors[str(rid)]
        k = groups[blob]
        hits = db.search_by_vector(blob_to_vector(blob), top_k=k)
        assert str(rid) in [h[0] for h in hits], f"record {rid} is not found by its vector"
        assert all(h[1] < 1e-5 for h in hits)
        if texts is not None:
            hits = db.search_by_text(texts[int(rid)], top_k=k)
            assert str(rid) in [h[0] for h in hits], f"record {rid} is not found by its text"


def search_loop(db, stop) -> dict:
    """Search ``db`` until the file ``stop`` exists (a reader beside writers in other
    processes): every answer must be well formed, the count never shrink, verify agree."""
    rng = random.Random(os.getpid())
    report = {"searches": 0, "errors": [], "counts": []}
    last_count = 0
    while True:
        stopping = os.path.exists(stop)  # look before searching: the last round sees everything
        try:
            hits = db.search_by_text(f"note{rng.randint(1, 2000)} {rng.choice(['alpha', 'opal'])}",
                                     top_k=rng.choice([1, 10, 50]))
            distances = [h[1] for h in hits]
            if distances != sorted(distances) or len({h[0] for h in hits}) != len(hits):
                report["errors"].append(f"malformed answer {hits[:3]}")
            count = db.embedding_count()
            if count < last_count:
                report["errors"].append(f"count went down from {last_count} to {count}")
            last_count = count
            report["searches"] += 1
            if report["searches"] % 10 == 0:  # while others write and save
                verify = db.verify_index()
                if not verify.ok:
                    report["errors"].append(f"verify_index: {verify.problems}")
        except Exception as exc:  # noqa: BLE001 - the parent wants to see every error
            report["errors"].append(f"{type(exc).__name__}: {exc}")
        if stopping:
            break
    report["final_count"] = db.embedding_count()
    return report


def snapshot(db) -> tuple:
    """Everything a store keeps on disk: the SQLite contents and the index files."""
    path = db.conn.execute("PRAGMA database_list").fetchone()[2]
    return sqlite_dump(path), file_bytes(db.index_path, db.metadata_path)


def temp_files(folder) -> list[str]:
    return sorted(glob.glob(os.path.join(str(folder), ".*.tmp")))


def spawn(*args: str, script: str = CHILD, **kwargs) -> subprocess.Popen:
    """Start ``child.py`` (or another ``script``) with these arguments (one torch-free
    Python process)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def wait_for_line(proc: subprocess.Popen, expected: str) -> None:
    line = proc.stdout.readline().strip()
    if line != expected:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"child said {line!r}, not {expected!r}; stderr:\n{err}")


def sigkill_after(proc: subprocess.Popen, delay: float, *, when_ready: bool = True) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after it said "ready" (or after it started), then
    reap it and close its pipes."""
    try:
        if when_ready:
            wait_for_line(proc, "ready")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


def writers_beside_readers(readers: list[subprocess.Popen], start_writers, stop: Path,
                           expected: int) -> None:
    """Wait until the readers (``reader`` children) are ready, start the writers, wait for
    them (each says "ready" then "done"), stop the readers, and check each reader's report:
    no error, searches made while the writers wrote, and every write seen at the end."""
    for proc in readers:
        wait_for_line(proc, "ready")
    writers = start_writers()
    try:
        for proc in writers:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            assert out.split() == ["ready", "done"]
    finally:
        stop.touch()
    for proc in readers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        report = json.loads(out.splitlines()[-1])
        assert report["errors"] == []
        assert report["searches"] > 10, "the readers did not search while the writers wrote"
        assert report["final_count"] == expected, "a reader missed others' writes"


def assert_same_answers(got: list, expected: list, tol: float = 1e-5) -> None:
    """Equal search answers: the same distances, and the same ids except where distances tie.

    The hashing encoder gives many equal distances; which of several tied records fills the
    last places is not specified, so only records strictly before the last distance must match.
    """
    assert [g[1] for g in got] == pytest_approx([e[1] for e in expected], tol)
    if expected:
        cutoff = expected[-1][1] - tol
        assert {e[0] for e in expected if e[1] < cutoff} == {g[0] for g in got if g[1] < cutoff}
        for (gid, gd), (eid, ed) in zip(got, expected, strict=True):
            if abs(gd - ed) < tol and gid != eid:  # a tie inside the list: same set, any order
                tied = {e[0] for e in expected if abs(e[1] - ed) < tol}
                assert gid in tied or abs(gd - cutoff) <= 2 * tol


def pytest_approx(values, tol):
    import pytest

    return pytest.approx(values, abs=tol)
