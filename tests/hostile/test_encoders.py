"""Hostile users of encoders (issue 10, items 7, 8, 12, 24 and 29).

A custom encoder must never borrow the default model's name; a tampered ONNX cache is never
believed; a mistyped model name fails once and fast; an encoder's output obeys the same rule
as a query vector; an encoder's failure is an ``EncodingError`` wherever text is encoded.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hostile_helpers import NotesDB, tree_digest

from embeddable_db import (
    DEFAULT_MODEL,
    EncodingError,
    HashingEncoder,
    InvalidVectorError,
    ModelConflictError,
)

DIM = 16


class PlainEncoder:
    """A user's own encoder: an ``encode`` method and nothing else (no model name)."""

    def __init__(self, dim: int = DIM) -> None:
        self._hashing = HashingEncoder(dim)

    def encode(self, texts, batch_size=None):
        return self._hashing.encode(texts)


class NamedByAttribute(PlainEncoder):
    name = "acme/sentence-encoder-v2"


def _notes(path, **options):
    db = NotesDB(str(path), **options)
    for text in ("alpha beta", "gamma delta", "epsilon zeta"):
        db.add_note(text)
    return db


def _files(folder):
    """Every file's digest, but SQLite's -wal/-shm, which a refused open's connection makes."""
    return {k: v for k, v in tree_digest(folder).items() if not k.endswith(("-wal", "-shm"))}


def _shut(db):
    try:
        db.close()
    finally:
        db.conn.close()


# --------------------------------------------------------------------------- item 7


def test_unnamed_encoder_is_recorded_as_custom_not_as_the_default_model(tmp_path):
    db = _notes(tmp_path / "n.db", encoder=PlainEncoder())
    assert db.backfill_embeddings().embedded == 3
    identity = f"custom:{PlainEncoder.__module__}.PlainEncoder"
    assert db.model_id == identity
    assert db.model_counts() == {identity: 3}
    _shut(db)
    before = _files(tmp_path)
    # The real model on the same store is another vector space: refused, nothing written.
    with pytest.raises(ModelConflictError) as caught:
        NotesDB(str(tmp_path / "n.db"))
    assert identity in str(caught.value) and "allow_model_change=True" in str(caught.value)
    assert _files(tmp_path) == before
    # The same encoder reopens its store.
    again = NotesDB(str(tmp_path / "n.db"), encoder=PlainEncoder())
    assert again.search_by_text("gamma delta", top_k=1)[0][0] == "2"
    _shut(again)


def test_an_encoder_is_named_by_model_name_or_its_own_attribute(tmp_path):
    given = _notes(tmp_path / "a.db", encoder=PlainEncoder(), model_name="acme/explicit")
    assert given.model_id == "acme/explicit"
    _shut(given)
    named = _notes(tmp_path / "b.db", encoder=NamedByAttribute())
    assert named.model_id == "acme/sentence-encoder-v2"
    _shut(named)
    hashing = _notes(tmp_path / "c.db", encoder=HashingEncoder(DIM))  # the suite's encoders
    assert hashing.model_id == f"hash:{DIM}"
    _shut(hashing)
    default = NotesDB(str(tmp_path / "d.db"))  # no encoder: the default model (not loaded)
    assert default.model_id == DEFAULT_MODEL
    _shut(default)
    from embeddable_db import get_encoder

    short = NotesDB(str(tmp_path / "d.db"), encoder=get_encoder("all-MiniLM-L6-v2"))
    assert short.model_id == DEFAULT_MODEL  # the short alias names the same vectors
    _shut(short)


def test_databases_do_not_name_an_unnamed_encoder_after_the_default(tmp_path):
    from embeddable_db.databases import BotDB

    db = BotDB(tmp_path / "bots.db", encoder=PlainEncoder(64))
    assert db.model_id.startswith("custom:") and db.model_id.endswith("PlainEncoder")
    db.close()


def test_store_recorded_under_the_default_name_by_a_custom_encoder_now_conflicts(tmp_path):
    """Stores made before the fix hold a custom encoder's vectors under MiniLM's name."""
    old = _notes(tmp_path / "old.db", encoder=PlainEncoder(), model_name=DEFAULT_MODEL)
    old.backfill_embeddings()
    assert old.model_counts() == {DEFAULT_MODEL: 3}
    _shut(old)
    before = _files(tmp_path)
    with pytest.raises(ModelConflictError) as caught:
        NotesDB(str(tmp_path / "old.db"), encoder=PlainEncoder())
    message = str(caught.value)
    # What to do: name the encoder as before (if it really is that model), or re-embed.
    assert f"model_name={DEFAULT_MODEL!r}" in message
    assert "allow_model_change=True" in message and "backfill_embeddings()" in message
    assert _files(tmp_path) == before


