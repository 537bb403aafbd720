"""``migrate()``: the six databases copied from SQLite files to a real PostgreSQL server.

In process, against the test server (``tests/postgres``): records, ids, links and vectors
copied without a model call; a second run copies only what changed; the copy searches,
backfills and adds like a database made there; bad input changes nothing on either side.
"""

from __future__ import annotations

import hashlib
import sqlite3

import numpy as np
import psycopg
import pytest

from embeddable_db import (
    BotDB,
    BotRecord,
    Discrepancy,
    Enhancement,
    EnhancementDB,
    ErrorDB,
    HashingEncoder,
    InfoDB,
    InformationDB,
    InformationRecord,
    KnownError,
    ResearchItem,
    TelemetryEvent,
    WorkflowDB,
    WorkflowRecord,
)
from embeddable_db.databases import REGISTRY
from embeddable_db.databases.migrate import _verify, migrate
from embeddable_db.errors import EmbeddingError, InvalidInputError

MODEL = "hash:64"

SAMPLES = {
    BotDB: [BotRecord(name="invoice-bot", purpose="reads supplier invoices and books them",
                      tasks=["fetch", "book"], resources={"cpu": 2}, estimated_profit=12.5),
            BotRecord(name="mail-bot", purpose="summarises customer emails every morning"),
            BotRecord(name="scrape-bot", purpose="scrapes competitor prices", status="retired")],
    WorkflowDB: [WorkflowRecord(["reconcile ledger", "post accruals"], title="Month-end close"),
                 WorkflowRecord(["fetch inbox", "summarise threads"], title="Email digest",
                                workflow_duration=3.25)],
    EnhancementDB: [Enhancement("cache exchange rates", rationale="the rates API is slow",
                                model_ids=[3, 1, 2], bot_ids=[7], workflow_ids=[]),
                    Enhancement("retry on timeouts", title="Retries", bot_ids=[1, 2])],
    ErrorDB: [KnownError("database is locked", "set busy_timeout"),
              Discrepancy("invoice total differs from ledger"),
              TelemetryEvent(error_type="TimeoutError", root_cause="slow upstream",
                             module_counts={"net": 3}, patch_id=None, deploy_id=4)],
    InfoDB: [ResearchItem("SQLite WAL mode", content="WAL lets readers run while a writer writes",
                          tags=["sqlite", "wal"]),
             ResearchItem("Annoy indexes", content="Annoy builds random projection trees")],
    InformationDB: [InformationRecord("api_spec", summary="REST API of the billing system",
                                      validated=True, keywords=["billing", "rest"]),
                    InformationRecord("regulation", summary="EU rules on electronic invoicing")],
}


@pytest.fixture
def data_dir(tmp_path):
    """The six databases, a few records each, backfilled (through the API, on SQLite)."""
    folder = tmp_path / "data"
    for cls, records in SAMPLES.items():
        with cls(data_dir=folder, model_name=MODEL) as db:
            for record in records:
                db.add(record)
            if cls is ErrorDB:
                db.add_error("ConnectionResetError: connection reset by peer", category="net")
                db.add_error("ConnectionResetError: connection reset by peer")  # frequency 2
    return folder


@pytest.fixture
def no_model(monkeypatch):
    """Any model call fails the test."""
    def refuse(self, texts, batch_size=None):
        raise AssertionError(f"the model was called for {len(texts)} texts")

    monkeypatch.setattr(HashingEncoder, "encode", refuse)


def records_of(db):
    """kind -> the records (dataclasses, links included), by id."""
    return {spec.kind: db.fetch(1000, kind=spec.kind)[::-1] for spec in db.tables}


def vectors_of(db):
    keys = [key for key, _, _ in db.iter_records()]
    return {key: db.get_vector(key) for key in keys}


def schemas(url) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname NOT IN ('information_schema', 'public')")}


