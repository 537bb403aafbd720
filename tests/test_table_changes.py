"""The triggers record every change SQLite can make to a row: after any sequence of writes by
another connection, a backfill that reads only the recorded rows leaves the vectors exactly as
a full hash scan of the table would want them."""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import CountingEncoder
from embeddable_db import TableStore

# Four shapes of key: an INTEGER PRIMARY KEY, the implicit rowid of a table with a composite
# primary key, a text key of a WITHOUT ROWID table, and a text key of a table with a rowid (so
# appended rows are found by rowid, and a REPLACE gives the replacing row a new one). Each has
# a second UNIQUE column, so REPLACE can delete a row without firing its delete trigger.
SHAPES = {
    "integer": ("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT, tag TEXT UNIQUE, other INT)",
                "id", lambda k: k),
    "rowid": ("CREATE TABLE t (a TEXT, b INT, body TEXT, tag TEXT UNIQUE, other INT, "
              "PRIMARY KEY (a, b))", "rowid", lambda k: k),
    "text": ("CREATE TABLE t (k TEXT PRIMARY KEY, body TEXT, tag TEXT UNIQUE, other INT) "
             "WITHOUT ROWID", "k", lambda k: f"k{k}"),
    "text_rowid": ("CREATE TABLE t (k TEXT NOT NULL UNIQUE, body TEXT, tag TEXT UNIQUE, "
                   "other INT)", "k", lambda k: f"k{k}"),
}

keys = st.integers(1, 6)
bodies = st.sampled_from(["alpha", "beta", "gamma", "delta", "", None])
tags = st.sampled_from(["a", "b", None])
OPS = st.one_of(
    st.tuples(st.just("insert"), keys, bodies, tags),
    st.tuples(st.just("replace"), keys, bodies, tags),
    st.tuples(st.just("upsert"), keys, bodies, tags),
    # an explicit rowid, below or above the largest: at or below the high mark it is logged
    st.tuples(st.just("insert_at_rowid"), st.integers(1, 9), keys, bodies, tags),
    st.tuples(st.just("update_body"), keys, bodies),
    st.tuples(st.just("update_other"), keys, st.integers(0, 3)),
    st.tuples(st.just("update_or_replace_tag"), keys, tags),
    st.tuples(st.just("change_key"), keys, keys),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("delete_all"),),
    st.just(("backfill",)),
    st.just(("backfill",)),
    st.just(("backfill",)),
)
# What a REPLACE deletes through the other unique column fires no delete trigger.
REPLACED = [("insert", 1, "alpha", "a"), ("backfill",), ("replace", 2, "beta", "a")]
REPLACED_BY_UPDATE = [("insert", 1, "alpha", "a"), ("insert", 2, "beta", "b"), ("backfill",),
                      ("update_or_replace_tag", 2, "a")]


def apply(conn: sqlite3.Connection, shape: str, op: tuple) -> None:
    """One write, as plain SQL from another connection; a constraint error is just skipped."""
    _, key_col, key = SHAPES[shape]
    name, *args = op
    row_key = "rowid" if shape == "rowid" else key_col

    def where(k):  # the row with logical key k
        return ("b = ?", (k,)) if shape == "rowid" else (f"{key_col} = ?", (key(k),))

    def cols(k):
        return (("a", "b"), ("x", k)) if shape == "rowid" else ((key_col,), (key(k),))

    try:
        with conn:
            if name == "insert_at_rowid":
                rowid, k, body, tag = args
                if shape == "text":  # WITHOUT ROWID: a plain insert
                    conn.execute("INSERT INTO t (k, body, tag) VALUES (?, ?, ?)", (key(k), body, tag))
                elif shape == "integer":  # the key is the rowid
                    conn.execute("INSERT INTO t (id, body, tag) VALUES (?, ?, ?)", (rowid, body, tag))
                else:
                    names, values = cols(k)
                    conn.execute(f"INSERT INTO t (rowid, {', '.join(names)}, body, tag) VALUES "
                                 f"({', '.join('?' * (len(names) + 3))})", (rowid, *values, body, tag))
            elif name in ("insert", "replace", "upsert"):
                k, body, tag = args
                names, values = cols(k)
                verb = {"insert": "INSERT", "replace": "INSERT OR REPLACE", "upsert": "INSERT"}[name]
                sql = (f"{verb} INTO t ({', '.join(names)}, body, tag) VALUES "
                       f"({', '.join('?' * (len(names) + 2))})")
                if name == "upsert":
                    target = "a, b" if shape == "rowid" else key_col
                    sql += f" ON CONFLICT ({target}) DO UPDATE SET body = excluded.body"
                conn.execute(sql, (*values, body, tag))
            elif name == "update_body":
                clause, params = where(args[0])
                conn.execute(f"UPDATE t SET body = ? WHERE {clause}", (args[1], *params))
            elif name == "update_other":
                clause, params = where(args[0])
                conn.execute(f"UPDATE t SET other = ? WHERE {clause}", (args[1], *params))
            elif name == "update_or_replace_tag":
                clause, params = where(args[0])
                conn.execute(f"UPDATE OR REPLACE t SET tag = ? WHERE {clause}", (args[1], *params))
            elif name == "change_key":
                clause, params = where(args[0])
                if shape == "rowid":  # the key is the rowid itself
                    conn.execute(f"UPDATE t SET rowid = ? WHERE {clause}", (args[1] * 100, *params))
                else:
                    conn.execute(f"UPDATE t SET {row_key} = ? WHERE {clause}", (key(args[1]), *params))
            elif name == "delete":
                clause, params = where(args[0])
                conn.execute(f"DELETE FROM t WHERE {clause}", params)
            elif name == "delete_all":
                conn.execute("DELETE FROM t")
    except sqlite3.IntegrityError:
        pass


