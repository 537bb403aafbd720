"""Encoding: one store's encoder, the identity of its vectors, and the fingerprints of records.

This module owns what turns records into checked vectors:

- the encoder, loaded on first use (opening a store must not load a model it may never call);
- ``encode_texts``: the conversion and checks of an encoder's output, with the encoder's own
  failures (not bad input) raised as ``EncodingError`` whoever calls it;
- the model identity every vector is checked against, so vectors of two models never mix;
- the fingerprint stored beside a vector, to notice that a record changed: the hash of its
  text when the subclass has ``embedding_text``, else of a stable text of the record itself;
- isolating the record that fails in a batch, so one bad record is reported and the rest kept.

It knows nothing of SQLite, locks or files (``sqlite3.Row`` is named only as a record type a
subclass may yield): the mixin decides when to encode and writes what comes back. So encoding
can run outside the store's lock, and it is tested without a database (tests/test_encoding.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import validation as check
from .encoder import get_encoder
from .errors import EmbeddingError, EncodingError, InvalidInputError, ModelUnavailableError
from .rows import VectorRow

#: (record key, why it could not be embedded): one record's failure, reported, never fatal.
Failure = tuple[str, Exception]


@dataclass(frozen=True, slots=True)
class Pending:
    """A record about to be embedded, fingerprinted once: ``digest`` is stored beside its
    vector, ``text`` is what gets encoded (None when the subclass supplies ``vector()``)."""

    key: str
    record: Any
    kind: str
    source_id: str
    digest: str
    text: str | None


def fingerprint_of(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def canonical(record: Any) -> str:
    """A stable text for records embedded through ``vector()``, to notice when they change.

    Stored fingerprints depend on it: changing it re-embeds every such record."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        record = dataclasses.asdict(record)
    elif isinstance(record, sqlite3.Row):
        record = {key: record[key] for key in record.keys()}
    if isinstance(record, Mapping):
        return json.dumps(dict(record), sort_keys=True, default=str, ensure_ascii=False)
    return repr(record)


def fingerprint(record: Any, text_of: Callable[[Any], Any] | None) -> tuple[str, str | None]:
    """(hash of what the vector is made from, the text to encode or None).

    ``text_of`` is the subclass's ``embedding_text``, or None when it has none: then the record
    itself is hashed, and its vector comes from ``vector()``."""
    if text_of is None:
        return fingerprint_of(canonical(record)), None
    text = text_of(record)
    if type(text) is str and not text.isspace() and text:  # a backfill's common case, checked
        try:  # by the one encode the hash needs (check_text would encode it once more)
            return hashlib.sha256(text.encode("utf-8")).hexdigest(), text
        except UnicodeEncodeError:
            pass  # check_text says what is wrong
    text = check.check_text(text)
    return fingerprint_of(text), text


def fingerprinted(
    items: Iterable[tuple[str, Any, str, str]], text_of: Callable[[Any], Any] | None
) -> tuple[list[Pending], list[Failure]]:
    """``Pending`` items for checked (key, record, kind, source_id); a record whose text cannot
    be had (``embedding_text`` raised or returned no text) is a failure, not fatal."""
    pending: list[Pending] = []
    failures: list[Failure] = []
    for key, record, kind, source_id in items:
        try:
            digest, text = fingerprint(record, text_of)
        except Exception as exc:  # noqa: BLE001 - one bad record is reported, not fatal
            failures.append((key, exc))
            continue
        pending.append(Pending(key, record, kind, source_id, digest, text))
    return pending, failures


def raise_first(failures: Sequence[Failure]) -> None:
    """Raise the first failure as the error a caller of ``add_embeddings`` gets, naming the
    record: all or nothing there, where backfill reports failures and goes on."""
    if not failures:
        return
    key, error = failures[0]
    if isinstance(error, EmbeddingError):
        raise type(error)(f"record {key!r}: {error}") from error
    # The subclass's embedding_text()/vector() failed on this record.
    raise InvalidInputError(
        f"record {key!r} could not be embedded: {type(error).__name__}: {error}"
    ) from error


