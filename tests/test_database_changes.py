"""The six databases record their changes with triggers (``databases/changes.py``): a backfill
after no change reads no record, plain SQL from another connection re-embeds exactly the
records it changed, and a log that cannot be trusted (a trigger dropped, a database made before
the triggers) means one full hash scan, which finds what changed meanwhile."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import embeddable_db as edb
from conftest import sqlite_dump
from databases.cases import CASES, NEW_WORDS, CountingEncoder, fill
from embeddable_db.databases import RecordDB
from embeddable_db.databases.records import Record, TableSpec, compose, link_field, listed

# -- a database whose text includes a link table (none of the six embeds one) ----------------------


@dataclasses.dataclass
class Note(Record):
    EMBEDDED_FIELDS = ("body", "tag_ids")

    body: str = ""
    rank: int = 0
    tag_ids: list[int] = link_field()  # in the link table note_tags(note_id, tag_id)

    def embedding_text(self) -> str:
        return compose(self.body, ("Tags", listed(self.tag_ids)))


class NoteDB(RecordDB):
    name = "note"
    index_filename = "note_embeddings.index"
    tables = (TableSpec("notes", Note, "note"),)


TABLES = [(name, spec) for name, case in CASES.items() for spec in case.cls.tables]


def columns(spec: TableSpec) -> tuple[str, str, object]:
    """(an embedded text column, a column that is not embedded, a value for it)."""
    embedded = spec.record_type.EMBEDDED_FIELDS
    text = next(c.name for c in spec.columns if c.field in embedded and c.type is str)
    quiet = [c for c in spec.columns if c.field not in embedded and c.type in (str, int, float)]
    quiet.sort(key=lambda c: c.field in spec.timestamps)  # a date only when there is nothing else
    value = "2020-01-02T03:04:05+00:00" if quiet[0].field in spec.timestamps else (
        {str: "zzz", int: 7, float: 7.5}[quiet[0].type])
    return text, quiet[0].name, value


@pytest.fixture
def encoder():
    return CountingEncoder(32)


@pytest.fixture
def open_db(tmp_path, encoder):
    opened = []

    def make(cls, **options):
        options.setdefault("encoder", encoder)
        db = cls(data_dir=tmp_path / "data", **options)
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.close()


def run_sql(db, *statements) -> None:
    """Plain SQL from another connection, committed."""
    conn = sqlite3.connect(db.path)
    try:
        with conn:
            for statement in statements:
                conn.execute(*statement) if isinstance(statement, tuple) else conn.execute(statement)
    finally:
        conn.close()


def triggers(path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
    finally:
        conn.close()


def assert_as_a_full_scan_wants(db) -> None:
    """The vectors are what a backfill reading every record would leave: same keys, and each
    vector the encoding of its record's text now."""
    plan = db.backfill_plan(full=True)
    assert (plan.missing, plan.stale, plan.orphaned) == (0, 0, 0), plan
    texts = {}
    for key, record, _ in db.iter_records():
        try:
            texts[key] = db.embedding_text(record)
        except edb.InvalidInputError:
            continue
    stored = {k for (k,) in db.conn.execute(
        f"SELECT record_id FROM {db.embedding_table} WHERE deleted = 0")}
    assert {k for k, t in texts.items() if t.strip()} <= stored <= set(texts)
    for key in stored:
        if texts[key].strip():
            np.testing.assert_allclose(db.get_vector(key), db.encode_texts([texts[key]])[0], atol=1e-6)


# -- no change: nothing read ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_a_backfill_after_no_change_reads_no_record(name, open_db, encoder):
    case = CASES[name]
    db = open_db(case.cls)
    records = fill(db, case)
    assert db.backfill_embeddings().unchanged == len(records)  # the first: a full scan
    assert db.changes_trusted() and db.pending_changes() == 0
    encoded, seen = encoder.texts_encoded, []
    db.conn.set_trace_callback(seen.append)
    result = db.backfill_embeddings()
    db.conn.set_trace_callback(None)
    assert result.processed == 0 and encoder.texts_encoded == encoded
    assert not [s for s in seen for spec in case.cls.tables if f" FROM {spec.table} " in f"{s} "]
    assert db.backfill_plan().records == 0
    first = case.cls.tables[0].record_type.EMBEDDED_FIELDS[0]
    db.add(dataclasses.replace(case.records()[0], **{first: "brand new words"}))  # its own write
    # stores the vector: nothing left to backfill
    db.update(records[1].id, **case.embedded_change)
    db.delete(records[2].id)
    assert db.pending_changes() == 0 and db.backfill_embeddings().processed == 0
    db.close()
    again = open_db(case.cls)  # trusted across opens: the triggers and token stay
    assert again.changes_trusted() and again.backfill_plan().records == 0
    assert_as_a_full_scan_wants(again)


