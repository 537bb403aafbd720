"""Changes recorded by SQLite: triggers on the user's table append keys to a change table.

``Triggers`` is the SQL for one table, ``ChangeLog`` one change table and every trigger that
appends to it: a ``TableStore``'s one table, or all the tables of one of the six databases
(``databases/changes.py``, which logs ``"<kind>:<id>"`` keys). What follows is said of a
``TableStore``; it holds for both.

Why triggers: every other way to find what changed in a table reads all of it (a hash of each
row: llm's ``embed-multi``, round one's backfill, 8 s for a no-op at 1M rows). A trigger runs
inside the writer's own statement, whichever program writes, so the keys of changed rows are
in ``<store>_changes`` (``seq INTEGER PRIMARY KEY, key``) when its transaction commits, and a
backfill reads only those rows.

The triggers, all in the user's database, on the user's table:

- ``AFTER INSERT``: the new key; in a table with a rowid (``Triggers(appended_by_rowid=True)``,
  what a ``TableStore`` asks for) only when the new rowid is at or below the table's *high
  mark*: the largest rowid when the log last caught up, written into the trigger's SQL. A row
  appended above it (what an ordinary ``INSERT`` does: SQLite gives the next rowid) logs
  nothing, which leaves the user's bulk inserts the cost of a trigger that only compares two
  numbers (1.04–1.08× a table without triggers, against 1.26–1.38× when every key was
  appended: ``bench_scale_tables.py``). A row given a rowid at or below the mark (an explicit
  rowid, one reused after the largest was deleted, a ``REPLACE`` of an existing rowid) is
  logged as before. Every backfill first *catches up* (``catch_up``), in one write
  transaction, so no writer comes between: the keys of the rows above the mark go into the
  change table and the trigger is re-created with the new largest rowid as its mark. Every
  row now above the mark was inserted (or had its rowid changed, which the update trigger
  logs) after that, so nothing is missed. The mark is a literal, not read from a table,
  because a subquery run for every row costs about what appending the key does; re-creating
  the trigger is a schema change, so other connections prepare their statements again once
  after a backfill that found appended rows;
- ``AFTER UPDATE OF`` the key, the embedded columns and the columns ``where`` reads (any
  column when the key is the rowid, which ``UPDATE OF`` cannot name): the old and new key;
- ``AFTER DELETE``: the old key;
- ``BEFORE INSERT`` and ``BEFORE UPDATE OF`` the columns of the table's other unique
  indexes, if it has any: the keys of rows whose unique values the new row repeats. ``INSERT
  OR REPLACE``, ``REPLACE INTO`` and ``UPDATE OR REPLACE`` delete those rows *without* firing
  delete triggers (unless a connection turned ``recursive_triggers`` on), and nothing else
  would tell the store they are gone. A key logged for a statement that then fails is
  rolled back with it; one logged for a row that survives (``INSERT OR IGNORE``) only costs a
  look at that row.

When the log can be trusted (``trusted``): every trigger is in ``sqlite_master`` with exactly
the SQL this module would write now, including the token written into it when it was installed
and the high marks, both recorded in the store's meta table, and the last full scan (a
backfill that read every row) finished with this token, this model, ``embedding_version``
and text settings (the "basis").
So a table whose triggers someone dropped, edited or re-created, a schema change that alters
what the triggers must watch (a renamed column, a new unique index), or a store opened with
another model or text settings all lead to a full scan, after which the log is trusted again.
Changes made while the triggers were absent are found by that scan, which compares the hash
of every row's text with its vector's. What the log cannot see: a ``VACUUM`` that renumbers
the rowids of a table keyed by an implicit rowid, and rows deleted by ``REPLACE`` through a
unique *expression* index; ``backfill_embeddings(full=True)`` finds both.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import InvalidInputError
from .schema import Key, TableInfo, quote

EVENTS = ("after_insert", "after_update", "after_delete", "before_insert", "before_update")
TOKEN_KEY = "table_changes_token"
BASIS_KEY = "table_changes_basis"
MARKS_KEY = "table_changes_marks"  #: {after-insert trigger name: its table's high mark}


class Triggers:
    """The triggers on one table that log the keys of its changed rows (module docstring).

    ``logged(row)`` is the SQL of the key a row logs, given how the trigger names the row
    (``"NEW."``, ``"OLD."``, or ``""`` inside a SELECT from the table): the key column itself
    for a ``TableStore``, ``'bot:' || NEW."id"`` for the six databases. ``unique`` defaults to
    the table's unique indexes other than the key. ``appended_by_rowid`` lets rows appended
    above the high mark go unlogged (module docstring); the six databases leave it off, since
    their own ``add`` appends rows whose vectors it writes in the same transaction.
    """

    def __init__(
        self, info: TableInfo, key: Key, watched: Iterable[str], prefix: str, *,
        logged: Callable[[str], str] | None = None,
        unique: Iterable[tuple[str, ...]] | None = None,
        appended_by_rowid: bool = False,
    ) -> None:
        self.info = info
        self.key = key
        self.names = {event: f"{prefix}_{event}" for event in EVENTS}
        keyed = {key.column} if key.column is not None else set()
        self.watched = [c for c in info.columns if c in set(watched) | keyed]
        self.unique = [cols for cols in (info.unique if unique is None else unique)
                       if cols != (key.column,)]
        self.logged = logged if logged is not None else (lambda row: f"{row}{key.expr}")
        #: How SQL names the rowid, when appended rows are found by it (else None).
        self.rowid = _rowid_name(info) if appended_by_rowid else None

    def sql(self, log: str, mark: str, high: int | None = None) -> dict[str, str]:
        """trigger name -> its SQL, appending to the change table ``log`` (quoted); ``high``
        is the high mark of a table whose appended rows are found by rowid."""
        table, k, logged = quote(self.info.name), self.key.expr, self.logged
        new_key = f"INSERT INTO {log}(key) VALUES ({logged('NEW.')});"
        when = "" if self.rowid is None else f"WHEN NEW.{self.rowid} <= {int(high or 0)} "
        out = {
            "after_insert": f"AFTER INSERT ON {table} {when}BEGIN {mark} {new_key} END",
            "after_delete": f"AFTER DELETE ON {table} BEGIN {mark} "
                            f"INSERT INTO {log}(key) VALUES ({logged('OLD.')}); END",
        }
        of = "" if self.key.column is None else " OF " + ", ".join(map(quote, self.watched))
        out["after_update"] = (
            f"AFTER UPDATE{of} ON {table} BEGIN {mark} {new_key} "
            f"INSERT INTO {log}(key) SELECT {logged('OLD.')} WHERE OLD.{k} IS NOT NEW.{k}; END"
        )
        if self.unique:
            same = " OR ".join(
                "(" + " AND ".join(f"{quote(c)} = NEW.{quote(c)}" for c in cols) + ")"
                for cols in self.unique
            )
            body = (f"BEGIN {mark} INSERT INTO {log}(key) SELECT {logged('')} FROM {table} "
                    f"WHERE {same}; END")
            columns = ", ".join(quote(c) for c in dict.fromkeys(c for u in self.unique for c in u))
            out["before_insert"] = f"BEFORE INSERT ON {table} {body}"
            out["before_update"] = f"BEFORE UPDATE OF {columns} ON {table} {body}"
        return {self.names[event]: f"CREATE TRIGGER {quote(self.names[event])} {sql}"
                for event, sql in out.items()}


def _rowid_name(info: TableInfo) -> str | None:
    """The rowid's name in SQL; None for a WITHOUT ROWID table, or one whose columns take all
    of its names (every insert is then logged)."""
    if not info.has_rowid:
        return None
    try:
        return info.rowid_alias()
    except InvalidInputError:
        return None


class ChangeLog:
    """One change table and the triggers of the tables that append to it, trusted as the
    module docstring says. A ``TableStore`` has one table's triggers, a six-database file one
    set per table it embeds (``databases/changes.py``)."""

    def __init__(self, conn: sqlite3.Connection, store_table: str, triggers: Sequence[Triggers]) -> None:
        self.conn = conn
        self.table = f"{store_table}_changes"
        self.meta_table = f"{store_table}_meta"
        self.triggers = list(triggers)
        self.names = [name for t in self.triggers for name in t.names.values()]

    # -- the SQL --------------------------------------------------------------------------------
    def expected(self, token: str, marks: dict[str, int] | None = None) -> dict[str, str]:
        """trigger name -> the exact SQL ``sqlite_master`` holds for it once installed."""
        log, mark = quote(self.table), f"/* embeddable_db change log {token} */"
        marks = self.marks() if marks is None else marks
        return {name: sql for t in self.triggers
                for name, sql in t.sql(log, mark, marks.get(t.names["after_insert"])).items()}

    @property
    def _marked(self) -> list[Triggers]:
        return [t for t in self.triggers if t.rowid is not None]

    # -- state ----------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.conn.execute(
            f"SELECT value FROM {quote(self.meta_table)} WHERE key = ?", (key,)
        ).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            f"INSERT INTO {quote(self.meta_table)}(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def marks(self) -> dict[str, int]:
        """The recorded high marks; an unreadable record reads as none, so the installed
        triggers no longer match what is expected, and are installed again (a full scan)."""
        try:
            raw = json.loads(self.meta(MARKS_KEY) or "{}")
        except ValueError:
            return {}
        if not isinstance(raw, dict):
            return {}
        return {name: high for name, high in raw.items()
                if isinstance(high, int) and not isinstance(high, bool)}

    def _largest_rowid(self, t: Triggers) -> int:
        (largest,) = self.conn.execute(
            f"SELECT COALESCE(MAX({t.rowid}), 0) FROM main.{quote(t.info.name)}"
        ).fetchone()
        return int(largest)

    def appended(self) -> list[tuple[Triggers, int]]:
        """(triggers, high mark) of each table with rows above its mark: rows no trigger
        logged, which the next backfill reads (by rowid: one index seek when there are none)."""
        marks = self.marks()
        return [(t, marks.get(t.names["after_insert"], 0)) for t in self._marked
                if self._largest_rowid(t) > marks.get(t.names["after_insert"], 0)]

    def installed(self) -> dict[str, str]:
        names = self.names
        return dict(self.conn.execute(
            f"SELECT name, sql FROM main.sqlite_master WHERE type = 'trigger' "
            f"AND name IN ({','.join('?' * len(names))})", names,
        ).fetchall())

    def in_place(self) -> bool:
        """The triggers are there, exactly as installed (token and all), and the table too."""
        token = self.meta(TOKEN_KEY)
        if token is None or self.installed() != self.expected(token):
            return False
        return self.conn.execute(
            "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?", (self.table,)
        ).fetchone() is not None

    def trusted(self, basis: dict[str, Any]) -> bool:
        """Whether the log holds every change since the last full scan (module docstring)."""
        return self.in_place() and self.vouches(basis)

    def vouches(self, basis: dict[str, Any]) -> bool:
        """Whether the last full scan was made under ``basis`` (and this token)."""
        return self.meta(BASIS_KEY) == self._basis(basis)

    def _basis(self, basis: dict[str, Any]) -> str:
        return json.dumps({**basis, "token": self.meta(TOKEN_KEY)}, sort_keys=True)

    # -- writes (inside the store's transaction) ------------------------------------------------
    def install(self) -> None:
        """(Re)create the change table and triggers under a new token: the log starts now, so
        the next backfill is a full scan."""
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quote(self.table)} (seq INTEGER PRIMARY KEY, key)"
        )
        self._drop_triggers()
        token = uuid.uuid4().hex
        marks = {t.names["after_insert"]: self._largest_rowid(t) for t in self._marked}
        for sql in self.expected(token, marks).values():
            self.conn.execute(sql)
        self.set_meta(TOKEN_KEY, token)
        self.set_meta(MARKS_KEY, json.dumps(marks, sort_keys=True))

    def catch_up(self) -> int:
        """Log the keys of the rows appended above each high mark and raise the mark to the
        largest rowid (module docstring), inside the caller's write transaction, with the
        triggers in place. Returns how many rows it logged."""
        appended = self.appended()
        if not appended:
            return 0
        marks, logged, token = self.marks(), 0, self.meta(TOKEN_KEY)
        assert token is not None, "catch_up() needs the triggers installed"
        for t, high in appended:
            name = t.names["after_insert"]
            logged += self.conn.execute(
                f"INSERT INTO {quote(self.table)}(key) SELECT {t.logged('')} "
                f"FROM main.{quote(t.info.name)} WHERE {t.rowid} > ? ORDER BY {t.rowid}", (high,),
            ).rowcount
            marks[name] = self._largest_rowid(t)
            self.conn.execute(f"DROP TRIGGER main.{quote(name)}")
            self.conn.execute(self.expected(token, marks)[name])
        self.set_meta(MARKS_KEY, json.dumps(marks, sort_keys=True))
        return logged

    def _drop_triggers(self) -> None:
        for name in self.names:
            self.conn.execute(f"DROP TRIGGER IF EXISTS main.{quote(name)}")

    def drop(self) -> None:
        """Remove the triggers and the change table: the user's schema as it was."""
        self._drop_triggers()
        self.conn.execute(f"DROP TABLE IF EXISTS main.{quote(self.table)}")

    def pending(self) -> tuple[int, list[Any]]:
        """(the last change's seq, the distinct keys changed up to it, and those of rows
        appended above a high mark that no ``catch_up`` has logged yet)."""
        last = self.last_seq()
        keys = [row[0] for row in self.conn.execute(
            f"SELECT DISTINCT key FROM {quote(self.table)} WHERE seq <= ?", (last,)
        )] if last else []
        for t, high in self.appended():
            keys.extend(row[0] for row in self.conn.execute(
                f"SELECT {t.logged('')} FROM main.{quote(t.info.name)} WHERE {t.rowid} > ?", (high,)
            ))
        return last, keys

    def last_seq(self) -> int:
        (last,) = self.conn.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {quote(self.table)}").fetchone()
        return last

    def forget_since(self, seq: int, basis: dict[str, Any]) -> None:
        """Forget the changes logged after ``seq``: the caller's own writes, in the
        transaction that also wrote their vectors (the six databases' ``add``/``update``).
        Only under the basis of the last full scan: vectors written with another model or
        ``embedding_version`` are for the next backfill to judge."""
        if self.last_seq() > seq and self.vouches(basis):
            self.conn.execute(f"DELETE FROM {quote(self.table)} WHERE seq > ?", (seq,))

    def acknowledge(self, through: int, failed: Iterable[str], basis: dict[str, Any] | None) -> None:
        """Forget the changes a finished backfill handled (up to ``through``), keeping those
        of ``failed`` records for the next one; after a full scan, ``basis`` is recorded so the
        log is trusted from here on (when the triggers are still in place)."""
        self.conn.execute(f"DELETE FROM {quote(self.table)} WHERE seq <= ?", (through,))
        self.conn.executemany(
            f"INSERT INTO {quote(self.table)}(key) VALUES (?)", [(key,) for key in failed]
        )
        if basis is not None and self.in_place():
            self.set_meta(BASIS_KEY, self._basis(basis))

    def forget_basis(self) -> None:
        self.conn.execute(f"DELETE FROM {quote(self.meta_table)} WHERE key = ?", (BASIS_KEY,))
