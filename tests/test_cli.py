"""The command line, run as users run it: real subprocesses on real SQLite files."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from embeddable_db.databases import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "backfill_embeddings.py"
HASH = ["--model", "hash:64"]

# A few rows per table, inserted with plain SQL as another application would.
ROWS = {
    "bot": {"bots": [
        {"name": "invoice-bot", "purpose": "reads supplier invoices and books them"},
        {"name": "mail-bot", "purpose": "summarises customer emails every morning"},
        {"name": "scrape-bot", "purpose": "scrapes competitor prices from websites"},
    ]},
    "workflow": {"workflows": [
        {"title": "Month-end close", "workflow": '["reconcile ledger", "post accruals"]'},
        {"title": "Email digest", "workflow": '["fetch inbox", "summarise threads"]'},
    ]},
    "enhancement": {"enhancements": [
        {"idea": "cache exchange rates", "rationale": "the rates API is slow", "title": "FX cache"},
        {"idea": "retry on timeouts", "rationale": "network calls fail", "title": "Retries"},
    ]},
    "error": {
        "errors": [{"message": "sqlite3.OperationalError: database is locked"},
                   {"message": "ConnectionResetError: connection reset by peer"}],
        "known_errors": [{"message": "database is locked", "solution": "set busy_timeout"}],
        "discrepancies": [{"message": "invoice total differs from ledger"}],
    },
    "info": {"info": [
        {"topic": "SQLite WAL mode", "content": "WAL lets readers run while a writer writes."},
        {"topic": "Annoy indexes", "content": "Annoy builds random projection trees."},
    ]},
    "information": {"information": [
        {"data_type": "api_spec", "summary": "REST API of the billing system"},
        {"data_type": "regulation", "summary": "EU rules on electronic invoicing"},
    ]},
}
TOTAL = 15


def insert(data_dir: Path, name: str, table: str, row: dict) -> None:
    conn = sqlite3.connect(data_dir / name / f"{name}.db")
    with conn:
        names = ", ".join(row)
        conn.execute(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))
    conn.close()


@pytest.fixture
def data_dir(tmp_path):
    data = tmp_path / "data"
    for name, tables in ROWS.items():
        REGISTRY[name](data_dir=data, model_name="hash:64").close()
        for table, rows in tables.items():
            for row in rows:
                insert(data, name, table, row)
    return data


def cli(*args, cwd=None, env=None, script=False) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT)] if script else [sys.executable, "-m", "embeddable_db.cli"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def summary(output: str) -> dict[str, dict[str, str]]:
    """The summary table as {database: {column: value}}."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("database"))
    header = lines[start].replace("re-embedded", "reembedded").replace("records/s", "rate").split()
    rows = {}
    for line in lines[start + 1:]:
        cells = line.split()
        if not cells or cells[0] not in REGISTRY:
            break
        rows[cells[0]] = dict(zip(header, cells, strict=False))
    return rows


def column(rows, name):
    return {db: int(row[name]) for db, row in rows.items()}


def test_backfill_all_databases_then_nothing_to_do(data_dir):
    first = cli("backfill", "--data-dir", data_dir, *HASH)
    assert first.returncode == 0, first.stderr
    rows = summary(first.stdout)
    assert list(rows) == list(REGISTRY)  # all six by default, in order
    assert sum(column(rows, "embedded").values()) == TOTAL
    assert column(rows, "embedded")["error"] == 4
    assert "texts encoded: 15" in first.stdout
    second = cli("backfill", "--data-dir", data_dir, *HASH)
    assert second.returncode == 0
    rows = summary(second.stdout)
    assert sum(column(rows, "embedded").values()) == 0
    assert sum(column(rows, "unchanged").values()) == 0  # nothing read: no change was logged
    assert "read: only the records changed since the last backfill" in second.stdout
    assert "texts encoded: 0" in second.stdout
    full = cli("backfill", "--full", "--data-dir", data_dir, *HASH)
    assert sum(column(summary(full.stdout), "unchanged").values()) == TOTAL
    assert "read: every record (hash scan): bot, workflow" in full.stdout
    assert "texts encoded: 0" in full.stdout


def test_documented_command_selects_databases_and_batch_size(data_dir):
    out = cli("--db", "bot", "workflow", "--backend", "annoy", "--batch-size", "200",
              "--data-dir", data_dir, *HASH, script=True)
    assert out.returncode == 0, out.stderr
    rows = summary(out.stdout)
    assert list(rows) == ["bot", "workflow"]
    assert column(rows, "embedded") == {"bot": 3, "workflow": 2}
    assert "model calls: 2" in out.stdout  # one model call per database batch


