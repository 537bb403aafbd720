"""The six databases on PostgreSQL: a schema each, the SQLite tables and columns, plain SQL
from psycopg, ``$EMBEDDABLE_DB_URL``, read-only opens, and the errors that change nothing.
(What the databases do is tested on both engines by the other files of this folder.)"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

import embeddable_db as edb
from embeddable_db import REGISTRY, EmbeddingError, InvalidInputError, ReadOnlyError

from .cases import CASES, fill, rows

SRC = str(Path(edb.__file__).resolve().parents[1])
STORED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")


@pytest.fixture
def opened():
    """``opened(cls, **options)`` with the hashing encoder; closed at the end."""
    dbs = []

    def make(cls, path=None, **options):
        options.setdefault("model_name", "hash:64")
        dbs.append(cls(path, **options))
        return dbs[-1]

    yield make
    for db in dbs:
        db.close()


def schemas(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {name for (name,) in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname NOT IN ('information_schema', 'public')")}


def pg_tables(url: str, schema: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as conn:
        found: dict[str, list[str]] = {}
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = %s ORDER BY table_name, ordinal_position", (schema,)):
            found.setdefault(table, []).append(column)
    return found


def sqlite_tables(path: str) -> dict[str, list[str]]:
    conn = sqlite3.connect(path)
    try:
        names = [n for (n,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {n: [c for (c,) in conn.execute("SELECT name FROM pragma_table_info(?)", (n,))]
                for n in names}
    finally:
        conn.close()


def test_each_database_has_its_schema_with_the_tables_and_columns_of_its_sqlite_file(
    pg_url, tmp_path, opened,
):
    for name, cls in REGISTRY.items():
        on_pg = opened(cls, url=pg_url)
        on_sqlite = opened(cls, data_dir=tmp_path)
        assert (on_pg.path, on_pg.schema, on_pg.index_path, on_pg.metadata_path) == (
            None, name, None, None)
        assert on_pg.embedding_options.backend == "pgvector"
        ours, theirs = pg_tables(pg_url, name), sqlite_tables(on_sqlite.path)
        records = {spec.table for spec in cls.tables}
        links = {link.table for spec in cls.tables for link in spec.links}
        for table in records | links:
            extra = ["rowid"] if table in links else []  # SQLite's is implicit
            assert ours[table] == extra + theirs[table], table
        # and beside them the embeddings table (each engine's own layout), nothing else
        assert set(ours) == records | links | {cls.embedding_table, f"{cls.embedding_table}_meta"}
    assert schemas(pg_url) == set(REGISTRY)


def test_plain_sql_from_psycopg_reads_and_writes_what_the_database_does(pg_url, opened):
    bots = opened(edb.BotDB, url=pg_url)
    bot = edb.BotRecord("mail-bot", purpose="summarises customer emails", tags=["mail", "ai"],
                        estimated_profit=2.5)
    bots.add(bot)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT name, tags, estimated_profit, creation_date FROM bot.bots"
                            ).fetchall() == [("mail-bot", '["mail", "ai"]', 2.5, bot.creation_date)]
        (plain,) = conn.execute("INSERT INTO bot.bots (name, purpose) VALUES "
                                "('ledger-bot', 'reconciles bank statements') RETURNING id"
                                ).fetchone()
        enhancements = opened(edb.EnhancementDB, url=pg_url)
        eid = enhancements.add(edb.Enhancement("cache the rates", bot_ids=[plain]))
        conn.execute("INSERT INTO enhancement.enhancement_bots (enhancement_id, bot_id) "
                     "VALUES (%s, %s), (%s, %s)", (eid, 9, eid, 4))
    stored = bots.get(plain)
    assert (stored.tags, stored.status, stored.estimated_profit) == ([], "active", 0.0)
    assert STORED.fullmatch(stored.creation_date)  # the column default: the stored form
    assert enhancements.get(eid).bot_ids == [plain, 9, 4]  # the order they were written in
    assert bots.backfill_embeddings().embedded == 1
    assert bots.search("bank statements", 1)[0].record == stored


def test_a_schema_that_exists_is_used_and_what_else_it_holds_is_left_alone(pg_url, opened):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA bot")
        conn.execute("CREATE TABLE bot.notes (body text)")
        conn.execute("INSERT INTO bot.notes VALUES ('mine')")
        conn.execute("CREATE TABLE public.bots (name text)")  # a table of the same name elsewhere
    bots = opened(edb.BotDB, url=pg_url)
    bots.add(edb.BotRecord("a", purpose="b"))
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT body FROM bot.notes").fetchall() == [("mine",)]
        assert conn.execute("SELECT count(*) FROM public.bots").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM bot.bots").fetchone() == (1,)


def test_a_table_made_by_an_older_version_is_upgraded_and_read_only_refuses_it(pg_url, opened):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA information")
        conn.execute("CREATE TABLE information.information (id bigint GENERATED BY DEFAULT AS "
                     "IDENTITY PRIMARY KEY, data_type text, summary text)")
        conn.execute("INSERT INTO information.information (data_type, summary) "
                     "VALUES ('report', 'old row')")
    with pytest.raises(ReadOnlyError, match="has no up-to-date table 'information'"):
        edb.InformationDB(url=pg_url, model_name="hash:64", read_only=True)
    db = opened(edb.InformationDB, url=pg_url)
    old = db.get(1)
    assert (old.summary, old.keywords, old.validated, old.date_collected) == ("old row", [], False, "")
    assert db.backfill_embeddings().embedded == 1
    assert db.search("old row", 1)[0].record == old
    assert opened(edb.InformationDB, url=pg_url, read_only=True).count() == 1


def test_the_url_comes_from_the_environment_unless_a_file_is_named(pg_url, tmp_path, monkeypatch,
                                                                   opened):
    monkeypatch.setenv("EMBEDDABLE_DB_URL", pg_url)
    monkeypatch.setenv("EMBEDDABLE_DB_HOME", str(tmp_path / "home"))
    on_pg = opened(edb.WorkflowDB)
    assert on_pg.url == pg_url and on_pg.path is None and repr(on_pg) == f"WorkflowDB(url={pg_url!r})"
    wid = on_pg.add(edb.WorkflowRecord(["fetch", "send"], title="newsletter"))
    assert rows(on_pg, "SELECT title FROM workflows WHERE id = ?", (wid,)) == [("newsletter",)]
    in_folder = opened(edb.WorkflowDB, data_dir=tmp_path / "data")
    in_file = opened(edb.WorkflowDB, tmp_path / "one.db")
    assert in_folder.url is None and in_folder.count() == 0 and os.path.isfile(in_folder.path)
    assert in_file.url is None and in_file.path == str(tmp_path / "one.db")
    assert not (tmp_path / "home").exists()
    monkeypatch.setenv("EMBEDDABLE_DB_URL", "  ")  # blank: as if unset
    assert opened(edb.WorkflowDB).path == str(tmp_path / "home" / "workflow" / "workflow.db")


@pytest.mark.parametrize("option", ["path", "data_dir", "index_path", "metadata_path"])
def test_a_url_with_file_options_is_refused_and_opens_nothing(pg_url, tmp_path, option):
    given = {option: tmp_path / "x"}
    path = given.pop("path", None)
    with pytest.raises(InvalidInputError, match=f"PostgreSQL, which has no files: leave out {option}"):
        edb.BotDB(path, url=pg_url, model_name="hash:8", **given)
    assert schemas(pg_url) == set() and list(tmp_path.iterdir()) == []


def test_the_environment_url_with_index_files_is_refused_too(pg_url, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDDABLE_DB_URL", pg_url)
    with pytest.raises(InvalidInputError, match=r"\$EMBEDDABLE_DB_URL opens .* leave out index_path"):
        edb.InfoDB(index_path=tmp_path / "i.index", model_name="hash:8")
    assert schemas(pg_url) == set()


@pytest.mark.parametrize(("options", "message"), [
    ({"backend": "annoy"}, "backend 'annoy' is for SQLite databases"),
    ({"backend": "faiss", "index_type": "hnsw"}, "is for SQLite databases"),
    ({"model_name": ""}, "model_name must be a non-empty str"),
])
def test_sqlite_options_with_a_url_are_refused_before_connecting(pg_url, options, message):
    with pytest.raises(InvalidInputError, match=message):
        edb.ErrorDB(url=pg_url, **{"model_name": "hash:8", **options})
    assert schemas(pg_url) == set()


@pytest.mark.parametrize("url", ["data/bot.db", "sqlite:///bot.db", "host=localhost dbname=x", 5,
                                 Path("postgresql://x")])
def test_a_url_that_is_not_a_postgresql_url_is_refused(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError, match="url must be a PostgreSQL URL .*give path= or data_dir="):
        edb.BotDB(url=url, model_name="hash:8")
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_server_is_a_clear_error_that_hides_the_password(tmp_path):
    url = f"postgresql://app:s3cret@/shop?host={tmp_path}&connect_timeout=3"
    hidden = r"BotDB cannot connect to postgresql://app:\*\*\*@/shop"
    with pytest.raises(EmbeddingError, match=hidden) as info:
        edb.BotDB(url=url, model_name="hash:8")
    assert "s3cret" not in str(info.value)


def test_read_only_writes_nothing_and_the_server_refuses_writes_too(pg_url, opened):
    with pytest.raises(ReadOnlyError, match=r"schema info\) has no up-to-date table 'info'"):
        edb.InfoDB(url=pg_url, model_name="hash:64", read_only=True)
    assert schemas(pg_url) == set()
    writer = opened(edb.InfoDB, url=pg_url)
    item_id = writer.add(edb.ResearchItem("tides", content="the moon pulls the oceans"))
    reader = opened(edb.InfoDB, url=pg_url, read_only=True)
    assert reader.get(item_id).topic == "tides"
    assert reader.search("moon oceans", 1)[0].record_id == item_id
    with pytest.raises(ReadOnlyError, match="opened read-only"):
        reader.add(edb.ResearchItem("waves"))
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        reader.conn.execute("INSERT INTO info (topic) VALUES ('sneaky')")
    assert writer.count() == 1


def test_text_postgresql_cannot_hold_is_refused_and_nothing_is_written(pg_url, opened):
    bots = opened(edb.BotDB, url=pg_url)
    with pytest.raises(InvalidInputError, match="PostgreSQL cannot take a value given: .*NUL"):
        bots.add(edb.BotRecord("nul\x00bot", purpose="has a NUL in its name"))
    kept = bots.add(edb.BotRecord("ok", purpose="fine"))
    with pytest.raises(InvalidInputError, match="PostgreSQL cannot take"):
        bots.update(kept, version="1\x00")
    with pytest.raises(InvalidInputError, match="PostgreSQL cannot take"):
        bots.search("fine", where={"estimated_profit": (">=", "lots")})  # SQLite: no match
    assert bots.count() == bots.embedding_count() == 1 and bots.get(kept).version == ""


def run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "EMBEDDABLE_DB_URL"}
    environment.update(PYTHONPATH=SRC, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=environment, timeout=120)


def test_the_six_databases_on_sqlite_never_import_psycopg(tmp_path):
    result = run(f"""
        import sys
        import embeddable_db as edb
        for cls in edb.REGISTRY.values():
            with cls(data_dir={str(tmp_path)!r}, model_name="hash:16") as db:
                db.search("anything", 1)
        with edb.BotDB(data_dir={str(tmp_path)!r}, model_name="hash:16") as bots:
            bots.add(edb.BotRecord("a", purpose="b"))
            assert bots.find_by_name("A").name == "a"
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("psycopg", "pgvector")))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_url_without_the_postgres_extra_names_the_package(pg_url):
    result = run(f"""
        import sys
        sys.modules["psycopg"] = None  # as if psycopg were not installed
        from embeddable_db import BackendUnavailableError, BotDB
        try:
            BotDB(url={pg_url!r}, model_name="hash:8")
        except BackendUnavailableError as exc:
            print(exc)
    """)
    assert result.returncode == 0, result.stderr
    assert "BotDB(url=...) opens PostgreSQL, which needs the 'psycopg' package" in result.stdout
    assert "pip install 'embeddable-db[postgres]'" in result.stdout
    assert schemas(pg_url) == set()


