"""The command line on PostgreSQL, run as users run it: real subprocesses, a real server.

``--database-url`` (or ``$EMBEDDABLE_DB_URL``) on the six-database commands, and ``migrate``
from SQLite files (``test_cli.py``'s sample data) to a fresh database of the test server.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys

import psycopg
import pytest

from embeddable_db import BotDB, BotRecord
from embeddable_db.databases import REGISTRY
from embeddable_db.databases.opening import URL_ENV
from embeddable_db.databases.postgres import BackfillLock
from postgres.fixtures import running_server
from test_cli import HASH, TOTAL, cli, column, data_dir, insert, summary  # noqa: F401

UNREACHABLE = "postgresql://postgres@/nowhere?host=/nonexistent-socket-dir"


def schemas(url) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname NOT IN ('information_schema', 'public')")}


def digests(folder) -> dict[str, str]:
    """sha256 of every file but what a SQLite reader may make (-shm, an empty -wal)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith("-shm")
            and not (p.name.endswith("-wal") and p.stat().st_size == 0)}


def with_url(url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    return env if url is None else {**env, URL_ENV: url}


def bots_on(url: str, *purposes: str) -> None:
    """The bot database on the server, rows written with plain SQL (no vectors yet)."""
    BotDB(url=url, model_name="hash:64").close()
    with psycopg.connect(url, autocommit=True) as conn:
        for i, purpose in enumerate(purposes):
            conn.execute("INSERT INTO bot.bots (name, purpose) VALUES (%s, %s)", (f"bot-{i}", purpose))


@pytest.mark.parametrize("command", [["search", "invoices"], ["stats"], ["verify"],
                                     ["backfill", "--dry-run"]])
def test_read_commands_refuse_a_database_without_the_schemas_and_create_nothing(pg_url, command):
    out = cli(*command, "--database-url", pg_url)
    assert out.returncode == 2, out.stderr
    assert "no database bot, workflow, enhancement, error, info, information in" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert schemas(pg_url) == set()
    bots_on(pg_url, "reads invoices")
    out = cli(*command, "--database-url", pg_url, "--db", "bot", "workflow")
    assert out.returncode == 2 and "no database workflow in" in out.stderr
    assert schemas(pg_url) == {"bot"}


@pytest.mark.parametrize("args, env, message", [
    (["stats", "--database-url", "{url}", "--data-dir", "{dir}"], None, "give one of them"),
    (["backfill", "--database-url", "{url}", "--backend", "faiss"], None, "drop --backend"),
    (["stats", "--database-url", "mysql://me@host/db"], None, "not a PostgreSQL URL"),
    (["stats"], "sqlite:///tmp/x.db", "$EMBEDDABLE_DB_URL is not a PostgreSQL URL"),
    (["search", "x", "--database-url", UNREACHABLE], None, "cannot connect to"),
    (["backfill"], UNREACHABLE, "cannot connect to"),
])
def test_bad_urls_and_flags_exit_2_with_one_line(pg_url, tmp_path, args, env, message):
    args = [a.format(url=pg_url, dir=tmp_path) for a in args]
    out = cli(*args, env=with_url(env))
    assert out.returncode == 2, out.stdout
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert schemas(pg_url) == set()
    assert list(tmp_path.iterdir()) == []


def test_the_commands_work_on_postgresql_and_the_environment_names_it(pg_url, tmp_path):
    bots_on(pg_url, "reads supplier invoices", "summarises customer emails", "scrapes prices")
    first = cli("backfill", "--database-url", pg_url, "--db", "bot", *HASH)
    assert first.returncode == 0, first.stderr
    assert column(summary(first.stdout), "embedded") == {"bot": 3}
    env = with_url(pg_url)  # the same, from $EMBEDDABLE_DB_URL
    again = cli("backfill", "--db", "bot", env=env)
    assert column(summary(again.stdout), "unchanged") == {"bot": 3}
    assert "texts encoded: 0" in again.stdout
    stats = cli("stats", "--db", "bot", env=env)
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.splitlines()[1].split()[:9] == [
        "bot", "3", "3", "0", "0", "0", "0", "hash:64", "64"]
    assert "pgvector" in stats.stdout
    verify = cli("verify", "--db", "bot", env=env)
    assert verify.returncode == 0 and "bot: ok: postgres 3, index 3, keywords 3" in verify.stdout
    hits = json.loads(cli("search", "customer emails", "--db", "bot", "--json", env=env).stdout)
    assert hits[0]["record"]["purpose"] == "summarises customer emails"
    keyword = json.loads(cli("search", "prices", "--db", "bot", "--json", "--mode", "keyword",
                             env=env).stdout)
    assert [h["record_id"] for h in keyword] == [3]
    rebuild = cli("rebuild", "--db", "bot", env=env)
    assert rebuild.returncode == 0 and "bot: rebuilt 3 vectors" in rebuild.stdout
    # --data-dir wins over the environment, as a file does in the library
    sqlite = cli("stats", "--db", "bot", "--data-dir", tmp_path / "none", env=env)
    assert sqlite.returncode == 2 and "data directory" in sqlite.stderr


def test_a_backfill_skips_a_database_another_backfill_holds_on_the_server(pg_url):
    bots_on(pg_url, "reads supplier invoices")
    lock = BackfillLock(pg_url, "bot")
    try:
        assert lock.try_acquire()
        out = cli("backfill", "--database-url", pg_url, "--db", "bot", "--no-wait", *HASH)
        assert out.returncode == 0 and "bot: another backfill is running; skipped" in out.stderr
        assert summary(out.stdout)["bot"]["embedded"] == "skipped"
    finally:
        lock.close()
    out = cli("backfill", "--database-url", pg_url, "--db", "bot", "--no-wait", *HASH)
    assert column(summary(out.stdout), "embedded") == {"bot": 1}


def migrated(folder, url, *more) -> dict:
    out = cli("migrate", "--data-dir", folder, "--to", url, "--json", *more)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    return {db["database"]: db for db in report["databases"]}


def hits(*args) -> tuple[list[tuple[str, int]], list[float]]:
    """(the hits in order, up to the first exact tie (orthogonal vectors, distance 1: either
    order is right), the distances of all)."""
    out = cli("search", *args, "--json", "--top-k", "6", *HASH)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found
    distances = [round(h["distance"], 4) for h in found]
    return [(h["database"], h["record_id"]) for h in found if h["distance"] < 0.999], distances


def test_migrate_copies_the_six_then_searches_alike_backfills_nothing_and_copies_changes(
        data_dir, pg_url):  # noqa: F811 - test_cli's fixture
    assert cli("backfill", "--data-dir", data_dir, *HASH).returncode == 0
    first = migrated(data_dir, pg_url)
    assert list(first) == list(REGISTRY)
    assert sum(db["records"]["copied"] for db in first.values()) == TOTAL
    assert sum(db["vectors"]["copied"] for db in first.values()) == TOTAL
    assert all(db["ok"] and db["models"] == {"sqlite": "hash:64", "postgres": "hash:64"}
               for db in first.values())
    assert first["error"]["kinds"]["known_error"] == {
        "records": {"sqlite": 1, "postgres": 1}, "vectors": {"sqlite": 1, "postgres": 1}}
    for query in ("database is locked", "invoice", "summarise the inbox"):
        assert hits(query, "--mode", "vector", "--database-url", pg_url) == hits(
            query, "--mode", "vector", "--data-dir", data_dir), query
    backfill = cli("backfill", "--database-url", pg_url, "--full")
    assert backfill.returncode == 0, backfill.stderr
    rows = summary(backfill.stdout)
    assert sum(column(rows, "embedded").values()) + sum(column(rows, "reembedded").values()) == 0
    assert sum(column(rows, "unchanged").values()) == TOTAL and "model calls: 0" in backfill.stdout
    insert(data_dir, "bot", "bots", {"name": "fax-bot", "purpose": "sends faxes"})  # plain SQL
    conn = sqlite3.connect(data_dir / "bot" / "bot.db")
    with conn:
        conn.execute("UPDATE bots SET purpose = 'books invoices' WHERE name = 'invoice-bot'")
        conn.execute("DELETE FROM bots WHERE name = 'scrape-bot'")
    conn.close()
    assert cli("backfill", "--data-dir", data_dir, "--db", "bot").returncode == 0
    second = migrated(data_dir, pg_url)
    bot = second["bot"]
    assert bot["ok"]
    assert bot["records"] == {"copied": 1, "updated": 1, "removed": 1, "unchanged": 1}
    assert bot["vectors"] == {"copied": 1, "updated": 1, "removed": 1, "unchanged": 1}
    assert all(db["records"]["unchanged"] == sum(db["records"].values()) > 0
               and db["vectors"]["unchanged"] == sum(db["vectors"].values())
               for name, db in second.items() if name != "bot")  # the others: nothing to do
    assert hits("faxes", "--mode", "vector", "--database-url", pg_url, "--db", "bot") == hits(
        "faxes", "--mode", "vector", "--data-dir", data_dir, "--db", "bot")
    with BotDB(url=pg_url, model_name="hash:64") as bots:  # ids 1-4 are SQLite's
        assert bots.add(BotRecord(name="pg-bot", purpose="born on the server")) == 5
    text = cli("migrate", "--data-dir", data_dir, "--to", pg_url, "--db", "bot")
    assert text.returncode == 0
    assert text.stdout.splitlines()[0].split() == [
        "database", "copied", "updated", "removed", "unchanged", "seconds", "records/s"]
    assert "bot: verified: SQLite and PostgreSQL agree on bot 3 records, 3 vectors; model " \
        "hash:64 on both" in text.stdout  # the server's own record was removed again


@pytest.mark.parametrize("args, message", [
    (["--data-dir", "{dir}", "--to", "{url}", "--db", "bot", "nope"], "unknown database 'nope'"),
    (["--data-dir", "{dir}", "--to", UNREACHABLE], "cannot connect to"),
    (["--data-dir", "{dir}", "--to", "sqlite:///x.db"], "not a PostgreSQL URL"),
    (["--data-dir", "{missing}", "--to", "{url}"], "does not exist"),
    (["--data-dir", "{dir}", "--to", "{url}", "--db", "workflow"], "no database workflow"),
    (["--data-dir", "{dir}", "--to", "{url}", "--no-such-flag"], "unrecognized arguments"),
])
def test_migrate_refuses_bad_input_with_exit_2_and_changes_nothing(tmp_path, pg_url, args,
                                                                   message):
    folder = tmp_path / "data"
    with BotDB(data_dir=folder, model_name="hash:64") as bots:
        bots.add(BotRecord(name="mail-bot", purpose="summarises customer emails"))
    before = digests(folder)
    args = [a.format(dir=folder, url=pg_url, missing=tmp_path / "missing") for a in args]
    out = cli("migrate", *args, env=with_url(None))
    assert out.returncode == 2, out.stdout
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert schemas(pg_url) == set()
    assert digests(folder) == before


def test_migrate_needs_a_target(data_dir):  # noqa: F811
    out = cli("migrate", "--data-dir", data_dir, env=with_url(None))
    assert out.returncode == 2 and "--to postgresql://" in out.stderr


def test_the_web_page_serves_the_databases_of_a_url(pg_url):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from embeddable_db.web.app import build_app
    from embeddable_db.web.stores import Stores

    bots_on(pg_url, "reads supplier invoices", "summarises customer emails")
    assert cli("backfill", "--database-url", pg_url, "--db", "bot", *HASH).returncode == 0
    stores = Stores(model_backend="torch", url=pg_url)
    try:
        assert list(stores.views) == ["bot"] and "***" not in (stores.url or "x")
        with TestClient(build_app(stores)) as client:
            api = client.get("/api/search", params={"q": "customer emails", "mode": "keyword"})
            assert [h["record_id"] for h in api.json()["hits"]] == [2]
            record = client.get("/record/bot/bot/1")
            assert record.status_code == 200 and "reads supplier invoices" in record.text
            page = client.get("/stores")
            assert page.status_code == 200 and "pgvector" in page.text
            assert len(client.get("/api/map").json()["points"]) == 2
    finally:
        stores.close()
    out = cli("serve", "--database-url", pg_url, "--data-dir", "/tmp")
    assert out.returncode == 2 and "give one of them" in out.stderr


# -- stopped in the middle: Ctrl-C, and a server that goes away ----------------------------------
def many_bots(url: str, n: int) -> None:
    BotDB(url=url, model_name="hash:64").close()
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO bot.bots (name, purpose) VALUES (%s, %s)",
                        [(f"bot {i}", f"does task {i} of kind {i % 13}") for i in range(n)])


