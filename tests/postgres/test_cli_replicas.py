"""``embeddable-db search --read-url``: the command line's searches on a real hot standby.

Which server answered is shown by the standby's own count of transactions in the database;
a fresh process sees everything committed before it opened, so with replay paused on the
standby the primary answers. The environment (``$EMBEDDABLE_DB_READ_URL`` beside
``$EMBEDDABLE_DB_URL``) does the same; a standby down is one warning and the primary's answer.
"""

from __future__ import annotations

import json
import os

import psycopg

from embeddable_db import BotDB
from embeddable_db.databases.opening import READ_URL_ENV, URL_ENV
from test_cli import HASH, cli

from .test_replicas import replay_paused


def names(out) -> list[str]:
    assert out.returncode == 0, out.stderr
    return [hit["record"]["name"] for hit in json.loads(out.stdout)]


def search(*args, env=None):
    return cli("search", "invoices", "--db", "bot", "--mode", "keyword", "--json", *args,
               *HASH, env=env)


def transactions(conninfo: str) -> int:
    """The transactions a server has counted in this database (its own, on a standby)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                            "WHERE datname = current_database()").fetchone()[0]


def test_search_and_its_environment_send_searches_to_the_standby(pg_replica):
    name = pg_replica.database()
    primary, standby = pg_replica.primary.url(name), pg_replica.standby.url(name)
    with BotDB(url=primary, model_name="hash:64") as bots:
        bots.conn.execute("INSERT INTO bot.bots (name, purpose) VALUES ('old', 'files invoices')")
        bots.backfill_embeddings()
    pg_replica.wait_replayed(primary_position(pg_replica))
    env = {**os.environ, URL_ENV: primary, READ_URL_ENV: standby}
    for args, kw in (((), {"env": env}), (("--database-url", primary, "--read-url", standby), {})):
        before = transactions(standby)
        assert names(search(*args, **kw)) == ["old"]
        assert transactions(standby) > before + 1  # more than the look (ours) counted there

    # A new process sees what was committed before it opened: a paused standby has not
    # replayed it, so after read_wait the primary answers.
    with replay_paused(pg_replica):
        with BotDB(url=primary, model_name="hash:64") as bots:
            bots.conn.execute("INSERT INTO bot.bots (name, purpose) VALUES ('new', 'pays invoices')")
            assert bots.backfill_embeddings().embedded == 1
        assert sorted(names(search("--database-url", primary, "--read-url", standby))) == [
            "new", "old"]
        assert sorted(names(search(env=env))) == ["new", "old"]
    pg_replica.standby.stop()
    try:
        down = search("--database-url", primary, "--read-url", standby)
        assert sorted(names(down)) == ["new", "old"]  # the primary answered
        assert "standby" in down.stderr.lower()
    finally:
        pg_replica.standby.start()


def test_a_standby_without_a_primary_is_a_usage_error(tmp_path):
    out = search("--data-dir", tmp_path, "--read-url", "postgresql://postgres@/x?host=/tmp")
    assert out.returncode == 2
    assert "--database-url" in out.stderr and "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []


def primary_position(pg_replica) -> str:
    with psycopg.connect(pg_replica.primary.conninfo("postgres"), autocommit=True) as conn:
        return conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
