"""The triggers record every change SQLite can make to a row: after any sequence of writes by
another connection, a backfill that reads only the recorded rows leaves the vectors exactly as
a full hash scan of the table would want them."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import CountingEncoder
from embeddable_db import TableStore

# Three shapes of key: an INTEGER PRIMARY KEY, the implicit rowid of a table with a composite
# primary key, and a text key of a WITHOUT ROWID table. Each has a second UNIQUE column, so
# REPLACE can delete a row without firing its delete trigger.
SHAPES = {
    "integer": ("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT, tag TEXT UNIQUE, other INT)",
                "id", lambda k: k),
    "rowid": ("CREATE TABLE t (a TEXT, b INT, body TEXT, tag TEXT UNIQUE, other INT, "
              "PRIMARY KEY (a, b))", "rowid", lambda k: k),
    "text": ("CREATE TABLE t (k TEXT PRIMARY KEY, body TEXT, tag TEXT UNIQUE, other INT) "
             "WITHOUT ROWID", "k", lambda k: f"k{k}"),
}

keys = st.integers(1, 6)
bodies = st.sampled_from(["alpha", "beta", "gamma", "delta", "", None])
tags = st.sampled_from(["a", "b", None])
OPS = st.one_of(
    st.tuples(st.just("insert"), keys, bodies, tags),
    st.tuples(st.just("replace"), keys, bodies, tags),
    st.tuples(st.just("upsert"), keys, bodies, tags),
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
            if name in ("insert", "replace", "upsert"):
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
