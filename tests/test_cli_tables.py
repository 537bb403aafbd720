"""`embeddable-db embed/search/similar/tables/drop DB TABLE`, run as users run them: real
subprocesses on real SQLite files, one of them the ``proj.db`` the pyproj wheel ships (a
database nobody here wrote). The hashing encoder (``--model hash:64``) counts its model calls
and texts, which the command prints: that proves which rows were embedded again."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sqlite3

import pytest

from conftest import file_bytes
from test_cli import cli

HASH = ["--model", "hash:64"]


def texts_encoded(out: str) -> int:
    return int(re.search(r"texts encoded: (\d+)", out).group(1))


def summary(out: str) -> dict[str, str]:
    lines = out.splitlines()
    header = lines[0].replace("re-embedded", "reembedded").split()
    return dict(zip(header, lines[1].split(), strict=False))


def dump_table(path, table) -> list:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f'SELECT rowid, * FROM "{table}" ORDER BY rowid').fetchall()
    finally:
        conn.close()


@pytest.fixture
def proj_db(tmp_path):
    pyproj = pytest.importorskip("pyproj")
    from pathlib import Path

    source = Path(pyproj.datadir.get_data_dir()) / "proj.db"
    path = tmp_path / "proj.db"
    shutil.copyfile(source, path)
    return path


@pytest.fixture
def app_db(tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, body TEXT, rank INT)")
    conn.executemany("INSERT INTO notes(title, body, rank) VALUES (?, ?, ?)", [
        ("WAL mode", "readers keep reading while one writer writes", 1),
        ("Busy timeout", "a locked database waits instead of failing", 2),
        ("Vacuum", "rebuilds the file and gives free pages back", 3),
    ])
    conn.commit()
    conn.close()
    return path


def test_a_database_nobody_here_wrote(proj_db):
    conn = sqlite3.connect(proj_db)
    rows = conn.execute("SELECT COUNT(*) FROM alias_name WHERE trim(alt_name) != ''").fetchone()[0]
    conn.close()
    assert rows > 10_000
    first = cli("embed", proj_db, "alias_name", "--column", "alt_name", *HASH)
    assert first.returncode == 0, first.stderr
    assert summary(first.stdout)["embedded"] == str(rows)
    assert texts_encoded(first.stdout) == rows
    again = cli("embed", proj_db, "alias_name")  # the settings and model are remembered
    assert again.returncode == 0, again.stderr
    assert texts_encoded(again.stdout) == 0 and "recorded by triggers" in again.stdout

    conn = sqlite3.connect(proj_db)  # another program edits with plain SQL
    before = dump_table(proj_db, "alias_name")
    with conn:
        ids = [r[0] for r in conn.execute("SELECT rowid FROM alias_name ORDER BY rowid LIMIT 9")]
        conn.executemany("UPDATE alias_name SET alt_name = ? WHERE rowid = ?",
                         [(f"renamed datum {i}", rid) for i, rid in enumerate(ids[:3])])
        conn.execute("UPDATE alias_name SET source = 'edited' WHERE rowid IN (?, ?, ?)", ids[3:6])
        conn.execute("DELETE FROM alias_name WHERE rowid = ?", (ids[6],))
        conn.execute("INSERT INTO alias_name (table_name, auth_name, code, alt_name, source) "
                     "SELECT table_name, auth_name, code, 'a brand new alias', source "
                     "FROM alias_name WHERE rowid = ?", (ids[7],))
    conn.close()
    edited = cli("embed", proj_db, "alias_name")
    assert edited.returncode == 0, edited.stderr
    counts = summary(edited.stdout)
    assert (counts["embedded"], counts["reembedded"], counts["removed"]) == ("1", "3", "1")
    assert texts_encoded(edited.stdout) == 4  # only the edited and the new row

    found = cli("search", proj_db, "alias_name", "renamed datum 1", "--top-k", "1", "--json")
    assert found.returncode == 0, found.stderr
    hit = json.loads(found.stdout)[0]
    assert hit["alt_name"] == "renamed datum 1" and hit["distance"] < 0.05
    words = cli("search", proj_db, "alias_name", "brand new", "--mode", "keyword", "--csv",
                "-c", "alt_name", "--top-k", "1")
    assert list(csv.reader(io.StringIO(words.stdout)))[1][1] == "a brand new alias"
    near = cli("similar", proj_db, "alias_name", str(ids[0]), "--top-k", "2", "--json")
    assert near.returncode == 0 and len(json.loads(near.stdout)) == 2
    listed = cli("tables", proj_db, "--json")
    assert json.loads(listed.stdout)[0] | {"index size": None} == {
        "table": "alias_name", "rows": rows, "vectors": rows, "missing": 0, "stale": 0,
        "model": "hash:64", "backend": "annoy", "changes": "triggers", "index size": None,
    }

    edited_rows = dump_table(proj_db, "alias_name")
    assert len(edited_rows) == len(before)  # one deleted, one inserted: ours wrote no row
    dropped = cli("drop", proj_db, "alias_name")
    assert dropped.returncode == 0, dropped.stderr
    assert dump_table(proj_db, "alias_name") == edited_rows
    conn = sqlite3.connect(proj_db)
    left = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert not {name for name in left if name.startswith("alias_name_embeddings")}
    assert not list(proj_db.parent.glob("proj_alias_name_embeddings*"))


def test_six_database_search_keeps_working_beside_table_search(tmp_path, app_db):
    data = tmp_path / "data"
    assert cli("backfill", "--db", "bot", "--data-dir", data, *HASH).returncode == 0
    six = cli("search", "readers", "--db", "bot", "--data-dir", data)
    assert six.returncode == 0 and "no hits" in six.stdout  # the documented six-database search
    assert cli("embed", app_db, "notes", "-c", "title", "-c", "body", *HASH).returncode == 0
    table = cli("search", app_db, "notes", "free pages back", "--top-k", "1")
    assert table.returncode == 0 and "Vacuum" in table.stdout
    hybrid = cli("search", app_db, "notes", "Vacuum", "--mode", "hybrid", "--json", "--top-k", "1")
    assert hybrid.returncode == 0, hybrid.stderr
    assert json.loads(hybrid.stdout)[0]["title"] == "Vacuum"
    filtered = cli("search", app_db, "notes", "Vacuum", "--where", "rank<3", "--json")
    assert {hit["rank"] for hit in json.loads(filtered.stdout)} == {1, 2}
    bad = cli("search", app_db, "notes", "Vacuum", "--where", "nope=1")
    assert bad.returncode == 2 and "no field 'nope'" in bad.stderr
    not_sqlite = tmp_path / "words.txt"
    not_sqlite.write_text("not a database")
    odd = cli("search", not_sqlite, "--data-dir", data, "--db", "bot")  # a query, not a DB
    assert odd.returncode == 0 and "no hits" in odd.stdout
    assert "search DB TABLE QUERY" in cli("search", "--help").stdout
    assert "example:" in cli("search", app_db, "notes", "--help").stdout
    assert "example:" in cli("embed", "--help").stdout


def test_settings_are_remembered_and_changed_only_with_replace(app_db):
    assert cli("embed", app_db, "notes", "-c", "body", *HASH).returncode == 0
    other = cli("embed", app_db, "notes", "-c", "title")
    assert other.returncode == 2 and "--replace" in other.stderr
    model = cli("embed", app_db, "notes", "--model", "hash:32")
    assert model.returncode == 2 and "hash:64" in model.stderr
    replaced = cli("embed", app_db, "notes", "--template", "{title}: {body}", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert summary(replaced.stdout)["reembedded"] == "3" and "every row" in replaced.stdout
    same = cli("embed", app_db, "notes", "--template", "{title}: {body}")
    assert same.returncode == 0 and texts_encoded(same.stdout) == 0


@pytest.mark.parametrize(("args", "message"), [
    (["nope", "-c", "body"], "no table 'nope' in this database; its tables are notes"),
    (["notes", "-c", "bdy"], "has no column 'bdy'; its columns are id, title, body, rank"),
    (["notes", "-c", "body", "--where", "rank > (SELECT 1 FROM sqlite_master)"], "not a condition"),
    (["notes", "-c", "body", "--template", "{body}"], "not allowed with argument"),
    (["notes"], "not embedded yet"),
    (["notes", "-c", "body", "--key", "rank"], "not unique"),
])
def test_bad_embed_flags_exit_2_and_change_nothing(app_db, args, message):
    before = file_bytes(app_db)
    out = cli("embed", app_db, *args, *HASH)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert file_bytes(app_db) == before


def test_read_commands_on_a_table_not_embedded_exit_2(app_db, tmp_path):
    for command in (["search", app_db, "notes", "x"], ["similar", app_db, "notes", "1"],
                    ["drop", app_db, "notes"]):
        out = cli(*command)
        assert out.returncode == 2 and "embed" in out.stderr, command
    not_db = tmp_path / "plain.txt"
    not_db.write_text("hello")
    assert cli("embed", not_db, "notes", "-c", "body").returncode == 2
    assert "no embedded tables" in cli("tables", app_db).stdout


def test_store_file_leaves_the_database_untouched(app_db, tmp_path):
    before = file_bytes(app_db)
    vectors = tmp_path / "app.vectors.db"
    first = cli("embed", app_db, "notes", "-c", "body", "--store", vectors, *HASH)
    assert first.returncode == 0, first.stderr
    assert file_bytes(app_db) == before
    conn = sqlite3.connect(app_db)
    with conn:
        conn.execute("UPDATE notes SET body = 'something else entirely' WHERE id = 2")
    conn.close()
    edited_bytes = file_bytes(app_db)
    again = cli("embed", app_db, "notes", "--store", vectors)
    assert again.returncode == 0, again.stderr
    assert texts_encoded(again.stdout) == 1 and "hash scan" in again.stdout
    assert file_bytes(app_db) == edited_bytes
    found = cli("search", app_db, "notes", "something else entirely", "--store", vectors,
                "--top-k", "1", "-c", "id", "--csv")
    assert list(csv.reader(io.StringIO(found.stdout)))[1][1] == "2"
    assert "hash scan" in cli("tables", app_db, "--store", vectors).stdout
    assert cli("search", app_db, "notes", "x").returncode == 2  # not embedded in app.db itself


def test_an_empty_result_says_why(app_db):
    """No hits is not an error (exit 0), but the line says what to change; JSON stays []."""
    assert cli("embed", app_db, "notes", "-c", "body", "--where", "rank > 5", *HASH).returncode == 0
    nothing_yet = cli("search", app_db, "notes", "pages")
    assert nothing_yet.returncode == 0
    assert "has a vector yet" in nothing_yet.stdout and "embed" in nothing_yet.stdout
    assert cli("embed", app_db, "notes", "-c", "body", "--replace", *HASH).returncode == 0
    filtered = cli("search", app_db, "notes", "pages", "--where", "rank > 2; drop table notes")
    assert filtered.returncode == 0
    assert "no embedded row matches --where 'rank > 2; drop table notes'" in filtered.stdout
    assert json.loads(cli("search", app_db, "notes", "pages", "--where", "rank>9",
                          "--json").stdout) == []
    keyword = cli("search", app_db, "notes", "zebra", "--mode", "keyword")
    assert "no row matches the query" in keyword.stdout
    assert len(dump_table(app_db, "notes")) == 3  # the bound value dropped nothing
