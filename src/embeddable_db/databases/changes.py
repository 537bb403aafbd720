"""The six databases record their changes with SQLite triggers, as ``TableStore`` does.

A no-op backfill used to read and hash every record (2.1 s at 100k bots); with the triggers
of ``tables/changes.py`` on the tables a database owns it reads only the records that changed,
whoever changed them (this library, plain SQL, another program). One change table per database
file, ``<name>_embeddings_changes``, holding ``"<kind>:<id>"`` keys; per record table:

- after insert and after delete: the record's key (every insert: a ``TableStore`` leaves rows
  appended above its high mark unlogged and finds them by rowid, but here the database's own
  ``add`` appends rows, writes their vectors in the same transaction and forgets what it
  logged, so unlogged appends would only make the next backfill read them again);
- after update of ``id`` and of the columns its record class's ``embedding_text`` reads
  (``EMBEDDED_FIELDS``; every column when a class names none): the new and the old key, so
  a change to a column that is not embedded (a status, a counter) is not even read;
- before insert and update of a unique column (``errors.message``): the rows that
  ``INSERT OR REPLACE`` would delete without a delete trigger;
- on the link table of a link field that is embedded, insert, update and delete log the
  owner's key. (None of the six embeds a link field: ``EnhancementDB``'s model, bot and
  workflow ids are not in its text, so its link tables have no triggers.)

The database's own ``add``/``update``/``delete`` write the vector in the transaction that writes
the row, so the keys their statements log are forgotten before it commits (``forget_since``).

The log is trusted as a ``TableStore``'s is (the token in the triggers' SQL, the basis
recorded by a full scan); the basis also names this library's version, since the records'
``embedding_text`` is its code: an upgrade that renders text differently gets one full scan.
A database made before the triggers gets them at its next writable open, and a full scan at
its next backfill. Not tracked, so every backfill reads every record as before: a read-only
open (it writes nothing), a connection that is not ``sqlite3``, and a subclass that overrides
``iter_records`` or ``embedding_text`` (its records need not be what the triggers watch).
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import sqlite3
from collections.abc import Iterator
from typing import Any

from ..tables.changes import ChangeLog, Triggers
from ..tables.schema import Key, describe, quote
from .records import TableSpec

_KIND = re.compile(r"[a-z][a-z0-9_]*")


@functools.cache
def library_version() -> str:
    try:
        return importlib.metadata.version("embeddable-db")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


def open_change_log(db: Any, base: type) -> ChangeLog | None:
    """The change log of ``db`` (a ``base`` subclass), its triggers installed if they are not
    in place; None when its changes are not tracked (module docstring)."""
    cls = type(db)
    if (db.embedding_options.read_only or not isinstance(db.conn, sqlite3.Connection)
            or cls.iter_records is not base.iter_records
            or cls.embedding_text is not base.embedding_text):
        return None
    triggers = [t for spec in db.tables for t in _triggers(db.conn, db.embedding_table, spec)]
    log = ChangeLog(db.conn, db.embedding_table, triggers)
    if not log.in_place():  # looked at first: most opens need no write transaction
        with db.embedding_transaction():
            if not log.in_place():  # another process may have installed them meanwhile
                log.install()
    return log


def _triggers(conn: sqlite3.Connection, store_table: str, spec: TableSpec) -> Iterator[Triggers]:
    fields = set(spec.record_type.EMBEDDED_FIELDS)
    unknown = fields - spec.updatable
    if unknown:
        raise TypeError(f"{spec.record_type.__name__}.EMBEDDED_FIELDS names fields it does not "
                        f"have: {', '.join(sorted(unknown))}")
    if not _KIND.fullmatch(spec.kind):  # written into the triggers' SQL as a literal
        raise TypeError(f"kind {spec.kind!r} must be lower-case letters, digits and _")
    fields = fields or spec.updatable  # a class that names none: every field
    info = describe(conn, "main", spec.table)
    columns = [spec.by_field[f].name for f in fields if f in spec.by_field]
    yield Triggers(info, Key("id", quote("id")), columns, f"{store_table}_{spec.table}",
                   logged=lambda row: f"'{spec.kind}:' || {row}{quote('id')}")
    for link in spec.links:
        if link.field in fields:
            owner = quote(link.owner)
            yield Triggers(describe(conn, "main", link.table), Key(link.owner, owner),
                           [link.column], f"{store_table}_{link.table}", unique=(),
                           logged=lambda row, owner=owner: f"'{spec.kind}:' || {row}{owner}")


def records_of(db: Any, keys: list[str], page: int) -> Iterator[tuple[str, Any, str]]:
    """The records of ``keys`` that exist, as ``iter_records`` yields them (ids above 0)."""
    wanted: dict[str, tuple[TableSpec, list[int]]] = {}
    for key in keys:
        parsed = db._parse_key(key)
        if parsed is not None and parsed[1] > 0:
            wanted.setdefault(parsed[0].kind, (parsed[0], []))[1].append(parsed[1])
    for spec, ids in wanted.values():
        for start in range(0, len(ids), page):
            chunk = ids[start : start + page]
            marks = ",".join("?" * len(chunk))
            for record in spec.select(db.conn, f"WHERE id IN ({marks}) ORDER BY id", chunk,
                                      lenient=True):
                yield f"{spec.kind}:{record.id}", record, spec.kind
