"""Bad input on PostgreSQL: the calls of ``test_bad_input_everywhere`` on a pgvector store, each
a clear error with the schema byte-for-byte unchanged (constructor options: ``tests/postgres/
test_opening.py``).

"Unchanged" is every row of every table of the test's schema in PostgreSQL's own text form
(vectors, the generated ``tsvector``, the writing transaction's id, timestamps), the index
definitions, and each relation's file node, which a ``REINDEX`` or a rewrite would change.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql
from reliability_helpers import MODEL
from test_bad_input_everywhere import (
    BAD_BACKFILLS,
    BAD_RECORDS,
    BAD_SEARCHES,
    ID_ENTRY_POINTS,
    NOT_NUMBERS,
    UNUSUAL_IDS,
    WRONG_SHAPES,
)

from conformance.engines import PG_RECORDS_DDL, PgRecordsStore
from embeddable_db import EmbeddingError, InvalidInputError, InvalidVectorError


def pg_snapshot(conninfo: str) -> tuple:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1")]
        rows = {table: conn.execute(sql.SQL("SELECT t::text FROM {} AS t ORDER BY 1").format(
            sql.Identifier(table))).fetchall() for table in tables}
        indexes = conn.execute("SELECT indexname, indexdef FROM pg_indexes "
                               "WHERE schemaname = current_schema() ORDER BY 1").fetchall()
        nodes = conn.execute("SELECT relname, relfilenode FROM pg_class WHERE relnamespace = "
                             "current_schema()::regnamespace ORDER BY 1").fetchall()
    return rows, indexes, nodes


@pytest.fixture
def store(pg_conninfo):
    """Ten embedded records, and two not yet embedded (a backfill that wrongly started would
    change something)."""
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute(PG_RECORDS_DDL)
        conn.cursor().executemany("INSERT INTO records VALUES (%s, %s, 'note')",
                                  [(str(i), f"note{i} some words") for i in range(1, 11)])
    db = PgRecordsStore(pg_conninfo, model_name=MODEL)
    db.backfill_embeddings()
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute("INSERT INTO records VALUES ('11', 'note11 later', 'note'), "
                     "('12', 'note12 later', 'note')")
    db.conninfo = pg_conninfo
    yield db
    db.close()
    db.conn.close()


def refused(db, call, error=InvalidInputError, match=None):
    before = pg_snapshot(db.conninfo)
    with pytest.raises(error, match=match) as caught:
        call(db)
    assert isinstance(caught.value, EmbeddingError | ValueError)
    assert pg_snapshot(db.conninfo) == before, "a refused call changed the schema"
    assert db.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    return caught.value


def test_the_snapshot_sees_a_write(store):
    """The comparison can fail: one re-embedded vector, one removed, one version changed."""
    for change in (lambda db: db.add_embedding(3, {"body": "other text"}, "note"),
                   lambda db: db.remove_embedding(4),
                   lambda db: db.update_embedding_version(5, embedding_version=9),
                   lambda db: db.rebuild_index()):
        before = pg_snapshot(store.conninfo)
        change(store)
        assert pg_snapshot(store.conninfo) != before


@pytest.mark.parametrize("entry", list(ID_ENTRY_POINTS))
def test_unusual_record_ids(store, entry):
    for rid in UNUSUAL_IDS:
        error = refused(store, lambda db, rid=rid: ID_ENTRY_POINTS[entry](db, rid))
        assert "record_id" in str(error), (entry, rid, error)


@pytest.mark.parametrize(("call", "match"), WRONG_SHAPES + BAD_RECORDS + BAD_SEARCHES)
def test_bad_arguments_and_records(store, call, match):
    refused(store, call, match=match)


@pytest.mark.parametrize(("vector", "match"), NOT_NUMBERS)
def test_vectors_that_only_look_like_numbers(store, vector, match):
    refused(store, lambda db: db.search_by_vector(vector), InvalidVectorError, match)


@pytest.mark.parametrize(("kwargs", "match"), BAD_BACKFILLS)
def test_bad_backfill_arguments(store, kwargs, match):
    refused(store, lambda db: db.backfill_embeddings(**kwargs), match=match)


@pytest.mark.parametrize("call", [
    lambda db: db.add_embedding(1, {"body": "x"}, "note", source_id="s\x00"),
    lambda db: db.search_by_text("note1", top_k=-3),
    lambda db: db.search_by_vector([0.1] * 31),
    lambda db: db.search_by_vector([float("nan")] * 32),
    lambda db: db.add_embeddings([(50, {"body": "fine"}, "note"), (51, {"body": "ok"}, "")]),
])
def test_what_postgresql_itself_would_refuse_is_refused_first(store, call):
    """NUL bytes, wrong dimensions, NaN and empty kinds are caught before a statement runs:
    the error is ours, and no half-batch reaches the server."""
    refused(store, call, error=(InvalidInputError, InvalidVectorError))
