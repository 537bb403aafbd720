"""The web page in process (Starlette's test client over real SQLite files, the hashing
encoder): every page, the JSON API, bad parameters, and stored text that tries to be HTML."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient  # noqa: E402

from embeddable_db.databases import REGISTRY, BotRecord  # noqa: E402
from embeddable_db.web.app import build_app, highlight  # noqa: E402
from embeddable_db.web.stores import Stores  # noqa: E402

NASTY = ['<script>alert(1)</script> invoice bot', '"onmouseover=alert(2) invoice helper',
         '</textarea><b>invoice</b> mailer']


@pytest.fixture
def data(tmp_path):
    data = tmp_path / "data"
    with REGISTRY["bot"](data_dir=data, model_name="hash:64") as db:
        for i, name in enumerate(NASTY + [f"plain bot {i}" for i in range(20)]):
            db.add(BotRecord(name=name, purpose=f"sends reminders number {i}"))
    return data


@pytest.fixture
def client(data):
    stores = Stores(data, model_backend="torch")
    with TestClient(build_app(stores)) as c:
        yield c
    stores.close()


def test_search_page_lists_hits_in_library_order_and_escapes_text(client):
    page = client.get("/", params={"q": "invoice", "mode": "keyword", "top_k": 5})
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "&lt;script&gt;" in page.text
    assert '"onmouseover' not in page.text and "</textarea><b>" not in page.text
    assert "<mark>invoice</mark>" in page.text
    api = client.get("/api/search", params={"q": "invoice", "mode": "keyword", "top_k": 5}).json()
    ids = [h["record_id"] for h in api["hits"]]
    assert len(ids) == 3 and set(ids) == {1, 2, 3}
    positions = [page.text.index(f'/record/bot/bot/{i}"') for i in ids]
    assert positions == sorted(positions)


@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
def test_every_mode_answers(client, mode):
    hits = client.get("/api/search", params={"q": "reminders", "mode": mode}).json()["hits"]
    assert hits and all(h["database"] == "bot" for h in hits)


@pytest.mark.parametrize("params, reason", [
    ({"q": "x", "top_k": "0"}, "top_k must be between 1 and 100"),
    ({"q": "x", "top_k": "1000"}, "top_k must be between 1 and 100"),
    ({"q": "x", "top_k": "ten"}, "whole number"),
    ({"q": "x" * 501}, "at most 500"),
    ({"q": "x", "mode": "sql"}, "unknown mode"),
    ({"q": "x", "kind": "nope"}, "unknown kind"),
    ({"q": "x", "where": "nosuchfield=1"}, "nosuchfield"),
    ({"q": "x", "where": "name=1; DROP TABLE bots"}, ""),
    ({"q": "   "}, "the query is empty"),
])
def test_bad_parameters_get_a_400_with_the_reason(client, params, reason):
    for url in ("/", "/api/search"):
        response = client.get(url, params=params)
        if params.get("where", "").startswith("name="):  # a value, bound: no hits, no harm
            assert response.status_code == 200
            continue
        assert response.status_code == 400, response.text
        assert reason in response.text and "Traceback" not in response.text


def test_record_page_shows_fields_vector_state_and_neighbours(client):
    page = client.get("/record/bot/bot/1")
    assert page.status_code == 200
    assert "&lt;script&gt;alert(1)" in page.text and "<script>alert" not in page.text
    assert "hash:64" in page.text and page.text.count('class="near-link"') == 10
    for missing, reason in (("/record/bot/bot/999", "no bot record 999"),
                            ("/record/nope/bot/1", "there is no store &#39;nope&#39;"),
                            ("/record/bot/workflow/1", "no records of kind &#39;workflow&#39;"),
                            ("/record/bot/bot/x1", "no bot record x1")):
        page = client.get(missing)
        assert page.status_code == 404 and reason in page.text, missing
    assert client.get("/no/such/page").status_code == 404


def test_stores_page_and_map(client):
    page = client.get("/stores")
    assert page.status_code == 200 and 'id="bars"' in page.text and "ok" in page.text
    assert "Backfill" not in page.text
    points = client.get("/api/map").json()["points"]
    assert len(points) == 23 and all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in points)


def test_nothing_writes_without_allow_backfill(client, data):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in data.rglob("*"))
    assert client.post("/backfill", data={"token": "x"}).status_code == 400
    assert sorted((p.name, p.stat().st_mtime_ns) for p in data.rglob("*")) == before


def test_backfill_button_needs_the_token(data):
    stores = Stores(data, model_backend="torch")
    with TestClient(build_app(stores, allow_backfill=True)) as c:
        page = c.get("/stores").text
        assert 'id="backfill"' in page
        assert c.post("/backfill", data={"token": "wrong"}).status_code == 400
        token = page.split('name="token" value="')[1].split('"')[0]
        assert c.post("/backfill", data={"token": token}).status_code == 200
    stores.close()


def test_highlight_escapes_before_marking():
    assert str(highlight("<b>mark</b> me", "b mark")) == "&lt;b&gt;<mark>mark</mark>&lt;/b&gt; me"


def test_serve_refuses_a_missing_data_directory(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "embeddable_db.cli", "serve", "--data-dir",
                           str(tmp_path / "nope")], capture_output=True, text=True,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
                               "PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert not (tmp_path / "nope").exists()


@pytest.fixture
def notes(tmp_path):
    """A user's own file: a rowid table and a table keyed by text, both embedded."""
    import sqlite3

    from embeddable_db import TableStore

    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (title TEXT, body TEXT)")
    conn.execute("CREATE TABLE tags (code TEXT PRIMARY KEY, label TEXT)")
    conn.executemany("INSERT INTO notes VALUES (?, ?)",
                     [(f"note {i}", f"{'invoice' if i % 3 == 0 else 'garden'} notes number {i}")
                      for i in range(30)] + [("<script>x</script>", "invoice trap")])
    conn.executemany("INSERT INTO tags VALUES (?, ?)",
                     [("a/b c", "invoice tag with a slash"), ("plain", "garden tag")])
    conn.commit()
    conn.close()
    for table, columns in (("notes", ["title", "body"]), ("tags", ["label"])):
        with TableStore(path, table, columns=columns, model_name="hash:64") as store:
            store.backfill_embeddings()
    return path


