"""Loading many vectors into a PostgreSQL store that has none: its HNSW index built once, after.

pgvector keeps an HNSW index current on every insert, which costs far more than building it
from the rows once they are in: 10,000 vectors of 384 dimensions took 16.6 s with the index
in place and 0.1 s + 2.3 s to build it after (pgvector's documentation says the same: create
the index after the initial load). A migration into an empty store is that initial load.

The build itself is fast only when the graph fits in ``maintenance_work_mem`` (100,000
vectors of 384 dimensions: 263 s with the default 64 MB, 41 s with 512 MB), so its one
transaction raises that setting (``SET LOCAL``: that transaction only, never lowered) to what
the rows need, at most ``MAX_BUILD_MEMORY_KB`` (1 GiB).

Inside ``index_built_after(engine)`` a write does not create a missing HNSW index (one that
exists is kept current as always, so loading into a store that already has one changes
nothing); at the end it is created for the store's dimension. Searches meanwhile are exact
scans, correct but slower. If the block fails, the index is left missing: the next writable
open of the store creates it (``PostgresEngine._open``: derived data is made again when
missing), and ``verify_index()`` says so until then.

A backfill into a store with no vectors yet (``load_into_empty``, the engine's
``bulk_load()``) is the same initial load: at 100,000 texts its writes cost 1.2 ms a record
with the index in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from psycopg import sql

from .engine import PostgresEngine
from .schema import MAX_INDEXED_DIM

MAX_BUILD_MEMORY_KB = 1024 * 1024
#: Bytes of the HNSW graph per vector beyond its floats (neighbour lists at m = 16, headers).
GRAPH_BYTES_PER_ROW = 400


@contextmanager
def index_built_after(engine: Any) -> Iterator[None]:
    """See the module docstring; for any other engine (SQLite's bulk writes defer their index
    build already) it does nothing."""
    if not isinstance(engine, PostgresEngine):
        yield
        return
    with engine.lock:
        engine.defer_index = True
    try:
        yield  # without the lock: other threads search (exactly) while a backfill encodes
    finally:
        with engine.lock:
            engine.defer_index = False
    with engine.lock, engine.conn.transaction():
        dim = engine._refresh()
        if dim is not None and dim <= MAX_INDEXED_DIM:
            _build_memory(engine, dim)
            engine._ensure_hnsw(dim)


def load_into_empty(engine: PostgresEngine) -> AbstractContextManager[None]:
    """A backfill's ``bulk_load()``: ``index_built_after`` when the store holds no vectors
    yet (its first backfill is that initial load), else nothing."""
    if engine.read_only:
        return nullcontext()
    with engine.lock, engine.conn.transaction():
        (has_rows,) = engine.cur.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(
            engine.names.t)).fetchone()
    return nullcontext() if has_rows else index_built_after(engine)


def _build_memory(engine: PostgresEngine, dim: int) -> None:
    """``maintenance_work_mem`` for this transaction: enough for the graph of ``dim``'s rows."""
    (rows,) = engine.cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE dim = %s").format(
        engine.names.t), (dim,)).fetchone()
    need = min(rows * (4 * dim + GRAPH_BYTES_PER_ROW) // 1024 + 1, MAX_BUILD_MEMORY_KB)
    (have,) = engine.cur.execute("SELECT setting::bigint FROM pg_settings "
                                 "WHERE name = 'maintenance_work_mem'").fetchone()  # in kB
    if need > have:
        engine.cur.execute("SELECT set_config('maintenance_work_mem', %s, true)", (f"{need}kB",))
