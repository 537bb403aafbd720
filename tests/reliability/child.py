"""The subprocesses of the reliability tests: ``python child.py <mode> <args>``.

Modes:
- ``backfill DB BACKEND BATCH MARKS``: a slowed backfill, to be killed at a random moment;
- ``saver DB BACKEND MARKS SEED``: embeds a few records, then saves or rebuilds the index, in
  a loop, with sleeps around every ``os.replace`` and ``fsync``, so kills land inside saves;
- ``writer DB BACKEND START COUNT``: inserts and embeds notes START .. START+COUNT-1;
- ``reader DB BACKEND STOP``: searches in a loop until the file STOP exists;
- ``interrupt DB``: a slowed backfill that reports the result of Ctrl-C as JSON;
- ``bulk DB BATCH DELAY``: a backfill at the benchmarks' shape (``hash:384``, default Annoy),
  each model call slowed by DELAY seconds, to be killed once SQLite shows enough progress.
- ``fill DB MARKS``: a backfill of a migrated store that only fills keyword rows, 10 per
  committed write, slowed (F/f marks each write).

MARKS is a file the child appends one letter to on entering (upper case) and leaving (lower
case) an index save (W/w) or a backfill batch (B/b), so the parent knows where a kill landed.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

from reliability_helpers import Notes, SlowEncoder, fill_notes, search_loop

from embeddable_db import BackfillInterrupted
from embeddable_db import backfill as backfill_module
from embeddable_db.engine.sqlite.index_files import IndexFiles


def mark_calls(marks_path: str) -> None:
    fd = os.open(marks_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def wrap(owner, name: str, letter: str) -> None:
        original = getattr(owner, name)

        def wrapper(self, *args, **kwargs):
            os.write(fd, letter.encode())
            result = original(self, *args, **kwargs)
            os.write(fd, letter.lower().encode())
            return result

        setattr(owner, name, wrapper)

    wrap(IndexFiles, "write", "W")  # writing the index files
    wrap(backfill_module, "_embed_batch", "B")  # one backfill batch: model call and commit


def slow_file_operations(seed: int) -> None:
    """Sleep a little before and after each replace and fsync: wider windows for the kill."""
    rng = random.Random(seed)
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst, **kwargs):
        time.sleep(rng.uniform(0, 0.02))
        real_replace(src, dst, **kwargs)
        time.sleep(rng.uniform(0, 0.02))

    def fsync(fd):
        time.sleep(rng.uniform(0, 0.01))
        real_fsync(fd)

    os.replace, os.fsync = replace, fsync


def backfill(db_path: str, backend: str, batch: str, marks: str) -> None:
    mark_calls(marks)
    db = Notes(db_path, backend=backend, encoder=SlowEncoder(delay=0.012))
    print("ready", flush=True)
    db.backfill_embeddings(batch_size=int(batch))
    print("done", flush=True)
    db.shut()


def saver(db_path: str, backend: str, marks: str, seed: str) -> None:
    mark_calls(marks)
    slow_file_operations(int(seed))
    db = Notes(db_path, backend=backend)
    print("ready", flush=True)
    rng = random.Random(int(seed))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        have = {row[0] for row in db.conn.execute("SELECT record_id FROM embeddings WHERE deleted = 0")}
        todo = [
            (rid, {"body": body}, "note")
            for rid, body in db.conn.execute("SELECT id, body FROM notes ORDER BY id")
            if str(rid) not in have
        ][: rng.randint(1, 8)]
        if todo:
            db.add_embeddings(todo)
        if rng.random() < 0.5:
            db.save_index()
        else:
            db.rebuild_index()
    db.shut()


def writer(db_path: str, backend: str, start: str, count: str) -> None:
    db = Notes(db_path, backend=backend)
    print("ready", flush=True)
    texts = fill_notes(db_path, int(count), seed=int(start), start=int(start))
    for rid, text in texts.items():
        db.add_embedding(rid, {"body": text}, "note")
    db.shut()
    print("done", flush=True)


def reader(db_path: str, backend: str, stop: str) -> None:
    db = Notes(db_path, backend=backend)
    print("ready", flush=True)
    report = search_loop(db, stop)
    db.shut()
    print(json.dumps(report), flush=True)


def interrupt(db_path: str) -> None:
    db = Notes(db_path, encoder=SlowEncoder(delay=0.02))
    print("ready", flush=True)
    try:
        result = db.backfill_embeddings(batch_size=5)
    except BackfillInterrupted as exc:
        result = exc.result
    print(json.dumps({
        "interrupted": result.interrupted,
        "embedded": result.embedded,
        "last_record_id": result.last_record_id,
    }), flush=True)
    db.shut()


def bulk(db_path: str, batch: str, delay: str) -> None:
    db = Notes(db_path, model_name="hash:384", encoder=SlowEncoder(384, float(delay)))
    print("ready", flush=True)
    db.backfill_embeddings(batch_size=int(batch))
    print("done", flush=True)
    db.shut()


def fill(db_path: str, marks: str) -> None:
    from embeddable_db.engine.sqlite import SQLiteEngine

    backfill_module.FILL_CHUNK = 10
    fill_keywords = SQLiteEngine.fill_keywords

    def slowed(self, items):
        time.sleep(0.01)
        return fill_keywords(self, items)

    SQLiteEngine.fill_keywords = slowed
    fd = os.open(marks, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    marked = SQLiteEngine.fill_keywords

    def marking(self, items):
        os.write(fd, b"F")
        written = marked(self, items)
        os.write(fd, b"f")
        return written

    SQLiteEngine.fill_keywords = marking
    db = Notes(db_path)
    print("ready", flush=True)
    db.backfill_embeddings(batch_size=10)
    print("done", flush=True)
    db.shut()


if __name__ == "__main__":
    mode, *arguments = sys.argv[1:]
    {"backfill": backfill, "saver": saver, "writer": writer, "reader": reader,
     "interrupt": interrupt, "bulk": bulk, "fill": fill}[mode](*arguments)
