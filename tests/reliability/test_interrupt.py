"""Ctrl-C during a backfill: the batch in flight is committed or rolled back whole, the caller
gets ``BackfillInterrupted`` saying where it stopped, and the next backfill finishes the rest
(DESIGN invariant 10)."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest
from reliability_helpers import (
    Notes,
    assert_searchable,
    fill_notes,
    live_vectors,
    spawn,
    wait_for_line,
)

from embeddable_db import BackfillInterrupted, HashingEncoder
from embeddable_db.engine.sqlite.store import EmbeddingStore


class InterruptingEncoder(HashingEncoder):
    """Ctrl-C arrives during the ``at``-th model call."""

    def __init__(self, at: int):
        super().__init__(32)
        self.at = at

    def encode(self, texts, batch_size=None):
        if self.calls + 1 == self.at:
            self.calls += 1
            raise KeyboardInterrupt
        return super().encode(texts, batch_size)


def _finish(db_path, texts, committed: int) -> None:
    """A later backfill embeds exactly what is missing, and everything is then findable."""
    encoder = HashingEncoder(32)
    db = Notes(db_path, encoder=encoder)
    result = db.backfill_embeddings(batch_size=10)
    assert (result.embedded, result.unchanged, result.failed) == (
        len(texts) - committed, committed, 0)
    assert encoder.texts_encoded == len(texts) - committed, "a committed batch was encoded again"
    assert sorted(live_vectors(db_path), key=int) == [str(i) for i in sorted(texts)]
    assert_searchable(db, texts=texts)
    assert db.verify_index().ok
    db.shut()


def test_ctrl_c_while_encoding_rolls_back_the_batch(tmp_path):
    texts = fill_notes(tmp_path / "i.db", 50)
    db = Notes(tmp_path / "i.db", encoder=InterruptingEncoder(at=3))
    with pytest.raises(BackfillInterrupted) as caught:
        db.backfill_embeddings(batch_size=10)
    assert isinstance(caught.value, KeyboardInterrupt)
    result = caught.value.result
    assert result.interrupted
    # All 50 fit in one read-ahead window: the backfill had read the last record when it stopped.
    assert result.last_record_id == "50"
    assert result.embedded == 20
    assert "50" in str(caught.value)
    assert len(live_vectors(tmp_path / "i.db")) == 20  # two whole batches, none of the third
    assert db.embedding_count() == 20
    assert db.verify_index().ok
    db.shut()
    _finish(tmp_path / "i.db", texts, committed=20)


@pytest.mark.parametrize("moment", ["before-commit", "after-commit"])
def test_ctrl_c_around_the_commit(tmp_path, monkeypatch, moment):
    """Interrupted inside the write transaction: rolled back. A Ctrl-C just after it: kept,
    seen and counted (it is held until the batch is counted)."""
    db_path = tmp_path / "i.db"
    texts = fill_notes(db_path, 50)
    db = Notes(db_path, encoder=HashingEncoder(32))
    real_upsert = EmbeddingStore.upsert
    calls = []

    def upsert(store, rows):
        calls.append(len(rows))
        if len(calls) == 3 and moment == "before-commit":
            real_next_seqs = store._next_seqs

            def next_seqs_then_interrupt(n):
                real_next_seqs(n)
                raise KeyboardInterrupt  # inside the open transaction

            store._next_seqs = next_seqs_then_interrupt
            try:
                return real_upsert(store, rows)
            finally:
                del store._next_seqs
        real_upsert(store, rows)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # committed, not yet counted or indexed

    monkeypatch.setattr(EmbeddingStore, "upsert", upsert)
    with pytest.raises(BackfillInterrupted) as caught:
        db.backfill_embeddings(batch_size=10)
    monkeypatch.undo()
    committed = 20 if moment == "before-commit" else 30
    assert len(live_vectors(tmp_path / "i.db")) == committed
    assert caught.value.result.interrupted
    assert caught.value.result.embedded == committed
    assert not db.conn.in_transaction
    assert db.embedding_count() == committed
    assert_searchable(db)
    assert db.verify_index().ok
    db.shut()
    _finish(db_path, texts, committed=committed)


def test_ctrl_c_during_the_final_index_save(tmp_path, monkeypatch):
    """Every batch is in SQLite; the interrupted save leaves the old files, and says so."""
    texts = fill_notes(tmp_path / "i.db", 30)
    db = Notes(tmp_path / "i.db", encoder=HashingEncoder(32))

    def interrupted_save():
        raise KeyboardInterrupt

    monkeypatch.setattr(db._engine, "flush", interrupted_save)  # the backfill's final save
    with pytest.raises(BackfillInterrupted) as caught:
        db.backfill_embeddings(batch_size=10)
    monkeypatch.undo()
    assert caught.value.result.interrupted and caught.value.result.embedded == 30
    assert len(live_vectors(tmp_path / "i.db")) == 30
    db.shut()
    _finish(tmp_path / "i.db", texts, committed=30)


def test_sigint_to_a_backfilling_process(tmp_path):
    """A real Ctrl-C (SIGINT) at random moments of a real process."""
    rng = random.Random(7)
    for trial in range(4):
        db_path = tmp_path / f"s{trial}.db"
        texts = fill_notes(db_path, 150, seed=trial)
        proc = spawn("interrupt", str(db_path))
        wait_for_line(proc, "ready")
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        summary = json.loads(out.splitlines()[-1])
        committed = len(live_vectors(db_path))
        assert summary["interrupted"] is True
        assert summary["embedded"] == committed and 0 < committed < 150
        assert int(summary["last_record_id"]) >= committed
        db = Notes(db_path, encoder=HashingEncoder(32))
        assert db.verify_index().ok
        assert_searchable(db)
        db.shut()
        _finish(db_path, texts, committed=committed)
