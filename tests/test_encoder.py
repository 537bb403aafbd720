"""The encoder: lazy and shared, offline default model, never imported by vector-only work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import NotesDB
from embeddable_db import DEFAULT_MODEL, HashingEncoder, get_encoder
from embeddable_db.encoder import default_model_path, model_identity

TESTS = Path(__file__).parent


def test_stores_share_one_encoder(tmp_path):
    first = NotesDB(str(tmp_path / "a.db"))
    second = NotesDB(str(tmp_path / "b.db"))
    assert first.encoder is second.encoder is get_encoder(DEFAULT_MODEL)
    first.close()
    second.close()


def test_default_model_resolves_to_installed_package():
    path = Path(default_model_path())
    assert (path / "config.json").exists() and (path / "modules.json").exists()
    assert model_identity("all-MiniLM-L6-v2", None) == DEFAULT_MODEL
    assert model_identity("some/other-model", None) == "some/other-model"
    assert model_identity(DEFAULT_MODEL, HashingEncoder(8)) == "hash:8"


def test_hashing_encoder_is_deterministic():
    a = HashingEncoder(16).encode(["same words here", "other"])
    b = HashingEncoder(16).encode(["same words here", "other"])
    assert (a == b).all() and a.shape == (2, 16)


def test_open_search_save_verify_never_import_torch(tmp_path):
    """A fresh process that opens a store and searches by vector loads no model code."""
    setup = NotesDB(str(tmp_path / "n.db"), encoder=HashingEncoder(32))
    for i in range(20):
        setup.add_note(f"torch free note {i}")
    setup.backfill_embeddings()
    query = setup.encode_text("torch free note 3")
    setup.close()
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(TESTS)!r})
        from conftest import NotesDB
        db = NotesDB({str(tmp_path / "n.db")!r}, model_name="hash:32")
        hits = db.search_by_vector({query!r}, top_k=3)
        db.save_index()
        report = db.verify_index()
        db.rebuild_index()
        db.close()
        heavy = sorted(m for m in ("torch", "sentence_transformers", "transformers",
                                   "embeddable_db.databases")  # loaded on first use only
                       if m in sys.modules)
        print(json.dumps({{"hits": hits, "ok": report.ok, "heavy": heavy}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["ok"] is True
    assert result["hits"][0][0] == "4"


@pytest.mark.model
def test_real_model_vectors_are_unit_length(real_encoder):
    vectors = real_encoder.encode(["hello world", "a second sentence"])
    assert vectors.shape == (2, 384)
    assert abs(float((vectors[0] ** 2).sum()) - 1.0) < 1e-4


@pytest.mark.model
def test_real_model_loads_offline(tmp_path):
    """No hub call: the default model loads in a fresh process with the network unusable."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HTTPS_PROXY="http://127.0.0.1:9", HF_HOME=str(tmp_path))
    env.pop("TRANSFORMERS_OFFLINE", None)
    script = (
        "from embeddable_db import get_encoder\n"
        "print(get_encoder().encode(['offline check']).shape)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(1, 384)" in out.stdout


@pytest.mark.model
def test_semantic_sanity_with_real_model(tmp_path, real_encoder):
    db = NotesDB(str(tmp_path / "s.db"), encoder=real_encoder)
    texts = [
        "sqlite3.OperationalError: database is locked after waiting 5 seconds (timeout)",
        "The quarterly marketing budget was approved by the board",
        "Recipe: bake the bread at 220 degrees for thirty minutes",
        "The football match ended in a two-all draw",
        "Annual leave requests must be filed two weeks in advance",
    ]
    for text in texts:
        db.add_note(text)
    assert db.backfill_embeddings().embedded == 5
    hits = db.search_by_text("database connection timed out", top_k=5)
    assert hits[0][0] == "1"
    assert hits[0][1] < hits[1][1] - 0.1
    db.close()


def test_a_faiss_store_leaves_the_models_threads_alone(tmp_path):
    """torch shares FAISS's OpenMP runtime: a store that set it to one thread for its searches
    made the model encode at half speed in the same process."""
    script = textwrap.dedent(
        f"""
        import json, sys
        import faiss
        faiss.omp_set_num_threads(2)  # what torch sets on a 2-core machine
        sys.path.insert(0, {str(TESTS)!r})
        from conftest import NotesDB
        db = NotesDB({str(tmp_path / "t.db")!r}, model_name="hash:32", backend="faiss")
        db.add_note("threads are shared"); db.backfill_embeddings()
        hits = db.search_by_text("threads", top_k=1)
        db.close()
        print(json.dumps({{"hits": hits, "threads": faiss.omp_get_max_threads()}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=120, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["hits"][0][0] == "1"
    assert result["threads"] == 2
