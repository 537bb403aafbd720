"""How an open store may be used right now, checked in one place.

A store handle is open or closed, used by the process that opened it or by a child that
``fork()`` made (which must not touch the parent's SQLite connection or file lock), and
read-write or read-only. ``Handle.check`` is what every public method of the mixin and of the
databases calls first, before it takes the store's thread lock: a child forked while another
thread held that lock gets the error instead of hanging.

Read-only opens also come in here: a SQLite connection that cannot write (``mode=ro``);
``EmptyStore``, what such an open sees when the embeddings table was never created (it must
not create it); and ``SharedLock``, the store's existing lock file held shared while reading.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Iterator

try:
    import fcntl
except ImportError:  # not on Windows: read-only stores read without the lock there
    fcntl = None  # type: ignore[assignment]

import numpy as np

from .errors import ClosedStoreError, EmbeddingError, InvalidInputError, ReadOnlyError
from .store import EmbeddingStore


class Handle:
    """One open store's state: the process that opened it, closed or not, read-only or not."""

    __slots__ = ("closed", "pid", "read_only")

    def __init__(self, read_only: bool) -> None:
        self.read_only = read_only  # checked by StoreOptions
        self.closed = False
        self.pid = os.getpid()

    @property
    def forked(self) -> bool:
        """True in a child process that fork() made after the store was opened."""
        return os.getpid() != self.pid

    def check(self, owner: object, write: str | None = None) -> None:
        """Raise unless ``owner`` may be used here; ``write`` names a call that would write."""
        name = type(owner).__name__
        if self.closed:
            raise ClosedStoreError(f"{name} is closed: open it again ({name}(...)) to use it")
        if self.forked:
            raise ClosedStoreError(
                f"{name} was opened in process {self.pid}, not in this child process "
                f"{os.getpid()} that fork() made: a child must not share the parent's SQLite "
                "connection and file lock; open the store again in the child process"
            )
        if write is not None and self.read_only:
            raise ReadOnlyError(
                f"{name} opened read-only: {write} would write to it; open it without "
                "read_only=True to change it"
            )


def sqlite_error(path: str, exc: sqlite3.Error) -> EmbeddingError:
    """SQLite's error as one that names the database file and what to do."""
    folder = os.path.dirname(path) or "."
    if "readonly" in str(exc).replace(" ", "").replace("-", "") or (
        os.path.isfile(path) and not (os.access(path, os.W_OK) and os.access(folder, os.W_OK))
    ):
        return ReadOnlyError(
            f"cannot write {path}: {exc}: make it writable, or open it with read_only=True "
            "to only read it"
        )
    return EmbeddingError(f"cannot use {path}: {exc}")


def connect_read_only(path: str, **options) -> sqlite3.Connection:
    """A connection that never writes the database file (``mode=ro``); the file must exist.

    SQLite itself may still create the ``-wal``/``-shm`` files of a WAL database (a reader
    needs them to read safely while others write). In a folder where it cannot (a read-only
    mount, or ``chmod a-w`` for a user other than root) and no ``-wal`` exists, the database
    is opened ``immutable``: no writer can change it there either.
    """
    if path == ":memory:":
        raise InvalidInputError("read_only=True needs a database file, not ':memory:'")
    if not os.path.isfile(path):
        raise EmbeddingError(f"cannot open {path} read-only: there is no such database file")
    query = "mode=ro"
    if not os.access(os.path.dirname(path) or ".", os.W_OK) and not os.path.exists(path + "-wal"):
        query += "&immutable=1"
    uri = "file:" + urllib.parse.quote(os.fsencode(path)) + "?" + query
    try:
        conn = sqlite3.connect(uri, uri=True, **options)
    except sqlite3.Error as exc:
        raise EmbeddingError(f"cannot open {path} read-only: {exc}") from exc
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        raise EmbeddingError(f"cannot read {path}: {exc}") from exc
    return conn


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

    def keys_page(self, through_seq: int, after: str = "", limit: int = 5_000) -> list[str]:
        return []

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
