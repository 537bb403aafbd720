"""Kill anywhere: a backfilling or index-saving process is SIGKILLed at random moments.

After each kill the store must open, agree with itself (``verify_index``), find every record
whose vector was committed before the kill, and a second backfill must finish the rest without
embedding anything twice (DESIGN invariants 1, 5 and 10).
"""

from __future__ import annotations

import logging
import os
import random

import pytest
from reliability_helpers import (
    Notes,
    assert_searchable,
    fill_notes,
    live_vectors,
    sigkill_after,
    spawn,
    temp_files,
)

N_RECORDS = 160
TRIALS = 32
SEED = int(os.environ.get("EDB_KILL_SEED", "20240605"))  # override to explore other moments

# (mode, backend) per trial: backfills and index-save loops, on both backends.
PLAN = [
    (mode, backend)
    for _ in range(TRIALS // 4)
    for mode in ("backfill", "saver")
    for backend in ("annoy", "faiss")
]


def _kill_one(tmp_path, rng: random.Random, mode: str, backend: str) -> str:
    """Run one child, SIGKILL it at a random moment; returns the marks it left."""
    db_path = tmp_path / "kill.db"
    marks = tmp_path / "marks"
    marks.write_bytes(b"")
    if mode == "backfill":
        proc = spawn("backfill", str(db_path), backend, "8", str(marks))
    else:
        proc = spawn("saver", str(db_path), backend, str(marks), str(rng.randrange(10**6)))
    early = rng.random() < 0.15  # sometimes while it starts and opens the store
    sigkill_after(proc, rng.uniform(0.0, 0.4 if early else 0.45), when_ready=not early)
    return marks.read_text()


def test_sigkill_at_random_moments_loses_nothing(tmp_path, caplog):
    rng = random.Random(SEED)
    stats = {"inside_save": 0, "inside_batch": 0, "partial": 0, "repaired": 0}
    for trial, (mode, backend) in enumerate(PLAN):
        folder = tmp_path / f"t{trial}"
        folder.mkdir()
        texts = fill_notes(folder / "kill.db", N_RECORDS, seed=trial)
        marks = _kill_one(folder, rng, mode, backend)
        stats["inside_save"] += marks.endswith("W")
        stats["inside_batch"] += marks.endswith("B")

        committed = set(live_vectors(folder / "kill.db"))
        stats["partial"] += 0 < len(committed) < N_RECORDS
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="embeddable_db"):
            db = Notes(folder / "kill.db", backend=backend)
        assert len(caplog.records) <= 1, [r.getMessage() for r in caplog.records]
        assert temp_files(folder) == [], "a killed save left temporary files behind"
        report = db.verify_index()
        if not report.ok:
            report = db.verify_index(repair=True)
            stats["repaired"] += 1
            assert report.repaired
        assert report.ok, report.problems
        assert db.embedding_count() == len(committed)
        assert_searchable(db, committed)

        result = db.backfill_embeddings(batch_size=50)
        assert result.unchanged == len(committed), "a committed vector was embedded again"
        assert result.embedded == N_RECORDS - len(committed)
        assert result.failed == result.reembedded == 0
        final = live_vectors(folder / "kill.db")
        assert sorted(final) == sorted(str(i) for i in texts)
        assert_searchable(db, texts=texts)
        assert db.verify_index().ok
        db.shut()
    print(f"kill trials: {len(PLAN)}, stats: {stats}")
    # The random moments really covered the interesting places.
    assert stats["inside_save"] >= 3, stats
    assert stats["inside_batch"] >= 3, stats
    assert stats["partial"] >= 8, stats
    assert stats["repaired"] == 0, "opening a killed store should repair it, not verify later"


@pytest.mark.parametrize("backend", ["annoy", "faiss"])
def test_kill_between_index_and_metadata_replace(tmp_path, monkeypatch, caplog, backend):
    """The one window no rename covers: a new index beside the old metadata. Deterministic."""
    texts = fill_notes(tmp_path / "n.db", 40)
    db = Notes(tmp_path / "n.db", backend=backend)
    db.backfill_embeddings()
    texts.update(fill_notes(tmp_path / "n.db", 10, start=41))
    db._engine._can_defer_flush = lambda: False  # write the files, as a larger backfill does
    real_replace = os.replace

    def replace_then_die(src, dst):
        real_replace(src, dst)
        if dst == db.index_path:
            raise SystemExit("killed")  # nothing after this runs, as with SIGKILL

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(SystemExit):
        db.backfill_embeddings()
    monkeypatch.undo()
    db.conn.close()  # the process is gone: no close(), no flush
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        again = Notes(tmp_path / "n.db", backend=backend)
    assert len(caplog.records) == 1 and "rebuilding" in caplog.records[0].getMessage()
    assert again.embedding_count() == 50
    assert_searchable(again, texts=texts)
    assert again.verify_index().ok
    again.shut()
