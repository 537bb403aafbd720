"""Issue 16: the web page's latency, over real HTTP to a real ``embeddable-db serve`` process.

- search p50 over HTTP (``/api/search``, hybrid, top 10) on a bot store of 100,000 records
  (target <= 50 ms). Its vectors come from the hashing encoder (``hash:384``), so the figure
  is the server's work (HTTP, fusion over both sides, JSON) plus a trivial encoding; the model
  itself is timed by ``bench_encoder.py``.
- first query after start: a store made by the default model, served with the ONNX encoder
  (the server warms it in the background); the time from launching the process until the first
  search answers, and the first search alone (target <= 1 s).

    PYTHONPATH=src python benchmarks/bench_web.py      # WEB_N=5000 for a quick check
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from common import figure, log, p50_p95, ratio

from embeddable_db.databases import REGISTRY, BotRecord

N = int(os.environ.get("WEB_N", 100_000))
QUERIES = ["invoice reminders", "database is locked", "nightly backup", "email digest",
           "rounding off by a cent", "scrape supplier prices", "retry failed jobs", "slow query"]
WORDS = ("invoice reminder database locked nightly backup email digest ticket rounding cent "
         "scrape supplier price retry failed job slow query cache report export import").split()
ROOT = Path(__file__).resolve().parents[1]


def fill(data: Path, n: int, model: str, **options) -> None:
    rng = np.random.default_rng(0)
    with REGISTRY["bot"](data_dir=data, model_name=model, **options) as db:
        for start in range(0, n, 1000):
            for i in range(start, min(n, start + 1000)):
                db.add(BotRecord(name=f"bot {i}", purpose=" ".join(rng.choice(WORDS, 8))))
            log(f"{min(n, start + 1000)} / {n} records")


def start(data: Path, backend: str) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    launched = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "embeddable_db.cli", "serve", "--data-dir",
                             str(data), "--port", str(port), "--model-backend", backend], env=env,
                            stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            urllib.request.urlopen(url + "/no-page", timeout=1)
        except urllib.error.HTTPError:
            return proc, url, launched
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("serve exited") from None
            time.sleep(0.05)


def ask(url: str, query: str) -> float:
    began = time.perf_counter()
    with urllib.request.urlopen(f"{url}/api/search?" + urllib.parse.urlencode(
            {"q": query, "mode": "hybrid", "top_k": 10})) as response:
        assert json.load(response)["hits"]
    return (time.perf_counter() - began) * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big", Path(tmp) / "small"
        fill(big, N, "hash:384")
        fill(small, 200, "sentence-transformers/all-MiniLM-L6-v2", model_backend="onnx")
        proc, url, _ = start(big, "torch")
        try:
            ask(url, "warm")
            ms = np.array([ask(url, q) for _ in range(25) for q in QUERIES])
        finally:
            proc.terminate()
            proc.wait()
        p50, p95 = p50_p95(ms)
        figure(f"search over HTTP, hybrid top 10, {N:,} records, p50", p50, "ms")
        figure(f"search over HTTP, hybrid top 10, {N:,} records, p95", p95, "ms")
        proc, url, launched = start(small, "onnx")
        try:
            first = ask(url, "why are my invoice totals off by a cent")
            since_launch = (time.perf_counter() - launched) * 1000
        finally:
            proc.terminate()
            proc.wait()
        figure("first query after start (ONNX, warmed in the background)", first, "ms")
        figure("launch of serve until the first query has answered", since_launch, "ms")
        ratio("HTTP search p50 / 50 ms target", p50 / 50, "<= 1", p50 <= 50)
        ratio("first query / 1 s target", first / 1000, "<= 1", first <= 1000)


if __name__ == "__main__":
    main()
