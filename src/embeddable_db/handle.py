"""How an open store may be used right now, checked in one place.

A store handle is open or closed, used by the process that opened it or by a child that
``fork()`` made (which must not touch the parent's SQLite connection or file lock), and
read-write or read-only. ``Handle.check`` is what every public method of the mixin and of the
databases calls first, before it takes the store's thread lock: a child forked while another
thread held that lock gets the error instead of hanging.

Read-only connections come in here too: a SQLite connection that cannot write (``mode=ro``),
which the six databases open (what a read-only store sees of its files is in
``engine/sqlite/opening.py``).
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse

try:
    import fcntl
except ImportError:  # not on Windows: read-only stores read without the lock there
    fcntl = None  # type: ignore[assignment]


from .errors import ClosedStoreError, EmbeddingError, InvalidInputError, ReadOnlyError


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


def is_locked(exc: BaseException) -> bool:
    """SQLite gave up waiting for another connection's lock (``SQLITE_BUSY``/``LOCKED``)."""
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc))


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
    if is_locked(exc):
        return EmbeddingError(
            f"cannot use {path}: {exc}: another connection held a lock on it for the whole "
            "busy timeout; run this again once that program has committed or closed its "
            "transaction"
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
