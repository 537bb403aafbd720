"""What all six databases do alike, run once per database (the ``case`` fixture) and, through
``open_db``, on both engines (``conftest.py``)."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest

from embeddable_db import (
    REGISTRY,
    EmbeddingError,
    InvalidInputError,
    SearchHit,
    StoreConflictError,
)

from .cases import NEW_WORDS, fill, on_postgres, rows, sql


def _other_value(value, annotation):
    """A value of the same type that differs from ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, str):
        return value + " zebra crossing"
    if isinstance(value, float):
        return value + 1.5
    if isinstance(value, int):
        return value + 1
    if isinstance(value, list):
        return [*value, 7] if "int" in str(annotation) else [*value, "zebra crossing"]
    if isinstance(value, dict):
        return {**value, "zebra": 1}
    if value is None:
        return 7
    raise AssertionError(f"no other value for {value!r}")


def test_registry_names_the_six():
    assert list(REGISTRY) == ["bot", "workflow", "enhancement", "error", "info", "information"]


@pytest.mark.sqlite_only
def test_default_paths_under_data_dir(case, open_db, tmp_path):
    db = open_db(case.cls)
    name = case.cls.name
    folder = tmp_path / "data" / name
    assert db.path == str(folder / f"{name}.db")
    assert db.index_path == str(folder / case.cls.index_filename)
    assert db.metadata_path == str(folder / case.cls.index_filename).rsplit(".", 1)[0] + ".json"
    assert os.path.exists(db.path) and os.path.exists(db.metadata_path)


