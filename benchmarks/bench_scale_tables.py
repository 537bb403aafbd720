"""Issue 15 at scale: a 1M-row table embedded with ``TableStore``, changes found by triggers.

The ``hash:384`` encoder keeps the model out of the figures; what is left is the store's own
work. Figures, each with its target:

- no-op backfill of the 1M-row table (the change log is empty: nothing is read);
- backfill after 1,000 rows were edited by plain SQL from another connection, beyond the
  model calls (the encoder's own time is measured inside it and subtracted);
- what the triggers cost the user's own writes: a bulk insert of 100k rows in one transaction,
  and single-row updates of an embedded column each in its own transaction, into the same
  table with and without the triggers installed, measured side by side (ratio <= 1.3). The
  bulk insert appends (SQLite gives each row the next rowid), so its rows log nothing and are
  found by rowid (``tables/changes.py``); as context, the same 100k rows inserted at rowids
  below the high mark (explicit ids of deleted rows), which the trigger does log.

``SCALE_TABLE_ROWS`` in the environment changes the table's size.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from common import figure, log, ratio

from embeddable_db import TableStore

ROWS = int(os.environ.get("SCALE_TABLE_ROWS", 1_000_000))
EDITS = 1_000
BULK = 100_000
UPDATES = 2_000
REPEATS = 6
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"]


def body(i: int) -> str:
    return f"note {i}: {WORDS[i % 9]} {WORDS[(i // 9) % 9]} {WORDS[(i // 81) % 9]} {i * 7919}"


def make_table(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT, body TEXT, views INT)")
    conn.executemany("INSERT INTO notes(title, body, views) VALUES (?, ?, 0)",
                     ((f"title {i}", body(i)) for i in range(rows)))
    conn.commit()
    conn.close()


class TimedEncoder:
    """The hashing encoder, with the seconds spent inside it counted (the "model calls")."""

    def __init__(self, store: TableStore) -> None:
        self.inner = store._encoding.encoder
        self.seconds = 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.inner.encode(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def backfills(folder: Path) -> dict[str, float]:
    path = folder / "app.db"
    make_table(path, ROWS)
    out: dict[str, float] = {}
    store = TableStore(str(path), "notes", columns=["title", "body"], model_name="hash:384")
    started = time.perf_counter()
    full = store.backfill_embeddings(batch_size=1_000)
    out["full"] = time.perf_counter() - started
    assert full.embedded == ROWS, full
    started = time.perf_counter()
    noop = store.backfill_embeddings()
    out["noop"] = time.perf_counter() - started
    assert (noop.embedded, noop.reembedded) == (0, 0), noop
    other = sqlite3.connect(path)  # another program edits the table with plain SQL
    other.executemany("UPDATE notes SET body = body || ' (edited)' WHERE id = ?",
                      ((i,) for i in range(1, ROWS, ROWS // EDITS)))
    other.commit()
    other.close()
    timed = TimedEncoder(store)
    store._encoding._encoder = timed
    started = time.perf_counter()
    edited = store.backfill_embeddings(batch_size=1_000)
    out["edits"] = time.perf_counter() - started
    out["edits_model"] = timed.seconds
    out["edited"] = edited.reembedded
    store.close()
    return out


def write_cost(path: Path, triggers: bool) -> tuple[float, float, float]:
    """(bulk insert of BULK rows, mean single-row update on a default connection, the same
    with ``synchronous=NORMAL``) in seconds, into a new table at ``path``. A default connection
    syncs the WAL at every commit, as most applications' writes do; NORMAL does not, which
    leaves the triggers' own work the largest share it can be."""
    make_table(path, 1_000)
    if triggers:  # installs the triggers and the change table, then steps aside
        TableStore(str(path), "notes", columns=["title", "body"], model_name="hash:384").close()
    conn = sqlite3.connect(path, isolation_level=None)
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO notes(title, body, views) VALUES (?, ?, 0)",
                     ((f"bulk {i}", body(i)) for i in range(BULK)))
    conn.execute("COMMIT")
    bulk = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(UPDATES):  # autocommit: each update its own transaction
        conn.execute("UPDATE notes SET body = ? WHERE id = ?", (f"updated {i}", 1 + i % 1_000))
    single = (time.perf_counter() - started) / UPDATES
    conn.execute("PRAGMA synchronous=NORMAL")
    started = time.perf_counter()
    for i in range(UPDATES):
        conn.execute("UPDATE notes SET body = ? WHERE id = ?", (f"again {i}", 1 + i % 1_000))
    unsynced = (time.perf_counter() - started) / UPDATES
    conn.close()
    return bulk, single, unsynced


