"""The embeddings table in the store's own SQLite database: the source of truth for vectors.

Every vector is a float32 BLOB in a row keyed by ``record_id``. Each row has an integer ``label``
(its rowid, never reused by another record) that the vector indexes use as item id, and a
``seq`` taken from a per-table counter on every change. Index files remember the highest ``seq``
they contain, so any process can bring an index up to date by reading only the rows changed
since (``changes_since``) instead of rebuilding. Removals are soft (``deleted = 1``, vector
dropped) so that they also carry a ``seq`` and reach every process's index.

Each vector's text is kept beside it, in the keyword index (``keywords.py``), written and
removed in the same transaction; ``schema.py`` creates the tables and migrates older stores.

The meta table also records the table's ``owner`` (see ``owner.py``): the name of the store
class whose vectors it holds, written with the schema, or by the first write of a store made
before owners were recorded (opening writes nothing), and checked on open and on that write.
"""

from __future__ import annotations

import itertools
import operator
import re
import sqlite3
from collections.abc import Container, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import numpy as np

from ...errors import StoreConflictError
from ...rows import Change, StoredState, VectorRow
from . import schema
from .keywords import KeywordIndex
from .transaction import atomic

__all__ = ["Change", "EmbeddingStore", "StoredState", "VectorRow", "atomic"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
FETCH_CHUNK = 10_000
_FIRST = operator.itemgetter(0)
_REST = operator.itemgetter(slice(1, None))
_MAKE_STATE = StoredState._make
_STATE = (
    "record_id, COALESCE(text_hash, ''), COALESCE(model, ''), COALESCE(embedding_version, 0), "
    "source_id, kind, "
)


def utc_now() -> str:
    """A timezone-aware UTC ISO timestamp, taken now (never at import)."""
    return datetime.now(UTC).isoformat()


def _chunks(ids: list[str], size: int = 500) -> Iterator[tuple[list[str], str]]:
    """``ids`` in slices short enough for one ``IN (...)`` list, each with its placeholders."""
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        yield chunk, ",".join("?" * len(chunk))


def vector_to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def blob_to_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


class EmbeddingStore:
    """Reads and writes one embeddings table (and its ``<table>_meta`` companion)."""

    def __init__(
        self, conn: sqlite3.Connection, table: str = "embeddings", *, owner: str | None = None
    ) -> None:
        if not _IDENTIFIER.match(table):
            raise ValueError(f"embedding table name {table!r} is not a plain SQL identifier")
        self.conn = conn
        self.table = table
        self.meta_table = f"{table}_meta"
        self.owner = owner
        self._owner_recorded = owner is None  # None: a caller that checks no owner
        self._version_cursor = conn.cursor()  # reused: asked before every search
        self.keywords = KeywordIndex(conn, table)

    # -- schema and store identity ------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create the tables once, or migrate them (``schema.py``); WAL and a busy timeout let
        several processes share the file."""
        conn = self.conn
        conn.execute("PRAGMA busy_timeout = 30000")
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            if not conn.in_transaction:
                conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (self.meta_table,)
        ).fetchone()
        if exists:
            recorded = self.meta("owner")
            self._check_owner(recorded)
            self._owner_recorded = self._owner_recorded or recorded is not None
            schema.upgrade(self)
            return
        self._owner_recorded = True  # recorded below, with the schema
        with self.write():
            schema.create(self, utc_now())
            self._check_owner(self.meta("owner"))  # another class may have created it first

    def meta(self, key: str) -> str | None:
        row = self.conn.execute(
            f"SELECT value FROM {self.meta_table} WHERE key = ?", (key,)
        ).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set one meta value; call inside ``write()``."""
        self.conn.execute(
            f"INSERT INTO {self.meta_table}(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @property
    def store_id(self) -> str:
        value = self.meta("store_id")
        assert value is not None, "ensure_schema() must run first"
        return value

    def identity(self) -> tuple[str | None, int | None]:
        """The (model, dimension) the store's vectors are made with, once it has any."""
        dim = self.meta("dim")
        return self.meta("model"), (int(dim) if dim is not None else None)

    # -- transactions ---------------------------------------------------------------------
    def _check_owner(self, recorded: str | None) -> None:
        if recorded is None or self.owner is None or recorded == self.owner:
            return
        database = next(
            (row[2] for row in self.conn.execute("PRAGMA database_list") if row[1] == "main"), ""
        ) or ":memory:"
        suggested = re.sub(r"\W+", "_", self.owner.rsplit(".", 1)[-1]).strip("_").lower()
        raise StoreConflictError(
            f"table {self.table!r} of {database} holds the vectors of {recorded}, not "
            f"{self.owner}: give {self.owner} its own embedding_table (a class attribute, e.g. "
            f"embedding_table = {(suggested or 'other')[:40] + '_embeddings'!r}), "
            f"or, if {self.owner} is {recorded} renamed, set embedding_owner = {recorded!r} on it"
        )

    def check_owner(self) -> None:
        """Refuse a table another store class owns (for opens that create nothing)."""
        self._check_owner(self.meta("owner"))

    def _record_owner(self) -> None:
        """Check the owner inside the write transaction, and record it if none is yet."""
        recorded = self.meta("owner")
        self._check_owner(recorded)
        if recorded is None:
            self.set_meta("owner", self.owner)

    @contextmanager
    def write(self) -> Iterator[None]:
        """The store's changes as one atomic unit (see ``atomic``): committed here when no
        transaction was open, else left for the transaction's owner to commit."""
        with atomic(self.conn) as owned:
            if not self._owner_recorded:
                self._record_owner()
            yield
        if owned:  # else recorded only once the owner commits: checked again next time
            self._owner_recorded = True

    def _next_seqs(self, n: int) -> int:
        """Reserve ``n`` sequence numbers; returns the first. Call inside ``write()``."""
        (last,) = self.conn.execute(
            f"UPDATE {self.meta_table} SET value = CAST(value AS INTEGER) + ? "
            "WHERE key = 'seq' RETURNING CAST(value AS INTEGER)",
            (n,),
        ).fetchone()
        return last - n + 1

    # -- writes ------------------------------------------------------------------------------
    def upsert(self, rows: list[VectorRow]) -> None:
        """Insert or replace vectors, and their keyword rows; a record keeps its label."""
        if not rows:
            return
        now = utc_now()
        with self.write():
            first = self._next_seqs(len(rows))
            self.conn.executemany(
                f"""INSERT INTO {self.table} (record_id, kind, source_id, vector, dim, model,
                        text_hash, embedding_version, created_at, updated_at, seq, deleted)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)
                    ON CONFLICT(record_id) DO UPDATE SET
                        kind = excluded.kind, source_id = excluded.source_id,
                        vector = excluded.vector, dim = excluded.dim, model = excluded.model,
                        text_hash = excluded.text_hash,
                        embedding_version = excluded.embedding_version,
                        created_at = CASE WHEN deleted THEN excluded.created_at
                                          ELSE created_at END,
                        updated_at = excluded.updated_at, seq = excluded.seq, deleted = 0""",
                [
                    (
                        r.record_id,
                        r.kind,
                        r.source_id,
                        vector_to_blob(r.vector),
                        int(r.vector.shape[0]),
                        r.model,
                        r.text_hash,
                        r.embedding_version,
                        now,
                        now,
                        first + i,
                    )
                    for i, r in enumerate(rows)
                ],
            )
            self.keywords.write({r.record_id: r.text for r in rows})
            model, dim = self.identity()
            if model != rows[-1].model or dim != rows[-1].vector.shape[0]:
                self.set_meta("model", rows[-1].model)
                self.set_meta("dim", str(int(rows[-1].vector.shape[0])))

    def remove(self, record_ids: Iterable[str], *, through_seq: int | None = None) -> set[str]:
        """Soft-delete vectors and their keyword rows; returns the ids that had one (with
        ``through_seq``: only those last changed at or before it)."""
        ids = list(dict.fromkeys(record_ids))
        if not ids:
            return set()
        removed: set[str] = set()
        with self.write():
            present = (self._present(ids) if through_seq is None
                       else self.live_through(ids, through_seq))
            if present:
                first = self._next_seqs(len(present))
                now = utc_now()
                self.conn.executemany(
                    f"UPDATE {self.table} SET deleted = 1, vector = NULL, updated_at = ?, "
                    "seq = ? WHERE record_id = ?",
                    [(now, first + i, rid) for i, rid in enumerate(present)],
                )
                self.keywords.remove(present)
                removed.update(present)
        return removed

    def set_embedding_version(self, record_ids: Iterable[str], version: int) -> set[str]:
        """Mark vectors as current for ``version`` without re-encoding them."""
        ids = list(dict.fromkeys(record_ids))
        changed: set[str] = set()
        if not ids:
            return changed
        with self.write():
            present = self._present(ids)
            if present:
                first = self._next_seqs(len(present))
                self.conn.executemany(
                    f"UPDATE {self.table} SET embedding_version = ?, updated_at = ?, seq = ? "
                    "WHERE record_id = ?",
                    [(version, utc_now(), first + i, rid) for i, rid in enumerate(present)],
                )
                changed.update(present)
        return changed

    def _present(self, ids: list[str]) -> list[str]:
        present = []
        for chunk, marks in _chunks(ids):
            present += [
                r[0]
                for r in self.conn.execute(
                    f"SELECT record_id FROM {self.table} "
                    f"WHERE deleted = 0 AND record_id IN ({marks})",
                    chunk,
                )
            ]
        return present

    # -- reads -------------------------------------------------------------------------------
    def last_seq(self) -> int:
        return int(self.meta("seq") or 0)

    def changes_after(self, seq: int) -> int:
        """How many rows changed after ``seq`` (counted on the seq index, vectors unread)."""
        return self.conn.execute(
            f"SELECT COUNT(*) FROM {self.table} WHERE seq > ?", (seq,)
        ).fetchone()[0]

    def data_version(self) -> int:
        """Changes whenever another connection commits: a cheap "anything new?" check."""
        return self._version_cursor.execute("PRAGMA data_version").fetchone()[0]

    def changes_since(self, seq: int) -> list[Change]:
        rows = self.conn.execute(
            f"SELECT label, record_id, kind, model, deleted, vector, seq FROM {self.table} "
            "WHERE seq > ? ORDER BY seq",
            (seq,),
        ).fetchall()
        return [
            Change(
                label=label,
                record_id=record_id,
                kind=kind,
                model=model,
                vector=None if deleted or blob is None else blob_to_vector(blob),
                seq=row_seq,
            )
            for label, record_id, kind, model, deleted, blob, row_seq in rows
        ]

    def live_vectors(self, model: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """All current vectors of one model: (labels sorted ascending, float32 matrix)."""
        labels, chunks = [], []
        for chunk_labels, chunk in self.vector_chunks(model, dim):
            labels.append(chunk_labels)
            chunks.append(chunk)
        if not chunks:
            return np.empty(0, np.int64), np.empty((0, dim), np.float32)
        return np.concatenate(labels), np.concatenate(chunks)

    def vector_chunks(self, model: str, dim: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The current vectors of one model in label order, ``FETCH_CHUNK`` rows at a time:
        (labels, float32 matrix) per chunk. Read inside one transaction to be consistent."""
        cursor = self.conn.execute(
            f"SELECT label, vector FROM {self.table} "
            "WHERE deleted = 0 AND model = ? AND dim = ? ORDER BY label",
            (model, dim),
        )
        while rows := cursor.fetchmany(FETCH_CHUNK):
            labels = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            matrix = np.frombuffer(b"".join(r[1] for r in rows), "<f4").reshape(len(rows), dim)
            yield labels, matrix

    def mapping(self, model: str, dim: int) -> Iterator[tuple]:
        """(label, record_id, kind, source_id, created_at, embedding_version) of live vectors."""
        return self.conn.execute(
            f"SELECT label, record_id, kind, source_id, created_at, embedding_version "
            f"FROM {self.table} WHERE deleted = 0 AND model = ? AND dim = ? ORDER BY label",
            (model, dim),
        )

    def states_of(self, record_ids: list[str]) -> dict[str, StoredState]:
        """record_id -> what its vector was made from, for those of these that have one."""
        found: dict[str, StoredState] = {}
        keyword, join = self.keywords.state_sql()
        for chunk, marks in _chunks(record_ids):
            found.update(self._states(
                f"SELECT {_STATE}{keyword} FROM {self.table} e {join} "
                f"WHERE deleted = 0 AND record_id IN ({marks})", chunk,
            ))
        return found

    def stale_states(
        self, items: list[tuple[str, str, str]], model: str, embedding_version: int
    ) -> dict[str, StoredState | None]:
        """``Engine.stale_states``: the comparison runs in SQLite, against a ``VALUES`` list of
        the items, so a current vector's row never becomes a Python object (a no-op backfill
        of 1M records spent ~6 of its ~18 s profiled building states it then discarded)."""
        keyword, join = self.keywords.state_sql()
        found: dict[str, StoredState | None] = {}
        for start in range(0, len(items), 300):
            chunk = items[start : start + 300]
            rows = self.conn.execute(
                f"WITH j(k, h, t) AS (VALUES {','.join(['(?,?,?)'] * len(chunk))}) "
                f"SELECT j.k, e.record_id IS NOT NULL, {_STATE}{keyword} "
                f"FROM j LEFT JOIN {self.table} e ON e.record_id = j.k AND e.deleted = 0 {join} "
                "WHERE e.record_id IS NULL OR COALESCE(e.text_hash, '') != j.h "
                "OR COALESCE(e.model, '') != ? OR COALESCE(e.embedding_version, 0) < ? "
                f"OR e.kind IS NOT j.t OR NOT ({keyword})",
                [*itertools.chain.from_iterable(chunk), model, embedding_version],
            ).fetchall()
            for row in rows:
                found[row[0]] = _MAKE_STATE(row[3:]) if row[1] else None
        return found

    def _states(self, sql: str, args) -> dict[str, StoredState]:
        """Rows made into states by C-level iteration (map, zip): a Python loop building
        a NamedTuple per row was ~1.5 of a 1M no-op backfill's ~6 s."""
        rows = self.conn.execute(sql, args).fetchall()
        return dict(zip(map(_FIRST, rows), map(_MAKE_STATE, map(_REST, rows)), strict=True))

    def keys_not_in(
        self, seen: Container[str], after: str, limit: int = 20_000
    ) -> tuple[str | None, list[str]]:
        """(where the next page starts, or None at the end; the ids of the next ``limit`` rows
        after ``after`` that are not in ``seen``), read from the record_id index alone: no
        row, and so no vector, is read."""
        page = [
            row[0]
            for row in self.conn.execute(
                f"SELECT record_id FROM {self.table} WHERE record_id > ? "
                "ORDER BY record_id LIMIT ?",
                (after, limit),
            )
        ]
        return (page[-1] if len(page) == limit else None), [k for k in page if k not in seen]

    def written_since(self, record_ids: list[str], seq: int) -> set[str]:
        """Those of ``record_ids`` whose vector rows changed after ``seq`` (removals too)."""
        return set(self._ids_where(record_ids, "seq > ?", seq))

    def live_through(self, record_ids: list[str], through_seq: int) -> list[str]:
        """Those of ``record_ids`` that have a vector last changed at or before ``through_seq``."""
        return self._ids_where(record_ids, "deleted = 0 AND seq <= ?", through_seq)

    def _ids_where(self, record_ids: list[str], condition: str, seq: int) -> list[str]:
        found: list[str] = []
        for chunk, marks in _chunks(record_ids):
            found += [row[0] for row in self.conn.execute(
                f"SELECT record_id FROM {self.table} WHERE record_id IN ({marks}) "
                f"AND {condition} ORDER BY record_id", (*chunk, seq),
            )]
        return found

    def get_vector(self, record_id: str) -> np.ndarray | None:
        row = self.conn.execute(
            f"SELECT vector FROM {self.table} WHERE record_id = ? AND deleted = 0", (record_id,)
        ).fetchone()
        return None if row is None or row[0] is None else blob_to_vector(row[0])

    def count(self, model: str | None = None, dim: int | None = None) -> int:
        if model is None:
            sql, args = f"SELECT COUNT(*) FROM {self.table} WHERE deleted = 0", ()
        else:
            sql = f"SELECT COUNT(*) FROM {self.table} WHERE deleted = 0 AND model = ? AND dim = ?"
            args = (model, dim)
        return self.conn.execute(sql, args).fetchone()[0]

    def rows(self) -> int:
        """Every row, tombstones included: counted on an index (0.03 s at 1M), where counting
        live rows reads the whole table (0.7 s)."""
        return self.conn.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0]

    def model_counts(self) -> dict[str, int]:
        """How many live vectors each model made: more than one key means a half-switched store."""
        return dict(
            self.conn.execute(
                f"SELECT model, COUNT(*) FROM {self.table} WHERE deleted = 0 "
                "AND vector IS NOT NULL GROUP BY model ORDER BY COUNT(*) DESC"
            ).fetchall()
        )

    def max_label(self) -> int:
        """The largest label ever given (a rowid lookup, not a scan): labels beyond it are bogus."""
        return self.conn.execute(f"SELECT MAX(label) FROM {self.table}").fetchone()[0] or 0

    def scan(self) -> Iterator[tuple]:
        """(label, record_id, kind, model, dim, deleted, seq, vector blob) of every row, in label
        order: the full comparison ``verify_index()`` makes."""
        return self.conn.execute(
            f"SELECT label, record_id, kind, model, dim, deleted, seq, vector FROM {self.table} "
            "ORDER BY label"
        )
