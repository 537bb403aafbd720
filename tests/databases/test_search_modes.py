"""The six databases' search (issue 13): vector, keyword and hybrid modes, ``where`` filters
checked against the record dataclass that still return top_k, each side's rank, a reranker."""

from __future__ import annotations

import pytest

from embeddable_db import BotDB, BotRecord, ErrorDB, ErrorRecord, InvalidInputError, KnownError
from embeddable_db.filters import UnknownFieldError

from .cases import sql


@pytest.fixture
def bots(open_db):
    db = open_db(BotDB)
    for i in range(60):
        db.add(BotRecord(f"bot {i}", purpose=f"collects invoices batch {i}",
                         status="active" if i % 10 else "retired", estimated_profit=float(i)))
    db.add(BotRecord("E4242 watcher", purpose="restarts the queue after error E4242",
                     status="retired", estimated_profit=5.0))
    return db


def test_default_mode_is_hybrid_for_text_and_vector_for_a_vector(bots, encoder):
    hits = bots.search("E4242 error", 3)
    assert hits[0].record.name == "E4242 watcher"
    assert hits[0].score is not None and hits[0].keyword_rank == 1
    assert hits[0].distance is not None
    vector = bots.encode_texts(["collects invoices batch 7"])[0]
    by_vector = bots.search(vector, 3)
    assert by_vector[0].record.name == "bot 7" and by_vector[0].score is None
    assert by_vector[0].vector_rank == 1 and by_vector[0].keyword_rank is None


def test_keyword_mode_does_not_call_the_model(bots, encoder):
    calls = encoder.calls
    hits = bots.search("E4242", 5, mode="keyword")
    assert encoder.calls == calls
    assert [h.record.name for h in hits] == ["E4242 watcher"]
    assert hits[0].distance is None and hits[0].keyword_rank == 1 and hits[0].score > 0


def test_where_filters_before_the_search_and_fills_top_k(bots):
    # 6 retired bots of 61: a post-filter of the nearest 5 would find one or none.
    for mode in ("vector", "keyword", "hybrid"):
        hits = bots.search("collects invoices batch 33", 5, mode=mode, where={"status": "retired"})
        assert len(hits) == 5, mode
        assert all(h.record.status == "retired" for h in hits)
    hits = bots.search("invoices", 10, where={"estimated_profit": (">=", 55), "status": "active"})
    assert sorted(h.record.name for h in hits) == [f"bot {i}" for i in (55, 56, 57, 58, 59)]
    hits = bots.search("invoices", 10, mode="keyword", where={"name": ("in", ["bot 1", "bot 2"])})
    assert sorted(h.record.name for h in hits) == ["bot 1", "bot 2"]
    assert bots.search("invoices", 5, where={"name": ("like", "nobody%")}) == []
    hits = bots.search("invoices", 5, where={"id": 3})
    assert [h.record_id for h in hits] == [3]


def test_like_ignores_ascii_case_and_knows_no_escape_character_on_both_engines(bots):
    bots.add(BotRecord("Back\\Slash_Bot", purpose="collects invoices too"))
    def names(pattern):
        return sorted(h.record.name for h in bots.search("invoices", 10, where={"name": ("like", pattern)}))
    assert names("e4242%") == names("E4242 WATCHER") == ["E4242 watcher"]
    assert names("back\\slash%") == ["Back\\Slash_Bot"]  # a backslash is just a character
    assert names("back\\_lash%") == ["Back\\Slash_Bot"]  # nor makes _ a literal underscore


def test_numbers_given_for_text_fields_compare_as_text(bots):
    bots.update(3, version="2")
    assert [h.record_id for h in bots.search("invoices", 5, where={"version": 2})] == [3]
    hits = bots.search("invoices", 5, where={"estimated_profit": (">=", "58")})  # text, as the CLI
    assert sorted(h.record.name for h in hits) == ["bot 58", "bot 59"]


def test_where_sees_rows_changed_with_plain_sql(bots):
    sql(bots, "UPDATE bots SET status = 'paused' WHERE name = 'bot 4'")
    hits = bots.search("invoices", 5, where={"status": "paused"})
    assert [h.record.name for h in hits] == ["bot 4"]


@pytest.mark.parametrize(
    ("where", "error", "message"),
    [
        ({"colour": "red"}, UnknownFieldError, "BotRecord has no field 'colour'"),
        ({"status; DROP TABLE bots": 1}, UnknownFieldError, "filter on one of:.*status"),
        ({"status": ("~", "x")}, InvalidInputError, "operator"),
        ("status=retired", InvalidInputError, "where must be a dict"),
    ],
)
def test_bad_filters_are_refused_with_the_valid_fields(bots, encoder, where, error, message):
    calls = encoder.calls
    with pytest.raises(error, match=message):
        bots.search("invoices", 3, where=where)
    assert encoder.calls == calls
    assert bots.count() == 61


def test_an_unknown_field_is_a_value_error(bots):
    with pytest.raises(ValueError, match="estimated_profit"):
        bots.search("x", where={"profit": 1})


def test_bad_modes_and_queries(bots):
    with pytest.raises(InvalidInputError, match="mode must be one of"):
        bots.search("x", mode="semantic")
    vector = bots.encode_texts(["x"])[0]
    with pytest.raises(InvalidInputError, match="needs a text query"):
        bots.search(vector, mode="keyword")
    with pytest.raises(InvalidInputError, match="reranker"):
        bots.search("x", mode="vector", reranker=object())


def test_a_reranker_reorders_database_hits(bots):
    query = "collects invoices from the queue"
    third = bots.search(query, 3)[2].record  # which one: the engine's keyword scores say

    class ByName:
        def rank(self, query, texts):
            return [float(t.startswith(f"{third.name}\n")) for t in texts]

    hits = bots.search(query, 3, reranker=ByName())
    assert hits[0].record == third and hits[0].score == 1.0


def test_where_on_a_database_of_several_tables(open_db):
    db = open_db(ErrorDB)
    db.add(ErrorRecord("disk full on /var", type_="io", category="storage"))
    db.add(ErrorRecord("disk quota exceeded", type_="quota", category="storage"))
    db.add(KnownError("disk full", solution="clean /var/log"))
    # Without kind: every table whose records have the field.
    hits = db.search("disk", 5, where={"message": ("like", "disk full%")})
    assert sorted(h.kind for h in hits) == ["error", "known_error"]
    hits = db.search("disk", 5, where={"type_": "io"})  # errors only have a type
    assert [h.record.message for h in hits] == ["disk full on /var"]
    with pytest.raises(UnknownFieldError, match="ErrorRecord has no field 'solution'"):
        db.search("disk", 5, kind="error", where={"solution": "x"})
