"""What a user's table looks like, read from SQLite itself, and the SQL built on it.

A ``TableStore`` works on a table nobody here wrote, so nothing about it is assumed: its
columns, primary key, unique indexes and whether it has a rowid are read from ``PRAGMA``s,
every name the caller gives is checked against them (case-insensitively, as SQLite does) and
replaced by the schema's own spelling, and every identifier that reaches SQL is quoted
(``quote``). Values are always bound.

The developer's ``where`` condition is the one piece of SQL text taken from outside. It is
compiled once, in two positions, under an authorizer that allows reading this table's columns
and calling functions only: anything else (another table, a write, a PRAGMA, a second
statement) is refused before it is used. The authorizer also reports which columns the
condition reads, so the update trigger can watch exactly those (``changes.py``).
"""

from __future__ import annotations

import re
import sqlite3
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError

#: Aliases SQLite accepts for the rowid; the first that is not a real column is used.
ROWID_ALIASES = ("rowid", "_rowid_", "oid")


def quote(name: str) -> str:
    """An SQL identifier, quoted: any name, even one with quotes or spaces, is one name."""
    return '"' + name.replace('"', '""') + '"'


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "(none)"


@dataclass(frozen=True)
class TableInfo:
    """One table of a database: its real name and columns, key and unique constraints."""

    schema: str  #: "main", or the attached name when the vectors live in another file
    name: str
    columns: tuple[str, ...]
    primary_key: tuple[str, ...]
    has_rowid: bool
    #: Column lists of the unique indexes (the primary key's included); expression indexes
    #: cannot be listed and are counted in ``expression_unique``.
    unique: tuple[tuple[str, ...], ...]
    expression_unique: int

    @property
    def qualified(self) -> str:
        return f"{quote(self.schema)}.{quote(self.name)}"

    def column(self, name: Any, what: str) -> str:
        """The schema's spelling of column ``name``; unknown: an error listing the real ones."""
        if isinstance(name, str):
            for column in self.columns:
                if column.lower() == name.lower():
                    return column
        raise InvalidInputError(
            f"{what}: table {self.name!r} has no column {name!r}; its columns are "
            f"{_listed(self.columns)}"
        )

    def rowid_alias(self) -> str:
        taken = {column.lower() for column in self.columns}
        for alias in ROWID_ALIASES:
            if alias not in taken:
                return alias
        raise InvalidInputError(
            f"table {self.name!r} has columns named rowid, _rowid_ and oid, so its rowid "
            "cannot be named: give key= one of its unique columns"
        )


