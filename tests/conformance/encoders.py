"""Fake encoders for the conformance suite, made by name so that a child process can make the
same one: ``hash:<dim>`` (the library's hashing encoder, recording what it encoded) and
``vectors:<dim>`` (the text *is* the vector, as JSON: tests choose exact vectors through the
public text API, which every engine has)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from embeddable_db import HashingEncoder


class RecordingHashEncoder(HashingEncoder):
    """``hash:<dim>``: counts model calls (``calls``) and keeps every text it encoded."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__(dim)
        self.texts: list[str] = []

    def encode(self, texts, batch_size=None):
        self.texts.extend(texts)
        return super().encode(texts, batch_size)


class VectorTextEncoder:
    """``vectors:<dim>``: each text is a JSON list of ``dim`` floats, returned as float32."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.model_name = f"vectors:{dim}"
        self.calls = 0
        self.texts: list[str] = []

    def encode(self, texts, batch_size=None):
        self.calls += 1
        self.texts.extend(texts)
        return np.array([json.loads(text) for text in texts], np.float32).reshape(len(texts), self.dim)


def make_encoder(name: str):
    """A fresh fake encoder from its name (``hash:64``, ``vectors:16``)."""
    kind, _, dim = name.partition(":")
    if kind == "hash":
        return RecordingHashEncoder(int(dim))
    if kind == "vectors":
        return VectorTextEncoder(int(dim))
    raise ValueError(f"unknown fake encoder {name!r}")


def vector_text(vector: Sequence[float]) -> str:
    """The text that ``VectorTextEncoder`` turns into exactly ``vector`` (as float32)."""
    return json.dumps([float(x) for x in np.asarray(vector, np.float32)])


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` seeded random unit vectors, float32."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
