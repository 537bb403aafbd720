"""The engine seam: what a storage engine gives the mixin, and the factory that picks one.

The mixin (``mixin.py``) is a facade: it checks arguments, encodes and hands everything about
storing and searching vectors to an engine. An engine owns its connection's use (``lock``), its
transactions (``transaction()``: one owner, nesting by SAVEPOINT) and whatever it keeps beside
the vectors (the SQLite engine: a live index and index files). A second engine (PostgreSQL) is
one more class with these methods, proved by one more parameter of the conformance suite
(``tests/conformance``).

Record keys are strings; vectors are float32 numpy arrays; ``StoredState`` is what backfill
compares to decide staleness. Beside each vector an engine keeps the text it was made from in
a keyword index (``keyword_search``), written and removed in the same transaction; ``verify``
reports where the two disagree and ``rebuild`` repairs it. Nothing here imports the mixin.
"""

from __future__ import annotations

import importlib
import sqlite3
import threading
from collections.abc import Container
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import BackendUnavailableError, EmbeddingError
from ..reports import VerifyReport
from ..rows import StoredState, VectorRow


@runtime_checkable
class Engine(Protocol):
    """What every storage engine provides; each method holds ``lock`` itself."""

    name: str
    #: Held by every method while it uses the connection; callers that use the same
    #: connection from several threads hold it too (the mixin's ``embedding_lock``).
    lock: threading.RLock
    model_id: str
    read_only: bool

    @property
    def dim(self) -> int | None:
        """The dimension of the searchable vectors, once there are any."""

    def identity(self) -> tuple[str | None, int | None]:
        """The (model, dimension) the stored vectors were made with."""

    # -- writes ----------------------------------------------------------------------------------
    def transaction(self) -> AbstractContextManager[None]:
        """Everything inside commits together or not at all; nested: a savepoint."""

    def in_transaction(self) -> bool:
        """True while a transaction (the caller's or ``transaction()``'s) is open."""

    def bulk_load(self) -> AbstractContextManager[None]:
        """A backfill runs inside: an engine may put index upkeep off to its end (PostgreSQL,
        into a store with no vectors yet: its HNSW index is built once, after the load)."""

    def lost_connection(self, exc: BaseException) -> bool:
        """True when ``exc`` means the connection is gone (a PostgreSQL server that stopped or
        restarted): nothing more can be done on it, and the transaction in flight rolled back."""

    def write(self, rows: list[VectorRow], *, bulk: bool = False) -> None:
        """Insert or replace vectors (durable once the outermost transaction commits).
        ``bulk``: one batch of a backfill, which flushes at its end; upkeep may wait for it."""

    def remove(self, keys: list[str], *, through_seq: int | None = None) -> set[str]:
        """Drop vectors; returns the keys that had one. With ``through_seq``, only vectors
        last changed at or before it (a backfill's orphans): one another writer made since
        stays, judged in the same transaction as the removal."""

    def set_version(self, keys: list[str], version: int) -> set[str]:
        """Mark vectors as made for ``version``; returns the keys that had one."""

    def fill_keywords(self, items: list[tuple[str, str, str]]) -> int:
        """Keyword rows for ``(key, text hash, text)`` whose vector was made from that text
        but has none (a migrated store); others are skipped. Returns how many were written."""

    # -- reads -----------------------------------------------------------------------------------
    def states_of(self, keys: list[str]) -> dict[str, StoredState]:
        """What the vectors of these keys were made from (keys without a vector are absent)."""

    def written_since(self, keys: list[str], seq: int) -> set[str]:
        """Those of these keys whose vectors were written after ``seq`` (``last_seq()``; and
        removed, where a removal leaves a row): by another writer, when a backfill asks."""

    def stale_states(
        self, items: list[tuple[str, str, str]], model: str, embedding_version: int
    ) -> dict[str, StoredState | None]:
        """For ``(key, text hash, kind)`` items, the stored state of each one a backfill may
        have to act on (None: no vector); a current one (``StoredState.current_for``) is
        absent, so a backfill with nothing to do builds nothing per record."""

    def unseen_keys(self, seen: Container[str], through_seq: int) -> list[str]:
        """Keys of vectors last changed at or before ``through_seq`` that are not in ``seen``
        (a backfill's orphans); the lock is held a page of keys at a time."""

    def last_seq(self) -> int:
        """The change counter: every write moves it forward."""

    def get_vector(self, key: str) -> np.ndarray | None: ...

    def key_page(self, after: str, limit: int) -> list[str]:
        """The next ``limit`` keys after ``after`` in the engine's own key order (it may list
        keys that have no vector now; ``rows_of`` leaves those out): all keys, page by page."""

    def rows_of(self, keys: list[str]) -> dict[str, VectorRow]:
        """key -> its stored vector as the ``VectorRow`` that wrote it (state and keyword text
        included), for those of ``keys`` that have one: another engine's ``write`` takes them
        as they are, so moving a store never re-encodes and keeps what is stale stale."""

    def count(self) -> int:
        """How many vectors a search can find."""

    def model_counts(self) -> dict[str, int]: ...

    def stored_count(self) -> int | None:
        """How many keys the store holds a row for, at least every key ``states_of`` knows
        (SQLite: tombstones of removed vectors too): a backfill that read a record for as many
        keys with a vector, with no write since it started, has no orphans to look for. None
        when ``last_seq`` cannot say that nothing was written (it is not a write counter)."""

    def search(
        self, query: Any, top_k: int, kind: str | None, ids: list[str] | None = None
    ) -> list[tuple[str, float]]:
        """``(key, 1 - cosine)`` best first; with ``kind`` or ``ids`` (distinct keys to search
        within), still ``top_k`` when that many match."""

    def keyword_search(
        self, text: str, top_k: int, kind: str | None, ids: list[str] | None = None,
        fill: int | None = None,
    ) -> list[tuple[str, float]]:
        """``(key, score)`` best first, higher is better: the records whose embedded text has
        any of the words of ``text`` (any text is a valid query; never SQL or query syntax);
        ``kind`` and ``ids`` filter as in ``search``. ``fill`` (default ``top_k``): how many
        matches the caller needs at least, where an engine leaves common words out."""

    def keyword_coverage(self, text: str, best_score: float) -> float:
        """0..1: how much of the query's information a keyword match scoring ``best_score``
        holds (1: every informative word); hybrid search weighs the keyword side by it."""

    def keyword_texts(self, keys: list[str]) -> dict[str, str]:
        """key -> the text its vector was made from (what a reranker reads)."""

    # -- upkeep ----------------------------------------------------------------------------------
    def flush(self) -> None: ...

    def settle(self) -> None:
        """The end of a backfill: flush, or leave a small delta for the next open to replay."""

    def reload(self) -> None: ...

    def rebuild(self) -> None: ...

    def verify(self, *, repair: bool = False) -> VerifyReport: ...

    def close(self) -> None: ...


