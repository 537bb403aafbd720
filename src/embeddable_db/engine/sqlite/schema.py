"""The embeddings table's schema, its version number and its migrations.

The version is the ``schema`` key of the meta table:

1. (no key: every store made before the keyword index) the embeddings table and its meta
   table;
2. the keyword index (``keywords.py``): the text of each vector and an FTS5 index over it.

A writable open migrates an older store in one transaction: the keyword tables are created
empty, and the next backfill fills them from the records' text without calling the model
(their vectors are current, so only the text is written). A read-only open migrates nothing:
vector search works as before, and keyword search says to open the store writable once. A
store of a newer version than this library knows is refused, read-only too: this library's
writes would not keep what that version added.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from ...errors import StoreConflictError

if TYPE_CHECKING:
    from .store import EmbeddingStore

SCHEMA_VERSION = 2


def recorded_version(store: EmbeddingStore) -> int:
    """The store's schema version (1 when none is recorded), refused when newer than ours."""
    value = store.meta("schema")
    try:
        version = 1 if value is None else int(value)
    except ValueError:
        version = SCHEMA_VERSION + 1  # not a number we wrote: treat it as unknown
    if version > SCHEMA_VERSION:
        raise StoreConflictError(
            f"table {store.table!r} was written by a newer embeddable_db (schema {value}; this "
            f"version knows {SCHEMA_VERSION}): upgrade embeddable_db to open it"
        )
    return version


def create(store: EmbeddingStore, created_at: str) -> None:
    """Every table of a new store, at the current version (call inside ``store.write()``)."""
    conn, table = store.conn, store.table
    conn.execute(
        f"""CREATE TABLE IF NOT EXISTS {table} (
            label INTEGER PRIMARY KEY,
            record_id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            source_id TEXT NOT NULL DEFAULT '',
            vector BLOB,
            dim INTEGER,
            model TEXT,
            text_hash TEXT,
            embedding_version INTEGER,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            seq INTEGER NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0
        )"""
    )
    conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_seq ON {table}(seq)")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {store.meta_table} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
    )
    meta = [
        ("store_id", uuid.uuid4().hex), ("seq", "0"), ("created_at", created_at),
        ("schema", str(SCHEMA_VERSION)),
    ]
    if store.owner is not None:
        meta.append(("owner", store.owner))
    conn.executemany(f"INSERT OR IGNORE INTO {store.meta_table}(key, value) VALUES (?, ?)", meta)
    recorded_version(store)  # another process may have made it first, at a newer version
    store.keywords.create()


def upgrade(store: EmbeddingStore) -> None:
    """Migrate an existing store to the current version (a writable open)."""
    if recorded_version(store) == SCHEMA_VERSION:
        store.keywords.ready = True
        return
    with store.write():
        version = recorded_version(store)  # another process may have migrated it meanwhile
        if version < 2:
            store.keywords.create()
        store.set_meta("schema", str(SCHEMA_VERSION))
    store.keywords.ready = True


def opened_read_only(store: EmbeddingStore) -> None:
    """What a read-only open of an existing store may use: the keyword index from version 2."""
    store.keywords.ready = recorded_version(store) >= 2