def file_digests(folder) -> dict[str, str]:
    """Every file's sha256, but the ``-shm`` and (empty) ``-wal`` files a SQLite reader may
    make: a reader writes nothing else (``handle.connect_read_only``)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.endswith("-shm"):
            if path.name.endswith("-wal") and path.stat().st_size == 0:
                continue
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_each_database_is_copied_with_its_ids_links_and_vectors_without_a_model_call(
        data_dir, pg_url, no_model):
    before = file_digests(data_dir)
    report = migrate(data_dir, pg_url)
    assert file_digests(data_dir) == before  # the files were only read
    assert report.ok, [(db.name, db.error, db.problems) for db in report.databases]
    assert [db.name for db in report.databases] == list(REGISTRY)
    for result in report.databases:
        cls = REGISTRY[result.name]
        with cls(data_dir=data_dir, model_name=MODEL, read_only=True) as src, \
                cls(url=pg_url, model_name=MODEL, read_only=True) as dst:
            records = records_of(src)
            total = sum(map(len, records.values()))
            assert result.records.copied == result.vectors.copied == total > 0
            assert records_of(dst) == records  # same ids, fields, links, in order
            mine, theirs = vectors_of(src), vectors_of(dst)
            assert set(mine) == set(theirs) and len(mine) == total
            for key, vector in mine.items():
                assert np.array_equal(np.float32(vector), np.float32(theirs[key])), key
            assert result.models == (MODEL, MODEL)
            assert all(c.records[0] == c.records[1] and c.vectors[0] == c.vectors[1]
                       for c in result.kinds.values())


def test_a_second_run_copies_only_what_changed(data_dir, pg_url):
    migrate(data_dir, pg_url, ["bot", "enhancement"])
    again = migrate(data_dir, pg_url, ["bot", "enhancement"])
    for result in again.databases:
        assert result.ok
        assert (result.records.copied, result.records.updated, result.records.removed) == (0, 0, 0)
        assert result.vectors.differing == 0 and result.vectors.unchanged == result.records.unchanged
    with BotDB(data_dir=data_dir, model_name=MODEL) as bots:
        bots.update(1, purpose="books supplier invoices into the ledger")
        bots.delete(2)
        added = bots.add(BotRecord(name="fax-bot", purpose="sends faxes"))
    with EnhancementDB(data_dir=data_dir, model_name=MODEL) as enhancements:
        enhancements.update(1, model_ids=[2, 9])  # links only: not embedded
    third = migrate(data_dir, pg_url, ["bot", "enhancement"])
    bot, enhancement = third.databases
    assert bot.ok and enhancement.ok
    assert (bot.records.copied, bot.records.updated, bot.records.removed,
            bot.records.unchanged) == (1, 1, 1, 1)
    assert (bot.vectors.copied, bot.vectors.updated, bot.vectors.removed) == (1, 1, 1)
    assert (enhancement.records.updated, enhancement.vectors.differing) == (1, 0)
    with BotDB(url=pg_url, model_name=MODEL) as bots, \
            EnhancementDB(url=pg_url, model_name=MODEL) as enhancements:
        assert bots.get(2) is None and bots.get(added).name == "fax-bot"
        assert bots.get(1).purpose == "books supplier invoices into the ledger"
        assert enhancements.get(1).model_ids == [2, 9]


def test_the_copy_backfills_nothing_searches_alike_and_adds_with_fresh_ids(data_dir, pg_url):
    with BotDB(data_dir=data_dir, model_name=MODEL) as bots:
        extra = bots.add(BotRecord(name="temp-bot", purpose="to be deleted"))
        bots.delete(extra)  # SQLite never gives this id again; neither may the copy
    assert migrate(data_dir, pg_url).ok
    encoder = HashingEncoder(64)
    for cls in REGISTRY.values():
        with cls(url=pg_url, encoder=encoder) as db:
            result = db.backfill_embeddings(full=True)
            assert (result.embedded, result.reembedded, result.removed, result.failed) == (0, 0, 0, 0)
            assert result.keyword_filled == 0
    assert encoder.calls == 0
    with BotDB(data_dir=data_dir, encoder=encoder) as src, BotDB(url=pg_url, encoder=encoder) as dst:
        for query in ("supplier invoices", "customer emails", "competitor prices"):
            for mode in ("vector", "keyword"):
                mine = [(h.record_id, h.kind) for h in src.search(query, 3, mode=mode)]
                theirs = [(h.record_id, h.kind) for h in dst.search(query, 3, mode=mode)]
                assert theirs == mine if mode == "vector" else set(theirs) == set(mine), query
        fresh = dst.add(BotRecord(name="pg-bot", purpose="born on the server"))
        assert fresh == extra + 1
    with ErrorDB(url=pg_url, encoder=encoder) as errors:
        assert errors.log_discrepancy("a new discrepancy") == 2  # after the copied one
        assert errors.add_error("ConnectionResetError: connection reset by peer") == 1
        assert errors.get(1).frequency == 3


def test_a_stale_vector_stays_stale_and_the_next_backfill_embeds_just_it(data_dir, pg_url):
    conn = sqlite3.connect(data_dir / "bot" / "bot.db")  # another program's edit: no re-embed
    with conn:
        conn.execute("UPDATE bots SET purpose = 'files invoices by hand' WHERE id = 3")
    conn.close()
    assert migrate(data_dir, pg_url, ["bot"]).ok
    encoder = HashingEncoder(64)
    with BotDB(url=pg_url, encoder=encoder) as bots:
        result = bots.backfill_embeddings()
        assert (result.embedded, result.reembedded, result.unchanged) == (0, 1, 2)
        assert encoder.texts_encoded == 1


def test_the_verify_finds_a_copy_that_differs(data_dir, pg_url):
    assert migrate(data_dir, pg_url, ["bot"]).ok
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE bot.bot_embeddings SET vector = "
                     "(SELECT vector FROM bot.bot_embeddings WHERE record_id = 'bot:2') "
                     "WHERE record_id = 'bot:1'")
        conn.execute("UPDATE bot.bot_embeddings SET body = 'other words' WHERE record_id = 'bot:3'")
        conn.execute("UPDATE bot.bots SET status = 'edited on the server' WHERE id = 3")
    from embeddable_db.databases.migrate import DatabaseMigration

    with BotDB(data_dir=data_dir, model_name=MODEL, read_only=True) as src, \
            BotDB(url=pg_url, model_name=MODEL) as dst:
        found = DatabaseMigration("bot")
        _verify(src, dst, found, 1000)
    assert not found.ok
    assert any("table bots: 0 records missing on PostgreSQL, 1 differ" in p for p in found.problems)
    assert any("vectors: 0 missing on PostgreSQL, 2 differ" in p for p in found.problems)
    assert any(p.startswith("PostgreSQL: the keyword index holds other text") for p in found.problems)
    again = migrate(data_dir, pg_url, ["bot"])  # the files win: the copy is made equal again
    assert again.ok and again.databases[0].records.updated == 1
    assert again.databases[0].vectors.updated == 2
    with BotDB(url=pg_url, model_name=MODEL, read_only=True) as bots:
        assert [h.record_id for h in bots.search("competitor prices", 1, mode="keyword")] == [3]


def test_pages_smaller_than_a_table_copy_and_remove_across_pages(data_dir, pg_url):
    with BotDB(data_dir=data_dir, model_name=MODEL) as bots:
        for i in range(12):
            bots.add(BotRecord(name=f"bot-{i}", purpose=f"does task number {i}"))
    assert migrate(data_dir, pg_url, ["bot"], page_size=4).ok
    with BotDB(data_dir=data_dir, model_name=MODEL) as bots:
        for rid in (1, 6, 15):  # the first, one inside and the last
            bots.delete(rid)
    result = migrate(data_dir, pg_url, ["bot"], page_size=4).databases[0]
    assert result.ok and result.records.removed == result.vectors.removed == 3
    assert result.records.unchanged == 12


@pytest.mark.parametrize("bad, error, message", [
    ({"databases": ["bot", "nope"]}, InvalidInputError, "unknown database 'nope'"),
    ({"url": "mysql://me@host/db"}, InvalidInputError, "must be a PostgreSQL URL"),
    ({"url": "postgresql://postgres@/x?host=/nonexistent"}, EmbeddingError, "cannot connect"),
    ({"data_dir": "missing"}, InvalidInputError, "does not exist"),
    ({"databases": ["bot", "info"], "drop": "info"}, InvalidInputError, "no database info"),
])
def test_bad_input_is_refused_before_anything_is_written(data_dir, pg_url, bad, error, message):
    if bad.pop("drop", None):
        for path in (data_dir / "info").iterdir():
            path.unlink()
    if bad.get("data_dir") == "missing":
        bad["data_dir"] = data_dir.parent / "missing"
    before = file_digests(data_dir)
    arguments = {"data_dir": data_dir, "url": pg_url, **bad}
    with pytest.raises(error, match=message):
        migrate(**arguments)
    assert schemas(pg_url) == set()
    assert file_digests(data_dir) == before


def test_a_half_switched_database_is_refused_and_the_others_copied(data_dir, pg_url):
    with BotDB(data_dir=data_dir, model_name="hash:32", allow_model_change=True) as bots:
        bots.add(BotRecord(name="other-model-bot"))  # one vector of another model
    report = migrate(data_dir, pg_url, ["bot", "workflow"])
    bot, workflow = report.databases
    assert not report.ok and workflow.ok
    assert "models" in bot.error and "backfill --db bot" in bot.error
    assert schemas(pg_url) == {"workflow"}


def test_an_empty_store_gets_its_hnsw_index_after_the_load_and_a_failed_load_gets_it_at_open(
        data_dir, pg_url):
    from embeddable_db.engine.postgres.bulk import index_built_after

    def hnsw(url):
        with psycopg.connect(url) as conn:
            return [row[0] for row in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'bot' "
                "AND indexname LIKE 'bot_embeddings_hnsw_%'")]

    assert migrate(data_dir, pg_url, ["bot"]).ok
    assert hnsw(pg_url) == ["bot_embeddings_hnsw_64"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA bot CASCADE")
    with BotDB(url=pg_url, model_name=MODEL) as bots, \
            BotDB(data_dir=data_dir, model_name=MODEL, read_only=True) as src:
        rows = list(src._engine.rows_of(["bot:1", "bot:2"]).values())
        with pytest.raises(RuntimeError), index_built_after(bots._engine):
            bots._engine.write(rows, bulk=True)
            assert hnsw(pg_url) == []  # not made row by row
            raise RuntimeError("the load failed")
        assert hnsw(pg_url) == []
        assert not bots.verify_index().ok
    with BotDB(url=pg_url, model_name=MODEL) as bots:  # a writable open makes it again
        assert hnsw(pg_url) == ["bot_embeddings_hnsw_64"] and bots.verify_index().ok


def test_a_record_postgresql_cannot_store_is_named_and_the_other_databases_still_run(
        data_dir, pg_url):
    conn = sqlite3.connect(data_dir / "info" / "info.db")
    with conn:
        conn.execute("UPDATE info SET notes = ? WHERE id = 2", ("a\x00b",))
    conn.close()
    report = migrate(data_dir, pg_url, ["info", "information"])
    info, information = report.databases
    assert not report.ok and information.ok
    assert "table info: row 2 holds text with NUL characters" in info.error
    assert "fix it in SQLite and migrate again" in info.error


@pytest.mark.parametrize("stop_after, kept", [(4, (4, 0)), (20, (15, 8))])  # records, vectors
def test_an_interrupted_migration_keeps_its_pages_collides_with_no_add_and_finishes(
        data_dir, pg_url, stop_after, kept):
    with BotDB(data_dir=data_dir, model_name=MODEL) as bots:
        for i in range(12):
            bots.add(BotRecord(name=f"bot-{i}", purpose=f"does task number {i}"))

    def interrupt(name, done, total):
        if done >= stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        migrate(data_dir, pg_url, ["bot"], progress=interrupt, page_size=4)
    with BotDB(url=pg_url, model_name=MODEL) as bots:
        assert (bots.count(), bots.embedding_count()) == kept  # pages of 4 rows
        assert bots.add(BotRecord(name="pg-bot", purpose="born on the server")) == 16
    result = migrate(data_dir, pg_url, ["bot"], page_size=4).databases[0]
    assert result.ok, (result.error, result.problems)
    assert result.records.removed == 1 and result.records.seen == 15
    assert result.vectors.copied + result.vectors.unchanged == 15


def test_the_index_build_raises_maintenance_work_mem_for_its_own_transaction_only(
        data_dir, pg_url, monkeypatch):
    from embeddable_db.engine.postgres import bulk

    assert migrate(data_dir, pg_url, ["bot"]).ok
    monkeypatch.setattr(bulk, "GRAPH_BYTES_PER_ROW", 200 * 1024 * 1024)  # 3 rows: 600 MB
    with BotDB(url=pg_url, model_name=MODEL) as bots:
        engine = bots._engine

        def setting():
            return engine.cur.execute("SELECT current_setting('maintenance_work_mem')").fetchone()[0]

        before = setting()
        with engine.conn.transaction():
            bulk._build_memory(engine, 64)
            assert setting() == f"{3 * (4 * 64 + 200 * 1024 * 1024) // 1024 + 1}kB"
        assert setting() == before == "64MB"
        monkeypatch.setattr(bulk, "GRAPH_BYTES_PER_ROW", 1024 ** 3)  # capped at 1 GiB
        with engine.conn.transaction():
            bulk._build_memory(engine, 64)
            assert setting() == "1GB"