# --------------------------------------------------------------------------- item 29


class BrokenEncoder(PlainEncoder):
    model_name = "broken"

    def encode(self, texts, batch_size=None):
        raise RuntimeError("CUDA out of memory")


def test_encoder_failure_is_an_encoding_error_everywhere(tmp_path):
    db = _notes(tmp_path / "b.db", encoder=BrokenEncoder())
    calls = {
        "search_by_text": lambda: db.search_by_text("alpha"),
        "encode_text": lambda: db.encode_text("alpha"),
        "encode_texts": lambda: db.encode_texts(["alpha", "beta"]),
        "add_embedding": lambda: db.add_embedding(1, {"body": "alpha"}, "note"),
    }
    for name, call in calls.items():
        with pytest.raises(EncodingError, match="encoder failed: RuntimeError: CUDA out of") as caught:
            call()
        assert not isinstance(caught.value, ValueError), name  # not the caller's bad input
        causes, error = [], caught.value
        while error is not None:
            causes.append(type(error))
            error = error.__cause__
        assert RuntimeError in causes, name  # the original error is kept for debugging
    _shut(db)


# --------------------------------------------------------------------------- item 24

# What numpy would quietly turn into numbers, and what the query checks already refused.
BAD_OUTPUTS = [
    ("strings", lambda v: [[str(x) for x in row] for row in v], "str"),
    ("string array", lambda v: v.astype(str), "str"),
    ("complex", lambda v: v.astype(np.complex128) + 1j, "complex"),
    ("bool array", lambda v: v > 0, "bool"),
    ("a bool among floats", lambda v: [[True] + row.tolist()[1:] for row in v], "bool"),
    ("None", lambda v: [[None] + row.tolist()[1:] for row in v], "None"),
    ("objects", lambda v: v.astype(object) * 1, "object"),
    ("NaN", lambda v: np.where(np.arange(DIM) == 0, math.nan, v), "NaN"),
    ("inf", lambda v: np.where(np.arange(DIM) == 0, math.inf, v), "infinity"),
    ("zeros", lambda v: np.zeros_like(v), "all zeros"),
    ("wrong dimension", lambda v: v[:, :-1], f"{DIM - 1} dimensions"),
]


class Corrupting(HashingEncoder):
    """The hashing encoder, its output passed through ``corrupt``."""

    def __init__(self, corrupt):
        super().__init__(DIM)
        self.corrupt = corrupt

    def encode(self, texts, batch_size=None):
        return self.corrupt(super().encode(texts).astype(np.float64))


@pytest.mark.parametrize(("case", "corrupt", "message"), BAD_OUTPUTS, ids=[c[0] for c in BAD_OUTPUTS])
def test_encoder_output_and_query_vectors_obey_one_rule(tmp_path, case, corrupt, message):
    good = _notes(tmp_path / "n.db", encoder=HashingEncoder(DIM))
    good.backfill_embeddings()
    _shut(good)
    query = corrupt(HashingEncoder(DIM).encode(["alpha beta"]).astype(np.float64))
    query_row = query[0]  # the same corruption, as a query vector
    db = NotesDB(str(tmp_path / "n.db"), encoder=Corrupting(corrupt))
    before = _files(tmp_path)
    with pytest.raises(InvalidVectorError, match=message) as by_vector:
        db.search_by_vector(query_row)
    with pytest.raises(EncodingError, match=message) as by_text:
        db.search_by_text("alpha beta")
    assert str(by_vector.value) in str(by_text.value)  # the same words both ways
    db.add_note("a new note")
    result = db.backfill_embeddings()
    assert (result.embedded, result.failed) == (0, 1) and message.split()[0] in result.failures[0][1]
    assert db.model_counts() == {f"hash:{DIM}": 3}  # nothing of the bad output was stored
    _shut(db)

    def index_files(digest):  # the notes table itself changed: a note was added
        return {name: value for name, value in digest.items() if not name.startswith("n.db")}

    assert index_files(_files(tmp_path)) == index_files(before)


@pytest.mark.parametrize(
    "output",
    [
        lambda v: v.astype(np.float32),
        lambda v: v.astype(np.float16),
        lambda v: np.rint(v * 4).astype(np.int64),
        lambda v: v.tolist(),
        lambda v: [tuple(row) for row in v.tolist()],
        lambda v: [np.asarray(row) for row in v],
    ],
    ids=["float32", "float16", "int64", "lists", "tuples", "list of arrays"],
)
def test_real_numbers_are_accepted_both_ways(tmp_path, output):
    db = _notes(tmp_path / "n.db", encoder=Corrupting(output))
    assert db.backfill_embeddings().embedded == 3
    query = output(HashingEncoder(DIM).encode(["gamma delta"]).astype(np.float64))
    assert db.search_by_vector(query[0], top_k=1)[0][0] == "2"
    assert db.search_by_text("gamma delta", top_k=1)[0][0] == "2"
    _shut(db)


