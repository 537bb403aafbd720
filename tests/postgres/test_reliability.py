"""Reliability on PostgreSQL, the figures of the SQLite suite (``tests/reliability``): several
processes on one schema, clients SIGKILLed at random moments of a backfill, and the server
itself restarted (cleanly, or as a crash) in the middle of one.

The processes are ``pg_child.py`` on the conformance suite's ``PgRecordsStore`` and the
hashing encoder. What was committed is read straight from the server, beside the library.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import psycopg
import pytest

from conformance.engines import PG_RECORDS_DDL
from embeddable_db import HashingEncoder

from .fixtures import new_schema, running_server
from .pg_child import (
    DIM,
    note_text,
    open_store,
    shut,
    sigkill_after,
    spawn,
    wait_for_line,
    writers_beside_readers,
)

CHILD = str(Path(__file__).resolve().parent / "pg_child.py")
WRITERS, PER_WRITER, READERS = 4, 500, 2
N_RECORDS, BATCH = 160, 8
KILL_TRIALS = 12


def fill_records(conninfo: str, n: int, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    texts = {str(i): note_text(i, rng) for i in range(1, n + 1)}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(PG_RECORDS_DDL)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO records(id, body, kind) VALUES (%s, %s, 'note')",
                            list(texts.items()))
    return texts


def committed_vectors(conninfo: str) -> dict[str, np.ndarray]:
    """record_id -> vector of every row the server holds (no library code in the way)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('embeddings') IS NOT NULL").fetchone()[0]
        rows = conn.execute("SELECT record_id, vector::text FROM embeddings").fetchall() \
            if exists else []
    ids = [rid for rid, _ in rows]
    assert len(ids) == len(set(ids)), "a record has more than one vector"
    return {rid: np.array(json.loads(text), dtype=np.float32) for rid, text in rows}


def assert_made_from_their_text(vectors: dict[str, np.ndarray], texts: dict[str, str]) -> None:
    """Every stored vector is the encoder's vector of its own record's text: none mixed up,
    none half-written."""
    keys = sorted(vectors)
    expected = HashingEncoder(DIM).encode([texts[k] for k in keys])
    expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)  # stored unit length
    got = np.stack([vectors[k] for k in keys]) if keys else expected
    np.testing.assert_allclose(got, expected, atol=1e-6)


def assert_found_by_their_vectors(db, vectors: dict[str, np.ndarray], sample: int = 25) -> None:
    groups: dict[bytes, int] = defaultdict(int)
    for vector in vectors.values():
        groups[vector.tobytes()] += 1
    for rid in random.Random(7).sample(sorted(vectors), min(sample, len(vectors))):
        hits = db.search_by_vector(vectors[rid], top_k=groups[vectors[rid].tobytes()])
        assert rid in [h[0] for h in hits], f"record {rid} is not found by its vector"
        assert all(h[1] < 1e-5 for h in hits)


def test_four_writers_two_readers_on_one_schema(pg_schema, tmp_path):
    conninfo = pg_schema.conninfo
    shut(open_store(conninfo))  # the table and its indexes exist before the crowd arrives
    stop = tmp_path / "stop"
    readers = [spawn("reader", conninfo, str(stop), script=CHILD) for _ in range(READERS)]
    writers_beside_readers(readers, lambda: [
        spawn("writer", conninfo, str(1 + w * PER_WRITER), str(PER_WRITER), script=CHILD)
        for w in range(WRITERS)
    ], stop, WRITERS * PER_WRITER)

    vectors = committed_vectors(conninfo)
    assert sorted(vectors, key=int) == [str(i) for i in range(1, WRITERS * PER_WRITER + 1)]
    with psycopg.connect(conninfo) as conn:
        texts = dict(conn.execute("SELECT id, body FROM records").fetchall())
    assert_made_from_their_text(vectors, texts)
    db = open_store(conninfo)
    try:
        report = db.verify_index()
        assert report.ok, report.problems
        assert db.embedding_count() == WRITERS * PER_WRITER
        assert_found_by_their_vectors(db, vectors)
        assert db.backfill_embeddings().unchanged == WRITERS * PER_WRITER  # nothing to redo
    finally:
        shut(db)


