"""Moving the six databases from their SQLite files to PostgreSQL without re-encoding.

``migrate(data_dir, url, databases)`` copies each database's records (every table, its link
tables, the ids as they are) and its vectors into the database's schema at ``url``, then
verifies both sides. Why it is built this way:

- **No model call.** Vectors are copied as stored (``Engine.rows_of`` on SQLite, the
  PostgreSQL engine's ``write``), each with the text hash, model, version, source id and
  keyword text it was written with. The model is never loaded; a vector current on SQLite is
  current on PostgreSQL (its next backfill embeds nothing), a stale one stays stale and is
  re-embedded there as it would have been here. The keyword text comes along, so keyword and
  hybrid search work at once (PostgreSQL's ``tsvector`` is generated from it).
- **Re-runnable.** Each run makes the copy equal to the files (``copying.py``): what was
  added, edited or deleted in SQLite since the last run is copied, updated or removed, the rest
  is counted unchanged and not written. Changes made to the copy meanwhile are overwritten:
  until you switch, the files are the original.
- **Ids stay ids.** Records keep their ids (vectors are keyed ``<kind>:<id>``), and each
  table's identity sequence is moved past them (``setval``), so the next ``add`` on PostgreSQL
  gets a fresh id.
- **Verified.** After copying, both sides are read again and compared: every record, every
  vector bit for bit with its state, the counts per kind, the model recorded on each side, and
  the PostgreSQL store's own ``verify_index()``. A database is ``ok`` only if all agree.
- **Bad input changes nothing.** Unknown names, a missing data directory or database file,
  a URL that is not PostgreSQL's or a server that cannot be reached are refused before
  anything is written on either side. The SQLite files are opened read-only throughout.

Run it while nothing writes the SQLite files (or run it again: the second run copies what
changed during the first). One database failing (a record PostgreSQL cannot take, such as
text with NUL; vectors of two models, a switch a backfill has not finished) is reported in its
result and the others still run.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import import_postgres
from ..errors import EmbeddingError, InvalidInputError
from ..options import data_home
from ._base import RecordDB
from .copying import PAGE, Counts, sync_table, sync_vectors
from .opening import URL_ENV, database_url
from .probing import index_backend, postgres_databases, sqlite_model

log = logging.getLogger(__name__)

#: progress(database name, rows done, rows in all): records and vectors, after each page.
Progress = Callable[[str, int, int], None]


@dataclass
class KindCounts:
    """How many records and vectors of one kind each side holds after the copy."""

    records: tuple[int, int] = (0, 0)  # (SQLite, PostgreSQL)
    vectors: tuple[int, int] = (0, 0)


@dataclass
class DatabaseMigration:
    """One database's migration: what was copied, and what the verify found."""

    name: str
    records: Counts = field(default_factory=Counts)
    vectors: Counts = field(default_factory=Counts)
    seconds: float = 0.0
    #: The model recorded on (SQLite, PostgreSQL) after the copy (None: no vectors).
    models: tuple[str | None, str | None] = (None, None)
    kinds: dict[str, KindCounts] = field(default_factory=dict)
    #: What the verify found different; empty when both sides agree.
    problems: list[str] = field(default_factory=list)
    #: Why this database could not be migrated (then nothing of it was verified).
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.problems

    @property
    def rate(self) -> float:
        """Records read per second (their vectors came along)."""
        return self.records.seen / self.seconds if self.seconds > 0 else 0.0


@dataclass
class MigrationReport:
    """Every database's ``DatabaseMigration``; ``ok`` when every one verified."""

    url: str  # password hidden
    databases: list[DatabaseMigration] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(db.ok for db in self.databases)


def migrate(
    data_dir: str | os.PathLike | None = None,
    url: str | None = None,
    databases: Iterable[str] | None = None,
    *,
    progress: Progress | None = None,
    page_size: int = PAGE,
) -> MigrationReport:
    """Copy the databases of ``data_dir`` (default ``$EMBEDDABLE_DB_HOME``, else ``./data``)
    to the PostgreSQL database at ``url`` (default ``$EMBEDDABLE_DB_URL``), one schema each,
    without re-encoding; ``databases``: names (default all six). Returns what was copied and
    verified per database (module docstring); raises ``InvalidInputError`` or
    ``EmbeddingError`` for bad input, before anything is written."""
    from . import REGISTRY

    names = list(dict.fromkeys(REGISTRY if databases is None else _names(databases, REGISTRY)))
    given = url if url is not None else os.environ.get(URL_ENV, "").strip() or None
    if given is None:
        raise InvalidInputError(f"migrate needs the PostgreSQL database to copy to: pass url= "
                                f"(postgresql://user@host/dbname) or set ${URL_ENV}")
    from ..options import StoreOptions

    target = database_url(given, path=None, data_dir=None, options=StoreOptions())
    assert target is not None
    folder = data_home(data_dir)
    sources = _sources(folder, [REGISTRY[name] for name in names])
    postgres_databases(target, [REGISTRY[name] for name in names])  # reachable, or raises
    from .postgres import shown

    report = MigrationReport(shown(target))
    for name in names:
        cls, model, backend = sources[name]
        report.databases.append(_migrate_one(cls, folder, target, model, backend, progress,
                                             page_size))
    return report


