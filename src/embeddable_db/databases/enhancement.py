"""EnhancementDB: a log of proposed improvements, with the models, bots and workflows they touch."""

from __future__ import annotations

import dataclasses

from ._base import RecordDB
from .records import Record, TableSpec, clip, compose, json_list, link_field, listed
from .timestamps import created_now

CONTEXT_CHARS = 600
CODE_CHARS = 300


@dataclasses.dataclass
class Enhancement(Record):
    """One proposed enhancement. ``model_ids``, ``bot_ids`` and ``workflow_ids`` are kept in
    the link tables ``enhancement_models``, ``enhancement_bots`` and ``enhancement_workflows``."""

    EMBEDDED_FIELDS = (
        "title", "idea", "rationale", "summary", "description", "tags", "context", "after_code",
    )

    idea: str
    rationale: str = ""
    summary: str = ""
    score: float = 0.0
    context: str = ""
    before_code: str = ""
    after_code: str = ""
    title: str = ""
    description: str = ""
    tags: list[str] = json_list()
    type_: str = ""
    assigned_bots: list[str] = json_list()
    rejection_reason: str = ""
    cost_estimate: float = 0.0
    category: str = ""
    associated_bots: list[str] = json_list()
    triggered_by: str = ""
    timestamp: str = created_now()
    model_ids: list[int] = link_field()
    bot_ids: list[int] = link_field()
    workflow_ids: list[int] = link_field()

    def embedding_text(self) -> str:
        """Prose first (title, idea, rationale, summary, description, tags), then bounded context
        and code, so that a long snippet can never crowd the prose out of the model's window."""
        return compose(
            self.title,
            ("Idea", self.idea),
            ("Rationale", self.rationale),
            ("Summary", self.summary),
            ("Description", self.description),
            ("Tags", listed(self.tags)),
            ("Context", clip(self.context, CONTEXT_CHARS)),
            ("Code", clip(self.after_code, CODE_CHARS)),
        )


class EnhancementDB(RecordDB):
    """Enhancements in table ``enhancements``; vectors keyed ``"enhancement:<id>"``.

    Embedded text: title, idea, rationale, summary, description and tags, then the context
    (first 600 characters) and the new code (first 300 characters). Not embedded: score, cost,
    status fields, bot names, link ids and the timestamp, nor ``before_code`` (the old code
    describes what is being replaced, not the enhancement).
    """

    name = "enhancement"
    index_filename = "enhancement_embeddings.ann"
    tables = (TableSpec("enhancements", Enhancement, "enhancement"),)
