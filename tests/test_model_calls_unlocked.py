"""Model calls happen outside the store's lock (issue 11's fix).

Before, a backfill held the store's lock while the model encoded a batch, so a search from
another thread of the same process waited for the model. Here the encoder blocks on an event
until the other thread's call has returned; a call that waits for the lock instead is caught by
a timeout (the test then fails), never by timing anything.
"""

import threading

import numpy as np
import pytest

from conftest import NotesDB
from embeddable_db import BotDB, BotRecord, HashingEncoder

WAIT = 20  # seconds before a blocked call counts as blocked: far beyond any real duration


class BlockingEncoder(HashingEncoder):
    """The hashing encoder, which, once armed, stops inside its next model call until released."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__(dim)
        self.armed = False
        self.inside = threading.Event()
        self.release = threading.Event()

    def encode(self, texts, *args, **kwargs):
        if self.armed:
            self.armed = False
            self.inside.set()
            assert self.release.wait(WAIT), "the test never released the encoder"
        return super().encode(texts, *args, **kwargs)


class SharedNotes(NotesDB):
    connect_options = {"check_same_thread": False, "timeout": 60}


def _in_thread(call):
    """Start ``call`` in a thread; returns (thread, its outcome list)."""
    outcome: list = []

    def run():
        try:
            outcome.append(("ok", call()))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _while_encoding(encoder, encoding_call, *calls):
    """Run ``encoding_call`` in a thread until it is inside the model, then each of ``calls``
    (in another thread, each must return while the model call is still blocked)."""
    encoder.armed = True
    worker, worked = _in_thread(encoding_call)
    assert encoder.inside.wait(WAIT), f"the model was never called: {worked}"
    results = []
    try:
        for call in calls:
            thread, outcome = _in_thread(call)
            thread.join(WAIT)
            assert not thread.is_alive(), f"{call} waited for the model call of another thread"
            kind, value = outcome[0]
            assert kind == "ok", value
            results.append(value)
    finally:
        encoder.release.set()
        worker.join(WAIT)
    assert worked and worked[0][0] == "ok", worked
    return worked[0][1], results


def test_searches_and_reads_complete_while_a_backfill_encodes(tmp_path):
    encoder = BlockingEncoder()
    db = SharedNotes(str(tmp_path / "notes.db"), encoder=encoder)
    first = [db.add_note(f"old note {i}") for i in range(5)]
    db.backfill_embeddings()
    for i in range(5):
        db.add_note(f"new note {i}")
    query = np.asarray(db.get_vector(first[0]))
    result, (hits, count, vector, verified) = _while_encoding(
        encoder,
        db.backfill_embeddings,
        lambda: db.search_by_vector(query, top_k=3),
        db.embedding_count,
        lambda: db.get_vector(first[1]),
        db.verify_index,
    )
    assert hits[0][0] == str(first[0]) and count == 5 and vector is not None
    assert verified.ok
    assert result.embedded == 5 and db.embedding_count() == 10
    db.close()


def test_a_write_meanwhile_is_kept_not_overwritten_by_the_backfill(tmp_path):
    """The backfill's batch was made from what a record said before: a vector another thread
    wrote meanwhile is left as that thread made it."""
    encoder = BlockingEncoder()
    db = SharedNotes(str(tmp_path / "notes.db"), encoder=encoder)
    rid = db.add_note("what the note said at first")

    def rewrite():
        with db.embedding_transaction():
            db.conn.execute("UPDATE notes SET body = 'what it says now' WHERE id = ?", (rid,))
            db.add_embedding(rid, {"body": "what it says now"}, "note")

    result, _ = _while_encoding(encoder, db.backfill_embeddings, rewrite)
    assert (result.embedded, result.unchanged) == (0, 1)
    now = db.encode_text("what it says now")
    np.testing.assert_allclose(db.get_vector(rid), now, atol=1e-6)
    assert db.backfill_embeddings(dry_run=True).unchanged == 1
    db.close()


def test_a_database_search_completes_while_another_thread_adds(tmp_path):
    encoder = BlockingEncoder()
    db = BotDB(tmp_path / "bot.db", encoder=encoder)
    kept = db.add(BotRecord("weather bot", purpose="reports the weather"))
    added, (hits, bot) = _while_encoding(
        encoder,
        lambda: db.add(BotRecord("train bot", purpose="knows the timetable")),
        lambda: db.search("weather", top_k=1),
        lambda: db.get(kept),
    )
    assert hits[0].record_id == kept and bot.name == "weather bot"
    assert db.get(added).name == "train bot" and db.embedding_count() == 2
    db.close()


@pytest.mark.parametrize("call", ["add_embeddings", "search_by_text"])
def test_mixin_encoding_calls_hold_no_lock(tmp_path, call):
    encoder = BlockingEncoder()
    db = SharedNotes(str(tmp_path / "notes.db"), encoder=encoder)
    db.add_embeddings([(i, {"body": f"note {i}"}, "note") for i in range(3)])
    encoding = {
        "add_embeddings": lambda: db.add_embeddings([(9, {"body": "a new one"}, "note")]),
        "search_by_text": lambda: db.search_by_text("note 1", top_k=2),
    }[call]
    _, (count,) = _while_encoding(encoder, encoding, db.embedding_count)
    assert count == 3
    db.close()
