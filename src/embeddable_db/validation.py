"""Checks on everything a caller hands in, done before anything is written.

Each failure raises an ``InvalidInputError`` (a ``ValueError``) that names the problem and
what to do, so bad input never reaches SQLite or an index.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .errors import DimensionMismatchError, InvalidInputError, InvalidVectorError
from .rows import VectorRow

_FLOAT32 = np.dtype(np.float32)
MAX_ID_CHARS = 1024
_ID_LIMIT = 10**MAX_ID_CHARS  # ints of more digits are refused (str() of them is slow)
# Kinds name tables or record types; 1 MB "kinds" were accepted and stored in every row.
MAX_KIND_CHARS = 256
MAX_SOURCE_ID_CHARS = MAX_ID_CHARS
# SQLite INTEGER is signed 64-bit: a larger embedding_version failed at bind time, mid-write.
MAX_EMBEDDING_VERSION = 2**63 - 1
# all-MiniLM-L6-v2 has 384 dimensions, the largest common models 4,096; "hash:10000000000"
# would allocate 37 GiB per record before anything could refuse it.
MAX_DIMENSION = 65_536
# The default model reads at most 256 tokens (~1,500 characters); cutting far beyond that
# only spares the tokenizer from megabytes of text. The hash still covers the whole text.
MAX_ENCODED_CHARS = 20_000


def record_key(record_id: Any) -> str:
    """Record ids are stored as strings: ints and non-empty strings are accepted."""
    kind = type(record_id)  # the common cases first: a backfill asks once per record
    if kind is int and -_ID_LIMIT < record_id < _ID_LIMIT:
        return str(record_id)
    if kind is str and 0 < len(record_id) <= MAX_ID_CHARS and not record_id.isspace():
        _check_unicode(record_id, "record_id")
        return record_id
    if isinstance(record_id, bool) or record_id is None:
        raise InvalidInputError(f"record_id must be a str or int, got {record_id!r}")
    if isinstance(record_id, numbers.Integral):
        if abs(int(record_id)) >= 10**MAX_ID_CHARS:  # str() of it would fail or be too long
            raise InvalidInputError(f"record_id has more than {MAX_ID_CHARS} digits")
        return str(int(record_id))
    if isinstance(record_id, str):
        if not record_id.strip():
            raise InvalidInputError("record_id is empty: give each record a non-empty id")
        if len(record_id) > MAX_ID_CHARS:
            raise InvalidInputError(f"record_id is longer than {MAX_ID_CHARS} characters")
        _check_unicode(record_id, "record_id")
        return record_id
    raise InvalidInputError(
        f"record_id must be a str or int, got {type(record_id).__name__}: {record_id!r}"
    )


def many(values: Any, what: str) -> list[Any]:
    """A list from an iterable argument; a lone str, bytes or None is refused, not iterated
    (``remove_embeddings("12")`` must not remove records "1" and "2")."""
    if values is None or isinstance(values, str | bytes | bytearray) or not isinstance(
        values, Iterable
    ):
        raise InvalidInputError(
            f"{what} must be a list (or other iterable), got {type(values).__name__}: "
            f"{_short(values)}"
        )
    return list(values)


def record_keys(record_ids: Any) -> list[str]:
    return [record_key(record_id) for record_id in many(record_ids, "record_ids")]


def check_ids(ids: Any) -> list[str] | None:
    """A search's ``ids=`` filter: None (no filter) or the distinct keys of an iterable of
    record ids (``ids="12"`` is refused: it would search records "1" and "2")."""
    if ids is None:
        return None
    if isinstance(ids, str | bytes | bytearray) or not isinstance(ids, Iterable):
        raise InvalidInputError(
            f"ids must be a list (or other iterable) of record ids, got "
            f"{type(ids).__name__}: {_short(ids)}; for one record pass [{_short(ids)}]"
        )
    return list(dict.fromkeys(record_key(record_id) for record_id in ids))


def check_items(items: Any) -> list[tuple[Any, Any, Any]]:
    """``add_embeddings`` items: (record_id, record, kind) triples."""
    checked = []
    for item in many(items, "items"):
        if isinstance(item, str | bytes) or not isinstance(item, tuple | list) or len(item) != 3:
            raise InvalidInputError(
                f"each item must be a (record_id, record, kind) tuple, got {_short(item)}"
            )
        checked.append(tuple(item))
    return checked


def unique_rows(rows: list[Any], kinds: tuple[str, ...] | None) -> list[VectorRow]:
    """Rows for ``store_embeddings``, checked again (a caller may build or change them) and
    one per record id: an id given twice keeps its last row, in that row's place."""
    latest: dict[str, VectorRow] = {}
    for row in rows:
        if not isinstance(row, VectorRow):
            raise InvalidInputError("store_embeddings takes the rows prepare_embeddings returns")
        if not _clean_row(row, kinds):
            row = _checked_row(row, kinds)
        latest.pop(row.record_id, None)
        latest[row.record_id] = row
    return list(latest.values())


