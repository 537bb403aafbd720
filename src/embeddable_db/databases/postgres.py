"""The six databases on PostgreSQL: the connection, the database's schema, and its SQL.

Imported only when a database is opened with a URL (``opening.py``), so that the SQLite path
never imports psycopg. Each database lives in its own schema, named after it (``bot``,
``workflow``, ...; created when missing), with the same tables and columns as its SQLite file
and its embeddings table beside them, so ``SELECT * FROM bot.bots`` is the SQL one would
write on SQLite with the schema in front.

- **The connection** is in autocommit mode: every write is one explicit transaction (the
  engine's ``conn.transaction()``), and a read never leaves one open behind it (with
  autocommit off, psycopg would begin one at the first ``SELECT`` and hold its snapshot, and
  a backfill's batches could not commit). Its ``search_path`` is the database's schema, then
  the server's own (where the vector extension normally is), so the databases' SQL names its
  tables as on SQLite. ``read_only=True`` also sets ``default_transaction_read_only``: the
  server itself refuses a write.
- **The SQL** is the databases' own, with ``?`` placeholders: ``Statements`` turns them into
  psycopg's ``%s`` (outside string literals; a literal ``%`` is doubled). A value PostgreSQL
  cannot take (text with NUL, an integer beyond 64 bits, a word where a number belongs) is an
  ``InvalidInputError`` naming it, and the transaction it was in is rolled back.
- **Creating the tables** takes an advisory lock on the schema's name, so that two processes
  opening a new database at once create it once; the vector extension is created, when
  missing, in the server's default schema (not the database's: the other five must see it).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ..engine.postgres import PostgresEngine, replica
from ..errors import EmbeddingError, InvalidInputError
from ..options import StoreOptions
from .dialect import postgres

DIALECT = postgres(psycopg.IntegrityError, psycopg.OperationalError)
#: What PostgreSQL raises for a value it cannot take or compare (psycopg raises the first
#: for text with NUL itself); a DataError is also a wrong number given for a number column.
VALUE_ERRORS = (psycopg.DataError, pg_errors.UndefinedFunction)
#: Anything the server or the connection raises.
ERROR = psycopg.Error
_PASSWORD = re.compile(r"(://[^/@:]*:)[^/@]*@|(password=)[^&\s]*")


def shown(url: str) -> str:
    """The URL with its password hidden, to name the database in errors and ``repr``."""
    return _PASSWORD.sub(lambda m: (m.group(1) or m.group(2)) + "***" + ("@" if m.group(1) else ""), url)


def check_options(options: StoreOptions, table: str) -> None:
    """The engine's refusals (index files, an SQLite backend, a ``read_url`` libpq cannot
    read) before anything is opened."""
    PostgresEngine.locate(options, None, table)
    replica.check_read_url(options)


@functools.lru_cache(maxsize=2048)
def translate(statement: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (none is inside a string literal of ours), and
    every ``%`` doubled, which psycopg reads back as one."""
    parts = statement.replace("%", "%%").split("'")
    parts[::2] = [part.replace("?", "%s") for part in parts[::2]]
    return "'".join(parts)


