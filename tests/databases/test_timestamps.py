"""Timestamps as the earlier implementation's records held them (epoch seconds) or as a caller
holds them (``datetime``) are stored as the UTC ISO strings the databases use, on ``add`` and on
``update``; anything that is not a time is refused with a message saying what to give.

Every timestamp field of every record class of the six databases is covered: the fields are
found in the record classes (a field whose default is a fresh ISO timestamp), so a new one is
tested without editing this file.
"""

from __future__ import annotations

import dataclasses
import re
import time
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pytest

import embeddable_db as edb
from embeddable_db import InvalidInputError

from .cases import CASES, rows

STORED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")

# One record of each class, with something to embed; ``i`` keeps unique messages unique.
SAMPLES = {
    edb.BotRecord: lambda i: edb.BotRecord(f"bot {i}", purpose=f"sorts mail {i}"),
    edb.WorkflowRecord: lambda i: edb.WorkflowRecord(["fetch", "send"], title=f"flow {i}"),
    edb.Enhancement: lambda i: edb.Enhancement(f"cache the results {i}"),
    edb.ErrorRecord: lambda i: edb.ErrorRecord(f"disk full {i}"),
    edb.KnownError: lambda i: edb.KnownError(f"timeout {i}", solution="retry"),
    edb.Discrepancy: lambda i: edb.Discrepancy(f"totals differ {i}"),
    edb.TelemetryEvent: lambda i: edb.TelemetryEvent(task_id=f"t{i}", error_type="KeyError"),
    edb.ResearchItem: lambda i: edb.ResearchItem(f"solar panels {i}", content="efficiency"),
    edb.InformationRecord: lambda i: edb.InformationRecord("market_report", summary=f"prices {i}"),
}

KNOWN = {
    "BotRecord.creation_date", "BotRecord.last_modification_date", "WorkflowRecord.timestamp",
    "Enhancement.timestamp", "ErrorRecord.timestamp", "KnownError.timestamp",
    "Discrepancy.timestamp", "TelemetryEvent.timestamp", "ResearchItem.timestamp",
    "InformationRecord.date_collected",
}
TIMELY_NAME = re.compile(r"(^|_)(date|time|timestamp|when)(_|$)|_at$")


def _is_timestamp(field: dataclasses.Field) -> bool:
    """A field whose default is a fresh ISO timestamp (whatever helper declared it)."""
    if field.default_factory is dataclasses.MISSING:
        return False
    value = field.default_factory()
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _specs():
    for name, case in CASES.items():
        for spec in case.cls.tables:
            yield name, case.cls, spec


def _timestamp_fields():
    return [
        pytest.param(cls, spec.kind, spec.record_type, field.name,
                     id=f"{name}-{spec.kind}-{field.name}")
        for name, cls, spec in _specs()
        for field in dataclasses.fields(spec.record_type)
        if _is_timestamp(field)
    ]


FIELDS = _timestamp_fields()


def test_the_timestamp_fields_are_found():
    found = {f"{p.values[2].__name__}.{p.values[3]}" for p in FIELDS}
    assert KNOWN <= found
    for _, _, spec in _specs():
        assert spec.record_type in SAMPLES, f"add a sample {spec.record_type.__name__} above"
        for field in dataclasses.fields(spec.record_type):
            if TIMELY_NAME.search(field.name):  # a time field not declared as a timestamp
                assert f"{spec.record_type.__name__}.{field.name}" in found


OFFSET = timezone(timedelta(hours=2))
ACCEPTED = [
    (datetime(2024, 5, 1, 14, 30, 0, 250, tzinfo=OFFSET), "2024-05-01T12:30:00.000250+00:00"),
    (datetime(2024, 5, 1, 12, 0), "2024-05-01T12:00:00.000000+00:00"),  # naive: already UTC
    (datetime(2024, 5, 1, 12, 0, tzinfo=UTC), "2024-05-01T12:00:00.000000+00:00"),
    (1700000000.123456, "2023-11-14T22:13:20.123456+00:00"),  # sub-second kept to the µs
    (1700000000, "2023-11-14T22:13:20.000000+00:00"),
    (0, "1970-01-01T00:00:00.000000+00:00"),
    (-1.5, "1969-12-31T23:59:58.500000+00:00"),
    (np.float64(1700000000.5), "2023-11-14T22:13:20.500000+00:00"),
    (np.float32(1.25), "1970-01-01T00:00:01.250000+00:00"),
    (np.int64(1700000000), "2023-11-14T22:13:20.000000+00:00"),
    (-62135596800, "0001-01-01T00:00:00.000000+00:00"),
    (253402300799, "9999-12-31T23:59:59.000000+00:00"),
    ("2024-05-01T12:00:00+00:00", "2024-05-01T12:00:00+00:00"),  # a string is kept as given
]

GIVE = "must be a UTC ISO str, a datetime or epoch seconds"
RANGE = "outside datetime's range"
REFUSED = [
    (True, GIVE + r".*got bool"),
    (False, GIVE + r".*got bool"),
    (np.bool_(True), GIVE),
    (float("nan"), "must be finite epoch seconds"),
    (float("inf"), "must be finite epoch seconds"),
    (-np.inf, "must be finite epoch seconds"),
    (1e20, RANGE),
    (1700000000000 * 1000, RANGE),  # microseconds since the epoch
    (10**400, RANGE),
    (-62135596801, RANGE),
    (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))), "outside years 1 to 9999"),
    (date(2024, 5, 1), r"not a date.*datetime\(2024, 5, 1, tzinfo=UTC\)"),
    (None, GIVE),
    (b"2024-05-01", GIVE),
    (Decimal("1700000000"), GIVE),
    (np.datetime64("2024-05-01"), GIVE),
    ([1700000000], GIVE),
]