def _clean_row(row: VectorRow, kinds: tuple[str, ...] | None) -> bool:
    """True for a row as ``prepare_embeddings`` makes them (ASCII ids): ~1 µs instead of ~10."""
    rid, kind, source, version, vector = (
        row.record_id, row.kind, row.source_id, row.embedding_version, row.vector
    )
    return (
        type(rid) is str and type(kind) is str and type(source) is str and type(version) is int
        and 0 < len(rid) <= MAX_ID_CHARS and 0 < len(kind) <= MAX_KIND_CHARS
        and len(source) <= MAX_SOURCE_ID_CHARS and 1 <= version <= MAX_EMBEDDING_VERSION
        and rid.isascii() and kind.isascii() and source.isascii()
        and not rid.isspace() and not kind.isspace() and (kinds is None or kind in kinds)
        and type(vector) is np.ndarray and vector.ndim == 1
        and 1 <= vector.shape[0] <= MAX_DIMENSION
    )


def _checked_row(row: VectorRow, kinds: tuple[str, ...] | None) -> VectorRow:
    fields = {
        "record_id": record_key(row.record_id),
        "kind": check_kind(row.kind, kinds),
        "source_id": check_source_id(row.source_id),
        "embedding_version": check_embedding_version(row.embedding_version),
    }
    if not isinstance(row.vector, np.ndarray) or row.vector.ndim != 1:
        raise InvalidVectorError("a row's vector must be a 1-D array: prepare the rows again")
    check_dimension(row.vector.shape[0], "a row's vector")
    if any(getattr(row, name) != value for name, value in fields.items()):
        row = dataclasses.replace(row, **fields)
    return row


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_kind(kind: Any, allowed: tuple[str, ...] | None = None) -> str:
    if allowed is not None and type(kind) is str and kind in allowed:  # the common case
        return kind
    if not isinstance(kind, str) or not kind.strip():
        raise InvalidInputError(f"kind must be a non-empty str, got {_short(kind)}")
    if allowed is not None:
        raise InvalidInputError(f"unknown kind {_short(kind)}: choose one of {', '.join(allowed)}")
    if len(kind) > MAX_KIND_CHARS:
        raise InvalidInputError(
            f"kind is {len(kind)} characters long; kinds name a table or record type: "
            f"keep them under {MAX_KIND_CHARS + 1}"
        )
    _check_unicode(kind, "kind")
    return kind


def check_source_id(source_id: Any) -> str:
    """A vector's ``source_id`` is stored as a string ("" when None), checked like an id."""
    if source_id is None:
        return ""
    if isinstance(source_id, numbers.Integral) and not isinstance(source_id, bool):
        if abs(int(source_id)) >= 10**MAX_SOURCE_ID_CHARS:
            raise InvalidInputError(f"source_id has more than {MAX_SOURCE_ID_CHARS} digits")
        return str(int(source_id))
    try:
        text = source_id if isinstance(source_id, str) else str(source_id)
    except Exception as exc:  # noqa: BLE001 - any object is str()-ed; its failure is bad input
        raise InvalidInputError(
            f"source_id cannot be turned into a str ({type(exc).__name__}: {exc})"
        ) from exc
    if len(text) > MAX_SOURCE_ID_CHARS:
        raise InvalidInputError(f"source_id is longer than {MAX_SOURCE_ID_CHARS} characters")
    _check_unicode(text, "source_id")
    return text


