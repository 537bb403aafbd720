"""EmbeddingStore (store.py) on its own, over a real SQLite file: the table every index is
rebuilt from, so what it hands back must be exactly what was written, in ``seq`` order."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from embeddable_db.engine.sqlite.store import Change, EmbeddingStore, StoredState, VectorRow
from embeddable_db.errors import StoreConflictError

from .vectors import unit_vectors

DIM = 8


def row(record_id, vector=None, *, kind="note", source_id="", text_hash="h", model="m",
        version=1, seed=0, text=None):
    if vector is None:
        vector = unit_vectors(1, DIM, seed=seed)[0]
    return VectorRow(record_id, kind, source_id, vector, text_hash, model, version, text)


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "store.db")


@pytest.fixture
def connect(path):
    opened = []

    def connect_():
        conn = sqlite3.connect(path)
        opened.append(conn)
        return conn

    yield connect_
    for conn in opened:
        conn.close()


@pytest.fixture
def store(connect):
    store = EmbeddingStore(connect())
    store.ensure_schema()
    return store


def labels_of(store):
    return {rid: label for label, rid, *_ in store.scan()}


# -- schema ---------------------------------------------------------------------------------
def test_schema_is_created_once_with_a_stable_store_id(connect):
    first = EmbeddingStore(connect(), "vecs")
    first.ensure_schema()
    conn = connect()
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"vecs", "vecs_meta"} <= tables
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(first.store_id) == 32 and int(first.store_id, 16) >= 0
    assert first.last_seq() == 0 and first.count() == 0
    assert first.identity() == (None, None)

    again = EmbeddingStore(connect(), "vecs")
    again.ensure_schema()  # an existing table: nothing new is made
    assert again.store_id == first.store_id


def test_table_names_must_be_plain_identifiers(connect):
    for bad in ("", "1abc", "a-b", "x; DROP TABLE t", "a" * 64):
        with pytest.raises(ValueError, match="plain SQL identifier"):
            EmbeddingStore(connect(), bad)
    EmbeddingStore(connect(), "a" * 63)


def test_two_tables_in_one_file_are_independent(connect):
    conn = connect()
    a, b = EmbeddingStore(conn, "a_vecs"), EmbeddingStore(conn, "b_vecs")
    a.ensure_schema()
    b.ensure_schema()
    a.upsert([row("1")])
    assert (a.count(), b.count()) == (1, 0)
    assert a.store_id != b.store_id
    assert b.changes_since(0) == []


# -- writes and reads -------------------------------------------------------------------------
def test_vectors_round_trip_as_float32_blobs(store):
    vector = np.array([0.1, -0.2, 0.3, 1e-8, -1.5, 2.0, 0.0, 7.25], np.float64)
    store.upsert([row("r1", vector)])
    got = store.get_vector("r1")
    assert got.dtype == np.float32 and got.shape == (DIM,)
    np.testing.assert_array_equal(got, vector.astype(np.float32))
    blob, dim = store.conn.execute("SELECT vector, dim FROM embeddings").fetchone()
    assert dim == DIM and blob == vector.astype("<f4").tobytes()
    assert store.get_vector("missing") is None


def test_a_record_keeps_its_label_across_updates_and_a_removal(store):
    store.upsert([row("a", seed=1), row("b", seed=2)])
    before = labels_of(store)
    store.upsert([row("a", seed=3, text_hash="h2")])
    store.remove(["b"])
    store.upsert([row("b", seed=4)])  # back after a removal: same row, same label
    store.upsert([row("c", seed=5)])
    after = labels_of(store)
    assert after["a"] == before["a"] and after["b"] == before["b"]
    assert after["c"] not in (before["a"], before["b"])
    np.testing.assert_array_equal(store.get_vector("a"), unit_vectors(1, DIM, seed=3)[0])
    assert store.count() == 3


def test_an_update_keeps_created_at_and_a_return_after_removal_renews_it(store):
    store.upsert([row("a"), row("b")])
    created = {rid: c for _, rid, _, _, c, _ in store.mapping("m", DIM)}
    store.conn.execute("UPDATE embeddings SET created_at = 'long ago'")
    store.conn.commit()
    store.upsert([row("a", seed=9)])
    store.remove(["b"])
    store.upsert([row("b", seed=9)])
    now = {rid: c for _, rid, _, _, c, _ in store.mapping("m", DIM)}
    assert now["a"] == "long ago"
    assert now["b"] not in ("long ago", None) and now["b"] >= created["b"]


def test_remove_is_a_soft_delete_returning_the_ids_that_had_a_vector(store):
    store.upsert([row("a"), row("b"), row("c")])
    assert store.remove(["a", "b", "a", "nope"]) == {"a", "b"}
    assert store.remove(["a", "b"]) == set()
    assert store.remove([]) == set()
    assert store.get_vector("a") is None and store.count() == 1
    assert set(store.states_of(["a", "b", "c"])) == {"c"}
    # The rows stay (so the removal has a seq every process's index sees), without a vector.
    deleted = dict(store.conn.execute("SELECT record_id, deleted FROM embeddings"))
    assert deleted == {"a": 1, "b": 1, "c": 0}
    assert store.conn.execute(
        "SELECT COUNT(*) FROM embeddings WHERE vector IS NOT NULL"
    ).fetchone()[0] == 1


def test_set_embedding_version_marks_live_vectors_only(store):
    store.upsert([row("a", version=1), row("b", version=1), row("c", version=1)])
    store.remove(["c"])
    vector = store.get_vector("a")
    seq = store.last_seq()
    assert store.set_embedding_version(["a", "c", "zzz", "a"], 5) == {"a"}
    assert store.set_embedding_version([], 5) == set()
    states = store.states_of(["a", "b", "c"])
    assert states["a"].embedding_version == 5 and states["b"].embedding_version == 1
    np.testing.assert_array_equal(store.get_vector("a"), vector)
    assert [c.record_id for c in store.changes_since(seq)] == ["a"]  # it reaches other indexes


def test_states_say_what_each_live_vector_was_made_from(store):
    store.upsert([
        row("a", text_hash="ha", model="m", version=2, source_id="src-1"),
        row("b", text_hash="hb", model="other", version=7),
    ])
    store.upsert([row("a", text_hash="ha2", model="m", version=3, source_id="src-2",
                      text="the text")])
    store.upsert([row("gone", text="gone soon")])
    store.remove(["gone"])
    assert store.states_of(["a", "b", "gone", "never"]) == {
        "a": StoredState("ha2", "m", 3, "src-2", "note", keyword=True),
        "b": StoredState("hb", "other", 7, "", "note", keyword=False),  # written without text
    }
    many = [f"k{i}" for i in range(1_200)]  # past one chunk of the IN lists
    store.upsert([row(key) for key in many])
    assert set(store.states_of(many[::-1])) == set(many)


def test_orphan_candidates_come_from_the_id_index_a_page_at_a_time(store):
    store.upsert([row(f"k{i:02}") for i in range(7)])
    through = store.last_seq()
    store.remove(["k03"])
    store.upsert([row("k99")])  # after `through`: never an orphan of that walk
    pages, after, candidates = 0, "", []
    while after is not None:
        after, found = store.keys_not_in({"k00", "k05"}, after, limit=2)
        candidates += found
        pages += 1
    assert pages == 5 and candidates == ["k01", "k02", "k03", "k04", "k06", "k99"]
    assert store.live_through(candidates, through) == ["k01", "k02", "k04", "k06"]


# -- seq and changes ----------------------------------------------------------------------------
def test_seq_increases_and_changes_since_returns_what_came_after_in_order(store):
    store.upsert([row("a", seed=1), row("b", seed=2)])
    mark = store.last_seq()
    assert mark == 2
    store.upsert([row("c", seed=3)])
    store.remove(["a"])
    store.upsert([row("b", seed=4, model="m2")])
    labels = labels_of(store)

    changes = store.changes_since(mark)
    assert [c.seq for c in changes] == [3, 4, 5] == sorted(c.seq for c in changes)
    assert store.last_seq() == 5
    assert [(c.record_id, c.label, c.kind, c.model) for c in changes] == [
        ("c", labels["c"], "note", "m"),
        ("a", labels["a"], "note", "m"),
        ("b", labels["b"], "note", "m2"),
    ]
    assert changes[1].vector is None  # the removal
    np.testing.assert_array_equal(changes[0].vector, unit_vectors(1, DIM, seed=3)[0])
    np.testing.assert_array_equal(changes[2].vector, unit_vectors(1, DIM, seed=4)[0])
    assert all(isinstance(c, Change) for c in changes)

    assert [c.record_id for c in store.changes_since(0)] == ["c", "a", "b"]  # latest per row
    assert [c.record_id for c in store.changes_since(4)] == ["b"]
    assert store.changes_since(5) == []
    assert store.remove(["nothing"]) == set() and store.last_seq() == 5  # no change, no seq


def test_seqs_stay_in_commit_order_across_connections(connect):
    one, two = EmbeddingStore(connect()), EmbeddingStore(connect())
    one.ensure_schema()
    two.ensure_schema()
    one.upsert([row("a")])
    two.upsert([row("b"), row("c")])
    one.remove(["b"])
    assert [(c.record_id, c.seq) for c in two.changes_since(0)] == [("a", 1), ("c", 3), ("b", 4)]


# -- identity and counts ----------------------------------------------------------------------------
def test_identity_follows_the_latest_write(store):
    store.upsert([row("a")])
    assert store.identity() == ("m", DIM)
    store.upsert([row("b", unit_vectors(1, 4, seed=1)[0], model="small")])
    assert store.identity() == ("small", 4)
    store.remove(["a", "b"])
    assert store.identity() == ("small", 4)  # a removal says nothing about the model


def test_counts_by_model_and_dimension(store):
    store.upsert([row("a"), row("b"), row("c", model="new")])
    store.upsert([row("d", unit_vectors(1, 4, seed=1)[0])])  # model m, but 4-dimensional
    store.remove(["b"])
    assert store.count() == 3
    assert store.count("m", DIM) == 1 and store.count("m", 4) == 1
    assert store.count("new", DIM) == 1 and store.count("absent", DIM) == 0
    assert store.model_counts() == {"m": 2, "new": 1}
    store.remove(["c"])
    assert store.model_counts() == {"m": 2}


def test_max_label_is_the_largest_ever_given(store):
    assert store.max_label() == 0
    store.upsert([row("a"), row("b"), row("c")])
    top = max(labels_of(store).values())
    store.remove(["c"])
    assert store.max_label() == top  # a removed row keeps its label


def test_live_vectors_and_mapping_of_one_model(store):
    vectors = unit_vectors(5, DIM, seed=7)
    store.upsert([row(f"r{i}", vectors[i], kind=f"k{i % 2}", source_id=f"s{i}", version=i)
                  for i in range(5)])
    store.upsert([row("other", model="other")])
    store.remove(["r2"])
    labels, matrix = store.live_vectors("m", DIM)
    assert labels.dtype == np.int64 and matrix.dtype == np.float32
    assert matrix.shape == (4, DIM) and list(labels) == sorted(labels)
    by_label = {label: rid for rid, label in labels_of(store).items()}
    assert [by_label[label] for label in labels] == ["r0", "r1", "r3", "r4"]
    np.testing.assert_array_equal(matrix, vectors[[0, 1, 3, 4]])

    rows = list(store.mapping("m", DIM))
    assert [r[0] for r in rows] == labels.tolist()
    assert [(r[1], r[2], r[3], r[5]) for r in rows] == [
        ("r0", "k0", "s0", 0), ("r1", "k1", "s1", 1), ("r3", "k1", "s3", 3), ("r4", "k0", "s4", 4)
    ]
    assert all(isinstance(r[4], str) and r[4] for r in rows)  # created_at

    empty_labels, empty = store.live_vectors("absent", 3)
    assert empty_labels.shape == (0,) and empty.shape == (0, 3)
    assert list(store.mapping("absent", 3)) == []


def test_live_vectors_reads_past_one_fetch_chunk(store, monkeypatch):
    monkeypatch.setattr("embeddable_db.engine.sqlite.store.FETCH_CHUNK", 3)
    vectors = unit_vectors(10, DIM, seed=3)
    store.upsert([row(f"r{i}", vectors[i]) for i in range(10)])
    labels, matrix = store.live_vectors("m", DIM)
    assert len(labels) == 10
    np.testing.assert_array_equal(matrix, vectors)


# -- data_version ------------------------------------------------------------------------------
def test_data_version_changes_when_another_connection_commits(connect):
    mine, theirs = EmbeddingStore(connect()), EmbeddingStore(connect())
    mine.ensure_schema()
    theirs.ensure_schema()
    version = mine.data_version()
    assert mine.data_version() == version  # nothing new
    theirs.upsert([row("a")])
    changed = mine.data_version()
    assert changed != version
    assert mine.data_version() == changed
    theirs.remove(["a"])
    assert mine.data_version() != changed


# -- owners --------------------------------------------------------------------------------------
def test_a_table_another_class_owns_is_refused(connect):
    EmbeddingStore(connect(), owner="NotesDB").ensure_schema()
    intruder = EmbeddingStore(connect(), owner="MailDB")
    with pytest.raises(StoreConflictError, match="NotesDB") as caught:
        intruder.ensure_schema()
    message = str(caught.value)
    assert "MailDB" in message and "embedding_table" in message and "maildb_embeddings" in message
    assert "embedding_owner = 'NotesDB'" in message
    EmbeddingStore(connect(), owner="NotesDB").ensure_schema()
    EmbeddingStore(connect()).ensure_schema()  # owner None: a caller that checks none


def test_check_owner_refuses_without_writing(connect):
    EmbeddingStore(connect(), owner="NotesDB").ensure_schema()
    other = EmbeddingStore(connect(), owner="MailDB")
    with pytest.raises(StoreConflictError):
        other.check_owner()
    EmbeddingStore(connect(), owner="NotesDB").check_owner()


def test_a_table_without_owner_is_claimed_by_its_first_write_not_its_open(connect):
    legacy = EmbeddingStore(connect())  # made before owners were recorded
    legacy.ensure_schema()
    legacy.upsert([row("a")])
    assert legacy.meta("owner") is None

    notes = EmbeddingStore(connect(), owner="NotesDB")
    notes.ensure_schema()
    assert notes.meta("owner") is None  # opening writes nothing
    mail = EmbeddingStore(connect(), owner="MailDB")
    mail.ensure_schema()  # still unclaimed: accepted

    notes.upsert([row("b")])
    assert notes.meta("owner") == "NotesDB"
    with pytest.raises(StoreConflictError, match="NotesDB"):
        mail.upsert([row("c")])  # the other class opened first, but writes second
    assert mail.get_vector("c") is None and mail.last_seq() == 2
    with pytest.raises(StoreConflictError):
        EmbeddingStore(connect(), owner="MailDB").ensure_schema()


# -- transactions --------------------------------------------------------------------------------
def test_a_failing_write_rolls_back_all_of_itself(store):
    store.upsert([row("a")])
    bad = VectorRow(None, "note", "", unit_vectors(1, DIM)[0], "h", "m", 1)  # NOT NULL record_id
    with pytest.raises(sqlite3.IntegrityError):
        store.upsert([row("b"), row("a", seed=5), bad])
    assert not store.conn.in_transaction
    assert store.last_seq() == 1 and store.count() == 1 and store.get_vector("b") is None
    np.testing.assert_array_equal(store.get_vector("a"), unit_vectors(1, DIM)[0])
    assert [c.record_id for c in store.changes_since(0)] == ["a"]
    store.upsert([row("b")])  # the store still writes afterwards
    assert store.last_seq() == 2


def test_an_error_raised_inside_write_rolls_it_back(store):
    with pytest.raises(KeyError), store.write():
        store.set_meta("note", "half done")
        raise KeyError("caller code failed")
    assert store.meta("note") is None and not store.conn.in_transaction


def test_a_failing_write_in_the_callers_transaction_rolls_back_only_the_store(store):
    conn = store.conn
    store.upsert([row("a")])
    conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    conn.commit()
    conn.execute("INSERT INTO notes(body) VALUES ('the caller''s row')")
    assert conn.in_transaction
    bad = VectorRow(None, "note", "", unit_vectors(1, DIM)[0], "h", "m", 1)
    with pytest.raises(sqlite3.IntegrityError):
        store.upsert([row("b"), bad])
    assert conn.in_transaction  # the caller's transaction is still the caller's
    assert conn.execute("SELECT body FROM notes").fetchall() == [("the caller's row",)]
    assert store.last_seq() == 1 and store.get_vector("b") is None and store.count() == 1


def test_an_owner_conflict_in_the_callers_transaction_keeps_the_callers_changes(connect):
    EmbeddingStore(connect()).ensure_schema()  # no owner yet
    EmbeddingStore(connect(), owner="NotesDB").upsert([row("a")])
    mail = EmbeddingStore(connect(), owner="MailDB")
    conn = mail.conn
    conn.execute("CREATE TABLE mail(id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.execute("INSERT INTO mail(id) VALUES (7)")
    with pytest.raises(StoreConflictError):
        mail.upsert([row("b")])
    assert conn.execute("SELECT id FROM mail").fetchall() == [(7,)]
    assert mail.get_vector("b") is None and mail.meta("owner") == "NotesDB"
