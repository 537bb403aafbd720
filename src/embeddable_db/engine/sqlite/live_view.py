"""The live view: the ``LiveIndex`` a store searches, kept current from its SQLite table.

SQLite is the source of truth; the view follows it by change sequence numbers (``seq``), so
writes of other connections and processes show up in every search, and it decides when the
exact delta is folded into the backend (the compaction policy below). Writing index files is
not its business: the engine asks ``needs_compaction()`` and writes them after ``compact()``.

One rule keeps it honest inside transactions: it never reads changes that are not committed.
A write made inside a transaction the store does not own (the caller's) is only seen once that
transaction ends; were it applied earlier, a rollback would leave a vector in the view that
SQLite no longer holds, and ``synced_seq`` past sequence numbers that will be handed out again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ...backends import VectorIndex
from .label_table import LabelTable
from .live_index import LiveIndex
from .store import EmbeddingStore

# The exact delta is folded into the backend when it passes this many vectors (clamped share
# of the backend's size): rebuilds stay geometric, so their total cost is linear in the store.
MIN_PENDING = 10_000
MAX_PENDING = 50_000


class LiveView:
    """``live`` (a ``LiveIndex``) in step with ``store`` for vectors of ``model_id``."""

    def __init__(
        self, store: EmbeddingStore, model_id: str, new_backend: Callable[[int], VectorIndex]
    ) -> None:
        self.store = store
        self.model_id = model_id
        self.new_backend = new_backend
        self.live: LiveIndex | None = None  # set by the engine's open
        self.data_version = store.data_version()
        #: Our writes sit in a transaction we do not own: not seen until it ends.
        self.uncommitted = False

    def __len__(self) -> int:
        return len(self.live)

    @property
    def dim(self) -> int | None:
        return self.live.dim

    # -- following SQLite ----------------------------------------------------------------------
    def wrote(self) -> None:
        """Call after each write: sync now, or once the caller's open transaction ends."""
        if self.store.conn.in_transaction:
            self.uncommitted = True
        else:
            self.sync()

    def stale(self) -> bool:
        """True when SQLite may hold changes the view has not applied (a cheap check)."""
        if self.uncommitted:
            return not self.store.conn.in_transaction
        return self.store.data_version() != self.data_version

    def sync(self) -> None:
        """Apply what SQLite committed since ``synced_seq``.

        ``data_version`` is read first: a commit landing between the two reads is then caught
        by the next ``stale()`` instead of being hidden until some later commit.
        """
        if self.uncommitted and self.store.conn.in_transaction:
            return  # see the module docstring
        self.uncommitted = False
        version = self.store.data_version()
        changes = self.store.changes_since(self.live.synced_seq)
        if changes:
            self.live.apply(changes, self.model_id)
        self.data_version = version

    # -- compaction policy -----------------------------------------------------------------------
    def pending_limit(self) -> int:
        return min(max(len(self.live.in_backend) // 2, MIN_PENDING), MAX_PENDING)

    def needs_compaction(self, limit: int | None = None) -> bool:
        return self.live.pending > (self.pending_limit() if limit is None else limit)

    def compact(self) -> None:
        """Fold the delta and tombstones into the backend: in place, or by a bulk rebuild."""
        if self.live.pending and not self.live.fold_in_place():
            self.live = self.rebuild()

    # -- rebuilding --------------------------------------------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Consistent reads across several queries (one WAL snapshot)."""
        conn = self.store.conn
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.commit()

    def current_dim(self) -> int | None:
        """The stored vectors' dimension if they are this model's, else None."""
        model, dim = self.store.identity()
        return dim if model == self.model_id else None

    def rebuild(self) -> LiveIndex:
        """A fresh live index from the vectors in SQLite; nothing is re-encoded.

        The old live index is let go first and the vectors stream from SQLite into the new
        backend chunk by chunk, so a rebuild of a large store never holds them twice (a 1M
        backfill's final build peaked at 3.5x the raw vectors). If the rebuild fails, the
        view is left empty and behind everything, so the next sync replays all from SQLite."""
        generation = self.live.generation if self.live is not None else 0
        self.live = LiveIndex(None, None, None, 0, generation)  # what a failure leaves
        self.data_version = None  # ... and the next stale() then says so
        store = self.store
        with self.snapshot():
            seq = store.last_seq()
            dim = self.current_dim()
            if dim is None:
                live = LiveIndex(None, None, None, seq, generation)
            else:
                table = LabelTable.from_rows(store.mapping(self.model_id, dim))
                backend = None
                if len(table):
                    backend = self.new_backend(dim)
                    chunks = (chunk for _, chunk in store.vector_chunks(self.model_id, dim))
                    backend.build_from(table.labels(), chunks)
                live = LiveIndex(backend, dim, table, seq, generation)
        self.data_version = store.data_version()
        return live