def assert_as_a_full_scan_wants(store: TableStore) -> None:
    plan = store.backfill_plan(full=True)
    assert (plan.missing, plan.stale, plan.orphaned, plan.failed) == (0, 0, 0, 0), plan
    assert store.embedding_count() == plan.unchanged


@pytest.mark.parametrize("shape", sorted(SHAPES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, max_size=30))
@example(ops=REPLACED)
@example(ops=REPLACED_BY_UPDATE)
@example(ops=[("insert", 1, "alpha", None), ("backfill",), ("change_key", 1, 2)])
@example(ops=[("insert", 1, "alpha", None), ("insert", 2, "beta", None), ("backfill",),
              ("delete", 2), ("insert", 3, "gamma", None)])  # the largest rowid given again
def test_a_backfill_of_the_recorded_changes_equals_a_full_scan(shape, ops):
    folder = Path(tempfile.mkdtemp())
    try:
        path = str(folder / "app.db")
        conn = sqlite3.connect(path)
        conn.execute(SHAPES[shape][0])
        conn.commit()
        store = TableStore(path, "t", columns=["body"], encoder=CountingEncoder(16))
        try:
            store.backfill_embeddings()
            assert store.changes_trusted()
            for op in [*ops, ("backfill",)]:
                if op[0] == "backfill":
                    store.backfill_embeddings()
                    assert store.changes_trusted()
                    assert_as_a_full_scan_wants(store)
                else:
                    apply(conn, shape, op)
        finally:
            store.close()
            conn.close()
    finally:
        shutil.rmtree(folder)


def test_recursive_triggers_on_another_connection_change_nothing(tmp_path):
    """A writer with recursive_triggers on fires the delete trigger for REPLACE too."""
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path)
    conn.execute(SHAPES["integer"][0])
    conn.executemany("INSERT INTO t (id, body, tag) VALUES (?, ?, ?)", [(1, "one", "a"), (2, "two", "b")])
    conn.commit()
    store = TableStore(path, "t", columns=["body"], encoder=CountingEncoder(16))
    store.backfill_embeddings()
    conn.execute("PRAGMA recursive_triggers = ON")
    with conn:
        conn.execute("INSERT OR REPLACE INTO t (id, body, tag) VALUES (3, 'three', 'a')")
    result = store.backfill_embeddings()
    assert (result.embedded, result.removed) == (1, 1)
    assert_as_a_full_scan_wants(store)
    store.close()
    conn.close()


def change_rows(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM notes_embeddings_changes").fetchone()[0]
    finally:
        conn.close()


def insert_trigger_sql(path: str) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' "
                            "AND name = 'notes_embeddings_after_insert'").fetchone()[0]
    finally:
        conn.close()