# -- plain SQL from another connection ----------------------------------------------------------------
@pytest.mark.parametrize(("name", "spec"), TABLES, ids=[spec.table for _, spec in TABLES])
def test_plain_sql_re_embeds_exactly_the_rows_it_changed(name, spec, open_db, encoder):
    db = open_db(CASES[name].cls)
    text, quiet, value = columns(spec)
    run_sql(db, *[(f'INSERT INTO {spec.table} ("{text}") VALUES (?)', (f"subject number {i}",))
                  for i in range(5)])
    ids = [r[0] for r in db.conn.execute(f"SELECT id FROM {spec.table} ORDER BY id")]
    assert db.backfill_embeddings().embedded == 5
    run_sql(db, (f'UPDATE {spec.table} SET "{quiet}" = ? WHERE id = ?', (value, ids[0])))
    assert db.pending_changes() == 0  # a column the text does not read: not even logged
    run_sql(db,
            (f'INSERT INTO {spec.table} ("{text}") VALUES (?)', (NEW_WORDS,)),
            (f'UPDATE {spec.table} SET "{text}" = ? WHERE id = ?', ("glacier ice cores", ids[1])),
            (f"DELETE FROM {spec.table} WHERE id = ?", (ids[2],)))
    plan = db.backfill_plan()
    assert (plan.records, plan.missing, plan.stale, plan.orphaned) == (2, 1, 1, 1)
    encoded = encoder.texts_encoded
    result = db.backfill_embeddings()
    assert (result.embedded, result.reembedded, result.removed, result.unchanged) == (1, 1, 1, 0)
    assert encoder.texts_encoded == encoded + 2
    assert db.get_vector(f"{spec.kind}:{ids[2]}") is None
    assert db.search("glacier ice cores", top_k=1, kind=spec.kind)[0].record_id == ids[1]
    assert_as_a_full_scan_wants(db)


def test_link_rows_re_embed_their_owner(tmp_path, encoder):
    db = NoteDB(tmp_path / "notes.db", encoder=encoder)
    ids = [db.add(Note(f"note {i}", tag_ids=[i])) for i in range(4)]
    db.backfill_embeddings()
    steps = [
        ("INSERT INTO note_tags(note_id, tag_id) VALUES (?, 9)", (ids[0],), 1),
        ("DELETE FROM note_tags WHERE note_id = ?", (ids[1],), 1),
        ("UPDATE note_tags SET tag_id = 5 WHERE note_id = ?", (ids[2],), 1),
        ("UPDATE note_tags SET note_id = ? WHERE note_id = ?", (ids[0], ids[3]), 2),  # moved
        ("UPDATE notes SET rank = 3 WHERE id = ?", (ids[0],), 0),
    ]
    for statement, args, owners in steps:
        run_sql(db, (statement, args))
        encoded = encoder.texts_encoded
        assert db.backfill_embeddings().reembedded == owners, statement
        assert encoder.texts_encoded == encoded + owners
    assert db.get(ids[0]).tag_ids == [0, 3, 9]  # in rowid order: the moved row is older
    assert_as_a_full_scan_wants(db)
    db.close()


def test_an_add_does_not_inherit_link_rows_left_for_its_id(tmp_path, encoder):
    """Link rows plain SQL left behind (their owner deleted, or never there) are not the links
    of the record that next takes that id: it reads back as added, and its vector is current
    without another backfill (hypothesis found a vector stale behind a trusted log)."""
    db = NoteDB(tmp_path / "notes.db", encoder=encoder)
    db.backfill_embeddings()
    run_sql(db, ("INSERT INTO note_tags(note_id, tag_id) VALUES (1, 7)", ()))
    db.backfill_embeddings()
    rid = db.add(Note("alpha", tag_ids=[2]))
    assert rid == 1 and db.get(rid).tag_ids == [2]
    assert_as_a_full_scan_wants(db)
    db.close()


def test_link_tables_that_are_not_embedded_are_not_watched(open_db):
    db = open_db(edb.EnhancementDB)
    eid = db.add(edb.Enhancement("cache the parsed config", model_ids=[1]))
    db.backfill_embeddings()
    run_sql(db, ("INSERT INTO enhancement_models(enhancement_id, model_id) VALUES (?, 2)", (eid,)),
            "DELETE FROM enhancement_bots")
    assert db.pending_changes() == 0 and db.backfill_embeddings().processed == 0
    assert not [t for t in triggers(db.path) if "enhancement_models" in t]


