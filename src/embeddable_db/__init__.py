"""embeddable_db: persistent vector embeddings and semantic search for SQLite-backed databases."""

from .encoder import DEFAULT_MODEL, HashingEncoder, SentenceTransformerEncoder, get_encoder
from .errors import (
    BackendUnavailableError,
    ClosedStoreError,
    CorruptIndexError,
    DimensionMismatchError,
    EmbeddingError,
    EncodingError,
    InvalidInputError,
    InvalidVectorError,
    ModelConflictError,
    ModelUnavailableError,
    ReadOnlyError,
    StoreConflictError,
)
from .mixin import EmbeddableDBMixin
from .reports import BackfillInterrupted, BackfillResult, VerifyReport

# The six databases load on first use: a process that only opens its own store and searches
# (a cold CLI search, a web worker) does not pay ~30 ms to define them.
_DATABASE_NAMES = frozenset({
    "REGISTRY",
    "BotDB",
    "BotRecord",
    "Discrepancy",
    "Enhancement",
    "EnhancementDB",
    "ErrorDB",
    "ErrorRecord",
    "InfoDB",
    "InformationDB",
    "InformationRecord",
    "KnownError",
    "ResearchItem",
    "SearchHit",
    "TelemetryEvent",
    "WorkflowDB",
    "WorkflowRecord",
})


def __getattr__(name: str):
    if name in _DATABASE_NAMES:
        from . import databases

        return getattr(databases, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "BackendUnavailableError",
    "BackfillInterrupted",
    "BackfillResult",
    "ClosedStoreError",
    "CorruptIndexError",
    "DimensionMismatchError",
    "EmbeddableDBMixin",
    "EmbeddingError",
    "EncodingError",
    "HashingEncoder",
    "InvalidInputError",
    "InvalidVectorError",
    "ModelConflictError",
    "ModelUnavailableError",
    "ReadOnlyError",
    "SentenceTransformerEncoder",
    "StoreConflictError",
    "VerifyReport",
    "get_encoder",
    *sorted(_DATABASE_NAMES),
]
