"""One store as the pages see it, whichever kind it is: one of the six databases of a data
directory (``DatabaseView``) or an embedded table of a user's file (``TableView``).

Both answer the same few questions -- search one side (vector or keyword) as ``SearchHit``s,
a record by its kind and id as the URL spells it, the fields a filter may name, the text a
hit was embedded from -- so the ``Stores`` facade searches, fuses and summarises them alike
(``cli.hits.both_sides`` takes either). Each can reopen its store writable for the optional
backfill button; the pages themselves only ever hold read-only stores."""

from __future__ import annotations

import argparse
import dataclasses
import sqlite3
from contextlib import AbstractContextManager
from typing import Any

from ..cli.hits import field_sets
from ..cli.stores import Target, open_db, stored_backend
from ..cli.table_commands import Peek, embedded_tables, opened, peek
from ..databases import REGISTRY
from ..databases.searching import SearchHit
from ..errors import InvalidInputError


class NotFound(LookupError):
    """A store, kind or record the server does not have (a 404 page with this reason)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RowHit(SearchHit):
    """A hit on a table's row: its vector's key is the row's key itself (no ``kind:`` prefix)."""

    @property
    def key(self) -> str:
        return self.record_id


class DatabaseView:
    """One of the six databases: kinds are its tables' kinds, ids are row ids."""

    def __init__(self, target: Target, args: argparse.Namespace, model: str):
        self.name = target.name
        self.kinds: tuple[str, ...] = tuple(REGISTRY[target.name].embedding_kinds or ())
        self.backend = stored_backend(target) or "annoy"
        self._target, self._args, self._model = target, args, model
        self.store: Any = None

    def reopen(self, read_only: bool) -> AbstractContextManager[Any]:
        return open_db(self._target, self._args, model=self._model, read_only=read_only)

    def field_sets(self, kind: str | None) -> list[set[str]]:
        return field_sets(self.name, kind)

    def search(self, query: Any, top_k: int, *, kind: str | None, mode: str,
               where: Any) -> list[SearchHit]:
        return self.store.search(query, top_k, kind=kind, mode=mode, where=where)

    def record(self, kind: str, rid: str) -> tuple[dict[str, Any], str]:
        """(the record's fields, the key of its vector)."""
        if kind not in self.kinds:
            raise NotFound(f"{self.name} has no records of kind {kind!r}: its kinds are "
                           f"{', '.join(self.kinds)}")
        record = self.store.get(int(rid), kind=kind) if rid.isdigit() else None
        if record is None:
            raise NotFound(f"{self.name} has no {kind} record {rid}")
        return dataclasses.asdict(record), self.store.vector_key(int(rid), kind)

    def locate(self, key: str) -> tuple[str, str]:
        kind, _, rid = key.partition(":")
        return kind, rid

    def texts(self, keys: list[str]) -> dict[str, str]:
        out = {}
        for key in keys:
            kind, rid = self.locate(key)
            record = self.store.get(int(rid), kind=kind) if rid.isdigit() else None
            if record is not None:
                out[key] = self.store.embedding_text(record)
        return out

    def plan(self) -> Any:
        return self.store.backfill_plan(full=True)  # the change log alone counts changed rows

    # ``both_sides`` reads these of the store it is given
    def get_vector(self, key: str) -> Any:
        return self.store.get_vector(key)

    def embedding_text(self, record: Any) -> str:
        return self.store.embedding_text(record)

    def keyword_coverage(self, text: str, best_score: float | None = None) -> float:
        return self.store.keyword_coverage(text, best_score)


class TableView(DatabaseView):
    """An embedded table of a user's file: its kind is the table's name, ids are its keys."""

    def __init__(self, args: argparse.Namespace, found: Peek, name: str):
        self.name = name
        self.kinds = (found.table,)
        self.backend = found.backend or "annoy"
        self._args, self._found = args, found
        self.store: Any = None

    def reopen(self, read_only: bool) -> AbstractContextManager[Any]:
        if read_only:
            return opened(self._args, self._found)
        track = bool((self._found.settings or {}).get("track_changes", True))
        return opened(self._args, self._found, read_only=False, track_changes=track)

    def field_sets(self, kind: str | None) -> list[set[str]]:
        return [set(self.store.table_info.columns)] if kind in (None, self.kinds[0]) else []

    def search(self, query: Any, top_k: int, *, kind: str | None, mode: str,
               where: Any) -> list[SearchHit]:
        if kind not in (None, self.kinds[0]):
            return []
        return [RowHit(record_id=key, kind=self.kinds[0], record=row,
                       distance=value if mode == "vector" else None,
                       score=None if mode == "vector" else value)
                for key, row, value in self.store.keyed_search(query, top_k, mode=mode,
                                                               where=where)]

    def record(self, kind: str, rid: str) -> tuple[dict[str, Any], str]:
        if kind != self.kinds[0]:
            raise NotFound(f"{self.name} holds rows of {self.kinds[0]!r}, not {kind!r}")
        try:
            row = self.store.rows([rid]).get(rid)
        except InvalidInputError:  # a key no row can have (blank, too long)
            row = None
        if row is None:
            raise NotFound(f"{self.kinds[0]} has no row with key {rid!r}")
        return row, rid

    def locate(self, key: str) -> tuple[str, str]:
        return self.kinds[0], key

    def texts(self, keys: list[str]) -> dict[str, str]:
        return {key: self.store.embedding_text(row) for key, row in self.store.rows(keys).items()}


def table_views(files: list[str], model_backend: str) -> list[TableView]:
    """A view of every embedded table of each file, named ``<file stem>.<table>``."""
    views = []
    for file in files:
        args = argparse.Namespace(db=file, store=None, model_backend=model_backend,
                                  prog="embeddable-db", command="serve")
        try:
            names = embedded_tables(file)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{file} is not a SQLite database it can read: {exc}") from None
        stem = file.rsplit("/", 1)[-1].removesuffix(".db")
        for table in names:
            views.append(TableView(args, peek(args, table), f"{stem}.{table}"))
    return views