def test_data_dir_from_environment_then_cwd(case, encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDDABLE_DB_HOME", str(tmp_path / "home"))
    with case.cls(encoder=encoder) as db:
        assert db.path == str(tmp_path / "home" / case.cls.name / f"{case.cls.name}.db")
    monkeypatch.delenv("EMBEDDABLE_DB_HOME")
    monkeypatch.chdir(tmp_path)
    with case.cls(encoder=encoder) as db:
        assert db.path == str(tmp_path / "data" / case.cls.name / f"{case.cls.name}.db")


@pytest.mark.sqlite_only
def test_explicit_path_puts_index_beside_it(case, open_db, tmp_path):
    paths = case.cls.resolve_paths(tmp_path / "deep" / "er" / "mine.sqlite")
    assert not (tmp_path / "deep").exists()  # resolving creates nothing
    db = open_db(case.cls, tmp_path / "deep" / "er" / "mine.sqlite")
    assert (db.path, db.index_path, db.metadata_path) == paths
    assert db.index_path == str(tmp_path / "deep" / "er" / case.cls.index_filename)
    elsewhere = open_db(case.cls, tmp_path / "a.db", index_path=tmp_path / "new" / "x.idx")
    assert elsewhere.metadata_path == str(tmp_path / "new" / "x.json")
    with pytest.raises(InvalidInputError, match="not both"):
        case.cls(tmp_path / "x.db", data_dir=tmp_path)


def test_crud(case, open_db):
    db = open_db(case.cls)
    records = fill(db, case)
    ids = [r.id for r in records]
    assert ids == sorted(ids) and len(set(ids)) == len(records)
    assert db.count() == len(records)
    assert db.get(ids[2]) == records[2]
    assert db.get(10_000) is None
    assert [r.id for r in db.fetch()] == ids[::-1]  # newest first
    assert [r.id for r in db.fetch(limit=2)] == ids[:-3:-1]
    assert db.embedding_count() == len(records)
    assert db.delete(ids[1]) is True
    assert db.delete(ids[1]) is False
    assert db.get(ids[1]) is None and db.count() == len(records) - 1
    assert db.get_vector(db.vector_key(ids[1])) is None
    assert db.embedding_count() == len(records) - 1


def test_records_round_trip_through_plain_tables(case, open_db):
    """Columns are named after the fields (``type_`` -> ``type``); lists are JSON."""
    db = open_db(case.cls)
    record = fill(db, case)[0]
    (row,) = rows(db, f"SELECT * FROM {case.table} WHERE id = ?", (record.id,), mapping=True)
    for field in dataclasses.fields(record):
        if field.name == "id" or field.name.endswith("_ids"):
            continue
        value = row[field.name.rstrip("_")]
        expected = getattr(record, field.name)
        if isinstance(expected, list | dict):
            assert json.loads(value) == expected
        else:
            assert value == expected
    assert db.record_from_row(row, kind=case.kind) == record
    if len(case.cls.tables) == 1:
        assert db.embedding_text(row) == db.embedding_text(record)


def test_timestamps_are_utc_and_taken_per_record(case):
    first = case.records()[0]
    time.sleep(0.002)
    second = case.records()[0]
    names = [f.name for f in dataclasses.fields(first)
             if f.name in ("timestamp", "creation_date", "last_modification_date", "date_collected")]
    assert names
    for name in names:
        stamp = datetime.fromisoformat(getattr(first, name))
        assert stamp.utcoffset() == timedelta(0)
        assert stamp < datetime.fromisoformat(getattr(second, name)) <= datetime.now(UTC)


def test_embedding_text_is_deliberate(case, open_db):
    db = open_db(case.cls)
    record = case.records()[0]
    text = db.embedding_text(record)
    assert text == db.embedding_text(case.records()[0])  # deterministic
    hints = {f.name: f.type for f in dataclasses.fields(record)}
    embedded = set(type(record).EMBEDDED_FIELDS)
    for name, annotation in hints.items():
        changed = dataclasses.replace(record, **{name: _other_value(getattr(record, name), annotation)})
        if name in embedded:
            assert db.embedding_text(changed) != text, f"{name} should be embedded"
        else:
            assert db.embedding_text(changed) == text, f"{name} should not be embedded"
    db.add(record)
    assert db.embedding_text(db.get(record.id)) == text  # the same from the stored row


def test_search_after_add_update_delete(case, open_db):
    db = open_db(case.cls)
    records = fill(db, case)
    for record, query in zip(records, case.queries, strict=True):
        hit = db.search(query, top_k=1)[0]
        assert isinstance(hit, SearchHit)
        assert (hit.record_id, hit.kind, hit.record) == (record.id, case.kind, record)
        assert 0.0 <= hit.distance < 1.0
    # update: found by its new words, no longer by its old ones
    db.update(records[0].id, **case.embedded_change)
    assert db.search(NEW_WORDS, top_k=1)[0].record_id == records[0].id
    assert db.search(NEW_WORDS, top_k=1)[0].record == db.get(records[0].id)
    # delete: gone from every search
    db.delete(records[1].id)
    every = db.search(case.queries[1], top_k=10)
    assert records[1].id not in [h.record_id for h in every]
    assert len(every) == len(records) - 1
    # a vector query works as well as text
    vector = db.encode_text(case.queries[2])
    assert db.search(vector, top_k=1)[0].record_id == records[2].id


def test_update_reembeds_only_when_text_changes(case, open_db, encoder):
    db = open_db(case.cls)
    record = fill(db, case)[0]
    key = db.vector_key(record.id)
    vector = db.get_vector(key)
    encoded = encoder.texts_encoded
    updated = db.update(record.id, **case.quiet_change)
    assert encoder.texts_encoded == encoded and db.get_vector(key) == vector
    field, value = next(iter(case.quiet_change.items()))
    assert getattr(updated, field) == value == getattr(db.get(record.id), field)
    db.update(record.id, **case.embedded_change)
    assert encoder.texts_encoded == encoded + 1
    assert db.get_vector(key) == pytest.approx(db.encode_text(db.embedding_text(db.get(record.id))))
    assert db.update(10_000, **case.quiet_change) is None


def test_update_checks_field_names_and_values(case, open_db):
    db = open_db(case.cls)
    record = fill(db, case)[0]
    before = db.get(record.id)
    with pytest.raises(ValueError, match="no field"):
        db.update(record.id, nonsense=1)
    with pytest.raises(ValueError, match="no field"):
        db.update(record.id, id=99)
    with pytest.raises(ValueError, match="no field"):
        db.update(record.id, **{f"{case.sql_column} = 'x'; DROP TABLE {case.table}; --": "x"})
    with pytest.raises(ValueError, match="must be"):
        db.update(record.id, **{case.sql_column: 12})
    with pytest.raises(ValueError, match="nothing to embed"):
        db.update(record.id, **{f: type(getattr(before, f))() for f in type(before).EMBEDDED_FIELDS})
    assert db.get(record.id) == before and db.count() == len(case.records())


def test_record_with_nothing_to_embed_is_refused(case, open_db):
    db = open_db(case.cls)
    with pytest.raises(ValueError, match="nothing to embed"):
        db.add(case.empty())
    assert db.count() == 0 and db.embedding_count() == 0


def test_failed_embedding_changes_nothing(case, open_db, encoder):
    db = open_db(case.cls)
    encoder.fail = True
    record = case.records()[0]
    with pytest.raises((RuntimeError, EmbeddingError), match="encoder is down"):
        db.add(record)
    assert record.id is None and db.count() == 0 and db.embedding_count() == 0
    encoder.fail = False
    fill(db, case)
    encoder.fail = True
    first = db.fetch(limit=1)[0]
    with pytest.raises((RuntimeError, EmbeddingError), match="encoder is down"):
        db.update(first.id, **case.embedded_change)
    assert db.get(first.id) == first
    assert db.count() == len(case.records()) and db.embedding_count() == len(case.records())


def test_bad_arguments_are_refused(case, open_db):
    db = open_db(case.cls)
    with pytest.raises(InvalidInputError, match="stores"):
        db.add({"name": "a dict is not a record"})
    with pytest.raises(InvalidInputError, match="int"):
        db.get("1")
    with pytest.raises(InvalidInputError):
        db.fetch(limit=0)
    with pytest.raises(InvalidInputError):
        db.search("anything", top_k=0)
    with pytest.raises(InvalidInputError, match="unknown kind"):
        db.search("anything", kind="nope")
    with pytest.raises(InvalidInputError, match="empty"):
        db.search("   ")


def test_search_skips_rows_deleted_behind_its_back(case, open_db):
    db = open_db(case.cls)
    fill(db, case)
    ranked = [h.record_id for h in db.search(case.queries[0], top_k=5)]
    for record_id in ranked[:2]:
        sql(db, f"DELETE FROM {case.table} WHERE id = ?", (record_id,))
    hits = db.search(case.queries[0], top_k=3)
    assert [h.record_id for h in hits] == ranked[2:5]


def test_backfill_catches_plain_sql_changes(case, open_db, engine):
    db = open_db(case.cls)
    records = fill(db, case)
    sql(db, f"UPDATE {case.table} SET {case.sql_column} = ? WHERE id = ?", (NEW_WORDS, records[0].id))
    sql(db, f"INSERT INTO {case.table} ({case.sql_column}) VALUES (?)", ("glacier ice core drilling",))
    sql(db, f"DELETE FROM {case.table} WHERE id = ?", (records[1].id,))
    result = db.backfill_embeddings(batch_size=2)
    assert (result.embedded, result.reembedded, result.removed, result.failed) == (1, 1, 1, 0)
    assert result.unchanged == len(records) - 2
    assert db.search(NEW_WORDS, top_k=1)[0].record_id == records[0].id
    inserted = db.search("glacier ice core drilling", top_k=1)[0]
    assert inserted.record_id == records[-1].id + 1 and inserted.record == db.get(inserted.record_id)
    assert db.embedding_count() == db.count()
    again = db.backfill_embeddings()
    assert (again.embedded, again.reembedded, again.removed) == (0, 0, 0)
    # SQLite's triggers logged nothing since, so nothing is read; PostgreSQL reads every row
    assert again.processed == (0 if engine == "sqlite" else db.count())
    assert db.backfill_plan(full=True).unchanged == db.count()


def test_reopen_from_disk(case, open_db, encoder):
    db = open_db(case.cls)
    records = fill(db, case)
    query = db.encode_text(case.queries[3])
    before = db.search(query, top_k=3)
    db.close()
    calls = encoder.calls
    again = open_db(case.cls)
    assert again.count() == len(records)
    assert again.get(records[3].id) == records[3]
    assert again.search(query, top_k=3) == before
    assert encoder.calls == calls  # nothing re-encoded to open or to search by vector
    assert again.verify_index().ok


def test_close_and_context_manager(case, encoder, location):
    with case.cls(encoder=encoder, **location) as db:
        fill(db, case)
    if on_postgres(db):
        assert db.conn.closed
    else:
        with pytest.raises(sqlite3.ProgrammingError):
            db.conn.execute("SELECT 1")
    for call in (lambda: db.search(case.queries[0]), db.count, db.fetch, lambda: db.get(1)):
        with pytest.raises(EmbeddingError, match="closed"):
            call()
    db.close()  # twice is fine
    with case.cls(encoder=encoder, **location) as again:
        assert again.count() == len(case.records())


@pytest.mark.sqlite_only
def test_two_stores_cannot_share_an_index(case, open_db, encoder, tmp_path):
    """Two databases in one folder would share the default index file: the second is refused."""
    first = open_db(case.cls, tmp_path / "shared" / "one.db")
    fill(first, case)
    first.save_index()
    files = {p: open(p, "rb").read() for p in (first.index_path, first.metadata_path)}
    with pytest.raises(StoreConflictError, match="another store"):
        case.cls(tmp_path / "shared" / "two.db", encoder=encoder)
    assert {p: open(p, "rb").read() for p in files} == files
    assert first.search(case.queries[0], top_k=1)[0].record_id == 1
    first.close()
    assert open_db(case.cls, tmp_path / "shared" / "one.db").count() == len(case.records())
