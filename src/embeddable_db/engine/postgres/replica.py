"""Searches on a hot standby, writes on the primary: the PostgreSQL engine with ``read_url=``.

``ReplicatedEngine`` is the ``PostgresEngine`` (``PostgresEngine(...)`` returns one when the
options name a ``read_url``) whose searches -- vector, keyword, hybrid's parts, the texts a
reranker reads -- and read-only lookups (``get_vector``, ``count``, ``model_counts``) run on a
streaming standby, while every write, every backfill decision (``states_of``, ``unseen_keys``,
``last_seq``: snapshot horizons of the primary) and every upkeep call stays on the primary.

**Read-your-writes: wait, then fall back.** After each commit of this process (any store of
it on the same primary server) the primary's WAL position is remembered, and so is the
position when the store opened: ``pg_current_wal_flush_lsn()``, which a commit has reached
once it returned and which is exactly what the primary streams to its standbys (the write
or insert position may be ahead of it until the next flush); under ``synchronous_commit =
off``, whose commits return before they are flushed, the insert position. A search first
asks the standby how far it has replayed (``pg_last_wal_replay_lsn()``); when it is behind
that position it polls for up to ``read_wait`` seconds (default 0.2: a healthy standby
replays a commit in milliseconds, and waiting longer than the primary takes to answer gains
nothing) and otherwise the search runs on the primary. A wait that ran out is not repeated:
until the standby is found caught up (one look per search, no waiting), searches go straight
to the primary, so a lagging or paused standby costs one round trip, not ``read_wait``, per
search. Without a new commit there is nothing to wait for, and no look is taken. So a search
sees everything this process committed, and everything committed anywhere before the store
opened; another process's later commits are seen once the standby has replayed them (the
usual replication lag). A search inside an open transaction on the store's connection runs
on the primary: only there does it see the transaction's own writes.

**A standby that fails is never an error.** Unreachable at open, lost mid-search (the server
stopped, the connection broken), or cancelling a query (a recovery conflict): the search runs
on the primary, a warning is logged once per outage, and the standby is tried again after
``RETRY_SECONDS`` (a connection attempt is bounded by ``connect_timeout``, default
``CONNECT_TIMEOUT`` unless ``read_url`` sets one). One that answers again is used again.

**What ``read_url`` may name.** A hot standby of the store's own server (the same
``system_identifier``, which ``pg_basebackup`` copies) and database. Anything else is refused
when the store opens, with an ``InvalidInputError``, before anything is written: a server not
in recovery (a primary -- this one, which gains nothing, or another, whose tables are not
ours) cannot say what it has replayed, so no search there could be shown to see our writes; a
standby of another server or database holds other data. A standby promoted later (no longer
in recovery) is dropped with a warning, and searches go to the primary.

The standby connection is the store's own (autocommit, ``search_path`` copied from the
primary's connection, closed with the store); its use is serialised by its own lock, so that a
search there does not wait for the primary's writers, nor they for it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ...errors import EmbeddingError, InvalidInputError
from ...options import StoreOptions
from .engine import PostgresEngine

log = logging.getLogger(__name__)

RETRY_SECONDS = 10.0  # a lost standby is tried again after this long
CONNECT_TIMEOUT = 2  # seconds, libpq's connect_timeout, unless read_url gives one
_POLL_FIRST, _POLL_MAX = 0.001, 0.02  # seconds between looks while waiting (doubling)
#: The primary's WAL position that covers this session's last commit (see the docstring).
_COMMITTED_LSN = (
    "SELECT (CASE current_setting('synchronous_commit') WHEN 'off' "
    "THEN pg_current_wal_insert_lsn() ELSE pg_current_wal_flush_lsn() END)::text"
)
_SERVER = (
    "SELECT (SELECT system_identifier FROM pg_control_system())::text, current_database(), "
    "pg_is_in_recovery()"
)
_REPLAYED = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"

#: system identifier -> the highest position any commit of this process reached on that
#: server, so that every store of the process (two handles on one database) waits for it.
_commits: dict[str, int] = {}
_commits_lock = threading.Lock()


def lsn(text: str | None) -> int:
    """A ``pg_lsn`` (``'16/B374D848'``) as a number (None, nothing replayed yet: 0)."""
    if text is None:
        return 0
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _parameters(read_url: str) -> dict[str, Any]:
    """``read_url``'s connection keywords; a string libpq cannot read is refused at once."""
    try:
        return conninfo_to_dict(read_url)
    except psycopg.ProgrammingError as exc:
        raise InvalidInputError(
            f"read_url is not a libpq conninfo or postgresql:// URL: {exc}".rstrip()
        ) from None


