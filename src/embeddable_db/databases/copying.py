"""Making one database's PostgreSQL copy equal to its SQLite original, a page at a time.

``migrate.py`` runs these per database; each returns what it found, as ``Counts``: rows
``copied`` (new on PostgreSQL), ``updated`` (there, but different), ``removed`` (there, but
no longer in SQLite) and ``unchanged``. With ``apply=False`` nothing is written: that is the
verify pass, which must then find every row unchanged.

Records (``sync_table``): both tables are read in id order, a page of SQLite ids at a time,
with the PostgreSQL rows whose ids fall in the same range (so a row deleted in SQLite is seen
in its gap, and rows above SQLite's last id at the end). Rows are compared as stored, column
by column (values are copied as they are, not through the record classes, so a row reads
back the same on both), with their link lists in order. Each page's changes are one
transaction: deletes, then updates, then inserts with their explicit ids, then the id
sequence moved past every id used (``setval``: an explicit id does not advance an identity
column, and the next ``add`` there would collide). It is done in every page's transaction, so
an interrupted migration leaves no id for ``add`` to collide with.

Vectors (``sync_vectors``): SQLite's keys a page at a time (``Engine.key_page``), their rows
on both engines (``Engine.rows_of``: vector, text hash, model, version, source id, kind,
keyword text) compared exactly (float32, bit for bit) and the differing ones written with
the PostgreSQL engine's own ``write``, as they are: nothing is encoded, and each vector keeps
the state a backfill judges it by (a current one stays current, a stale one stale). Then
PostgreSQL's keys a page at a time: those SQLite has no vector for are removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..rows import VectorRow
from .records import TableSpec

PAGE = 1_000


@dataclasses.dataclass
class Counts:
    """What a pass found (and, applying, did) for rows of one kind of thing."""

    copied: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        return self

    @property
    def seen(self) -> int:
        """The rows of the source looked at (removed ones are only on the copy)."""
        return self.copied + self.updated + self.unchanged

    @property
    def differing(self) -> int:
        return self.copied + self.updated + self.removed


Tick = Callable[[int], None]


def _columns(spec: TableSpec) -> str:
    return ", ".join(f'"{c.name}"' for c in spec.columns)  # names from the record class


def _links(db: Any, spec: TableSpec, ids: Sequence[int]) -> dict[int, tuple]:
    """id -> its link lists (one tuple per link field, ids in the order written)."""
    if not spec.links or not ids:
        return {}
    found: dict[int, list[list[int]]] = {rid: [[] for _ in spec.links] for rid in ids}
    marks = ",".join("?" * len(ids))
    for i, link in enumerate(spec.links):
        for owner, other in db._sql.execute(
            f"SELECT {link.owner}, {link.column} FROM {link.table} WHERE {link.owner} IN "
            f"({marks}) ORDER BY rowid", list(ids),
        ).fetchall():
            found[owner][i].append(other)
    return {rid: tuple(map(tuple, lists)) for rid, lists in found.items()}


def _read(db: Any, spec: TableSpec, where: str, args: Sequence[Any]) -> dict[int, tuple]:
    """id -> (its column values as stored, its link lists) for ``SELECT ... <where>``."""
    rows = db._sql.execute(f"SELECT id, {_columns(spec)} FROM {spec.table} {where}", args).fetchall()
    links = _links(db, spec, [row[0] for row in rows])
    return {row[0]: (tuple(row[1:]), links.get(row[0], ())) for row in rows}


def sync_table(src: Any, dst: Any, spec: TableSpec, *, apply: bool, tick: Tick | None = None,
               page: int = PAGE) -> Counts:
    """Make ``dst``'s table ``spec`` equal to ``src``'s (module docstring)."""
    counts = Counts()
    last: int | None = None  # the range of ids compared is (last, high]
    while True:
        above = ("WHERE id > ?", (last,)) if last is not None else ("", ())
        mine = _read(src, spec, f"{above[0]} ORDER BY id LIMIT ?", (*above[1], page))
        high = max(mine) if len(mine) == page else None  # None: the last page, to the end
        bounds = [*([("id > ?", last)] if last is not None else []),
                  *([("id <= ?", high)] if high is not None else [])]
        where = "WHERE " + " AND ".join(c for c, _ in bounds) if bounds else ""
        with dst.embedding_transaction():
            theirs = _read(dst, spec, where, [v for _, v in bounds])
            found = _compare(mine, theirs)
            if apply:
                _apply(src, dst, spec, mine, found)
        counts += Counts(len(found["copied"]), len(found["updated"]), len(found["removed"]),
                         found["unchanged"])
        if tick is not None:
            tick(len(mine))
        if high is None:
            return counts
        last = high


def _compare(mine: dict[int, tuple], theirs: dict[int, tuple]) -> dict[str, Any]:
    copied = [rid for rid in mine if rid not in theirs]
    updated = [rid for rid in mine if rid in theirs and theirs[rid] != mine[rid]]
    removed = [rid for rid in theirs if rid not in mine]
    unchanged = len(mine) - len(copied) - len(updated)
    return {"copied": copied, "updated": updated, "removed": removed, "unchanged": unchanged}


def _apply(src: Any, dst: Any, spec: TableSpec, mine: dict[int, tuple], found: dict) -> None:
    """One page's changes, inside the caller's transaction."""
    sql, table = dst._sql, spec.table
    gone, changed, new = found["removed"], found["updated"], found["copied"]
    try:
        for link in spec.links:
            stale = [*gone, *changed]
            if stale:
                sql.executemany(f"DELETE FROM {link.table} WHERE {link.owner} = ?",
                                [(rid,) for rid in stale])
        if gone:
            sql.executemany(f"DELETE FROM {table} WHERE id = ?", [(rid,) for rid in gone])
        if changed:
            assignments = ", ".join(f'"{c.name}" = ?' for c in spec.columns)
            sql.executemany(f"UPDATE {table} SET {assignments} WHERE id = ?",
                            [(*mine[rid][0], rid) for rid in changed])
        if new:
            marks = ", ".join("?" * (len(spec.columns) + 1))
            sql.executemany(f"INSERT INTO {table} (id, {_columns(spec)}) VALUES ({marks})",
                            [(rid, *mine[rid][0]) for rid in new])
        for i, link in enumerate(spec.links):
            pairs = [(rid, other) for rid in [*changed, *new] for other in mine[rid][1][i]]
            if pairs:
                sql.executemany(f"INSERT INTO {link.table} ({link.owner}, {link.column}) "
                                "VALUES (?, ?)", pairs)
    except dst._dialect.integrity_error as exc:
        raise InvalidInputError(f"table {table}: PostgreSQL refused a row: {exc}") from exc
    except InvalidInputError as exc:  # a value PostgreSQL cannot take: name the row
        rows = [rid for rid in [*changed, *new] if any(
            isinstance(v, str) and "\x00" in v for v in mine[rid][0])]
        which = (f"row {rows[0]} holds text with NUL characters, which PostgreSQL cannot store"
                 if rows else f"a row with id in {min(mine)}..{max(mine)}: {exc}")
        raise InvalidInputError(f"table {table}: {which}; fix it in SQLite and migrate again "
                                "(the rows before it are copied)") from exc
    if new:
        _advance_ids(src, dst, spec)


def _advance_ids(src: Any, dst: Any, spec: TableSpec) -> None:
    """Move the copy's id sequence past every id it holds and every id SQLite ever gave
    (``AUTOINCREMENT`` never reuses the id of a deleted row, so neither should the copy)."""
    has_sequence = src._sql.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone()
    given = src._sql.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (spec.table,)
                             ).fetchone() if has_sequence else None
    name = f"{dst.schema}.{spec.table}"  # checked identifiers: the class's own names
    dst._sql.execute(
        "SELECT setval(s.name, greatest(coalesce(pg_sequence_last_value(s.name::regclass), 0), "
        f"?, (SELECT coalesce(max(id), 0) FROM {spec.table}), 1)) "
        "FROM (SELECT pg_get_serial_sequence(?, 'id') AS name) s",
        (int(given[0]) if given else 0, name),
    )


# -- vectors ----------------------------------------------------------------------------------
def same_row(a: VectorRow, b: VectorRow) -> bool:
    """The same stored vector: state, keyword text and every float32 bit."""
    return (a.kind == b.kind and a.source_id == b.source_id and a.text_hash == b.text_hash
            and a.model == b.model and a.embedding_version == b.embedding_version
            and a.text == b.text and a.vector.shape == b.vector.shape
            and np.array_equal(np.asarray(a.vector, np.float32), np.asarray(b.vector, np.float32)))


def sync_vectors(src: Any, dst: Any, *, apply: bool, tick: Tick | None = None,
                 kinds: dict[str, list[int]] | None = None, page: int = PAGE) -> Counts:
    """Make ``dst``'s vectors equal to ``src``'s (module docstring). ``kinds``, if given,
    collects kind -> [vectors in src, vectors in dst]."""
    counts = Counts()
    source, copy = src._engine, dst._engine
    after = ""
    while True:
        keys = source.key_page(after, page)
        mine = source.rows_of(keys)
        theirs = copy.rows_of(list(mine))
        if kinds is not None:
            for side, rows in enumerate((mine, theirs)):
                for row in rows.values():
                    kinds.setdefault(row.kind, [0, 0])[side] += 1
        write = []
        for key, row in mine.items():
            other = theirs.get(key)
            if other is None:
                counts.copied += 1
                write.append(row)
            elif not same_row(row, other):
                counts.updated += 1
                write.append(row)
            else:
                counts.unchanged += 1
        if apply and write:
            copy.write(write, bulk=True)
        if tick is not None:
            tick(len(mine))
        if len(keys) < page:
            break
        after = keys[-1]
    after = ""
    while True:  # what the copy has and the source does not
        keys = copy.key_page(after, page)
        present = source.states_of(keys)
        gone = [key for key in keys if key not in present]
        counts.removed += len(gone)
        if kinds is not None and gone:
            for row in copy.rows_of(gone).values():
                kinds.setdefault(row.kind, [0, 0])[1] += 1
        if apply and gone:
            copy.remove(gone)
        if len(keys) < page:
            break
        after = keys[-1]
    if apply:
        copy.settle()  # after many rows: ANALYZE, so the planner uses the HNSW index
    return counts
