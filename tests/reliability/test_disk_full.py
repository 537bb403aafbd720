"""Disk full during an index save: the old files stay whole, the error reaches the caller, and
the next save succeeds (DESIGN invariants 1 and 5).

The failure is injected at three places of a save: while the backend writes the index, while
the metadata JSON is written, and at the fsync that makes either durable (where delayed
allocation reports ENOSPC on real file systems).
"""

from __future__ import annotations

import errno
import logging
import os

import pytest
from reliability_helpers import Notes, assert_same_answers, file_bytes, fill_notes, temp_files

from embeddable_db import HashingEncoder
from embeddable_db.backends import get_backend
from embeddable_db.engine.sqlite import manifest as manifest_module

QUERIES = ["note1 alpha", "bravo", "note40 lagoon"]


def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_index_write(monkeypatch, backend):
    """The backend gets part of the index file out, then the disk is full.

    (Not the real save cut short: Annoy maps the file it saved, so truncating that file
    would damage the test's own index, which a full disk does not do.)
    """
    cls = get_backend(backend)

    def save(self, path):
        with open(path, "wb") as handle:
            handle.write(b"\1" * 4096)
        _no_space()

    monkeypatch.setattr(cls, "save", save)


def _fail_metadata_write(monkeypatch, backend):
    """Writing the JSON gets part of the text out, then the disk is full."""
    real_open = open

    class Half:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):
            self.handle.write(text[: len(text) // 2])
            _no_space()

    def fake_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return Half(handle) if "w" in mode else handle

    monkeypatch.setattr(manifest_module, "open", fake_open, raising=False)


def _fail_fsync(monkeypatch, backend):
    monkeypatch.setattr(manifest_module.os, "fsync", _no_space)


FAILURES = {"index-write": _fail_index_write, "metadata-write": _fail_metadata_write,
            "fsync": _fail_fsync}


@pytest.mark.parametrize("backend", ["annoy", "faiss"])
@pytest.mark.parametrize("where", list(FAILURES))
@pytest.mark.parametrize("flush", ["save_index", "rebuild_index", "backfill", "close"])
def test_disk_full_during_save(tmp_path, monkeypatch, caplog, backend, where, flush):
    texts = fill_notes(tmp_path / "d.db", 40)
    db = Notes(tmp_path / "d.db", backend=backend, encoder=HashingEncoder(32))
    if flush in ("close", "backfill"):
        # close() and the end of a backfill leave a small delta for the next open
        # (test_close_defers_a_small_delta in tests/test_mixin.py); make them write, as they
        # do once the delta is large.
        db._engine._can_defer_flush = lambda: False
    db.backfill_embeddings()
    old_files = file_bytes(db.index_path, db.metadata_path)

    texts.update(fill_notes(tmp_path / "d.db", 20, start=41))
    if flush != "backfill":
        db.add_embeddings(
            [(i, {"body": texts[i]}, "note") for i in range(41, 61)]
        )
    FAILURES[where](monkeypatch, backend)
    with pytest.raises(OSError) as caught:
        if flush == "backfill":
            db.backfill_embeddings()
        else:
            getattr(db, flush)()
    assert caught.value.errno == errno.ENOSPC, "the caller must see the disk-full error"
    monkeypatch.undo()

    # The previous index and metadata are exactly as they were, and nothing is left over.
    assert file_bytes(db.index_path, db.metadata_path) == old_files
    assert temp_files(tmp_path) == []
    # The vectors are in SQLite and the open store still answers with all 60.
    assert db.embedding_count() == 60
    new_answers = {q: db.search_by_text(q, top_k=5) for q in QUERIES}

    # The old pair is usable on its own: another process opens it without any warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        other = Notes(tmp_path / "d.db", backend=backend, encoder=HashingEncoder(32))
    assert caplog.records == []
    for query, expected in new_answers.items():
        assert_same_answers(other.search_by_text(query, top_k=5), expected)
    other.conn.close()  # no flush from this one

    # The next save succeeds and writes everything.
    if flush == "close":
        db.close()
    else:
        db.save_index()
    assert file_bytes(db.index_path, db.metadata_path) != old_files
    report = Notes(tmp_path / "d.db", backend=backend, encoder=HashingEncoder(32))
    verify = report.verify_index()
    assert verify.ok and verify.metadata_count == 60 and verify.pending_changes == 0
    for query, expected in new_answers.items():
        assert_same_answers(report.search_by_text(query, top_k=5), expected)
    report.shut()
    if flush != "close":
        db.shut()
    else:
        db.conn.close()
