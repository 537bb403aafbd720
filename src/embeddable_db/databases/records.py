"""Records as dataclasses, and the tables derived from them.

One ``TableSpec`` per table turns a record dataclass into its table: a column per field, named
after the field (a trailing underscore dropped, so ``type_`` is the column ``type``), typed from
the annotation (``str``, ``int``, ``float``, ``bool`` as 0/1, ``list``/``dict`` as JSON text,
never comma-joined; each engine's column types and CREATE statements are in ``dialect.py``),
with the field's default as the column default so that rows inserted with plain SQL read back
sensibly. Fields declared with ``link_field`` are not columns: they are int lists kept in a
link table ``(<owner>_id, <column>)``, read back in the order they were written.

Every column name used in SQL comes from these specs, that is from the dataclasses: names a
caller passes (``update(**fields)``) are only looked up in that whitelist, never put into SQL.
Values are checked against the annotations before anything is written; timestamp fields
(declared with ``timestamps.created_now``) also take a datetime or epoch seconds.

Also here: the small text helpers every database builds its ``embedding_text`` from, so that
all six render lists, empty parts and long parts the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from ..errors import InvalidInputError
from .timestamps import is_timestamp, to_timestamp

LINK = "embeddable_db.link"
_TYPES = (str, int, float, bool, list, dict)  # the annotations a column may have
_EMPTY: dict[type, Any] = {str: "", int: 0, float: 0.0, bool: False}


def json_list() -> Any:
    """A list field, stored as a JSON array."""
    return dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Record:
    """Base of the record classes.

    ``id`` is the row id: None until ``add`` stores the record, then set by it (and by every
    read). It is keyword-only, so it never gets in the way of a record's positional fields.
    ``EMBEDDED_FIELDS`` names the fields ``embedding_text`` reads.
    """

    id: int | None = dataclasses.field(default=None, kw_only=True)

    EMBEDDED_FIELDS: ClassVar[tuple[str, ...]] = ()

    def embedding_text(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} must implement embedding_text()")


def row_id(record_id: Any) -> int:
    """A row id as given by a caller: an int (not a bool)."""
    if isinstance(record_id, bool) or not isinstance(record_id, numbers.Integral):
        raise InvalidInputError(f"record id must be an int, got {record_id!r}")
    return int(record_id)


def positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidInputError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def link_field() -> Any:
    """A list of int ids stored in a link table instead of a column."""
    return dataclasses.field(default_factory=list, metadata={LINK: True})


class RecordFormatError(InvalidInputError):
    """A row whose stored values do not fit its record class (e.g. a list column not JSON)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Column:
    field: str
    name: str
    type: type
    nullable: bool
    default: Any  # a plain default value, a default_factory, or dataclasses.MISSING


@dataclasses.dataclass(frozen=True, slots=True)
class Link:
    field: str
    table: str
    owner: str  # column naming the record: "<singular>_id"
    column: str  # column naming the linked id


class UnreadableRow:
    """Stands in for a row that cannot be read, so backfill reports it instead of stopping."""

    def __init__(self, record_id: int, error: Exception) -> None:
        self.id = record_id
        self.error = error

    def embedding_text(self) -> str:
        raise self.error


