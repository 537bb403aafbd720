"""ErrorDB: errors seen, known errors with their solutions, discrepancies and telemetry events."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import InvalidInputError
from ._base import RecordDB, serialised
from .records import Record, TableSpec, clip, compose, listed
from .timestamps import created_now

STACK_TAIL_CHARS = 600


@dataclasses.dataclass
class ErrorRecord(Record):
    """An error message seen at least once (``message`` is unique in the table).

    ``frequency`` counts the sightings (``ErrorDB.add_error`` bumps it); ``resolution`` says
    what was done or should be done about it, ``cause`` why it happened.
    """

    EMBEDDED_FIELDS = ("message", "type_", "category", "description", "cause", "resolution")

    message: str
    type_: str = ""
    description: str = ""
    resolution: str = ""
    category: str = ""
    cause: str = ""
    frequency: int = 1
    timestamp: str = created_now()

    def embedding_text(self) -> str:
        return compose(
            self.message,
            ("Type", self.type_),
            ("Category", self.category),
            ("Description", self.description),
            ("Cause", self.cause),
            ("Resolution", self.resolution),
        )


@dataclasses.dataclass
class KnownError(Record):
    """An error message with the solution that fixes it."""

    EMBEDDED_FIELDS = ("message", "solution")

    message: str
    solution: str = ""
    timestamp: str = created_now()

    def embedding_text(self) -> str:
        return compose(self.message, ("Solution", self.solution))


@dataclasses.dataclass
class Discrepancy(Record):
    """Something observed that does not match what was expected."""

    EMBEDDED_FIELDS = ("message",)

    message: str
    timestamp: str = created_now()

    def embedding_text(self) -> str:
        return self.message.strip()


@dataclasses.dataclass
class TelemetryEvent(Record):
    """One failure reported by a running task or bot."""

    EMBEDDED_FIELDS = (
        "error_type", "category", "root_cause", "inferred_cause", "module", "root_module",
        "stack_trace",
    )

    task_id: str = ""
    bot_id: str = ""
    error_type: str = ""
    category: str = ""
    root_cause: str = ""
    stack_trace: str = ""
    root_module: str = ""
    module: str = ""
    module_counts: dict[str, Any] = dataclasses.field(default_factory=dict)
    inferred_cause: str = ""
    timestamp: str = created_now()
    resolution_status: str = "unresolved"
    patch_id: int | None = None
    deploy_id: int | None = None
    checksum: str = ""

    def embedding_text(self) -> str:
        """Error type and cause first; the end of the stack trace (where the error is) last."""
        modules = listed(dict.fromkeys(m.strip() for m in (self.module, self.root_module)))
        return compose(
            self.error_type,
            ("Category", self.category),
            ("Cause", self.root_cause),
            ("Inferred cause", self.inferred_cause),
            ("Module", modules),
            ("Trace", clip(self.stack_trace, STACK_TAIL_CHARS, tail=True)),
        )


class ErrorDB(RecordDB):
    """Four tables, four kinds, one index. Vectors are keyed ``"<kind>:<id>"``, so an error and a
    telemetry event with the same row id never collide; ``search(..., kind=...)`` filters.

    ==============  ===============  ===================================================
    kind            table            embedded text
    ==============  ===============  ===================================================
    error           errors           message, type, category, description, cause,
                                     resolution (not frequency or timestamp)
    known_error     known_errors     message and solution
    discrepancy     discrepancies    message
    telemetry       telemetry        error type, category, root cause, inferred cause,
                                     module(s), last 600 characters of the stack trace
                                     (not task/bot ids, status, patch/deploy ids,
                                     module counts, checksum or timestamp)
    ==============  ===============  ===================================================

    ``get``, ``update``, ``delete``, ``fetch`` and ``count`` take ``kind=`` (default
    ``"error"``); ``add`` takes any of the four record classes.
    """

    name = "error"
    index_filename = "error_embeddings.index"
    tables = (
        TableSpec("errors", ErrorRecord, "error", unique=("message",)),
        TableSpec("known_errors", KnownError, "known_error", unique=("message",)),
        TableSpec("discrepancies", Discrepancy, "discrepancy"),
        TableSpec("telemetry", TelemetryEvent, "telemetry", indexed=("error_type",)),
    )

    @serialised
    def _id_of(self, kind: str, message: str) -> int | None:
        table = self._spec(kind).table
        row = self._reader().execute(
            f"SELECT id FROM {table} WHERE message = ?", (message,)
        ).fetchone()
        return row[0] if row else None

    @staticmethod
    def _message(message: Any) -> str:
        if not isinstance(message, str) or not message.strip():
            raise InvalidInputError(f"message must be a non-empty str, got {message!r}")
        return message

    def add(self, record: Any) -> int:
        """Store an ``ErrorRecord``, ``KnownError``, ``Discrepancy`` or ``TelemetryEvent``.

        An error or known error whose message is already stored is refused (``ValueError``):
        use ``add_error`` to count a repeat, ``add_known`` to replace a solution.
        """
        if isinstance(record, ErrorRecord | KnownError):
            kind = self._spec_of(record).kind
            existing = self._id_of(kind, record.message)
            if existing is not None:
                raise InvalidInputError(
                    f"{kind} {existing} already has this message: use add_error() to count a "
                    "repeat or update() to change it"
                )
        return super().add(record)

    def add_error(self, message: str, **fields: Any) -> int:
        """Record an error; a message already stored only has its ``frequency`` bumped.

        The bump does not re-embed (the frequency is not embedded) and leaves the other
        fields as they are; use ``update`` to change them.
        """
        message = self._message(message)
        self._spec("error").check_fields(fields)
        for attempt in range(2):
            with self._transaction() as conn:
                row = conn.execute(
                    "UPDATE errors SET frequency = frequency + 1 WHERE message = ? RETURNING id",
                    (message,),
                ).fetchone()
            if row is not None:
                return row[0]
            try:
                return self._insert(ErrorRecord(message, **fields))
            except InvalidInputError as exc:  # another process stored it first: bump that one
                if attempt or not isinstance(exc.__cause__, self._dialect.integrity_error):
                    raise
        raise AssertionError("unreachable")

    def add_known(self, message: str, solution: str) -> int:
        """Store (or replace) the solution for an error message; returns its id."""
        message = self._message(message)
        existing = self._id_of("known_error", message)
        if existing is not None:
            self.update(existing, kind="known_error", solution=solution)
            return existing
        return self._insert(KnownError(message, solution))

    def find_solution(self, message: str, *, max_distance: float = 0.5) -> str | None:
        """The solution for this message: an exact match first, else the nearest known error
        within ``max_distance`` (1 - cosine similarity); None when nothing is close enough."""
        message = self._message(message)
        existing = self._id_of("known_error", message)
        if existing is not None:
            return self.get(existing, kind="known_error").solution
        hits = self.search(message, top_k=1, kind="known_error")
        if hits and hits[0].distance <= max_distance:
            return hits[0].record.solution
        return None

    def log_discrepancy(self, message: str) -> int:
        return self._insert(Discrepancy(message))

    def add_telemetry(self, event: TelemetryEvent) -> int:
        """Store a telemetry event; its vector's source is the task id, else the bot id."""
        if not isinstance(event, TelemetryEvent):
            raise InvalidInputError(f"add_telemetry takes a TelemetryEvent, not {type(event).__name__}")
        return self._insert(event)

    def _source_of(self, record: Any) -> str:
        """A telemetry event's vector is sourced to its task, else its bot."""
        if isinstance(record, TelemetryEvent):
            return record.task_id or record.bot_id
        return ""