def test_plain_sql_edits_are_caught(data_dir):
    assert cli("backfill", "--data-dir", data_dir, *HASH).returncode == 0
    conn = sqlite3.connect(data_dir / "bot" / "bot.db")
    with conn:
        conn.execute("UPDATE bots SET purpose = 'books hotel rooms' WHERE name = 'mail-bot'")
        conn.execute("DELETE FROM bots WHERE name = 'scrape-bot'")
    conn.close()
    conn = sqlite3.connect(data_dir / "error" / "error.db")
    with conn:
        conn.execute("DELETE FROM discrepancies")
    conn.close()
    out = cli("backfill", "--data-dir", data_dir, *HASH)
    assert out.returncode == 0, out.stderr
    rows = summary(out.stdout)
    assert (column(rows, "reembedded")["bot"], column(rows, "removed")["bot"]) == (1, 1)
    assert column(rows, "removed")["error"] == 1
    assert sum(column(rows, "reembedded").values()) == 1
    found = json.loads(cli("search", "hotel rooms", "--db", "bot", "--top-k", "1", "--json",
                           "--data-dir", data_dir, *HASH).stdout)
    assert found[0]["record"]["name"] == "mail-bot"


def test_dry_run_encodes_nothing(data_dir):
    out = cli("backfill", "--dry-run", "--data-dir", data_dir, *HASH)
    assert out.returncode == 0, out.stderr
    assert sum(column(summary(out.stdout), "embedded").values()) == TOTAL
    assert "texts encoded: 0" in out.stdout and "dry run" in out.stdout
    stats = cli("stats", "--data-dir", data_dir, *HASH)
    assert summary(stats.stdout)["bot"]["vectors"] == "0"
    assert summary(stats.stdout)["bot"]["missing"] == "3"


