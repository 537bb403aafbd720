"""InfoDB: research items, searchable by meaning and by keyword."""

from __future__ import annotations

import dataclasses
import re

from ..errors import InvalidInputError
from ._base import RecordDB, serialised
from .records import Record, TableSpec, clip, compose, json_list, listed, positive_int
from .timestamps import created_now

CONTENT_CHARS = 2000
_WORD = re.compile(r"\w+")

#: What InfoDB kept before its keyword search moved into the store's own keyword index (issue
#: 13): an FTS5 table over ``info`` and the triggers that kept it in step. Dropped at open.
_OLD_FTS = ("info_fts_insert", "info_fts_delete", "info_fts_update")


@dataclasses.dataclass
class ResearchItem(Record):
    """One piece of research: ``topic`` is what was researched, ``title`` the title of the
    source (when it has one), ``content`` the text gathered and ``summary`` its gist."""

    EMBEDDED_FIELDS = ("title", "topic", "summary", "tags", "category", "content")

    topic: str
    content: str = ""
    title: str = ""
    summary: str = ""
    tags: list[str] = json_list()
    category: str = ""
    type_: str = ""
    source_url: str = ""
    data_depth: float = 0.0
    notes: str = ""
    associated_bots: list[str] = json_list()
    associated_errors: list[str] = json_list()
    energy: int = 1
    corroboration_count: int = 0
    timestamp: str = created_now()

    def embedding_text(self) -> str:
        """Title (or topic), the topic when it differs, summary, tags, category, then content."""
        title, topic = self.title.strip(), self.topic.strip()
        return compose(
            title or topic,
            ("Topic", topic if title and topic != title else ""),
            ("Summary", self.summary),
            ("Tags", listed(self.tags)),
            ("Category", self.category),
            ("Content", clip(self.content, CONTENT_CHARS)),
        )


class InfoDB(RecordDB):
    """Research items in table ``info``; vectors keyed ``"info:<id>"`` (kind ``info``).

    Embedded text: the title (or the topic), the topic when it differs, summary, tags,
    category and the first 2,000 characters of the content. Not embedded: the source URL,
    notes, associated bots and errors, depth, energy, corroboration count and timestamp.

    ``search_keywords`` is keyword search over the embedded text (the store's keyword index,
    as for every database; it replaced the FTS5 table ``info_fts`` of earlier versions).
    """

    name = "info"
    index_filename = "information_embeddings.index"
    tables = (TableSpec("info", ResearchItem, "info"),)

    def _extra_schema(self) -> None:
        """Drop the FTS5 table and triggers of an InfoDB made before issue 13: the store's
        keyword index (the embedded text, written with each vector) replaces them. (An
        InfoDB on PostgreSQL never had them.)"""
        if self._dialect.name != "sqlite":
            return
        for trigger in _OLD_FTS:
            self._sql.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        self._sql.execute("DROP TABLE IF EXISTS info_fts")

    @serialised
    def search_keywords(self, term: str, limit: int = 20) -> list[ResearchItem]:
        """Items whose embedded text has the words of ``term``, best bm25 match first: the
        keyword mode of ``search`` (``search(term, limit, mode="keyword")``), which does not
        call the model. Rows written with plain SQL are found once a backfill has run."""
        if not isinstance(term, str):
            raise InvalidInputError(f"term must be a str, got {type(term).__name__}")
        if not _WORD.search(term):
            raise InvalidInputError(f"search term {term!r} has no words to look for")
        limit = positive_int(limit, "limit")
        return [hit.record for hit in self.search(term, limit, mode="keyword")]