def test_appended_rows_log_nothing_and_the_backfill_embeds_exactly_them(tmp_path):
    """An ordinary insert (the next rowid) costs the user's write no change-log row; the
    backfill still finds each appended row by its rowid, and only those."""
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes(body) VALUES (?)", [(f"note {i}",) for i in range(4)])
    conn.commit()
    encoder = CountingEncoder(16)
    store = TableStore(path, "notes", columns=["body"], encoder=encoder)
    try:
        assert store.backfill_embeddings().embedded == 4
        assert "WHEN NEW.rowid <= 4 " in insert_trigger_sql(path)
        with conn:
            conn.executemany("INSERT INTO notes(body) VALUES (?)",
                             [(f"appended {i}",) for i in range(50)])
        assert change_rows(path) == 0  # nothing logged for the user's appends
        assert store.pending_changes() == 50 and store.backfill_plan().missing == 50
        before = encoder.texts_encoded
        result = store.backfill_embeddings()
        assert (result.embedded, result.reembedded, result.unchanged) == (50, 0, 0)
        assert encoder.texts_encoded == before + 50
        assert "WHEN NEW.rowid <= 54 " in insert_trigger_sql(path)  # the mark followed
        assert store.changes_trusted() and store.pending_changes() == 0
        assert store.backfill_embeddings().processed == 0
        # rowids at or below the mark are logged: one given again after its row was deleted,
        # and the largest, handed out again by SQLite once its row is gone
        with conn:
            conn.execute("DELETE FROM notes WHERE id IN (2, 54)")
            conn.execute("INSERT INTO notes(id, body) VALUES (2, 'two, written again')")
            conn.execute("INSERT INTO notes(body) VALUES ('takes rowid 54 again')")
        assert conn.execute("SELECT max(id) FROM notes").fetchone() == (54,)
        assert change_rows(path) == 4  # two deletes, two inserts
        result = store.backfill_embeddings()
        assert (result.reembedded, result.embedded, result.removed) == (2, 0, 0)
        assert_as_a_full_scan_wants(store)
    finally:
        store.close()
        conn.close()


def test_a_writer_beside_repeated_backfills_loses_no_row(tmp_path):
    """Another connection appends, re-inserts below the mark and deletes while backfills in
    this process and in another catch up and move the mark: afterwards the vectors are what a
    full scan wants."""
    path = str(tmp_path / "app.db")
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    setup.commit()
    setup.close()
    store = TableStore(path, "notes", columns=["body"], model_name="hash:16")
    done = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        rng = random.Random(15)
        conn = sqlite3.connect(path, timeout=30)
        try:
            for i in range(600):
                with conn:
                    roll = rng.random()
                    if roll < 0.6:
                        conn.execute("INSERT INTO notes(body) VALUES (?)", (f"row {i}",))
                    elif roll < 0.8:
                        conn.execute("INSERT OR REPLACE INTO notes(id, body) VALUES (?, ?)",
                                     (rng.randint(1, i + 1), f"again {i}"))
                    else:
                        conn.execute("DELETE FROM notes WHERE id = (SELECT max(id) FROM notes)")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
        finally:
            conn.close()
            done.set()

    writer = threading.Thread(target=write)
    stop = tmp_path / "stop"
    other = subprocess.Popen([sys.executable, "-c", OTHER_BACKFILLER, path, str(stop)],
                             stderr=subprocess.PIPE, text=True)
    try:
        writer.start()
        while not done.is_set():
            store.backfill_embeddings(batch_size=16)
        writer.join()
        assert not failures
        stop.touch()
        _, errors = other.communicate(timeout=120)
        assert other.returncode == 0, errors
        store.backfill_embeddings()
        assert store.changes_trusted()
        assert_as_a_full_scan_wants(store)
    finally:
        done.wait()
        stop.touch()
        other.wait(timeout=120)
        store.close()


# A second process backfilling the same table meanwhile, as a scheduled job would.
OTHER_BACKFILLER = """
import os, sys
from embeddable_db import TableStore
path, stop = sys.argv[1], sys.argv[2]
store = TableStore(path, "notes", columns=["body"], model_name="hash:16")
while not os.path.exists(stop):
    store.backfill_embeddings(batch_size=16)
store.close()
"""


@pytest.mark.parametrize("columns, logs_appends", [
    ("rowid TEXT, body TEXT", False),  # the rowid is then named _rowid_ in the trigger
    ("rowid TEXT, _rowid_ TEXT, oid TEXT, k TEXT UNIQUE, body TEXT", True),  # it has no name
])
def test_a_column_named_rowid_still_finds_appended_rows(tmp_path, columns, logs_appends):
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE notes ({columns})")
    named = "k" in columns
    insert = ("INSERT INTO notes (rowid, k, body) VALUES (?, ?, ?)" if named
              else "INSERT INTO notes (rowid, body) VALUES (?, ?)")

    def rows(start, n):
        return [(f"r{i}", f"k{i}", f"body {i}") if named else (f"r{i}", f"body {i}")
                for i in range(start, start + n)]

    with conn:
        conn.executemany(insert, rows(0, 3))
    store = TableStore(path, "notes", columns=["body"], key="k" if named else None,
                       encoder=CountingEncoder(16))
    try:
        store.backfill_embeddings()
        with conn:
            conn.executemany(insert, rows(3, 4))
        assert change_rows(path) == (4 if logs_appends else 0)
        assert ("WHEN NEW._rowid_ <= 3 " in insert_trigger_sql(path)) is not logs_appends
        assert store.pending_changes() == 4
        assert store.backfill_embeddings().embedded == 4
        assert store.pending_changes() == 0 and store.backfill_embeddings().processed == 0
        assert_as_a_full_scan_wants(store)
    finally:
        store.close()
        conn.close()


