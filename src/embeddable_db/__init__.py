"""embeddable_db: persistent vector embeddings and semantic search for SQLite-backed databases.

Every public name loads on first use (PEP 562), so ``import embeddable_db.cli`` costs
nothing: the command line takes over Ctrl-C before numpy, the mixin or the six databases
load (~0.45 s), and a process that only needs the errors does not pay for the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_ENCODER = ("DEFAULT_MODEL", "HashingEncoder", "SentenceTransformerEncoder", "get_encoder")
_ERRORS = (
    "BackendUnavailableError",
    "ClosedStoreError",
    "CorruptIndexError",
    "DimensionMismatchError",
    "EmbeddingError",
    "EncodingError",
    "InvalidInputError",
    "InvalidVectorError",
    "ModelConflictError",
    "ModelUnavailableError",
    "ReadOnlyError",
    "StoreConflictError",
)
_REPORTS = ("BackfillConnectionLost", "BackfillInterrupted", "BackfillPlan", "BackfillResult", "VerifyReport")
_DATABASES = (
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
)
_HOME: dict[str, str] = {
    **dict.fromkeys(_ENCODER, "encoder"),
    **dict.fromkeys(_ERRORS, "errors"),
    **dict.fromkeys(_REPORTS, "reports"),
    **dict.fromkeys(_DATABASES, "databases"),
    "EmbeddableDBMixin": "mixin",
    "HybridHit": "fusion",
    "TableStore": "tables",
}


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from .databases import *  # noqa: F403
    from .encoder import (  # noqa: F401
        DEFAULT_MODEL,
        HashingEncoder,
        SentenceTransformerEncoder,
        get_encoder,
    )
    from .errors import *  # noqa: F403
    from .fusion import HybridHit  # noqa: F401
    from .mixin import EmbeddableDBMixin  # noqa: F401
    from .reports import (  # noqa: F401
        BackfillConnectionLost,
        BackfillInterrupted,
        BackfillPlan,
        BackfillResult,
        VerifyReport,
    )
    from .tables import TableStore  # noqa: F401

__all__ = sorted(_HOME)
