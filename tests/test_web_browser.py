"""The web page in a real browser: Debian's Chromium driven by Playwright, against a real
``embeddable-db serve`` subprocess on a free localhost port. Screenshots go to
docs/screenshots/ for a person to look at.

Without /usr/bin/chromium these tests skip on a dev machine, and fail where
EMBEDDABLE_DB_REQUIRE_BROWSER=1 (``.ci/run`` sets it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from embeddable_db.databases import REGISTRY, BotRecord

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
ROOT = Path(__file__).resolve().parents[1]

if not os.path.exists(CHROMIUM):
    if os.environ.get("EMBEDDABLE_DB_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")

WORDS = ["invoice reminders for late payers", "database is locked while writing",
         "nightly backup of the customer table", "email digest of open tickets",
         "invoice totals rounding off by a cent", "scrape prices from supplier pages"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("web") / "data"
    with REGISTRY["bot"](data_dir=data, model_name="hash:64") as db:
        for i in range(60):
            db.add(BotRecord(name=f"bot {i}", purpose=WORDS[i % len(WORDS)] + f" <script>{i}"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "embeddable_db.cli", "serve", "--data-dir",
                             str(data), "--port", str(port), "--model-backend", "torch"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/stores", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read()) from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1000, "height": 760})
        yield tab
        browser.close()


def test_search_record_neighbour(server, page):
    import json

    page.goto(server + "/")
    page.fill("#q", "invoice reminders")
    page.click("#go")
    page.wait_for_selector(".hit")
    shown = [a.get_attribute("href") for a in page.query_selector_all(".hit-link")]
    api = json.load(urllib.request.urlopen(server + "/api/search?q=invoice+reminders&top_k=10"))
    assert shown == [f"/record/bot/{h['kind']}/{h['record_id']}" for h in api["hits"]]
    assert page.query_selector("script:not([src])") is None  # stored <script> stays text
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "search.png"))
    page.click(".hit-link >> nth=0")
    page.wait_for_selector("#fields")
    assert page.url.endswith(shown[0])
    neighbour = page.get_attribute(".near-link >> nth=0", "href")
    page.click(".near-link >> nth=0")
    page.wait_for_selector("#fields")
    assert page.url.endswith(neighbour)


def test_map_draws_its_points(server, page):
    page.goto(server + "/stores")
    page.wait_for_selector("#map[data-points]")
    assert page.get_attribute("#map", "data-points") == "60"
    assert len(page.query_selector_all("#map circle.point")) == 60
    page.hover("#map circle.point >> nth=0")
    assert "bot" in page.inner_text("#hover")
    page.screenshot(path=str(SHOTS / "map.png"), full_page=True)
