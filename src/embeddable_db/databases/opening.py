"""Opening a database: SQLite file or PostgreSQL schema, its tables, the lock its users share.

Kept apart from ``_base.py`` (what a database does with its records) because none of it
depends on records: a connection usable from every thread of the process, tables created or
upgraded in one transaction, and a read-only open that refuses a database needing either.

Which engine: ``url=`` (a ``postgresql://`` URL), else ``$EMBEDDABLE_DB_URL`` when neither
``path`` nor ``data_dir`` is given (an explicit file always wins over the environment, so a
test or script that names one never lands on a shared server), else the SQLite file. A URL
with ``path``, ``data_dir``, ``index_path`` or ``metadata_path`` is refused before anything is
opened: those name files, which a PostgreSQL database does not have. PostgreSQL is imported
only on that branch (``postgres.py``), so the SQLite path never imports psycopg. ``read_url``
(a hot standby for searches) is PostgreSQL's: with a SQLite file it is refused before the file
is made; with a URL it is checked before the tables are (``engine/postgres/replica.py``). A
database opened by ``$EMBEDDABLE_DB_URL`` takes its ``read_url`` from ``$EMBEDDABLE_DB_READ_URL``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine import import_postgres
from ..errors import EmbeddingError, InvalidInputError, ReadOnlyError
from ..handle import connect_read_only, sqlite_error
from ..options import StoreOptions, refuse_postgres_only
from .dialect import SQLITE

if TYPE_CHECKING:
    from ._base import RecordDB

URL_ENV = "EMBEDDABLE_DB_URL"
READ_URL_ENV = "EMBEDDABLE_DB_READ_URL"
_SCHEMES = ("postgresql://", "postgres://")


def serialised(method: Callable) -> Callable:
    """Run a method that uses the connection holding ``embedding_lock``, so that threads
    sharing the database take turns with it."""

    @functools.wraps(method)
    def locked(self, *args: Any, **kwargs: Any) -> Any:
        with self.embedding_lock:
            return method(self, *args, **kwargs)

    return locked


# -- which engine ------------------------------------------------------------------------------
def database_url(
    url: Any, *, path: Any, data_dir: Any, options: StoreOptions
) -> str | None:
    """The PostgreSQL URL to open (``url``, else ``$EMBEDDABLE_DB_URL`` when no file is
    named), or None for the SQLite file; a URL together with file options is refused."""
    where = "url"
    if url is None:
        if path is not None or data_dir is not None:
            return None
        url, where = os.environ.get(URL_ENV, "").strip() or None, f"${URL_ENV}"
        if url is None:
            return None
    if not isinstance(url, str) or not url.startswith(_SCHEMES):
        raise InvalidInputError(
            f"{where} must be a PostgreSQL URL (postgresql://user@host/dbname), got "
            f"{_shown_value(url)}; for a SQLite file give path= or data_dir="
        )
    given = [name for name, value in (("path", path), ("data_dir", data_dir),
             ("index_path", options.index_path), ("metadata_path", options.metadata_path))
             if value is not None]
    if given:
        raise InvalidInputError(
            f"{where} opens the database on PostgreSQL, which has no files: leave out "
            f"{' and '.join(given)} (or leave out the URL to use a SQLite file)"
        )
    return url


def _shown_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def open_database(
    db: RecordDB, path: Any, data_dir: Any, url: Any, options: StoreOptions
) -> dict[str, Any]:
    """Set ``db.conn`` (what the mixin uses), ``db._sql`` (what runs the databases' ``?``
    SQL), ``db._dialect``, ``db.path`` / ``db.url`` / ``db.schema``, and create (or, read-only,
    check) the tables. Returns the mixin's keywords that differ from ``options``: the index
    and metadata paths (None on PostgreSQL), and ``read_url``."""
    given = url
    url = database_url(url, path=path, data_dir=data_dir, options=options)
    if url is not None:
        if given is None:
            options = _read_url_from_environment(options)
        _open_postgres(db, url, options)
        return {"index_path": None, "metadata_path": None, "read_url": options.read_url}
    refuse_postgres_only(options)  # before the file is made
    db.path, index_path, metadata_path = db.resolve_paths(
        path, data_dir=data_dir, index_path=options.index_path,
        metadata_path=options.metadata_path,
    )
    db.url = db.schema = None
    db.conn = db._sql = connect(db.path, options.read_only, (index_path, metadata_path))
    db._dialect = SQLITE
    try:
        _tables(db, options.read_only, lambda: _immediate(db.conn))
    except sqlite3.OperationalError as exc:  # e.g. a read-only file opened to write
        db.conn.close()
        raise sqlite_error(db.path, exc) from exc
    except BaseException:
        db.conn.close()
        raise
    return {"index_path": index_path, "metadata_path": metadata_path}


def _read_url_from_environment(options: StoreOptions) -> StoreOptions:
    """A database opened by ``$EMBEDDABLE_DB_URL`` searches ``$EMBEDDABLE_DB_READ_URL``, its
    standby, when set (and no ``read_url`` is given): the command line gets standby searches
    as it gets the URL. Never with a ``url=`` or a file: a standby belongs to its primary."""
    read_url = os.environ.get(READ_URL_ENV, "").strip()
    if options.read_url is not None or not read_url:
        return options
    replica = import_postgres("embeddable_db.engine.postgres.replica", f"${READ_URL_ENV}")
    try:
        options = dataclasses.replace(options, read_url=read_url)
        replica.check_read_url(options)
    except InvalidInputError as exc:
        raise InvalidInputError(f"${READ_URL_ENV}: {exc}") from None
    return options


def _open_postgres(db: RecordDB, url: str, options: StoreOptions) -> None:
    who = type(db).__name__
    pg = import_postgres("embeddable_db.databases.postgres", f"{who}(url=...) opens PostgreSQL")
    pg.check_options(options, db.embedding_table)  # before connecting: a bad option changes nothing
    db.path, db.url, db.schema = None, pg.shown(url), db.name
    db.conn = pg.connect(url, db.schema, options.read_only, who, options.read_url)
    db._sql, db._dialect = pg.Statements(db.conn), pg.DIALECT
    try:
        _tables(db, options.read_only, lambda: pg.schema_transaction(db.conn, db.schema))
    except pg.ERROR as exc:
        db.conn.close()
        raise EmbeddingError(
            f"{who} cannot create or read its tables in {db.url} (schema {db.schema}): {exc}"
        ) from exc
    except BaseException:
        db.conn.close()
        raise


def open_error(db: RecordDB, exc: BaseException) -> EmbeddingError | None:
    """The error to raise for ``exc``, raised while the mixin opened the store (None: as is)."""
    if not isinstance(exc, db._dialect.operational_error):
        return None
    if db.path is not None:
        return sqlite_error(db.path, exc)
    return EmbeddingError(f"cannot use {db.url} (schema {db.schema}): {exc}")


# -- SQLite -----------------------------------------------------------------------------------
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


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One SQLite write transaction, taken at once (two processes creating tables take turns)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


# -- tables ------------------------------------------------------------------------------------
def _tables(db: RecordDB, read_only: bool, transaction: Callable[[], AbstractContextManager]) -> None:
    if read_only:
        check_schema(db)
    else:
        create_schema(db, transaction)


def create_schema(db: RecordDB, transaction: Callable[[], AbstractContextManager]) -> None:
    """Create or upgrade every table (and the database's own, ``_extra_schema``) in one
    transaction."""
    with transaction():
        for spec in db.tables:
            for statement in db._dialect.create(spec):
                db._sql.execute(statement)
            existing = db._dialect.columns(db._sql, spec.table, db.schema)
            for statement in db._dialect.migrations(spec, existing):
                db._sql.execute(statement)
        db._extra_schema()


def check_schema(db: RecordDB) -> None:
    """A read-only open cannot create or upgrade tables: refuse one that needs it."""
    where = db.path if db.path is not None else f"{db.url} (schema {db.schema})"
    for spec in db.tables:
        existing = db._dialect.columns(db._sql, spec.table, db.schema)
        if not existing or db._dialect.migrations(spec, existing):
            raise ReadOnlyError(
                f"{where} has no up-to-date table {spec.table!r} (is it a "
                f"{type(db).__name__} database made by an older version?): open it once "
                "without read_only=True to create or upgrade its tables"
            )
