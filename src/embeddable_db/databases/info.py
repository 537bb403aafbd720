"""InfoDB: research items, searchable by meaning and by keyword (SQLite FTS5)."""

from __future__ import annotations

import dataclasses
import re

from ..errors import InvalidInputError
from ._base import RecordDB, serialised
from .records import Record, TableSpec, clip, compose, json_list, listed, positive_int
from .timestamps import created_now

CONTENT_CHARS = 2000
_WORD = re.compile(r"\w+")

_FTS_COLUMNS = "topic, title, tags, content"
_FTS_SCHEMA = [
    f"CREATE VIRTUAL TABLE IF NOT EXISTS info_fts USING fts5({_FTS_COLUMNS}, "
    "content='info', content_rowid='id')",
    f"""CREATE TRIGGER IF NOT EXISTS info_fts_insert AFTER INSERT ON info BEGIN
        INSERT INTO info_fts(rowid, {_FTS_COLUMNS})
        VALUES (new.id, new.topic, new.title, new.tags, new.content);
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS info_fts_delete AFTER DELETE ON info BEGIN
        INSERT INTO info_fts(info_fts, rowid, {_FTS_COLUMNS})
        VALUES ('delete', old.id, old.topic, old.title, old.tags, old.content);
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS info_fts_update AFTER UPDATE ON info BEGIN
        INSERT INTO info_fts(info_fts, rowid, {_FTS_COLUMNS})
        VALUES ('delete', old.id, old.topic, old.title, old.tags, old.content);
        INSERT INTO info_fts(rowid, {_FTS_COLUMNS})
        VALUES (new.id, new.topic, new.title, new.tags, new.content);
    END""",
]


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

    ``search_keywords`` searches topic, title, tags and content through the FTS5 table
    ``info_fts``; triggers keep it in step with ``info`` on every insert, update and delete,
    including those made with plain SQL.
    """

    name = "info"
    index_filename = "information_embeddings.index"
    tables = (TableSpec("info", ResearchItem, "info"),)

    def _extra_schema(self) -> None:
        new = not self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'info_fts'"
        ).fetchone()
        for statement in _FTS_SCHEMA:
            self.conn.execute(statement)
        if new:  # index the rows of a table made before the FTS table existed
            self.conn.execute("INSERT INTO info_fts(info_fts) VALUES ('rebuild')")

    @serialised
    def search_keywords(self, term: str, limit: int = 20) -> list[ResearchItem]:
        """Items containing every word of ``term`` (words may be prefixes), best match first."""
        if not isinstance(term, str):
            raise InvalidInputError(f"term must be a str, got {type(term).__name__}")
        words = _WORD.findall(term)
        if not words:
            raise InvalidInputError(f"search term {term!r} has no words to look for")
        limit = positive_int(limit, "limit")
        query = " ".join('"' + word.replace('"', '""') + '"*' for word in words)
        ids = [
            row[0]
            for row in self._reader().execute(
                "SELECT rowid FROM info_fts WHERE info_fts MATCH ? ORDER BY rank LIMIT ?",
                (query, limit),
            )
        ]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        found = {item.id: item for item in self.tables[0].select(self.conn, f"WHERE id IN ({marks})", ids)}
        return [found[i] for i in ids if i in found]
