"""Issue 10, item 17: one database used from several threads of one process.

Every call from a second thread used to fail (sqlite3's check_same_thread). Now the six
databases open their connection for any thread and take turns with it under
``embedding_lock``; a mixin subclass that opens its connection the same way is served too.
"""

from __future__ import annotations

import threading
from collections import Counter

from hostile_helpers import NotesDB

from embeddable_db import BotDB, BotRecord, HashingEncoder

THREADS = 8
PER_THREAD = 12


def _run(threads_work) -> list[BaseException]:
    """Start every worker at once (a barrier), join them, and return what they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(threads_work))

    def wrap(work):
        barrier.wait()
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(work,)) for work in threads_work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    return errors


def test_eight_threads_add_search_update_and_delete_on_one_botdb(tmp_path):
    db = BotDB(tmp_path / "bot.db", model_name="hash:32")
    kept: dict[int, str] = {}
    lock = threading.Lock()

    def worker(n: int):
        mine = []
        for j in range(PER_THREAD):
            name = f"worker{n} bot{j}"
            record_id = db.add(BotRecord(name, purpose=f"task {j} of thread {n}", tags=[f"t{n}"]))
            mine.append(record_id)
            assert db.get(record_id).name == name
            db.search(f"thread {n}", top_k=3)
            db.search_by_vector(db.get_vector(db.vector_key(record_id)), top_k=2)
            db.count()
            db.fetch(5)
            if j % 3 == 1:
                db.update(record_id, purpose=f"renamed task {j} of thread {n}")
            if j % 4 == 3:
                assert db.delete(record_id)
                mine.remove(record_id)
        with lock:
            for record_id in mine:
                kept[record_id] = db.get(record_id).name

    errors = _run([lambda n=n: worker(n) for n in range(THREADS)])
    assert errors == []
    assert db.count() == len(kept) == THREADS * (PER_THREAD - PER_THREAD // 4)
    # Every record is found exactly once, and nothing deleted is found.
    hits = db.search("task thread", top_k=len(kept) + 10)
    assert Counter(hit.record_id for hit in hits) == Counter(list(kept))
    assert db.embedding_count() == len(kept)
    for record_id, name in kept.items():
        assert db.get(record_id).name == name
        (best,) = db.search_by_vector(db.get_vector(db.vector_key(record_id)), top_k=1)
        assert best == (db.vector_key(record_id), best[1]) and best[1] < 1e-4
    report = db.verify_index()
    assert report.ok, report.problems
    db.close()
    again = BotDB(tmp_path / "bot.db", model_name="hash:32")
    assert again.verify_index().ok and again.embedding_count() == len(kept)
    again.close()


class SharedNotes(NotesDB):
    """A mixin user that shares its connection between threads, as the README says to."""

    connect_options = {"check_same_thread": False}

    def add_note(self, body: str) -> int:
        with self.embedding_transaction():  # its own SQL, under the mixin's lock
            rid = self.conn.execute("INSERT INTO notes(body) VALUES (?)", (body,)).lastrowid
            self.add_embedding(rid, {"body": body}, "note")  # commits with the row
        return rid


def test_mixin_calls_are_serialised_for_a_subclass_that_shares_its_connection(tmp_path):
    db = SharedNotes(str(tmp_path / "notes.db"), encoder=HashingEncoder(32))

    def worker(n: int):
        for j in range(PER_THREAD):
            rid = db.add_note(f"note {j} from thread {n}")
            assert db.get_vector(rid) is not None
            db.search_by_text(f"thread {n}", top_k=3)
            if j % 2:
                db.update_embedding_version(rid, embedding_version=2)
            if j % 5 == 4:
                assert db.remove_embedding(rid)
        db.embedding_count()

    assert _run([lambda n=n: worker(n) for n in range(THREADS)]) == []
    expected = THREADS * (PER_THREAD - PER_THREAD // 5)
    assert db.embedding_count() == expected
    assert db.verify_index().ok
    result = db.backfill_embeddings()  # the removed ones come back; nothing else changes
    assert (result.embedded, result.failed) == (THREADS * (PER_THREAD // 5), 0)
    db.close()
    db.conn.close()