# --------------------------------------------------------------------------- item 12

_MISTYPED = """
import json, sys
sys.path.insert(0, {tests!r})
from conftest import NotesDB
from embeddable_db import encoder as enc
from embeddable_db.errors import BackendUnavailableError, EncodingError

attempts = []
real_find = enc.find_model
def counting_find(name):
    attempts.append(name)
    return real_find(name)
enc.find_model = counting_find

db = NotesDB({db!r}, model_name={name!r})
for i in range(5):
    db.add_note(f"note {{i}} about databases")
errors = []
for call in (db.backfill_embeddings, lambda: db.search_by_text("databases"),
             lambda: db.add_embedding(1, {{"body": "note"}}, "note")):
    try:
        call()
        errors.append(None)
    except (BackendUnavailableError, EncodingError) as exc:
        errors.append([type(exc).__name__, str(exc)])
heavy = sorted(m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules)
print(json.dumps({{"errors": errors, "attempts": attempts, "heavy": heavy,
                  "stored": db.embedding_count()}}))
db.close()
"""


@pytest.mark.parametrize("name", ["no-such-org/all-MiniLM-L6-v3", "all-MiniLM-L6-v3"])
def test_mistyped_model_name_fails_once_and_fast_offline(tmp_path, name):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "TRANSFORMERS_", "SENTENCE_TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9")  # offline: an empty cache, no network
    script = _MISTYPED.format(tests=str(Path(__file__).parents[1]), db=str(tmp_path / "n.db"),
                              name=name)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    first, *later = report["errors"]
    assert first is not None and first[0] == "ModelUnavailableError"
    message = first[1]
    assert repr(name) in message and "not installed" in message
    assert "hf download" in message and "model_name=" in message  # how to fix it
    for error in later:  # remembered: the same error at once, without a second attempt
        assert error is not None and error[0] == "ModelUnavailableError"
        assert repr(name) in error[1] and "not installed" in error[1]
    assert report["attempts"] == [name], "the model was looked for more than once"
    assert report["heavy"] == [], "torch was imported before the name was found to be wrong"
    assert report["stored"] == 0


def test_a_model_that_fails_to_load_is_not_loaded_again(tmp_path, monkeypatch):
    """A cached but broken model (or any load error): one attempt, then the same error."""
    from embeddable_db import encoder as enc
    from embeddable_db.errors import ModelUnavailableError

    monkeypatch.setattr(enc, "_failures", {})
    attempts = []

    def broken_load(self):
        attempts.append(self.model_name)
        raise OSError("Unable to load weights from pytorch checkpoint file")

    monkeypatch.setattr(enc.SentenceTransformerEncoder, "_load_model", broken_load)
    db = _notes(tmp_path / "n.db", model_name="acme/half-downloaded")
    for _ in range(2):
        with pytest.raises(ModelUnavailableError, match="'acme/half-downloaded' could not be loaded"):
            db.backfill_embeddings()
    with pytest.raises(EncodingError, match="Unable to load weights"):
        db.search_by_text("alpha")
    assert attempts == ["acme/half-downloaded"]
    assert db.embedding_count() == 0
    _shut(db)


# --------------------------------------------------------------------------- item 8

ONNX_TEXTS = [
    "hello",
    "How do I reset my password?",
    "Semantic search ranks rows by the cosine similarity of their embeddings.",
    "Ünïcödé: naïve café, 日本語のテキスト 🙂",
]


@pytest.fixture(scope="module")
def onnx_mod():
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    pytest.importorskip("onnx", reason="onnx is not installed")
    from embeddable_db import onnx_encoder

    return onnx_encoder


@pytest.fixture(scope="module")
def pristine_export(onnx_mod):
    """The verified export in the user cache, shared with tests/test_onnx_encoder.py: made
    (once, ~1 min) only when this machine has none that passes its integrity check."""
    path = onnx_mod.default_onnx_path()
    if onnx_mod.check_export(path) is not None:
        onnx_mod.export_onnx(out_path=path)
    return path


@pytest.fixture(scope="module")
def torch_vectors(real_encoder):
    return real_encoder.encode(ONNX_TEXTS)


def _export_files(mod, pristine):
    import json

    record = json.loads(mod.integrity_path(pristine).read_text())
    return [pristine.parent / name for name in record["files"]] + [mod.integrity_path(pristine)]


