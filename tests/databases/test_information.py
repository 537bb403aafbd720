"""InformationDB: flags round-trip, and InfoDB/InformationDB never share an index."""

from __future__ import annotations

import sqlite3

import pytest

from embeddable_db import (
    InfoDB,
    InformationDB,
    InformationRecord,
    ResearchItem,
    StoreConflictError,
)

from .cases import best_match


def _file_bytes(db):
    return {p: open(p, "rb").read() for p in (db.index_path, db.metadata_path)}


def test_validated_is_a_bool_and_not_embedded(open_db):
    db = open_db(InformationDB)
    record = InformationRecord("market_report", summary="automation spending grows", validated=True)
    rid = db.add(record)
    assert db.get(rid).validated is True
    assert db.update(rid, validated=False).validated is False
    assert db.embedding_text(record).startswith("market report\nSummary: automation")
    with pytest.raises(ValueError, match="validated must be bool"):
        db.update(rid, validated=1)


@pytest.mark.sqlite_only
@pytest.mark.parametrize("same_sqlite_file", [False, True])
def test_info_and_information_in_one_folder_refuse_each_other(open_db, encoder, tmp_path,
                                                              same_sqlite_file):
    folder = tmp_path / "shared"
    info = open_db(InfoDB, folder / "research.db")
    info.add(ResearchItem("coral reefs", content="bleaching after heatwaves"))
    info.save_index()
    before = _file_bytes(info)
    other = folder / ("research.db" if same_sqlite_file else "records.db")
    with pytest.raises(StoreConflictError, match="another store"):
        InformationDB(other, encoder=encoder)
    assert _file_bytes(info) == before
    assert info.search("coral bleaching", top_k=1)[0].record.topic == "coral reefs"
    info.close()
    again = open_db(InfoDB, folder / "research.db")
    assert again.search("coral bleaching", top_k=5)[0].record.topic == "coral reefs"
    assert again.embedding_count() == 1 and again.verify_index().ok
    # and the other way round
    again.close()
    with pytest.raises(StoreConflictError):
        InformationDB(other, encoder=encoder)


@pytest.mark.sqlite_only
def test_info_and_information_side_by_side_with_own_files(open_db, tmp_path):
    info = open_db(InfoDB)
    information = open_db(InformationDB)
    assert info.index_path != information.index_path
    assert info.index_path.endswith("info/information_embeddings.index")
    assert information.index_path.endswith("information/information_embeddings.index")
    # one SQLite file is fine too, with separate index files
    shared = tmp_path / "one.db"
    a = open_db(InfoDB, shared)
    b = open_db(InformationDB, shared, index_path=tmp_path / "records.index")
    a.add(ResearchItem("coral reefs", content="bleaching"))
    b.add(InformationRecord("dataset", summary="coral survey sites"))
    assert a.search("coral", top_k=5)[0].kind == "info" and len(a.search("coral", top_k=5)) == 1
    assert b.search("coral", top_k=5)[0].kind == "information"
    tables = {r[0] for r in sqlite3.connect(shared).execute("SELECT name FROM sqlite_master")}
    assert {"info", "information", "info_embeddings", "information_embeddings"} <= tables


@pytest.mark.model
def test_real_model_finds_the_information_by_meaning(open_db, real_encoder):
    db = open_db(InformationDB, encoder=real_encoder)
    records = [
        InformationRecord("market_report", summary="Hyperautomation software spending grows "
                          "12% a year", keywords=["rpa", "automation"]),
        InformationRecord("dataset", summary="City bike-share trips in 2023 with station "
                          "coordinates", keywords=["mobility"]),
        InformationRecord("regulation", summary="GDPR fines imposed by EU data protection "
                          "authorities", keywords=["gdpr", "compliance"]),
        InformationRecord("benchmark", summary="GPU inference latency of transformer models",
                          keywords=["gpu", "latency"]),
        InformationRecord("survey", summary="Developers' preferences for remote work",
                          keywords=["remote work"]),
    ]
    best = best_match(db, records, "penalties for breaking European privacy law")
    assert best.data_type == "regulation"
