"""Vector and keyword search over one PostgreSQL embeddings table.

Vector search (``vector_search``) returns ``(record_id, 1 - cosine)`` best first, the
distance computed by pgvector's ``<=>`` on the stored float32 vector (exact to ~1e-6), so the
numbers are the SQLite engine's. Which rows are found:

- no ``ids``: the HNSW index, with ``hnsw.iterative_scan = relaxed_order``. With a ``kind``
  filter (and always the model filter: a half-switched store holds two models) an index scan
  that stopped at ``ef_search`` candidates would return fewer than ``top_k`` rows once the
  filter drops some; an iterative scan goes on through the graph until ``top_k`` rows pass
  the filter. ``relaxed_order`` rather than ``strict_order``: it keeps searching the graph
  where strict order would drop candidates that come out of order, so its recall is higher,
  and the order it gives up is restored for free -- the hits are sorted again by their exact
  distance in the outer query (pgvector's recommended materialised CTE).
  The scan still stops at ``hnsw.max_scan_tuples`` (20,000): when it returns fewer than
  ``top_k`` rows the query is run again exactly (``ORDER BY vector <=> q``, an expression no
  index matches), so ``top_k`` rows come back whenever that many exist;
- ``ids``: exactly, over those records only (primary-key lookups): the cost follows the
  list, never the store, and every one of them is considered.

``hnsw.ef_search`` is at least ``top_k`` (capped at pgvector's 1,000) and the store's setting
(``index_options={"ef_search": n}``, default ``DEFAULT_EF_SEARCH``). Settings are made with
``set_config(..., true)``, local to the transaction, and put back when the search ran inside
the caller's own transaction.

Keyword search (``keyword_search``): the text's words (the first ``MAX_TERMS`` distinct
ones, control characters dropped) are parsed by ``to_tsvector('simple', ...)`` -- the same
parser and configuration as the stored ``keywords`` column -- and the lexemes joined by OR
into a ``tsquery`` built in SQL from those lexemes, each quoted (``'`` doubled, ``\\``
escaped); the text is one bound parameter and nothing of it is ever query syntax. Ranked by
``ts_rank`` (higher is better; more of the words, and more often, first).
"""

from __future__ import annotations

import math
import re
from typing import Any

from psycopg import sql

from .schema import MAX_INDEXED_DIM, Names, vector_expression

DEFAULT_EF_SEARCH = 100
MAX_EF_SEARCH = 1000
MAX_TERMS = 64
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _scope(kind: str | None, ids: list[str] | None, prefix: str = "") -> tuple[list, list]:
    """The clauses (and their arguments) that keep a search to a kind and to a set of ids."""
    clauses: list[sql.Composable] = []
    args: list[Any] = []
    if kind is not None:
        clauses.append(sql.SQL(f"{prefix}kind = %s"))
        args.append(kind)
    if ids is not None:
        clauses.append(sql.SQL(f"{prefix}record_id = ANY(%s)"))
        args.append(ids)
    return clauses, args


def _filters(model: str, dim: int, kind: str | None, ids: list[str] | None) -> tuple[sql.Composable, list]:
    scoped, scoped_args = _scope(kind, ids)
    clauses = [sql.SQL("dim = {}").format(sql.Literal(int(dim))), sql.SQL("model = %s"), *scoped]
    return sql.SQL(" AND ").join(clauses), [model, *scoped_args]


def vector_search(
    cur, names: Names, vector, dim: int, model: str, top_k: int, kind: str | None,
    ids: list[str] | None, ef_search: int, *, outer: bool,
) -> list[tuple[str, float]]:
    """The hits (see the module docstring); ``outer``: our own transaction, so settings made
    in it end with it."""
    where, args = _filters(model, dim, kind, ids)
    if ids is None and dim <= MAX_INDEXED_DIM:
        hits = _approximate(cur, names, vector, dim, where, args, top_k, ef_search, outer)
        if len(hits) == top_k:
            return hits
    return _exact(cur, names, vector, where, args, top_k)


def _approximate(cur, names, vector, dim, where, args, top_k, ef_search, outer) -> list:
    settings = {
        "hnsw.ef_search": str(min(max(ef_search, top_k), MAX_EF_SEARCH)),
        "hnsw.iterative_scan": "relaxed_order",
    }
    before = _set(cur, settings, keep=not outer)
    try:
        expression = vector_expression(dim)
        query = sql.SQL(
            "WITH hits AS MATERIALIZED (SELECT record_id, {e} <=> %s AS distance FROM {t} "
            "WHERE {where} ORDER BY {e} <=> %s LIMIT %s) "
            "SELECT record_id, distance FROM hits ORDER BY distance, record_id"
        ).format(e=expression, t=names.t, where=where)
        return [(rid, float(d)) for rid, d in cur.execute(query, [vector, *args, vector, top_k])]
    finally:
        if before:
            _set(cur, before, keep=False)


