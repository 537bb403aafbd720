"""Timestamp fields: how a record class declares one, and the one conversion all of them use.

A timestamp is stored as a UTC ISO string with microseconds, ``2024-05-01T12:00:00.000000+00:00``:
one fixed format, so stored strings compare and sort in time order. The earlier implementation's
records held epoch seconds (floats), and callers naturally hold ``datetime`` objects, so
``add(record)`` and ``update(id, field=value)`` also take those and store the ISO string.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ..errors import InvalidInputError

TIMESTAMP = "embeddable_db.timestamp"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The epoch seconds datetime can hold (years 1 to 9999), for error messages.
_FIRST = int((datetime(1, 1, 1, tzinfo=UTC) - EPOCH).total_seconds())
_LAST = int((datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - EPOCH).total_seconds())
_ACCEPTED = "a UTC ISO str, a datetime or epoch seconds (int or float)"


def iso(moment: datetime) -> str:
    """The stored form of an aware datetime: UTC, always with microseconds and ``+00:00``."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def utc_now() -> str:
    """The UTC time now, in the stored form: the default of every record's timestamp field."""
    return iso(datetime.now(UTC))


def created_now() -> Any:
    """A timestamp field (annotated ``str``), set to the time at which the record object is made.

    Only fields declared this way are converted by ``to_timestamp``: declare every timestamp
    field with it."""
    return dataclasses.field(default_factory=utc_now, metadata={TIMESTAMP: True})


def is_timestamp(field: dataclasses.Field) -> bool:
    return bool(field.metadata.get(TIMESTAMP))


def to_timestamp(value: Any, where: str) -> str:
    """The stored string for a value given to a timestamp field, or an ``InvalidInputError``.

    * ``str``: kept as given (as before; it is the caller's ISO string).
    * ``datetime``: an aware one is converted to UTC; a naive one is taken to be UTC already
      (never local time, which would make the stored value depend on the machine).
    * ``int``/``float`` (numpy's too): seconds since 1970-01-01 UTC, kept to the microsecond.
    * refused: ``bool`` (``True`` is an int, not a time), NaN and infinities, values outside
      datetime's years 1 to 9999, and a ``date`` without a time: it says neither the time of
      day nor the zone, so the caller chooses, e.g. ``datetime(2024, 5, 1, tzinfo=UTC)``.
    """
    if isinstance(value, str):
        return str(value)
    if isinstance(value, datetime):
        return _from_datetime(value, where)
    if isinstance(value, date):
        raise InvalidInputError(
            f"{where} takes a datetime, not a date ({value!r}): a date has no time of day or "
            f"zone; for midnight UTC give datetime({value.year}, {value.month}, {value.day}, "
            "tzinfo=UTC)"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(
            f"{where} must be {_ACCEPTED}, got {type(value).__name__}: {value!r}"[:300]
        )
    return _from_epoch(value, where)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _from_datetime(value: datetime, where: str) -> str:
    if value.utcoffset() is None:  # naive: UTC, not the machine's local time
        value = value.replace(tzinfo=UTC)
    try:
        moment = value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise InvalidInputError(
            f"{where}: {value!r} is outside years 1 to 9999 once converted to UTC"
        ) from exc
    # A plain datetime, so that a subclass (pandas' Timestamp) cannot change the format.
    moment = datetime(
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second,
        moment.microsecond, tzinfo=UTC,
    )
    return iso(moment)


def _from_epoch(value: numbers.Real, where: str) -> str:
    try:
        seconds = int(value) if isinstance(value, numbers.Integral) else float(value)
        if not math.isfinite(seconds):
            raise InvalidInputError(
                f"{where} must be finite epoch seconds (seconds since 1970-01-01 UTC), "
                f"got {_shown(value)}"
            )
        return iso(EPOCH + timedelta(seconds=seconds))
    except OverflowError as exc:
        raise InvalidInputError(
            f"{where}: epoch seconds {_shown(value)} are outside datetime's range (years 1 to "
            f"9999: {_FIRST} to {_LAST}); give seconds since 1970-01-01 UTC (milliseconds / 1000)"
        ) from exc
