"""InfoDB: keyword search through FTS5 kept in step with the table, the real model."""

from __future__ import annotations

import pytest

from embeddable_db import InfoDB, ResearchItem

from .cases import best_match, sql


def _titles(items):
    return [item.title or item.topic for item in items]


def test_keyword_search_follows_add_update_delete(open_db):
    db = open_db(InfoDB)
    reef = db.add(ResearchItem("coral reefs", content="bleaching follows marine heatwaves",
                               title="Reef bleaching", tags=["ocean"]))
    solar = db.add(ResearchItem("solar power", content="perovskite cells gain efficiency",
                                tags=["energy", "photovoltaics"]))
    assert _titles(db.search_keywords("bleaching")) == ["Reef bleaching"]
    assert _titles(db.search_keywords("photovoltaics")) == ["solar power"]  # tags too
    assert db.search_keywords("photovolt") == []  # whole words, as every store's keyword search
    assert db.search_keywords("ocean heatwaves")[0].id == reef
    assert {i.id for i in db.search_keywords("ocean perovskite")} == {reef, solar}  # any word
    db.update(solar, content="wind turbines in the north sea")
    assert db.search_keywords("perovskite") == []
    assert _titles(db.search_keywords("turbines")) == ["solar power"]
    db.delete(reef)
    assert db.search_keywords("bleaching") == []


def test_keyword_search_sees_plain_sql_after_backfill_and_odd_terms(open_db, encoder):
    db = open_db(InfoDB)
    db.add(ResearchItem("sourdough", content="wild yeast fermentation"))
    sql(db, "INSERT INTO info (topic, content) VALUES ('kombucha', 'tea fermentation')")
    assert _titles(db.search_keywords("fermentation")) == ["sourdough"]
    db.backfill_embeddings()
    assert sorted(_titles(db.search_keywords("fermentation"))) == ["kombucha", "sourdough"]
    calls = encoder.calls
    assert _titles(db.search_keywords('"yeast" AND NEAR( OR *')) == ["sourdough"]  # just words
    assert _titles(db.search_keywords('yeast"')) == ["sourdough"]
    assert encoder.calls == calls  # keyword search never calls the model
    assert len(db.search_keywords("fermentation", limit=1)) == 1
    with pytest.raises(ValueError, match="no words"):
        db.search_keywords("  -- ")


@pytest.mark.sqlite_only
def test_the_old_fts_table_and_triggers_are_dropped_and_the_keyword_index_kept(open_db, tmp_path):
    db = open_db(InfoDB, tmp_path / "old.db")
    db.add(ResearchItem("glaciers", content="ice cores record past climate"))
    db.close()
    sql(db, "CREATE VIRTUAL TABLE info_fts USING fts5(topic, content, content='info', "
            "content_rowid='id')")
    sql(db, "CREATE TRIGGER info_fts_insert AFTER INSERT ON info BEGIN "
            "INSERT INTO info_fts(rowid, topic, content) VALUES (new.id, new.topic, new.content); END")
    again = open_db(InfoDB, tmp_path / "old.db")
    names = {row[0] for row in again.conn.execute("SELECT name FROM sqlite_master")}
    assert "info_fts" not in names and "info_fts_insert" not in names
    assert _titles(again.search_keywords("climate")) == ["glaciers"]
    assert again.verify_index().ok


@pytest.mark.model
def test_real_model_finds_the_research_by_meaning(open_db, real_encoder):
    db = open_db(InfoDB, encoder=real_encoder)
    items = [
        ResearchItem("solar panel efficiency", content="Perovskite photovoltaic cells now convert "
                     "over 30% of sunlight into electricity in lab tests."),
        ResearchItem("sourdough fermentation", content="Wild yeast and lactic acid bacteria leaven "
                     "the dough and give the bread its sour taste."),
        ResearchItem("marathon training", content="Long slow runs and tapering before race day "
                     "improve finishing times."),
        ResearchItem("coral reef bleaching", content="Marine heatwaves make corals expel their "
                     "algae, turning them white."),
        ResearchItem("battery recycling", content="Lithium and cobalt are recovered from old "
                     "electric car batteries."),
    ]
    best = best_match(db, items, "how warmer sea water harms underwater ecosystems")
    assert best.topic == "coral reef bleaching"
