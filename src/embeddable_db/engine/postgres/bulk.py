"""Loading many vectors into a PostgreSQL store that has none: its HNSW index built once, after.

pgvector keeps an HNSW index current on every insert, which costs far more than building it
from the rows once they are in: 10,000 vectors of 384 dimensions took 16.6 s with the index
in place and 0.1 s + 2.3 s to build it after (pgvector's documentation says the same: create
the index after the initial load). A migration into an empty store is that initial load.

Inside ``index_built_after(engine)`` a write does not create a missing HNSW index (one that
exists is kept current as always, so loading into a store that already has one changes
nothing); at the end it is created for the store's dimension. Searches meanwhile are exact
scans, correct but slower. If the block fails, the index is left missing: the next writable
open of the store creates it (``PostgresEngine._open``: derived data is made again when
missing), and ``verify_index()`` says so until then.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .engine import PostgresEngine


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
            yield
        finally:
            engine.defer_index = False
        with engine.conn.transaction():
            dim = engine._refresh()
            if dim is not None:
                engine._ensure_hnsw(dim)
