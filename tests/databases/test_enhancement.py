"""EnhancementDB: link tables, bounded code in the embedded text, the real model."""

from __future__ import annotations

import pytest

from embeddable_db import Enhancement, EnhancementDB

from .cases import best_match, rows


def _links(db, table):
    """A link table's rows in the order they were written, with plain SQL (``rowid`` is
    SQLite's own, and a column of that name on PostgreSQL)."""
    link = next(link for link in db.tables[0].links if link.table == table)
    return rows(db, f"SELECT {link.owner}, {link.column} FROM {table} ORDER BY rowid")


def test_link_ids_live_in_link_tables(open_db):
    db = open_db(EnhancementDB)
    enh = Enhancement("cache responses", "fewer API calls", model_ids=[3, 1, 3], bot_ids=[7],
                      workflow_ids=[])
    eid = db.add(enh)
    assert _links(db, "enhancement_models") == [(eid, 3), (eid, 1)]
    assert _links(db, "enhancement_bots") == [(eid, 7)]
    assert db.get(eid).model_ids == [3, 1] and db.get(eid).bot_ids == [7]
    assert db.fetch()[0].model_ids == [3, 1]
    db.update(eid, bot_ids=[8, 9], workflow_ids=[2])
    assert _links(db, "enhancement_bots") == [(eid, 8), (eid, 9)]
    assert db.get(eid).workflow_ids == [2]
    with pytest.raises(ValueError, match="list of int ids"):
        db.update(eid, model_ids=["3"])
    assert db.delete(eid)
    assert _links(db, "enhancement_bots") == _links(db, "enhancement_workflows") == []


def test_long_code_cannot_drown_the_prose(open_db):
    db = open_db(EnhancementDB)
    code = "\n".join(f"value_{i} = compute_{i}(value_{i - 1})" for i in range(2000))
    enh = Enhancement("Precompute the lookup table", "startup is slow", title="Faster startup",
                      context=code, after_code=code, before_code=code)
    text = db.embedding_text(enh)
    assert text.startswith("Faster startup\nIdea: Precompute the lookup table\nRationale: startup")
    assert len(text) < 1100  # ~600 characters of context and ~300 of code at most
    assert db.search("precompute lookup table startup", top_k=1) == []  # not stored yet
    db.add(enh)
    assert db.search("precompute lookup table faster startup", top_k=1)[0].record_id == enh.id


@pytest.mark.model
def test_real_model_finds_the_enhancement_by_meaning(open_db, real_encoder):
    db = open_db(EnhancementDB, encoder=real_encoder)
    ideas = [
        Enhancement("Switch SQLite to write-ahead logging", "readers block the writer",
                    title="WAL journal mode", after_code="conn.execute('PRAGMA journal_mode=WAL')"),
        Enhancement("Cache HTTP responses for an hour", "we pay per API call",
                    title="Response cache"),
        Enhancement("Retry flaky network calls with exponential backoff", "transient timeouts",
                    title="Retries"),
        Enhancement("Compress images before upload", "uploads are slow on mobile",
                    title="Smaller uploads"),
        Enhancement("Add an index on orders.customer_id", "order history page is slow",
                    title="Orders index"),
    ]
    best = best_match(db, ideas, "our bills for the external API are too high, avoid repeating requests")
    assert best.title == "Response cache"