def _exact(cur, names, vector, where, args, top_k) -> list:
    query = sql.SQL(
        "SELECT record_id, vector <=> %s AS distance FROM {t} WHERE {where} "
        "ORDER BY distance, record_id LIMIT %s"
    ).format(t=names.t, where=where)
    return [(rid, float(d)) for rid, d in cur.execute(query, [vector, *args, top_k])]


def _set(cur, settings: dict[str, str], *, keep: bool) -> dict[str, str]:
    """Set transaction-local settings in one round trip; with ``keep``, return the values
    they replace (a setting not known yet -- pgvector not loaded in this session -- is left
    set: it cannot be put back)."""
    names = list(settings)
    before: dict[str, str] = {}
    if keep:
        values = cur.execute(
            sql.SQL("SELECT {}").format(sql.SQL(", ").join(
                sql.SQL("current_setting(%s, true)") for _ in names)), names,
        ).fetchone()
        before = {name: value for name, value in zip(names, values, strict=True) if value}
    cur.execute(
        sql.SQL("SELECT {}").format(sql.SQL(", ").join(
            sql.SQL("set_config(%s, %s, true)") for _ in names)),
        [part for name in names for part in (name, settings[name])],
    )
    return before


def query_words(text: str) -> str | None:
    """The words a keyword query searches, space-joined: the first ``MAX_TERMS`` distinct
    ones (ignoring case), control characters (NUL included) replaced by spaces."""
    words: dict[str, str] = {}
    for word in _CONTROL.sub(" ", text).split():
        words.setdefault(word.casefold(), word)
        if len(words) == MAX_TERMS:
            break
    return " ".join(words.values()) or None


#: The OR of the lexemes of the bound text, each one quoted for the tsquery input syntax
#: (chr(39) is ', chr(92) is \\; spelled so to depend on no string-literal setting).
_QUERY = (
    "SELECT string_agg(chr(39) || replace(replace(lexeme, chr(92), chr(92) || chr(92)), "
    "chr(39), chr(39) || chr(39)) || chr(39), ' | ')::tsquery AS q "
    "FROM unnest(tsvector_to_array(to_tsvector('simple'::regconfig, %s))) AS lexeme"
)


def keyword_search(
    cur, names: Names, text: str, top_k: int, kind: str | None, ids: list[str] | None
) -> list[tuple[str, float]]:
    words = query_words(text)
    if words is None:
        return []
    scoped, scoped_args = _scope(kind, ids, "t.")
    clauses, args = [sql.SQL("t.keywords @@ query.q"), *scoped], [words, *scoped_args]
    statement = sql.SQL(
        "WITH query AS ({q}) SELECT t.record_id, ts_rank(t.keywords, query.q) AS score "
        "FROM {t} t, query WHERE {where} ORDER BY score DESC, t.record_id LIMIT %s"
    ).format(q=sql.SQL(_QUERY), t=names.t, where=sql.SQL(" AND ").join(clauses))
    return [(rid, float(score)) for rid, score in cur.execute(statement, [*args, top_k])]


def keyword_coverage(cur, names: Names, text: str) -> float:
    """0..1: the share of the query's information that its best keyword match holds -- the
    IDF (BM25's, from each lexeme's document count) of the query's lexemes that the best match
    contains, over that of all of them. Rare words weigh most, a word in most rows ~0, a word
    in no row the most (the best match cannot hold it). The best match is found again rather
    than judged by its score: ``ts_rank`` scores have no scale to compare with."""
    best = keyword_search(cur, names, text, 1, None, None)
    if not best:
        return 0.0
    rows = cur.execute(sql.SQL(
        "SELECT lexeme, (SELECT count(*) FROM {t} WHERE keywords @@ (chr(39) || replace(replace("
        "lexeme, chr(92), chr(92) || chr(92)), chr(39), chr(39) || chr(39)) || chr(39))::tsquery), "
        "lexeme = ANY(SELECT unnest(tsvector_to_array(keywords)) FROM {t} WHERE record_id = %s) "
        "FROM unnest(tsvector_to_array(to_tsvector('simple'::regconfig, %s))) AS lexeme"
    ).format(t=names.t), (best[0][0], query_words(text))).fetchall()
    (documents,) = cur.execute(sql.SQL("SELECT count(*) FROM {}").format(names.t)).fetchone()
    weights = [(math.log((documents - df + 0.5) / (df + 0.5) + 1.0), held) for _, df, held in rows]
    total = sum(weight for weight, _ in weights)
    return 0.0 if total <= 0 else min(1.0, sum(w for w, held in weights if held) / total)


def keyword_texts(cur, names: Names, keys: list[str]) -> dict[str, str]:
    """key -> the text its vector was made from, for those that have text."""
    return dict(cur.execute(
        sql.SQL("SELECT record_id, body FROM {} WHERE record_id = ANY(%s) AND body IS NOT NULL")
        .format(names.t), (keys,),
    ).fetchall())
