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
    assert _titles(db.search_keywords("photovolt")) == ["solar power"]  # prefixes match, tags too
    assert db.search_keywords("ocean heatwaves")[0].id == reef  # every word, any column
    assert db.search_keywords("ocean perovskite") == []
    db.update(solar, content="wind turbines in the north sea")
    assert db.search_keywords("perovskite") == []
    assert _titles(db.search_keywords("turbines")) == ["solar power"]
    db.delete(reef)
    assert db.search_keywords("bleaching") == []


def test_keyword_search_sees_plain_sql_and_odd_terms(open_db):
    db = open_db(InfoDB)
    db.add(ResearchItem("sourdough", content="wild yeast fermentation"))
    sql(db, "INSERT INTO info (topic, content) VALUES ('kombucha', 'tea fermentation')")
    assert sorted(_titles(db.search_keywords("fermentation"))) == ["kombucha", "sourdough"]
    assert db.search_keywords('"yeast" AND NEAR( OR *') == []  # query syntax is not interpreted
    assert _titles(db.search_keywords('yeast"')) == ["sourdough"]
    assert len(db.search_keywords("fermentation", limit=1)) == 1
    with pytest.raises(ValueError, match="no words"):
        db.search_keywords("  -- ")


def test_fts_index_is_rebuilt_for_a_table_that_lacked_it(open_db, tmp_path):
    db = open_db(InfoDB, tmp_path / "old.db")
    db.add(ResearchItem("glaciers", content="ice cores record past climate"))
    db.close()
    sql(db, "DROP TABLE info_fts")
    again = open_db(InfoDB, tmp_path / "old.db")
    assert _titles(again.search_keywords("climate")) == ["glaciers"]


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