def shown(read_url: str) -> str:
    """The standby as ``host:port/dbname`` (no password), for messages."""
    given = _parameters(read_url)
    host = given.get("host") or given.get("hostaddr") or "localhost"
    return f"{host}:{given.get('port') or 5432}/{given.get('dbname') or '(default database)'}"


def check_read_url(options: StoreOptions) -> None:
    """``read_url``'s syntax, checked before anything connects."""
    if options.read_url is not None:
        _parameters(options.read_url)


@dataclasses.dataclass(frozen=True)
class Primary:
    """What a standby of the store's primary must match, and what its connection copies."""

    system: str
    dbname: str
    search_path: str

    @classmethod
    def of(cls, conn: psycopg.Connection) -> Primary:
        with conn.transaction():
            system, dbname, in_recovery = conn.execute(_SERVER).fetchone()
            (search_path,) = conn.execute("SELECT current_setting('search_path')").fetchone()
        if in_recovery:
            raise InvalidInputError(
                f"the store's own connection (database {dbname!r}) is to a standby, which "
                "has no commits to wait for: read_url is for a store opened on the primary"
            )
        return cls(system, dbname, search_path)


def connect_standby(read_url: str, primary: Primary) -> psycopg.Connection:
    """A connection to ``read_url``, checked to be a hot standby of ``primary`` (else an
    ``InvalidInputError`` saying what it is); a server that cannot be reached raises
    ``psycopg.Error``."""
    extra = {} if "connect_timeout" in _parameters(read_url) else {"connect_timeout": CONNECT_TIMEOUT}
    conn = psycopg.connect(read_url, autocommit=True, **extra)
    try:
        system, dbname, in_recovery = conn.execute(_SERVER).fetchone()
        where = f"read_url {shown(read_url)}"
        if not in_recovery:
            raise InvalidInputError(
                f"{where} is not a hot standby (pg_is_in_recovery() is false): a primary cannot "
                "say what it has replayed, so searches there could not be made to see this "
                "store's writes; give the URL of a standby of the store's server, or leave "
                "read_url out to search the primary"
            )
        if system != primary.system:
            raise InvalidInputError(
                f"{where} is a standby of another server (system identifier {system}; the "
                f"store's primary is {primary.system}): give a standby of the store's server"
            )
        if dbname != primary.dbname:
            raise InvalidInputError(
                f"{where} names database {dbname!r}; the store's is {primary.dbname!r}: name "
                "the same database on the standby"
            )
        conn.execute("SELECT set_config('search_path', %s, false)", (primary.search_path,))
    except BaseException:
        conn.close()
        raise
    return conn


def probe(read_url: str, primary_conn: psycopg.Connection) -> None:
    """Refuse a ``read_url`` that is not a standby of ``primary_conn``'s database, before a
    database creates its tables; one that cannot be reached now is left to the engine."""
    try:
        connect_standby(read_url, Primary.of(primary_conn)).close()
    except psycopg.Error:
        pass


