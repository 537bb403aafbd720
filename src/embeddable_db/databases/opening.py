"""Opening a database's SQLite file: the connection, its tables, and the lock its users share.

Kept apart from ``_base.py`` (what a database does with its records) because none of it
depends on records: a connection usable from every thread of the process, tables created or
upgraded in one transaction, and a read-only open that refuses a file needing either.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ReadOnlyError
from ..handle import connect_read_only, sqlite_error
from .records import TableSpec


def serialised(method: Callable) -> Callable:
    """Run a method that uses the connection holding ``embedding_lock``, so that threads
    sharing the database take turns with it."""

    @functools.wraps(method)
    def locked(self, *args: Any, **kwargs: Any) -> Any:
        with self.embedding_lock:
            return method(self, *args, **kwargs)

    return locked


def connect(path: str, read_only: bool, beside: Iterable[str | os.PathLike | None]) -> sqlite3.Connection:
    """The database's connection, usable from any thread of this process (every use holds
    ``embedding_lock``); a writable open first makes the folders of it and of ``beside``."""
    if read_only:
        return connect_read_only(path, timeout=30.0, check_same_thread=False)
    for file in (path, *beside):
        if file is not None and file != ":memory:":
            Path(file).parent.mkdir(parents=True, exist_ok=True)
    try:
        return sqlite3.connect(path, timeout=30.0, check_same_thread=False)
    except sqlite3.OperationalError as exc:
        raise sqlite_error(path, exc) from exc


def create_schema(
    conn: sqlite3.Connection, tables: Sequence[TableSpec], extra: Callable[[], None]
) -> None:
    """Create or upgrade every table (and ``extra``: a database's own) in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for spec in tables:
            for statement in spec.schema():
                conn.execute(statement)
            existing = [row[1] for row in conn.execute(f"PRAGMA table_info({spec.table})")]
            for statement in spec.migrations(existing):
                conn.execute(statement)
        extra()
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def check_schema(
    conn: sqlite3.Connection, tables: Sequence[TableSpec], path: str, database: str
) -> None:
    """A read-only open cannot create or upgrade tables: refuse one that needs it."""
    for spec in tables:
        existing = [row[1] for row in conn.execute(f"PRAGMA table_info({spec.table})")]
        if not existing or spec.migrations(existing):
            raise ReadOnlyError(
                f"{path} has no up-to-date table {spec.table!r} (is it a {database} database "
                "made by an older version?): open it once without read_only=True to create or "
                "upgrade its tables"
            )
