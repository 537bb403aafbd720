"""The PostgreSQL engine: vectors in a pgvector table of the application's own database.

The table is the source of truth and the index at once (``schema.py``): PostgreSQL keeps the
HNSW and GIN indexes in step in every transaction, so there is no live view, no file, and
nothing to flush; another process's commit is seen by the next search. What the engine adds
is the Engine protocol's behaviour (``engine/__init__.py``), the same as the SQLite engine's:

- **transactions have one owner**: everything runs in ``conn.transaction()``, which begins and
  commits a transaction when none is open and is a savepoint inside one that is (the caller's
  ``BEGIN``, ``with conn.transaction():``, or psycopg's implicit one after a statement when
  ``autocommit`` is off). Reads run in one too, so the engine never leaves a transaction open
  behind it. A bulk write (a backfill's batch) inside a transaction it does not own is refused:
  with ``autocommit`` off, a ``SELECT`` in ``iter_records`` opens one, and every batch would
  wait, uncommitted, for a commit that never comes;
- **staleness** is the same ``StoredState`` (text hash, model, version, source id, kind,
  whether the text is in the keyword index), so backfill decides and counts the same;
- **orphans** (``unseen_keys``): ``seq`` is the writing transaction's id, and ``last_seq()``
  the snapshot's ``xmin`` - 1: every transaction at or below it had ended when it was read, so
  a vector at or below it was committed (or rolled back) before a backfill began reading its
  records, and one written by a transaction still running then is never taken for an orphan.
  (A sequence would hand out numbers in start order, not commit order.)

Its ``index_options`` (``backend="pgvector"``): ``m``, ``ef_construction`` (the HNSW index,
pgvector's defaults 16 and 64), ``ef_search`` (``search.DEFAULT_EF_SEARCH``); ``read_url``: ``replica.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Container, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg.vector import register_vector_info
from psycopg import pq, sql
from psycopg.types import TypeInfo

from ... import validation as check
from ...encoding import check_same_dimension
from ...errors import EmbeddingError, InvalidInputError, ModelConflictError
from ...options import StoreOptions
from ...reports import VerifyReport
from ...rows import StoredState, VectorRow
from . import export, schema, search, verify
from .export import key_list as _keys
from .export import stored_text as _text
from .schema import MAX_DIM, MAX_INDEXED_DIM, Names

PAGE = 20_000  # keys per page of unseen_keys
ANALYZE_AFTER = 10_000  # rows a backfill wrote before settle() refreshes the planner's stats
_STATE = "record_id, text_hash, model, embedding_version, source_id, kind, body IS NOT NULL"


class PostgresEngine:
    """One embeddings table in a psycopg 3 connection's schema."""

    name = "postgres"

    @staticmethod
    def check_connection(conn: Any, who: str) -> None:
        if not isinstance(conn, psycopg.Connection):
            raise EmbeddingError(
                f"{who}.conn is a {type(conn).__name__}: the PostgreSQL engine needs a "
                "psycopg.Connection (psycopg.connect(...)), not an async or other connection"
            )

    @staticmethod
    def locate(options: StoreOptions, conn: Any, table: str) -> StoreOptions:
        return schema.store_options(options)

    def __new__(cls, conn: Any, *, options: StoreOptions, **_: Any) -> PostgresEngine:
        """With ``read_url``: the engine whose searches go to that standby (``replica.py``)."""
        from .replica import ReplicatedEngine  # a subclass of this one
        return super().__new__(ReplicatedEngine if options.read_url and cls is PostgresEngine else cls)

    def __init__(
        self, conn: psycopg.Connection, *, options: StoreOptions, table: str, model_id: str,
        owner: str, has_text: bool = True,
    ) -> None:
        self.conn = conn
        self.lock = threading.RLock()
        self.model_id = model_id
        self.read_only = options.read_only
        self.has_text = has_text
        self.settings = dict(options.backend_settings)
        self.ef_search = self.settings.get("ef_search", search.DEFAULT_EF_SEARCH)
        self._bulk_rows = 0
        self._indexed: set[int] = set()
        self.defer_index = False  # bulk.index_built_after: a missing HNSW index waits
        with self.lock, conn.transaction():
            self.names = Names(schema.current_schema(conn, owner), schema.check_table(table))
            self.database = f"{conn.info.dbname} (table {self.names.label})"
            self._open(owner)
            recorded = schema.meta(conn, self.names) if self._exists else {}
        stored_model, _ = schema.identity(recorded)
        if stored_model not in (None, model_id) and not options.allow_model_change:
            raise ModelConflictError(
                f"the vectors in {self.database} were made by model {stored_model!r}, "
                f"not {model_id!r}: open it with model_name={stored_model!r}, or pass "
                "allow_model_change=True and run backfill_embeddings() to re-embed everything"
            )
        self._dim = self._current_dim(recorded)

    def _open(self, owner: str) -> None:
        """Check (and, writable, create or repair) the store; refuse another owner's table."""
        conn, names = self.conn, self.names
        has_vector = schema.check_pgvector(conn, create=not self.read_only)
        self._exists = has_vector and schema.table_exists(conn, names)
        if not self.read_only:
            schema.lock_store(conn, names)
            if not schema.table_exists(conn, names):
                schema.create(conn, names, owner)
            self._exists = True
        self.cur = conn.cursor()
        if has_vector:
            register_vector_info(self.cur, TypeInfo.fetch(conn, "vector"))
        if not self._exists:
            return
        recorded = schema.meta(conn, names)
        schema.check_meta(recorded, names, owner)
        if not self.read_only:  # derived data: made again when missing (only then: even
            dim = self._current_dim(recorded)  # IF NOT EXISTS waits for the table's writers)
            present = schema.indexes(conn, names)
            if any(name not in present for name in verify.wanted_indexes(names, dim)):
                schema.create_fixed_indexes(conn, names)
                if dim is not None and dim <= MAX_INDEXED_DIM:
                    schema.create_hnsw(conn, names, dim, self.settings)

    def _current_dim(self, recorded: dict[str, str]) -> int | None:
        model, dim = schema.identity(recorded)
        return dim if model == self.model_id else None

    def _refresh(self) -> int | None:
        """The dimension of this model's vectors now (another process may have written the
        first ones, or switched the model); call inside a transaction."""
        if not self._exists:
            self._exists = schema.table_exists(self.conn, self.names)
            if not self._exists:
                return None
        self._dim = self._current_dim(schema.meta(self.conn, self.names))
        return self._dim

    @property
    def dim(self) -> int | None:
        return self._dim

    def identity(self) -> tuple[str | None, int | None]:
        with self.lock, self.conn.transaction():
            if not self._exists and not schema.table_exists(self.conn, self.names):
                return None, None
            return schema.identity(schema.meta(self.conn, self.names))

    # -- writes ----------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.lock, self.conn.transaction():
            yield

    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != pq.TransactionStatus.IDLE

    def bulk_load(self) -> Any:
        from .bulk import load_into_empty  # bulk.py imports this module
        return load_into_empty(self)

    def lost_connection(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError) and (self.conn.broken or self.conn.closed)

    def write(self, rows: list[VectorRow], *, bulk: bool = False) -> None:
        if not rows:
            return
        with self.lock:
            if bulk and self.in_transaction():
                raise EmbeddingError(
                    "a transaction is open on the store's connection during a backfill, so its "
                    "batches would not be committed: with autocommit off, psycopg opens one at "
                    "the first statement (a SELECT in iter_records, say); connect with "
                    "autocommit=True, or read the records on another connection"
                )
            with self.conn.transaction():
                dim = self._refresh()
                vectors = [row.vector for row in rows]
                check_same_dimension(vectors, dim, self.model_id)
                size = int(vectors[0].shape[0])
                if dim is not None and size != dim:
                    raise check.DimensionMismatchError(
                        f"prepared vectors have {size} dimensions; this store holds {dim}: "
                        "prepare them again"
                    )
                if size > MAX_DIM:
                    raise InvalidInputError(
                        f"vectors of {size} dimensions: pgvector's vector type holds at most "
                        f"{MAX_DIM:,}"
                    )
                for row in rows:
                    if "\x00" in row.record_id + row.kind + row.source_id:
                        raise InvalidInputError(
                            f"record {row.record_id!r}: PostgreSQL text cannot hold NUL "
                            "characters (in its id, kind or source_id)"
                        )
                self._ensure_hnsw(size)
                schema.upsert(self.cur, self.names, rows, size, _text)
                last = rows[-1].model
                if (dim is None or last != self.model_id) and (
                    schema.identity(schema.meta(self.conn, self.names)) != (last, size)
                ):
                    schema.set_meta(self.conn, self.names, {"model": last, "dim": str(size)})
                self._dim = size if last == self.model_id else self._dim
            if bulk:
                self._bulk_rows += len(rows)

    def _ensure_hnsw(self, dim: int) -> None:
        """The HNSW index of ``dim``, made before this transaction writes a row (so that two
        writers creating it at once wait on the advisory lock, never on each other's rows)."""
        if dim in self._indexed or dim > MAX_INDEXED_DIM:
            return
        if schema.hnsw_name_exists(self.conn, self.names, dim):
            self._indexed.add(dim)
            return
        if self.defer_index:
            return
        schema.lock_store(self.conn, self.names)
        schema.create_hnsw(self.conn, self.names, dim, self.settings)

    def remove(self, keys: list[str], *, through_seq: int | None = None) -> set[str]:
        with self.lock, self.conn.transaction():
            if not self._refresh_exists():
                return set()
            if through_seq is not None:  # a backfill's orphans: none written since it began
                keys = export.keys_by_seq(self.cur, self.names, keys, "<=", through_seq)
            rows = self.cur.execute(sql.SQL(
                "DELETE FROM {} WHERE record_id = ANY(%s) RETURNING record_id"
            ).format(self.names.t), (_keys(keys),)).fetchall()
        return {row[0] for row in rows}

    def set_version(self, keys: list[str], version: int) -> set[str]:
        with self.lock, self.conn.transaction():
            if not self._refresh_exists():
                return set()
            rows = self.cur.execute(sql.SQL(
                "UPDATE {} SET embedding_version = %s, updated_at = now(), "
                "seq = pg_current_xact_id() WHERE record_id = ANY(%s) RETURNING record_id"
            ).format(self.names.t), (version, _keys(keys))).fetchall()
        return {row[0] for row in rows}

    def fill_keywords(self, items: list[tuple[str, str, str]]) -> int:
        if not items:
            return 0
        with self.lock, self.conn.transaction():
            keys, hashes, texts = zip(*items, strict=True)
            return self.cur.execute(sql.SQL(
                "UPDATE {} t SET body = v.body FROM unnest(%s::text[], %s::text[], %s::text[]) "
                "AS v(record_id, text_hash, body) WHERE t.record_id = v.record_id "
                "AND t.text_hash = v.text_hash AND t.body IS NULL"
            ).format(self.names.t), (list(keys), list(hashes), [_text(t) for t in texts])).rowcount

    # -- reads -----------------------------------------------------------------------------------
    def _refresh_exists(self) -> bool:
        if not self._exists:
            self._exists = schema.table_exists(self.conn, self.names)
        return self._exists

    def written_since(self, keys: list[str], seq: int) -> set[str]:
        with self.lock, self.conn.transaction():
            if not keys or not self._refresh_exists():
                return set()
            return set(export.keys_by_seq(self.cur, self.names, keys, ">", seq))

    def states_of(self, keys: list[str]) -> dict[str, StoredState]:
        with self.lock, self.conn.transaction():
            if not keys or not self._refresh_exists():
                return {}
            rows = self.cur.execute(
                sql.SQL(f"SELECT {_STATE} FROM {{}} WHERE record_id = ANY(%s)").format(self.names.t),
                (_keys(keys),),
            ).fetchall()
        return {row[0]: StoredState(*row[1:]) for row in rows}

    def stale_states(self, items, model: str, embedding_version: int) -> dict:
        states = self.states_of([key for key, _, _ in items])
        return {key: states.get(key) for key, digest, kind in items if key not in states
                or not states[key].current_for(digest, kind, model, embedding_version)}

    def unseen_keys(self, seen: Container[str], through_seq: int) -> list[str]:
        unseen: list[str] = []
        after = ""
        while True:
            with self.lock, self.conn.transaction():
                if not self._refresh_exists():
                    return []
                page = [row[0] for row in self.cur.execute(sql.SQL(
                    "SELECT record_id FROM {} WHERE record_id > %s ORDER BY record_id LIMIT %s"
                ).format(self.names.t), (after, PAGE))]
                candidates = [key for key in page if key not in seen]
                if candidates:
                    unseen += export.keys_by_seq(self.cur, self.names, candidates, "<=", through_seq)
            if len(page) < PAGE:
                return unseen
            after = page[-1]

    def last_seq(self) -> int:
        with self.lock, self.conn.transaction():
            (xmin,) = self.cur.execute(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
            ).fetchone()
        return int(xmin) - 1

    def get_vector(self, key: str) -> np.ndarray | None:
        if "\x00" in key:
            return None
        with self.lock, self.conn.transaction():
            if not self._refresh_exists():
                return None
            row = self.cur.execute(
                sql.SQL("SELECT vector FROM {} WHERE record_id = %s").format(self.names.t), (key,),
                binary=True,
            ).fetchone()
        return None if row is None else np.asarray(row[0].to_numpy(), np.float32)

    def key_page(self, after: str, limit: int) -> list[str]:
        with self.lock, self.conn.transaction():
            return export.key_page(self.cur, self.names, after, limit) if self._refresh_exists() else []

    def rows_of(self, keys: list[str]) -> dict[str, VectorRow]:
        with self.lock, self.conn.transaction():
            return export.rows_of(self.cur, self.names, keys) if self._refresh_exists() else {}

    def count(self) -> int:
        with self.lock, self.conn.transaction():
            dim = self._refresh()
            if dim is None:
                return 0
            return self.cur.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE model = %s AND dim = %s").format(self.names.t),
                (self.model_id, dim),
            ).fetchone()[0]

    def stored_count(self) -> None:
        """None: ``last_seq`` is a snapshot horizon, held still by a long transaction."""
        return None

    def model_counts(self) -> dict[str, int]:
        with self.lock, self.conn.transaction():
            if not self._refresh_exists():
                return {}
            return dict(self.cur.execute(sql.SQL(
                "SELECT model, count(*) FROM {} GROUP BY model ORDER BY count(*) DESC, model"
            ).format(self.names.t)).fetchall())

    def search(
        self, query: Any, top_k: int, kind: str | None, ids: list[str] | None = None
    ) -> list[tuple[str, float]]:
        with self.lock:
            outer = not self.in_transaction()
            with self.conn.transaction():
                dim = self._refresh()
                vector = check.check_vector(query, dim, self.model_id)
                if dim is None or ids == [] or (kind is not None and "\x00" in kind):
                    return []
                return search.vector_search(
                    self.cur, self.names, vector, dim, self.model_id, top_k, kind,
                    None if ids is None else _keys(ids), self.ef_search, outer=outer,
                )

    def keyword_search(
        self, text: str, top_k: int, kind: str | None, ids: list[str] | None = None,
        fill: int | None = None,
    ) -> list[tuple[str, float]]:
        """``fill`` is the SQLite engine's (a GIN index lookup costs no more with every word)."""
        with self.lock, self.conn.transaction():
            if not self._refresh_exists() or ids == [] or (kind is not None and "\x00" in kind):
                return []
            return search.keyword_search(
                self.cur, self.names, text, top_k, kind, None if ids is None else _keys(ids)
            )

    def keyword_coverage(self, text: str, best_score: float) -> float:
        """For hybrid search: see ``search.keyword_coverage`` (``best_score`` > 0 only says
        there is a match; the match itself is looked at)."""
        with self.lock, self.conn.transaction():
            if best_score <= 0 or not self._refresh_exists() or search.query_words(text) is None:
                return 0.0
            return search.keyword_coverage(self.cur, self.names, text)

    def keyword_texts(self, keys: list[str]) -> dict[str, str]:
        with self.lock, self.conn.transaction():
            if not keys or not self._refresh_exists():
                return {}
            return search.keyword_texts(self.cur, self.names, _keys(keys))

    # -- upkeep ----------------------------------------------------------------------------------
    def _refuse_in_transaction(self, call: str) -> None:
        if self.in_transaction():
            raise EmbeddingError(f"commit or roll back the open transaction before {call}")

    def flush(self) -> None:
        """Nothing to write: every committed vector is already in the index."""
        with self.lock:
            self._refuse_in_transaction("save_index()")

    def settle(self) -> None:
        """The end of a backfill: after many rows, ``ANALYZE`` the table, so that the planner
        knows its size (and picks the HNSW index) before autovacuum gets to it."""
        with self.lock:
            self._refuse_in_transaction("backfill_embeddings()")
            if self._bulk_rows >= ANALYZE_AFTER and not self.read_only:
                with self.conn.transaction():
                    self.cur.execute(sql.SQL("ANALYZE {}").format(self.names.t))
            self._bulk_rows = 0

    def reload(self) -> None:
        with self.lock:
            self._refuse_in_transaction("load_index()")
            with self.conn.transaction():
                self._refresh()

    def rebuild(self) -> None:
        """The indexes made again from the table (``REINDEX``); nothing is re-encoded."""
        with self.lock:
            self._refuse_in_transaction("rebuild_index()")
            if self.read_only:
                return
            with self.conn.transaction():
                schema.lock_store(self.conn, self.names)
                verify.rebuild(self.conn, self.names, self._refresh(), self.settings)
            self._indexed.clear()

    def verify(self, *, repair: bool = False) -> VerifyReport:
        with self.lock:
            with self.conn.transaction():
                report = self._verify()
            if repair and not report.ok:
                self.rebuild()
                with self.conn.transaction():
                    report = self._verify()
                report.repaired = True
        return report

    def _verify(self) -> VerifyReport:
        if not self._refresh_exists():
            return VerifyReport(0, 0, None, None, 0, keyword_count=None)
        return verify.verify(self.conn, self.names, self.model_id, self._refresh(), self.has_text)

    def close(self) -> None:
        """The connection stays the caller's; only our cursor is let go."""
        with self.lock:
            if not self.conn.closed:
                self.cur.close()
