"""Finding and opening the databases a command names, without side effects it did not ask for.

Before a database is opened the command reads, read-only, what it already holds: whether its
file exists, which model made its vectors, which backend wrote its index. From that:

* read commands (search, stats, verify, a dry run) refuse a missing data directory or database
  instead of creating empty ones, and never convert an index to another backend;
* every command uses the model a database's vectors were made by, so that opening never
  re-embeds, and an index is never rebuilt empty for a model it does not hold; ``--model`` may
  differ from it only for ``backfill --allow-model-change``;
* the data directory is expanded once (``~``, relative paths), so databases and locks agree.

Read commands open databases with ``read_only=True``: SQLite in ``mode=ro``, and no index,
metadata, lock or temporary file is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from ..backends import backend_names
from ..databases import HOME_ENV, REGISTRY, RecordDB, data_home
from ..encoder import DEFAULT_MODEL, model_identity
from ..options import StoreOptions
from .output import warn
from .parser import UsageError


@dataclass(frozen=True)
class Target:
    """One database a command works on, and what its files already say."""

    name: str
    cls: type[RecordDB]
    db_file: str
    index_path: str
    metadata_path: str
    model: str | None  # the model its vectors were made by; None without vectors or file

    @property
    def exists(self) -> bool:
        return os.path.isfile(self.db_file)


def find_targets(args: argparse.Namespace) -> list[Target]:
    """The databases of ``--db`` (each once, in the order given), read-only."""
    targets = []
    for name in dict.fromkeys(args.db):
        cls = REGISTRY[name]
        db_file, index_path, metadata_path = cls.resolve_paths(data_dir=args.data_dir)
        assert index_path is not None and metadata_path is not None
        targets.append(Target(name, cls, db_file, index_path, metadata_path,
                              recorded_model(db_file, cls.embedding_table)))
    return targets


def resolve_data_dir(value: str | None) -> Path:
    """``--data-dir``, else ``$EMBEDDABLE_DB_HOME``, else ``./data``: absolute, ``~`` expanded."""
    return data_home(value)


def recorded_model(db_file: str, table: str) -> str | None:
    """The model the vectors in ``db_file`` were made by (``<table>_meta``), or None.

    Read-only, and it creates nothing: a database without a ``-wal`` (or ``-journal``) file
    was closed cleanly, so its main file holds everything and is read as immutable (SQLite's
    read-only mode alone would create ``-wal`` and ``-shm`` files and leave them); otherwise
    read-only mode sees the WAL as well. A file that cannot be read gives None: opening it then
    reports the problem for that database alone (and the store checks the model itself).
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


def stored_backend(target: Target) -> str | None:
    """The backend a store's index was last written with (from its metadata), or None."""
    if not os.path.isfile(target.metadata_path):  # only a regular file: a FIFO would block
        return None
    try:
        with open(target.metadata_path, encoding="utf-8") as handle:
            backend = json.load(handle).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if backend in backend_names() else None


def require_existing(args: argparse.Namespace, targets: list[Target]) -> None:
    """Read commands read: a mistyped folder is an error, not six new empty databases."""
    where = f"{args.prog} {args.command}: error:"
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


def half_switched(name: str, model: str, counts: dict[str, int]) -> str | None:
    """What to do about vectors of several models (a model switch a backfill did not finish)."""
    others = {m: n for m, n in counts.items() if m != model}
    if not others:
        return None
    theirs = ", ".join(f"{n} of {m!r}" for m, n in others.items())
    return (f"{name} is half-switched between models: {counts.get(model, 0)} vectors of "
            f"{model!r} (the ones searched), {theirs}: run `embeddable-db backfill --db {name}` "
            f"to re-embed the rest with {model!r}")
