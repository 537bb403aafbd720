"""Shared pieces of the benchmarks: real texts, cached real-model vectors, stores, timing, output.

Texts are sentences and short paragraphs of the Python standard library's docstrings (read with
``ast``, nothing imported), so no download is needed. The first ``N_BASE + N_QUERIES`` of them
are embedded once with the default model and cached under ``benchmarks/.cache/``; later runs
reuse the vectors. The 100,000-vector set repeats those real vectors with small noise.

Importing this module must not import torch: the cold-open child process imports it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from embeddable_db import EmbeddableDBMixin

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
N_BASE = 16_000  # real texts embedded once: the base of the 100k set
N_QUERIES = 500  # held-out real texts, never in the base, used as queries
N_VECTORS = 100_000
NOISE = 0.02  # per-dimension std of the noise on repeated vectors (cosine to the original ~0.93)
TOP_K = 10
PRECOMPUTED = "precomputed:all-MiniLM-L6-v2"
_SKIP_DIRS = {"site-packages", "idlelib", "lib2to3", "turtledemo", "ensurepip", "__pycache__"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


# -- output ----------------------------------------------------------------------------------------
def fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def figure(label: str, value: float, unit: str = "", note: str = "") -> None:
    """One figure per line: label, value, unit, and what it means."""
    print(f"{label:<64} {fmt(value):>10} {unit:<6} {note}".rstrip(), flush=True)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def ratio(label: str, value: float, target: str | None = None, met: bool = True) -> None:
    """The side-by-side ratio, printed last; without a target it is context only."""
    goal = f"target {target}: {verdict(met)}" if target else "context, no target"
    print(f"RATIO {label}: {fmt(value)} ({goal})", flush=True)


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# -- timing ----------------------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(wall seconds, result) of ``fn()``."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def timed_cpu(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, all threads) and the result of ``fn()``.

    On a shared machine wall time swings by 2x with the neighbours; CPU time moves less (threads
    that spin while they wait still count), so the two together show what noise did.
    """
    cpu = time.process_time()
    wall, result = timed(fn)
    return wall, time.process_time() - cpu, result


