"""PostgreSQL transactions, orphans, verify and repair: one owner per transaction, never a
transaction left open, a vector of a running transaction never taken for an orphan."""

from __future__ import annotations

import psycopg
import pytest

from conformance.encoders import make_encoder
from conformance.engines import PgRecordsStore
from embeddable_db import EmbeddingError

IDLE = psycopg.pq.TransactionStatus.IDLE


class ImplicitStore(PgRecordsStore):
    """The store on a connection in psycopg's default mode (autocommit off)."""

    def __init__(self, conninfo, **options):
        self.conninfo = conninfo
        self.conn = psycopg.connect(conninfo)
        self.conn.execute("CREATE TABLE IF NOT EXISTS records(id text PRIMARY KEY, "
                          "body text NOT NULL, kind text NOT NULL)")
        self.conn.commit()
        super(PgRecordsStore, self).__init__(**options)


def others_see(conninfo: str, sql: str):
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def test_writes_commit_and_reads_leave_no_transaction_open_without_autocommit(pg_stores, pg_conninfo):
    store = pg_stores(ImplicitStore)
    assert store.conn.info.transaction_status == IDLE  # opening left none open
    store.add_embedding(1, {"body": "alpha beta"}, "a")
    assert store.conn.info.transaction_status == IDLE
    assert others_see(pg_conninfo, "SELECT record_id FROM embeddings") == [("1",)]
    for call in (lambda: store.search_by_text("alpha", top_k=1), store.embedding_count,
                 lambda: store.search_by_keyword("alpha"), store.verify_index,
                 lambda: store.get_vector(1), store.model_counts):
        call()
        assert store.conn.info.transaction_status == IDLE, call


def test_in_the_callers_transaction_the_store_writes_in_a_savepoint(pg_stores, pg_conninfo):
    store = pg_stores(ImplicitStore)
    store.conn.execute("INSERT INTO records VALUES ('1', 'alpha', 'a')")  # implicit BEGIN
    store.add_embedding(1, {"body": "alpha"}, "a")
    assert others_see(pg_conninfo, "SELECT count(*) FROM embeddings") == [(0,)]
    store.conn.rollback()
    assert store.embedding_count() == 0 and store.get_vector(1) is None
    with store.embedding_transaction():
        store.conn.execute("INSERT INTO records VALUES ('2', 'beta', 'a')")
        store.add_embedding(2, {"body": "beta"}, "a")
    assert others_see(pg_conninfo, "SELECT id FROM records") == [("2",)]
    assert others_see(pg_conninfo, "SELECT record_id FROM embeddings") == [("2",)]
    with pytest.raises(RuntimeError, match="undo"), store.embedding_transaction():
        store.add_embedding(3, {"body": "gamma"}, "a")
        raise RuntimeError("undo it all")
    assert store.get_vector(3) is None and store.embedding_count() == 1


def test_a_backfill_whose_records_query_opened_a_transaction_says_so_and_writes_nothing(
    pg_stores, pg_conninfo,
):
    store = pg_stores(ImplicitStore)
    store.conn.execute("INSERT INTO records VALUES ('1', 'alpha', 'a'), ('2', 'beta', 'a')")
    store.conn.commit()
    with pytest.raises(EmbeddingError, match="connect with autocommit=True"):
        store.backfill_embeddings()  # iter_records' SELECT begins a transaction
    store.conn.rollback()
    assert others_see(pg_conninfo, "SELECT count(*) FROM embeddings") == [(0,)]
    with pytest.raises(EmbeddingError, match="commit or roll back the open transaction"):
        store.conn.execute("SELECT 1")
        store.rebuild_index()


