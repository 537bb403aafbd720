"""What the six databases share: paths, CRUD that keeps vectors in step, search, backfill.

A database is a ``RecordDB`` subclass that names itself (``name``), its index file
(``index_filename``) and its tables (``tables``: one ``TableSpec`` per record class; the first
is the primary table that ``get``/``update``/``delete``/``fetch``/``count`` use when no
``kind`` is given). Each record class renders its own ``embedding_text()``.

Record ids in the embeddings table are ``"<kind>:<row id>"`` (``"bot:12"``,
``"telemetry:12"``) in every database, so the tables of one store can never collide and a
search hit always says which table it came from.

Triggers record which records change, whoever writes (``changes.py``), so a backfill reads
only those; ``backfill_embeddings(full=True)`` reads every record and compares hashes.

A database opens on SQLite (a file under the data directory) or, given ``url=`` or
``$EMBEDDABLE_DB_URL``, on PostgreSQL (a schema named after it: ``opening.py``); the same SQL,
written once with ``?`` placeholders, runs on both (``dialect.py`` holds what differs).

Every write is one transaction (``embedding_transaction()``) that holds the row change and
the vector change, committed together or not at all. Vectors are encoded before it begins; if
encoding fails, nothing is written, so a failed ``add`` changes nothing.
Text is checked before anything is written: a record whose embedded fields are all empty is
refused with an ``InvalidInputError`` (a ``ValueError``) naming those fields.

A database may be used from several threads of one process: its connection is usable from
any thread (SQLite: ``check_same_thread=False``) and every use of it holds ``embedding_lock``
(methods that run SQL are ``@serialised``; transactions hold it throughout). Encoding holds
no lock, so a thread waiting for the model blocks no other thread's search.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from .. import validation as check
from ..errors import EmbeddingError, InvalidInputError
from ..mixin import EmbeddableDBMixin
from ..options import StoreOptions, database_paths, option_keywords
from ..tables.tracking import ChangeTracking
from . import opening, searching
from .changes import library_version, open_change_log, records_of
from .opening import serialised
from .records import TableSpec, UnreadableRow, positive_int, row_id
from .searching import SearchHit
from .timestamps import utc_now

log = logging.getLogger(__name__)

PAGE = 500  # rows read per query by iter_records


class RecordDB(ChangeTracking, EmbeddableDBMixin):
    """A database of records (SQLite or PostgreSQL) whose vectors are kept in step on every
    write."""

    #: Folder and file stem under the data directory: ``<data_dir>/<name>/<name>.db``.
    name: ClassVar[str]
    #: The index file's default name, next to the SQLite file.
    index_filename: ClassVar[str]
    #: The tables, primary first.
    tables: ClassVar[tuple[TableSpec, ...]]
    _by_kind: ClassVar[dict[str, TableSpec]]
    _by_type: ClassVar[dict[type, TableSpec]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "tables" in cls.__dict__:
            cls.embedding_table = f"{cls.name}_embeddings"
            cls.embedding_kinds = tuple(spec.kind for spec in cls.tables)
            cls._by_kind = {spec.kind: spec for spec in cls.tables}
            cls._by_type = {spec.record_type: spec for spec in cls.tables}
            if "embedding_owner" not in cls.__dict__:  # the class that defines the tables
                cls.embedding_owner = cls.__qualname__

    @option_keywords(after="encoder")
    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        url: str | None = None,
        **keywords: Any,
    ) -> None:
        """``url`` (``postgresql://...``, default ``$EMBEDDABLE_DB_URL`` when neither ``path``
        nor ``data_dir`` is given) opens the database on PostgreSQL, in the schema named after
        it; ``read_url`` (default ``$EMBEDDABLE_DB_READ_URL`` with ``$EMBEDDABLE_DB_URL``) names
        a hot standby its searches go to. ``read_only=True`` writes nothing at all (SQLite:
        the file opened with ``mode=ro``, no folder, table, index, metadata or lock file);
        every write raises ``ReadOnlyError``. A writable SQLite open installs the triggers
        that record changes (``changes.py``).
        The other keywords are ``StoreOptions``' fields, all checked before anything is opened."""
        options = StoreOptions.from_keywords(keywords, "RecordDB.__init__")
        opened = opening.open_database(self, path, data_dir, url, options)
        try:
            super().__init__(**options.keywords(**opened))
            self._log = open_change_log(self, RecordDB)
        except BaseException as exc:  # e.g. a read-only file opened to write
            self.conn.close()
            error = opening.open_error(self, exc)
            if error is None:
                raise
            raise error from exc

    # -- paths -------------------------------------------------------------------------------------
    @classmethod
    def resolve_paths(
        cls,
        path: str | os.PathLike | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        index_path: str | os.PathLike | None = None,
        metadata_path: str | os.PathLike | None = None,
    ) -> tuple[str, str | None, str | None]:
        """(SQLite file, index file, metadata file), absolute; nothing is created on disk.

        Without ``path`` the database is ``<data_dir>/<name>/<name>.db``, where ``data_dir``
        defaults to ``$EMBEDDABLE_DB_HOME``, else ``./data``. The index defaults to
        ``index_filename`` next to the SQLite file and the metadata to the index path with
        ``.json``. ``path=":memory:"`` keeps everything in memory unless ``index_path`` is given.
        """
        return database_paths(
            cls.name, cls.index_filename, path, data_dir=data_dir, index_path=index_path,
            metadata_path=metadata_path,
        )

    def _extra_schema(self) -> None:
        """Hook for a database's own tables, triggers or indexes (inside the schema transaction;
        ``self._sql`` runs them, ``self._dialect`` says how to write them)."""

    def __repr__(self) -> str:
        if self.url is not None:
            return f"{type(self).__name__}(url={self.url!r})"
        return f"{type(self).__name__}({self.path!r})"

    # -- ids and specs -----------------------------------------------------------------------------
    def _reader(self) -> Any:
        """What runs our SQL, once it is certain the database is open (and not a fork's copy)."""
        self._ensure_open()
        return self._sql

    def _spec(self, kind: str | None) -> TableSpec:
        if kind is None:
            return self.tables[0]
        return self._by_kind[check.check_kind(kind, self.embedding_kinds)]

    def _spec_of(self, record: Any) -> TableSpec:
        spec = self._by_type.get(type(record))
        if spec is None:
            names = ", ".join(t.__name__ for t in self._by_type)
            raise InvalidInputError(
                f"{type(self).__name__} stores {names}, not {type(record).__name__}"
            )
        return spec

    def vector_key(self, record_id: int, kind: str | None = None) -> str:
        """The id of a record's vector in the embeddings table: ``"<kind>:<row id>"``."""
        return f"{self._spec(kind).kind}:{row_id(record_id)}"

    def _parse_key(self, key: str) -> tuple[TableSpec, int] | None:
        kind, _, number = key.partition(":")
        spec = self._by_kind.get(kind)
        if spec is None or not number.isdigit():
            return None
        return spec, int(number)

    # -- embedding text ----------------------------------------------------------------------------
    def embedding_text(self, record: Any) -> str:
        """The text a record is embedded from (see the class docstring); rows are accepted too."""
        if isinstance(record, UnreadableRow):
            raise record.error
        if isinstance(record, sqlite3.Row | Mapping):
            if len(self.tables) > 1:
                raise InvalidInputError(
                    f"{type(self).__name__} has several tables: convert the row with "
                    "record_from_row(row, kind=...) first"
                )
            record = self.record_from_row(record)
        self._spec_of(record)
        return record.embedding_text()

    def record_from_row(self, row: sqlite3.Row | Mapping[str, Any], *, kind: str | None = None) -> Any:
        """The record for a row of the ``kind`` table, keyed by column names (``type``, not
        ``type_``), as read with plain SQL and ``sqlite3.Row`` (or psycopg's ``dict_row``);
        lists may be JSON text."""
        return self._spec(kind).from_mapping(row)

    def _checked_text(self, record: Any) -> str:
        text = self.embedding_text(record)
        if not text.strip():
            fields = ", ".join(type(record).EMBEDDED_FIELDS)
            raise InvalidInputError(
                f"this {type(record).__name__} has nothing to embed: fill in at least one of "
                f"{fields}"
            )
        return text

    # -- transactions ------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One write transaction for a row change and its vector change (``embedding_transaction``:
        they commit together, in whichever order they were written, or neither does)."""
        self._ensure_open(write="this change")
        with self.embedding_lock:  # before looking: another thread's transaction may be open
            if self._engine.in_transaction():
                raise EmbeddingError(
                    f"{type(self).__name__}.conn has an open transaction: commit or roll it "
                    "back first"
                )
            try:
                with self.embedding_transaction():
                    since = None if self._log is None else self._log.last_seq()
                    yield self._sql
                    if since is not None:  # the vectors were written here: nothing to backfill
                        self._log.forget_since(since, self._change_basis())
            except self._dialect.integrity_error as exc:
                raise InvalidInputError(f"{type(self).__name__}: {exc}") from exc

    # -- CRUD ---------------------------------------------------------------------------------------
    def add(self, record: Any) -> int:
        """Store a record and its vector in one transaction; returns (and sets) ``record.id``.

        It always inserts a new row: an ``id`` the record already has is replaced.
        """
        return self._insert(record)

    def _source_of(self, record: Any) -> str:
        """The ``source_id`` stored beside a record's vector, on insert and on every re-embed
        ("" unless a database says otherwise)."""
        return ""

    def _insert(self, record: Any) -> int:
        self._ensure_open(write=f"adding a {type(record).__name__}")  # before encoding
        spec = self._spec_of(record)
        checked = spec.check_record(record)
        self._checked_text(record)
        for field, value in checked.items():  # e.g. tuples become lists, as they read back
            setattr(record, field, value)
        # Encode before BEGIN IMMEDIATE: other writers never wait for the model.
        (row,) = self.prepare_embeddings([(f"{spec.kind}:new", record, spec.kind)],
                                         source_ids=[self._source_of(record)])
        with self._transaction() as conn:
            record_id = spec.insert(conn, checked)
            record.id = record_id
            try:
                self.store_embeddings([dataclasses.replace(row, record_id=f"{spec.kind}:{record_id}")])
            except BaseException:
                record.id = None
                raise
        return record_id

    @serialised
    def get(self, record_id: int, *, kind: str | None = None) -> Any | None:
        """The record with this id (in the ``kind`` table), or None."""
        spec = self._spec(kind)
        found = spec.select(self._reader(), "WHERE id = ?", (row_id(record_id),))
        return found[0] if found else None

    def update(self, record_id: int, /, *, kind: str | None = None, **fields: Any) -> Any | None:
        """Change some fields; re-embeds only if the embedded text changed. Returns the record.

        Field names are checked against the record class (unknown ones raise ``ValueError``).
        Returns None when there is no such record.
        """
        updated = self._update_rows(self._spec(kind), [record_id], fields)
        return updated[0] if updated else None

    def _update_rows(self, spec: TableSpec, record_ids: Sequence[int], fields: Mapping[str, Any]):
        """Apply the same changes to several rows: one transaction, one batch of vectors.

        The new texts are encoded before the write transaction starts; a row that another
        writer changed in between is encoded again inside it.
        """
        self._ensure_open(write="update()")  # before encoding
        changes = spec.check_fields(fields)
        ids = list(dict.fromkeys(row_id(rid) for rid in record_ids))
        if spec.touch and spec.touch not in changes:
            changes[spec.touch] = utc_now()
        with self.embedding_lock:
            olds = self._select_ids(spec, self._reader(), ids)
        early = self._reembeds(spec, olds, changes)
        prepared = {row.record_id: row for row in self._prepare_reembeds(early)} if early else {}
        texts = {key: self.embedding_text(new) for key, new, _ in early}
        updated, rows, late = [], [], []
        with self._transaction() as conn:
            current = self._select_ids(spec, conn, ids)
            for key, new, kind in self._reembeds(spec, current, changes):
                if key in prepared and texts[key] == self.embedding_text(new):
                    rows.append(prepared[key])
                else:
                    late.append((key, new, kind))
            updated = [dataclasses.replace(old, **changes) for old in current]
            spec.update(conn, [record.id for record in updated], changes)
            if late:
                rows += self._prepare_reembeds(late)
            if rows:
                self.store_embeddings(rows)
        order = {rid: i for i, rid in enumerate(ids)}
        return sorted(updated, key=lambda record: order[record.id])

    @staticmethod
    def _select_ids(spec: TableSpec, conn: Any, ids: Sequence[int]) -> list[Any]:
        found = []
        for start in range(0, len(ids), PAGE):
            chunk = ids[start : start + PAGE]
            marks = ",".join("?" * len(chunk))
            found += spec.select(conn, f"WHERE id IN ({marks}) ORDER BY id", chunk)
        return found

    def _prepare_reembeds(self, items: list) -> list:
        """Vectors for changed records, each keeping its source (``_source_of``)."""
        return self.prepare_embeddings(items, source_ids=[self._source_of(new) for _, new, _ in items])

    def _reembeds(self, spec: TableSpec, olds: list[Any], changes: Mapping[str, Any]) -> list:
        """(key, new record, kind) for the rows whose embedded text the changes alter."""
        out = []
        for old in olds:
            new = dataclasses.replace(old, **changes)
            if self.embedding_text(new) != self.embedding_text(old):
                self._checked_text(new)
                out.append((f"{spec.kind}:{new.id}", new, spec.kind))
        return out

    def delete(self, record_id: int, *, kind: str | None = None) -> bool:
        """Delete a record and its vector; True when there was such a record."""
        self._ensure_open(write="delete()")
        spec = self._spec(kind)
        record_id = row_id(record_id)
        with self._transaction() as conn:
            existed = spec.delete(conn, record_id)
            self.remove_embedding(f"{spec.kind}:{record_id}")
        return existed

    @serialised
    def fetch(self, limit: int = 50, *, kind: str | None = None) -> list[Any]:
        """The newest ``limit`` records (highest id first)."""
        limit = positive_int(limit, "limit")
        return self._spec(kind).select(self._reader(), "ORDER BY id DESC LIMIT ?", (limit,))

    @serialised
    def count(self, *, kind: str | None = None) -> int:
        """How many records the ``kind`` table (default: the primary one) holds."""
        spec = self._spec(kind)
        return self._reader().execute(f"SELECT COUNT(*) FROM {spec.table}").fetchone()[0]

    # -- search ------------------------------------------------------------------------------------
    def search(
        self,
        query: Any,
        top_k: int = 5,
        *,
        kind: str | None = None,
        mode: str | None = None,
        where: Mapping[str, Any] | None = None,
        reranker: Any = None,
    ) -> list[SearchHit]:
        """The ``top_k`` records best matching ``query`` (a text or a vector), best first.

        ``mode``: ``"vector"``, ``"keyword"`` or ``"hybrid"`` (default: hybrid for a text, the
        benchmark's winner; vector for a vector). ``where``: field -> value, or field ->
        (operator, value) with an operator among ``= != < <= > >= in like``, on the record
        dataclass's fields (an unknown one is a ``ValueError`` naming the valid ones); the
        filter runs before the search, so it still returns ``top_k`` when that many match.
        ``reranker`` (hybrid mode): an object with ``rank(query, texts) -> scores``.
        Vectors whose rows have vanished (deleted with plain SQL, awaiting backfill) are
        skipped; the search then asks for more.
        """
        self._ensure_open()
        top_k = check.check_top_k(top_k)
        mode = searching.check_mode(mode, query)
        if reranker is not None and mode != "hybrid":
            raise InvalidInputError("reranker= reorders hybrid results: pass mode='hybrid'")
        if kind is not None:
            kind = self._spec(kind).kind
        with self.embedding_lock:
            ids = searching.matching_keys(self, where, kind)
        if mode == "vector" and isinstance(query, str | bytes):
            query = self.encode_texts([query])[0]
        want = top_k
        while True:
            found = searching.found(self, query, want, kind=kind, mode=mode, ids=ids,
                                    reranker=reranker)
            hits = self._resolve(found)
            if len(hits) >= top_k or len(found) < want:
                return hits[:top_k]
            want *= 4

    @serialised
    def _resolve(self, found: list[searching.Found]) -> list[SearchHit]:
        return searching.resolve(self, found)

    # -- backfill ----------------------------------------------------------------------------------
    def iter_records(self) -> Iterator[tuple[str, Any, str]]:
        """Every row of every table as ``("<kind>:<id>", record, kind)``, read a page at a time."""
        self._ensure_open()
        for spec in self.tables:
            last = 0
            while True:
                page = spec.select(
                    self._sql, "WHERE id > ? ORDER BY id LIMIT ?", (last, PAGE), lenient=True
                )
                for record in page:
                    yield f"{spec.kind}:{record.id}", record, spec.kind
                if len(page) < PAGE:
                    break
                last = page[-1].id

    def _records_of(self, keys: list[str]) -> Iterator[tuple[str, Any, str]]:
        return records_of(self, keys, PAGE)

    def _change_basis(self) -> dict[str, Any]:
        return {"model": self.model_id, "embedding_version": self.embedding_version,
                "library": library_version()}

    # -- closing -----------------------------------------------------------------------------------
    @serialised
    def close(self) -> None:
        """Flush the index files and close the connection (safe to call twice). In a child
        process that fork() made, it only marks the store closed: the connection's files and
        locks are the parent's."""
        try:
            super().close()
        finally:
            if not self._handle.forked:
                self.conn.close()

    def __enter__(self):
        return self