class Standby:
    """The standby connection, its read engine and its state; use it holding ``lock``."""

    def __init__(self, read_url: str, wait: float, primary: Primary, make_engine: Callable) -> None:
        self.url, self.wait, self.primary = read_url, wait, primary
        self.lock = threading.RLock()
        self._make_engine = make_engine
        self.conn: psycopg.Connection | None = None
        self.engine: PostgresEngine | None = None
        self.replayed = 0  # the furthest replay position seen
        self.behind = False  # the last wait ran out: look without waiting until caught up
        self.down = False  # a warning was logged; cleared when it answers again
        self.retry_at = 0.0
        self.dropped: str | None = None  # why it is never used again
        self.answered = 0  # reads the standby answered (for monitoring and the tests)

    def connect(self) -> None:
        """Connect now (at open: misconfiguration raises; unreachable is a warning)."""
        try:
            self.conn = connect_standby(self.url, self.primary)
        except psycopg.Error as exc:
            self.lost(exc)

    def ready(self, target: int) -> PostgresEngine | None:
        """The engine to read on when the standby has replayed ``target``, else None."""
        if self.dropped is not None or (self.conn is None and time.monotonic() < self.retry_at):
            return None
        try:
            if self.conn is None:
                self.conn = connect_standby(self.url, self.primary)
            if target > self.replayed and not self._caught_up(target):
                return None
            if self.engine is None:
                self.engine = self._make_engine(self.conn)
        except InvalidInputError as exc:  # not what it was at open: another server is there
            self.drop(str(exc))
            return None
        except (psycopg.Error, EmbeddingError) as exc:
            self.lost(exc)
            return None
        if self.down:
            self.down = False
            log.info("standby %s answers again: searches go to it", shown(self.url))
        return self.engine

    def _caught_up(self, target: int) -> bool:
        deadline = time.monotonic() + (0.0 if self.behind else self.wait)
        pause = _POLL_FIRST
        while True:
            in_recovery, replayed = self.conn.execute(_REPLAYED).fetchone()
            if not in_recovery:
                self.drop(f"standby {shown(self.url)} is no longer in recovery (promoted?)")
                return False
            self.replayed = max(self.replayed, lsn(replayed))
            if self.replayed >= target:
                self.behind = False
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                self.behind = True
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, _POLL_MAX)

    def lost(self, exc: BaseException) -> None:
        """The standby failed: searches go to the primary; it is tried again later."""
        if not self.down:
            self.down = True
            log.warning(
                "standby %s cannot be used (%s): searches go to the primary; it is tried again "
                "every %g s", shown(self.url), str(exc).strip() or type(exc).__name__, RETRY_SECONDS,
            )
        self.retry_at = time.monotonic() + RETRY_SECONDS
        self._close()

    def drop(self, why: str) -> None:
        self.dropped = why
        log.warning("%s: searches go to the primary from now on", why)
        self._close()

    def _close(self) -> None:
        """Let the connection go; a new one may replay from an earlier point (a restarted
        standby resumes from its last restartpoint), so what was seen replayed is forgotten."""
        conn, self.conn, self.engine, self.replayed = self.conn, None, None, 0
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self.lock:
            self._close()


