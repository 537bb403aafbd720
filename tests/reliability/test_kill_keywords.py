"""A kill never leaves the keyword index and the vectors disagreeing (issue 13, step 1).

A backfill writes a batch's vectors and their keyword rows in one transaction; a migrated
store's backfill fills keyword rows (without the model) a chunk per transaction. SIGKILLed at
random moments of either, the file read straight from SQLite has a keyword row for exactly the
live vectors (every one of them, or after a fill, some), each of the text its vector was made
from, and an FTS5 index that matches; the store then opens, verifies and finishes.
"""

from __future__ import annotations

import os
import random
import signal
import time

from reliability_helpers import (
    Notes,
    as_before_keywords,
    fill_notes,
    keyword_disagreement,
    live_vectors,
    spawn,
    wait_for_line,
)

from embeddable_db import HashingEncoder

N_RECORDS = 160
TRIALS = 8
SEED = int(os.environ.get("EDB_KILL_SEED", "20261202"))


def _kill(proc, rng: random.Random, longest: float) -> None:
    try:
        wait_for_line(proc, "ready")
        time.sleep(rng.uniform(0.0, longest))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


def _finish(path, texts: dict[int, str], committed: int) -> None:
    """The store opens and agrees; a backfill completes both indexes; each note's own word
    finds it by keyword."""
    encoder = HashingEncoder(32)
    db = Notes(path, encoder=encoder)
    report = db.verify_index()
    missing_only = all("no keyword row" in problem for problem in report.problems)
    assert report.ok or missing_only, report.problems
    result = db.backfill_embeddings(batch_size=50)
    assert encoder.texts_encoded == N_RECORDS - committed, "a committed vector was encoded again"
    assert result.failed == 0
    assert keyword_disagreement(path) == []
    assert db.verify_index().ok
    for i in random.Random(committed).sample(sorted(texts), 10):
        assert [hit[0] for hit in db.search_by_keyword(f"note{i}", top_k=1)] == [str(i)]
    db.shut()


def test_a_kill_mid_backfill_leaves_vectors_and_keywords_in_agreement(tmp_path):
    rng = random.Random(SEED)
    partial = 0
    for trial in range(TRIALS):
        path = tmp_path / f"t{trial}.db"
        texts = fill_notes(path, N_RECORDS, seed=trial)
        marks = tmp_path / f"marks{trial}"
        _kill(spawn("backfill", str(path), "annoy", "8", str(marks)), rng, 0.4)
        committed = len(live_vectors(path))
        partial += 0 < committed < N_RECORDS
        assert keyword_disagreement(path) == [], f"trial {trial}, {committed} committed"
        _finish(path, texts, committed)
    assert partial >= TRIALS // 2, "the kills should land mid-backfill"


def test_a_kill_mid_keyword_fill_leaves_them_in_agreement(tmp_path):
    rng = random.Random(SEED + 1)
    partial = 0
    for trial in range(TRIALS):
        path = tmp_path / f"f{trial}.db"
        texts = fill_notes(path, N_RECORDS, seed=trial)
        db = Notes(path)
        db.backfill_embeddings()
        db.shut()
        as_before_keywords(path)  # a store the code before made: the next backfill fills
        marks = tmp_path / f"marks{trial}"
        _kill(spawn("fill", str(path), str(marks)), rng, 0.25)
        problems = keyword_disagreement(path, complete=False)
        assert problems in ([], ["no keyword tables"]), problems  # the latter: killed before
        filled = marks.read_text().count("f") if marks.exists() else 0  # migrating
        partial += 0 < filled < N_RECORDS // 10
        _finish(path, texts, N_RECORDS)
    assert partial >= TRIALS // 2, "the kills should land mid-fill"
