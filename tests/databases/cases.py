"""Sample records for the six databases, described once so common behaviour is tested alike.

``CASES`` gives each database sample records on distinct subjects, an embedded and a
non-embedded change, and a text column to change with plain SQL; ``test_common.py`` runs the
same tests over all six.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from typing import Any

import embeddable_db as edb


class CountingEncoder(edb.HashingEncoder):
    """The hashing encoder; ``calls``/``texts_encoded`` count what was encoded, ``fail`` breaks it."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__(dim)
        self.fail = False

    def encode(self, texts, batch_size=None):
        if self.fail:
            raise RuntimeError("encoder is down")
        return super().encode(texts, batch_size)


@dataclasses.dataclass
class Case:
    cls: type
    kind: str
    records: Callable[[], list]  # distinct subjects; record i is found by queries[i]
    queries: list[str]
    empty: Callable[[], Any]  # a record with nothing to embed
    embedded_change: dict[str, Any]  # changes the embedded text (with words "quasar nebula")
    quiet_change: dict[str, Any]  # a field that is not embedded
    sql_column: str  # a text column that is embedded, to change with plain SQL

    @property
    def table(self) -> str:
        return self.cls.tables[0].table


SUBJECTS = [
    ("invoice reminder", "sends overdue invoice payment reminders to customers"),
    ("weather scraper", "downloads hourly weather forecasts from public stations"),
    ("thumbnail maker", "resizes uploaded photographs into small thumbnails"),
    ("deploy watcher", "watches kubernetes rollouts and pages engineers on failures"),
    ("recipe planner", "plans weekly vegetarian dinner recipes and shopping lists"),
]
QUERIES = [
    "overdue invoice payment reminders",
    "hourly weather forecasts",
    "resize photographs thumbnails",
    "kubernetes rollouts failures",
    "vegetarian dinner recipes",
]
NEW_WORDS = "quasar nebula telescope observation"


def _bots():
    return [
        edb.BotRecord(name, type_="worker", purpose=what, tags=[name.split()[0]], estimated_profit=i * 10.0)
        for i, (name, what) in enumerate(SUBJECTS)
    ]


def _workflows():
    # The first has no steps, so its task sequence is what gets embedded.
    records = [edb.WorkflowRecord(task_sequence=["collect invoices", "send reminders"],
                              title=SUBJECTS[0][0], description=SUBJECTS[0][1])]
    return records + [
        edb.WorkflowRecord([f"step {w}" for w in what.split()[:4]], title=name, description=what)
        for name, what in SUBJECTS[1:]
    ]


def _enhancements():
    return [edb.Enhancement(what, rationale=f"because {name} matters", title=name, score=0.5)
            for name, what in SUBJECTS]


def _errors():
    return [edb.ErrorRecord(f"{name} failed", description=what, frequency=i + 1)
            for i, (name, what) in enumerate(SUBJECTS)]


def _research():
    return [edb.ResearchItem(name, content=what, tags=[name.split()[-1]], energy=i)
            for i, (name, what) in enumerate(SUBJECTS)]


def _information():
    return [edb.InformationRecord("report", summary=what, keywords=name.split(), validated=bool(i % 2))
            for i, (name, what) in enumerate(SUBJECTS)]


CASES = {
    "bot": Case(edb.BotDB, "bot", _bots, QUERIES, lambda: edb.BotRecord(""),
                {"purpose": NEW_WORDS}, {"estimated_profit": 99.5}, "purpose"),
    "workflow": Case(edb.WorkflowDB, "workflow", _workflows, QUERIES, lambda: edb.WorkflowRecord(),
                     {"description": NEW_WORDS}, {"assigned_bots": ["bot-7"]}, "description"),
    "enhancement": Case(edb.EnhancementDB, "enhancement", _enhancements, QUERIES,
                        lambda: edb.Enhancement("", before_code="x = 1"),
                        {"idea": NEW_WORDS}, {"score": 0.99}, "idea"),
    "error": Case(edb.ErrorDB, "error", _errors, QUERIES, lambda: edb.ErrorRecord(" "),
                  {"description": NEW_WORDS}, {"frequency": 42}, "description"),
    "info": Case(edb.InfoDB, "info", _research, QUERIES, lambda: edb.ResearchItem("", source_url="https://x"),
                 {"content": NEW_WORDS}, {"corroboration_count": 3}, "content"),
    "information": Case(edb.InformationDB, "information", _information, QUERIES,
                        lambda: edb.InformationRecord("", validated=True),
                        {"summary": NEW_WORDS}, {"validated": True}, "summary"),
}


def fill(db, case: Case) -> list:
    """Add the case's records; returns them (ids set)."""
    records = case.records()
    for record in records:
        db.add(record)
    return records


def best_match(db, records: list, query: str):
    """Add ``records``, search for ``query``: the top hit, checked to beat the runner-up."""
    for record in records:
        db.add(record)
    hits = db.search(query, top_k=3)
    assert len(hits) == 3 and hits[0].distance < hits[1].distance <= hits[2].distance
    return hits[0].record


def on_postgres(db) -> bool:
    return db.url is not None


def connect_beside(db, *, mapping: bool = False):
    """A connection of its own to ``db``'s database, as a user's plain SQL would use: the
    SQLite file, or the PostgreSQL database with the database's schema as its search path.
    ``mapping``: rows keyed by column name."""
    if not on_postgres(db):
        conn = sqlite3.connect(db.path)
        if mapping:
            conn.row_factory = sqlite3.Row
        return conn
    import psycopg
    from psycopg.rows import dict_row

    conn = psycopg.connect(db.conn.info.dsn, autocommit=True, row_factory=dict_row if mapping else None)
    conn.execute(f"SET search_path TO {db.schema}")
    return conn


def _statement(db, statement: str, args) -> tuple:
    """``(statement, args)`` for the engine: psycopg's ``%s``, and no parameters at all for
    a statement without any (psycopg then reads no placeholders in it)."""
    if on_postgres(db):
        return statement.replace("?", "%s"), (tuple(args) or None)
    return statement, tuple(args)


def rows(db, statement: str, args=(), *, mapping: bool = False) -> list:
    """The rows plain SQL reads from ``db``'s tables (``?`` placeholders on both engines)."""
    conn = connect_beside(db, mapping=mapping)
    try:
        return [row if mapping else tuple(row)
                for row in conn.execute(*_statement(db, statement, args)).fetchall()]
    finally:
        conn.close()


def sql(db, statement: str, args=()) -> None:
    """Change the database behind its back, through a separate connection."""
    conn = connect_beside(db)
    try:
        conn.execute(*_statement(db, statement, args))
        conn.commit()
    finally:
        conn.close()
