"""Keys and text as the table keeps them, and the stored vectors read back as the rows that
wrote them (``Engine.rows_of`` / ``Engine.key_page``: moving a store between engines).

A migration reads a page of keys, then their rows (vector, text hash, model, version, source
id, kind, keyword text), and gives them to the other engine's ``write`` unchanged: nothing is
encoded again, and each vector keeps the state backfill judges it by. Vectors come back in
binary as float32, exactly as written (pgvector stores float4).
"""

from __future__ import annotations

import numpy as np
from psycopg import sql

from ...rows import VectorRow
from .schema import Names


def stored_text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: the keyword text keeps each one as U+FFFD between
    spaces (a word separator, as NUL is to SQLite's tokenizer; verify knows the mark)."""
    return value if value is None or "\x00" not in value else value.replace("\x00", " \ufffd ")


def key_list(keys: list[str]) -> list[str]:
    """Keys as a text[] parameter; a key with NUL cannot be stored, so it matches nothing."""
    return [key for key in keys if "\x00" not in key]


def keys_by_seq(cur, names: Names, keys: list[str], op: str, seq: int) -> list[str]:
    """Those of ``keys`` whose vectors' ``seq`` is ``op`` (``<=`` or ``>``) ``seq``, in order:
    committed before a backfill began, or written since."""
    return [row[0] for row in cur.execute(sql.SQL(
        "SELECT record_id FROM {} WHERE record_id = ANY(%s) AND seq {} %s::text::xid8 "
        "ORDER BY record_id").format(names.t, sql.SQL(op)), (key_list(keys), str(seq)))]


def key_page(cur, names: Names, after: str, limit: int) -> list[str]:
    """The next ``limit`` keys after ``after``, in the table's ``record_id`` order (its
    primary key's: the database's collation, which need not be SQLite's)."""
    return [row[0] for row in cur.execute(sql.SQL(
        "SELECT record_id FROM {} WHERE record_id > %s ORDER BY record_id LIMIT %s"
    ).format(names.t), (after, limit))]


def rows_of(cur, names: Names, keys: list[str]) -> dict[str, VectorRow]:
    """key -> the row of its vector, for those of ``keys`` that have one (``text`` None: no
    keyword text, as a ``vector()``-only store writes them)."""
    rows = cur.execute(sql.SQL(
        "SELECT record_id, kind, source_id, vector, text_hash, model, embedding_version, body "
        "FROM {} WHERE record_id = ANY(%s)"
    ).format(names.t), (key_list(keys),), binary=True).fetchall()
    return {
        rid: VectorRow(rid, kind, source, np.asarray(vector.to_numpy(), np.float32), digest,
                       model, version, body)
        for rid, kind, source, vector, digest, model, version, body in rows
    }