def engine_class(conn: Any, who: str) -> type:
    """The engine class for ``conn``, checked before anything else; ``who`` (the store
    class's name) is named in the error. A psycopg connection is recognised by its class's
    module, so that the SQLite path never imports psycopg; the PostgreSQL engine is imported
    only then, and a missing extra is a ``BackendUnavailableError`` naming the package."""
    if isinstance(conn, sqlite3.Connection):
        from .sqlite import SQLiteEngine

        return SQLiteEngine
    if _is_psycopg(conn):
        return _postgres_engine(conn, who)
    hint = ""
    if any(cls.__module__.split(".")[0] == "psycopg2" for cls in type(conn).__mro__):
        hint = " (psycopg2 is not supported: connect with psycopg 3, 'import psycopg')"
    raise EmbeddingError(
        f"{who} must set self.conn to a sqlite3.Connection or a psycopg.Connection before "
        f"calling EmbeddableDBMixin.__init__{hint}"
    )


def _is_psycopg(conn: Any) -> bool:
    """True for psycopg 3's connections (and subclasses), without importing psycopg."""
    return any(
        cls.__module__ == "psycopg" or cls.__module__.startswith("psycopg.")
        for cls in type(conn).__mro__
    )


def _postgres_engine(conn: Any, who: str) -> type:
    engine = import_postgres("embeddable_db.engine.postgres", f"{who} uses a PostgreSQL connection")
    engine.PostgresEngine.check_connection(conn, who)
    return engine.PostgresEngine


def import_postgres(module: str, what: str) -> ModuleType:
    """Import a module of the ``[postgres]`` extra; a missing package is a
    ``BackendUnavailableError`` that names it (``what`` says who needs it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in ("psycopg", "psycopg_binary", "pgvector"):
            raise
        raise BackendUnavailableError(
            f"{what}, which needs the {missing!r} package (not installed: {exc}); install "
            "the extra with pip install 'embeddable-db[postgres]'"
        ) from exc
