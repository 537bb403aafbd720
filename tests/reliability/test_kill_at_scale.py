"""A backfill of tens of thousands of records, SIGKILLed in the middle (issue 12, "Also").

``test_kill_anywhere.py`` kills tiny stores at random instants; this kills one at the
benchmarks' shape (``hash:384``, default Annoy, batches of 500) once SQLite, read from this
process, shows that a good part was committed. Two cases: the first backfill of a store (its
index files hold nothing yet, the reopen builds from SQLite) and a backfill after a flush (the
files hold the first records; the reopen must replay everything committed after them from
SQLite). Either way nothing committed may be lost, changed or mixed up, and the next backfill
embeds exactly the rest. ``bench_scale_crash.py`` measures the same at 1M records.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import sqlite3
import time

import numpy as np
import pytest
from reliability_helpers import (
    NotesDB,
    assert_searchable,
    fill_notes,
    live_vectors,
    spawn,
    wait_for_line,
)

from embeddable_db import HashingEncoder
from embeddable_db.engine.sqlite.store import blob_to_vector
from embeddable_db.validation import check_rows

DIM = 384
MODEL = f"hash:{DIM}"
BATCH = 500
DELAY = 0.04  # seconds per model call in the child: at most 12,500 records a second
SAMPLE = 100


def _committed(db_path) -> int:
    conn = sqlite3.connect(str(db_path), timeout=60)
    try:
        return conn.execute("SELECT COUNT(*) FROM embeddings WHERE deleted = 0").fetchone()[0]
    finally:
        conn.close()


def _backfill_and_kill(db_path, at_least: int) -> None:
    """A child process backfills; it is SIGKILLed as soon as SQLite holds ``at_least``
    vectors (a batch or two more may land before the signal does)."""
    proc = spawn("bulk", str(db_path), str(BATCH), str(DELAY))
    try:
        wait_for_line(proc, "ready")
        deadline = time.monotonic() + 60
        while _committed(db_path) < at_least:
            assert proc.poll() is None, f"the backfill ended before the kill: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "the backfill made no progress"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _encoded(texts: dict[int, str], ids) -> np.ndarray:
    """What the encoder gives for these records' texts, scaled to unit length as the store
    keeps vectors: the vectors they must have, bit for bit."""
    return check_rows(HashingEncoder(DIM).encode([texts[int(i)] for i in ids]), DIM)


def _assert_vectors_are_their_records(vectors: dict[str, bytes], texts: dict[int, str]) -> None:
    ids = list(vectors)
    stored = np.stack([blob_to_vector(vectors[i]) for i in ids])
    mismatched = np.flatnonzero(~(stored == _encoded(texts, ids)).all(axis=1))
    assert len(mismatched) == 0, f"records with another record's vector: {ids[mismatched[0]]}"


def _manifest(folder) -> dict:
    return json.loads((folder / "k_embeddings.json").read_text())


@pytest.mark.parametrize(
    ("flushed", "added"),
    [(0, 24_000), (16_000, 16_000)],
    ids=["first-backfill", "after-a-flush"],
)
def test_sigkill_in_the_middle_of_a_large_backfill(tmp_path, caplog, flushed, added):
    db_path = tmp_path / "k.db"
    texts = fill_notes(db_path, flushed, seed=1) if flushed else {}
    if flushed:  # the first records embedded and their index written, as a finished run leaves
        db = NotesDB(str(db_path), model_name=MODEL)
        assert db.backfill_embeddings(batch_size=1_000).embedded == flushed
        db.close()
        db.conn.close()
        assert _manifest(tmp_path)["count"] == flushed
    texts.update(fill_notes(db_path, added, seed=2, start=flushed + 1))
    n = len(texts)

    _backfill_and_kill(db_path, flushed + added // 4)
    before = live_vectors(db_path)
    committed = len(before)
    assert flushed + added // 4 <= committed < n, "the kill did not land in the middle"
    _assert_vectors_are_their_records(before, texts)
    in_files = _manifest(tmp_path)["count"]
    assert in_files == flushed, "the killed backfill wrote the index files"
    replayed = committed - in_files  # committed after the files were written: only in SQLite

    caplog.clear()
    encoder = HashingEncoder(DIM)
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        db = NotesDB(str(db_path), model_name=MODEL, encoder=encoder)
    assert len(caplog.records) <= 1, [r.getMessage() for r in caplog.records]
    assert live_vectors(db_path) == before, "opening changed a committed vector"
    assert db.embedding_count() == committed
    report = db.verify_index()
    assert report.ok, report.problems
    rng = random.Random(n)
    after_files = sorted((int(i) for i in before if int(i) > in_files), reverse=True)
    sample = set(rng.sample(sorted(before, key=int), SAMPLE))
    sample |= {str(i) for i in after_files[:30]}  # the last batches committed before the kill
    assert replayed > 0 and len(sample) > SAMPLE
    assert_searchable(db, sample)

    result = db.backfill_embeddings(batch_size=1_000)
    assert (result.embedded, result.unchanged) == (n - committed, committed), result
    assert result.reembedded == result.removed == result.failed == 0, result
    assert encoder.texts_encoded == n - committed, "a committed record was encoded again"
    final = live_vectors(db_path)
    assert sorted(final, key=int) == [str(i) for i in sorted(texts)]
    assert all(final[i] == blob for i, blob in before.items()), "a committed vector changed"
    _assert_vectors_are_their_records(final, texts)
    assert db.verify_index().ok
    late = [str(i) for i in rng.sample(sorted(texts), SAMPLE) if str(i) not in before]
    assert_searchable(db, sample | set(late))
    db.close()
    db.conn.close()