def _names(databases: Iterable[str], registry: dict) -> list[str]:
    if isinstance(databases, str):
        databases = [databases]
    names = list(databases)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise InvalidInputError(f"unknown database {unknown[0]!r}: choose from "
                                f"{', '.join(registry)}")
    return names


def _sources(folder: Path, classes: list[type[RecordDB]]) -> dict[str, tuple]:
    """name -> (class, the model its vectors were made by, its index's backend), for
    database files that exist; a missing folder or file is refused."""
    if not folder.is_dir():
        raise InvalidInputError(f"data directory {str(folder)!r} does not exist: give the folder "
                                "holding the SQLite databases (data_dir=, $EMBEDDABLE_DB_HOME)")
    found, missing = {}, []
    for cls in classes:
        db_file, _, metadata = cls.resolve_paths(data_dir=folder)
        if not os.path.isfile(db_file):
            missing.append((cls.name, db_file))
            continue
        found[cls.name] = (cls, sqlite_model(db_file, cls.embedding_table), index_backend(metadata))
    if missing:
        raise InvalidInputError(
            f"no database {', '.join(n for n, _ in missing)} in {str(folder)!r} (such as "
            f"{missing[0][1]!r}): name the ones to copy (databases=, --db)")
    return found


def _migrate_one(cls: type[RecordDB], folder: Path, url: str, model: str | None,
                 backend: str | None, progress: Progress | None, page: int) -> DatabaseMigration:
    result = DatabaseMigration(cls.name)
    started = time.perf_counter()
    src = dst = None
    try:
        keywords: dict[str, Any] = {"model_name": model} if model else {}
        src = cls(data_dir=folder, read_only=True, **keywords,
                  **({"backend": backend} if backend else {}))
        counts = src.model_counts()
        if len(counts) > 1:
            raise EmbeddingError(
                f"{cls.name} holds vectors of {len(counts)} models ({', '.join(counts)}): finish "
                f"the model switch first (embeddable-db backfill --db {cls.name}), then migrate")
        dst = cls(url=url, **keywords)
        total = sum(src.count(kind=kind) for kind in cls.embedding_kinds) + sum(counts.values())
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(cls.name, done[0], total)

        for spec in cls.tables:
            result.records += sync_table(src, dst, spec, apply=True, tick=tick, page=page)
        bulk = import_postgres("embeddable_db.engine.postgres.bulk", "migrate")
        with bulk.index_built_after(dst._engine):  # an empty store: ~7x faster (bulk.py)
            result.vectors = sync_vectors(src, dst, apply=True, tick=tick, page=page)
        result.seconds = time.perf_counter() - started
        log.info("%s: records %s, vectors %s", cls.name, result.records, result.vectors)
        _verify(src, dst, result, page)
    except (EmbeddingError, ValueError, OSError, sqlite3.Error) as exc:
        result.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - the server's errors, known without psycopg here
        if not any(c.__module__.split(".")[0] == "psycopg" for c in type(exc).__mro__):
            raise
        result.error = f"PostgreSQL: {' '.join(str(exc).split())}"
    finally:
        for db in (dst, src):
            if db is not None:
                db.close()
        result.seconds = result.seconds or time.perf_counter() - started
    return result


def _verify(src: RecordDB, dst: RecordDB, result: DatabaseMigration, page: int) -> None:
    """Both sides read again and compared (module docstring); differences go to ``problems``."""
    problems = result.problems
    for spec in src.tables:
        found = sync_table(src, dst, spec, apply=False, page=page)
        if found.differing:
            problems.append(f"table {spec.table}: {found.copied} records missing on PostgreSQL, "
                            f"{found.updated} differ, {found.removed} not in SQLite")
        counts = (src.count(kind=spec.kind), dst.count(kind=spec.kind))
        result.kinds[spec.kind] = KindCounts(records=counts)
    kinds: dict[str, list[int]] = {}
    found = sync_vectors(src, dst, apply=False, kinds=kinds, page=page)
    if found.differing:
        problems.append(f"vectors: {found.copied} missing on PostgreSQL, {found.updated} differ "
                        f"(vector, text or state), {found.removed} not in SQLite")
    for kind, (mine, theirs) in kinds.items():
        result.kinds.setdefault(kind, KindCounts()).vectors = (mine, theirs)
    for kind, counted in result.kinds.items():
        for what, (mine, theirs) in (("records", counted.records), ("vectors", counted.vectors)):
            if mine != theirs:
                problems.append(f"{kind}: {mine} {what} in SQLite, {theirs} on PostgreSQL")
    mine, theirs = src._engine.identity(), dst._engine.identity()
    result.models = (mine[0], theirs[0])
    if mine != theirs:
        problems.append(f"model: SQLite records {mine[0]!r} ({mine[1]} dimensions), PostgreSQL "
                        f"{theirs[0]!r} ({theirs[1]} dimensions)")
    problems += [f"PostgreSQL: {p}" for p in dst.verify_index().problems]
