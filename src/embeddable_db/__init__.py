"""embeddable_db: persistent vector embeddings and semantic search for SQLite-backed databases."""

from .encoder import DEFAULT_MODEL, HashingEncoder, SentenceTransformerEncoder, get_encoder
from .errors import (
    BackendUnavailableError,
    CorruptIndexError,
    DimensionMismatchError,
    EmbeddingError,
    InvalidInputError,
    InvalidVectorError,
    ModelConflictError,
    StoreConflictError,
)
from .mixin import EmbeddableDBMixin
from .reports import BackfillInterrupted, BackfillResult, VerifyReport

__all__ = [
    "DEFAULT_MODEL",
    "BackendUnavailableError",
    "BackfillInterrupted",
    "BackfillResult",
    "CorruptIndexError",
    "DimensionMismatchError",
    "EmbeddableDBMixin",
    "EmbeddingError",
    "HashingEncoder",
    "InvalidInputError",
    "InvalidVectorError",
    "ModelConflictError",
    "SentenceTransformerEncoder",
    "StoreConflictError",
    "VerifyReport",
    "get_encoder",
]
