"""The six ready databases, their record classes, ``SearchHit`` and the name registry.

Each database is a SQLite file (or, opened with ``url=``, a PostgreSQL schema named after it)
with plain tables (columns named after the record fields) plus the mixin's embeddings table;
see ``_base.RecordDB`` for what they have in common.
"""

from __future__ import annotations

from ..options import DEFAULT_HOME, HOME_ENV, data_home
from ._base import RecordDB, SearchHit
from .bot import BotDB, BotRecord
from .enhancement import Enhancement, EnhancementDB
from .error import Discrepancy, ErrorDB, ErrorRecord, KnownError, TelemetryEvent
from .info import InfoDB, ResearchItem
from .information import InformationDB, InformationRecord
from .records import RecordFormatError
from .workflow import WorkflowDB, WorkflowRecord

#: Database name (``bot``, ``workflow``, ``enhancement``, ``error``, ``info``,
#: ``information``) -> class. The CLI opens databases through it.
REGISTRY: dict[str, type[RecordDB]] = {
    cls.name: cls for cls in (BotDB, WorkflowDB, EnhancementDB, ErrorDB, InfoDB, InformationDB)
}

__all__ = [
    "REGISTRY", "DEFAULT_HOME", "HOME_ENV", "data_home", "RecordDB", "RecordFormatError", "SearchHit",
    "BotDB", "BotRecord", "WorkflowDB", "WorkflowRecord", "EnhancementDB", "Enhancement",
    "ErrorDB", "ErrorRecord", "KnownError", "Discrepancy", "TelemetryEvent",
    "InfoDB", "ResearchItem", "InformationDB", "InformationRecord",
]