def check_embedding_version(version: Any) -> int:
    """A positive int that fits SQLite's INTEGER."""
    if isinstance(version, bool) or not isinstance(version, numbers.Integral) or version < 1:
        raise InvalidInputError(f"embedding_version must be a positive int, got {_short(version)}")
    if version > MAX_EMBEDDING_VERSION:
        raise InvalidInputError(
            f"embedding_version must be at most 2**63 - 1 (SQLite's largest integer), "
            f"got {_short(version)}: count versions 1, 2, 3, ..."
        )
    return int(version)


def check_dimension(dim: Any, what: str) -> int:
    """A vector dimension the store can hold: 2 to ``MAX_DIMENSION``."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or not (
        1 <= dim <= MAX_DIMENSION
    ):
        raise InvalidInputError(
            f"{what}: dimension {_short(dim)} is out of range; this library holds vectors of "
            f"1 to {MAX_DIMENSION:,} dimensions"
        )
    return int(dim)


def check_top_k(top_k: Any, what: str = "top_k") -> int:
    if type(top_k) is int and top_k >= 1:  # the common case, without the ABC check
        return top_k
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
        raise InvalidInputError(f"{what} must be a positive int, got {top_k!r}")
    return int(top_k)


def check_fusion(weights: Any, rrf_k: Any, adaptive: Any) -> tuple[tuple[float, float], float]:
    """Hybrid search's ``weights`` (keyword, vector: two finite numbers >= 0, not both 0),
    ``rrf_k`` (a finite number >= 0) and ``adaptive`` (a bool)."""
    def number(value: Any) -> bool:
        return (not isinstance(value, bool) and isinstance(value, numbers.Real)
                and math.isfinite(value) and value >= 0)

    if (
        not isinstance(weights, tuple | list) or len(weights) != 2
        or not all(number(w) for w in weights) or not any(weights)
    ):
        raise InvalidInputError(
            f"weights must be (keyword weight, vector weight): two numbers >= 0, not both 0; "
            f"got {_short(weights)}"
        )
    if not number(rrf_k):
        raise InvalidInputError(f"rrf_k must be a number >= 0 (e.g. 10 or 60), got {rrf_k!r}")
    if not isinstance(adaptive, bool):
        raise InvalidInputError(f"adaptive must be True or False, got {adaptive!r}")
    return (float(weights[0]), float(weights[1])), float(rrf_k)


def check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or (
        batch_size < 1
    ):
        raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def check_text(text: Any) -> str:
    """Text to encode: a non-empty str (UTF-8 bytes are decoded)."""
    if text is None:
        raise InvalidInputError("text is None: pass a non-empty string")
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(
                f"text is not valid UTF-8 ({exc.reason} at byte {exc.start}): decode it first"
            ) from exc
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInputError("text is empty: there is nothing to embed")
    _check_unicode(text, "text")
    return text


def check_query(text: Any) -> str:
    """A keyword query: a str with something besides white space (any characters)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"a keyword query must be a str, got {_short(text)}")
    if not text.strip():
        raise InvalidInputError("the keyword query is empty: give the words to search for")
    _check_unicode(text, "the keyword query")
    return text


def _check_unicode(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{what} contains characters that are not valid Unicode ({exc.reason})"
        ) from exc


def check_rows(matrix: Any, dim: int | None, model: str | None = None) -> np.ndarray:
    """The rows of a 2-D array (an encoder's output) as ``check_vector`` returns them.

    The same rule as ``check_vector``, checked as one matrix (a backfill batch: a few µs a row
    instead of ~19): what ``check_vector`` refuses in a row is refused here with its message.
    """
    matrix = _real_numbers(matrix)
    if matrix.dtype != _FLOAT32:  # float16 would lose precision, ints cannot be scaled in place
        matrix = matrix.astype(np.float64)
    if matrix.ndim != 2:
        raise InvalidVectorError(
            f"expected one vector per text (a 2-D array), got shape {matrix.shape}"
        )
    if (
        matrix.shape[1] > 0
        and (dim is None or matrix.shape[1] == dim)
        and np.isfinite(matrix).all()
    ):
        largest = np.abs(matrix).max(axis=1, keepdims=True)  # scaled first, as check_vector does
        if largest.all():
            scaled = matrix / largest
            return (scaled / np.linalg.norm(scaled, axis=1, keepdims=True)).astype(np.float32)
    return np.stack([check_vector(row, dim, model) for row in matrix])


