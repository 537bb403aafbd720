"""What a database already holds, read before opening it, without creating or changing anything.

A command (or a migration) must know some things before it opens a database: whether there is
one at all (a read command must refuse, not create, a missing one), which model made its
vectors (opening with another would be refused, and opening with the right one never
re-encodes), and, on SQLite, which backend wrote its index (reading it with another would
rebuild it). Opening to find out would create what is missing; these functions only look:

- SQLite: the file is opened read-only (immutable when it was closed cleanly, so that not even
  ``-wal``/``-shm`` files appear), and the index's JSON metadata is read as a plain file;
- PostgreSQL: one connection with ``default_transaction_read_only``, asking the catalog whether
  each database's schema has its primary table, and its meta table which model it records
  (``databases/postgres.py``; imported only for a URL, so the SQLite path never imports
  psycopg).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..backends import backend_names
from ..engine import import_postgres

if TYPE_CHECKING:
    from ._base import RecordDB


@dataclass(frozen=True)
class Found:
    """One database as a probe found it: whether it exists, and the model of its vectors."""

    exists: bool
    model: str | None


def sqlite_model(db_file: str, table: str) -> str | None:
    """The model the vectors in ``db_file`` were made by (``<table>_meta``), or None.

    A database without a ``-wal`` (or ``-journal``) file was closed cleanly, so its main file
    holds everything and is read as immutable (SQLite's read-only mode alone would create
    ``-wal`` and ``-shm`` files and leave them); otherwise read-only mode sees the WAL as well.
    A file that cannot be read gives None: opening it then reports the problem for that
    database alone (and the store checks the model itself).
    """
    if not os.path.isfile(db_file):
        return None
    uri = Path(db_file).as_uri() + "?mode=ro"
    if not any(os.path.exists(db_file + end) for end in ("-wal", "-journal")):
        uri += "&immutable=1"
    meta = f"{table}_meta"  # a class attribute, checked to be an identifier by the store
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    except sqlite3.Error:
        return None
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (meta,)).fetchone() is None:
            return None
        row = conn.execute(f"SELECT value FROM {meta} WHERE key = 'model'").fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def index_backend(metadata_path: str | None) -> str | None:
    """The backend a SQLite store's index was last written with (its JSON metadata), or None."""
    if metadata_path is None or not os.path.isfile(metadata_path):  # a FIFO would block
        return None
    try:
        with open(metadata_path, encoding="utf-8") as handle:
            backend = json.load(handle).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if backend in backend_names() else None


def postgres_databases(url: str, classes: Sequence[type[RecordDB]]) -> dict[str, Found]:
    """Each database class's name -> what the PostgreSQL database at ``url`` holds of it.
    A server that cannot be reached is an ``EmbeddingError`` naming the URL (password hidden)."""
    pg = import_postgres("embeddable_db.databases.postgres", "a PostgreSQL URL")
    found = pg.probe(url, [(cls.name, cls.tables[0].table, cls.embedding_table) for cls in classes])
    return {name: Found(exists, model) for name, (exists, model) in found.items()}
