"""Finding and opening the databases a command names, without side effects it did not ask for.

Before a database is opened the command reads, read-only, what it already holds
(``databases/probing.py``): whether it exists (its SQLite file, or on PostgreSQL its schema's
primary table), which model made its vectors, and on SQLite which backend wrote its index.
From that:

* read commands (search, stats, verify, a dry run) refuse a missing data directory or database
  instead of creating empty ones (on PostgreSQL: no schema, table or extension is created), and
  never convert an index to another backend;
* every command uses the model a database's vectors were made by, so that opening never
  re-embeds, and an index is never rebuilt empty for a model it does not hold; ``--model`` may
  differ from it only for ``backfill --allow-model-change``;
* the data directory is expanded once (``~``, relative paths), so databases and locks agree.

Read commands open databases with ``read_only=True``: SQLite in ``mode=ro``, and no index,
metadata, lock or temporary file is written; PostgreSQL in read-only transactions, which the
server itself enforces. ``--database-url`` (or ``$EMBEDDABLE_DB_URL``) puts every database
of a command on one PostgreSQL database, a schema each; a backfill there takes turns on an
advisory lock instead of a lock file. ``search`` and ``serve`` send their searches to a hot
standby of it with ``--read-url`` (or ``$EMBEDDABLE_DB_READ_URL``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..databases import HOME_ENV, REGISTRY, RecordDB, data_home
from ..databases.opening import READ_URL_ENV
from ..databases.probing import index_backend, postgres_databases, sqlite_model
from ..encoder import DEFAULT_MODEL, model_identity
from ..errors import EmbeddingError
from ..options import PGVECTOR, StoreOptions
from .output import warn
from .parser import UsageError


@dataclass(frozen=True)
class Target:
    """One database a command works on, and what its files (or its schema) already say."""

    name: str
    cls: type[RecordDB]
    db_file: str | None  # None on PostgreSQL
    index_path: str | None
    metadata_path: str | None
    model: str | None  # the model its vectors were made by; None without vectors or file
    url: str | None = None  # the PostgreSQL database holding it (its schema is ``name``)
    found: bool = False  # on PostgreSQL: whether its schema has its tables

    @property
    def exists(self) -> bool:
        return self.found if self.url is not None else os.path.isfile(self.db_file or "")

    @property
    def where(self) -> str:
        """The file, or the database and schema (password hidden), for messages."""
        if self.url is None:
            return str(self.db_file)
        from ..databases.postgres import shown

        return f"{shown(self.url)} (schema {self.name})"


def find_targets(args: argparse.Namespace) -> list[Target]:
    """The databases of ``--db`` (each once, in the order given), read-only."""
    names = list(dict.fromkeys(args.db))
    url = getattr(args, "database_url", None)
    if url is not None:
        try:
            found = postgres_databases(url, [REGISTRY[name] for name in names])
        except EmbeddingError as exc:  # unreachable, refused, no such database
            raise UsageError(f"{args.prog} {args.command}: error: {exc}") from None
        return [Target(name, REGISTRY[name], None, None, None, found[name].model, url,
                       found[name].exists) for name in names]
    targets = []
    for name in names:
        cls = REGISTRY[name]
        db_file, index_path, metadata_path = cls.resolve_paths(data_dir=args.data_dir)
        assert index_path is not None and metadata_path is not None
        targets.append(Target(name, cls, db_file, index_path, metadata_path,
                              sqlite_model(db_file, cls.embedding_table)))
    return targets


def choose_read_url(args: argparse.Namespace) -> str | None:
    """The standby a command searches: ``--read-url``, else ``$EMBEDDABLE_DB_READ_URL`` when
    the databases are on PostgreSQL; a standby without a primary is a usage error."""
    given = getattr(args, "read_url", None)
    if getattr(args, "database_url", None) is None:
        if given is not None:
            raise UsageError(f"{args.prog} {args.command}: error: --read-url names a standby "
                             "of a PostgreSQL primary: give --database-url (or "
                             "$EMBEDDABLE_DB_URL) too")
        return None
    return given or os.environ.get(READ_URL_ENV, "").strip() or None


def resolve_data_dir(value: str | None) -> Path:
    """``--data-dir``, else ``$EMBEDDABLE_DB_HOME``, else ``./data``: absolute, ``~`` expanded."""
    return data_home(value)


def stored_backend(target: Target) -> str | None:
    """The backend a store's index was last written with (from its metadata), or None;
    ``pgvector`` on PostgreSQL, the only one there."""
    return PGVECTOR if target.url is not None else index_backend(target.metadata_path)


def require_existing(args: argparse.Namespace, targets: list[Target]) -> None:
    """Read commands read: a mistyped folder is an error, not six new empty databases."""
    where = f"{args.prog} {args.command}: error:"
    if getattr(args, "database_url", None) is not None:
        missing = [t for t in targets if not t.exists]
        if missing:
            names = ", ".join(t.name for t in missing)
            raise UsageError(
                f"{where} no database {names} in {missing[0].where.rsplit(' (', 1)[0]} (no "
                f"schema {missing[0].name!r} with table {missing[0].cls.tables[0].table!r}): "
                "choose others with --db, or create it with a backfill or "
                "`embeddable-db migrate --to URL`"
            )
        return
    if not args.data_dir.is_dir():
        state = "is not a folder" if args.data_dir.exists() else "does not exist"
        raise UsageError(
            f"{where} data directory {str(args.data_dir)!r} {state}: check --data-dir or "
            f"${HOME_ENV} (only a backfill creates databases)"
        )
    missing = [t for t in targets if not t.exists]
    if missing:
        names = ", ".join(t.name for t in missing)
        raise UsageError(
            f"{where} no database {names} in {str(args.data_dir)!r} (such as "
            f"{missing[0].db_file!r}): choose others with --db, or create it with a backfill"
        )


def choose_models(args: argparse.Namespace, targets: list[Target]) -> dict[str, str]:
    """The model to open each database with: the one its vectors were made by.

    ``--model`` names the model for databases without vectors yet; naming another model than
    a database's own is a usage error unless ``backfill --allow-model-change`` says to switch.
    """
    switch = args.command == "backfill" and args.allow_model_change
    chosen = {}
    for target in targets:
        wanted = args.model
        if target.model is None:
            chosen[target.name] = wanted or DEFAULT_MODEL
        elif wanted is None or model_identity(wanted, None) == target.model:
            chosen[target.name] = target.model
        elif switch:
            chosen[target.name] = wanted
        else:
            where = f"{args.prog} {args.command}: error: the vectors in {target.name} were made " \
                f"by model {target.model!r}, not {wanted!r}"
            if args.command == "backfill":
                raise UsageError(
                    f"{where}: drop --model to keep {target.model!r}, or add "
                    f"--allow-model-change to re-embed all of {target.name} with {wanted!r}"
                )
            raise UsageError(
                f"{where}: drop --model ({args.command} uses each database's own model; "
                "backfill --allow-model-change switches models)"
            )
    return chosen


def switching(target: Target, model: str) -> bool:
    return target.model is not None and model_identity(model, None) != target.model


@contextmanager
def open_db(
    target: Target, args: argparse.Namespace, *, model: str, read_only: bool,
) -> Iterator[RecordDB]:
    """Open one database with ``model``; closed when the block ends.

    Read commands (``read_only``) use the backend the index was built with, so reading never
    converts it; a different ``--backend`` is mentioned and otherwise ignored. They open the
    database ``read_only``: nothing is written, not even a lock file or a rebuilt index.
    """
    if target.url is not None:
        options = StoreOptions(backend=PGVECTOR, model_name=model, model_backend=args.model_backend,
                               allow_model_change=switching(target, model), read_only=read_only,
                               read_url=getattr(args, "read_url", None))
        db = target.cls(url=target.url, **options.keywords())
        try:
            yield db
        finally:
            db.close()
        return
    stored = stored_backend(target)
    if read_only:
        backend = stored or args.backend or "annoy"
        if args.backend and stored and args.backend != stored:
            warn(f"{target.name}: its index is {stored}: {args.command} reads it as it is "
                 "(only backfill and rebuild convert it)")
    else:
        backend = args.backend or stored or "annoy"
    options = StoreOptions(backend=backend, model_name=model, model_backend=args.model_backend,
                           allow_model_change=switching(target, model), read_only=read_only)
    db = target.cls(data_dir=args.data_dir, **options.keywords())
    try:
        yield db
    finally:
        db.close()


@contextmanager
def backfill_lock(args: argparse.Namespace, name: str) -> Iterator[bool]:
    """One backfill per database at a time; yields False when skipping a busy database.

    A dry run takes no lock (it writes nothing, not even a lock file).
    """
    if args.dry_run:
        yield True
        return
    if getattr(args, "database_url", None) is not None:
        with _server_lock(args, name) as acquired:
            yield acquired
        return
    folder = args.data_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".backfill.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if args.no_wait:
            warn(f"{name}: another backfill is running; skipped")
            yield False
            return
        warn(f"{name}: waiting for another backfill to finish ...")
        lock.acquire()
    try:
        yield True
    finally:
        lock.release()


@contextmanager
def _server_lock(args: argparse.Namespace, name: str) -> Iterator[bool]:
    """``backfill_lock`` on PostgreSQL: an advisory lock of the server, on the schema's name."""
    from ..databases.postgres import BackfillLock

    lock = BackfillLock(args.database_url, name)
    try:
        if not lock.try_acquire():
            if args.no_wait:
                warn(f"{name}: another backfill is running; skipped")
                yield False
                return
            warn(f"{name}: waiting for another backfill to finish ...")
            lock.acquire()
        yield True
    finally:
        lock.close()


def store_size(db: Any) -> int:
    """The bytes a store's index takes: its index and metadata files, or on PostgreSQL its
    embeddings table with its indexes."""
    if getattr(db, "url", None) is not None:
        from ..databases.postgres import storage_bytes

        return storage_bytes(db.conn, db.schema, db.embedding_table)
    return sum(os.path.getsize(p) for p in (db.index_path, db.metadata_path)
               if p and os.path.isfile(p))


def half_switched(name: str, model: str, counts: dict[str, int]) -> str | None:
    """What to do about vectors of several models (a model switch a backfill did not finish)."""
    others = {m: n for m, n in counts.items() if m != model}
    if not others:
        return None
    theirs = ", ".join(f"{n} of {m!r}" for m, n in others.items())
    return (f"{name} is half-switched between models: {counts.get(model, 0)} vectors of "
            f"{model!r} (the ones searched), {theirs}: run `embeddable-db backfill --db {name}` "
            f"to re-embed the rest with {model!r}")
