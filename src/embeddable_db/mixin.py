"""EmbeddableDBMixin: persistent vectors and semantic search for a class that owns a database.

The subclass sets ``self.conn`` and implements ``iter_records()`` plus either
``embedding_text(record)`` (batched encoding) or ``vector(record)`` (the seed's contract, one
record at a time). This class is the facade: it checks arguments, encodes (``encoding.py``) and
hands the rest to an engine (``engine.py``; for a ``sqlite3.Connection``, ``sqlite_engine.py``:
the vector table, the live index and the index files) and to ``backfill.py``. No model call is
made while the engine's lock is held, so other threads search while this one encodes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import numpy as np

from . import backfill, fusion
from . import validation as check
from .encoder import model_identity
from .encoding import Encoding, Failure, Pending, fingerprinted, raise_first
from .engine import Engine, engine_class
from .errors import EmbeddingError, InvalidInputError
from .handle import Handle
from .options import StoreOptions, option_keywords
from .owner import store_owner
from .reports import BackfillPlan, BackfillResult, VerifyReport
from .rows import VectorRow

log = logging.getLogger(__name__)


class EmbeddableDBMixin:
    """Gives a SQLite-backed class vectors, search by vector or text, and backfill."""

    #: Name of the mixin's table in the subclass's database; give each store its own.
    embedding_table: ClassVar[str] = "embeddings"
    #: When set, ``kind`` arguments must be one of these.
    embedding_kinds: ClassVar[tuple[str, ...] | None] = None
    #: Which class's vectors ``embedding_table`` holds (default: the name of the class that
    #: defines ``iter_records``); set it to the old name when renaming that class.
    embedding_owner: ClassVar[str | None] = None

    conn: Any

    @option_keywords()
    def __init__(self, **keywords: Any) -> None:
        """Open the store in ``self.conn``; the keywords are ``StoreOptions``' fields."""
        # Everything is checked before anything is written.
        conn = getattr(self, "conn", None)
        engine = engine_class(conn, type(self).__name__)
        options = StoreOptions.from_keywords(keywords, "EmbeddableDBMixin.__init__")
        self.model_name = options.model
        self.embedding_version = options.embedding_version
        self.model_backend = options.model_backend
        self.model_id = model_identity(options.model_name, options.encoder)
        self._encoding = Encoding(options.model, options.model_backend, self.model_id, options.encoder)
        options = self._options = engine.locate(options, conn, self.embedding_table)
        self.backend_name = options.backend  # after locate: a PostgreSQL store's is pgvector
        self.index_path, self.metadata_path = options.index_path, options.metadata_path
        self._handle = Handle(options.read_only)
        self._engine: Engine = engine(
            conn, options=options, table=self.embedding_table, model_id=self.model_id,
            owner=store_owner(type(self), EmbeddableDBMixin), has_text=self._text_of() is not None,
        )

    # -- set-up ------------------------------------------------------------------------------
    @property
    def embedding_options(self) -> StoreOptions:
        """The options this store was opened with, checked, its paths resolved."""
        return self._options

    @property
    def embedding_lock(self) -> threading.RLock:
        """The lock the mixin holds whenever it uses ``self.conn``. To share a store between
        threads, open the connection with ``check_same_thread=False`` and run the subclass's
        own SQL under this lock too (a whole transaction, not statement by statement)."""
        return self._engine.lock

    def embedding_transaction(self) -> AbstractContextManager[None]:
        """One transaction for your own rows and this store's vectors, holding
        ``embedding_lock``: everything inside commits together at the end, or nothing does,
        whatever the order of the writes. Nested, it is a savepoint. A transaction you open
        yourself works the same way: the store's writes then wait for your commit."""
        self._ensure_open(write="embedding_transaction()")
        return self._engine.transaction()

    @property
    def dimension(self) -> int | None:
        """The dimension of this store's vectors, once it has any."""
        return self._engine.dim

    # -- the subclass's contract ---------------------------------------------------------------
    def iter_records(self) -> Iterator[tuple[Any, Any, str]]:
        """Yield ``(record_id, record, kind)`` for every record that should have a vector."""
        raise NotImplementedError(f"{type(self).__name__} must implement iter_records()")

    def embedding_text(self, record: Any) -> str:
        """The text a record is embedded from; implementing it enables batched encoding."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement embedding_text(record) or vector(record)"
        )

    def vector(self, record: Any) -> list[float]:
        """The record's vector; by default the encoding of ``embedding_text(record)``."""
        return self.encode_text(self.embedding_text(record))

    def _text_of(self) -> Callable[[Any], Any] | None:
        """The subclass's ``embedding_text``, or None when its records give ``vector()`` only."""
        has_text = type(self).embedding_text is not EmbeddableDBMixin.embedding_text
        return self.embedding_text if has_text else None

    def _rows_for(self, pending: list[Pending], failures: list[Failure]) -> list[VectorRow]:
        """Rows for fingerprinted items (no lock held); the items that fail join ``failures``."""
        batched = type(self).vector is EmbeddableDBMixin.vector and self._text_of() is not None
        return self._encoding.rows(
            pending, self.dimension, self.embedding_version, failures,
            None if batched else self.vector,
        )

    # -- encoding (encoding.py) ------------------------------------------------------------------
    @property
    def encoder(self) -> Any:
        """The encoder in use; the shared model is only loaded when it first encodes."""
        return self._encoding.encoder

    def encode_texts(self, texts: Iterable[Any]) -> np.ndarray:
        """Encode texts in one model call: an (n, dim) float32 array of unit vectors."""
        self._ensure_open()
        return self._encoding.encode_texts(texts, self.dimension)

    def encode_text(self, text: Any) -> list[float]:
        return self.encode_texts([text])[0].tolist()

    # -- writes ------------------------------------------------------------------------------------
    def add_embedding(self, record_id: Any, record: Any, kind: str, *, source_id: Any = "") -> None:
        """Embed one record and store its vector (insert or replace); durable on return, or
        when the transaction it was called in commits.

        ``record_id`` is stored as a string: ``1`` and ``"1"`` are the same record."""
        self.add_embeddings([(record_id, record, kind)], source_ids=[source_id])

    def add_embeddings(
        self,
        items: Iterable[tuple[Any, Any, str]],
        *,
        batch_size: int = 100,
        source_ids: Iterable[Any] | None = None,
    ) -> int:
        """Embed many records, ``batch_size`` texts per model call; all or nothing.

        Every item is encoded and checked first; then all vectors are written in one
        transaction. Record ids are stored as strings, so ``1`` and ``"1"`` are the same
        record; an id given twice is stored once, from its last item. Returns how many
        distinct records were stored.
        """
        self._ensure_open(write="add_embeddings()")
        return self.store_embeddings(
            self.prepare_embeddings(items, batch_size=batch_size, source_ids=source_ids)
        )

    def prepare_embeddings(
        self,
        items: Iterable[tuple[Any, Any, str]],
        *,
        batch_size: int = 100,
        source_ids: Iterable[Any] | None = None,
    ) -> list[VectorRow]:
        """Encode and check records without writing anything; ``store_embeddings`` writes them.

        The split lets a database encode before it takes SQLite's write lock for the row, so
        other writers never wait for the model.
        """
        batch_size = check.check_batch_size(batch_size)
        prepared = check.prepared_items(items, source_ids, self.embedding_kinds)
        self._ensure_open()
        rows: list[VectorRow] = []
        for start in range(0, len(prepared), batch_size):  # no lock held while encoding
            pending, failures = fingerprinted(prepared[start : start + batch_size], self._text_of())
            rows += self._rows_for(pending, failures)
            raise_first(failures)
        return rows

    def store_embeddings(self, rows: Iterable[VectorRow]) -> int:
        """Write vectors from ``prepare_embeddings`` in one transaction; durable on return.

        Inside a transaction the caller opened (``embedding_transaction()``, or its own), the
        vectors go in a savepoint and commit with the caller's rows; if the write fails, only
        the store's own changes are rolled back. Returns how many distinct records were stored
        (an id given twice keeps its last row).
        """
        rows = check.unique_rows(check.many(rows, "rows"), self.embedding_kinds)
        self._ensure_open(write="store_embeddings()")
        self._engine.write(rows)
        return len(rows)

    def try_add_embedding(
        self, record_id: Any, record: Any, kind: str, *, source_id: Any = ""
    ) -> bool:
        """Like ``add_embedding`` but logs the error and returns False instead of raising."""
        try:
            self.add_embedding(record_id, record, kind, source_id=source_id)
        except Exception as exc:  # noqa: BLE001 - the point is not to raise
            log.warning("could not embed record %r: %s", record_id, exc)
            return False
        return True

    def remove_embedding(self, record_id: Any) -> bool:
        """Drop a record's vector; True when there was one."""
        key = check.record_key(record_id)
        self._ensure_open(write="remove_embedding()")
        return bool(self._engine.remove([key]))

    def remove_embeddings(self, record_ids: Iterable[Any]) -> int:
        keys = check.record_keys(record_ids)
        self._ensure_open(write="remove_embeddings()")
        return len(self._engine.remove(keys))

    def update_embedding_version(
        self, record_id: Any, *, embedding_version: int | None = None
    ) -> bool:
        """Mark a record's vector as made for ``embedding_version`` (default: the store's)."""
        return self.update_embedding_versions([record_id], embedding_version=embedding_version) == 1

    def update_embedding_versions(
        self, record_ids: Iterable[Any], *, embedding_version: int | None = None
    ) -> int:
        version = check.check_embedding_version(
            self.embedding_version if embedding_version is None else embedding_version
        )
        keys = check.record_keys(record_ids)
        self._ensure_open(write="update_embedding_versions()")
        return len(self._engine.set_version(keys, version))

    # -- reads -------------------------------------------------------------------------------------
    def get_vector(self, record_id: Any) -> list[float] | None:
        key = check.record_key(record_id)
        self._ensure_open()
        vector = self._engine.get_vector(key)
        return None if vector is None else vector.tolist()

    def embedding_count(self) -> int:
        """How many vectors this store can find."""
        self._ensure_open()
        return self._engine.count()

    def model_counts(self) -> dict[str, int]:
        """Stored vectors per model identity, most first; two or more keys mean a model switch
        that a backfill has not finished (only the current model's vectors are searched)."""
        self._ensure_open()
        return self._engine.model_counts()

    def search_by_vector(
        self, vector: Any, top_k: int = 10, *, kind: str | None = None, ids: Any = None
    ) -> list[tuple[str, float]]:
        """``(record_id, distance)`` best first; distance = 1 - cosine similarity.

        ``kind`` and ``ids`` (record ids to search within) filter the search, not its answer:
        it still returns ``top_k`` hits whenever that many records match (a small ``ids`` set
        is searched exactly, a large one by a widened ANN search)."""
        top_k, kind, ids = self._search_filters(top_k, kind, ids)
        self._ensure_open()
        return self._engine.search(vector, top_k, kind, ids)

    def search_by_text(
        self, text: Any, top_k: int = 10, *, kind: str | None = None, ids: Any = None
    ) -> list[tuple[str, float]]:
        top_k, kind, ids = self._search_filters(top_k, kind, ids)
        return self.search_by_vector(self.encode_texts([text])[0], top_k, kind=kind, ids=ids)

    def search_by_keyword(
        self, text: Any, top_k: int = 10, *, kind: str | None = None, ids: Any = None
    ) -> list[tuple[str, float]]:
        """``(record_id, score)`` best first, higher is better: records whose embedded text
        contains any of the words of ``text``, ranked by BM25 (score = -bm25). The model is
        not called. Any text is a valid query: quotes, ``AND``/``OR``/``NOT``, ``*``, ``-``
        and the like are searched as words, never as query syntax. ``kind`` and ``ids``
        filter as in ``search_by_vector``."""
        top_k, kind, ids = self._search_filters(top_k, kind, ids)
        text = check.check_query(text)
        self._ensure_open()
        self._require_text("keyword search")
        return self._engine.keyword_search(text, top_k, kind, ids)

    def search_hybrid(
        self,
        text: Any,
        top_k: int = 10,
        *,
        kind: str | None = None,
        ids: Any = None,
        weights: tuple[float, float] = (1.0, 1.0),
        rrf_k: float = fusion.RRF_K,
        adaptive: bool = True,
        reranker: Any = None,
        rerank_candidates: int = fusion.RERANK_CANDIDATES,
    ) -> list[fusion.HybridHit]:
        """Keyword and vector search fused: ``HybridHit(record_id, score, distance,
        vector_rank, keyword_rank)`` best first, higher score is better.

        Weighted reciprocal rank fusion (``fusion.py``): ``weights`` = (keyword, vector);
        with ``adaptive`` the keyword weight also follows how much of the query's rare words
        its best keyword match holds, so a paraphrase leans on the vectors and a name or an
        error code on the words. Each side gives ``fusion.candidates(top_k, rrf_k)``
        candidates (at least 100). ``reranker``: any object with ``rank(query, texts) ->
        scores`` (higher is better, e.g. a local cross-encoder); it reorders the best
        ``rerank_candidates`` fused hits, and each hit's score is then the reranker's.
        ``kind`` and ``ids`` filter as in ``search_by_vector``. One model call."""
        top_k, kind, ids = self._search_filters(top_k, kind, ids)
        text = check.check_query(text)
        weights, rrf_k = check.check_fusion(weights, rrf_k, adaptive)
        rerank_candidates = check.check_top_k(rerank_candidates, "rerank_candidates")
        self._ensure_open()
        self._require_text("hybrid search")
        vector = self.encode_texts([text])[0]  # no lock held while encoding
        return fusion.hybrid_search(
            self._engine, vector, text, top_k, kind=kind, ids=ids, weights=weights,
            rrf_k=rrf_k, adaptive=adaptive, reranker=reranker,
            rerank_candidates=rerank_candidates,
        )

    def keyword_coverage(self, text: Any, best_score: float | None = None) -> float:
        """0..1: how much of the query's information (its rare words most) the best keyword
        match holds; ``search_hybrid`` weighs the keyword side by it. Given for fusing the
        searches of several stores into one ranking (``embeddable-db search`` does).
        ``best_score``: the score of the best match a keyword search already found (within
        its filters, as ``search_hybrid`` judges it), so the search is not run again."""
        text = check.check_query(text)
        self._ensure_open()
        self._require_text("keyword search")
        if best_score is None:
            hits = self._engine.keyword_search(text, 1, None)
            if not hits:
                return 0.0
            best_score = hits[0][1]
        return self._engine.keyword_coverage(text, float(best_score))

    def _search_filters(self, top_k: Any, kind: Any, ids: Any) -> tuple[int, str | None, Any]:
        top_k = check.check_top_k(top_k)
        if kind is not None:
            kind = check.check_kind(kind, self.embedding_kinds)
        return top_k, kind, check.check_ids(ids)

    def _require_text(self, what: str) -> None:
        if self._text_of() is None:
            name = type(self).__name__
            raise EmbeddingError(
                f"{name} has no text to search: {what} needs embedding_text(record), "
                f"and {name} implements only vector(record); implement embedding_text and run "
                "backfill_embeddings()"
            )

    # -- backfill (backfill.py) ----------------------------------------------------------------------
    def backfill_embeddings(
        self,
        batch_size: int = 100,
        *,
        dry_run: bool = False,
        progress: Callable[[BackfillResult], None] | None = None,
    ) -> BackfillResult:
        """Embed missing records, re-embed stale ones, drop vectors of vanished records.

        Stale means: the text changed, the model changed, or the vector's embedding_version is
        older than the store's. Each batch is one model call and one committed transaction, so
        a killed backfill resumes where it stopped. A record that fails is reported and skipped.
        Records are read up to ``backfill.WINDOW_BATCHES`` batches ahead and batched by text
        length, so batches are not in the order ``iter_records`` yields them.
        """
        batch_size = check.check_batch_size(batch_size)
        if progress is not None and not callable(progress):
            # Checked now: found after the first batch, it would fail a half-done backfill.
            raise InvalidInputError(f"progress must be a callable or None, got {progress!r}")
        self._ensure_open(write=None if dry_run else "backfill_embeddings()")
        if dry_run:
            result = backfill.dry_run(self._engine, self._backfill_source())
            if progress:
                progress(result)
            return result
        return backfill.run(
            self._engine, self._backfill_source(), batch_size=batch_size, progress=progress
        )

    def backfill_plan(self) -> BackfillPlan:
        """What ``backfill_embeddings()`` would do now, per reason, without calling the model."""
        self._ensure_open()
        return backfill.plan(self._engine, self._backfill_source())

    def _backfill_source(self) -> backfill.Source:
        return backfill.Source(
            records=self.iter_records, text_of=self._text_of(), kinds=self.embedding_kinds,
            model_id=self.model_id, embedding_version=self.embedding_version,
            embed=self._rows_for,
        )

    # -- flushing, verifying, rebuilding ----------------------------------------------------------------
    def save_index(self) -> None:
        """Flush: fold pending changes into the backend and write the index and metadata."""
        self._ensure_open(write="save_index()")
        self._engine.flush()

    def load_index(self) -> None:
        """Drop the in-memory index and load it again from the files (or rebuild them)."""
        self._ensure_open()
        self._engine.reload()

    def rebuild_index(self) -> None:
        """Rebuild the index from the vectors in SQLite (no re-encoding) and write it; the
        keyword index is made again from the text kept in SQLite."""
        self._ensure_open(write="rebuild_index()")
        self._engine.rebuild()

    def verify_index(self, *, repair: bool = False) -> VerifyReport:
        """Compare SQLite, the live index and the files, and the keyword index with the vectors;
        with ``repair``, rebuild what disagrees. Vectors without a keyword row are filled by
        ``backfill_embeddings()`` (from the records' text, without the model)."""
        self._ensure_open(write="verify_index(repair=True)" if repair else None)
        return self._engine.verify(repair=repair)

    def _ensure_open(self, write: str | None = None) -> None:
        """Refuse a closed store, a store inherited through fork(), and (when ``write`` names
        the call) a write to a read-only store; see ``handle.Handle.check``."""
        self._handle.check(self, write)

    def close(self) -> None:
        """Flush pending changes to the index files. The connection stays the caller's.

        A small delta may be left for the next open to replay (see the engine's ``close``);
        ``save_index()`` always flushes. A read-only store, and a store closed in a child
        process that fork() made (the files are the parent's), write nothing.
        """
        handle = self._handle
        if handle.closed or handle.forked:
            handle.closed = True
            return
        with self._engine.lock:
            if handle.closed:
                return
            self._engine.close()
            handle.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