def test_backend_switch_rebuilds_without_encoding(data_dir):
    assert cli("backfill", "--data-dir", data_dir, *HASH).returncode == 0
    before = cli("search", "database locked", "--json", "--data-dir", data_dir, *HASH).stdout
    out = cli("backfill", "--backend", "faiss", "--data-dir", data_dir, *HASH)
    assert out.returncode == 0, out.stderr
    assert "model calls: 0, texts encoded: 0" in out.stdout
    rows = summary(out.stdout)
    assert sum(column(rows, "embedded").values()) + sum(column(rows, "reembedded").values()) == 0
    meta = json.loads((data_dir / "bot" / "bot_embeddings.json").read_text())
    assert meta["backend"] == "faiss" and meta["count"] == 3
    after = cli("search", "database locked", "--json", "--data-dir", data_dir, *HASH).stdout
    assert [(h["database"], h["record_id"]) for h in json.loads(after)] == [
        (h["database"], h["record_id"]) for h in json.loads(before)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backfill", "--db", "bots"], "choose from bot, workflow, enhancement, error, info, information"),
        (["backfill", "--batch-size", "0"], "positive integer"),
        (["backfill", "--batch-size", "-5"], "positive integer"),
        (["backfill", "--backend", "milvus"], "choose from annoy, faiss"),
        (["search", "x", "--kind", "nope"], "choose from"),
        (["search", "x", "--top-k", "0"], "positive integer"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, args, message):
    out = cli(*args, "--data-dir", tmp_path) if args[0] != "frobnicate" else cli(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bot").exists()  # nothing was created


def test_one_failing_database_does_not_stop_the_others(data_dir):
    (data_dir / "workflow" / "workflow.db").write_bytes(b"this is not a database" * 100)
    insert(data_dir, "bot", "bots", {"name": ""})  # a record with nothing to embed
    out = cli("backfill", "--data-dir", data_dir, *HASH)
    assert out.returncode == 1
    rows = summary(out.stdout)
    assert "workflow" not in rows
    assert column(rows, "embedded")["information"] == 2
    assert column(rows, "failed")["bot"] == 1 and column(rows, "embedded")["bot"] == 3
    assert "workflow: error:" in out.stderr and "failed: bot" in out.stderr


def test_search_merges_databases_by_distance(data_dir):
    assert cli("backfill", "--data-dir", data_dir, *HASH).returncode == 0
    out = cli("search", "database is locked", "--top-k", "4", "--json", "--mode", "vector",
              "--data-dir", data_dir, *HASH)
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    assert len(hits) == 4
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    assert hits[0]["database"] == "error"
    assert len({h["database"] for h in hits}) > 1
    kinds = json.loads(cli("search", "database is locked", "--kind", "known_error", "--json",
                           "--data-dir", data_dir, *HASH).stdout)
    assert [h["kind"] for h in kinds] == ["known_error"]
    text = cli("search", "database is locked", "--mode", "vector", "--data-dir", data_dir,
               *HASH).stdout
    assert text.splitlines()[0].split()[:3] == ["distance", "vector#", "keyword#"]


def test_search_modes_and_each_sides_rank(data_dir):
    assert cli("backfill", "--data-dir", data_dir, *HASH).returncode == 0
    hybrid = json.loads(cli("search", "database is locked", "--json", "--data-dir", data_dir,
                            *HASH).stdout)  # hybrid is the default
    assert hybrid and all(h["mode"] == "hybrid" for h in hybrid)
    assert [h["score"] for h in hybrid] == sorted((h["score"] for h in hybrid), reverse=True)
    assert hybrid[0]["keyword_rank"] == 1 and hybrid[0]["vector_rank"] is not None
    keyword = json.loads(cli("search", "supplier invoices", "--mode", "keyword", "--json",
                             "--data-dir", data_dir, *HASH).stdout)
    assert keyword[0]["record"]["name"] == "invoice-bot"
    assert keyword[0]["distance"] is None and keyword[0]["vector_rank"] is None
    table = cli("search", "database is locked", "--data-dir", data_dir, *HASH).stdout
    assert table.splitlines()[0].split()[:4] == ["score", "distance", "vector#", "keyword#"]


def test_search_where_filters_and_refuses_unknown_fields(data_dir):
    assert cli("backfill", "--data-dir", data_dir, *HASH).returncode == 0
    out = cli("search", "customer", "--where", "name=mail-bot", "--json", "--data-dir", data_dir,
              *HASH)
    assert out.returncode == 0, out.stderr
    assert [h["record"]["name"] for h in json.loads(out.stdout)] == ["mail-bot"]
    out = cli("search", "customer", "--where", "name~%bot", "--where", "purpose~%invoices%",
              "--json", "--data-dir", data_dir, *HASH)
    assert out.returncode == 0, out.stderr
    assert [h["record"]["name"] for h in json.loads(out.stdout)] == ["invoice-bot"]
    twice = cli("search", "x", "--where", "name=a", "--where", "name=b", "--data-dir", data_dir)
    assert twice.returncode == 2 and "twice" in twice.stderr
    bad = cli("search", "customer", "--where", "colour=red", "--data-dir", data_dir, *HASH)
    assert bad.returncode == 2 and "field(s) colour" in bad.stderr and "purpose" in bad.stderr
    syntax = cli("search", "customer", "--where", "status", "--data-dir", data_dir, *HASH)
    assert syntax.returncode == 2 and "FIELD=VALUE" in syntax.stderr


def test_stats_verify_rebuild(data_dir):
    assert cli("backfill", "--db", "bot", "--data-dir", data_dir, *HASH).returncode == 0
    stats = summary(cli("stats", "--data-dir", data_dir, *HASH).stdout)
    assert stats["bot"]["vectors"] == "3" and stats["bot"]["missing"] == "0"
    assert stats["workflow"]["missing"] == "2"
    verify = cli("verify", "--data-dir", data_dir, *HASH)
    assert verify.returncode == 0 and "bot: ok" in verify.stdout
    rebuild = cli("rebuild", "--db", "bot", "--data-dir", data_dir, *HASH)
    assert rebuild.returncode == 0 and "rebuilt 3 vectors" in rebuild.stdout


def test_stats_counts_what_backfill_would_do_per_reason(data_dir):
    """The columns are backfill's own plan: records read, missing, stale (with the reasons),
    orphaned and unreadable, beside the vectors a search finds."""
    assert cli("backfill", "--db", "bot", "--data-dir", data_dir, *HASH).returncode == 0
    path = data_dir / "bot" / "bot.db"
    conn = sqlite3.connect(path)
    first, second, third = [r[0] for r in conn.execute("SELECT id FROM bots ORDER BY id")]
    conn.execute("UPDATE bots SET purpose = 'something else entirely' WHERE id = ?", (first,))
    conn.execute("DELETE FROM bots WHERE id = ?", (second,))
    conn.execute("INSERT INTO bots(name, purpose) VALUES ('fresh bot', 'just added')")
    conn.execute(
        "UPDATE bot_embeddings SET embedding_version = 0 WHERE record_id = ?", (f"bot:{third}",)
    )
    conn.commit()
    conn.close()
    out = cli("stats", "--db", "bot", "--data-dir", data_dir, *HASH)
    assert out.returncode == 0, out.stderr
    row = summary(out.stdout)["bot"]
    assert (row["records"], row["vectors"], row["missing"], row["stale"], row["orphaned"],
            row["unreadable"]) == ("3", "3", "1", "2", "1", "0")
    assert "bot: 2 stale: 1 text changed, 1 older embedding_version" in out.stdout
    # --full: the embedding_version changed in the vectors' table, which no trigger watches
    result = cli("backfill", "--full", "--db", "bot", "--data-dir", data_dir, *HASH)
    assert result.returncode == 0
    after = summary(cli("stats", "--db", "bot", "--data-dir", data_dir, *HASH).stdout)["bot"]
    assert (after["missing"], after["stale"], after["orphaned"], after["vectors"]) == (
        "0", "0", "0", "3"
    )


def test_stats_points_a_large_annoy_store_at_hnsw(data_dir, monkeypatch, capsys):
    """From HNSW_HINT_FROM vectors an Annoy store gets one line naming the faster backend; run
    in-process with the threshold lowered (the real one takes 50,000 records)."""
    from embeddable_db.cli import commands, main

    assert cli("backfill", "--db", "bot", "workflow", "--data-dir", data_dir, *HASH).returncode == 0
    assert "hnsw" not in cli("stats", "--data-dir", data_dir, *HASH).stdout
    monkeypatch.setattr(commands, "HNSW_HINT_FROM", 3)
    assert main(["stats", "--db", "bot", "workflow", "--data-dir", str(data_dir), *HASH]) == 0
    hints = [line for line in capsys.readouterr().out.splitlines() if "hnsw" in line]
    assert hints == ["bot: 3 vectors: backend='faiss', index_type='hnsw' searches ~10x faster here"]
    assert cli("rebuild", "--db", "bot", "--backend", "faiss", "--data-dir", data_dir,
               *HASH).returncode == 0
    assert main(["stats", "--db", "bot", "--data-dir", str(data_dir), *HASH]) == 0
    assert "hnsw" not in capsys.readouterr().out  # already on FAISS


@pytest.mark.model
def test_documented_command_as_written(tmp_path):
    """The seed's exact command, default model and data directory, from a fresh process."""
    for name in ("bot", "workflow"):
        for table, rows in ROWS[name].items():
            REGISTRY[name](data_dir=tmp_path / "data", model_name="hash:64").close()
            for row in rows:
                insert(tmp_path / "data", name, table, row)
    # The tables above were opened with the hashing model only to create them; no vectors yet.
    env = {k: v for k, v in os.environ.items() if k != "EMBEDDABLE_DB_HOME"}
    env["EMBEDDABLE_DB_THREADS"] = "1"
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--db", "bot", "workflow", "--backend", "annoy",
         "--batch-size", "200"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert column(summary(out.stdout), "embedded") == {"bot": 3, "workflow": 2}
    meta = json.loads((tmp_path / "data" / "bot" / "bot_embeddings.json").read_text())
    assert meta["model"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["dim"] == 384


@pytest.mark.model
def test_onnx_model_backend_searches_a_torch_built_store(tmp_path):
    """The ONNX export is the same model identity: it searches vectors torch made."""
    data = tmp_path / "data"
    REGISTRY["error"](data_dir=data, model_name="hash:64").close()
    for row in ROWS["error"]["errors"] + [{"message": "disk quota exceeded on /var"}]:
        insert(data, "error", "errors", row)
    env = dict(os.environ, EMBEDDABLE_DB_THREADS="1")
    built = subprocess.run([sys.executable, str(SCRIPT), "--db", "error", "--data-dir", str(data)],
                           capture_output=True, text=True, env=env, timeout=600)
    assert built.returncode == 0, built.stderr
    found = {}
    for backend in ("torch", "onnx"):
        out = subprocess.run(
            [sys.executable, "-m", "embeddable_db.cli", "search", "the database was locked",
             "--db", "error", "--json", "--data-dir", str(data), "--model-backend", backend],
            capture_output=True, text=True, env=env, timeout=600,
        )
        assert out.returncode == 0, out.stderr
        found[backend] = json.loads(out.stdout)
    assert [h["record_id"] for h in found["onnx"]] == [h["record_id"] for h in found["torch"]]
    assert found["onnx"][0]["record"]["message"].startswith("sqlite3.OperationalError")
    for a, b in zip(found["onnx"], found["torch"], strict=True):
        assert a["distance"] == pytest.approx(b["distance"], abs=1e-4)


def test_plain_progress_lines_come_every_few_seconds_with_rate_and_eta(monkeypatch, capsys):
    """Off a terminal, a line at most every 2 s (and always the last), with rate and ETA."""
    from embeddable_db.cli import output
    from embeddable_db.reports import BackfillResult

    clock = iter([0.0, 0.5, 1.0, 2.5, 3.0, 10.0])
    monkeypatch.setattr(output.time, "monotonic", lambda: next(clock))
    progress = output.Progress("bot", 100)  # started at 0.0
    for done in (10, 20, 50, 60, 100):  # at 0.5, 1.0, 2.5, 3.0, 10.0
        progress(BackfillResult(unchanged=done))
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "bot: 10/100 records (20 records/s, 4 s left)",
        "bot: 50/100 records (20 records/s, 2 s left)",
        "bot: 100/100 records (10 records/s)",
    ]
