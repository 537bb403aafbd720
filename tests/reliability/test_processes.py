"""Several processes on one store: concurrent writers and readers lose and duplicate nothing.

DESIGN invariant 6: SQLite in WAL mode with a busy timeout, index files under a file lock, and
every search first picks up what other processes committed.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys

import pytest
from reliability_helpers import (
    Notes,
    assert_searchable,
    live_vectors,
    spawn,
    temp_files,
    writers_beside_readers,
)

from embeddable_db import HashingEncoder

WRITERS = 4
PER_WRITER = 500
READERS = 2


@pytest.mark.parametrize("backend", ["annoy", "faiss"])
def test_four_writers_two_readers(tmp_path, backend):
    db_path = tmp_path / "shared.db"
    Notes(db_path, backend=backend).shut()  # the schema exists before the crowd arrives
    stop = tmp_path / "stop"
    readers = [spawn("reader", str(db_path), backend, str(stop)) for _ in range(READERS)]
    writers_beside_readers(readers, lambda: [
        spawn("writer", str(db_path), backend, str(1 + w * PER_WRITER), str(PER_WRITER))
        for w in range(WRITERS)
    ], stop, WRITERS * PER_WRITER)

    vectors = live_vectors(db_path)
    assert sorted(vectors, key=int) == [str(i) for i in range(1, WRITERS * PER_WRITER + 1)]
    conn = sqlite3.connect(str(db_path))
    rows = conn.execute("SELECT COUNT(*), COUNT(DISTINCT record_id) FROM embeddings").fetchone()
    conn.close()
    assert rows == (WRITERS * PER_WRITER,) * 2
    db = Notes(db_path, backend=backend)
    report = db.verify_index()
    assert report.ok, report.problems
    assert report.sqlite_count == report.index_count == WRITERS * PER_WRITER
    assert db.embedding_count() == WRITERS * PER_WRITER
    assert_searchable(db, [1, 500, 501, 1234, 2000])
    db.shut()
    assert temp_files(tmp_path) == []


def test_commit_between_reading_changes_and_version_is_seen(tmp_path, monkeypatch):
    """A commit by another process landing while a search syncs is seen by the next search.

    The race: read the changes, another process commits, read PRAGMA data_version. If the
    version is read last, the store believes it is current and misses that commit.
    """
    db = Notes(tmp_path / "r.db", encoder=HashingEncoder(32))
    other = Notes(tmp_path / "r.db", encoder=HashingEncoder(32))
    db.add_embedding(1, {"body": "first note"}, "note")
    real = type(db._engine.store).changes_since
    fired = []

    def changes_then_commit(store, seq):
        changes = real(store, seq)
        if store is db._engine.store and not fired:
            fired.append(True)
            other.add_embedding(2, {"body": "second note"}, "note")  # another connection
        return changes

    monkeypatch.setattr(type(db._engine.store), "changes_since", changes_then_commit)
    other.add_embedding(3, {"body": "third note"}, "note")
    assert db.embedding_count() == 2  # synced 1 and 3; 2 was committed meanwhile
    assert fired
    assert db.embedding_count() == 3
    assert "2" in [h[0] for h in db.search_by_text("second note", top_k=3)]
    other.shut()
    db.shut()


def test_two_backfill_commands_at_once(tmp_path):
    """Two ``embeddable-db backfill`` on one data directory: both exit cleanly, every record
    is embedded exactly once between them, nothing is lost, and ``verify`` agrees."""
    from embeddable_db.databases import REGISTRY

    data = tmp_path / "data"
    rows = {"bot": ("bots", "name", "purpose"), "info": ("info", "topic", "content")}
    per_db = 150
    for name, (table, title, text) in rows.items():
        REGISTRY[name](data_dir=data, model_name="hash:64").close()
        conn = sqlite3.connect(data / name / f"{name}.db")
        with conn:
            conn.executemany(
                f"INSERT INTO {table} ({title}, {text}) VALUES (?, ?)",
                [(f"{name} {i}", f"{name} record number {i} about subject {i % 17}")
                 for i in range(per_db)],
            )
        conn.close()
    command = [sys.executable, "-m", "embeddable_db.cli", "backfill", "--data-dir", str(data),
               "--model", "hash:64", "--batch-size", "10"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    encoded = [int(re.search(r"texts encoded: (\d+)", out).group(1)) for out, _ in outputs]
    assert sum(encoded) == per_db * len(rows), f"embedded twice or not at all: {encoded}"
    for name in REGISTRY:
        conn = sqlite3.connect(data / name / f"{name}.db")
        total, distinct = conn.execute(
            f"SELECT COUNT(*), COUNT(DISTINCT record_id) FROM {REGISTRY[name].embedding_table} "
            "WHERE deleted = 0"
        ).fetchone()
        conn.close()
        assert total == distinct == (per_db if name in rows else 0), name
    verify = subprocess.run([sys.executable, "-m", "embeddable_db.cli", "verify", "--data-dir",
                             str(data), "--model", "hash:64"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
