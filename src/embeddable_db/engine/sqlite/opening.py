"""What opening the SQLite engine meets: the embeddings table (or its absence), the lock file
held shared by a reader, and which files are at the store's paths right now.

``EmptyStore`` is what a read-only open sees when the embeddings table was never created (it
must not create it); ``SharedLock`` is the store's existing lock file held shared while a
read-only store reads the index files.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator

try:
    import fcntl
except ImportError:  # not on Windows: read-only stores read without the lock there
    fcntl = None  # type: ignore[assignment]

import numpy as np

from ...handle import sqlite_error
from . import schema
from .store import EmbeddingStore


def open_store(
    conn: sqlite3.Connection, table: str, *, read_only: bool, name: str, owner: str | None = None
) -> EmbeddingStore:
    """The embeddings table, created if missing; read-only: as it is, or empty if missing.

    ``owner`` is the store class the table belongs to (see ``owner.py``); another class's
    table is refused read-only too."""
    try:
        if not read_only:
            store = EmbeddingStore(conn, table, owner=owner)
            store.ensure_schema()
            return store
        conn.execute("PRAGMA busy_timeout = 30000")  # a setting of this connection, not a write
        store = EmbeddingStore(conn, table, owner=owner)
        found = conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
            (store.table, store.meta_table),
        ).fetchone()[0]
        if found == 2:
            store.check_owner()
            schema.opened_read_only(store)
    except sqlite3.OperationalError as exc:
        raise sqlite_error(name, exc) from exc
    return store if found == 2 else EmptyStore(conn, table)


class SharedLock:
    """The store's lock file, held shared by a read-only store while it reads the index files.

    Writers hold the same file exclusively (flock, as filelock does) while they save, so they
    wait for a reader and readers for a save, never for each other. It opens only a lock file
    that already exists, read-only, and writes nothing; with none (or a symlink, or anything
    but a regular file there) it reads without the lock and relies on noticing a save.
    """

    WAIT_SECONDS = 30.0

    def __init__(self, lock_file: str) -> None:
        self.lock_file = lock_file
        self._fd: int | None = None
        self._depth = 0

    def __enter__(self) -> SharedLock:
        self._depth += 1
        if self._depth == 1 and fcntl is not None:
            self._fd = self._acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def _acquire(self) -> int | None:
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(
            os, "O_CLOEXEC", 0
        )
        try:
            fd = os.open(self.lock_file, flags)
        except OSError:
            return None
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                deadline = time.monotonic() + self.WAIT_SECONDS
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                        return fd
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            break  # a save that long: read without the lock
                        time.sleep(0.01)
                    except OSError:
                        break  # no flock on this file system
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None


def file_ids(*paths: str | None) -> tuple:
    """Which files are at ``paths`` now (a file that os.replace() put there has another inode):
    a reader without the lock compares them before and after reading to notice a save."""
    ids = []
    for path in paths:
        try:
            stat = os.stat(path) if path is not None else None
        except OSError:
            stat = None
        if stat is None:
            ids.append(None)
        else:
            ids.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return tuple(ids)


class EmptyStore(EmbeddingStore):
    """A store whose embeddings table was never created, as a read-only open sees it: no
    vectors (a read-only open must not create the table; reopen to see one made since)."""

    store_id = None  # type: ignore[assignment]

    def __init__(self, conn: sqlite3.Connection, table: str) -> None:
        super().__init__(conn, table)
        self.keywords.empty = True  # keyword search finds nothing

    def meta(self, key: str) -> str | None:
        return None

    def changes_since(self, seq: int) -> list:
        return []

    def live_vectors(self, model: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        return np.empty(0, np.int64), np.empty((0, dim), np.float32)

    def mapping(self, model: str, dim: int) -> Iterator[tuple]:
        return iter(())

    def states_of(self, record_ids: list[str]) -> dict:
        return {}

    def stale_states(self, items: list[tuple[str, str, str]], model: str, version: int) -> dict:
        return dict.fromkeys((key for key, _, _ in items), None)  # none has a vector

    def rows(self) -> int:
        return 0

    def keys_not_in(self, seen, after: str, limit: int = 20_000) -> tuple[None, list[str]]:
        return None, []

    def live_through(self, record_ids: list[str], through_seq: int) -> list[str]:
        return []

    def written_since(self, record_ids: list[str], seq: int) -> set[str]:
        return set()

    def get_vector(self, record_id: str) -> np.ndarray | None:
        return None

    def count(self, model: str | None = None, dim: int | None = None) -> int:
        return 0

    def model_counts(self) -> dict[str, int]:
        return {}

    def max_label(self) -> int:
        return 0

    def scan(self) -> Iterator[tuple]:
        return iter(())
