"""The SQLite engine: vectors in the application's own SQLite file, searched in memory.

Its parts, each owning its state, orchestrated here:

- ``EmbeddingStore`` (store.py): the embeddings table, the source of truth;
- ``LiveView`` (live_view.py): the live index (backend + exact delta), kept current from SQLite
  by change sequence numbers, so other processes' writes show up in every search;
- ``IndexFiles`` (index_files.py): the backend index and its JSON manifest on disk, a cache
  written atomically under a file lock at flush points, verified on open and rebuilt from
  SQLite when missing, stale or damaged;
- the keyword index (keywords.py, reached through the store): each vector's text and an FTS5
  index over it, in SQLite, written with the vector. ``verify`` compares it with the vectors
  (on a writable store it also runs FTS5's own integrity-check, a write statement that takes
  SQLite's write lock for the time it reads the index) and ``rebuild`` makes it again.

Opening changes no file but to repair this model's own cache: a writable open writes the index
again when its files are missing, damaged, stale or far behind SQLite (they are derived data,
and every later open would pay the rebuild). It never writes over files that hold another
model's vectors (an open with ``allow_model_change`` keeps them until vectors of the new model
are saved), and a read-only open writes nothing, not even the lock file (it holds an existing
one shared while it reads): it rebuilds in memory only.

Transactions have one owner (``transaction.atomic``): ``transaction()`` begins one, or nests as a
savepoint in one already open; whoever began it commits it. The live view sees writes once they
are committed, whoever commits them.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Container, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np

from ... import validation as check
from ...encoding import check_same_dimension
from ...errors import EmbeddingError, ModelConflictError
from ...files import database_file
from ...options import StoreOptions
from ...reports import VerifyReport
from . import export
from .filtered import search_within
from .index_files import IndexFiles, gc_paused
from .live_index import LiveIndex
from .live_view import LiveView
from .opening import open_store
from .store import EmbeddingStore, StoredState, VectorRow
from .transaction import atomic
from .verify import verify_store


def database_name(conn: sqlite3.Connection, table: str) -> str:
    """The database file and table, as errors and manifests name the store."""
    row = next((r for r in conn.execute("PRAGMA database_list") if r[1] == "main"), None)
    return (row[2] if row and row[2] else ":memory:") + f" (table {table})"


class SQLiteEngine:
    """One embeddings table of a SQLite connection, its live index and its index files."""

    name = "sqlite"

    def __init__(
        self, conn: sqlite3.Connection, *, options: StoreOptions, table: str, model_id: str,
        owner: str, has_text: bool = True,
    ) -> None:
        """``options`` are located (their paths resolved); a foreign file, another class's
        table or another model's vectors are refused before anything is written.
        ``has_text``: the store embeds text, so every vector should have a keyword row."""
        self.conn = conn
        self.has_text = has_text
        self.lock = threading.RLock()
        self.model_id = model_id
        self.read_only = read_only = options.read_only
        self.database = database_name(conn, table)
        backend_class, settings = options.backend_class, options.backend_settings
        self.new_backend = lambda dim: backend_class(dim, **settings)
        self.files: IndexFiles | None = None
        if options.index_path is not None:
            self.files = IndexFiles(
                EmbeddingStore(conn, table, owner=owner), options.index_path,
                options.metadata_path, database=self.database, model_id=model_id,
                backend_name=options.backend, new_backend=self.new_backend,
                embedding_version=options.embedding_version,
                allow_model_change=options.allow_model_change, read_only=read_only,
            )
            if not read_only:  # a foreign file is refused before anything is written
                self.files.check_before_open()
        self.store = open_store(
            conn, table, read_only=read_only, name=self.database, owner=owner
        )
        stored_model, _ = self.store.identity()
        if stored_model not in (None, model_id) and not options.allow_model_change:
            raise ModelConflictError(
                f"the vectors in {self.database} were made by model {stored_model!r}, "
                f"not {model_id!r}: open it with model_name={stored_model!r}, or pass "
                "allow_model_change=True and run backfill_embeddings() to re-embed everything"
            )
        if self.files is not None:
            self.files.store = self.store
        self.view = LiveView(self.store, model_id, self.new_backend)
        self.view.live = self._open_live()
        self._changes_at_open = conn.total_changes

    @staticmethod
    def locate(options: StoreOptions, conn: sqlite3.Connection, table: str) -> StoreOptions:
        """The options with this store's index and metadata paths resolved and checked."""
        return options.located(database_file(conn), table)

    @property
    def dim(self) -> int | None:
        return self.view.dim

    def identity(self) -> tuple[str | None, int | None]:
        with self.lock:
            return self.store.identity()

    def _locked_files(self):
        return self.files.locked() if self.files is not None else nullcontext()

    # -- writes ----------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.lock:
            with atomic(self.conn) as owned:
                yield
            if owned and self.view.uncommitted:  # vectors were written in it
                self.view.sync()
                self._maybe_compact()

    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def bulk_load(self) -> nullcontext:
        return nullcontext()  # bulk writes already leave the index files to the final flush

    def lost_connection(self, exc: BaseException) -> bool:
        return False  # a file does not go away between statements

    def write(self, rows: list[VectorRow], *, bulk: bool = False) -> None:
        if not rows:
            return
        with self.lock:
            check_same_dimension([row.vector for row in rows], self.dim, self.model_id)
            if self.dim is not None and rows[0].vector.shape[0] != self.dim:
                raise check.DimensionMismatchError(
                    f"prepared vectors have {rows[0].vector.shape[0]} dimensions; this store "
                    f"holds {self.dim}: prepare them again"
                )
            self.store.upsert(rows)
            # In bulk nothing is folded per batch: the backfill's end builds the index once
            # (folding early only built the same vectors again; the delta holds them once).
            self._wrote(math.inf if bulk else None)

    def remove(self, keys: list[str], *, through_seq: int | None = None) -> set[str]:
        with self.lock:
            removed = self.store.remove(keys, through_seq=through_seq)
            self._wrote()
        return removed

    def set_version(self, keys: list[str], version: int) -> set[str]:
        with self.lock:
            changed = self.store.set_embedding_version(keys, version)
            self._wrote()
        return changed

    def fill_keywords(self, items: list[tuple[str, str, str]]) -> int:
        with self.lock:
            if not items:
                return 0
            with self.store.write():
                return self.store.keywords.fill(items)

    def _wrote(self, compact_over: float | None = None) -> None:
        """After a write: the view follows once it is committed, compacting if need be."""
        self.view.wrote()
        if not self.conn.in_transaction:
            self._maybe_compact(compact_over)

    # -- reads -----------------------------------------------------------------------------------
    def states_of(self, keys: list[str]) -> dict[str, StoredState]:
        with self.lock:
            return self.store.states_of(keys)

    def written_since(self, keys: list[str], seq: int) -> set[str]:
        with self.lock:
            return self.store.written_since(keys, seq)

    def stale_states(
        self, items: list[tuple[str, str, str]], model: str, embedding_version: int
    ) -> dict[str, StoredState | None]:
        with self.lock:
            return self.store.stale_states(items, model, embedding_version)

    def unseen_keys(self, seen: Container[str], through_seq: int) -> list[str]:
        unseen: list[str] = []
        after: str | None = ""
        while after is not None:
            with self.lock:
                after, candidates = self.store.keys_not_in(seen, after)
                unseen += self.store.live_through(candidates, through_seq)
        return unseen

    def last_seq(self) -> int:
        with self.lock:
            return self.store.last_seq()

    def get_vector(self, key: str) -> np.ndarray | None:
        with self.lock:
            return self.store.get_vector(key)

    def key_page(self, after: str, limit: int) -> list[str]:
        with self.lock:
            return export.key_page(self.store, after, limit)

    def rows_of(self, keys: list[str]) -> dict[str, VectorRow]:
        with self.lock:
            return export.rows_of(self.store, keys)

    def count(self) -> int:
        with self.lock:
            self._refresh()
            return len(self.view)

    def stored_count(self) -> int:
        with self.lock:
            return self.store.rows()

    def model_counts(self) -> dict[str, int]:
        with self.lock:
            return self.store.model_counts()

    def search(
        self, query: Any, top_k: int, kind: str | None, ids: list[str] | None = None
    ) -> list[tuple[str, float]]:
        with self.lock:
            self._refresh()
            vector = check.check_vector(query, self.dim, self.model_id)
            if ids is not None:
                return search_within(self.store, self.view.live, vector, top_k, kind, ids)
            return self.view.live.search(vector, top_k, kind)

    def keyword_search(
        self, text: str, top_k: int, kind: str | None, ids: list[str] | None = None,
        fill: int | None = None,
    ) -> list[tuple[str, float]]:
        with self.lock:
            if not self.store.keywords.ready and not self.store.keywords.empty:
                raise EmbeddingError(
                    f"{self.database} has no keyword index yet (it was made by an older "
                    "embeddable_db): open it once without read_only=True to add one, then run "
                    "backfill_embeddings() to fill it (the model is not called)"
                )
            return self.store.keywords.search(
                text, top_k, kind, ids, len(self.view), top_k if fill is None else fill
            )

    def keyword_coverage(self, text: str, best_score: float) -> float:
        with self.lock:
            return self.store.keywords.coverage(text, best_score, len(self.view))

    def keyword_texts(self, keys: list[str]) -> dict[str, str]:
        with self.lock:
            return self.store.keywords.texts_of(keys)

    # -- keeping the live view current -------------------------------------------------------------
    def _refresh(self) -> None:
        """Pick up what other connections committed since we last looked (cheap when nothing)."""
        if self.view.stale():
            self.view.sync()
            self._maybe_compact()

    def _maybe_compact(self, limit: int | None = None) -> None:
        if self.view.needs_compaction(limit):
            with self._locked_files():
                self.view.sync()
                self.view.compact()
                self._write_files()

    def _write_files(self) -> None:
        if self.files is not None:
            self.files.write(self.view.live)

    def _open_live(self) -> LiveIndex:
        """Load the index files if they are this store's and intact; else rebuild them.

        The rebuilt (or compacted) index is written only when this open may repair the files:
        not read-only, and the files are not another model's (see the module docstring).
        """
        view, files = self.view, self.files
        if files is None:
            view.live = None
            return view.rebuild()
        with files.locked(), gc_paused():
            files.prepare()
            live, manifest = files.load(view.current_dim())
            repair = not self.read_only and not files.foreign
            if live is None:
                view.live = None
                live = view.rebuild()
                if manifest is not None:
                    live.generation = manifest.generation
                view.live = live
                if repair:
                    files.write(live)
            else:
                view.live = live
                view.sync()
                if view.needs_compaction():
                    view.compact()
                    if repair:
                        files.write(view.live)
        return view.live

    # -- flushing, verifying, rebuilding -------------------------------------------------------------
    def _refuse_in_transaction(self, call: str) -> None:
        if self.conn.in_transaction:
            raise EmbeddingError(f"commit or roll back the open transaction before {call}")

    def flush(self) -> None:
        with self.lock:
            self._refuse_in_transaction("save_index()")
            with self._locked_files():
                self.view.sync()
                if self.view.live.pending == 0 and (
                    self.files is None or self.files.current(self.view.live)
                ):
                    return
                self.view.compact()
                self._write_files()

    def reload(self) -> None:
        with self.lock:
            self._refuse_in_transaction("load_index()")
            self.view.live = self._open_live()

    def rebuild(self, *, vectors: bool = True, keywords: bool = True) -> None:
        """The index files from the vectors, and the keyword index from the stored text."""
        with self.lock:
            self._refuse_in_transaction("rebuild_index()")
            if keywords and not self.read_only:
                with self.store.write():
                    self.store.keywords.rebuild()
            if vectors:
                with self._locked_files():
                    self.view.live = self.view.rebuild()
                    self._write_files()

    def verify(self, *, repair: bool = False) -> VerifyReport:
        """``verify_store``'s comparison of the vectors, then the keyword index against them;
        with ``repair``, only the part that disagrees is rebuilt."""
        with self.lock:
            if self.view.uncommitted:  # what SQLite shows in the transaction is not yet true
                self._refuse_in_transaction("verify_index()")
            self.view.sync()
            report, keyword_problems = self._verify()
            if repair and not report.ok:
                vectors = len(report.problems) > len(keyword_problems)
                self.rebuild(vectors=vectors, keywords=bool(keyword_problems))
                report, _ = self._verify()
                report.repaired = True
        return report

    def _verify(self) -> tuple[VerifyReport, list[str]]:
        report = verify_store(self.view, self.files, self.read_only)
        keywords = self.store.keywords
        with self.view.snapshot():
            report.keyword_count, problems = keywords.problems(self.has_text)
        if report.keyword_count is not None and not self.read_only and not self.conn.in_transaction:
            damage = keywords.check_index()  # FTS5's own check is a write statement
            if damage:
                problems.append(damage)
        report.problems += problems
        return report, problems

    def close(self) -> None:
        """Flush unless the next open can replay the changes more cheaply (``_can_defer_flush``).
        A read-only store, and one whose caller still holds a transaction open, write nothing.
        """
        with self.lock:
            if self.read_only or self.conn.in_transaction:
                return
            try:
                if not self._can_defer_flush():
                    self.flush()
            except sqlite3.ProgrammingError:  # the connection was closed first
                pass

    def settle(self) -> None:
        """The end of a bulk write (a backfill): flush by the rule ``close()`` follows, then
        give the WAL back to the file system (a long backfill grows it to the store's size)."""
        with self.lock:
            self._refuse_in_transaction("backfill_embeddings()")
            if not self._can_defer_flush():
                self.flush()
            if not self.read_only:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _can_defer_flush(self) -> bool:
        """Whether the files may stay behind SQLite: a delta within its share of the index
        (SQLite holds every change and the next open replays them) costs far less than
        rebuilding or rewriting the whole index (4.8 s at 100k vectors for Annoy, 154 MB for
        FAISS flat) for a few changes."""
        files = self.files
        if files is not None and files.foreign and files.stamp is None and (
            self.conn.total_changes == self._changes_at_open
        ):
            return True  # nothing written here: leave the other model's files as they are
        self.view.sync()
        if files is None or self.view.live.backend is None or files.stamp is None:
            return False
        behind = self.store.changes_after(files.stamp[2])  # FAISS takes them in place
        if self.view.needs_compaction() or not behind <= self.view.pending_limit():
            return False
        return files.unchanged()  # still the files we wrote or loaded, not another store's
