"""TableStore: vectors and search for any existing table of a SQLite file, without a class.

``TableStore("app.db", "notes", columns=["title", "body"])`` is a mixin store whose records are
the rows of ``notes``: their key (primary key, a unique column or the rowid) is the record id,
and the text of the named columns (or of a ``template``) is what is embedded. Every mixin
method works on it; ``search`` returns the rows themselves.

It never changes a row of the user's table. By default it installs triggers that record which
rows changed (``changes.py``; rows appended with the next rowid are found by their rowid, above
the table's high mark), so a backfill reads only those; ``track_changes=False`` leaves
the user's schema untouched (every backfill then compares a hash of every row's text).
``store="app.vectors.db"`` keeps the vectors, the keyword index and the index files in another
SQLite file: the connection's main database is then that file and the user's is attached
read-only as ``src`` (so every table the engine creates lands in the store's file and nothing
in the user's); triggers cannot write across files, so changes are found by the hash scan.

The settings (key, columns or template, where) are recorded in the store's meta table: a
later ``TableStore(path, table)`` without columns or template reuses them, and a store opened
with other settings re-embeds what they change at its next backfill.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from .. import validation as check
from ..errors import EmbeddingError, InvalidInputError
from ..filters import compile_where
from ..handle import sqlite_error
from ..mixin import EmbeddableDBMixin
from ..options import StoreOptions
from .changes import ChangeLog, Triggers
from .opening import bound, connect, refuse_our_own, store_table_name
from .schema import Key, TableInfo, TextSpec, check_where, choose_key, describe, quote, text_spec
from .tracking import ChangeTracking

SETTINGS_KEY = "table_store"
KIND = "row"
MODES = ("vector", "keyword", "hybrid")
PAGE = 1_000  # rows read per query
_CHUNK = 400  # keys per IN (...) list (each may be bound twice)


class TableStore(ChangeTracking, EmbeddableDBMixin):
    """A store over an existing table: its rows are the records (see the module docstring)."""

    def __init__(
        self,
        path_or_connection: str | os.PathLike | sqlite3.Connection,
        table: str,
        *,
        columns: list[str] | None = None,
        template: str | None = None,
        key: str | None = None,
        where: str | None = None,
        store: str | os.PathLike | None = None,
        track_changes: bool = True,
        **options: Any,
    ) -> None:
        """``options`` are the mixin's (``backend``, ``encoder``, ``read_only``, ...); all
        arguments are checked before anything is written."""
        checked = StoreOptions.from_keywords(options, "TableStore.__init__")
        if not isinstance(track_changes, bool):
            raise InvalidInputError(f"track_changes must be True or False, got {track_changes!r}")
        self.conn, self._owns_conn, schema = connect(path_or_connection, store, checked.read_only)
        try:
            self._open(schema, table, columns, template, key, where, store, track_changes, options)
        except sqlite3.OperationalError as exc:
            self._close_conn()
            raise sqlite_error(str(path_or_connection), exc) from exc
        except BaseException:
            self._close_conn()
            raise

    def _open(self, schema, table, columns, template, key, where, store, track_changes, options):
        conn = self.conn
        info = describe(conn, schema, table)
        self.embedding_table = store_table_name(info.name)
        if schema == "main":
            refuse_our_own(conn, info.name)
        recorded = self._recorded_settings()
        if columns is None and template is None:
            if recorded is None:
                raise InvalidInputError(
                    f"table {info.name!r} is not embedded yet: give columns=[...] or "
                    "template='...' to say which text to embed"
                )
            columns, template = recorded["columns"], recorded["template"]
            key, where = recorded["key"], recorded["where"]
        self.table_info: TableInfo = info
        self._key: Key = choose_key(info, key)
        self._text: TextSpec = text_spec(info, columns, template)
        self._where, where_columns = check_where(conn, info, where)
        super().__init__(**options)
        self._log: ChangeLog | None = None
        if track_changes and store is None and not self.embedding_options.read_only:
            watched = (*self._text.columns, *where_columns)
            self._log = self._change_log(watched)
        if not self.embedding_options.read_only:
            with self.embedding_transaction():
                if recorded is None or {**recorded, "track_changes": None} != {
                    **self.table_settings, "track_changes": None
                }:
                    self._write_meta(SETTINGS_KEY, json.dumps(self.table_settings))
                if self._log is not None and not self._log.in_place():
                    self._log.install()

    def _change_log(self, watched: tuple[str, ...]) -> ChangeLog:
        triggers = Triggers(self.table_info, self._key, watched, self.embedding_table,
                            appended_by_rowid=True)
        return ChangeLog(self.conn, self.embedding_table, [triggers])

    # -- settings --------------------------------------------------------------------------------
    @property
    def table_settings(self) -> dict[str, Any]:
        """What is embedded: the table, key, columns or template, and where."""
        return {"table": self.table_info.name, "key": self._key.column or "rowid",
                **self._text.settings(), "where": self._where,
                "track_changes": getattr(self, "_log", None) is not None}

    @property
    def embedded_columns(self) -> tuple[str, ...]:
        """The columns whose text is embedded (a template's fields, in order)."""
        return self._text.columns

    def _recorded_settings(self) -> dict[str, Any] | None:
        meta = f"{self.embedding_table}_meta"
        if self.conn.execute("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?",
                             (meta,)).fetchone() is None:
            if self.conn.execute("SELECT 1 FROM main.sqlite_master WHERE name = ?",
                                 (self.embedding_table,)).fetchone():
                raise EmbeddingError(
                    f"this database already has a table {self.embedding_table!r} that is not a "
                    "TableStore's: rename it, or use store= to keep the vectors in another file"
                )
            return None
        row = self.conn.execute(f"SELECT value FROM {quote(meta)} WHERE key = ?",
                                (SETTINGS_KEY,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _write_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            f"INSERT INTO {quote(self.embedding_table + '_meta')}(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value),
        )

    # -- the mixin's contract --------------------------------------------------------------------
    def embedding_text(self, record: dict[str, Any]) -> str:
        return self._text.text(record)

    def _select(self, columns: tuple[str, ...] | None = None) -> str:
        wanted = self._text.columns if columns is None else columns
        return f"SELECT {self._key.expr}, {', '.join(map(quote, wanted))} FROM {self.table_info.qualified}"

    def _rows(self, sql: str, args: list[Any], columns: tuple[str, ...]) -> Iterator[tuple[Any, dict]]:
        for raw, *values in self.conn.execute(sql, args).fetchall():
            yield raw, dict(zip(columns, values, strict=True))

    def iter_records(self) -> Iterator[tuple[Any, dict[str, Any], str]]:
        """Every row (that ``where`` selects and whose text is not empty), a page at a time in
        key order."""
        self._ensure_open()
        k, columns = self._key.expr, self._text.columns
        extra = f" AND ({self._where})" if self._where else ""
        first = f"{self._select()} WHERE {k} IS NOT NULL{extra} ORDER BY {k} LIMIT ?"
        later = f"{self._select()} WHERE {k} > ?{extra} ORDER BY {k} LIMIT ?"
        last: Any = None
        while True:
            with self.embedding_lock:
                page = list(self._rows(first if last is None else later,
                                       [PAGE] if last is None else [last, PAGE], columns))
            for raw, row in page:
                if self._text.text(row).strip():
                    yield raw, row, KIND
            if len(page) < PAGE:
                return
            last = page[-1][0]

    def _records_of(self, keys: list[str]) -> Iterator[tuple[Any, dict[str, Any], str]]:
        """The rows of these keys that exist (and that ``where`` selects)."""
        k, columns = self._key.expr, self._text.columns
        extra = f" AND ({self._where})" if self._where else ""
        for start in range(0, len(keys), _CHUNK):
            args = bound(keys[start : start + _CHUNK])
            sql = f"{self._select()} WHERE {k} IN ({','.join('?' * len(args))}){extra}"
            with self.embedding_lock:
                rows = list(self._rows(sql, args, columns))
            for raw, row in rows:
                if self._text.text(row).strip():
                    yield raw, row, KIND

    # -- backfill: only what the triggers recorded (tracking.py) ---------------------------------
    def _change_basis(self) -> dict[str, Any]:
        settings = {k: v for k, v in self.table_settings.items() if k != "track_changes"}
        return {"model": self.model_id, "embedding_version": self.embedding_version,
                "settings": settings}

    # -- search ------------------------------------------------------------------------------------
    def rows(self, keys: list[Any]) -> dict[str, dict[str, Any]]:
        """record id -> the whole row, for those of ``keys`` that exist (and ``where`` selects)."""
        ids = check.record_keys(keys)
        self._ensure_open()
        columns = self.table_info.columns
        extra = f" AND ({self._where})" if self._where else ""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _CHUNK):
            args = bound(ids[start : start + _CHUNK])
            sql = (f"{self._select(columns)} WHERE {self._key.expr} IN "
                   f"({','.join('?' * len(args))}){extra}")
            with self.embedding_lock:
                for raw, row in self._rows(sql, args, columns):
                    found[check.record_key(raw)] = row
        return found

    def search(
        self, query: Any, top_k: int = 10, *, mode: str = "vector", where: Any = None
    ) -> list[dict[str, Any]]:
        """The ``top_k`` rows best matching ``query``, best first, each a dict of its columns
        plus ``_distance`` (``mode="vector"``: 1 - cosine, lower is better) or ``_score``
        (``"keyword"``: -bm25, and ``"hybrid"``: higher is better). ``where`` is a dict of
        column -> value or column -> (operator, value), operators ``= != < <= > >= in like``
        (``filters.py``): only the rows it selects are searched, and still ``top_k`` of them
        come back when that many match. Rows deleted since the last backfill are skipped."""
        label = "_distance" if mode == "vector" else "_score"
        return [{**row, label: value}
                for _, row, value in self.keyed_search(query, top_k, mode=mode, where=where)]

    def keyed_search(
        self, query: Any, top_k: int = 10, *, mode: str = "vector", where: Any = None
    ) -> list[tuple[str, dict[str, Any], float]]:
        """``search`` as (key, row, distance or score) triples: for callers that need to know
        which row each hit is when the key is not one of the row's columns (the rowid)."""
        top_k = check.check_top_k(top_k)
        if mode not in MODES:
            raise InvalidInputError(f"unknown search mode {mode!r}: choose from {', '.join(MODES)}")
        self._ensure_open()
        ids = self._matching(where)
        if ids is not None and not ids:
            return []
        find = self._finder(query, mode, ids)
        want = top_k
        while True:
            found = find(want)
            rows = self.rows([key for key, _ in found])
            hits = [(key, rows[key], score) for key, score in found if key in rows]
            if len(hits) >= top_k or len(found) < want:
                return hits[:top_k]
            want *= 4

    def _matching(self, where: Any) -> list[str] | None:
        """The keys of the rows a search's ``where`` dict selects (``filters.py``: columns
        checked, values bound), or None for no filter."""
        if where is None:
            return None
        columns = {column: quote(column) for column in self.table_info.columns}
        condition, params = compile_where(where, columns, f"table {self.table_info.name!r}")
        extra = f" AND ({self._where})" if self._where else ""
        sql = (f"SELECT {self._key.expr} FROM {self.table_info.qualified} "
               f"WHERE ({condition}){extra}")
        with self.embedding_lock:
            raw = [row[0] for row in self.conn.execute(sql, params)]
        keys = []
        for value in raw:
            try:
                keys.append(check.record_key(value))
            except InvalidInputError:  # a NULL key names no vector
                continue
        return keys

    def _finder(self, query: Any, mode: str, ids: list[str] | None) -> Callable[[int], list]:
        if mode == "keyword":
            return lambda n: self.search_by_keyword(query, n, ids=ids)
        if mode == "hybrid":
            return lambda n: [(hit.record_id, hit.score)
                              for hit in self.search_hybrid(query, n, ids=ids)]
        vector = self.encode_texts([query])[0] if isinstance(query, str | bytes) else query
        return lambda n: self.search_by_vector(vector, n, ids=ids)

    def similar(self, key: Any, top_k: int = 10) -> list[dict[str, Any]]:
        """The ``top_k`` rows nearest to the row ``key`` (itself left out), with ``_distance``."""
        rid = check.record_key(key)
        top_k = check.check_top_k(top_k)
        vector = self.get_vector(rid)
        if vector is None:
            raise InvalidInputError(
                f"row {key!r} of {self.table_info.name!r} has no vector: is the key right, "
                "and has backfill_embeddings() run since it was added?"
            )
        want = top_k + 1
        while True:
            found = [(k, d) for k, d in self.search_by_vector(vector, want) if k != rid]
            rows = self.rows([k for k, _ in found])
            hits = [{**rows[k], "_distance": d} for k, d in found if k in rows]
            if len(hits) >= top_k or len(found) < want - 1:
                return hits[:top_k]
            want *= 4

    # -- closing and dropping ----------------------------------------------------------------------
    def _close_conn(self) -> None:
        if getattr(self, "_owns_conn", False):
            self.conn.close()

    def close(self) -> None:
        """Flush the index files; close the connection if this store opened it."""
        try:
            super().close()
        finally:
            self._close_conn()

    def drop(self) -> None:
        """Remove all this store added -- triggers, change table, vectors, keyword index,
        index files -- and close it. The user's rows are left alone."""
        self._ensure_open(write="drop()")
        with self.embedding_lock:
            EmbeddableDBMixin.close(self)
            with self.conn:
                if self._log is not None:
                    self._log.drop()
                else:  # triggers installed by an earlier open with track_changes
                    self._change_log(()).drop()
                for suffix in ("_fts", "_text", "", "_meta"):
                    self.conn.execute(f"DROP TABLE IF EXISTS main.{quote(self.embedding_table + suffix)}")
            for path in (self.index_path, self.metadata_path,
                         None if self.index_path is None else self.index_path + ".lock"):
                if path is not None and os.path.isfile(path):
                    os.remove(path)
            self._close_conn()
