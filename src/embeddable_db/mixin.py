"""EmbeddableDBMixin: persistent vectors and semantic search for a class that owns SQLite.

The subclass sets ``self.conn`` and implements ``iter_records()`` plus either
``embedding_text(record)`` (batched encoding) or ``vector(record)`` (the seed's contract, one
record at a time). The mixin orchestrates three parts:

- ``EmbeddingStore``: vectors in the subclass's own SQLite file, the source of truth;
- ``LiveIndex``: a backend index (Annoy or FAISS) plus an exact delta, kept current from SQLite
  by change sequence numbers, so other processes' writes show up in every search;
- the index file and its JSON manifest: a cache of the backend index, written atomically under
  a file lock at flush points, verified on open and rebuilt from SQLite when missing, stale or
  damaged.

Opening changes no file but to repair this model's own cache: a writable open writes the index
again when its files are missing, damaged, stale or far behind SQLite (they are derived data,
and every later open would pay the rebuild). It never writes over files that hold another
model's vectors (an open with ``allow_model_change`` keeps them until vectors of the new model
are saved), and a read-only open (``read_only=True``) writes nothing, not even the lock file
(it holds an existing one shared while it reads): it rebuilds in memory only and refuses every
write with a ``ReadOnlyError``.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, ClassVar

import numpy as np
from filelock import FileLock, Timeout

from . import files
from . import validation as check
from .backends import VectorIndex
from .encoder import model_identity
from .encoding import (
    Encoding,
    Failure,
    Pending,
    check_same_dimension,
    fingerprint,
    fingerprinted,
)
from .errors import (
    CorruptIndexError,
    EmbeddingError,
    InvalidInputError,
    ModelConflictError,
    StoreConflictError,
)
from .handle import EmptyStore, Handle, SharedLock, file_ids, open_store
from .integrity import (
    REPAIR,
    check_index_file,
    checked_labels,
    live_problems,
    model_switch_problem,
    scan_problems,
)
from .live_index import LiveIndex
from .manifest import (
    Manifest,
    ManifestError,
    discard_temp,
    file_checksum,
    file_digest,
    publish,
    read_manifest,
    remove_stale_temps,
    write_manifest_temp,
    write_temp,
)
from .options import StoreOptions, option_keywords
from .owner import store_owner
from .ownership import OwnFiles, own_files, remember_published, remember_written
from .reports import BackfillInterrupted, BackfillResult, VerifyReport
from .store import EmbeddingStore, VectorRow

log = logging.getLogger(__name__)

LOCK_TIMEOUT_SECONDS = 300
# The exact delta is folded into the backend when it passes this many vectors (clamped share
# of the backend's size): rebuilds stay geometric, so their total cost is linear in the store.
MIN_PENDING = 10_000
MAX_PENDING = 50_000
BACKFILL_MAX_PENDING = 200_000
# Backfill reads this many batches ahead and encodes them shortest text first: a batch of texts
# of similar length pads less, which made the default model ~25% faster on 5,000 mixed docstring
# sentences (bench_backfill.py). Each batch is still one model call and one commit.
BACKFILL_WINDOW_BATCHES = 16


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a store builds its maps of 100k records: its
    passes over the growing heap took half the time of opening a large store, and these
    objects hold no cycles. A collector the application had turned off stays off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block until the block is done, then deliver it.

    A backfill commits a batch and then counts it; a KeyboardInterrupt raised between the two
    (SQLite's commit can take milliseconds when it checkpoints the WAL) left the summary short
    of what SQLite holds. Only the main thread receives signals; elsewhere this does nothing.
    """
    handler = signal.getsignal(signal.SIGINT)
    held: list[Any] = []
    holding = callable(handler) and threading.current_thread() is threading.main_thread()
    if holding:  # else SIG_IGN, SIG_DFL or not Python's to hold
        signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        if holding:
            signal.signal(signal.SIGINT, handler)
            if held:
                handler(signal.SIGINT, held[0])


