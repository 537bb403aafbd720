"""WorkflowDB: workflows (ordered steps with a title and description), searchable by purpose."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ..errors import InvalidInputError
from ._base import RecordDB
from .records import Record, TableSpec, compose, json_list, listed
from .timestamps import created_now


@dataclasses.dataclass
class WorkflowRecord(Record):
    """One workflow: ``workflow`` is its list of steps, in order."""

    EMBEDDED_FIELDS = ("title", "description", "workflow", "task_sequence", "tags", "category")

    workflow: list[str] = json_list()
    title: str = ""
    description: str = ""
    task_sequence: list[str] = json_list()
    tags: list[str] = json_list()
    category: str = ""
    type_: str = ""
    status: str = "pending"
    assigned_bots: list[str] = json_list()
    enhancements: list[str] = json_list()
    action_chains: list[str] = json_list()
    argument_strings: list[str] = json_list()
    rejection_reason: str = ""
    workflow_duration: float = 0.0
    performance_data: str = ""
    estimated_profit_per_bot: float = 0.0
    timestamp: str = created_now()

    def embedding_text(self) -> str:
        """Title, description, the steps in order (or the task sequence), tags, category."""
        steps = self.workflow or self.task_sequence
        return compose(
            self.title,
            ("Description", self.description),
            ("Steps", listed(steps, " -> ")),
            ("Tags", listed(self.tags)),
            ("Category", self.category),
        )


class WorkflowDB(RecordDB):
    """Workflows in table ``workflows``; vectors keyed ``"workflow:<id>"`` (kind ``workflow``).

    Embedded text: the title, the description, the steps in order joined by ``->`` (the task
    sequence when there are no steps), the tags and the category. Not embedded: status,
    assignments, argument strings, performance figures, durations and the timestamp, so a
    status change never re-embeds.
    """

    name = "workflow"
    index_filename = "workflow_embeddings.index"
    tables = (TableSpec("workflows", WorkflowRecord, "workflow", indexed=("status",)),)

    def update_status(self, record_id: int, status: str) -> bool:
        """Set one workflow's status; True when it exists."""
        return self.update_statuses([record_id], status) == 1

    def update_statuses(self, record_ids: Iterable[int], status: str) -> int:
        """Set the status of many workflows in one transaction; returns how many exist.

        The status is not embedded, so no vector is re-encoded and the index is untouched.
        """
        if not isinstance(status, str) or not status.strip():
            raise InvalidInputError(f"status must be a non-empty str, got {status!r}")
        return len(self._update_rows(self.tables[0], list(record_ids), {"status": status}))
