"""encoding.py on its own: no database, no files, fake encoders (never the real model)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embeddable_db import encoding
from embeddable_db.encoding import (
    Encoding,
    Pending,
    as_encoding_error,
    canonical,
    check_same_dimension,
    fingerprint,
    fingerprint_of,
    fingerprinted,
)
from embeddable_db.errors import (
    DimensionMismatchError,
    EmbeddingError,
    EncodingError,
    InvalidInputError,
    InvalidVectorError,
    ModelUnavailableError,
)
from embeddable_db.validation import MAX_ENCODED_CHARS

SRC = Path(__file__).resolve().parents[1] / "src"


class FakeEncoder:
    """Encodes a text as a one-hot vector of its length; records every call; fails on "bad"."""

    def __init__(self, dim: int = 4, fail_on: str | None = None, error: Exception | None = None):
        self.dim, self.fail_on, self.error = dim, fail_on, error
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        if self.fail_on is not None and self.fail_on in texts:
            raise self.error or RuntimeError(f"cannot encode {self.fail_on!r}")
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            out[row, len(text) % self.dim] = 2.0  # not unit length: encode_texts normalises
        return out


def pend(key: str, text: str | None, record=None, source_id: str = "") -> Pending:
    return Pending(key, record if record is not None else {"text": text}, "note", source_id,
                   fingerprint_of(text or key), text)


# -- the lazy encoder --------------------------------------------------------------------------
def test_the_model_is_loaded_at_the_first_encode_and_once(monkeypatch):
    loads = []

    def load(name, backend="torch"):
        loads.append((name, backend))
        return FakeEncoder()

    monkeypatch.setattr(encoding, "get_encoder", load)
    enc = Encoding("some-model", "onnx", "some-model")
    assert loads == []  # constructing loads nothing
    enc.encode_texts(["a"], None)
    enc.encode_texts(["b"], 4)
    assert enc.encoder is enc.encoder
    assert loads == [("some-model", "onnx")]


def test_a_given_encoder_is_used_and_nothing_is_loaded(monkeypatch):
    monkeypatch.setattr(encoding, "get_encoder", lambda *a, **k: pytest.fail("loaded a model"))
    fake = FakeEncoder()
    enc = Encoding("ignored", "torch", "custom", fake)
    assert enc.encoder is fake and enc.model_id == "custom"
    enc.encode_texts(["x"], None)
    assert fake.calls == [["x"]]


# -- encode_texts ----------------------------------------------------------------------------
def test_encode_texts_returns_unit_float32_rows_in_one_call():
    fake = FakeEncoder()
    vectors = Encoding("m", "torch", "m", fake).encode_texts(["a", "bb", b"ccc"], None)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 4)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    assert fake.calls == [["a", "bb", "ccc"]]  # bytes decoded, one model call


def test_encode_texts_of_nothing_calls_no_model():
    fake = FakeEncoder()
    enc = Encoding("m", "torch", "m", fake)
    assert enc.encode_texts([], None).shape == (0, 0)
    assert enc.encode_texts([], 7).shape == (0, 7)
    assert fake.calls == []


def test_long_texts_are_cut_before_the_model():
    fake = FakeEncoder()
    Encoding("m", "torch", "m", fake).encode_texts(["x" * (MAX_ENCODED_CHARS + 50)], None)
    assert len(fake.calls[0][0]) == MAX_ENCODED_CHARS


@pytest.mark.parametrize("bad", [None, "", "   ", 12, ["a"]])
def test_bad_texts_are_refused_before_the_model(bad):
    fake = FakeEncoder()
    with pytest.raises(InvalidInputError):
        Encoding("m", "torch", "m", fake).encode_texts(["fine", bad], None)
    assert fake.calls == []


def test_a_lone_string_is_refused_not_iterated():
    with pytest.raises(InvalidInputError, match="must be a list"):
        Encoding("m", "torch", "m", FakeEncoder()).encode_texts("abc", None)


def test_the_encoders_own_failure_is_an_encoding_error_with_its_cause():
    boom = RuntimeError("CUDA out of memory")
    enc = Encoding("m", "torch", "m", FakeEncoder(fail_on="x", error=boom))
    with pytest.raises(EncodingError, match="the encoder failed: RuntimeError: CUDA out") as err:
        enc.encode_texts(["x"], None)
    assert err.value.__cause__ is boom


def test_an_embedding_error_from_the_encoder_keeps_its_type():
    missing = ModelUnavailableError("model not downloaded: run ...")
    enc = Encoding("m", "torch", "m", FakeEncoder(fail_on="x", error=missing))
    with pytest.raises(ModelUnavailableError) as err:
        enc.encode_texts(["x"], None)
    assert err.value is missing


class Returns:
    def __init__(self, value):
        self.value = value

    def encode(self, texts):
        return self.value


@pytest.mark.parametrize(
    "output, message",
    [
        (np.array([[1.0, np.nan]]), "unusable vectors"),
        (np.zeros((1, 3)), "unusable vectors"),
        (np.array([1.0, 2.0]), "unusable vectors"),  # 1-D: not one row per text
        ([["a", "b"]], "unusable vectors"),
        (np.ones((2, 3)), "returned 2 vectors for 1 texts"),
    ],
)
def test_unusable_encoder_output_is_an_encoding_error(output, message):
    with pytest.raises(EncodingError, match=message):
        Encoding("m", "torch", "m", Returns(output)).encode_texts(["one"], None)


def test_output_of_another_dimension_than_the_store_is_an_encoding_error():
    enc = Encoding("m", "torch", "model-m", FakeEncoder(dim=4))
    assert enc.encode_texts(["a"], 4).shape == (1, 4)
    with pytest.raises(EncodingError, match="8-dimensional vectors of model model-m"):
        enc.encode_texts(["a"], 8)


def test_as_encoding_error():
    ours = InvalidInputError("bad")
    assert as_encoding_error(ours) is ours
    theirs = OSError("disk")
    wrapped = as_encoding_error(theirs)
    assert isinstance(wrapped, EncodingError) and wrapped.__cause__ is theirs
    assert str(wrapped) == "the encoder failed: OSError: disk"


# -- fingerprints ------------------------------------------------------------------------------
def test_fingerprints_are_the_sha256_already_stored():
    """Stored text hashes depend on these exact values: a change would re-embed every record."""
    assert fingerprint_of("héllo") == hashlib.sha256("héllo".encode()).hexdigest()
    assert fingerprint({"body": "some text"}, lambda r: r["body"]) == (
        fingerprint_of("some text"), "some text"
    )
    digest, text = fingerprint({"b": 1, "a": "é"}, None)
    assert text is None
    assert digest == hashlib.sha256('{"a": "é", "b": 1}'.encode()).hexdigest()


@dataclasses.dataclass
class Item:
    a: str
    b: int


def test_canonical_is_the_same_for_a_dict_a_dataclass_and_a_row():
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT 'x' AS a, 2 AS b").fetchone()
    expected = json.dumps({"a": "x", "b": 2}, sort_keys=True)
    assert canonical({"b": 2, "a": "x"}) == canonical(Item("x", 2)) == canonical(row) == expected
    assert canonical(("x", 2)) == repr(("x", 2))
    assert canonical({"when": Path("/a")}) == '{"when": "/a"}'  # default=str


def test_a_bad_embedding_text_is_refused():
    with pytest.raises(InvalidInputError, match="text is empty"):
        fingerprint({"body": " "}, lambda r: r["body"])


def test_fingerprinted_reports_the_records_that_fail_and_keeps_the_rest():
    def text_of(record):
        if record == "boom":
            raise KeyError("body")
        return record

    items = [("1", "one", "note", "s1"), ("2", "boom", "note", ""), ("3", "three", "doc", "")]
    pending, failures = fingerprinted(items, text_of)
    assert [p.key for p in pending] == ["1", "3"]
    assert pending[0] == Pending("1", "one", "note", "s1", fingerprint_of("one"), "one")
    assert [(key, type(error)) for key, error in failures] == [("2", KeyError)]


def test_pending_is_named_and_frozen():
    item = pend("k", "text", source_id="src")
    assert (item.key, item.kind, item.source_id, item.text) == ("k", "note", "src", "text")
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.text = "other"


# -- isolating a failing record ----------------------------------------------------------------
def test_a_good_batch_is_one_model_call():
    fake = FakeEncoder()
    failures = []
    vectors = Encoding("m", "torch", "m", fake).vectors([pend("1", "a"), pend("2", "bb")], None,
                                                        failures)
    assert failures == [] and len(fake.calls) == 1
    assert [int(np.argmax(v)) for v in vectors] == [1, 2]


def test_the_record_that_breaks_a_batch_is_isolated():
    fake = FakeEncoder(fail_on="bad")
    failures = []
    items = [pend("1", "a"), pend("2", "bad"), pend("3", "ccc")]
    vectors = Encoding("m", "torch", "m", fake).vectors(items, None, failures)
    assert vectors[1] is None and vectors[0] is not None and vectors[2] is not None
    assert [key for key, _ in failures] == ["2"]
    assert isinstance(failures[0][1], EncodingError) and "cannot encode 'bad'" in str(failures[0][1])
    assert fake.calls == [["a", "bad", "ccc"], ["a"], ["bad"], ["ccc"]]
    alone = Encoding("m", "torch", "m", FakeEncoder()).encode_texts(["a"], None)[0]
    np.testing.assert_array_equal(vectors[0], alone)


def test_a_lone_record_that_fails_is_not_encoded_twice():
    fake = FakeEncoder(fail_on="bad")
    failures = []
    assert Encoding("m", "torch", "m", fake).vectors([pend("9", "bad")], None, failures) == [None]
    assert [key for key, _ in failures] == ["9"] and len(fake.calls) == 1


def test_no_model_fails_the_whole_batch_at_once():
    fake = FakeEncoder(fail_on="a", error=ModelUnavailableError("no model"))
    failures = []
    with pytest.raises(ModelUnavailableError):
        Encoding("m", "torch", "m", fake).vectors([pend("1", "a"), pend("2", "b")], None, failures)
    assert len(fake.calls) == 1 and failures == []


def test_vectors_from_the_subclass_are_checked_one_by_one():
    records = {"1": [3.0, 4.0], "2": [0.0, 0.0], "3": "nope", "4": [1.0, 0.0, 0.0]}

    def vector_of(record):
        if record == "raise":
            raise LookupError("no vector stored")
        return records[record]

    items = [Pending(key, key, "v", "", fingerprint_of(key), None) for key in records]
    items.append(Pending("5", "raise", "v", "", "d", None))
    failures = []
    vectors = Encoding("m", "torch", "m", FakeEncoder()).vectors(items, 2, failures, vector_of)
    np.testing.assert_allclose(vectors[0], [0.6, 0.8], rtol=1e-6)
    assert vectors[0].dtype == np.float32 and vectors[1:] == [None] * 4
    kinds = {key: type(error) for key, error in failures}
    assert kinds == {"2": InvalidVectorError, "3": InvalidVectorError,
                     "4": DimensionMismatchError, "5": LookupError}  # not wrapped: the subclass's


def test_check_same_dimension():
    a, b = np.ones(3, np.float32), np.ones(4, np.float32)
    check_same_dimension([a, a], None, "m")
    check_same_dimension([a, b], 3, "m")  # a store with a dimension checks each row itself
    check_same_dimension([], None, "m")
    with pytest.raises(DimensionMismatchError, match=r"different dimensions \[3, 4\]"):
        check_same_dimension([a, b], None, "m")
    with pytest.raises(EmbeddingError, match="vectors of model 'big'"):
        check_same_dimension([np.ones(70_000, np.float32)], None, "big")


def test_encoding_needs_no_database_lock_or_file_module():
    """The module knows nothing of SQLite, locks or files: importing it loads none of them."""
    code = (
        "import sys, embeddable_db.encoding\n"
        "print(sorted(m for m in ('filelock', 'embeddable_db.mixin',\n"
        "    'embeddable_db.handle', 'embeddable_db.files', 'embeddable_db.engine',\n"
        "    'embeddable_db.engine.sqlite.store', 'embeddable_db.backends', 'torch')\n"
        "    if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == "[]"
