"""LiveView (live_view.py) on its own, over a real EmbeddingStore on a SQLite file: the live
index follows what SQLite committed (its own writes and other connections'), never a write a
caller's transaction may still roll back, and compaction never changes an answer."""

from __future__ import annotations

import numpy as np
import pytest

from embeddable_db.engine.sqlite import live_view

from .stored import (
    DIM,
    assert_answers_match_store,
    queries,
    row,
    rows,
    view_of,
)
from .vectors import unit_vectors


def ids_in(view) -> set[str]:
    return set(view.live.label_of)


# -- rebuilding ---------------------------------------------------------------------------------
def test_rebuild_holds_exactly_the_stored_vectors(store, backend):
    store.upsert(rows(3, prefix="other", seed=5, model="other"))  # another model's: never seen
    store.upsert(rows(30, seed=1) + rows(10, start=30, seed=2, kind="faq"))
    store.remove(["r3", "r31"])
    store.upsert([row("r4", seed=77)])  # an update
    view = view_of(store, backend)
    assert len(view) == 38 and view.dim == DIM
    assert ids_in(view) == {f"r{i}" for i in range(40)} - {"r3", "r31"}
    assert view.live.synced_seq == store.last_seq() and view.live.pending == 0
    assert not view.stale()
    probes = [*queries(), unit_vectors(1, DIM, seed=77)[0], unit_vectors(3, DIM, seed=1)[2]]
    assert_answers_match_store(view.live, store, probes, k=8)
    assert_answers_match_store(view.live, store, probes, k=5, kind="faq")
    assert_answers_match_store(view.live, store, probes[:2], k=100)  # more than are stored


def test_rebuild_keeps_the_generation_of_the_index_it_replaces(store):
    store.upsert(rows(5))
    view = view_of(store, "annoy")
    view.live.generation = 7
    assert view.rebuild().generation == 7


def test_an_empty_store_and_one_of_another_model_rebuild_empty(store):
    view = view_of(store)
    assert len(view) == 0 and view.dim is None and view.live.search(queries()[0], 5) == []
    assert view.current_dim() is None

    store.upsert(rows(4, model="other"))
    view = view_of(store)
    assert view.current_dim() is None  # the stored vectors are not this model's
    assert len(view) == 0 and view.live.search(queries()[0], 5) == []
    assert view.live.synced_seq == store.last_seq() == 4
    other = view_of(store, model="other")
    assert other.current_dim() == DIM and len(other) == 4


def test_current_dim_follows_the_latest_write(store):
    view = view_of(store)
    store.upsert(rows(2))
    assert view.current_dim() == DIM
    store.upsert([row("x", unit_vectors(1, 4)[0])])  # the same model, now 4-dimensional
    assert view.current_dim() == 4
    store.upsert([row("y", model="other")])
    assert view.current_dim() is None


# -- following SQLite ---------------------------------------------------------------------------
def test_own_committed_writes_are_applied_by_wrote(store, backend):
    store.upsert(rows(10))
    view = view_of(store, backend)
    store.upsert([row("new", seed=50), row("r2", seed=51)])
    view.wrote()
    store.remove(["r5"])
    view.wrote()
    assert "new" in ids_in(view) and "r5" not in ids_in(view) and len(view) == 10
    assert view.live.synced_seq == store.last_seq()
    assert_answers_match_store(view.live, store, [*queries(), *unit_vectors(2, DIM, seed=50)])