def _shape(hint: Any) -> tuple[type, bool]:
    """(base type, nullable) of an annotation such as ``str``, ``list[str]`` or ``int | None``."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported annotation {hint!r}")
        return _shape(args[0])[0], True
    base = origin or hint
    if base not in _TYPES:
        raise TypeError(f"unsupported annotation {hint!r}")
    return base, False


def _json(value: Any, where: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{where} must be JSON-serialisable: {exc}") from exc


class TableSpec:
    """How one record class is stored: its table, columns, link tables and embedding kind."""

    def __init__(
        self,
        table: str,
        record_type: type,
        kind: str,
        *,
        unique: Sequence[str] = (),
        indexed: Sequence[str] = (),
        touch: str | None = None,
    ) -> None:
        self.table = table
        self.record_type = record_type
        self.kind = kind
        self.touch = touch  # a date field set to now on every update
        self.unique = tuple(unique)
        self.indexed = tuple(indexed)
        hints = typing.get_type_hints(record_type)
        self.columns: list[Column] = []
        self.links: list[Link] = []
        owner = f"{kind}_id"
        self.timestamps: frozenset[str] = frozenset()
        for f in dataclasses.fields(record_type):
            if f.name == "id":
                continue
            if is_timestamp(f):
                if _shape(hints[f.name])[0] is not str:
                    raise TypeError(f"timestamp field {f.name!r} must be annotated str")
                self.timestamps |= {f.name}
            if f.metadata.get(LINK):
                column = f.name.removesuffix("s")  # model_ids -> enhancement_models.model_id
                link_table = f"{kind}_{column.removesuffix('_id')}s"
                self.links.append(Link(f.name, link_table, owner, column))
                continue
            base, nullable = _shape(hints[f.name])
            default = f.default_factory if f.default is dataclasses.MISSING else f.default
            self.columns.append(Column(f.name, f.name.rstrip("_"), base, nullable, default))
        self.by_field = {c.field: c for c in self.columns}
        self.links_by_field = {link.field: link for link in self.links}
        self.updatable = frozenset(self.by_field) | frozenset(self.links_by_field)
        self._names = ", ".join(f'"{c.name}"' for c in self.columns)

    # -- checking and converting values ----------------------------------------------------------
    def check_value(self, field: str, value: Any) -> Any:
        """The value normalised for the field, or an InvalidInputError naming what is wrong."""
        where = f"{self.record_type.__name__}.{field}"
        link = self.links_by_field.get(field)
        if link is not None:
            if not isinstance(value, list | tuple) or any(
                isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in value
            ):
                raise InvalidInputError(f"{where} must be a list of int ids, got {value!r}")
            return list(dict.fromkeys(int(v) for v in value))
        column = self.by_field[field]
        if value is None and column.nullable:
            return None
        if field in self.timestamps:
            return to_timestamp(value, where)
        kind = column.type
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        elif kind is float:
            ok = (
                isinstance(value, numbers.Real)
                and not isinstance(value, bool)
                and math.isfinite(float(value))
            )
        elif kind is list:
            ok = isinstance(value, list | tuple)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise InvalidInputError(
                f"{where} must be {'a finite ' if kind is float else ''}{kind.__name__}, "
                f"got {type(value).__name__}: {value!r}"[:300]
            )
        if kind in (list, dict):
            value = list(value) if kind is list else dict(value)
            _json(value, where)
            return value
        return kind(value)

    def check_fields(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``update(**fields)``: names from the whitelist, values of the right type."""
        unknown = sorted(set(fields) - self.updatable)
        if unknown:
            raise InvalidInputError(
                f"{self.record_type.__name__} has no field(s) {', '.join(map(repr, unknown))}: "
                f"choose from {', '.join(sorted(self.updatable))}"
            )
        return {name: self.check_value(name, value) for name, value in fields.items()}

    def check_record(self, record: Any) -> dict[str, Any]:
        """Every stored field of a record, checked: column values and link lists."""
        return self.check_fields(
            {name: getattr(record, name) for name in (*self.by_field, *self.links_by_field)}
        )

    def to_sql(self, field: str, value: Any) -> Any:
        column = self.by_field[field]
        if value is None:
            return None
        if column.type in (list, dict):
            return _json(value, field)
        if column.type is bool:
            return int(value)
        return value

    def _from_sql(self, column: Column, value: Any, record_id: int) -> Any:
        if value is None:
            if column.nullable:
                return None
            return [] if column.type is list else {} if column.type is dict else _EMPTY[column.type]
        try:
            if column.type in (list, dict):
                parsed = json.loads(value)
                if not isinstance(parsed, column.type):
                    raise ValueError(f"JSON holds a {type(parsed).__name__}")
                return parsed
            if column.type is str:
                return str(value)
            return column.type(value)
        except (TypeError, ValueError) as exc:
            raise RecordFormatError(
                f"{self.table} row {record_id}: column {column.name!r} holds {value!r}, "
                f"not a {column.type.__name__}"
                + (" as JSON" if column.type in (list, dict) else "")
                + f" ({exc}); fix it with SQL"
            ) from exc

    def from_values(self, record_id: int, values: Sequence[Any], links: Mapping[str, list]) -> Any:
        fields = {
            c.field: self._from_sql(c, v, record_id) for c, v in zip(self.columns, values, strict=True)
        }
        fields.update({link.field: list(links.get(link.field, ())) for link in self.links})
        return self.record_type(**fields, id=record_id)

    def from_mapping(self, row: Any) -> Any:
        """A record from a row keyed by column names (a ``sqlite3.Row`` or a dict)."""
        keys = set(row.keys())
        values = [row[c.name] if c.name in keys else None for c in self.columns]
        record_id = row["id"] if "id" in keys else None
        record = self.from_values(record_id or 0, values, {})
        record.id = record_id
        return record

    # -- SQL -------------------------------------------------------------------------------------
    def insert(self, conn: Any, checked: Mapping[str, Any]) -> int:
        marks = ", ".join("?" * len(self.columns))
        ((record_id,),) = conn.execute(
            f"INSERT INTO {self.table} ({self._names}) VALUES ({marks}) RETURNING id",
            [self.to_sql(c.field, checked[c.field]) for c in self.columns],
        ).fetchall()
        # replace: link rows a plain-SQL writer left for a deleted row of this id are not the
        # new record's (it reads back with exactly its own links, and its vector says so)
        self.write_links(conn, record_id, checked, replace=True)
        return record_id

    def update(self, conn: Any, record_ids: Sequence[int], changes: Mapping[str, Any]) -> None:
        """Set the same checked ``changes`` on every row in ``record_ids``."""
        columns = [f for f in changes if f in self.by_field]
        if columns:
            assignments = ", ".join(f'"{self.by_field[f].name}" = ?' for f in columns)
            values = [self.to_sql(f, changes[f]) for f in columns]
            conn.executemany(
                f"UPDATE {self.table} SET {assignments} WHERE id = ?",
                [(*values, rid) for rid in record_ids],
            )
        for rid in record_ids:
            self.write_links(conn, rid, changes, replace=True)

    def write_links(
        self, conn: Any, record_id: int, values: Mapping[str, Any], *, replace: bool = False
    ) -> None:
        for link in self.links:
            if link.field not in values:
                continue
            if replace:
                conn.execute(f"DELETE FROM {link.table} WHERE {link.owner} = ?", (record_id,))
            conn.executemany(
                f"INSERT INTO {link.table} ({link.owner}, {link.column}) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                [(record_id, other) for other in values[link.field]],
            )

    def delete(self, conn: Any, record_id: int) -> bool:
        for link in self.links:
            conn.execute(f"DELETE FROM {link.table} WHERE {link.owner} = ?", (record_id,))
        return conn.execute(f"DELETE FROM {self.table} WHERE id = ?", (record_id,)).rowcount > 0

    def select(self, conn: Any, where: str = "", args: Sequence[Any] = (), *, lenient: bool = False):
        """Records for ``SELECT ... FROM table <where>`` (``where`` is our own SQL, never input).

        With ``lenient``, a row that cannot be read comes back as an ``UnreadableRow``.
        """
        rows = conn.execute(f"SELECT id, {self._names} FROM {self.table} {where}", args).fetchall()
        links = self._links_of(conn, [row[0] for row in rows])
        records = []
        for row in rows:
            try:
                records.append(self.from_values(row[0], row[1:], links.get(row[0], {})))
            except RecordFormatError as exc:
                if not lenient:
                    raise
                records.append(UnreadableRow(row[0], exc))
        return records

    def _links_of(self, conn: Any, record_ids: list[int]) -> dict[int, dict[str, list[int]]]:
        found: dict[int, dict[str, list[int]]] = {}
        if not self.links or not record_ids:
            return found
        marks = ",".join("?" * len(record_ids))
        for link in self.links:
            rows = conn.execute(
                f"SELECT {link.owner}, {link.column} FROM {link.table} "
                f"WHERE {link.owner} IN ({marks}) ORDER BY rowid",
                record_ids,
            )
            for owner, other in rows:
                found.setdefault(owner, {}).setdefault(link.field, []).append(other)
        return found


# -- text helpers shared by the six embedding_text() methods ----------------------------------------
def listed(items: Iterable[Any], sep: str = ", ") -> str:
    """List items as text, in order, blanks dropped."""
    return sep.join(text for item in items if (text := str(item).strip()))


def clip(text: str, limit: int, *, tail: bool = False) -> str:
    """At most ``limit`` characters (the end of the text with ``tail``), marked with an ellipsis."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return "…" + text[-limit:].lstrip() if tail else text[:limit].rstrip() + "…"


def compose(head: str, *parts: tuple[str, str]) -> str:
    """A head line, then one ``Label: value`` line per non-empty part; "" when all are empty."""
    lines = [head.strip()] if head and head.strip() else []
    lines += [f"{label}: {value.strip()}" for label, value in parts if value and value.strip()]
    return "\n".join(lines)
