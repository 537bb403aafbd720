"""The main job: six databases filled with demo records, backfilled, then searched.

1. creates the six databases under a fresh demo/data/ (the CLI's --data-dir);
2. fills them from demo/records/*.json with plain SQL, as another application would;
3. runs the documented command, scripts/backfill_embeddings.py, on all of them;
4. runs a few `embeddable-db search` queries (on ONNX Runtime) and `embeddable-db stats`.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from embeddable_db.databases import REGISTRY

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
RECORDS = HERE / "records"
CLI = [sys.executable, "-m", "embeddable_db.cli"]

# demo file -> (database, {key in the file: table}); a list file has one table under "".
SOURCES = {
    "bots.json": ("bot", {"": "bots"}),
    "workflows.json": ("workflow", {"": "workflows"}),
    "enhancements.json": ("enhancement", {"": "enhancements"}),
    "errors.json": ("error", {k: k for k in ("errors", "known_errors", "discrepancies", "telemetry")}),
    "research.json": ("info", {"": "info"}),
    "information.json": ("information", {"": "information"}),
}
QUERIES = [
    ("database connection timed out", []),
    ("summarise customer emails", []),
    ("why are my invoice totals off by a cent", []),
    ("scraper keeps getting blocked by the website", ["--db", "error", "workflow"]),
    ("GPU ran out of memory while training", ["--top-k", "3"]),
]


def sql_value(value):
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return int(value)
    return value


def insert_rows(conn: sqlite3.Connection, table: str, rows: list[dict]) -> int:
    """Plain INSERTs, columns named after the record fields (``type_`` is column ``type``)."""
    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for row in rows:
        values = {key.rstrip("_"): sql_value(v) for key, v in row.items()}
        unknown = set(values) - columns
        if unknown:
            raise SystemExit(f"{table}: demo record has fields the table lacks: {sorted(unknown)}")
        names = ", ".join(f'"{name}"' for name in values)
        marks = ", ".join("?" for _ in values)
        conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(values.values()))
    return len(rows)


def fill() -> None:
    for filename, (name, tables) in SOURCES.items():
        db = REGISTRY[name](data_dir=DATA)  # creates the tables; loads no model
        db.close()
        content = json.loads((RECORDS / filename).read_text(encoding="utf-8"))
        conn = sqlite3.connect(DATA / name / f"{name}.db")
        with conn:
            counts = [
                f"{insert_rows(conn, table, content if key == '' else content[key])} {table}"
                for key, table in tables.items()
            ]
        conn.close()
        print(f"  {name}: inserted {', '.join(counts)}")


def run(command: list[str]) -> None:
    shown = " ".join(c if c != sys.executable else "python" for c in command)
    print(f"\n$ {shown}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def main() -> None:
    started = time.perf_counter()
    shutil.rmtree(DATA, ignore_errors=True)
    print(f"creating six databases in {DATA.relative_to(ROOT)}/ and filling them with plain SQL")
    fill()
    data = ["--data-dir", str(DATA.relative_to(ROOT))]
    run([sys.executable, "scripts/backfill_embeddings.py", *data, "--batch-size", "64"])
    # Searches run the same model on ONNX Runtime: same vectors, no torch import, fast start.
    for query, extra in QUERIES:
        run([*CLI, "search", query, *data, "--model-backend", "onnx", *extra])
    run([*CLI, "stats", *data])
    run([*CLI, "verify", *data])
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    print("open the web page on the demo data (needs the [web] extra, part of .[dev]):")
    print(f"  .venv/bin/embeddable-db serve --data-dir {DATA.relative_to(ROOT)} --open")


if __name__ == "__main__":
    main()
