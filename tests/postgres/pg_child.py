"""The subprocesses of the PostgreSQL reliability tests: ``python pg_child.py <mode> <args>``.

Each opens the conformance suite's ``PgRecordsStore`` (a ``records`` table and its vectors in
the schema CONNINFO's ``search_path`` names) on the hashing encoder, so no process imports torch.

Modes:
- ``writer CONNINFO START COUNT``: inserts records START .. START+COUNT-1 and embeds each;
- ``reader CONNINFO STOP``: searches in a loop until the file STOP exists (``search_loop``);
- ``backfill CONNINFO BATCH DELAY MARKS``: a backfill whose model calls sleep DELAY seconds,
  to be killed or to lose its server; MARKS gets ``B`` on entering a batch and ``b`` once it
  is committed. A lost connection is printed as JSON (its message and counts), exit 3.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "reliability")]

from reliability_helpers import (  # noqa: E402,F401 - some re-exported to the tests
    DIM,
    MODEL,
    SlowEncoder,
    note_text,
    search_loop,
    sigkill_after,
    spawn,
    wait_for_line,
    writers_beside_readers,
)

from conformance.engines import PgRecordsStore  # noqa: E402
from embeddable_db import BackfillConnectionLost  # noqa: E402
from embeddable_db import backfill as backfill_module  # noqa: E402


def open_store(conninfo: str, **options) -> PgRecordsStore:
    options.setdefault("model_name", MODEL)
    return PgRecordsStore(conninfo, **options)


def shut(db: PgRecordsStore) -> None:
    try:
        db.close()
    finally:
        db.conn.close()


def writer(conninfo: str, start: str, count: str) -> None:
    import random

    db = open_store(conninfo)
    print("ready", flush=True)
    rng = random.Random(int(start))
    for i in range(int(start), int(start) + int(count)):
        text = note_text(i, rng)
        db.conn.execute("INSERT INTO records(id, body, kind) VALUES (%s, %s, 'note')",
                        (str(i), text))
        db.add_embedding(i, {"body": text}, "note")
    shut(db)
    print("done", flush=True)


def reader(conninfo: str, stop: str) -> None:
    db = open_store(conninfo)
    print("ready", flush=True)
    report = search_loop(db, stop)
    shut(db)
    print(json.dumps(report), flush=True)


def mark_batches(marks: str) -> None:
    fd = os.open(marks, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    original = backfill_module._embed_batch

    def marked(*args, **kwargs):
        os.write(fd, b"B")
        skipped = original(*args, **kwargs)
        os.write(fd, b"b")
        return skipped

    backfill_module._embed_batch = marked


def backfill(conninfo: str, batch: str, delay: str, marks: str) -> None:
    mark_batches(marks)
    db = open_store(conninfo, encoder=SlowEncoder(delay=float(delay)))
    print("ready", flush=True)
    try:
        db.backfill_embeddings(batch_size=int(batch))
    except BackfillConnectionLost as lost:
        print(json.dumps({"error": str(lost), "embedded": lost.result.embedded,
                          "committed": lost.result.committed}), flush=True)
        sys.exit(3)
    print("done", flush=True)
    shut(db)


if __name__ == "__main__":
    mode, *arguments = sys.argv[1:]
    {"writer": writer, "reader": reader, "backfill": backfill}[mode](*arguments)
