"""BotDB: a registry of bots, searchable by what they are and do."""

from __future__ import annotations

import dataclasses
from typing import Any

from ._base import RecordDB, serialised
from .records import Record, TableSpec, compose, json_list, listed
from .timestamps import created_now


@dataclasses.dataclass
class BotRecord(Record):
    """One bot. Dates are UTC ISO strings taken when the record is made (add and update also
    take a datetime or epoch seconds)."""

    EMBEDDED_FIELDS = ("name", "type_", "purpose", "tasks", "tags", "toolchain")

    name: str
    type_: str = ""
    tasks: list[str] = json_list()
    parent_id: str = ""
    dependencies: list[str] = json_list()
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)
    hierarchy_level: str = ""
    purpose: str = ""
    tags: list[str] = json_list()
    toolchain: list[str] = json_list()
    creation_date: str = created_now()
    last_modification_date: str = created_now()
    status: str = "active"
    version: str = ""
    estimated_profit: float = 0.0

    def embedding_text(self) -> str:
        """Name and type, then purpose, tasks (in order), tags and toolchain."""
        head = f"{self.name.strip()} ({self.type_.strip()} bot)" if self.type_.strip() else self.name
        return compose(
            head,
            ("Purpose", self.purpose),
            ("Tasks", listed(self.tasks, "; ")),
            ("Tags", listed(self.tags)),
            ("Toolchain", listed(self.toolchain)),
        )


class BotDB(RecordDB):
    """Bots in table ``bots``; vectors keyed ``"bot:<id>"`` (kind ``bot``).

    Embedded text: the name and type, the purpose, the tasks in order, the tags and the
    toolchain, one labelled line each, empty ones left out. Not embedded: ids, parent and
    dependencies (names of other bots, which would pull a bot towards its neighbours),
    resources, hierarchy level, status, version, profit and dates, which say nothing about
    what the bot does or change without its meaning changing. ``update`` sets
    ``last_modification_date``.
    """

    name = "bot"
    index_filename = "bot_embeddings.index"
    tables = (TableSpec("bots", BotRecord, "bot", indexed=("status",), touch="last_modification_date"),)

    def _extra_schema(self) -> None:
        self._sql.execute(self._dialect.nocase_index("bots_name_nocase", "bots", "name"))

    @serialised
    def find_by_name(self, name: str) -> BotRecord | None:
        """The bot with this name, ignoring (ASCII) case (the oldest one if several share it)."""
        found = self.tables[0].select(
            self._reader(), f"WHERE {self._dialect.nocase_equals('name')} ORDER BY id LIMIT 1",
            (str(name),),
        )
        return found[0] if found else None