def test_processes_opening_a_new_database_at_once_create_it_once(pg_url):
    code = f"""
        import embeddable_db as edb
        for cls in edb.REGISTRY.values():
            cls(url={pg_url!r}, model_name="hash:16").close()
        print("ok")
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"})
             for _ in range(3)]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err for _, err in results]
    assert schemas(pg_url) == set(REGISTRY)


@pytest.mark.parametrize("name", list(CASES))
def test_moving_a_database_to_postgresql_keeps_its_records_and_answers(name, pg_url, tmp_path,
                                                                       opened):
    """The same records on both engines: the same rows and vector distances (the keyword
    side is scored differently, bm25 against ts_rank, so vector mode is compared)."""
    case = CASES[name]
    on_sqlite, on_pg = opened(case.cls, data_dir=tmp_path), opened(case.cls, url=pg_url)
    fill(on_sqlite, case)
    fill(on_pg, case)
    assert _without_times(on_pg) == _without_times(on_sqlite)
    for query in case.queries:
        one = on_sqlite.search(query, 3, mode="vector")
        other = on_pg.search(query, 3, mode="vector")
        assert other[0].record_id == one[0].record_id  # (the others may tie: 1.0, no shared word)
        assert [h.distance for h in other] == pytest.approx([h.distance for h in one], abs=1e-4)


def _without_times(db) -> list[dict]:
    """The stored records but their timestamps (records made twice hold the times they were
    made at)."""
    return [{k: v for k, v in vars(r).items() if not STORED.fullmatch(str(v))}
            for r in db.fetch(100)]