@pytest.mark.parametrize("recorded", ["not json", '["a list"]', '{"notes_embeddings_after_insert": "4"}'])
def test_a_damaged_record_of_the_mark_means_a_full_scan_not_a_crash(tmp_path, recorded):
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes(body) VALUES (?)", [(f"note {i}",) for i in range(4)])
    conn.commit()
    first = TableStore(path, "notes", columns=["body"], encoder=CountingEncoder(16))
    first.backfill_embeddings()
    first.close()
    with conn:
        conn.execute("UPDATE notes_embeddings_meta SET value = ? WHERE key = 'table_changes_marks'",
                     (recorded,))
        conn.execute("UPDATE notes SET body = 'changed while the record was damaged' WHERE id = 2")
    store = TableStore(path, "notes", columns=["body"], encoder=CountingEncoder(16))
    try:
        result = store.backfill_embeddings()  # triggers installed again: a full hash scan
        assert (result.processed, result.reembedded) == (4, 1) and store.changes_trusted()
        assert "WHEN NEW.rowid <= 4 " in insert_trigger_sql(path)
        assert_as_a_full_scan_wants(store)
    finally:
        store.close()
        conn.close()


def interfering(store: TableStore, interfere) -> None:
    """Make ``store``'s next backfill read its changed rows, then let ``interfere()`` run (as
    another program would) before the backfill reads what is stored beside their vectors."""
    original = store._records_of

    def records_of(keys):
        rows = list(original(keys))
        store._records_of = original  # once
        interfere()
        yield from rows

    store._records_of = records_of


def two_stores(tmp_path, rows):
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes(id, body) VALUES (?, ?)", rows)
    conn.commit()
    first = TableStore(path, "notes", columns=["body"], model_name="hash:16")
    first.backfill_embeddings()
    second = TableStore(path, "notes", columns=["body"], model_name="hash:16")
    return path, conn, first, second


def test_a_backfill_never_writes_over_a_newer_vector_made_meanwhile(tmp_path):
    """Backfill B reads row 1 as "old"; the row becomes "new" and backfill A embeds it and
    forgets the change; B then finds A's vector: it must not write "old" over it."""
    path, conn, a, b = two_stores(tmp_path, [(1, "old"), (2, "two")])
    try:
        run_sql = lambda sql: conn.execute(sql) and conn.commit()  # noqa: E731
        run_sql("UPDATE notes SET body = 'older' WHERE id = 1")

        def meanwhile():
            run_sql("UPDATE notes SET body = 'new' WHERE id = 1")
            assert a.backfill_embeddings().reembedded == 1

        interfering(b, meanwhile)
        result = b.backfill_embeddings()
        assert (result.reembedded, result.unchanged) == (0, 1)  # left as A made it
        assert_as_a_full_scan_wants(b)
        assert b.pending_changes() == 1  # kept for the next run, which finds it current
        assert b.backfill_embeddings().unchanged == 1
    finally:
        for store in (a, b):
            store.close()
        conn.close()


def test_a_backfill_keeps_the_vector_of_a_row_that_came_back(tmp_path):
    """Backfill B finds row 1 deleted; it comes back with the same text and backfill A judges
    its vector current and forgets the change; B must not then remove that vector."""
    path, conn, a, b = two_stores(tmp_path, [(1, "one"), (2, "two")])
    try:
        conn.execute("DELETE FROM notes WHERE id = 1")
        conn.commit()

        def meanwhile():
            conn.execute("INSERT INTO notes(id, body) VALUES (1, 'one')")
            conn.commit()
            assert a.backfill_embeddings().unchanged == 1

        interfering(b, meanwhile)
        result = b.backfill_embeddings()
        assert result.removed == 0
        assert_as_a_full_scan_wants(b)
        assert b.embedding_count() == 2
    finally:
        for store in (a, b):
            store.close()
        conn.close()