# -- random writes: the log leaves what a full scan would ----------------------------------------------
TEXTS = st.sampled_from(["alpha", "beta", "gamma", "delta", ""])
IDS = st.integers(1, 5)
TABLE = st.integers(0, 3)  # taken modulo the database's tables
OPS = st.one_of(
    st.tuples(st.sampled_from(["insert", "replace", "upsert", "update", "update_or_replace"]),
              TABLE, IDS, TEXTS),
    st.tuples(st.just("update_quiet"), TABLE, IDS, st.integers(0, 3)),
    st.tuples(st.just("change_id"), TABLE, IDS, IDS),
    st.tuples(st.just("delete"), TABLE, IDS),
    st.tuples(st.just("delete_all"), TABLE),
    st.tuples(st.sampled_from(["link_add", "link_move"]), IDS, IDS),
    st.tuples(st.just("link_delete"), IDS),
    st.tuples(st.sampled_from(["api_add", "api_update"]), TABLE, IDS, TEXTS),
    st.tuples(st.just("api_delete"), TABLE, IDS),
    st.just(("backfill",)), st.just(("backfill",)), st.just(("backfill",)),
)
# REPLACE deletes the row whose unique message it repeats, without a delete trigger.
REPLACED = [("insert", 0, 1, "alpha"), ("backfill",), ("replace", 0, 2, "alpha")]
REPLACED_BY_UPDATE = [("insert", 0, 1, "alpha"), ("insert", 0, 2, "beta"), ("backfill",),
                      ("update_or_replace", 0, 2, "alpha")]


def apply(db, conn: sqlite3.Connection, op: tuple) -> None:
    """One write: plain SQL on ``conn``, or the database's own API (``api_*``)."""
    name, *args = op
    specs = db.tables
    spec = specs[args[0] % len(specs)] if name not in ("link_add", "link_move", "link_delete") else specs[0]
    text, quiet, _ = columns(spec)
    table = spec.table
    try:
        if name.startswith("api_"):
            _, rid, *rest = args
            if name == "api_add":
                db.add(spec.record_type(**{_field(spec, text): rest[0]}))
            elif name == "api_update":
                db.update(rid, kind=spec.kind, **{_field(spec, text): rest[0]})
            else:
                db.delete(rid, kind=spec.kind)
            return
        with conn:
            if name in ("insert", "replace", "upsert"):
                _, rid, value = args
                verb = "INSERT OR REPLACE" if name == "replace" else "INSERT"
                sql = f'{verb} INTO {table} (id, "{text}") VALUES (?, ?)'
                if name == "upsert":
                    sql += f' ON CONFLICT (id) DO UPDATE SET "{text}" = excluded."{text}"'
                conn.execute(sql, (rid, value))
            elif name in ("update", "update_or_replace"):
                verb = "UPDATE OR REPLACE" if name == "update_or_replace" else "UPDATE"
                conn.execute(f'{verb} {table} SET "{text}" = ? WHERE id = ?', (args[2], args[1]))
            elif name == "update_quiet":
                conn.execute(f'UPDATE {table} SET "{quiet}" = ? WHERE id = ?', (args[2], args[1]))
            elif name == "change_id":
                conn.execute(f"UPDATE {table} SET id = ? WHERE id = ?", (args[2] + 10, args[1]))
            elif name == "delete":
                conn.execute(f"DELETE FROM {table} WHERE id = ?", (args[1],))
            elif name == "delete_all":
                conn.execute(f"DELETE FROM {table}")
            elif spec.links:
                link = spec.links[0]
                if name == "link_add":
                    conn.execute(f"INSERT OR IGNORE INTO {link.table} VALUES (?, ?)", tuple(args))
                elif name == "link_move":
                    conn.execute(f"UPDATE OR REPLACE {link.table} SET {link.owner} = ? "
                                 f"WHERE {link.owner} = ?", tuple(args))
                else:
                    conn.execute(f"DELETE FROM {link.table} WHERE {link.owner} = ?", (args[0],))
    except (sqlite3.IntegrityError, edb.InvalidInputError):
        pass


def _field(spec: TableSpec, column: str) -> str:
    return next(c.field for c in spec.columns if c.name == column)


@pytest.mark.parametrize("cls", [edb.ErrorDB, NoteDB], ids=["error", "note"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, max_size=25))
@example(ops=REPLACED)
@example(ops=REPLACED_BY_UPDATE)
@example(ops=[("insert", 0, 1, "alpha"), ("backfill",), ("change_id", 0, 1, 2)])
@example(ops=[("insert", 0, 1, "alpha"), ("link_add", 1, 4), ("backfill",), ("link_move", 2, 1)])
def test_a_backfill_of_the_logged_changes_equals_a_full_scan(cls, ops):
    folder = Path(tempfile.mkdtemp())
    try:
        db = cls(folder / "x.db", encoder=CountingEncoder(16))
        conn = sqlite3.connect(db.path)
        try:
            db.backfill_embeddings()
            assert db.changes_trusted()
            for op in [*ops, ("backfill",)]:
                if op[0] == "backfill":
                    db.backfill_embeddings()
                    assert db.changes_trusted()
                    assert_as_a_full_scan_wants(db)
                else:
                    apply(db, conn, op)
        finally:
            db.close()
            conn.close()
    finally:
        shutil.rmtree(folder)