class Statements:
    """Runs the databases' SQL on a psycopg connection, as a ``sqlite3.Connection`` would."""

    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def execute(self, statement: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        try:
            return self.conn.execute(translate(statement), params)
        except VALUE_ERRORS as exc:
            raise _value_error(exc) from exc

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> psycopg.Cursor:
        cursor = self.conn.cursor()
        try:
            cursor.executemany(translate(statement), rows)
        except VALUE_ERRORS as exc:
            raise _value_error(exc) from exc
        return cursor


def _value_error(exc: Exception) -> InvalidInputError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InvalidInputError(f"PostgreSQL cannot take a value given: {reason}")


def connect(
    url: str, schema: str, read_only: bool, who: str, read_url: str | None = None
) -> psycopg.Connection:
    """An autocommit connection whose ``search_path`` starts with ``schema``; a ``read_url``
    that is not a standby of it is refused first, before anything is created."""
    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise EmbeddingError(f"{who} cannot connect to {shown(url)}: {exc}".rstrip()) from exc
    try:
        if read_url is not None:
            replica.probe(read_url, conn)
        if not read_only:
            _create_vector_extension(conn)
        (extension_schema,) = conn.execute(
            "SELECT (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
            "ON n.oid = e.extnamespace WHERE e.extname = 'vector')"
        ).fetchone()
        conn.execute(
            "SELECT set_config('search_path', concat_ws(', ', quote_ident(%s), "
            "nullif(current_setting('search_path'), ''), quote_ident(%s)), false)",
            (schema, extension_schema),
        )
        if read_only:
            conn.execute("SET default_transaction_read_only = on")
    except BaseException:
        conn.close()
        raise
    return conn


def _create_vector_extension(conn: psycopg.Connection) -> None:
    """The vector extension in the server's default schema, when it is missing and we may
    create it; when we may not, the engine says so (it tries again and names what to do)."""
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
        return
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error:
        pass


@contextmanager
def schema_transaction(conn: psycopg.Connection, schema: str) -> Iterator[None]:
    """The transaction that creates or upgrades a database's tables, its schema first; two
    processes opening the same new database take turns on an advisory lock."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                     (f"embeddable_db.schema:{schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        yield


# -- looking before opening (probing.py), and taking turns (the CLI's backfill) ----------------
def _connect_read_only(url: str, who: str) -> psycopg.Connection:
    """A read-only autocommit connection; ``connect_timeout`` is 10 s unless the URL says."""
    try:
        extra = {} if "connect_timeout" in conninfo_to_dict(url) else {"connect_timeout": 10}
        conn = psycopg.connect(url, autocommit=True, **extra)
    except psycopg.Error as exc:  # libpq's message spans lines: one line says it
        reason = " ".join(str(exc).removeprefix("connection is bad: ").split())
        raise EmbeddingError(f"{who} cannot connect to {shown(url)}: {reason}".rstrip()) from exc
    conn.execute("SET default_transaction_read_only = on")
    return conn


def probe(url: str, wanted: Sequence[tuple[str, str, str]]) -> dict[str, tuple[bool, str | None]]:
    """For ``(schema, primary table, embeddings table)`` triples: schema -> (whether the primary
    table exists, the model the embeddings table's meta records). Reads the catalog only."""
    found: dict[str, tuple[bool, str | None]] = {}
    with _connect_read_only(url, "embeddable-db") as conn:
        def exists(schema: str, table: str) -> bool:
            name = sql.Identifier(schema, table).as_string(conn)
            return conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is not None

        for schema, table, embeddings in wanted:
            model = None
            if exists(schema, f"{embeddings}_meta"):
                row = conn.execute(sql.SQL("SELECT value FROM {} WHERE key = 'model'").format(
                    sql.Identifier(schema, f"{embeddings}_meta"))).fetchone()
                model = row[0] if row else None
            found[schema] = (exists(schema, table), model)
    return found


class BackfillLock:
    """One backfill per database at a time on a server, as the file lock is on SQLite: a
    session-level advisory lock on the schema's name, held by a connection of its own (so it
    ends with the process, however it ends)."""

    def __init__(self, url: str, schema: str) -> None:
        self.conn = _connect_read_only(url, "backfill")
        self.key = f"embeddable_db.backfill:{schema}"

    def try_acquire(self) -> bool:
        return bool(self.conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                                      (self.key,)).fetchone()[0])

    def acquire(self) -> None:
        self.conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (self.key,))

    def close(self) -> None:
        self.conn.close()  # releases the lock


def storage_bytes(conn: psycopg.Connection, schema: str, table: str) -> int:
    """The disk a store's embeddings table takes, with its indexes and TOAST data."""
    name = sql.Identifier(schema, table).as_string(conn)
    return int(conn.execute("SELECT coalesce(pg_total_relation_size(to_regclass(%s)), 0)",
                            (name,)).fetchone()[0])