def refill_cost(path: Path, triggers: bool) -> float:
    """Seconds to insert BULK rows, in one transaction, at the rowids of rows deleted after the
    triggers were installed: at or below the high mark, so each one is logged."""
    make_table(path, BULK + 1_000)
    if triggers:
        TableStore(str(path), "notes", columns=["title", "body"], model_name="hash:384").close()
    conn = sqlite3.connect(path, isolation_level=None)
    with conn:
        conn.execute("DELETE FROM notes WHERE id <= ?", (BULK,))
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO notes(id, title, body, views) VALUES (?, ?, ?, 0)",
                     ((i + 1, f"refill {i}", body(i)) for i in range(BULK)))
    conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return seconds


def write_costs(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``write_cost`` without and with the triggers, alternating (side by side, so that a
    change in the machine's speed falls on both), best of REPEATS each."""
    runs: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    for attempt in range(REPEATS):
        for triggers in (False, True) if attempt % 2 == 0 else (True, False):
            written = write_cost(folder / f"writes-{triggers}-{attempt}.db", triggers)
            refilled = refill_cost(folder / f"refill-{triggers}-{attempt}.db", triggers)
            runs[triggers].append((*written, refilled))
    bare, tracked = (tuple(min(column) for column in zip(*runs[t], strict=True))
                     for t in (False, True))
    return bare, tracked


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_TMP")) as tmp:
        log(f"{ROWS:,}-row table: backfills")
        out = backfills(Path(tmp))
    with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_TMP")) as tmp:
        log("the user's writes with and without triggers")
        bare, tracked = write_costs(Path(tmp))
    print(f"-- a {ROWS:,}-row table (TableStore, triggers, hash:384)")
    figure("full backfill", out["full"], "s")
    figure("no-op backfill", out["noop"], "s", "target <= 0.5 s at 1M")
    beyond = out["edits"] - out["edits_model"]
    figure(f"backfill after {out['edited']:,} edits, beyond the model calls", beyond, "s",
           f"target <= 1 s; model calls {out['edits_model']:.3f} s")
    figure(f"bulk insert of {BULK:,} rows without / with triggers", bare[0], "s",
           f"with: {tracked[0]:.3f} s")
    figure(f"{BULK:,} rows inserted below the high mark (each logged) without / with triggers",
           bare[3], "s", f"with: {tracked[3]:.3f} s ({tracked[3] / bare[3]:.2f}x, context)")
    figure("single-row update without / with triggers (default sync)", bare[1] * 1000, "ms",
           f"with: {tracked[1] * 1000:.3f} ms")
    figure("single-row update without / with triggers (synchronous=NORMAL)", bare[2] * 1000,
           "ms", f"with: {tracked[2] * 1000:.3f} ms ({tracked[2] / bare[2]:.2f}x, context)")
    ratio("no-op backfill of the table", out["noop"], "<= 0.5 s", out["noop"] <= 0.5)
    ratio("backfill after 1,000 edits beyond the model", beyond, "<= 1 s", beyond <= 1)
    ratio("bulk insert with / without triggers", tracked[0] / bare[0], "<= 1.3",
          tracked[0] / bare[0] <= 1.3)
    ratio("single-row update with / without triggers (default sync)", tracked[1] / bare[1], "<= 1.3",
          tracked[1] / bare[1] <= 1.3)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
