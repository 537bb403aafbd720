"""``verify_index()`` and ``rebuild_index()`` for the PostgreSQL engine.

There are no files to compare: PostgreSQL keeps the HNSW and GIN indexes in step with the
table in every transaction. What can still be wrong, and is reported:

- an index missing (dropped by hand) or not usable (``pg_index.indisvalid``/``indisready``
  false: an interrupted ``CREATE INDEX CONCURRENTLY`` or ``REINDEX CONCURRENTLY``): searches
  then scan every row, or miss the index;
- rows whose vector's length is not the dimension recorded beside it (written by hand);
- the keyword side: text that is not what the vector was made from (its sha256 is not the
  row's ``text_hash``; text holding NUL, which PostgreSQL cannot store and is kept with each
  NUL as U+FFFD between spaces, cannot be checked so), and, for a store that embeds text, vectors without
  text (filled by the next backfill from the records, without the model);
- vectors of several models (a model switch a backfill has not finished).

``rebuild`` creates what is missing, ``REINDEX``es the store's indexes (dropping the HNSW
indexes of dimensions that no row has any more), and removes text that is not what its vector
was made from, so that the next backfill writes the right text.
"""

from __future__ import annotations

from psycopg import sql

from ...reports import VerifyReport
from ..sqlite.integrity import model_switch_problem
from . import schema
from .schema import MAX_INDEXED_DIM, Names

REPAIR = "run verify_index(repair=True) or rebuild_index() to rebuild it"
FILL = "run backfill_embeddings() to index their text (the model is not called)"
#: A body whose text cannot be hashed back to the original (a NUL was replaced).
_UNCHECKED = "position(chr(65533) in body) > 0"
_HASH = "encode(sha256(convert_to(body, 'UTF8')), 'hex')"


def wanted_indexes(names: Names, dim: int | None) -> list[str]:
    """The indexes a store with vectors of ``dim`` should have."""
    wanted = [names.gin, names.kind_index]
    if dim is not None and dim <= MAX_INDEXED_DIM:
        wanted.append(names.hnsw(dim))
    return wanted


def index_problems(conn, names: Names, dim: int | None) -> list[str]:
    present = schema.indexes(conn, names)
    problems = []
    for name in wanted_indexes(names, dim):
        if name not in present:
            problems.append(f"index {name} of {names.label} is missing, so searches scan "
                            f"every row; {REPAIR}")
        elif not present[name]:
            problems.append(f"index {name} of {names.label} is not valid (an interrupted "
                            f"build), so searches do not use it; {REPAIR}")
    return problems


def verify(conn, names: Names, model: str, dim: int | None, has_text: bool) -> VerifyReport:
    """Everything compared in one snapshot (call inside a transaction)."""
    t = names.t
    count = 0
    if dim is not None:
        (count,) = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE model = %s AND dim = %s").format(t), (model, dim)
        ).fetchone()
    problems = index_problems(conn, names, dim)
    (wrong_dim,) = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE vector_dims(vector) <> dim").format(t)
    ).fetchone()
    if wrong_dim:
        problems.append(f"{wrong_dim} rows of {names.label} hold a vector whose length is not "
                        "the dimension recorded beside it (written by hand?): remove them, or "
                        "run backfill_embeddings() after removing them to embed them again")
    keyword_count, stale, missing = conn.execute(sql.SQL(
        f"SELECT count(body), count(*) FILTER (WHERE body IS NOT NULL AND NOT {_UNCHECKED} "
        f"AND {_HASH} <> text_hash), count(*) FILTER (WHERE body IS NULL) FROM {{}}"
    ).format(t)).fetchone()
    if stale:
        problems.append(f"the keyword index holds other text than {stale} vectors were made "
                        f"from; {REPAIR}, then {FILL}")
    if has_text and missing:
        problems.append(f"{missing} vectors have no keyword row, so keyword search cannot "
                        f"find their records: {FILL}")
    counts = dict(conn.execute(
        sql.SQL("SELECT model, count(*) FROM {} GROUP BY model ORDER BY count(*) DESC").format(t)
    ).fetchall())
    switch = model_switch_problem(counts, model)
    if switch:
        problems.append(switch)
    (indexed,) = conn.execute(
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s AND i.indrelid = to_regclass(%s) AND i.indisvalid",
        (names.hnsw(dim or 0), t.as_string(conn)),
    ).fetchone()
    searchable = count if (indexed or dim is None or dim > MAX_INDEXED_DIM) else 0
    return VerifyReport(
        sqlite_count=count, index_count=searchable, metadata_count=None, file_count=None,
        pending_changes=0, problems=problems, keyword_count=keyword_count,
    )


def rebuild(conn, names: Names, dim: int | None, settings: dict) -> None:
    """Indexes made again (inside a transaction, under ``schema.lock_store``); text that is
    not what its vector was made from removed."""
    present = schema.indexes(conn, names)
    schema.create_fixed_indexes(conn, names)
    dims = {row[0] for row in conn.execute(sql.SQL("SELECT DISTINCT dim FROM {}").format(names.t))}
    for name in present:  # HNSW indexes of dimensions no row has any more
        prefix = f"{names.table}_hnsw_"
        if name.startswith(prefix) and name[len(prefix):].isdigit() and int(name[len(prefix):]) not in dims:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(names.schema, name)))
    for d in dims:
        if d <= MAX_INDEXED_DIM:
            schema.create_hnsw(conn, names, d, settings)
    if dim is not None and dim <= MAX_INDEXED_DIM:
        schema.create_hnsw(conn, names, dim, settings)
    for name in sorted(set(schema.indexes(conn, names)) & set(present)):  # new ones are fresh
        conn.execute(sql.SQL("REINDEX INDEX {}").format(sql.Identifier(names.schema, name)))
    conn.execute(sql.SQL(
        f"UPDATE {{}} SET body = NULL WHERE body IS NOT NULL AND NOT {_UNCHECKED} "
        f"AND {_HASH} <> text_hash"
    ).format(names.t))
