"""ErrorDB: four tables with namespaced keys, kind filters, frequency bumps, solutions."""

from __future__ import annotations

import pytest

from embeddable_db import Discrepancy, ErrorDB, ErrorRecord, KnownError, TelemetryEvent
from embeddable_db.engine.sqlite.manifest import read_manifest
from embeddable_db.engine.sqlite.manifest_records import RECORD_FIELDS

from .cases import best_match, sql


def _one_of_each(db):
    return {
        "error": db.add_error("disk full while writing report", category="storage"),
        "known_error": db.add_known("connection refused by payment gateway", "restart the proxy"),
        "discrepancy": db.log_discrepancy("nightly totals differ from ledger by 12 euros"),
        "telemetry": db.add_telemetry(
            TelemetryEvent(task_id="t-9", error_type="TimeoutError", root_cause="slow upstream",
                           stack_trace="Traceback...\nTimeoutError: read timed out")
        ),
    }


def test_four_kinds_never_collide(open_db):
    db = open_db(ErrorDB)
    ids = _one_of_each(db)
    assert set(ids.values()) == {1}  # four independent id sequences...
    assert db.embedding_count() == 4  # ...and four vectors, keyed by kind
    for kind, record_id in ids.items():
        assert db.get_vector(f"{kind}:{record_id}") is not None
        assert db.count(kind=kind) == 1
        assert db.get(record_id, kind=kind) is not None
    assert isinstance(db.get(1, kind="discrepancy"), Discrepancy)
    assert db.search("slow upstream read timed out", top_k=1)[0].kind == "telemetry"


def test_kind_filters_search(open_db):
    db = open_db(ErrorDB)
    _one_of_each(db)
    for i in range(3):
        db.log_discrepancy(f"report {i} disagrees with the payment gateway")
    query = "payment gateway connection refused"
    assert db.search(query, top_k=1)[0].kind == "known_error"
    hits = db.search(query, top_k=3, kind="discrepancy")
    assert len(hits) == 3 and {h.kind for h in hits} == {"discrepancy"}
    assert all(isinstance(h.record, Discrepancy) for h in hits)
    assert len(db.search(query, top_k=10)) == 7


def test_add_error_bumps_frequency_without_reembedding(open_db, encoder):
    db = open_db(ErrorDB)
    first = db.add_error("KeyError: 'price'", description="field missing in API response")
    vector = db.get_vector(f"error:{first}")
    encoded = encoder.texts_encoded
    assert db.add_error("KeyError: 'price'", description="ignored on a repeat") == first
    assert db.add_error("KeyError: 'price'") == first
    stored = db.get(first)
    assert stored.frequency == 3 and stored.description == "field missing in API response"
    assert encoder.texts_encoded == encoded and db.get_vector(f"error:{first}") == vector
    with pytest.raises(ValueError, match="already has this message"):
        db.add(ErrorRecord("KeyError: 'price'"))
    with pytest.raises(ValueError, match="no field"):
        db.add_error("other", severity="high")
    assert db.count() == 1


def test_add_error_counts_a_message_another_writer_stored_first(open_db, encoder):
    """Between add_error's bump (no row yet) and its insert, another connection stores the
    message: the insert breaks the unique constraint, and add_error bumps that row instead."""
    db = open_db(ErrorDB)
    encode = encoder.encode

    def racing(texts, batch_size=None):  # runs before add_error's insert transaction
        if texts and texts[0].startswith("TimeoutError"):
            sql(db, "INSERT INTO errors (message) VALUES (?)", ("TimeoutError: upstream",))
        return encode(texts, batch_size)

    encoder.encode = racing
    other = db.add_error("TimeoutError: upstream", category="network")
    assert [(r.message, r.frequency, r.category) for r in db.fetch()] == [
        ("TimeoutError: upstream", 2, "")]  # the other writer's row, counted twice
    assert db.get(other).frequency == 2 and db.embedding_count() == 0


def test_known_errors_and_find_solution(open_db):
    db = open_db(ErrorDB)
    kid = db.add_known("ModuleNotFoundError: No module named 'requests'", "pip install requests")
    db.add_known("PermissionError: denied writing /var/log/app.log", "run as the app user")
    assert db.find_solution("ModuleNotFoundError: No module named 'requests'") == "pip install requests"
    # no exact match: the nearest known error, if close enough
    assert db.find_solution("ModuleNotFoundError: No module named 'requests' in job 7") == (
        "pip install requests"
    )
    assert db.find_solution("completely unrelated words here") is None
    assert db.add_known("ModuleNotFoundError: No module named 'requests'", "use the venv") == kid
    assert db.get(kid, kind="known_error").solution == "use the venv"
    assert db.count(kind="known_error") == 2


@pytest.mark.sqlite_only  # reads the index's manifest; tests/databases/test_postgres.py reads the table
def test_telemetry_source_and_crud_by_kind(open_db):
    db = open_db(ErrorDB)
    event = TelemetryEvent(bot_id="bot-3", error_type="ValueError", module="parser",
                           module_counts={"parser": 2}, patch_id=None)
    tid = db.add_telemetry(event)
    db.save_index()
    records = read_manifest(db.metadata_path, details=True).records
    row = dict(zip(RECORD_FIELDS, records.rows()[0], strict=True))
    assert (row["record_id"], row["kind"], row["source_id"]) == (f"telemetry:{tid}", "telemetry", "bot-3")
    assert db.get(tid, kind="telemetry") == event
    db.update(tid, kind="telemetry", resolution_status="resolved", patch_id=41)
    assert db.get(tid, kind="telemetry").patch_id == 41
    assert db.get(tid) is None  # the default kind is "error"
    assert db.delete(tid, kind="telemetry") and db.embedding_count() == 0
    with pytest.raises(ValueError, match="TelemetryEvent"):
        db.add_telemetry(KnownError("not an event"))


def test_backfill_covers_all_four_tables(open_db):
    db = open_db(ErrorDB)
    _one_of_each(db)
    sql(db, "INSERT INTO telemetry (error_type, root_cause) VALUES ('OSError', 'disk gone')")
    sql(db, "INSERT INTO discrepancies (message) VALUES ('stock count off by three')")
    sql(db, "DELETE FROM known_errors")
    result = db.backfill_embeddings()
    assert (result.embedded, result.removed, result.unchanged) == (2, 1, 3)
    assert db.search("disk gone", top_k=1, kind="telemetry")[0].record_id == 2
    assert db.search("stock count off by three", top_k=1)[0].key == "discrepancy:2"


@pytest.mark.model
def test_real_model_finds_the_error_by_meaning(open_db, real_encoder):
    db = open_db(ErrorDB, encoder=real_encoder)
    db.add_known("ModuleNotFoundError: No module named 'requests'", "pip install requests")
    db.add_known("SSL: CERTIFICATE_VERIFY_FAILED", "update the CA bundle")
    errors = [
        ErrorRecord("sqlite3.OperationalError: database is locked", cause="another writer"),
        ErrorRecord("ConnectionResetError: [Errno 104] Connection reset by peer"),
        ErrorRecord("MemoryError", description="the process ran out of RAM loading a large CSV"),
        ErrorRecord("PermissionError: [Errno 13] Permission denied: '/var/log/app.log'"),
        ErrorRecord("KeyError: 'price'", description="field missing in the supplier API response"),
    ]
    query = "the job crashed because the machine had no memory left for the big spreadsheet"
    assert best_match(db, errors, query).message == "MemoryError"
    assert db.search(query, top_k=1, kind="known_error")[0].kind == "known_error"
    assert db.find_solution("ImportError: the requests library is not installed") == (
        "pip install requests"
    )