class EmbeddableDBMixin:
    """Gives a SQLite-backed class vectors, search by vector or text, and backfill."""

    #: Name of the mixin's table in the subclass's database; give each store its own.
    embedding_table: ClassVar[str] = "embeddings"
    #: When set, ``kind`` arguments must be one of these.
    embedding_kinds: ClassVar[tuple[str, ...] | None] = None
    #: Which class's vectors ``embedding_table`` holds (default: the name of the class that
    #: defines ``iter_records``); set it to the old name when renaming that class.
    embedding_owner: ClassVar[str | None] = None

    conn: sqlite3.Connection

    @option_keywords()
    def __init__(self, **keywords: Any) -> None:
        """Open the store in ``self.conn``; the keywords are ``StoreOptions``' fields."""
        # Everything is checked before anything is written.
        conn = getattr(self, "conn", None)
        if not isinstance(conn, sqlite3.Connection):
            raise EmbeddingError(
                f"{type(self).__name__} must set self.conn to a sqlite3.Connection "
                "before calling EmbeddableDBMixin.__init__"
            )
        options = StoreOptions.from_keywords(keywords, "EmbeddableDBMixin.__init__")
        self.backend_name = options.backend
        self.model_name = options.model
        self.embedding_version = options.embedding_version
        self.model_backend = options.model_backend
        self.model_id = model_identity(options.model_name, options.encoder)
        self._encoding = Encoding(options.model, options.model_backend, self.model_id, options.encoder)
        options = self._options = options.located(files.database_file(conn), self.embedding_table)
        self.index_path, self.metadata_path = options.index_path, options.metadata_path
        read_only = options.read_only
        self._handle = Handle(read_only)

        self._lock = threading.RLock()
        self._file_lock = (
            FileLock(options.lock_path, timeout=LOCK_TIMEOUT_SECONDS) if options.lock_path else None
        )
        owner = store_owner(type(self), EmbeddableDBMixin)
        if read_only and self._file_lock is not None:  # shared, and never creates the file
            self._file_lock = SharedLock(self._file_lock.lock_file)
        if not read_only:  # a foreign file is refused before anything is written
            self._store = EmbeddingStore(conn, self.embedding_table, owner=owner)
            self._check_files_before_open()
        self._store = open_store(
            conn, self.embedding_table, read_only=read_only, name=self._database_name(),
            owner=owner,
        )
        stored_model, _ = self._store.identity()
        if (
            stored_model is not None
            and stored_model != self.model_id
            and not options.allow_model_change
        ):
            raise ModelConflictError(
                f"the vectors in {self._database_name()} were made by model {stored_model!r}, "
                f"not {self.model_id!r}: open it with model_name={stored_model!r}, or pass "
                "allow_model_change=True and run backfill_embeddings() to re-embed everything"
            )
        self._allow_model_change = options.allow_model_change
        self._files_stamp: tuple[int, int, int] | None = None
        self._data_version = self._store.data_version()
        self._foreign_files = False
        self._live = self._open_live()
        self._changes_at_open = conn.total_changes

    # -- set-up ------------------------------------------------------------------------------
    @property
    def embedding_options(self) -> StoreOptions:
        """The options this store was opened with, checked, its paths resolved."""
        return self._options

    def _database_name(self) -> str:
        row = next((r for r in self.conn.execute("PRAGMA database_list") if r[1] == "main"), None)
        return (row[2] if row and row[2] else ":memory:") + f" (table {self.embedding_table})"

    def _new_backend(self, dim: int) -> VectorIndex:
        return self._options.backend_class(dim, **self._options.backend_settings)

    @property
    def embedding_lock(self) -> threading.RLock:
        """The lock the mixin holds whenever it uses ``self.conn``. To share a store between
        threads, open the connection with ``check_same_thread=False`` and run the subclass's
        own SQL under this lock too (a whole transaction, not statement by statement)."""
        return self._lock

    @property
    def dimension(self) -> int | None:
        """The dimension of this store's vectors, once it has any."""
        return self._live.dim

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

    @property
    def _batched(self) -> bool:
        return type(self).vector is EmbeddableDBMixin.vector

    @property
    def _has_text(self) -> bool:
        return type(self).embedding_text is not EmbeddableDBMixin.embedding_text

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

    def _text_of(self) -> Callable[[Any], Any] | None:
        """The subclass's ``embedding_text``, or None when its records give ``vector()`` only."""
        return self.embedding_text if self._has_text else None

    def _make_rows(
        self, items: list[tuple[str, Any, str, str]]
    ) -> tuple[list[VectorRow], list[Failure]]:
        """Vectors for (key, record, kind, source_id) items, with per-item failures."""
        pending, failures = fingerprinted(items, self._text_of())
        return self._rows_for(pending, failures), failures

    def _rows_for(self, pending: list[Pending], failures: list[Failure]) -> list[VectorRow]:
        """Rows for fingerprinted items; the items that fail are added to ``failures``."""
        vector_of = None if self._batched and self._has_text else self.vector
        vectors = self._encoding.vectors(pending, self.dimension, failures, vector_of)
        rows = [
            VectorRow(p.key, p.kind, p.source_id, vector, p.digest, self.model_id,
                      self.embedding_version)
            for p, vector in zip(pending, vectors, strict=True)
            if vector is not None
        ]
        check_same_dimension([row.vector for row in rows], self.dimension, self.model_id)
        return rows

    # -- writes ------------------------------------------------------------------------------------
    def add_embedding(self, record_id: Any, record: Any, kind: str, *, source_id: Any = "") -> None:
        """Embed one record and store its vector (insert or replace); durable on return.

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
        items = check.check_items(items)
        sources = check.many(source_ids, "source_ids") if source_ids is not None else [""] * len(
            items
        )
        if len(sources) != len(items):
            raise InvalidInputError(
                f"{len(sources)} source_ids for {len(items)} items: give one per item"
            )
        latest: dict[str, tuple[str, Any, str, str]] = {}  # an id given twice: its last item
        for (record_id, record, kind), source_id in zip(items, sources, strict=True):
            key = check.record_key(record_id)
            latest.pop(key, None)  # ... in the last item's place
            latest[key] = (
                key,
                record,
                check.check_kind(kind, self.embedding_kinds),
                check.check_source_id(source_id),
            )
        prepared = list(latest.values())
        rows: list[VectorRow] = []
        # Encoding holds no lock: other threads search and write while the model runs.
        self._ensure_open()
        for start in range(0, len(prepared), batch_size):
            batch_rows, failures = self._make_rows(prepared[start : start + batch_size])
            if failures:
                key, error = failures[0]
                if isinstance(error, EmbeddingError):
                    raise type(error)(f"record {key!r}: {error}") from error
                # The subclass's embedding_text()/vector() failed on this record.
                raise InvalidInputError(
                    f"record {key!r} could not be embedded: {type(error).__name__}: {error}"
                ) from error
            rows += batch_rows
        return rows

    def store_embeddings(self, rows: Iterable[VectorRow]) -> int:
        """Write vectors from ``prepare_embeddings`` in one transaction; durable on return.

        It commits the connection, so a caller's pending row change lands in the same commit;
        if the write fails, only the store's own changes are rolled back. Returns how many
        distinct records were stored (an id given twice keeps its last row).
        """
        rows = check.unique_rows(check.many(rows, "rows"), self.embedding_kinds)
        self._ensure_open(write="store_embeddings()")
        with self._lock:
            check_same_dimension([row.vector for row in rows], self.dimension, self.model_id)
            if rows and self.dimension is not None and rows[0].vector.shape[0] != self.dimension:
                raise check.DimensionMismatchError(
                    f"prepared vectors have {rows[0].vector.shape[0]} dimensions; this store "
                    f"holds {self.dimension}: prepare them again"
                )
            self._write(rows)
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
        with self._lock:
            removed = self._store.remove([key])
            self._after_write()
        return bool(removed)

    def remove_embeddings(self, record_ids: Iterable[Any]) -> int:
        keys = check.record_keys(record_ids)
        self._ensure_open(write="remove_embeddings()")
        with self._lock:
            removed = self._store.remove(keys)
            self._after_write()
        return len(removed)

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
        with self._lock:
            changed = self._store.set_embedding_version(keys, version)
            self._after_write()
        return len(changed)

    def _write(self, rows: list[VectorRow]) -> None:
        if rows:
            self._store.upsert(rows)
            self._after_write()

    def _after_write(self) -> None:
        self._sync()
        self._maybe_compact()

    # -- reads -------------------------------------------------------------------------------------
    def get_vector(self, record_id: Any) -> list[float] | None:
        key = check.record_key(record_id)
        self._ensure_open()
        with self._lock:
            vector = self._store.get_vector(key)
        return None if vector is None else vector.tolist()

    def embedding_count(self) -> int:
        """How many vectors this store can find."""
        self._ensure_open()
        with self._lock:
            self._refresh()
            return len(self._live)

    def model_counts(self) -> dict[str, int]:
        """Stored vectors per model identity, most first; two or more keys mean a model switch
        that a backfill has not finished (only the current model's vectors are searched)."""
        self._ensure_open()
        with self._lock:
            return self._store.model_counts()

    def search_by_vector(
        self, vector: Any, top_k: int = 10, *, kind: str | None = None
    ) -> list[tuple[str, float]]:
        """``(record_id, distance)`` best first; distance = 1 - cosine similarity."""
        top_k = check.check_top_k(top_k)
        if kind is not None:
            kind = check.check_kind(kind, self.embedding_kinds)
        self._ensure_open()
        with self._lock:
            self._refresh()
            query = check.check_vector(vector, self.dimension, self.model_id)
            return self._live.search(query, top_k, kind)

    def search_by_text(
        self, text: Any, top_k: int = 10, *, kind: str | None = None
    ) -> list[tuple[str, float]]:
        top_k = check.check_top_k(top_k)
        return self.search_by_vector(self.encode_texts([text])[0], top_k, kind=kind)

    # -- backfill ------------------------------------------------------------------------------------
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
        Records are read up to ``BACKFILL_WINDOW_BATCHES`` batches ahead and batched by text
        length, so batches are not in the order ``iter_records`` yields them.
        """
        batch_size = check.check_batch_size(batch_size)
        if progress is not None and not callable(progress):
            # Checked now: found after the first batch, it would fail a half-done backfill.
            raise InvalidInputError(f"progress must be a callable or None, got {progress!r}")
        self._ensure_open(write=None if dry_run else "backfill_embeddings()")
        result = BackfillResult(dry_run=dry_run)
        started = time.perf_counter()
        with self._lock:
            self._sync()
            states = self._store.states()
            seen: set[str] = set()
            window: list[Pending] = []
            text_of = self._text_of()
            is_new: dict[str, bool] = {}
            try:
                for record_id, record, kind in self.iter_records():
                    try:
                        key = check.record_key(record_id)
                        kind = check.check_kind(kind, self.embedding_kinds)
                    except InvalidInputError as exc:
                        result.failed += 1
                        result.failures.append((repr(record_id), str(exc)))
                        continue
                    if key in seen:
                        continue
                    seen.add(key)
                    result.last_record_id = key
                    state = states.get(key)
                    try:
                        digest, text = fingerprint(record, text_of)
                    except Exception as exc:  # noqa: BLE001
                        result.failed += 1
                        result.failures.append((key, str(exc)))
                        continue
                    if (
                        state is not None
                        and state.text_hash == digest
                        and state.model == self.model_id
                        and state.embedding_version >= self.embedding_version
                    ):
                        result.unchanged += 1
                        continue
                    is_new[key] = state is None
                    source = state.source_id if state is not None else ""  # survives re-embedding
                    window.append(Pending(key, record, kind, source, digest, text))
                    if len(window) >= batch_size * BACKFILL_WINDOW_BATCHES:
                        self._backfill_window(window, batch_size, is_new, result, progress)
                        window, is_new = [], {}
                self._backfill_window(window, batch_size, is_new, result, progress, final=True)
                gone = [key for key in states if key not in seen]
                result.removed = len(gone)
                if gone and not dry_run:
                    self._store.remove(gone)
                    self._sync()
                if not dry_run:
                    self.save_index()  # inside: Ctrl-C while saving is reported the same way
            except KeyboardInterrupt as exc:
                result.interrupted = True
                result.seconds = time.perf_counter() - started
                self._sync()
                raise BackfillInterrupted(result) from exc
        result.seconds = time.perf_counter() - started
        if progress:
            progress(result)
        return result

    def _backfill_window(
        self, window, batch_size, is_new, result, progress, *, final: bool = False
    ) -> None:
        """Embed a window of records in batches of ``batch_size``, shortest texts first; tell
        ``progress`` after each batch but the very last (the backfill's end reports that)."""
        window.sort(key=lambda item: len(item.text or ""))  # stable: equal lengths keep their order
        for start in range(0, len(window), batch_size):
            self._backfill_batch(window[start : start + batch_size], is_new, result)
            if progress and not (final and start + batch_size >= len(window)):
                progress(result)

    def _backfill_batch(self, batch: list[Pending], is_new: dict[str, bool], result) -> None:
        """One model call and one commit for fingerprinted items (fingerprinted once, when the
        backfill compared them with what SQLite holds)."""
        if result.dry_run:
            for item in batch:
                if is_new[item.key]:
                    result.embedded += 1
                else:
                    result.reembedded += 1
            return
        failures: list[tuple[str, Exception]] = []
        rows = self._rows_for(batch, failures)
        for key, error in failures:
            result.failed += 1
            result.failures.append((key, str(error)))
            log.warning("backfill: record %r failed: %s", key, error)
        if not rows:
            return
        with _ctrl_c_held():  # committed and counted, or neither
            self._store.upsert(rows)
            for row in rows:
                if is_new[row.record_id]:
                    result.embedded += 1
                else:
                    result.reembedded += 1
            result.last_committed_id = rows[-1].record_id
        # No rebuild per batch: the backfill's final save builds the index once. Only a delta
        # past BACKFILL_MAX_PENDING is folded in early, to bound memory.
        self._sync()
        if self._live.pending > BACKFILL_MAX_PENDING:
            self._maybe_compact()

    # -- keeping the live index current --------------------------------------------------------------
    def _ensure_open(self, write: str | None = None) -> None:
        """Refuse a closed store, a store inherited through fork(), and (when ``write`` names
        the call) a write to a read-only store; see ``handle.Handle.check``."""
        self._handle.check(self, write)

    def _refresh(self) -> None:
        """Pick up what other connections committed since we last looked (cheap when nothing)."""
        if self._store.data_version() != self._data_version:
            self._sync()
            self._maybe_compact()

    def _sync(self) -> None:
        """Apply what SQLite changed since ``synced_seq``.

        ``data_version`` is read first: a commit landing between the two reads is then caught
        by the next ``_refresh`` instead of being hidden until some later commit.
        """
        version = self._store.data_version()
        changes = self._store.changes_since(self._live.synced_seq)
        if changes:
            self._live.apply(changes, self.model_id)
        self._data_version = version

    def _pending_limit(self) -> int:
        return min(max(len(self._live.in_backend) // 2, MIN_PENDING), MAX_PENDING)

    def _maybe_compact(self) -> None:
        if self._live.pending > self._pending_limit():
            with self._files_locked():
                self._sync()
                self._compact()
                self._write_files()

    def _compact(self) -> None:
        """Fold the delta and tombstones into the backend: in place, or by a bulk rebuild."""
        if self._live.pending and not self._live.fold_in_place():
            self._live = self._rebuild_live()

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Consistent reads across several queries (one WAL snapshot)."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.commit()

    def _current_dim(self) -> int | None:
        model, dim = self._store.identity()
        return dim if model == self.model_id else None

    def _rebuild_live(self) -> LiveIndex:
        """A fresh live index from the vectors in SQLite; nothing is re-encoded."""
        with self._snapshot():
            seq = self._store.last_seq()
            dim = self._current_dim()
            if dim is None:
                return LiveIndex(None, None, (), seq, self._live_generation())
            labels, matrix = self._store.live_vectors(self.model_id, dim)
            records = [
                (label, record_id, kind)
                for label, record_id, kind, *_ in self._store.mapping(self.model_id, dim)
            ]
        backend = None
        if len(labels):
            backend = self._new_backend(dim)
            backend.build(labels, matrix)
        return LiveIndex(backend, dim, records, seq, self._live_generation())

    def _live_generation(self) -> int:
        live = getattr(self, "_live", None)
        return live.generation if live is not None else 0

    # -- files -----------------------------------------------------------------------------------------
    @contextmanager
    def _files_locked(self) -> Iterator[None]:
        if self._file_lock is None:
            yield
            return
        try:
            with self._file_lock:
                yield
        except Timeout as exc:
            raise EmbeddingError(
                f"another process has held {self._file_lock.lock_file} for "
                f"{LOCK_TIMEOUT_SECONDS} s; if none is running, delete the lock file"
            ) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP and os.path.islink(self._file_lock.lock_file):
                raise EmbeddingError(files.lock_symlink_message(self._file_lock.lock_file)) from exc
            raise

    def _check_files_before_open(self) -> None:
        """Refuse foreign files and unreadable ones before the lock file or anything else is
        written; repeated under the lock (where a writer cannot be mid-save) before refusing."""
        if self.index_path is None:
            return
        for path in (self.index_path, self.metadata_path):
            files.check_readable(path)
        try:
            self._own_files()
        except StoreConflictError:
            if not os.path.exists(self._file_lock.lock_file):
                raise  # no writer has ever run here: nothing can be mid-save
            with self._files_locked():
                self._own_files()

    def _own_files(self) -> OwnFiles:
        """Both files' stats once each is known to be this store's, or absent (ownership.py)."""
        found = own_files(self._store, self.index_path, self.metadata_path, self._database_name())
        self._parsed_manifest = found.parsed  # for _read_own_manifest
        return found

    def _read_manifest_once(self) -> Manifest | None:
        """The manifest, reusing the one ``_own_files`` parsed if the file is unchanged since:
        a 100k-record manifest takes a noticeable time to parse, and opening needs it once."""
        cached, self._parsed_manifest = getattr(self, "_parsed_manifest", None), None
        if cached is not None and cached[0] is not None and (
            files.stat_key(self.metadata_path) == cached[0]
        ):
            return cached[1]
        return read_manifest(self.metadata_path)

    def _open_live(self) -> LiveIndex:
        """Load the index files if they are this store's and intact; else rebuild them.

        The rebuilt (or compacted) index is written only when this open may repair the files:
        not read-only, and the files are not another model's (see the module docstring).
        """
        if self.index_path is None:
            self._live = None  # type: ignore[assignment]
            return self._rebuild_live()
        read_only = self._handle.read_only
        with self._files_locked(), _gc_paused():
            for path in (self.index_path, self.metadata_path):
                files.check_readable(path)  # a FIFO never blocks, "permission denied" is said
            if not read_only:
                remove_stale_temps(self.index_path)
                remove_stale_temps(self.metadata_path)
            live, manifest = self._load_own_files()
            self._foreign_files = manifest is not None and manifest.model not in (
                None, self.model_id
            )
            repair = not read_only and not self._foreign_files
            if live is None:
                self._live = None  # type: ignore[assignment]
                live = self._rebuild_live()
                if manifest is not None:
                    live.generation = manifest.generation
                self._live = live
                if repair:
                    self._write_files()
            else:
                self._live = live
                self._sync()
                if live.pending > self._pending_limit():
                    self._compact()
                    if repair:
                        self._write_files()
        return self._live

    def _load_own_files(self) -> tuple[LiveIndex | None, Manifest | None]:
        """(the live index from the files, or None to rebuild; the manifest read).

        A read-only open holds no lock, so a save may replace the files while it reads them
        (index first, then metadata, each atomically): when either file changed meanwhile, it
        reads them again, and after three tries rebuilds from SQLite.
        """
        if isinstance(self._store, EmptyStore):  # no embeddings table: the files are not ours
            return None, None
        for _ in range(3):
            before = file_ids(self.index_path, self.metadata_path)
            manifest = self._read_own_manifest()
            if manifest is None:
                return None, None
            if manifest.model is None and not manifest.records and self._store.count():
                # An empty index written without a model (as an open with another model did)
                # says nothing about this model's vectors: never trust it to mean "none".
                return None, manifest
            live = self._load_files(manifest)
            if not self._handle.read_only or file_ids(self.index_path, self.metadata_path) == before:
                return live, manifest
        return None, manifest

    def _read_own_manifest(self) -> Manifest | None:
        """The manifest if it is usable; None (after one warning) when missing or damaged.

        A manifest of another store, model or dimension is refused, never overwritten.
        """
        try:
            manifest = self._read_manifest_once()
        except ManifestError as exc:
            log.warning(
                "embedding metadata %s is damaged (%s): rebuilding the index from the vectors "
                "in SQLite", self.metadata_path, exc,
            )
            return None
        if manifest is None:
            if self._store.count():
                log.warning(
                    "embedding metadata %s is missing: rebuilding the index from the vectors in "
                    "SQLite", self.metadata_path,
                )
            return None
        if manifest.store_id != self._store.store_id:
            if manifest.database == self._database_name():
                log.warning(
                    "embedding metadata %s was written for an earlier database of the same "
                    "name (%s was deleted and created again): the old index is discarded and "
                    "rebuilt from the vectors in SQLite", self.metadata_path, manifest.database,
                )
                return None
            raise StoreConflictError(
                f"{self.metadata_path} belongs to another store ({manifest.database}): give "
                "each store its own index_path and metadata_path"
            )
        if manifest.model is not None and manifest.model != self.model_id and not (
            self._allow_model_change
        ):
            raise ModelConflictError(
                f"{self.metadata_path} holds vectors of model {manifest.model!r}, not "
                f"{self.model_id!r}: open the store with that model, or pass "
                "allow_model_change=True and re-embed with backfill_embeddings()"
            )
        dim = self._current_dim()
        if manifest.model == self.model_id and None not in (manifest.dim, dim) and (
            manifest.dim != dim
        ):
            raise StoreConflictError(
                f"{self.metadata_path} describes {manifest.dim}-dimensional vectors but the "
                f"store holds {dim}-dimensional ones: delete the file to rebuild it"
            )
        return manifest

    def _load_files(self, manifest: Manifest) -> LiveIndex | None:
        """The live index from intact files; None (after one warning) when they can't be used."""
        if manifest.damage:
            log.warning(
                "embedding metadata %s is damaged (%s): rebuilding the index from the vectors "
                "in SQLite", self.metadata_path, manifest.damage,
            )
            return None
        if manifest.backend != self.backend_name or manifest.params != self._params():
            log.info(
                "index %s was built by %s %s; rebuilding it for %s %s from stored vectors",
                self.index_path, manifest.backend, manifest.params, self.backend_name,
                self._params(),
            )
            return None
        if manifest.model != self.model_id and manifest.model is not None:
            return None  # an allowed model change: the old index is of no use
        if manifest.synced_seq > self._store.last_seq():
            log.warning(
                "index %s is newer than its database (was the database restored from a "
                "backup?): rebuilding it from SQLite", self.index_path,
            )
            return None
        records = manifest.records  # rows start (label, record_id, kind, ...)
        if not records:
            return LiveIndex(None, manifest.dim, (), manifest.synced_seq, manifest.generation)
        try:
            labels = checked_labels(records, self._store.max_label())
            size, checksum = file_checksum(self.index_path)
            if (size, checksum) != (manifest.index_size, manifest.index_checksum):
                raise CorruptIndexError("its checksum does not match the metadata")
            backend = self._new_backend(manifest.dim)
            backend.load(self.index_path, labels)
            live = LiveIndex(
                backend, manifest.dim, records, manifest.synced_seq, manifest.generation
            )
            if len(live.label_of) != len(records):
                raise CorruptIndexError("its metadata lists a record id twice")
        except (OSError, ValueError, RuntimeError, OverflowError, CorruptIndexError) as exc:
            log.warning(
                "index %s cannot be used (%s): rebuilding it from the vectors in SQLite",
                self.index_path, exc,
            )
            return None
        self._remember_files(manifest.synced_seq)
        return live

    def _params(self) -> dict[str, Any]:
        return self._new_backend(2).params()

    def _remember_files(self, synced_seq: int) -> None:
        stat = os.stat(self.metadata_path)
        self._files_stamp = (stat.st_mtime_ns, stat.st_size, synced_seq)

    def _files_unchanged(self) -> bool:
        """True when the metadata on disk is still the file we last wrote or loaded."""
        if self._files_stamp is None:
            return False
        try:
            stat = os.stat(self.metadata_path)
        except OSError:
            return False
        return self._files_stamp[:2] == (stat.st_mtime_ns, stat.st_size)

    def _files_current(self) -> bool:
        """True when the files on disk are the ones we last wrote or loaded, and hold
        everything the live index holds (FAISS takes new vectors in place, leaving nothing
        pending, so an unchanged file alone does not mean there is nothing to save)."""
        if self.metadata_path is None:
            return True
        return self._files_unchanged() and self._files_stamp[2] == self._live.synced_seq

    def _write_files(self) -> None:
        """Write the (compacted) backend and its manifest; call under the file lock."""
        if self.index_path is None or not self._may_write_files():
            return
        live = self._live
        assert live.pending == 0, "compact before writing files"
        on_disk = 0
        # Only files this store wrote are replaced or deleted; checked before writing any.
        current = self._own_files()
        self._parsed_manifest = None  # read again below, after the lock was taken
        try:
            previous = read_manifest(self.metadata_path)
            if previous is not None:
                if previous.store_id != self._store.store_id and (
                    previous.database != self._database_name()
                ):
                    raise StoreConflictError(
                        f"{self.metadata_path} now belongs to another store ({previous.database})"
                        ": give each store its own index_path and metadata_path"
                    )
                on_disk = previous.generation
        except ManifestError:
            pass
        generation = max(on_disk, live.generation) + 1
        # Until this write succeeds the files may not match the live index: a failed write
        # (a full disk) must not let the next save_index() think there is nothing to do.
        self._files_stamp = None
        index_tmp = manifest_tmp = None
        try:
            if live.backend is not None and len(live.backend):
                index_tmp = write_temp(self.index_path, live.backend.save)
            manifest_tmp = write_manifest_temp(
                self.metadata_path, self._manifest(live, generation, index_tmp)
            )
            # Both files are written and fsynced before either replaces its old version,
            # so a failed write leaves the previous index and metadata intact as a pair.
            new_ids = remember_written(self._store, (index_tmp, manifest_tmp), current)
            if index_tmp is not None:
                publish(index_tmp, self.index_path)
            elif current.index is not None:  # only ever a file _own_files() said is ours
                with suppress(FileNotFoundError):
                    os.unlink(self.index_path)
            publish(manifest_tmp, self.metadata_path)
            remember_published(self._store, new_ids)
        except BaseException:
            discard_temp(index_tmp)
            discard_temp(manifest_tmp)
            raise
        live.generation = generation
        self._remember_files(live.synced_seq)

    def _manifest(self, live: LiveIndex, generation: int, index_file: str | None) -> Manifest:
        """The manifest of ``live`` and its just-written ``index_file``: sampled checksum for
        opening, full sha256 for verify (reading the file back costs ~0.15 s per 154 MB)."""
        size = checksum = digest = None
        if index_file is not None:
            size, checksum = file_checksum(index_file)
            digest = file_digest(index_file)
        extras = {}
        if live.dim is not None:
            extras = {
                label: (source_id, created_at, version)
                for label, _, _, source_id, created_at, version in self._store.mapping(
                    self.model_id, live.dim
                )
            }
        records = [
            [label, live.record_ids[label], kind, *extras.get(label, ("", "", self.embedding_version))]
            for label, kind in sorted(live.kind_of.items())
        ]
        return Manifest(
            store_id=self._store.store_id,
            database=self._database_name(),
            model=self.model_id if live.dim is not None else None,
            dim=live.dim,
            backend=self.backend_name,
            params=self._params(),
            embedding_version=self.embedding_version,
            generation=generation,
            synced_seq=live.synced_seq,
            index_size=size,
            index_checksum=checksum,
            index_digest=digest,
            records=records,
        )

    # -- flushing, verifying, rebuilding ----------------------------------------------------------------
    def save_index(self) -> None:
        """Flush: fold pending changes into the backend and write the index and metadata."""
        self._ensure_open(write="save_index()")
        with self._lock:
            if self.conn.in_transaction:
                raise EmbeddingError("commit or roll back the open transaction before save_index()")
            with self._files_locked():
                self._sync()
                if self._live.pending == 0 and self._files_current():
                    return
                self._compact()
                self._write_files()

    def load_index(self) -> None:
        """Drop the in-memory index and load it again from the files (or rebuild them)."""
        self._ensure_open()
        with self._lock:
            self._live = self._open_live()

    def rebuild_index(self) -> None:
        """Rebuild the index from the vectors in SQLite (no re-encoding) and write it."""
        self._ensure_open(write="rebuild_index()")
        with self._lock:
            with self._files_locked():
                self._live = self._rebuild_live()
                self._write_files()

    def verify_index(self, *, repair: bool = False) -> VerifyReport:
        """Compare SQLite, the live index and the files; with ``repair``, rebuild on problems."""
        self._ensure_open(write="verify_index(repair=True)" if repair else None)
        with self._lock:
            self._sync()
            report = self._verify()
            if repair and not report.ok:
                self.rebuild_index()
                report = self._verify()
                report.repaired = True
        return report

    def _verify(self) -> VerifyReport:
        """Compare SQLite, the live index and the files as of one moment.

        Other processes write while we look: the file lock keeps a save from replacing the
        files between reading the metadata and the index, and SQLite is read, and the live
        index synced, inside one snapshot taken under that lock, so neither side is ahead.
        A read-only store takes no lock: it looks again when a save replaced the files meanwhile.
        """
        with self._files_locked():
            for _ in range(2 if self._handle.read_only else 0):
                before = file_ids(self.index_path, self.metadata_path)
                report = self._verify_now()
                if report.ok or file_ids(self.index_path, self.metadata_path) == before:
                    return report
            return self._verify_now()

    def _verify_now(self) -> VerifyReport:
        """Everything is read: SQLite's ids and vectors against the live index, the metadata
        and every vector in the index file (the open-time checks only sample the file)."""
        problems: list[str] = []
        manifest = items = metadata_count = file_count = None
        pending = 0
        if self.index_path is not None:
            try:
                manifest = read_manifest(self.metadata_path)
            except ManifestError as exc:
                problems.append(f"metadata {self.metadata_path} is damaged: {exc}")
            else:
                if manifest is None:
                    problems.append(f"metadata {self.metadata_path} is missing")
            if manifest is not None:
                if manifest.damage:
                    problems.append(
                        f"metadata {self.metadata_path} is damaged: {manifest.damage}; {REPAIR}"
                    )
                metadata_count = manifest.count
                file_count, items, problem = check_index_file(
                    self.index_path, manifest, self._new_backend
                )
                if problem:
                    problems.append(problem)
        with self._snapshot():
            dim = self._live.dim or self._current_dim()
            seq = self._store.last_seq()
            compared = manifest
            if manifest is not None:
                pending = len(self._store.changes_since(manifest.synced_seq))
                if manifest.store_id != self._store.store_id:
                    problems.append(f"metadata {self.metadata_path} belongs to another store")
                    compared = None
                elif manifest.synced_seq > seq:
                    problems.append("metadata is newer than the database")
                    compared = None
            stored, counts, found = scan_problems(
                self._store.scan(), self.model_id, dim, compared, items, self.index_path
            )
            switch = model_switch_problem(counts, self._store.identity()[0])
            if self._live.synced_seq < seq:
                self._sync()
        live = self._live
        live_ids = {label: (rid, live.kind_of[label]) for label, rid in live.record_ids.items()}
        problems[:0] = live_problems(live_ids, stored)
        problems += found
        if switch:
            problems.append(switch)
        return VerifyReport(
            sqlite_count=len(stored),
            index_count=len(live_ids),
            metadata_count=metadata_count,
            file_count=file_count,
            pending_changes=pending,
            problems=problems,
        )

    def close(self) -> None:
        """Flush pending changes to the index files. The connection stays the caller's.

        A small delta (Annoy, HNSW, or FAISS flat still mapped from its file) is left for the
        next open to replay from SQLite, where every change is already committed: closing
        after a few adds must not cost a rebuild of the whole index (4.8 s at 100k vectors)
        or a rewrite of all of it (154 MB for FAISS flat).
        ``save_index()`` always flushes. A read-only store, and a store closed in a child
        process that fork() made (the files are the parent's), write nothing.
        """
        handle = self._handle
        if handle.closed or handle.forked:
            handle.closed = True
            return
        with self._lock:
            if handle.closed:
                return
            if not handle.read_only and not self.conn.in_transaction:
                try:
                    if not self._can_defer_flush():
                        self.save_index()
                except sqlite3.ProgrammingError:  # the connection was closed first
                    pass
            handle.closed = True

    def _can_defer_flush(self) -> bool:
        if self._foreign_files and self._files_stamp is None and (
            self.conn.total_changes == self._changes_at_open
        ):
            return True  # nothing written here: leave the other model's files as they are
        self._sync()
        live = self._live
        backend = live.backend
        if self.metadata_path is None or backend is None:
            return False
        if (backend.can_add and backend.can_remove) or not 0 < live.pending <= self._pending_limit():
            return False
        return self._files_unchanged()  # still the files we wrote or loaded, not another store's

    def _may_write_files(self) -> bool:
        """Whether the index files may be written now: never by a read-only store, and an
        index holding no vectors never replaces another model's files or is written while
        SQLite holds other models' vectors (it would claim that there are none)."""
        if self._handle.read_only:
            return False
        return len(self._live) > 0 or not (self._foreign_files or self._store.count())

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
