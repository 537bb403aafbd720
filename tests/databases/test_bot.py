"""BotDB: lookup by name, modification dates, JSON columns, unreadable rows, the real model."""

from __future__ import annotations

import time

import pytest

from embeddable_db import BotDB, BotRecord
from embeddable_db.databases import RecordFormatError

from .cases import best_match, sql


def test_find_by_name_ignores_case(open_db):
    db = open_db(BotDB)
    first = db.add(BotRecord("Inbox-Triage", purpose="sorts mail"))
    db.add(BotRecord("inbox-triage", purpose="a second bot with the same name"))
    assert db.find_by_name("INBOX-triage").id == first
    assert db.find_by_name("inbox") is None


def test_update_sets_modification_date_only(open_db):
    db = open_db(BotDB)
    bot = BotRecord("reporter", purpose="writes weekly reports")
    db.add(bot)
    time.sleep(0.002)
    updated = db.update(bot.id, status="retired")
    assert updated.status == "retired"
    assert updated.creation_date == bot.creation_date
    assert updated.last_modification_date > bot.last_modification_date
    assert db.get(bot.id) == updated


def test_lists_and_dicts_survive_commas_and_nesting(open_db):
    db = open_db(BotDB)
    bot = BotRecord(
        "etl",
        purpose="loads data",
        tasks=("extract, transform", "load"),
        resources={"cpu": 2, "limits": {"memory_mb": 512}},
    )
    db.add(bot)
    stored = db.get(bot.id)
    assert stored.tasks == ["extract, transform", "load"]
    assert stored.resources == {"cpu": 2, "limits": {"memory_mb": 512}}
    assert stored == bot  # add() normalised the caller's tuple to the list it reads back


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"tags": "a,b"}, "tags must be list"),
        ({"estimated_profit": float("nan")}, "finite float"),
        ({"estimated_profit": True}, "finite float"),
        ({"resources": {"handle": object()}}, "JSON"),
        ({"name": None}, "name must be str"),
    ],
)
def test_values_are_checked_before_writing(open_db, fields, message):
    db = open_db(BotDB)
    with pytest.raises(ValueError, match=message):
        db.add(BotRecord(**{"name": "ok", "purpose": "p", **fields}))
    assert db.count() == 0


def test_a_row_broken_with_sql_is_reported_not_fatal(open_db):
    db = open_db(BotDB)
    good = db.add(BotRecord("good", purpose="works fine"))
    bad = db.add(BotRecord("bad", purpose="will be broken"))
    sql(db, "UPDATE bots SET tags = 'a,b', purpose = 'changed' WHERE id = ?", (bad,))
    result = db.backfill_embeddings()
    assert (result.failed, result.unchanged) == (1, 1)
    assert result.failures[0][0] == f"bot:{bad}" and "'tags'" in result.failures[0][1]
    with pytest.raises(RecordFormatError, match="bots row 2: column 'tags'"):
        db.get(bad)
    assert db.get(good).name == "good"
    assert [h.record_id for h in db.search("works fine broken", top_k=5)] == [good]
    sql(db, "UPDATE bots SET tags = '[\"a\", \"b\"]' WHERE id = ?", (bad,))
    assert db.backfill_embeddings().reembedded == 1


@pytest.mark.model
def test_real_model_finds_the_bot_by_meaning(open_db, real_encoder):
    db = open_db(BotDB, encoder=real_encoder)
    bots = [
        BotRecord("inbox-triage", type_="email", purpose="Classifies support emails by urgency "
                  "and routes them to the right team queue", tags=["email", "support"]),
        BotRecord("invoice-chaser", type_="finance", purpose="Sends reminders about unpaid "
                  "invoices and records incoming payments", tasks=["email debtors", "log payments"]),
        BotRecord("log-rotator", type_="ops", purpose="Compresses and deletes old server logs",
                  toolchain=["logrotate", "cron"]),
        BotRecord("price-scraper", type_="data", purpose="Collects competitor product prices from "
                  "online shops every night", tags=["scraping"]),
        BotRecord("meeting-scheduler", type_="calendar", purpose="Finds free slots in calendars "
                  "and books meeting rooms"),
    ]
    best = best_match(db, bots, "which bot chases customers who have not paid their bills")
    assert best.name == "invoice-chaser"


def test_encoding_happens_before_the_write_lock(tmp_path):
    """Another process can write while this one encodes: add/update encode first, then lock."""
    import sqlite3

    from embeddable_db import HashingEncoder

    path = tmp_path / "bots.db"
    attempts = []

    class ProbingEncoder(HashingEncoder):
        def encode(self, texts, batch_size=None):
            other = sqlite3.connect(path, timeout=0.05)
            try:
                other.execute("BEGIN IMMEDIATE")  # 'database is locked' if a writer holds it
                other.rollback()
                attempts.append("free")
            finally:
                other.close()
            return super().encode(texts)

    db = BotDB(path, encoder=ProbingEncoder(64))
    bot_id = db.add(BotRecord("prober", purpose="checks locks"))
    db.update(bot_id, purpose="checks locks again")
    assert attempts == ["free", "free"]
    assert db.search("checks locks again", top_k=1)[0].record_id == bot_id
    db.close()