def test_tables_of_a_users_file_are_served_beside_the_databases(data, notes):
    stores = Stores(data, [notes], model_backend="torch")
    try:
        assert sorted(stores.views) == ["app.notes", "app.tags", "bot"]
        with TestClient(build_app(stores)) as c:
            hits = c.get("/api/search", params={"q": "invoice", "mode": "keyword",
                                                "top_k": 50}).json()["hits"]
            by_store = {h["database"] for h in hits}
            assert by_store == {"app.notes", "app.tags", "bot"}
            assert all(h["kind"] == "notes" for h in hits if h["database"] == "app.notes")
            page = c.get("/", params={"q": "invoice trap", "mode": "hybrid"}).text
            assert "&lt;script&gt;x" in page and "<script>x" not in page
            link = page.split('class="hit-link" href="')[1].split('"')[0]
            assert link.startswith("/record/app.notes/notes/")
            record = c.get(link)
            assert record.status_code == 200 and "invoice trap" in record.text
            assert record.text.count('class="near-link"') == 10
            slashed = c.get("/record/app.tags/tags/a%2Fb%20c")
            assert slashed.status_code == 200 and "invoice tag with a slash" in slashed.text
            for missing in ("nope", "%20", "x" * 5000):
                assert c.get(f"/record/app.tags/tags/{missing}").status_code == 404, missing
            filtered = c.get("/api/search", params={"q": "notes", "mode": "vector",
                                                    "where": "title=note 3"}).json()["hits"]
            assert [(h["database"], h["record"]["title"]) for h in filtered] == [("app.notes",
                                                                                "note 3")]
            bad = c.get("/api/search", params={"q": "x", "where": "colour=red"})
            assert bad.status_code == 400 and "title" in bad.json()["error"]
            rows = {r["name"]: r for r in stores.summary()}
            assert rows["app.notes"]["records"] == 31 and rows["app.notes"]["vectors"] == 31
            assert rows["bot"]["records"] == rows["bot"]["vectors"] == 23
            assert rows["app.tags"]["verify"] == "ok"
            points = c.get("/api/map").json()["points"]
            assert sum(p["store"] == "app.tags" for p in points) == 2
            assert {p["id"] for p in points if p["store"] == "app.tags"} == {"a/b c", "plain"}
    finally:
        stores.close()


def test_serve_checks_its_files_before_starting(tmp_path):
    import subprocess
    import sys

    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "embeddable_db.cli", "serve",
                           str(tmp_path / "missing.db")], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 2 and "no database file" in done.stderr
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    done = subprocess.run([sys.executable, "-m", "embeddable_db.cli", "serve",
                           str(tmp_path / "junk.db"), "--port", "1"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 2 and "not a SQLite database" in done.stderr
    assert (tmp_path / "junk.db").read_bytes() == b"not a database at all" * 100
