"""PostgreSQL search beyond the conformance suite: the ``ids`` filter, the ``kind`` filter
through pgvector's iterative index scan, and keyword queries made of hostile text."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from conformance.encoders import make_encoder, unit_vectors, vector_text
from conformance.engines import PgRecordsStore
from embeddable_db.engine.postgres import search

DIM = 16


@pytest.fixture
def open_store(pg_conninfo):
    opened = []

    def open_(**options):
        options.setdefault("encoder", make_encoder(f"vectors:{DIM}"))
        store = PgRecordsStore(pg_conninfo, **options)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()
        store.conn.close()


def exact_top(query, vectors: dict[str, np.ndarray], k: int) -> list[tuple[str, float]]:
    query = query / np.linalg.norm(query)
    distances = {rid: 1.0 - float(np.dot(query, v)) for rid, v in vectors.items()}
    return sorted(distances.items(), key=lambda item: (item[1], item[0]))[:k]


def add(store, vectors, kinds=None) -> dict[str, np.ndarray]:
    kinds = kinds or ["a"] * len(vectors)
    store.add_embeddings(
        [(i, {"body": vector_text(v)}, kinds[i]) for i, v in enumerate(vectors)], batch_size=500
    )
    return {str(i): v for i, v in enumerate(vectors)}


# -- ids ----------------------------------------------------------------------------------------
def test_ids_filter_returns_the_exact_top_k_of_those_records(open_store):
    store = open_store()
    vectors = unit_vectors(400, DIM, seed=1)
    truth = add(store, vectors, kinds=["a" if i % 3 else "b" for i in range(400)])
    rng = np.random.default_rng(2)
    ids = [str(i) for i in rng.choice(400, size=60, replace=False)]
    query = unit_vectors(1, DIM, seed=3)[0]
    hits = store._engine.search(query, 10, None, ids=ids)
    wanted = exact_top(query, {rid: truth[rid] for rid in ids}, 10)
    assert [rid for rid, _ in hits] == [rid for rid, _ in wanted]
    assert [d for _, d in hits] == pytest.approx([d for _, d in wanted], abs=1e-4)
    # all of them, when top_k is larger than the list; ids without a vector are no hits
    assert len(store._engine.search(query, 100, None, ids=[*ids, "absent", "no\x00such"])) == 60
    b_ids = [rid for rid in ids if int(rid) % 3 == 0]
    b_hits = store._engine.search(query, 100, "b", ids=ids)
    assert sorted(rid for rid, _ in b_hits) == sorted(b_ids)
    assert store._engine.search(query, 10, None, ids=[]) == []


def test_ids_filter_on_keyword_search(open_store, pg_conninfo):
    store = open_store(encoder=make_encoder("hash:32"))
    store.conn.execute("INSERT INTO records VALUES ('1', 'timeout in the parser', 'a'), "
                       "('2', 'timeout again', 'a'), ('3', 'a timeout of the network', 'b')")
    store.backfill_embeddings()
    assert {rid for rid, _ in store._engine.keyword_search("timeout", 10, None)} == {"1", "2", "3"}
    assert [rid for rid, _ in store._engine.keyword_search("timeout", 10, None, ids=["3", "9"])] == ["3"]
    assert store._engine.keyword_search("timeout", 10, "a", ids=["3"]) == []
    assert store._engine.keyword_search("timeout", 10, None, ids=[]) == []


# -- kind through the iterative index scan ---------------------------------------------------------
def test_a_rare_kind_still_gets_top_k_from_the_hnsw_index(open_store):
    """1% of the rows are of kind "rare". Without an iterative scan the index hands over
    ef_search candidates, of which the filter keeps almost none; with ``relaxed_order`` it
    goes on until top_k rows pass. The planner is made to use the index (as at scale), and
    ``_approximate`` is called directly, so the exact fallback cannot hide a short answer.
    (At scale the planner reads a rare kind through its btree index instead, exactly.)"""
    store = open_store()
    n = 3000
    vectors = unit_vectors(n, DIM, seed=5)
    kinds = ["rare" if i % 100 == 0 else "common" for i in range(n)]
    truth = add(store, vectors, kinds)
    conn, engine = store.conn, store._engine
    conn.execute("DROP INDEX embeddings_kind")  # else the planner reads the 30 rows by kind
    conn.execute("ANALYZE embeddings")
    conn.execute("SET enable_seqscan = off")
    conn.execute("SET enable_bitmapscan = off")
    query = unit_vectors(1, DIM, seed=6)[0]
    where, args = search._filters(engine.model_id, DIM, "rare", None)

    def approximate(iterative: str) -> list[tuple[str, float]]:
        with conn.transaction():
            conn.execute("SELECT set_config('hnsw.iterative_scan', %s, true)", (iterative,))
            plan = "\n".join(row[0] for row in engine.cur.execute(
                psycopg.sql.SQL("EXPLAIN SELECT record_id FROM embeddings WHERE {w} "
                                "ORDER BY {e} <=> %s LIMIT 10").format(
                    w=where, e=search.vector_expression(DIM)), [*args, query]))
            assert "embeddings_hnsw_16" in plan, plan
            if iterative == "off":
                rows = engine.cur.execute(psycopg.sql.SQL(
                    "SELECT record_id, {e} <=> %s FROM embeddings WHERE {w} ORDER BY {e} <=> %s "
                    "LIMIT 10").format(e=search.vector_expression(DIM), w=where),
                    [query, *args, query]).fetchall()
                return rows
            return search._approximate(engine.cur, engine.names, query, DIM, where, args, 10,
                                       40, outer=True)

    assert len(approximate("off")) < 10  # what the filter leaves of 40 candidates
    hits = approximate("relaxed_order")
    assert len(hits) == 10 and all(kinds[int(rid)] == "rare" for rid, _ in hits)
    rare = {rid: v for rid, v in truth.items() if kinds[int(rid)] == "rare"}
    exact = dict(exact_top(query, rare, len(rare)))
    assert [d for _, d in hits] == sorted(d for _, d in hits)
    assert all(d == pytest.approx(exact[rid], abs=1e-4) for rid, d in hits)
    best = {rid for rid, _ in exact_top(query, rare, 10)}
    assert len(best & {rid for rid, _ in hits}) >= 9  # recall of the approximate index
    # the public search gives the same top_k, whatever the planner picks
    assert len(store.search_by_vector(query, top_k=10, kind="rare")) == 10
    assert len(store.search_by_vector(query, top_k=50, kind="rare")) == 30  # all there are


def test_search_settings_do_not_leak_into_the_callers_transaction(open_store):
    store = open_store()
    add(store, unit_vectors(20, DIM, seed=7))
    conn = store.conn
    with conn.transaction():
        conn.execute("SET LOCAL hnsw.ef_search = 17")
        store.search_by_vector(unit_vectors(1, DIM, seed=8)[0], top_k=5)
        assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "17"
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


# -- hostile keyword text ----------------------------------------------------------------------------
HOSTILE = [
    "'; DROP TABLE records; --", "a & b | !c <-> d:*", "\\", "'", "''", '"', "\\'", "( ) ! & |",
    "timeout:*", "timeout:A", "!timeout", "timeout <-> error", "OR AND NOT", "-", "*", "::",
    "nul\x00byte", "\x01\x02", "ünïcødé 日本語 🙂", "x" * 5000, " ".join(f"w{i}" for i in range(500)),
    "E'\\x41'", "$1", "%s", "%(text)s", "{}", "?",
]


def test_any_text_is_a_keyword_query_and_never_sql_or_query_syntax(open_store):
    store = open_store(encoder=make_encoder("hash:32"))
    store.conn.execute(
        "INSERT INTO records VALUES ('1', 'timeout error in the parser', 'a'), "
        "('2', 'O''Brien wrote C:\\path\\file', 'a'), ('3', 'nul byte here', 'a')"
    )
    store.backfill_embeddings()
    for text in HOSTILE:
        hits = store.search_by_keyword(text, top_k=5)
        assert all(isinstance(rid, str) and score > 0 for rid, score in hits), (text, hits)
    assert store.conn.execute("SELECT count(*) FROM records").fetchone()[0] == 3
    assert [rid for rid, _ in store.search_by_keyword("!timeout")] == ["1"]  # a word, not NOT
    assert [rid for rid, _ in store.search_by_keyword("timeout:A")][0] == "1"
    assert [rid for rid, _ in store.search_by_keyword("O'Brien")] == ["2"]
    assert [rid for rid, _ in store.search_by_keyword("nul\x00byte")] == ["3"]
    assert store.search_by_keyword("( ) ! & |") == []
    ranked = store.search_by_keyword("parser timeout error")
    assert ranked[0][0] == "1" and ranked[0][1] > 0
    assert store.verify_index().ok


def test_keyword_coverage_and_texts_for_hybrid_search(open_store):
    store = open_store(encoder=make_encoder("hash:32"))
    rows = [(str(i), f"common filler number{i}", "a") for i in range(20)]
    rows += [("rare", "common zebra", "a")]
    store.conn.cursor().executemany("INSERT INTO records VALUES (%s, %s, %s)", rows)
    store.backfill_embeddings()
    engine = store._engine
    assert engine.keyword_coverage("zebra common", 1.0) > 0.9  # the best match holds both
    assert engine.keyword_coverage("zebra common", 0.0) == 0.0
    only_common = engine.keyword_coverage("common nosuchword", 1.0)
    assert 0.0 <= only_common < 0.1  # what it holds is in every row; the rare word is in none
    assert engine.keyword_coverage("nosuchword", 1.0) == 0.0
    assert engine.keyword_texts(["rare", "3", "absent"]) == {
        "rare": "common zebra", "3": "common filler number3"}
    assert engine.keyword_texts([]) == {}


def test_the_public_ids_filter_and_hybrid_search_work_on_postgres(open_store):
    store = open_store(encoder=make_encoder("hash:32"))
    store.conn.cursor().executemany("INSERT INTO records VALUES (%s, %s, %s)", [
        ("1", "database connection timeout", "a"), ("2", "timeout while parsing", "a"),
        ("3", "the network is down", "b"), ("4", "disk full error E1234", "b"),
    ])
    store.backfill_embeddings()
    assert {rid for rid, _ in store.search_by_text("timeout", top_k=10, ids=[2, 3])} == {"2", "3"}
    assert [rid for rid, _ in store.search_by_keyword("timeout", ids=["2", "4"])] == ["2"]
    hits = store.search_hybrid("E1234 disk", top_k=3)
    assert hits[0].record_id == "4" and hits[0].keyword_rank == 1
    assert [h.record_id for h in store.search_hybrid("timeout", top_k=4, kind="a")] in (
        ["1", "2"], ["2", "1"])
