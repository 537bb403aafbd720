"""Searches on a real streaming hot standby (``read_url=``), writes on the primary.

The pair is ``pg_replica``: a PostgreSQL 18 primary and a standby made by ``pg_basebackup -R``
from the same server package. Which server answered a search is shown by what only one of
them holds: with replay paused on the standby, a row another connection writes on the primary
is found by a search of the primary and not by one of the standby.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

import numpy as np
import psycopg
import pytest

from conformance.encoders import make_encoder, unit_vectors, vector_text
from conformance.engines import PgRecordsStore
from embeddable_db import BotDB, BotRecord, HashingEncoder, InvalidInputError
from embeddable_db.engine.postgres import replica, schema

DIM = 16


@pytest.fixture
def pair(pg_replica):
    """(primary conninfo, standby conninfo) of a new database, already on the standby."""
    name = pg_replica.database()
    return pg_replica.primary.conninfo(name), pg_replica.standby.conninfo(name)


@pytest.fixture
def open_store():
    opened = []

    def open_(conninfo: str, **options):
        options.setdefault("encoder", make_encoder(f"vectors:{DIM}"))
        store = PgRecordsStore(conninfo, **options)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()
        store.conn.close()


@contextmanager
def replay_paused(pg_replica):
    """The standby receives the primary's WAL but applies none of it until the block ends."""
    with psycopg.connect(pg_replica.standby.conninfo("postgres"), autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        try:
            yield
        finally:
            conn.execute("SELECT pg_wal_replay_resume()")


@contextmanager
def replay_delayed(pg_replica, delay: str):
    """The standby applies each commit ``delay`` after the primary made it (a lagging standby)."""
    with psycopg.connect(pg_replica.standby.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'")
        conn.execute("SELECT pg_reload_conf()")
        try:
            yield
        finally:
            conn.execute("ALTER SYSTEM RESET recovery_min_apply_delay")
            conn.execute("SELECT pg_reload_conf()")


def primary_position(pg_replica) -> str:
    with psycopg.connect(pg_replica.primary.conninfo("postgres"), autocommit=True) as conn:
        return conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]


def add(store, vectors, start: int = 0) -> None:
    store.add_embeddings([(start + i, {"body": vector_text(v)}, "a") for i, v in enumerate(vectors)])


def found(store, vector) -> list[str]:
    return [rid for rid, _ in store.search_by_vector(vector, 3)]


def answered(store) -> int:
    return store._engine.standby.answered


# -- where searches go ----------------------------------------------------------------------
def test_searches_run_on_the_standby_and_see_only_what_it_replayed(pg_replica, pair, open_store):
    primary, standby = pair
    store = open_store(primary, read_url=standby)
    other = open_store(primary)  # another writer (no read_url: as another process would be)
    vectors = unit_vectors(3, DIM, seed=1)
    add(store, vectors[:1])
    assert found(store, vectors[0])[0] == "0"
    with replay_paused(pg_replica):
        add(other, vectors[1:2], start=1)
        before = answered(store)
        assert "1" not in found(store, vectors[1])  # the standby has not replayed it
        assert "1" in found(other, vectors[1])  # the primary has it
        assert answered(store) == before + 1
        with psycopg.connect(standby, autocommit=True) as conn:  # the store's own connection
            (sessions,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchone()
        assert sessions == 1
    pg_replica.wait_replayed(primary_position(pg_replica))
    assert found(store, vectors[1])[0] == "1"  # replayed: the standby finds it now
    assert answered(store) == before + 2


def test_a_write_then_a_search_sees_it_on_the_standby(pg_replica, pair, open_store):
    primary, standby = pair
    store = open_store(primary, read_url=standby, read_wait=5.0)
    twin = open_store(primary, read_url=standby, read_wait=5.0)  # another handle, same process
    vectors = unit_vectors(20, DIM, seed=2)
    before, twin_before = answered(store), answered(twin)
    with replay_delayed(pg_replica, "150ms"):  # each commit reaches searches 150 ms late
        for i, vector in enumerate(vectors[:5]):
            add(store, [vector], start=i)
            started = time.perf_counter()
            assert found(store, vector)[0] == str(i)  # at once, every time: it waited
            assert time.perf_counter() - started >= 0.1
        for i, vector in enumerate(vectors[5:10], start=5):
            add(store, [vector], start=i)
            assert found(twin, vector)[0] == str(i)  # this process's commit, seen by its other store
    assert answered(store) - before == 5 and answered(twin) - twin_before == 5
    for i, vector in enumerate(vectors[10:], start=10):  # no lag: no wait worth the name
        add(store, [vector], start=i)
        assert found(store, vector)[0] == str(i)
    assert answered(store) - before == 15
    # keyword and hybrid searches (and their parts) too
    assert store.search_by_keyword(vector_text(vectors[5]), 1)[0][0] == "5"
    assert store.search_hybrid(vector_text(vectors[6]), 1)[0].record_id == "6"
    assert store.embedding_count() == 20
    assert np.allclose(store.get_vector("7"), vectors[7], atol=1e-6)
    assert answered(store) - before > 15


def test_threads_sharing_a_store_each_see_their_own_writes(pair, open_store):
    primary, standby = pair
    store = open_store(primary, read_url=standby, read_wait=5.0)
    vectors = unit_vectors(40, DIM, seed=8)
    missed: list[str] = []

    def work(offset: int) -> None:
        for i in range(offset, 40, 2):
            add(store, [vectors[i]], start=i)
            if found(store, vectors[i])[0] != str(i):
                missed.append(str(i))

    threads = [threading.Thread(target=work, args=(offset,)) for offset in (0, 1)]
    before = answered(store)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert missed == [] and store.embedding_count() == 40
    assert answered(store) - before >= 40


def test_with_replay_paused_a_search_after_a_write_asks_the_primary(pg_replica, pair, open_store):
    primary, standby = pair
    store = open_store(primary, read_url=standby, read_wait=1.0)
    other = open_store(primary)
    vectors = unit_vectors(5, DIM, seed=3)
    add(store, vectors[:1])
    assert found(store, vectors[0])[0] == "0"
    with replay_paused(pg_replica):
        add(other, vectors[1:2], start=1)  # on the primary only
        add(store, vectors[2:3], start=2)  # this store's write: its search must see it
        before = answered(store)
        started = time.perf_counter()
        assert found(store, vectors[2])[0] == "2"
        waited = time.perf_counter() - started
        assert "1" in found(store, vectors[1])  # the primary answered: it has the other write
        again = time.perf_counter() - started - waited
        assert answered(store) == before
        assert waited >= 1.0  # it waited read_wait for the standby first ...
        assert again < 0.5  # ... once: while the standby lags, the primary answers at once
    pg_replica.wait_replayed(primary_position(pg_replica))
    with replay_paused(pg_replica):  # back on the standby: it misses what it has not replayed
        add(other, vectors[3:4], start=3)
        assert "3" not in found(store, vectors[3])
        assert answered(store) == before + 1
    # read_wait=0: never waits, the primary answers while the standby is behind
    fast = open_store(primary, read_url=standby, read_wait=0)
    with replay_paused(pg_replica):
        add(fast, vectors[4:5], start=4)
        started = time.perf_counter()
        assert found(fast, vectors[4])[0] == "4"
        assert time.perf_counter() - started < 0.5


def test_a_search_inside_a_transaction_sees_its_writes_and_the_commit_is_waited_for(pair, open_store):
    primary, standby = pair
    store = open_store(primary, read_url=standby, read_wait=5.0)
    vectors = unit_vectors(2, DIM, seed=4)
    before = answered(store)
    with store.embedding_transaction():
        add(store, vectors[:1])
        assert found(store, vectors[0])[0] == "0"  # uncommitted: only the primary session has it
        assert answered(store) == before
    assert found(store, vectors[0])[0] == "0"  # committed: the standby waited for it
    assert answered(store) == before + 1


# -- a standby that fails -------------------------------------------------------------------
def test_a_stopped_standby_is_a_warning_once_and_comes_back(
    pg_replica, pair, open_store, caplog, monkeypatch
):
    monkeypatch.setattr(replica, "RETRY_SECONDS", 0.3)
    primary, standby = pair
    store = open_store(primary, read_url=standby, read_wait=5.0)
    vectors = unit_vectors(6, DIM, seed=5)
    add(store, vectors[:1])
    assert found(store, vectors[0])[0] == "0"
    caplog.set_level(logging.INFO, logger=replica.__name__)
    pg_replica.standby.stop()
    try:
        for i in range(1, 4):  # a search, then a write and a search, with no standby
            assert found(store, vectors[0])[0] == "0"
            add(store, vectors[i:i + 1], start=i)
            assert found(store, vectors[i])[0] == str(i)
        time.sleep(0.4)  # past the retry time: it is tried again, and still fails
        assert found(store, vectors[3])[0] == "3"
        lost = [r for r in caplog.records if "cannot be used" in r.getMessage()]
        assert len(lost) == 1, caplog.text
        # a store opened while the standby is down opens, warns, and searches the primary
        late = open_store(primary, read_url=standby)
        assert found(late, vectors[2])[0] == "2"
    finally:
        pg_replica.standby.start()
    time.sleep(0.4)
    before = answered(store)
    add(store, vectors[4:5], start=4)
    assert found(store, vectors[4])[0] == "4"
    assert answered(store) == before + 1  # back on the standby
    assert any("answers again" in r.getMessage() for r in caplog.records)


# -- what read_url may be -------------------------------------------------------------------
def test_a_read_url_that_is_not_a_standby_of_the_store_is_refused(
    pg_replica, pair, open_store, postgres_server, pg_conninfo
):
    primary, standby = pair

    def tables(conninfo):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            return conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE "
                                "'embeddings%%' AND schemaname = current_schema()").fetchone()[0]

    with pytest.raises(InvalidInputError, match="not a hot standby"):
        open_store(primary, read_url=primary)  # a primary: it could not say what it replayed
    with pytest.raises(InvalidInputError, match="names database 'postgres'"):
        open_store(primary, read_url=pg_replica.standby.conninfo("postgres"))
    with pytest.raises(InvalidInputError, match="standby of another server"):
        open_store(pg_conninfo, read_url=standby)  # the session's server, not the pair's
    with pytest.raises(InvalidInputError, match="not a libpq conninfo"):
        open_store(primary, read_url="host=x bogus_option=1")
    assert tables(primary) == 0 and tables(pg_conninfo) == 0  # nothing was created
    with pytest.raises(InvalidInputError, match="read_wait must be"):
        open_store(primary, read_url=standby, read_wait=-1)
    with pytest.raises(InvalidInputError, match="read_url must be"):
        open_store(primary, read_url=" ")


def test_the_six_databases_take_read_url_and_sqlite_refuses_it(pg_replica, tmp_path):
    name = pg_replica.database()
    url, standby_url = pg_replica.primary.url(name), pg_replica.standby.url(name)
    with pytest.raises(InvalidInputError, match="not a hot standby"):
        BotDB(url=url, read_url=url, encoder=HashingEncoder(32))
    with psycopg.connect(pg_replica.primary.conninfo(name), autocommit=True) as conn:
        assert conn.execute("SELECT to_regnamespace('bot')").fetchone()[0] is None
    with pytest.raises(InvalidInputError, match="SQLite database"):
        BotDB(tmp_path / "bots.db", read_url=standby_url, encoder=HashingEncoder(32))
    assert list(tmp_path.iterdir()) == []  # refused before the file was made
    with BotDB(url=url, read_url=standby_url, read_wait=5, encoder=HashingEncoder(32)) as db:
        before = db._engine.standby.answered
        record_id = db.add(BotRecord(name="replica-tested ranker", purpose="orders search hits"))
        hits = db.search("replica-tested ranker", top_k=1)
        assert hits[0].record_id == record_id and hits[0].record.name == "replica-tested ranker"
        assert db._engine.standby.answered > before
    with BotDB(url=url, read_url=standby_url, read_wait=0.05, encoder=HashingEncoder(32)) as db:
        with replay_paused(pg_replica):
            other = db.add(BotRecord(name="written while paused"))
            assert db.search("written while paused", top_k=1, mode="keyword")[0].record_id == other
    with BotDB(url=url, read_url=standby_url, read_wait=5, read_only=True,
               encoder=HashingEncoder(32)) as reader:
        assert reader.search("replica-tested ranker", top_k=1)[0].record_id == record_id
        assert reader._engine.standby.answered > 0


def test_a_database_opened_by_the_environment_searches_its_standby(pg_replica, monkeypatch, tmp_path):
    name = pg_replica.database()
    url, standby_url = pg_replica.primary.url(name), pg_replica.standby.url(name)
    monkeypatch.setenv("EMBEDDABLE_DB_URL", url)
    monkeypatch.setenv("EMBEDDABLE_DB_READ_URL", standby_url)
    with BotDB(encoder=HashingEncoder(32), read_wait=5) as db:
        record_id = db.add(BotRecord(name="env ranker"))
        before = db._engine.standby.answered
        assert db.search("env ranker", top_k=1)[0].record_id == record_id
        assert db._engine.standby.answered > before
    with BotDB(url=url, encoder=HashingEncoder(32)) as db:  # a URL of its own: no standby
        assert not hasattr(db._engine, "standby")
    with BotDB(tmp_path / "bots.db", encoder=HashingEncoder(32)) as db:  # a file: no standby
        assert db.path is not None and not hasattr(db._engine, "standby")
    monkeypatch.setenv("EMBEDDABLE_DB_READ_URL", "host=x bogus_option=1")
    with pytest.raises(InvalidInputError, match=r"\$EMBEDDABLE_DB_READ_URL: read_url is not a libpq"):
        BotDB(encoder=HashingEncoder(32))


def test_the_sqlite_mixin_refuses_read_url(tmp_path):
    from conftest import NotesDB

    with pytest.raises(InvalidInputError, match="SQLite database"):
        NotesDB(str(tmp_path / "notes.db"), encoder=HashingEncoder(8), read_url="host=/tmp")


# -- the standby's index -------------------------------------------------------------------
def test_the_standby_searches_its_hnsw_index_and_answers_as_the_primary(pg_replica, pair, open_store):
    primary, standby = pair
    store = open_store(primary, read_url=standby)
    plain = open_store(primary)
    vectors = unit_vectors(2000, DIM, seed=6)
    add(store, vectors)
    with psycopg.connect(primary, autocommit=True) as conn:
        conn.execute("ANALYZE embeddings")
    pg_replica.wait_replayed(primary_position(pg_replica))
    with psycopg.connect(standby, autocommit=True) as conn:
        plan = "\n".join(row[0] for row in conn.execute(
            psycopg.sql.SQL("EXPLAIN SELECT record_id FROM embeddings WHERE dim = {d} "
                            "ORDER BY {e} <=> %s::vector LIMIT 10").format(
                d=psycopg.sql.Literal(DIM), e=schema.vector_expression(DIM)),
            (vector_text(vectors[0]),)))
    assert "embeddings_hnsw_16" in plan, plan
    before = answered(store)
    for query in unit_vectors(20, DIM, seed=7):
        ours, theirs = store.search_by_vector(query, 10), plain.search_by_vector(query, 10)
        assert [r for r, _ in ours] == [r for r, _ in theirs]
        assert [d for _, d in ours] == pytest.approx([d for _, d in theirs], abs=1e-6)
    assert answered(store) == before + 20