def tables_of(conn: sqlite3.Connection, schema: str) -> list[str]:
    """The ordinary tables of ``schema``: not SQLite's own, not views, and not those of an
    embeddings store (a table ``X`` beside ``X_meta``, and the ``X_...`` tables with them)."""
    names = [
        row[0]
        for row in conn.execute(
            f"SELECT name FROM {quote(schema)}.sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    present = set(names)
    stores = [n[: -len("_meta")] for n in names if n.endswith("_meta") and n[: -len("_meta")] in present]
    return [n for n in names if not any(n == s or n.startswith(s + "_") for s in stores)]


def describe(conn: sqlite3.Connection, schema: str, table: Any) -> TableInfo:
    """The table named ``table`` (any case) in ``schema``; unknown: an error listing the tables."""
    if not isinstance(table, str) or not table:
        raise InvalidInputError(f"table must be a non-empty str, got {table!r}")
    master = f"{quote(schema)}.sqlite_master"
    row = conn.execute(
        f"SELECT name, type, sql FROM {master} WHERE lower(name) = lower(?) "
        "AND type IN ('table', 'view')",
        (table,),
    ).fetchone()
    if row is None:
        raise InvalidInputError(
            f"there is no table {table!r} in this database; its tables are "
            f"{_listed(tables_of(conn, schema))}"
        )
    name, kind, sql = row
    if kind != "table" or (sql or "").lstrip()[:20].upper().startswith("CREATE VIRTUAL"):
        raise InvalidInputError(
            f"{name!r} is a {'view' if kind == 'view' else 'virtual table'}, not a table: "
            "embed the table it reads from"
        )
    pragma = f"{quote(schema)}.table_xinfo({quote(name)})"
    info = conn.execute(f"PRAGMA {pragma}").fetchall()
    columns = tuple(r[1] for r in info if r[6] == 0)  # hidden 0: ordinary columns
    primary = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
    options = (sql or "").rsplit(")", 1)[-1]  # the table options follow the last parenthesis
    has_rowid = re.search(r"\bWITHOUT\s+ROWID\b", options, re.IGNORECASE) is None
    unique: list[tuple[str, ...]] = []
    expressions = 0
    for index in conn.execute(f"PRAGMA {quote(schema)}.index_list({quote(name)})").fetchall():
        if not index[2]:
            continue
        parts = conn.execute(
            f"PRAGMA {quote(schema)}.index_info({quote(index[1])})"
        ).fetchall()
        if any(part[1] < 0 or part[2] is None for part in parts):
            expressions += 1
            continue
        unique.append(tuple(part[2] for part in parts))
    if primary and tuple(primary) not in unique:  # INTEGER PRIMARY KEY has no index of its own
        unique.append(primary)
    return TableInfo(schema, name, columns, primary, has_rowid, tuple(unique), expressions)


@dataclass(frozen=True)
class Key:
    """The column whose value names a row's vector: the primary key, a unique column or the
    rowid. ``expr`` is how SQL reads it, ``column`` the real column (None for the rowid)."""

    column: str | None
    expr: str

    @property
    def name(self) -> str:
        return self.column if self.column is not None else self.expr


def choose_key(info: TableInfo, key: Any) -> Key:
    """``key`` checked to be unique (the primary key, a unique index, or the rowid); by
    default the one-column primary key, else the rowid."""
    if key is None:
        if len(info.primary_key) == 1:
            return Key(info.primary_key[0], quote(info.primary_key[0]))
        if not info.has_rowid:
            raise InvalidInputError(
                f"table {info.name!r} has no one-column primary key and no rowid: give key= "
                f"a column with a unique index (its columns are {_listed(info.columns)})"
            )
        return Key(None, info.rowid_alias())
    if isinstance(key, str) and key.lower() in ROWID_ALIASES and info.has_rowid and not any(
        c.lower() == key.lower() for c in info.columns
    ):
        return Key(None, info.rowid_alias())
    column = info.column(key, "key")
    if (column,) not in info.unique:
        raise InvalidInputError(
            f"key {column!r} is not unique in table {info.name!r}: a key names one row, so it "
            f"must be the primary key or have a unique index; unique: "
            f"{_listed([', '.join(u) for u in info.unique]) if info.unique else '(none)'}"
            + (", or the rowid" if info.has_rowid else "")
        )
    return Key(column, quote(column))


def check_where(conn: sqlite3.Connection, info: TableInfo, where: Any) -> tuple[str | None, tuple[str, ...]]:
    """(the condition, the columns it reads); None stays None. Refused unless it is one
    expression that reads only this table's columns (see the module docstring)."""
    if where is None:
        return None, ()
    if not isinstance(where, str) or not where.strip():
        raise InvalidInputError(f"where must be an SQL condition (a non-empty str), got {where!r}")
    read: set[str] = set()
    refused: list[str] = []

    def authorize(action: int, arg1: Any, arg2: Any, db: Any, _source: Any) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ and (arg1 or "").lower() == info.name.lower() and (
            db == info.schema
        ):
            if arg2:
                read.add(arg2.lower())
            return sqlite3.SQLITE_OK
        refused.append(f"{arg1}.{arg2}" if action == sqlite3.SQLITE_READ else f"action {action}")
        return sqlite3.SQLITE_DENY

    conn.set_authorizer(authorize)
    try:
        for sql in (
            f"SELECT 1 FROM {info.qualified} WHERE ({where}) LIMIT 0",
            f"SELECT ({where}) FROM {info.qualified} LIMIT 0",
        ):
            conn.execute(sql).fetchall()
    except (sqlite3.Error, sqlite3.Warning) as exc:
        why = (f"it may only read columns of {info.name!r} (it reads {', '.join(refused)})"
               if refused else str(exc))
        raise InvalidInputError(
            f"where {where!r} is not a condition on table {info.name!r}: {why}"
        ) from None
    finally:
        conn.set_authorizer(None)
    columns = tuple(c for c in info.columns if c.lower() in read)
    return where, columns


@dataclass(frozen=True)
class TextSpec:
    """What text a row is embedded from: its ``columns`` joined by newlines, or a
    ``template`` such as ``"{title}: {body}"`` whose fields are column names."""

    columns: tuple[str, ...]  #: the columns read (a template's fields, in order, once each)
    pieces: tuple[tuple[str, str | None], ...] | None  #: (literal, column) of a template
    template: str | None

    def text(self, row: dict[str, Any]) -> str:
        if self.pieces is None:
            return "\n".join(part for part in (as_text(row[c]) for c in self.columns) if part.strip())
        return "".join(literal + ("" if column is None else as_text(row[column]))
                       for literal, column in self.pieces)

    def settings(self) -> dict[str, Any]:
        return {"columns": None if self.pieces is not None else list(self.columns),
                "template": self.template}


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def text_spec(info: TableInfo, columns: Any, template: Any) -> TextSpec:
    """Exactly one of ``columns`` (names) and ``template`` (``str.format`` fields naming
    columns, nothing else), checked against the table."""
    if (columns is None) == (template is None):
        raise InvalidInputError(
            "give exactly one of columns=[...] (the columns whose text is embedded) and "
            "template='{title}: {body}' (a text with column names in braces)"
        )
    if columns is not None:
        if isinstance(columns, str) or not isinstance(columns, Sequence) or not columns:
            raise InvalidInputError(
                f"columns must be a non-empty list of column names, got {columns!r}"
            )
        names = tuple(dict.fromkeys(info.column(c, "columns") for c in columns))
        return TextSpec(names, None, None)
    if not isinstance(template, str) or not template.strip():
        raise InvalidInputError(f"template must be a non-empty str, got {template!r}")
    pieces: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidInputError(
            f"template {template!r}: {exc} (write a literal brace as {{{{ or }}}})"
        ) from None
    for literal, field, spec, conversion in parsed:
        if field is None:
            pieces.append((literal, None))
            continue
        if spec or conversion or not field:
            raise InvalidInputError(
                f"template {template!r}: each field is a plain column name such as {{title}}, "
                f"got {{{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
            )
        pieces.append((literal, info.column(field, f"template field {{{field}}}")))
    names = tuple(dict.fromkeys(column for _, column in pieces if column is not None))
    if not names:
        raise InvalidInputError(
            f"template {template!r} names no column: put column names in braces, e.g. {{title}}"
        )
    return TextSpec(names, tuple(pieces), template)
