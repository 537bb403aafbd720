"""Whatever is stored beside a vector survives re-embedding (issue 11): a telemetry event keeps
its source (task id, else bot id) when an embedded field changes, when the embedding version
is raised and when the model changes; a mixin store keeps the source_id it was given."""

from __future__ import annotations

import sqlite3

from conftest import NotesDB
from embeddable_db import ErrorDB, TelemetryEvent


def stored_sources(db) -> dict[str, str]:
    conn = sqlite3.connect(db.path)
    try:
        return dict(conn.execute(
            f"SELECT record_id, source_id FROM {db.embedding_table} WHERE deleted = 0"
        ))
    finally:
        conn.close()


def test_a_telemetry_events_source_survives_every_kind_of_re_embedding(tmp_path):
    with ErrorDB(data_dir=tmp_path, model_name="hash:32") as db:
        first = db.add_telemetry(TelemetryEvent(task_id="task-7", error_type="Timeout"))
        second = db.add_telemetry(TelemetryEvent(bot_id="bot-3", error_type="KeyError"))
        key1, key2 = db.vector_key(first, "telemetry"), db.vector_key(second, "telemetry")
        assert stored_sources(db) == {key1: "task-7", key2: "bot-3"}
        db.update(first, kind="telemetry", error_type="TimeoutError while fetching")
        assert stored_sources(db)[key1] == "task-7"  # an embedded field changed
    with ErrorDB(data_dir=tmp_path, model_name="hash:32", embedding_version=2) as db:
        result = db.backfill_embeddings()
        assert result.reembedded == 2
        assert stored_sources(db) == {key1: "task-7", key2: "bot-3"}  # a newer version
    with ErrorDB(data_dir=tmp_path, model_name="hash:16", allow_model_change=True,
                 embedding_version=2) as db:
        assert db.backfill_embeddings().reembedded == 2
        assert stored_sources(db) == {key1: "task-7", key2: "bot-3"}  # another model


def test_a_mixin_store_keeps_the_source_id_it_was_given_when_backfill_re_embeds(tmp_path):
    db = NotesDB(str(tmp_path / "n.db"), model_name="hash:16")
    note = db.add_note("the first text")
    db.add_embedding(note, {"body": "the first text"}, "note", source_id="import-42")
    db.conn.execute("UPDATE notes SET body = 'a changed text' WHERE id = ?", (note,))
    db.conn.commit()
    assert db.backfill_embeddings().reembedded == 1
    (source,) = db.conn.execute(
        f"SELECT source_id FROM {db.embedding_table} WHERE record_id = ?", (str(note),)
    ).fetchone()
    assert source == "import-42"
    db.close()
    db.conn.close()