_PLAIN_NUMBERS = frozenset({float, int, np.float32, np.float64})


def _real_numbers(value: Any) -> np.ndarray:
    """``value`` as a real (int or float) array, refusing what numpy would convert silently:
    str ("0.5" parsed), bool, complex (imaginary part dropped), None (made NaN), objects."""
    if value is None:
        raise InvalidVectorError("vector is None: pass a list or array of floats")
    if isinstance(value, str | bytes | bytearray | Mapping):
        raise InvalidVectorError(f"vector is not a sequence of numbers: {_short(value)}")
    try:
        if isinstance(value, list | tuple):
            _check_elements(value)
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        if array.dtype.kind not in "iuf":  # bool, complex, str, bytes, object, dates...
            raise TypeError(f"it holds {array.dtype.name} values")
    except (TypeError, ValueError) as exc:
        raise InvalidVectorError(f"vector is not a sequence of numbers ({exc})") from exc
    return array


def _check_elements(values: list | tuple) -> None:
    """Refuse elements numpy would turn into numbers: one C-level pass over the types of a row
    (``[True, 0.5]`` becomes ``[1.0, 0.5]``, ``[0.5, None]`` becomes NaN in an object array)."""
    types = set(map(type, values))
    if types <= _PLAIN_NUMBERS:
        return
    for kind in types:
        if kind is list or kind is tuple:
            for row in values:
                if isinstance(row, list | tuple):
                    _check_elements(row)
        elif kind is type(None):
            raise TypeError("it contains None")
        elif issubclass(kind, bool | np.bool_ | str | bytes | bytearray | complex | np.complexfloating):
            raise TypeError(f"it holds {kind.__name__} values")


def check_vector(vector: Any, dim: int | None, model: str | None = None) -> np.ndarray:
    """A finite, non-zero 1-D vector of the store's dimension, returned L2-normalised float32.

    Accepted: real ints and floats (lists, tuples, numpy arrays); refused: str, bytes, bool,
    complex, objects, None, NaN/inf, all zeros, the wrong dimension (``check_rows`` agrees).
    """
    if (
        type(vector) is np.ndarray
        and vector.dtype is _FLOAT32
        and vector.ndim == 1
        and vector.shape[0] == dim
    ):  # the common case, cheaply; NaN, inf, zero or overflow fall through to the full checks
        norm = math.sqrt(float(np.dot(vector, vector)))
        if 0.0 < norm < math.inf:
            return vector / np.float32(norm)
    array = _real_numbers(vector).astype(np.float64, copy=False)
    if array.ndim != 1 or array.shape[0] == 0:
        raise InvalidVectorError(
            f"vector must be a non-empty 1-D sequence of floats, got shape {array.shape}"
        )
    if dim is not None and array.shape[0] != dim:
        raise DimensionMismatchError(
            f"vector has {array.shape[0]} dimensions but this store holds {dim}-dimensional "
            f"vectors{f' of model {model}' if model else ''}"
        )
    if not np.all(np.isfinite(array)):
        raise InvalidVectorError("vector contains NaN or infinity")
    # Scale by the largest component first: the norm of [1e308, ...] overflows to inf (and
    # would turn the vector into zeros), that of [1e-320, ...] underflows to 0.
    largest = float(np.max(np.abs(array)))
    if largest == 0.0:
        raise InvalidVectorError("vector is all zeros: it has no direction to compare")
    array = array / largest
    return (array / np.linalg.norm(array)).astype(np.float32)


def prepared_items(
    items: Any, source_ids: Any, kinds: tuple[str, ...] | None
) -> list[tuple[str, Any, str, str]]:
    """Checked ``(key, record, kind, source_id)`` for ``add_embeddings``' arguments; an id given
    twice keeps its last item, in that item's place."""
    items = check_items(items)
    sources = many(source_ids, "source_ids") if source_ids is not None else [""] * len(items)
    if len(sources) != len(items):
        raise InvalidInputError(
            f"{len(sources)} source_ids for {len(items)} items: give one per item"
        )
    latest: dict[str, tuple[str, Any, str, str]] = {}
    for (record_id, record, kind), source_id in zip(items, sources, strict=True):
        key = record_key(record_id)
        latest.pop(key, None)
        latest[key] = (key, record, check_kind(kind, kinds), check_source_id(source_id))
    return list(latest.values())