def latencies_ms(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> tuple[np.ndarray, list]:
    """Per-call latency (ms) of ``fn(query)`` for each query, and the results."""
    times, results = [], []
    for query in queries:
        started = time.perf_counter()
        results.append(fn(query))
        times.append(time.perf_counter() - started)
    return np.array(times) * 1e3, results


def p50_p95(ms: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def run_child(probe: str, *args: object) -> tuple[float, dict]:
    """(wall seconds, report) of ``child.py probe args`` in a fresh interpreter.

    A probe that reports ``answered_at`` (its wall clock at the answer) gets ``answer_s``: the
    seconds from spawning it to its answer, without the interpreter's teardown.
    """
    spawned, started = time.time(), time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(HERE / "child.py"), probe, *map(str, args)],
        check=True, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - started
    report = json.loads(out.stdout.strip().splitlines()[-1])
    if "answered_at" in report:
        report["answer_s"] = report.pop("answered_at") - spawned
    return seconds, report


# -- real texts and their vectors ------------------------------------------------------------------
def _docstrings(root: str) -> Iterable[str]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("test"))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                tree = ast.parse(Path(folder, name).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    yield ast.get_docstring(node) or ""


def stdlib_texts() -> list[str]:
    """Unique sentences and short paragraphs of stdlib docstrings, in a fixed shuffled order."""
    path = CACHE / f"texts-py{sys.version_info.major}{sys.version_info.minor}.json"
    if path.exists():
        return json.loads(path.read_text())
    texts: set[str] = set()
    for doc in _docstrings(sysconfig.get_paths()["stdlib"]):
        for paragraph in re.split(r"\n\s*\n", doc):
            if ">>>" in paragraph:
                continue
            paragraph = " ".join(paragraph.split())
            parts = _SENTENCE_END.split(paragraph)
            if len(parts) > 1 and len(paragraph) <= 600:
                parts.append(paragraph)
            texts.update(
                p for p in parts if 25 <= len(p) <= 600 and sum(c.isalpha() for c in p) > 0.6 * len(p)
            )
    ordered = sorted(texts)
    random.Random(0).shuffle(ordered)
    CACHE.mkdir(exist_ok=True)
    path.write_text(json.dumps(ordered))
    return ordered


def load_model():
    """The default SentenceTransformer (imports torch: only for the scripts that encode)."""
    from embeddable_db import get_encoder

    return get_encoder().model


def real_vectors() -> tuple[list[str], np.ndarray]:
    """(texts, unit vectors) of the first N_BASE + N_QUERIES texts; embedded once, then cached."""
    texts = stdlib_texts()[: N_BASE + N_QUERIES]
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"vectors-{digest}.npy"
    if not path.exists():
        log(f"embedding {len(texts)} real texts once (cached in {path.name}); this takes minutes")
        seconds, vectors = timed(
            lambda: load_model().encode(texts, batch_size=128, normalize_embeddings=True)
        )
        log(f"embedded in {seconds:.0f} s")
        np.save(path, np.asarray(vectors, np.float32))
    return texts, np.load(path)


def base_and_queries() -> tuple[np.ndarray, np.ndarray]:
    _, vectors = real_vectors()
    return vectors[:N_BASE], vectors[N_BASE:]


def noisy_copies(base: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors: ``base`` once as is, then repeated with small noise, re-normalised."""
    rng = np.random.default_rng(seed)
    out = np.resize(base, (n, base.shape[1])).astype(np.float32)
    noise = rng.normal(0, NOISE, out.shape).astype(np.float32)
    noise[: len(base)] = 0
    out += noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def vectors_100k() -> np.ndarray:
    return noisy_copies(base_and_queries()[0], N_VECTORS)


def exact_top_k(matrix: np.ndarray, queries: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Row numbers of the ``k`` nearest rows (cosine) for each query: the ground truth."""
    scores = queries @ matrix.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def recall(found: list, truth: np.ndarray) -> float:
    """Mean share of the true top k among the ``found`` ids, query by query."""
    hits = [len(set(map(int, f)) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


# -- stores ----------------------------------------------------------------------------------------
class BenchStore(EmbeddableDBMixin):
    """A table of texts embedded in batches; with ``PrecomputedEncoder`` a text is a row number."""

    def __init__(self, path: str | os.PathLike, **options) -> None:
        self.conn = sqlite3.connect(path)
        self.conn.execute("CREATE TABLE IF NOT EXISTS texts(id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        self.conn.commit()
        super().__init__(**options)

    def add_texts(self, texts: Iterable[str]) -> None:
        self.conn.executemany("INSERT INTO texts(body) VALUES (?)", ((t,) for t in texts))
        self.conn.commit()

    def embedding_text(self, record: str) -> str:
        return record

    def iter_records(self):
        for rid, body in self.conn.execute("SELECT id, body FROM texts ORDER BY id"):
            yield rid, body, "text"


class TimedEncoder:
    """Wraps an encoder, adding up the wall and CPU seconds spent inside its ``encode``."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.seconds = self.cpu_seconds = 0.0

    def encode(self, texts: list[str], **options) -> np.ndarray:
        wall, cpu, vectors = timed_cpu(lambda: self.inner.encode(texts, **options))
        self.seconds += wall
        self.cpu_seconds += cpu
        return vectors


class PrecomputedEncoder:
    """A fake encoder: each "text" is a row number of a matrix of ready vectors."""

    model_name = PRECOMPUTED

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        return self.matrix[[int(t) for t in texts]]


class PgStore(EmbeddableDBMixin):
    """A store of precomputed vectors in a PostgreSQL database (``bench_postgres``): the mixin
    over a psycopg connection in autocommit mode, as the engine recommends. It has no records
    of its own: its vectors come from ``add_embeddings``, never from a backfill."""

    def __init__(self, conninfo: str, **options) -> None:
        import psycopg  # here, not at the top: the SQLite benchmarks never need it

        self.conn = psycopg.connect(conninfo, autocommit=True)
        try:
            super().__init__(**options)
        except BaseException:
            self.conn.close()
            raise

    def embedding_text(self, record: str) -> str:
        return record

    def iter_records(self):
        return iter(())


def store_options(backend: str) -> dict:
    """``"annoy"``, ``"faiss"`` (flat) or ``"hnsw"`` (FAISS HNSW) as mixin keywords."""
    return {"backend": "faiss", "index_type": "hnsw"} if backend == "hnsw" else {"backend": backend}


def open_store(folder: Path, backend: str, vectors: np.ndarray | None = None) -> BenchStore:
    """A store of precomputed vectors (no model is ever loaded)."""
    encoder = PrecomputedEncoder(vectors) if vectors is not None else None
    return BenchStore(folder / "store.db", model_name=PRECOMPUTED, encoder=encoder,
                      **store_options(backend))


def _source_digest() -> str:
    """Built stores are reused until the package's code changes."""
    import embeddable_db

    package = Path(embeddable_db.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def vector_store(backend: str) -> Path:
    """Folder of a store holding the 100,000 vectors, built once per version of the package."""
    folder = CACHE / "stores" / f"{backend}-{N_VECTORS}-{_source_digest()}"
    if not (folder / "store.db").exists():
        vectors = vectors_100k()
        building = folder.with_suffix(".tmp")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        log(f"building the {backend} store of {len(vectors):,} vectors (cached for later runs)")
        store = open_store(building, backend, vectors)
        items = [(i, str(i), "vec") for i in range(len(vectors))]
        seconds, _ = timed(lambda: (store.add_embeddings(items, batch_size=10_000), store.close()))
        store.conn.close()
        log(f"built in {seconds:.1f} s")
        for old in folder.parent.glob(f"{backend}-*"):
            if old != building:
                shutil.rmtree(old)
        building.rename(folder)
    return folder


def copy_store(folder: Path, to: Path) -> Path:
    """A private copy of a cached store, to change without spoiling the cache."""
    shutil.copytree(folder, to, ignore=shutil.ignore_patterns("*.lock"))
    return to