def test_sync_picks_up_writes_of_another_connection(db, store, backend):
    store.upsert(rows(20, seed=1))
    view = view_of(store, backend)
    assert not view.stale()
    theirs = db.store()
    theirs.upsert(rows(5, start=20, seed=2))  # new
    theirs.upsert([row("r1", seed=60), row("r2", seed=61, kind="faq")])  # updates
    theirs.remove(["r3", "r4"])  # removals
    theirs.upsert([row("r6", model="other"), row("stranger", model="other")])  # another model
    assert view.stale()
    assert "r20" not in ids_in(view) and "r3" in ids_in(view)  # nothing applied before sync

    view.sync()
    assert not view.stale()
    assert ids_in(view) == {f"r{i}" for i in range(25)} - {"r3", "r4", "r6"}
    assert view.live.kind_of[view.live.label_of["r2"]] == "faq"
    assert view.live.synced_seq == store.last_seq()
    probes = [*queries(), *unit_vectors(2, DIM, seed=60), unit_vectors(5, DIM, seed=1)[3]]
    assert_answers_match_store(view.live, store, probes)
    assert_answers_match_store(view.live, store, probes, k=3, kind="faq")

    view.sync()  # nothing new: nothing changes
    assert len(view) == 22 and not view.stale()


def test_a_sync_with_nothing_new_is_not_stale_again(db, store):
    store.upsert(rows(3))
    view = view_of(store)
    db.store().upsert([row("a")])
    assert view.stale()
    view.sync()
    assert not view.stale() and "a" in ids_in(view)
    store.upsert([row("b")])  # our own commit does not change data_version
    assert not view.stale()


# -- the uncommitted rule -----------------------------------------------------------------------
def test_a_write_in_the_callers_transaction_is_seen_only_once_committed(store, backend):
    store.upsert(rows(10))
    view = view_of(store, backend)
    seq = view.live.synced_seq
    conn = store.conn
    conn.execute("BEGIN")
    store.upsert([row("inside", seed=40)])
    store.remove(["r0"])
    view.wrote()
    assert view.uncommitted and conn.in_transaction
    assert not view.stale()  # nothing to apply while the transaction is open
    view.sync()  # a sync inside it applies nothing
    assert "inside" not in ids_in(view) and "r0" in ids_in(view)
    assert view.live.synced_seq == seq
    assert [rid for rid, _ in view.live.search(unit_vectors(1, DIM, seed=40)[0], 1)] != ["inside"]

    conn.commit()
    assert view.stale()
    view.sync()
    assert not view.uncommitted and not view.stale()
    assert "inside" in ids_in(view) and "r0" not in ids_in(view)
    assert view.live.synced_seq == store.last_seq()
    assert_answers_match_store(view.live, store, [*queries(), unit_vectors(1, DIM, seed=40)[0]])


def test_after_a_rollback_the_view_holds_nothing_phantom(store, backend):
    store.upsert(rows(10))
    view = view_of(store, backend)
    before = ids_in(view)
    conn = store.conn
    conn.execute("BEGIN")
    store.upsert([row("ghost1", seed=41), row("ghost2", seed=42), row("r1", seed=43)])
    store.remove(["r2"])
    view.wrote()
    view.sync()
    conn.rollback()
    assert view.stale()
    view.sync()
    assert ids_in(view) == before
    assert view.live.synced_seq <= store.last_seq() == 10
    assert_answers_match_store(view.live, store, [*queries(), *unit_vectors(3, DIM, seed=41)])

    # The rolled-back seq numbers are handed out again: every later write is seen.
    store.upsert([row("after1", seed=44), row("r1", seed=45)])
    view.wrote()
    store.remove(["r2"])
    view.wrote()
    assert store.last_seq() == 13
    assert ids_in(view) == (before | {"after1"}) - {"r2"}
    assert view.live.synced_seq == 13
    probes = [*queries(), *unit_vectors(1, DIM, seed=44), unit_vectors(1, DIM, seed=45)[0]]
    assert_answers_match_store(view.live, store, probes)


def test_a_rolled_back_transaction_is_followed_by_writes_of_another_connection(db, store):
    store.upsert(rows(5))
    view = view_of(store)
    conn = store.conn
    conn.execute("BEGIN")
    store.upsert([row("ghost", seed=41)])
    view.wrote()
    conn.rollback()
    db.store().upsert([row("theirs", seed=46)])  # takes seq 6, as the ghost did
    assert view.stale()
    view.sync()
    assert ids_in(view) == {f"r{i}" for i in range(5)} | {"theirs"}
    assert view.live.synced_seq == store.last_seq() == 6