def run_backfill_child(conninfo: str, marks: Path, delay: float):
    marks.write_bytes(b"")
    return spawn("backfill", conninfo, str(BATCH), str(delay), str(marks), script=CHILD)


def assert_next_backfill_finishes(conninfo: str, texts: dict[str, str], committed: set[str]):
    """Reopened: verify agrees, every committed vector is found, and a backfill embeds exactly
    the records that were not committed (nothing that survived is encoded again)."""
    db = open_store(conninfo)
    try:
        report = db.verify_index()
        assert report.ok, report.problems
        assert db.embedding_count() == len(committed)
        result = db.backfill_embeddings(batch_size=50)
        assert result.unchanged == len(committed), "a committed vector was embedded again"
        assert result.embedded == len(texts) - len(committed)
        assert result.failed == result.reembedded == result.removed == 0
        final = committed_vectors(conninfo)
        assert sorted(final) == sorted(texts)
        assert_made_from_their_text(final, texts)
        assert_found_by_their_vectors(db, final)
        assert db.verify_index().ok
    finally:
        shut(db)


def test_sigkill_at_random_moments_of_a_backfill_loses_nothing(postgres_server, pg_database,
                                                               tmp_path):
    rng = random.Random(20261204)
    stats = {"inside_batch": 0, "partial": 0, "none": 0, "all": 0}
    for trial in range(KILL_TRIALS):
        conninfo = new_schema(postgres_server, pg_database).conninfo
        texts = fill_records(conninfo, N_RECORDS, seed=trial)
        marks = tmp_path / f"marks{trial}"
        proc = run_backfill_child(conninfo, marks, delay=0.02)
        early = trial % 6 == 5  # sometimes while it starts and opens
        sigkill_after(proc, rng.uniform(0.0, 0.3 if early else 0.6), when_ready=not early)
        seen = marks.read_text()
        stats["inside_batch"] += seen.endswith("B")

        vectors = committed_vectors(conninfo)
        committed = set(vectors)
        # A batch is one transaction: committed rows are whole batches, those the child
        # finished (b) and perhaps the one it was killed in just after its commit.
        assert BATCH * seen.count("b") <= len(committed) <= BATCH * seen.count("B")
        assert len(committed) % BATCH == 0, "half a batch was written"
        assert_made_from_their_text(vectors, texts)
        stats["partial"] += 0 < len(committed) < N_RECORDS
        stats["none"] += not committed
        stats["all"] += len(committed) == N_RECORDS
        assert_next_backfill_finishes(conninfo, texts, committed)
    print(f"PostgreSQL kill trials: {KILL_TRIALS}, stats: {stats}")
    assert stats["inside_batch"] >= 3, stats
    assert stats["partial"] >= 6, stats


@pytest.fixture(scope="module")
def own_server():
    """A server of this module's own: it is restarted under the tests' feet."""
    with running_server() as server:
        yield server


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash-restart"])
def test_a_server_restart_mid_backfill_is_a_clear_error_and_the_next_run_resumes(
    own_server, tmp_path, crash
):
    database = own_server.create_database()
    conninfo = new_schema(own_server, database).conninfo
    texts = fill_records(conninfo, N_RECORDS)
    marks = tmp_path / "marks"
    proc = run_backfill_child(conninfo, marks, delay=0.05)
    try:
        wait_for_line(proc, "ready")
        deadline = time.monotonic() + 60
        while marks.read_text().count("b") < 3:  # a few batches are committed
            assert time.monotonic() < deadline and proc.poll() is None, "the backfill stalled"
            time.sleep(0.01)
        own_server.restart(crash=crash)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, f"exit {proc.returncode}; stderr:\n{err}"
    said = json.loads(out.splitlines()[-1])
    print(said["error"])
    assert "the connection to the database was lost" in said["error"]
    assert "run backfill_embeddings() again" in said["error"]
    assert "Traceback" not in err

    vectors = committed_vectors(conninfo)
    # What the error reported as committed is what the server kept: whole batches only.
    assert len(vectors) == said["committed"] == said["embedded"]
    assert BATCH * 3 <= len(vectors) < N_RECORDS and len(vectors) % BATCH == 0
    assert_made_from_their_text(vectors, texts)
    assert_next_backfill_finishes(conninfo, texts, set(vectors))