def test_a_vector_of_a_transaction_running_when_the_walk_began_is_no_orphan(pg_stores, pg_conninfo):
    """The race a sequence number would lose: a writer takes its number before the walk
    reads ``last_seq()`` and commits after. Its vector must not be among the orphans."""
    store = pg_stores(encoder=make_encoder("hash:32"))
    store.add_embeddings([(1, {"body": "old one"}, "a")])
    writer = pg_stores(encoder=make_encoder("hash:32"))
    with writer.conn.transaction():
        writer.add_embedding(2, {"body": "written meanwhile"}, "a")
        through = store._engine.last_seq()
    orphans = store._engine.unseen_keys(set(), through)
    assert orphans == ["1"]  # committed before: an orphan if its record is gone; "2" is not
    assert store._engine.unseen_keys({"1"}, store._engine.last_seq()) == ["2"]


def test_verify_finds_a_dropped_index_and_other_text_and_repair_fixes_both(pg_stores, pg_conninfo):
    store = pg_stores()
    store.conn.execute("INSERT INTO records VALUES ('1', 'alpha timeout', 'a'), "
                       "('2', 'beta nul\x01 here', 'a')")
    store.backfill_embeddings()
    assert store.verify_index().ok
    store.conn.execute("DROP INDEX embeddings_hnsw_32")
    store.conn.execute("UPDATE embeddings SET body = 'something else' WHERE record_id = '1'")
    report = store.verify_index()
    assert not report.ok and len(report.problems) == 2, report.problems
    assert "embeddings_hnsw_32 of" in report.problems[0] and "missing" in report.problems[0]
    assert "other text than 1 vectors" in report.problems[1]
    assert store.search_by_keyword("something") == [("1", pytest.approx(0.0607927, abs=1e-3))]
    calls = store.encoder.calls
    report = store.verify_index(repair=True)
    assert report.repaired and report.problems == ["1 vectors have no keyword row, so keyword "
                                                   "search cannot find their records: run "
                                                   "backfill_embeddings() to index their text "
                                                   "(the model is not called)"]
    assert store.search_by_keyword("something") == []
    result = store.backfill_embeddings()
    assert (result.keyword_filled, result.unchanged, store.encoder.calls) == (1, 2, calls)
    assert store.verify_index().ok
    assert [rid for rid, _ in store.search_by_keyword("timeout")] == ["1"]


def test_text_with_nul_is_kept_searchable_and_verifies(pg_stores):
    store = pg_stores()
    store.conn.execute("INSERT INTO records VALUES ('1', 'plain text', 'a')")
    store.add_embedding(5, {"body": "before\x00after words"}, "a")
    assert [rid for rid, _ in store.search_by_keyword("after")] == ["5"]
    assert store.verify_index().ok
    with pytest.raises(Exception, match="NUL"):
        store.add_embedding("bad\x00id", {"body": "x"}, "a")
    assert store.get_vector("bad\x00id") is None and store.embedding_count() == 1


def test_four_connections_opening_and_first_writing_a_new_store_at_once(pg_conninfo):
    """Each creates the tables (once, under the advisory lock) and writes the first vectors,
    which create the HNSW index (once, before any row is written: no deadlock)."""
    import threading

    barrier = threading.Barrier(4, timeout=60)
    errors: list[BaseException] = []
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:  # the test's own table
        conn.execute("CREATE TABLE records(id text PRIMARY KEY, body text, kind text)")

    def writer(n: int) -> None:
        try:
            barrier.wait()
            store = PgRecordsStore(pg_conninfo, encoder=make_encoder("hash:32"))
            barrier.wait()
            for start in range(0, 50, 10):
                store.add_embeddings(
                    [(f"{n}-{i}", {"body": f"writer {n} record {i}"}, "a")
                     for i in range(start, start + 10)]
                )
            store.close()
            store.conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert others_see(pg_conninfo, "SELECT count(DISTINCT record_id) FROM embeddings") == [(200,)]
    names = {row[0] for row in others_see(
        pg_conninfo, "SELECT indexname FROM pg_indexes WHERE tablename = 'embeddings'")}
    assert "embeddings_hnsw_32" in names