def _column(db, table: str, field: str, record_id: int):
    ((value,),) = rows(db, f'SELECT "{field.rstrip("_")}" FROM {table} WHERE id = ?', (record_id,))
    return value


@pytest.mark.parametrize(("cls", "kind", "record_type", "field"), FIELDS)
def test_add_stores_datetimes_and_epoch_seconds_as_utc_iso(open_db, cls, kind, record_type, field):
    db = open_db(cls)
    table = db._spec(kind).table
    for i, (given, stored) in enumerate(ACCEPTED):
        record = dataclasses.replace(SAMPLES[record_type](i), **{field: given})
        record_id = db.add(record)
        assert getattr(record, field) == stored, given  # the instance holds what was stored
        assert getattr(db.get(record_id, kind=kind), field) == stored, given
        assert _column(db, table, field, record_id) == stored, given


@pytest.mark.parametrize(("cls", "kind", "record_type", "field"), FIELDS)
def test_update_stores_datetimes_and_epoch_seconds_as_utc_iso(open_db, cls, kind, record_type, field):
    db = open_db(cls)
    table = db._spec(kind).table
    record_id = db.add(SAMPLES[record_type](0))
    for given, stored in ACCEPTED:
        updated = db.update(record_id, kind=kind, **{field: given})
        assert getattr(updated, field) == stored, given
        assert getattr(db.get(record_id, kind=kind), field) == stored, given
        assert _column(db, table, field, record_id) == stored, given


@pytest.mark.parametrize(("cls", "kind", "record_type", "field"), FIELDS)
def test_what_is_not_a_time_is_refused_and_nothing_written(open_db, cls, kind, record_type, field):
    db = open_db(cls)
    kept = SAMPLES[record_type](0)
    record_id = db.add(kept)
    where = re.escape(f"{record_type.__name__}.{field}")
    for i, (given, message) in enumerate(REFUSED, start=1):
        record = dataclasses.replace(SAMPLES[record_type](i), **{field: given})
        with pytest.raises(InvalidInputError, match=where + ".*" + message):
            db.add(record)
        assert record.id is None and getattr(record, field) is given
        with pytest.raises(InvalidInputError, match=where + ".*" + message):
            db.update(record_id, kind=kind, **{field: given})
    assert db.count(kind=kind) == 1
    assert db.get(record_id, kind=kind) == kept


@pytest.mark.parametrize(("cls", "kind", "record_type", "field"), FIELDS)
def test_stored_strings_sort_in_time_order(open_db, cls, kind, record_type, field):
    """Converted values, defaults taken now and ISO strings all have one format, so both
    Python and SQL (``ORDER BY``) sort them as the times they are."""
    db = open_db(cls)
    now = time.time()
    times = [now, 0, 1700000000, 1700000000.000001, now - 0.5, 1e9, -1.5, 1699999999.999999]
    givens = [
        *times[:-1],
        datetime.fromtimestamp(times[-1], UTC).astimezone(OFFSET),  # same moment, other zone
    ]
    for i, given in enumerate(givens):
        db.add(dataclasses.replace(SAMPLES[record_type](i), **{field: given}))
    default = SAMPLES[record_type](len(givens))  # its timestamp: taken now, after `now`
    db.add(default)
    times.append(datetime.fromisoformat(getattr(default, field)).timestamp())
    stored = [getattr(r, field) for r in sorted(db.fetch(100, kind=kind), key=lambda r: r.id)]
    assert all(STORED.fullmatch(value) for value in stored), stored
    by_time = [stored[i] for i in sorted(range(len(times)), key=times.__getitem__)]
    assert sorted(stored) == by_time
    column = field.rstrip("_")
    table = db._spec(kind).table
    in_sql = [v for (v,) in rows(db, f'SELECT "{column}" FROM {table} ORDER BY "{column}"')]
    assert in_sql == by_time


def test_a_naive_datetime_is_utc_not_the_machine_local_time(open_db, monkeypatch):
    monkeypatch.setenv("TZ", "XYZ-05:30")  # a POSIX zone: needs no tz database
    time.tzset()
    try:
        assert datetime(2024, 5, 1, 12).astimezone().utcoffset() == timedelta(hours=5, minutes=30)
        db = open_db(edb.InfoDB)
        item = edb.ResearchItem("tides", timestamp=datetime(2024, 5, 1, 12))
        db.add(item)
        assert db.get(item.id).timestamp == "2024-05-01T12:00:00.000000+00:00"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_error_db_helpers_take_epoch_seconds_too(open_db):
    db = open_db(edb.ErrorDB)
    first = db.add_error("disk full", timestamp=1700000000.5)
    assert db.get(first).timestamp == "2023-11-14T22:13:20.500000+00:00"
    event = edb.TelemetryEvent(task_id="t1", error_type="KeyError", timestamp=1700000000)
    db.add_telemetry(event)
    assert db.get(event.id, kind="telemetry").timestamp == "2023-11-14T22:13:20.000000+00:00"
    with pytest.raises(InvalidInputError, match="ErrorRecord.timestamp .*got bool"):
        db.add_error("other error", timestamp=True)
    assert db.count() == 1


def test_bot_update_without_a_date_still_touches_it_in_the_stored_format(open_db):
    db = open_db(edb.BotDB)
    bot = edb.BotRecord("reporter", purpose="weekly reports", last_modification_date=0)
    db.add(bot)
    assert bot.last_modification_date == "1970-01-01T00:00:00.000000+00:00"
    updated = db.update(bot.id, status="retired")
    assert STORED.fullmatch(updated.last_modification_date)
    assert updated.last_modification_date > bot.last_modification_date