def stored_bots(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("SELECT record_id FROM bot.bot_embeddings")}


def backfill_until_it_reports(url: str) -> subprocess.Popen:
    """``embeddable-db backfill`` of 20,000 bots, returned once its first progress line is out."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "embeddable_db.cli", "backfill", "--database-url", url, "--db",
         "bot", "--batch-size", "20", *HASH],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=with_url(None))
    first = proc.stderr.readline()
    assert first.startswith("bot: "), first
    return proc


def test_ctrl_c_exits_130_naming_what_the_server_holds(pg_url):
    many_bots(pg_url, 20000)
    proc = backfill_until_it_reports(pg_url)
    try:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "vectors were committed" in last and "run the backfill again" in last, last
    committed = int(last.split(": ", 1)[1].split()[0])
    named = last.split("the last for record ")[1].split(")")[0].strip("'")
    stored = stored_bots(pg_url)
    assert 0 < committed == len(stored) < 20000 and named in stored
    again = cli("backfill", "--database-url", pg_url, "--db", "bot", *HASH, env=with_url(None))
    assert again.returncode == 0, again.stderr
    assert summary(again.stdout)["bot"]["embedded"] == str(20000 - committed)


def test_a_server_restart_mid_backfill_exits_1_with_one_clear_line_and_the_rerun_resumes():
    with running_server() as server:
        url = server.url(server.create_database())
        many_bots(url, 20000)
        proc = backfill_until_it_reports(url)
        try:
            server.restart(crash=True)
            out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 1, err
        assert "Traceback" not in err
        said = [line for line in (out + err).splitlines() if "not backfilled" in line]
        assert len(said) == 1 and "the connection to the database was lost" in said[0], out + err
        committed = int(said[0].split("; ")[1].split()[0])
        assert committed == len(stored_bots(url)) < 20000
        again = cli("backfill", "--database-url", url, "--db", "bot", *HASH, env=with_url(None))
        assert again.returncode == 0, again.stderr
        row = summary(again.stdout)["bot"]
        assert (row["embedded"], row["unchanged"]) == (str(20000 - committed), str(committed))