# -- the compaction policy ----------------------------------------------------------------------
@pytest.fixture
def small_limits(monkeypatch):
    monkeypatch.setattr(live_view, "MIN_PENDING", 4)
    monkeypatch.setattr(live_view, "MAX_PENDING", 10)


def test_pending_limit_is_half_the_backend_clamped(store, small_limits):
    view = view_of(store, "annoy")
    assert view.pending_limit() == 4  # no backend: the minimum
    store.upsert(rows(12))
    view = view_of(store, "annoy")
    assert view.pending_limit() == 6
    store.upsert(rows(40, start=12, seed=3))
    view = view_of(store, "annoy")
    assert view.pending_limit() == 10  # the maximum


def test_needs_compaction_once_the_delta_passes_the_limit(store, small_limits):
    store.upsert(rows(12))
    view = view_of(store, "annoy")  # Annoy takes no change: everything waits in the delta
    store.upsert(rows(6, start=12, seed=2))
    view.wrote()
    assert view.live.pending == 6 and not view.needs_compaction()  # at the limit, not past it
    assert view.needs_compaction(limit=5) and not view.needs_compaction(limit=6)
    store.upsert([row("r0", seed=3)])  # an update: a tombstone and a delta entry
    view.wrote()
    assert view.live.pending == 8 and view.needs_compaction()
    assert not view.needs_compaction(limit=100)


@pytest.mark.parametrize("backend, in_place", [("faiss", True), ("annoy", False)])
def test_compact_folds_the_delta_and_keeps_every_answer(store, backend, in_place):
    store.upsert(rows(30, seed=1))
    view = view_of(store, backend)
    store.upsert(rows(5, start=30, seed=2) + [row("r1", seed=60), row("r2", seed=61)])
    store.remove(["r7", "r8", "r30"])
    view.wrote()
    assert view.live.pending > 0
    probes = [*queries(8), *unit_vectors(2, DIM, seed=60), unit_vectors(30, DIM, seed=1)[7]]
    before = [view.live.search(q, 10) for q in probes]
    live, backend_object = view.live, view.live.backend

    view.compact()
    assert view.live.pending == 0 and len(view) == 32
    assert (view.live is live and view.live.backend is backend_object) == in_place
    assert view.live.synced_seq == store.last_seq()
    after = [view.live.search(q, 10) for q in probes]
    for was, now in zip(before, after, strict=True):
        assert [rid for rid, _ in now] == [rid for rid, _ in was]
        np.testing.assert_allclose([d for _, d in now], [d for _, d in was], atol=1e-5)
    assert_answers_match_store(view.live, store, probes, k=10)


def test_compact_with_nothing_pending_keeps_the_index(store):
    store.upsert(rows(10))
    view = view_of(store, "annoy")
    live = view.live
    view.compact()
    assert view.live is live


# -- snapshots -------------------------------------------------------------------------------
def test_snapshot_reads_one_moment_while_another_connection_commits(db, store):
    store.upsert(rows(5))
    view = view_of(store)
    theirs = db.store()
    with view.snapshot():
        assert store.count() == 5
        theirs.upsert(rows(3, start=5, seed=2))
        assert theirs.count() == 8
        assert store.count() == 5 and store.last_seq() == 5  # still the moment it began
        assert store.changes_since(5) == []
    assert not store.conn.in_transaction
    assert store.count() == 8 and store.last_seq() == 8


def test_snapshot_ends_its_read_on_an_error_and_keeps_a_callers_transaction(store):
    store.upsert(rows(2))
    view = view_of(store)
    with pytest.raises(KeyError), view.snapshot():
        raise KeyError("caller code failed")
    assert not store.conn.in_transaction

    store.conn.execute("BEGIN")
    store.upsert([row("pending")])
    with view.snapshot():
        pass
    assert store.conn.in_transaction  # the caller's to commit or roll back
    store.conn.rollback()
    assert store.get_vector("pending") is None