def as_encoding_error(error: Exception) -> Exception:
    """The encoder's own failures (not bad input) keep a type that says so."""
    if isinstance(error, EmbeddingError):
        return error
    wrapped = EncodingError(f"the encoder failed: {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


def check_same_dimension(vectors: Sequence[np.ndarray], dim: int | None, model_id: str) -> None:
    """A store without vectors yet takes its dimension from the first batch: every vector of
    that batch must have the same one, and it must be a usable size."""
    if dim is None and len(vectors):
        dims = {vector.shape[0] for vector in vectors}
        if len(dims) > 1:
            raise check.DimensionMismatchError(
                f"vectors of different dimensions {sorted(dims)} in one batch"
            )
        check.check_dimension(dims.pop(), f"the vectors of model {model_id!r}")


class Encoding:
    """A store's encoder (given, or the shared model of ``model_name`` loaded on first use)
    and the model identity its vectors are recorded under. ``dim`` arguments are the store's
    dimension (None until it holds vectors): the encoder's output must match it."""

    def __init__(
        self, model_name: str, model_backend: str, model_id: str, encoder: Any | None = None
    ) -> None:
        self.model_name = model_name
        self.model_backend = model_backend
        self.model_id = model_id
        self._encoder = encoder

    @property
    def encoder(self) -> Any:
        """The encoder in use; the shared model is only loaded when it first encodes."""
        if self._encoder is None:
            self._encoder = get_encoder(self.model_name, backend=self.model_backend)
        return self._encoder

    def encode_texts(self, texts: Iterable[Any], dim: int | None) -> np.ndarray:
        """Encode texts in one model call: an (n, dim) float32 array of unit vectors."""
        texts = [
            check.check_text(text)[: check.MAX_ENCODED_CHARS] for text in check.many(texts, "texts")
        ]
        if not texts:
            return np.empty((0, dim or 0), np.float32)
        try:
            raw = self.encoder.encode(texts)
            vectors = check.check_rows(raw, dim, self.model_id)
        except check.InvalidVectorError as exc:  # the encoder's output, not the caller's input
            raise EncodingError(f"the encoder returned unusable vectors: {exc}") from exc
        except EmbeddingError:
            raise
        except Exception as exc:  # noqa: BLE001 - the same error type from every caller
            raise as_encoding_error(exc) from exc
        if vectors.shape[0] != len(texts):
            raise EncodingError(
                f"the encoder returned {vectors.shape[0]} vectors for {len(texts)} texts; "
                "encode(list[str]) must return one row per text"
            )
        return vectors

    def rows(
        self,
        pending: Sequence[Pending],
        dim: int | None,
        version: int,
        failures: list[Failure],
        vector_of: Callable[[Any], Any] | None = None,
    ) -> list[VectorRow]:
        """``VectorRow``s for the items that could be embedded (see ``vectors``)."""
        vectors = self.vectors(pending, dim, failures, vector_of)
        rows = [
            VectorRow(
                p.key, p.kind, p.source_id, vector, p.digest, self.model_id, version, p.text
            )
            for p, vector in zip(pending, vectors, strict=True)
            if vector is not None
        ]
        check_same_dimension([row.vector for row in rows], dim, self.model_id)
        return rows

    def vectors(
        self,
        pending: Sequence[Pending],
        dim: int | None,
        failures: list[Failure],
        vector_of: Callable[[Any], Any] | None = None,
    ) -> list[np.ndarray | None]:
        """One checked vector per pending item, None where it failed (added to ``failures``).

        Without ``vector_of`` the items' texts are encoded in one model call; with it (the
        subclass's ``vector()``), each record's vector is asked for and checked on its own."""
        if vector_of is None:
            return self._encode_isolating(pending, dim, failures)
        vectors: list[np.ndarray | None] = []
        for item in pending:
            try:
                vectors.append(check.check_vector(vector_of(item.record), dim, self.model_id))
            except Exception as exc:  # noqa: BLE001 - the subclass's vector() failed on it
                failures.append((item.key, exc))
                vectors.append(None)
        return vectors

    def _encode_isolating(
        self, pending: Sequence[Pending], dim: int | None, failures: list[Failure]
    ) -> list[np.ndarray | None]:
        """One model call for the batch; if it fails, encode one by one to find the culprit."""
        texts = [item.text for item in pending]
        try:
            return list(self.encode_texts(texts, dim))
        except ModelUnavailableError:
            raise  # no model: every text would fail the same way, so the whole call does
        except Exception as batch_error:  # noqa: BLE001
            if len(texts) == 1:
                failures.append((pending[0].key, as_encoding_error(batch_error)))
                return [None]
        vectors: list[np.ndarray | None] = []
        for item in pending:
            try:
                vectors.append(self.encode_texts([item.text], dim)[0])
            except Exception as exc:  # noqa: BLE001
                failures.append((item.key, as_encoding_error(exc)))
                vectors.append(None)
        return vectors
