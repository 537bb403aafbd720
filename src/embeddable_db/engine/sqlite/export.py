"""The stored vectors read back as the rows that wrote them, for moving a store to another engine.

``Engine.rows_of`` and ``Engine.key_page`` (``engine/__init__.py``): a migration reads a page of
keys, then their rows (vector, text hash, model, version, source id, kind and the keyword text),
and hands them to the other engine's ``write`` unchanged: nothing is encoded again, and a vector
that was current stays current (its state is the same), one that was stale stays stale.

Read-only: nothing here writes, so a read-only store (a migration's source) can serve it.
"""

from __future__ import annotations

import json

from .store import EmbeddingStore, VectorRow, blob_to_vector


def key_page(store: EmbeddingStore, after: str, limit: int) -> list[str]:
    """The next ``limit`` keys after ``after`` in ``record_id`` order (tombstones of removed
    vectors included: ``rows_of`` leaves them out), read from the record_id index alone."""
    return store.keys_not_in((), after, limit)[1]


def rows_of(store: EmbeddingStore, keys: list[str]) -> dict[str, VectorRow]:
    """key -> the row of its live vector, for those of ``keys`` that have one; ``text`` is the
    keyword index's text (None for a vector without a keyword row, or a store not migrated to
    the keyword index yet)."""
    if not keys or store.keywords.empty:
        return {}
    keywords = store.keywords
    text, join = ("k.text", f"LEFT JOIN {keywords.text_table} k ON k.label = e.label") \
        if keywords.ready else ("NULL", "")
    rows = store.conn.execute(
        f"SELECT e.record_id, e.kind, e.source_id, e.vector, e.text_hash, e.model, "
        f"e.embedding_version, {text} FROM {store.table} e {join} "
        "WHERE e.record_id IN (SELECT value FROM json_each(?)) AND e.deleted = 0 "
        "AND e.vector IS NOT NULL",
        (json.dumps(keys),),
    ).fetchall()
    return {
        rid: VectorRow(rid, kind, source or "", blob_to_vector(blob), digest or "", model or "",
                       int(version or 0), body)
        for rid, kind, source, blob, digest, model, version, body in rows
    }
