"""WorkflowDB: status changes in bulk without touching vectors, step order, the real model."""

from __future__ import annotations

import pytest

from embeddable_db import WorkflowDB, WorkflowRecord

from .cases import best_match


def _statements(db):
    seen = []
    db.conn.set_trace_callback(seen.append)
    return seen


@pytest.mark.sqlite_only  # SQLite's statement trace and index files
def test_update_statuses_is_one_transaction_and_leaves_vectors_alone(open_db, encoder):
    db = open_db(WorkflowDB)
    ids = [db.add(WorkflowRecord([f"step {i}", "ship"], title=f"flow {i}")) for i in range(6)]
    db.save_index()
    assert db.get(ids[0]).status == "pending"
    vectors = {i: db.get_vector(db.vector_key(i)) for i in ids}
    files = {p: open(p, "rb").read() for p in (db.index_path, db.metadata_path)}
    encoded = encoder.texts_encoded
    logged = db.conn.execute("SELECT COUNT(*) FROM workflow_embeddings_changes").fetchone()
    seen = _statements(db)
    assert db.update_statuses([*ids[:4], 9999, ids[0]], "approved") == 4
    db.conn.set_trace_callback(None)
    assert sum(s.startswith("BEGIN") for s in seen) == 1
    assert sum(s.startswith("UPDATE workflows") for s in seen) == 4  # once per existing row
    # the vectors are not touched, and the status (not embedded) is not logged as a change
    assert not any("workflow_embeddings" in s.replace("workflow_embeddings_changes", "") for s in seen)
    assert db.conn.execute("SELECT COUNT(*) FROM workflow_embeddings_changes").fetchone() == logged
    assert encoder.texts_encoded == encoded
    assert [db.get(i).status for i in ids] == ["approved"] * 4 + ["pending"] * 2
    assert {i: db.get_vector(db.vector_key(i)) for i in ids} == vectors
    db.save_index()
    assert {p: open(p, "rb").read() for p in files} == files


def test_update_status(open_db):
    db = open_db(WorkflowDB)
    wid = db.add(WorkflowRecord(["a", "b"], title="flow"))
    assert db.update_status(wid, "rejected") is True
    assert db.get(wid).status == "rejected"
    assert db.update_status(wid + 1, "rejected") is False
    with pytest.raises(ValueError, match="status"):
        db.update_status(wid, "  ")
    with pytest.raises(ValueError, match="int"):
        db.update_statuses(["1"], "approved")
    assert db.get(wid).status == "rejected"


def test_steps_are_embedded_in_order(open_db):
    db = open_db(WorkflowDB)
    forward = WorkflowRecord(["build", "test", "deploy"], title="release")
    backward = WorkflowRecord(["deploy", "test", "build"], title="release")
    assert "build -> test -> deploy" in db.embedding_text(forward)
    assert db.embedding_text(forward) != db.embedding_text(backward)


@pytest.mark.model
def test_real_model_finds_the_workflow_by_meaning(open_db, real_encoder):
    db = open_db(WorkflowDB, encoder=real_encoder)
    flows = [
        WorkflowRecord(["create accounts", "order laptop", "schedule orientation"],
                       title="Onboard a new employee", category="hr"),
        WorkflowRecord(["run test suite", "build release", "publish to app store"],
                       title="Release a new app version", category="engineering"),
        WorkflowRecord(["compute salaries", "manager approval", "bank transfer"],
                       title="Monthly payroll", category="finance"),
        WorkflowRecord(["verify purchase", "approve refund", "notify customer"],
                       title="Handle a refund request", category="support"),
        WorkflowRecord(["draft article", "edit", "publish"], title="Publish a blog post",
                       category="marketing"),
    ]
    best = best_match(db, flows, "give a customer their money back for an order")
    assert best.title == "Handle a refund request"