class ReplicatedEngine(PostgresEngine):
    """A ``PostgresEngine`` whose reads go to the standby of ``options.read_url``."""

    def __init__(self, conn: psycopg.Connection, *, options: StoreOptions, **keywords: Any) -> None:
        check_read_url(options)
        primary = Primary.of(conn)  # a read: nothing is written before the standby is checked
        self._reads = dataclasses.replace(options, read_only=True, read_url=None)
        self._keywords = keywords
        self.standby = Standby(options.read_url, options.read_wait, primary, self._standby_engine)
        self.standby.connect()
        try:
            super().__init__(conn, options=options, **keywords)
            self._own_lsn = 0  # the WAL position of this store's last commit
            self._unrecorded = False  # a commit whose position is still to be asked for
            self._note_commit()  # the open may have created the table; and what came before it
        except BaseException:
            self.standby.close()
            raise

    def _standby_engine(self, conn: psycopg.Connection) -> PostgresEngine:
        """A read-only engine of the same table on the standby connection."""
        engine = PostgresEngine(conn, options=self._reads, **self._keywords)
        if engine.names != self.names:
            raise EmbeddingError(
                f"on the standby the store's table is {engine.names.label}, not {self.names.label}"
            )
        engine.lock = self.standby.lock
        return engine

    # -- remembering commits -----------------------------------------------------------------
    def _note_commit(self) -> None:
        """Remember the WAL position of the commit that just happened, or, when the write
        was inside a transaction still open, that it is to be asked for later. A failure to
        ask (the primary's connection lost after the commit) is not the write's error: the
        position is asked for again before the next search."""
        with self.lock:
            self._unrecorded = True
            if self.in_transaction():
                return
            try:
                with self.conn.transaction():
                    (position,) = self.conn.execute(_COMMITTED_LSN).fetchone()
            except psycopg.Error as exc:
                log.debug("the primary's WAL position could not be read: %s", exc)
                return
            self._unrecorded = False
            self._own_lsn = max(self._own_lsn, lsn(position))
            with _commits_lock:
                system = self.standby.primary.system
                _commits[system] = max(_commits.get(system, 0), self._own_lsn)

    def _target(self) -> int | None:
        """The position a standby must have replayed for a search to run there; None: on
        the primary (a transaction is open on its connection, or the position is unknown)."""
        with self.lock:
            if self._unrecorded:
                self._note_commit()
            if self._unrecorded or self.in_transaction():
                return None
        with _commits_lock:
            return max(self._own_lsn, _commits.get(self.standby.primary.system, 0))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with super().transaction():
            yield
        self._note_commit()

    def write(self, rows, *, bulk: bool = False) -> None:
        super().write(rows, bulk=bulk)
        if rows:
            self._note_commit()

    def remove(self, keys: list[str], *, through_seq: int | None = None) -> set[str]:
        removed = super().remove(keys, through_seq=through_seq)
        self._note_commit()
        return removed

    def set_version(self, keys: list[str], version: int) -> set[str]:
        changed = super().set_version(keys, version)
        self._note_commit()
        return changed

    def fill_keywords(self, items: list[tuple[str, str, str]]) -> int:
        filled = super().fill_keywords(items)
        if items:
            self._note_commit()
        return filled

    # -- reads on the standby ----------------------------------------------------------------
    def _read(self, method: Callable, *args: Any, **kwargs: Any) -> Any:
        target = self._target()
        if target is not None:
            with self.standby.lock:
                engine = self.standby.ready(target)
                if engine is not None:
                    try:
                        answer = method(engine, *args, **kwargs)
                    except psycopg.Error as exc:  # the primary answers (or raises the same)
                        self.standby.lost(exc)
                    else:
                        self.standby.answered += 1
                        return answer
        return method(self, *args, **kwargs)

    def search(self, *args: Any, **kwargs: Any) -> list[tuple[str, float]]:
        return self._read(PostgresEngine.search, *args, **kwargs)

    def keyword_search(self, *args: Any, **kwargs: Any) -> list[tuple[str, float]]:
        return self._read(PostgresEngine.keyword_search, *args, **kwargs)

    def keyword_coverage(self, *args: Any, **kwargs: Any) -> float:
        return self._read(PostgresEngine.keyword_coverage, *args, **kwargs)

    def keyword_texts(self, *args: Any, **kwargs: Any) -> dict[str, str]:
        return self._read(PostgresEngine.keyword_texts, *args, **kwargs)

    def get_vector(self, *args: Any, **kwargs: Any) -> Any:
        return self._read(PostgresEngine.get_vector, *args, **kwargs)

    def count(self) -> int:
        return self._read(PostgresEngine.count)

    def model_counts(self) -> dict[str, int]:
        return self._read(PostgresEngine.model_counts)

    def close(self) -> None:
        """Our cursor and the standby connection (ours) are let go; the primary's stays."""
        try:
            super().close()
        finally:
            self.standby.close()
