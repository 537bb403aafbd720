"""The PostgreSQL engine's tables and indexes: names, creation, identity and owner.

In the connection's schema (``current_schema()``), for an ``embedding_table`` ``T``:

- ``T``: one row per record with a vector: ``record_id`` (primary key), ``kind``,
  ``source_id``, ``vector`` (pgvector), ``dim``, ``model``, ``text_hash``,
  ``embedding_version``, ``body`` (the text the vector was made from: the keyword index's
  source, NULL for a ``vector()``-only store), ``keywords`` (a generated ``tsvector`` of
  ``body``), ``created_at``/``updated_at`` and ``seq`` (the id of the transaction that last
  wrote the row, ``pg_current_xact_id()``: see ``PostgresEngine.last_seq``);
- ``T_meta(key, value)``: store id, schema version, owner class, and the (model, dim) of the
  last vectors written, as the SQLite engine keeps them;
- indexes: ``T_hnsw_<dim>`` (HNSW, ``vector_cosine_ops``), ``T_keywords`` (GIN on the
  tsvector) and ``T_kind``.

Why the vector column has no fixed dimension and the HNSW index is on
``(vector::vector(<dim>)) WHERE dim = <dim>``: a store switched to a model of another dimension
(``allow_model_change``) holds both dimensions until its backfill has re-embedded every
record, and a ``vector(<dim>)`` column could hold only one. The expression index is pgvector's
documented way to index one dimension of an untyped column; searches use the same expression
and predicate (the dimension as a literal, an int we hold, so the planner can match the
partial index even in a generic plan). pgvector's HNSW indexes up to 2,000 dimensions; above
that a store is searched exactly, and ``vector`` holds at most 16,000.

Identifiers are checked (``check_table``) and quoted by ``psycopg.sql``; values are bound.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from psycopg import sql

from ...errors import BackendUnavailableError, EmbeddingError, InvalidInputError, StoreConflictError
from ...options import PGVECTOR, StoreOptions

SCHEMA_VERSION = 1
#: pgvector's limits for the ``vector`` type and its HNSW index.
MAX_DIM = 16_000
MAX_INDEXED_DIM = 2_000
MIN_PGVECTOR = (0, 8, 0)  # iterative index scans
#: 48 characters leave room for the longest index name, ``<table>_hnsw_16000`` (63 at most).
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")


def check_table(table: str) -> str:
    if not isinstance(table, str) or not _IDENTIFIER.match(table):
        raise InvalidInputError(
            f"embedding table name {table!r} is not a plain SQL identifier of at most 48 "
            "characters (letters, digits, _; not starting with a digit)"
        )
    return table


@dataclass(frozen=True)
class Names:
    """The quoted names of one store's tables and indexes in one schema."""

    schema: str
    table: str

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def t(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def meta(self) -> sql.Identifier:
        return sql.Identifier(self.schema, f"{self.table}_meta")

    def hnsw(self, dim: int) -> str:
        return f"{self.table}_hnsw_{int(dim)}"

    @property
    def gin(self) -> str:
        return f"{self.table}_keywords"

    @property
    def kind_index(self) -> str:
        return f"{self.table}_kind"


def vector_expression(dim: int) -> sql.Composable:
    """``(vector::vector(<dim>))``: what the HNSW index of ``dim`` indexes."""
    return sql.SQL("(vector::vector({}))").format(sql.Literal(int(dim)))


def current_schema(conn, who: str) -> str:
    (schema,) = conn.execute("SELECT current_schema()").fetchone()
    if schema is None:
        raise EmbeddingError(
            f"{who}: the connection's search_path names no schema that exists: create the "
            "schema, or connect with options='-c search_path=<schema>,public'"
        )
    return schema


def check_pgvector(conn, *, create: bool) -> bool:
    """True when the ``vector`` type is usable here; with ``create``, install the extension
    when it is missing (a clear error when that is not allowed). Refuses pgvector < 0.8."""
    row = conn.execute(
        "SELECT e.extversion, n.nspname FROM pg_extension e "
        "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
    ).fetchone()
    if row is None:
        if not create:
            return False
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except Exception as exc:  # noqa: BLE001 - whatever the server said, say what to do
            raise BackendUnavailableError(
                f"the pgvector extension is not installed in this database and could not be "
                f"created ({exc}): run CREATE EXTENSION vector as a user allowed to "
                "(pgvector 0.8 or newer must be installed on the server)"
            ) from exc
        return check_pgvector(conn, create=False)
    version, schema = row
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    if numbers < MIN_PGVECTOR:
        raise BackendUnavailableError(
            f"pgvector {version} is installed; embeddable_db needs 0.8.0 or newer (iterative "
            "index scans, so that filtered searches still return top_k): ALTER EXTENSION "
            "vector UPDATE"
        )
    if conn.execute("SELECT to_regtype('vector')").fetchone()[0] is None:
        raise EmbeddingError(
            f"the pgvector extension is in schema {schema!r}, which is not on the connection's "
            f"search_path: add it (options='-c search_path=<schema>,{schema}')"
        )
    return True


def table_exists(conn, names: Names) -> bool:
    return conn.execute("SELECT to_regclass(%s)", (names.t.as_string(conn),)).fetchone()[0] is not None


def lock_store(conn, names: Names) -> None:
    """Serialise the creation of this store's tables and indexes across sessions (until the
    transaction ends): two processes opening a new store at once create them once."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (names.label,))


def create(conn, names: Names, owner: str | None) -> None:
    """The tables and the dimension-free indexes (inside a transaction, under ``lock_store``)."""
    conn.execute(sql.SQL(
        """CREATE TABLE IF NOT EXISTS {t} (
            record_id text PRIMARY KEY,
            kind text NOT NULL,
            source_id text NOT NULL DEFAULT '',
            vector vector NOT NULL,
            dim integer NOT NULL,
            model text NOT NULL,
            text_hash text NOT NULL,
            embedding_version integer NOT NULL,
            body text,
            keywords tsvector GENERATED ALWAYS AS
                (to_tsvector('simple'::regconfig, coalesce(body, ''))) STORED,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            seq xid8 NOT NULL DEFAULT pg_current_xact_id()
        )"""
    ).format(t=names.t))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, value text NOT NULL)"
    ).format(names.meta))
    meta = [("store_id", uuid.uuid4().hex), ("schema", str(SCHEMA_VERSION))]
    if owner is not None:
        meta.append(("owner", owner))
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {} (key, value) VALUES (%s, %s) ON CONFLICT DO NOTHING").format(
                names.meta
            ),
            meta,
        )
    conn.execute(sql.SQL("INSERT INTO {} (key, value) VALUES ('created_at', now()::text) "
                         "ON CONFLICT DO NOTHING").format(names.meta))
    create_fixed_indexes(conn, names)


def create_fixed_indexes(conn, names: Names) -> None:
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gin (keywords)").format(
        sql.Identifier(names.gin), names.t))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (kind)").format(
        sql.Identifier(names.kind_index), names.t))


def create_hnsw(conn, names: Names, dim: int, settings: dict) -> None:
    """The HNSW index of vectors of ``dim`` (call under ``lock_store``)."""
    conn.execute(sql.SQL(
        "CREATE INDEX IF NOT EXISTS {name} ON {t} USING hnsw ({expr} vector_cosine_ops) "
        "WITH (m = {m}, ef_construction = {ef}) WHERE dim = {dim}"
    ).format(
        name=sql.Identifier(names.hnsw(dim)), t=names.t, expr=vector_expression(dim),
        m=sql.Literal(int(settings.get("m", 16))),
        ef=sql.Literal(int(settings.get("ef_construction", 64))), dim=sql.Literal(int(dim)),
    ))


def upsert(cur, names: Names, rows, size: int, text_of) -> None:
    """Insert or replace vectors (``VectorRow``s of ``size`` dimensions) and their text
    (``text_of(row.text)``); a replaced row takes the writing transaction's id as ``seq``."""
    cur.executemany(sql.SQL(
        "INSERT INTO {} (record_id, kind, source_id, vector, dim, model, text_hash, "
        "embedding_version, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (record_id) DO UPDATE SET kind = excluded.kind, "
        "source_id = excluded.source_id, vector = excluded.vector, dim = excluded.dim, "
        "model = excluded.model, text_hash = excluded.text_hash, "
        "embedding_version = excluded.embedding_version, body = excluded.body, "
        "updated_at = now(), seq = pg_current_xact_id()"
    ).format(names.t), [
        (r.record_id, r.kind, r.source_id, r.vector, size, r.model, r.text_hash,
         r.embedding_version, text_of(r.text))
        for r in rows
    ])


def hnsw_name_exists(conn, names: Names, dim: int) -> bool:
    name = sql.Identifier(names.schema, names.hnsw(dim)).as_string(conn)
    return conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is not None


def indexes(conn, names: Names) -> dict[str, bool]:
    """This table's indexes: name -> usable (valid and ready)."""
    return dict(conn.execute(
        "SELECT c.relname, i.indisvalid AND i.indisready FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass(%s)",
        (names.t.as_string(conn),),
    ).fetchall())


def meta(conn, names: Names) -> dict[str, str]:
    return dict(conn.execute(sql.SQL("SELECT key, value FROM {}").format(names.meta)).fetchall())


def set_meta(conn, names: Names, values: dict[str, str]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {} (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value").format(names.meta),
            list(values.items()),
        )


def check_meta(recorded: dict[str, str], names: Names, owner: str | None) -> None:
    """Refuse a table of a newer layout, or one that another store class owns."""
    version = recorded.get("schema", "")
    if not version.isdigit() or int(version) > SCHEMA_VERSION:
        raise StoreConflictError(
            f"table {names.label} was written by a newer embeddable_db (schema {version!r}; "
            f"this version knows {SCHEMA_VERSION}): upgrade embeddable_db to open it"
        )
    holder = recorded.get("owner")
    if holder is None or owner is None or holder == owner:
        return
    suggested = re.sub(r"\W+", "_", owner.rsplit(".", 1)[-1]).strip("_").lower()
    raise StoreConflictError(
        f"table {names.label} holds the vectors of {holder}, not {owner}: give {owner} its "
        f"own embedding_table (a class attribute, e.g. embedding_table = "
        f"{(suggested or 'other')[:36] + '_embeddings'!r}), or, if {owner} is {holder} "
        f"renamed, set embedding_owner = {holder!r} on it"
    )


def identity(recorded: dict[str, str]) -> tuple[str | None, int | None]:
    dim = recorded.get("dim")
    return recorded.get("model"), (int(dim) if dim is not None else None)


def store_options(options: StoreOptions) -> StoreOptions:
    """The options for a PostgreSQL store: no index files, backend ``pgvector``."""
    given = [name for name in ("index_path", "metadata_path") if getattr(options, name)]
    if given:
        raise InvalidInputError(
            f"{' and '.join(given)} name index files, which a PostgreSQL store does not "
            "have (its index is in the database): leave them out"
        )
    if options.backend != PGVECTOR:
        if options.backend_chosen:
            raise InvalidInputError(
                f"backend {options.backend!r} is for SQLite databases: a PostgreSQL "
                f"connection uses backend={PGVECTOR!r} (the default there)"
            )
        options = options.with_backend(PGVECTOR)
    return options
