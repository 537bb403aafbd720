"""The exception hierarchy: one base class, so callers can catch everything we raise."""

from __future__ import annotations


class EmbeddingError(Exception):
    """Base class of every error embeddable_db raises on purpose."""


class InvalidInputError(EmbeddingError, ValueError):
    """An argument that cannot be used: a bad id, kind, text, ``top_k`` or batch size."""


class InvalidVectorError(InvalidInputError):
    """A vector that cannot be stored or searched: None, NaN/inf, all zeros, not 1-D."""


class DimensionMismatchError(InvalidVectorError):
    """A vector whose length differs from the store's dimension."""


class StoreConflictError(EmbeddingError):
    """Index or metadata files that belong to another store, model or dimension."""


class ModelConflictError(StoreConflictError):
    """The store's vectors were made by another model than the one it was opened with."""


class BackendUnavailableError(EmbeddingError):
    """An unknown backend name, or a backend whose library is not installed."""


class CorruptIndexError(EmbeddingError):
    """Index files that are damaged and could not be rebuilt from SQLite."""


class EncodingError(EmbeddingError):
    """The encoder (model) failed on a text: not the caller's input at fault."""


class ClosedStoreError(EmbeddingError):
    """A store used after ``close()``, or in a child process after ``fork()``: open it again."""


class ReadOnlyError(EmbeddingError):
    """A write to a store opened with ``read_only=True``, or to a database that cannot be
    written (a read-only file, folder or mount)."""


class ModelUnavailableError(BackendUnavailableError, EncodingError):
    """A model that is not installed here (not a local folder, not in the Hugging Face cache)
    or that failed to load; remembered, so later texts fail at once instead of retrying."""
