"""A store's first backfill is its initial load: the HNSW index is built once, after the rows
(``engine/postgres/bulk.py``), while a backfill into a store that has vectors keeps it current.
Other threads search meanwhile, and an interrupted load leaves a store that reopens whole."""

from __future__ import annotations

import threading

import psycopg
import pytest

from conformance.engines import PG_RECORDS_DDL
from embeddable_db import BackfillInterrupted, HashingEncoder


def hnsw_indexes(conninfo: str) -> list[bool]:
    """Whether each HNSW index of the schema is valid (none: an empty list)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return [row[0] for row in conn.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'hnsw' "
            "AND c.relnamespace = current_schema()::regnamespace")]


class WatchingEncoder(HashingEncoder):
    """The hashing encoder, calling ``watch(call number)`` before each model call."""

    def __init__(self, watch):
        super().__init__(32)
        self.watch = watch

    def encode(self, texts, batch_size=None):
        self.watch(self.calls + 1)
        return super().encode(texts, batch_size)


def put_records(conninfo: str, start: int, n: int) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(PG_RECORDS_DDL)
        conn.cursor().executemany("INSERT INTO records VALUES (%s, %s, 'note')", [
            (str(i), f"record {i} about {['cats', 'dogs', 'ships'][i % 3]}")
            for i in range(start, start + n)])


def test_the_first_backfill_builds_the_index_once_after_its_rows(pg_conninfo, pg_stores):
    put_records(pg_conninfo, 1, 300)
    seen = []
    store = pg_stores(encoder=WatchingEncoder(
        lambda call: seen.append(hnsw_indexes(pg_conninfo))))
    result = store.backfill_embeddings(batch_size=20)
    assert result.embedded == 300
    assert seen == [[]] * 15  # no graph to insert into while loading
    assert hnsw_indexes(pg_conninfo) == [True]
    assert store.verify_index().ok
    hits = store.search_by_text("record 7 about dogs", top_k=3)
    assert hits[0][0] == "7" and hits[0][1] < 1e-5

    put_records(pg_conninfo, 301, 60)  # a store with vectors: its index stays current
    seen.clear()
    assert store.backfill_embeddings(batch_size=20).embedded == 60
    assert seen == [[True]] * 3
    assert store.verify_index().ok


def test_other_threads_search_while_the_first_load_encodes(pg_conninfo, pg_stores):
    put_records(pg_conninfo, 1, 200)
    answers = []
    query = HashingEncoder(32).encode(["record 5 about ships"])[0]

    def search_from_another_thread(call: int) -> None:
        if call == 4:  # three batches are committed, the rest not yet
            thread = threading.Thread(target=lambda: answers.append(
                store.search_by_vector(query, top_k=2)))
            thread.start()
            thread.join(timeout=30)
            assert not thread.is_alive(), "the search waited for the whole backfill"

    store = pg_stores(encoder=WatchingEncoder(search_from_another_thread))
    assert store.backfill_embeddings(batch_size=20).embedded == 200
    assert answers and answers[0][0][0] == "5"  # found by an exact scan, the index not built


def test_an_interrupted_first_load_reopens_with_its_index(pg_conninfo, pg_stores):
    put_records(pg_conninfo, 1, 200)

    def ctrl_c(call: int) -> None:
        if call == 5:
            raise KeyboardInterrupt

    store = pg_stores(encoder=WatchingEncoder(ctrl_c))
    with pytest.raises(BackfillInterrupted) as caught:
        store.backfill_embeddings(batch_size=20)
    assert caught.value.result.committed == 80
    assert hnsw_indexes(pg_conninfo) == []
    report = store.verify_index()
    assert not report.ok and any("index" in problem for problem in report.problems)
    query = HashingEncoder(32).encode(["record 9 about cats"])[0]
    assert store.search_by_vector(query, top_k=1)[0][0] == "9"  # exactly, meanwhile
    store.close()
    store.conn.close()

    again = pg_stores(encoder=HashingEncoder(32))  # a writable open makes it
    assert hnsw_indexes(pg_conninfo) == [True]
    assert again.verify_index().ok
    result = again.backfill_embeddings(batch_size=50)
    assert (result.embedded, result.unchanged) == (120, 80)
