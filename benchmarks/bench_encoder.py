"""Torch (sentence-transformers) vs ONNX Runtime encoder for all-MiniLM-L6-v2: speed and agreement.

Run ``python benchmarks/bench_encoder.py``. One figure per line:

* sentences/s at batch 1, 32 and 128, for short sentences (8-14 words) and paragraphs (80-120
  words), both taken from the docstrings of ~100 standard-library modules (``inspect.getdoc``);
  each call encodes exactly one batch, so batch 1 is the one-query-at-a-time case;
* the wall time of a fresh ``python -c`` that imports the encoder and encodes its first query;
* the cosine between ONNX and torch vectors;
* ``RATIO`` lines, onnx/torch at batch 1 and batch 32 (``run_all.py`` collects them).

Both engines get the same thread count: the ONNX encoder's default (``$EMBEDDABLE_DB_THREADS``
or min(4, CPUs)) and ``torch.set_num_threads`` of the same. Torch and ONNX runs alternate over
several rounds and the median round is reported, so a busy neighbour slows both alike. Runtime
is about 2-3 minutes on 2 cores. The ONNX export is made (once, cached) if it is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import random
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = ROOT / "src" / "embeddable_db" / "onnx_encoder.py"
BATCHES = (1, 32, 128)
ROUNDS = 3  # alternating torch/onnx rounds per figure; the median is printed
MIN_SECONDS = 0.8  # each round encodes whole batches for at least this long
FRESH_RUNS = {"onnx": 3, "torch": 2}
QUERY = "how do I open a sqlite database read-only?"

STDLIB_MODULES = """
abc argparse array ast asyncio base64 binascii bisect bz2 calendar cmath codecs collections
configparser contextlib copy csv dataclasses datetime decimal difflib dis doctest email enum
filecmp fnmatch fractions ftplib functools gc getopt gettext glob gzip hashlib heapq hmac
html.parser http.client imaplib importlib.metadata inspect io ipaddress itertools json locale
logging lzma mailbox math mimetypes mmap numbers operator optparse os pathlib pdb pickle pkgutil
platform poplib pprint queue random re sched secrets selectors shlex shutil signal site smtplib
socket sqlite3 ssl stat statistics string struct subprocess sysconfig tarfile tempfile textwrap
threading tokenize traceback typing unittest urllib.parse urllib.request uuid warnings weakref
xml.etree.ElementTree zipfile zipimport zlib
""".split()

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`])")
# Prose only: drop code, signatures, tables and doctests, which tokenise to many more pieces.
_NOT_PROSE_SENTENCE = re.compile(r"[=<>\[\]{}|@*_/\\#$%^~]|::|\w\(")
_NOT_PROSE_PARAGRAPH = re.compile(r"\+--|\|\s|===|>>>|[{}]")


# -- output (same layout as benchmarks/common.py, which this script does not import) --------------
def fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def figure(label: str, value: float, unit: str = "", note: str = "", digits: int = 0) -> None:
    shown = f"{value:.{digits}f}" if digits else fmt(value)
    print(f"{label:<58} {shown:>10} {unit:<6} {note}".rstrip(), flush=True)


def ratio(label: str, value: float, target: str, met: bool) -> None:
    print(f"RATIO {label}: {fmt(value)} (target {target}: {'met' if met else 'MISSED'})", flush=True)


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# -- texts -----------------------------------------------------------------------------------------
def stdlib_docstrings() -> list[str]:
    docs: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in STDLIB_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            objects: list[object] = [module]
            for key, value in sorted(vars(module).items()):
                if key.startswith("_") or not (inspect.isclass(value) or inspect.isfunction(value)):
                    continue
                objects.append(value)
                if inspect.isclass(value):
                    objects.extend(
                        v for k, v in sorted(vars(value).items())
                        if not k.startswith("_") and inspect.isfunction(v)
                    )
            for obj in objects:
                doc = inspect.getdoc(obj)
                if doc:
                    docs.append(doc)
    return list(dict.fromkeys(docs))


def corpus() -> tuple[list[str], list[str]]:
    """Short sentences (8-14 words) and paragraphs (80-120 words) of stdlib docstrings."""
    sentences: dict[str, None] = {}
    paragraphs: dict[str, None] = {}
    for doc in stdlib_docstrings():
        parts = _SENTENCE_END.split(re.sub(r"\s+", " ", doc).strip())
        words: list[str] = []
        for part in parts:
            if 8 <= len(part.split()) <= 14 and len(part) <= 110:
                if not _NOT_PROSE_SENTENCE.search(part):
                    sentences[part] = None
            words += part.split()
            if len(words) >= 80:
                paragraph = " ".join(words)
                if len(words) <= 120 and len(paragraph) <= 800:
                    if not _NOT_PROSE_PARAGRAPH.search(paragraph):
                        paragraphs[paragraph] = None
                words = []
    rng = random.Random(0)
    short, long = list(sentences), list(paragraphs)
    rng.shuffle(short)
    rng.shuffle(long)
    return short, long


# -- encoders --------------------------------------------------------------------------------------
def throughput(encode: Callable[[list[str]], object], texts: list[str], batch: int) -> float:
    """Sentences/s, calling ``encode`` on consecutive batches for at least MIN_SECONDS."""
    done, start, i = 0, time.perf_counter(), 0
    while True:
        chunk = texts[i : i + batch]
        if len(chunk) < batch:
            i, chunk = 0, texts[:batch]
        encode(chunk)
        done += len(chunk)
        i += batch
        elapsed = time.perf_counter() - start
        if elapsed >= MIN_SECONDS:
            return done / elapsed


def fresh_process_seconds(code: str, runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    began = time.perf_counter()
    from embeddable_db import onnx_encoder as mod
    threads = mod.default_threads()
    onnx_path = mod.default_onnx_path()
    if not onnx_path.is_file():
        log(f"exporting the ONNX model once to {onnx_path}")
        mod.export_onnx(out_path=onnx_path)
    short, long = corpus()
    log(f"{len(short)} sentences, {len(long)} paragraphs from stdlib docstrings")

    onnx = mod.OnnxEncoder(onnx_path=onnx_path, threads=threads)

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(mod.default_model_dir()), device="cpu")

    def torch_encode(texts: list[str]) -> np.ndarray:
        return model.encode(
            texts, batch_size=len(texts), normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )

    engines = {"torch": torch_encode, "onnx": lambda texts: onnx.encode(texts, batch_size=len(texts))}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"threads: onnx intra_op={threads} (spinning off), torch.set_num_threads({threads}); "
        f"{os.cpu_count()} CPUs, load average {load:.2f}; onnx file {onnx_path.name}",
        flush=True,
    )
    for encode in engines.values():  # warm-up: first-call allocations, lazy init
        encode(short[:32])
        encode(long[:8])

    rates: dict[tuple[str, str, int], float] = {}
    for kind, texts in (("short", short), ("paragraph", long)):
        for batch in BATCHES:
            rounds: dict[str, list[float]] = {name: [] for name in engines}
            for _ in range(ROUNDS):
                for name, encode in engines.items():
                    rounds[name].append(throughput(encode, texts, batch))
            for name in engines:
                rates[(name, kind, batch)] = statistics.median(rounds[name])
                words = "~10 words" if kind == "short" else "80-120 words"
                figure(
                    f"{name:<5} {kind} ({words}) batch={batch}",
                    rates[(name, kind, batch)], "sent/s",
                )

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    onnx_code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('onnx_encoder', {str(MODULE_FILE)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['onnx_encoder'] = m\n"
        "spec.loader.exec_module(m)\n"
        f"m.OnnxEncoder(threads={threads}).encode([{QUERY!r}])\n"
        "assert 'torch' not in sys.modules\n"
    )
    torch_code = (
        "import torch\n"
        f"torch.set_num_threads({threads})\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"m = SentenceTransformer({str(mod.default_model_dir())!r}, device='cpu')\n"
        f"m.encode([{QUERY!r}])\n"
    )
    fresh_onnx = fresh_process_seconds(onnx_code, FRESH_RUNS["onnx"], env)
    figure("onnx  fresh process: start, import, load, first query", fresh_onnx, "s",
           "(target <= 1 s)")
    package_ok = subprocess.run(
        [sys.executable, "-c", "import embeddable_db"], env=env, capture_output=True
    ).returncode == 0
    if package_ok:
        package_code = (
            "import sys\nfrom embeddable_db.onnx_encoder import OnnxEncoder\n"
            f"OnnxEncoder(threads={threads}).encode([{QUERY!r}])\n"
            "assert 'torch' not in sys.modules\n"
        )
        figure("onnx  fresh process, imported via the embeddable_db package",
               fresh_process_seconds(package_code, FRESH_RUNS["onnx"], env), "s")
    fresh_torch = fresh_process_seconds(torch_code, FRESH_RUNS["torch"], env)
    figure("torch fresh process: start, import, load, first query", fresh_torch, "s")

    sample = short[:256] + long[:64]
    a = onnx.encode(sample)
    b = torch_encode(sample)
    cosines = (a * b).sum(axis=1)
    figure(f"cosine onnx vs torch, min over {len(sample)} texts", float(cosines.min()), "",
           "(target >= 0.9999)", digits=7)
    figure(f"cosine onnx vs torch, mean over {len(sample)} texts", float(cosines.mean()),
           digits=7)
    figure("benchmark runtime", time.perf_counter() - began, "s")

    for batch, target in ((1, 1.5), (32, 1.0)):
        for kind in ("short", "paragraph"):
            value = rates[("onnx", kind, batch)] / rates[("torch", kind, batch)]
            ratio(f"onnx/torch sentences/s, {kind}, batch {batch}", value, f">= {target}x",
                  value >= target)
    ratio("fresh-process first query, onnx seconds", fresh_onnx, "<= 1 s", fresh_onnx <= 1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
