"""Field filters for searches (``where=``): a dict checked against known fields, compiled to a
SQL condition whose values are all bound parameters.

``{"status": "open"}`` is ``status = ?``; ``{"score": (">=", 3)}`` is ``score >= ?``;
``{"kind": ("in", ["a", "b"])}`` is ``kind IN (?, ?)``; ``{"name": ("like", "%bot%")}`` is
``name LIKE ?``. Conditions are joined by AND. Field names are looked up in the caller's
whitelist (a record dataclass's fields, a table's columns), whose values are the quoted column
expressions: no name or value the user typed is ever put into SQL. ``None`` compares as SQL's
``IS`` / ``IS NOT`` (``= NULL`` would match nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidInputError

#: The operators a filter may use, as the user writes them -> as SQL writes them.
OPERATORS = {"=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=",
             "in": "IN", "like": "LIKE"}
#: At most this many values in one ``in`` list (SQLite binds up to 32,766 per statement).
MAX_IN_VALUES = 10_000
_SCALARS = (str, int, float, bytes, type(None))
_CLI_SYMBOLS = ("<=", ">=", "!=", "=", "<", ">", "~")


class UnknownFieldError(InvalidInputError):
    """A filter named a field that does not exist (a ``ValueError``)."""


def _value(value: Any, field: str) -> Any:
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, _SCALARS):
        raise InvalidInputError(
            f"where[{field!r}]: compare with a str, int, float, bytes or None, "
            f"not {type(value).__name__}"
        )
    return value


def _condition(column: str, field: str, spec: Any, like: str) -> tuple[str, list[Any]]:
    op, value = ("=", spec) if not isinstance(spec, tuple) else _pair(spec, field)
    if op == "in":
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            raise InvalidInputError(f"where[{field!r}]: 'in' takes a list of values")
        values = [_value(v, field) for v in value]
        if not values:
            return "FALSE", []  # in an empty list: nothing matches
        if len(values) > MAX_IN_VALUES:
            raise InvalidInputError(
                f"where[{field!r}]: 'in' takes at most {MAX_IN_VALUES:,} values"
            )
        return f"{column} IN ({', '.join('?' * len(values))})", values
    value = _value(value, field)
    if value is None:
        if op not in ("=", "!="):
            raise InvalidInputError(f"where[{field!r}]: None compares only with = or !=")
        return f"{column} IS {'NOT ' if op == '!=' else ''}NULL", []
    if op == "like":
        if not isinstance(value, str):
            raise InvalidInputError(f"where[{field!r}]: 'like' takes a str pattern")
        return like.format(column=column), [value]
    return f"{column} {OPERATORS[op]} ?", [value]


def _pair(spec: tuple, field: str) -> tuple[str, Any]:
    if len(spec) != 2 or not isinstance(spec[0], str) or spec[0].lower() not in OPERATORS:
        raise InvalidInputError(
            f"where[{field!r}] must be a value or an (operator, value) pair with an operator "
            f"among {' '.join(OPERATORS)}; got {spec!r}"
        )
    return spec[0].lower(), spec[1]


def compile_where(
    where: Mapping[str, Any] | None, columns: Mapping[str, str], what: str, *,
    like: str = "{column} LIKE ?",
) -> tuple[str, list[Any]]:
    """``(sql condition, parameters)`` for ``where``; ``("TRUE", [])`` when there is none.

    ``columns``: the valid field names -> their quoted column expression; ``what`` names the
    records in errors (e.g. ``"Bot"``); ``like``: the ``like`` condition, ``{column}`` and one
    ``?`` (PostgreSQL's ``ILIKE`` keeps SQLite's rules: ``databases/dialect.py``)."""
    if where is None:
        return "TRUE", []
    if not isinstance(where, Mapping):
        raise InvalidInputError(
            f"where must be a dict of field -> value or field -> (operator, value), "
            f"got {type(where).__name__}"
        )
    parts, params = [], []
    for field, spec in where.items():
        column = columns.get(field) if isinstance(field, str) else None
        if column is None:
            raise UnknownFieldError(
                f"{what} has no field {field!r}; filter on one of: {', '.join(sorted(columns))}"
            )
        sql, values = _condition(column, field, spec, like)
        parts.append(sql)
        params += values
    return (" AND ".join(parts) or "TRUE"), params


def parse_where_option(text: str) -> tuple[str, tuple[str, str]]:
    """A command line's ``FIELD=VALUE``, ``FIELD>=VALUE`` (any operator; ``FIELD~VALUE`` is
    like) as ``(field, (operator, value))``; the value stays text (SQLite compares a numeric
    text with a number column as a number: column affinity)."""
    found = [(text.find(symbol), -len(symbol), symbol) for symbol in _CLI_SYMBOLS]
    found = sorted(hit for hit in found if hit[0] > 0)  # the first operator; "<=" before "<"
    if found and text[: found[0][0]].strip():
        at, _, symbol = found[0]
        op = "like" if symbol == "~" else symbol
        return text[:at].strip(), (op, text[at + len(symbol) :])
    raise InvalidInputError(
        f"--where {text!r}: write FIELD=VALUE, or FIELD!=, <, <=, >, >= VALUE, or FIELD~PATTERN "
        "(like)"
    )