# -- a log that cannot be trusted ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_a_dropped_trigger_means_a_full_scan_that_finds_the_changes(name, open_db):
    case = CASES[name]
    db = open_db(case.cls)
    records = fill(db, case)
    db.backfill_embeddings()
    installed = triggers(db.path)
    run_sql(db, f'DROP TRIGGER "{db.embedding_table}_{case.table}_after_update"',
            (f"UPDATE {case.table} SET {case.sql_column} = ? WHERE id = ?", (NEW_WORDS, records[0].id)))
    assert not db.changes_trusted() and db.pending_changes() is None
    result = db.backfill_embeddings()
    assert (result.reembedded, result.unchanged) == (1, len(records) - 1)  # every record read
    assert db.search(NEW_WORDS, top_k=1)[0].record_id == records[0].id
    assert triggers(db.path) == installed and db.changes_trusted()
    run_sql(db, (f"UPDATE {case.table} SET {case.sql_column} = ? WHERE id = ?", ("x y", records[1].id)))
    assert db.backfill_plan().records == 1


def test_full_true_reads_every_record_and_finds_what_no_trigger_saw(open_db):
    db = open_db(edb.BotDB)
    records = fill(db, CASES["bot"])
    db.backfill_embeddings()
    db.conn.execute("UPDATE bot_embeddings SET text_hash = 'x' WHERE record_id = ?",
                    (f"bot:{records[0].id}",))  # the vectors' own table: no trigger on it
    db.conn.commit()
    assert db.backfill_embeddings().processed == 0
    full = db.backfill_embeddings(full=True)
    assert (full.reembedded, full.unchanged) == (1, len(records) - 1)


def test_another_embedding_version_writes_are_left_for_the_backfill(tmp_path, encoder):
    """A writer with another basis (here an older embedding_version) does not forget what it
    logged, so the store with the recorded basis re-embeds it."""
    path = tmp_path / "bot.db"
    newer = edb.BotDB(path, encoder=encoder, embedding_version=2)
    newer.backfill_embeddings()
    older = edb.BotDB(path, encoder=encoder)
    older.add(edb.BotRecord("old bot", purpose="made by an older program"))
    older.close()
    assert newer.pending_changes() == 1
    assert newer.backfill_embeddings().reembedded == 1
    assert_as_a_full_scan_wants(newer)
    newer.close()


def drop_change_tracking(path, store_table: str) -> None:
    """Make a database what the code before the triggers left: no triggers, no change table,
    no token or basis."""
    conn = sqlite3.connect(path)
    with conn:
        for name in triggers(path):
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute(f"DROP TABLE {store_table}_changes")
        conn.execute(f"DELETE FROM {store_table}_meta WHERE key LIKE 'table_changes_%'")
    conn.close()


def files_of(folder: Path) -> dict:
    """Every file's bytes but SQLite's -wal/-shm, which SQLite may create for a WAL reader."""
    return {p: p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


@pytest.mark.parametrize("name", list(CASES))
def test_read_only_writes_nothing_and_an_older_database_gets_its_triggers(name, tmp_path, encoder):
    case = CASES[name]
    data = tmp_path / "data"
    db = case.cls(data_dir=data, encoder=encoder)
    records = fill(db, case)
    db.close()
    drop_change_tracking(db.path, db.embedding_table)
    run_sql(db, (f"UPDATE {case.table} SET {case.sql_column} = ? WHERE id = ?", (NEW_WORDS, records[0].id)))
    for lock in data.rglob("*.lock"):
        lock.unlink()
    files = files_of(data)
    dump = sqlite_dump(db.path)
    reader = case.cls(data_dir=data, encoder=encoder, read_only=True)
    assert not reader.changes_trusted() and reader.backfill_plan().stale == 1
    assert reader.search(case.queries[1], top_k=1, mode="keyword")
    with pytest.raises(edb.ReadOnlyError):
        reader.backfill_embeddings()
    reader.close()
    assert sqlite_dump(db.path) == dump and triggers(db.path) == []
    assert files_of(data) == files
    writer = case.cls(data_dir=data, encoder=encoder)  # the next writable open installs them
    assert triggers(db.path) and not writer.changes_trusted()
    result = writer.backfill_embeddings()
    assert (result.reembedded, result.unchanged) == (1, len(records) - 1)
    assert writer.changes_trusted() and writer.backfill_plan().records == 0
    writer.close()