def _tmp_cache(mod, pristine, tmp_path, monkeypatch, *, record=True):
    """A copy of the pristine export in a cache folder of the test's own."""
    import shutil

    monkeypatch.setenv(mod.CACHE_ENV, str(tmp_path / "cache"))
    folder = mod.cache_dir()
    folder.mkdir(parents=True)
    for file in _export_files(mod, pristine):
        if record or not file.name.endswith(mod.INTEGRITY_SUFFIX):
            shutil.copy2(file, folder / file.name)
    path = mod.default_onnx_path()
    assert path.name == pristine.name
    return path


def _crafted_graph(mod, path):
    """A valid ONNX file that claims to be MiniLM and returns vectors of no meaning."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).normal(size=(1, 384)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["ids"], ["mean"], axes=[1], keepdims=1),
            helper.make_node("MatMul", ["mean", "w"], ["sentence_embedding"]),
        ],
        "crafted",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
         for name in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", 384])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = mod.METADATA_MODEL_NAME, DEFAULT_MODEL
    onnx.save(model, str(path))


def _change_weights(mod, path):
    data = next(path.parent.glob(f"{path.name}.*.data"))
    with open(data, "r+b") as handle:  # a valid file still, with other weights
        handle.seek(data.stat().st_size // 2)
        block = handle.read(1 << 16)
        handle.seek(-len(block), 1)
        handle.write(bytes(reversed(block)))


TAMPERINGS = {
    "weights changed": (_change_weights, "sha256 mismatch"),
    "graph swapped": (_crafted_graph, "sha256 mismatch"),
    "record missing": (lambda mod, path: mod.integrity_path(path).unlink(), "missing"),
}


@pytest.mark.model
@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_tampered_onnx_cache_is_exported_again(
    onnx_mod, pristine_export, torch_vectors, tmp_path, monkeypatch, caplog, tampering
):
    import logging
    import shutil

    from embeddable_db import onnx_export

    mod = onnx_mod
    path = _tmp_cache(mod, pristine_export, tmp_path, monkeypatch)
    tamper, reason = TAMPERINGS[tampering]
    tamper(mod, path)
    exports = []
    real_export = onnx_export.export_onnx

    def counted_export(model_dir=None, out_path=None, **options):
        exports.append(out_path)
        if tampering != "record missing":  # one real export per run is enough: copy the rest
            for file in _export_files(mod, pristine_export):
                shutil.copy2(file, path.parent / file.name)
            return path
        return real_export(model_dir, out_path, **options)

    # Where the first-use export looks it up: a patch on the name re-exported by onnx_encoder
    # would not reach it.
    monkeypatch.setattr(onnx_export, "export_onnx", counted_export)
    with caplog.at_level(logging.WARNING, logger=mod.__name__):
        encoder = mod.OnnxEncoder(threads=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot be trusted" in warnings[0], warnings
    assert reason in warnings[0] and "exporting it again" in warnings[0]
    assert exports == [path]
    assert encoder.model_name == DEFAULT_MODEL and encoder.onnx_path == path
    cosines = (encoder.encode(ONNX_TEXTS) * torch_vectors).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines
    assert mod.check_export(path) is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=mod.__name__):
        mod.OnnxEncoder(threads=1)  # trusted now: no warning, no export
    assert not caplog.records and len(exports) == 1
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.model
def test_onnx_file_claiming_the_torch_model_without_a_record_is_not_believed(
    onnx_mod, pristine_export, tmp_path, monkeypatch, caplog
):
    import logging

    mod = onnx_mod
    unverified = _tmp_cache(mod, pristine_export, tmp_path, monkeypatch, record=False)
    with caplog.at_level(logging.WARNING, logger=mod.__name__):
        encoder = mod.OnnxEncoder(onnx_path=unverified, threads=1)
    assert encoder.model_name == f"{DEFAULT_MODEL}@onnx:{unverified.stem}"
    assert "not a verified export" in caplog.text and "export_onnx()" in caplog.text
    crafted = tmp_path / "crafted.onnx"
    _crafted_graph(mod, crafted)
    assert mod.OnnxEncoder(onnx_path=crafted, threads=1).model_name != DEFAULT_MODEL
    # With its record, the same file is the torch model again.
    verified = mod.OnnxEncoder(onnx_path=pristine_export, threads=1)
    assert verified.model_name == DEFAULT_MODEL


def test_missing_model_folder_is_named(tmp_path):
    from embeddable_db.errors import ModelUnavailableError

    folder = tmp_path / "models" / "my-fine-tuned-model"
    db = _notes(tmp_path / "n.db", model_name=str(folder))
    with pytest.raises(ModelUnavailableError, match="there is no folder") as caught:
        db.search_by_text("alpha")
    assert str(folder) in str(caught.value) and "model_name=" in str(caught.value)
    _shut(db)
