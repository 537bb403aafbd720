"""The six databases' ``search``: one query in vector, keyword or hybrid mode, with field
filters (``where``) that still return top_k.

``where`` is checked against the record dataclass of each table it applies to (``filters.py``)
and turned into the keys of the matching rows, which the search then looks within (``ids=``):
the filter runs before the nearest-neighbour search, not after it. With ``kind`` it applies to
that table; without, to every table of the database whose records have all the named fields.

The default mode is hybrid for a text query (it won the labelled set's benchmark: nDCG@10 0.595
against 0.501 vector-only and 0.449 keyword-only, ``benchmarks/eval``) and vector for a vector.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError
from ..filters import UnknownFieldError, compile_where
from .records import TableSpec, UnreadableRow

if TYPE_CHECKING:
    from ._base import RecordDB

log = logging.getLogger(__name__)
MODES = ("vector", "keyword", "hybrid")
#: One found vector: (key, distance or None, score or None, vector rank, keyword rank).
Found = tuple[str, "float | None", "float | None", "int | None", "int | None"]


@dataclasses.dataclass(frozen=True, slots=True)
class SearchHit:
    """One search result, the same shape for all six databases.

    ``record_id`` is the row id (what ``get(record_id, kind=kind)`` takes), ``distance`` is
    ``1 - cosine similarity`` (0 = same direction, lower is better; None in keyword mode,
    which does not call the model) and ``record`` the record. ``score``: higher is better
    (keyword mode: -bm25; hybrid: the fused score, or the reranker's), None in vector mode;
    ``vector_rank`` / ``keyword_rank``: the hit's rank on each side (None where that side
    did not find it or did not run).
    """

    record_id: int
    kind: str
    distance: float | None
    record: Any
    score: float | None = None
    vector_rank: int | None = None
    keyword_rank: int | None = None

    @property
    def key(self) -> str:
        """The id of the hit's vector in the embeddings table, e.g. ``"bot:12"``."""
        return f"{self.kind}:{self.record_id}"


def check_mode(mode: Any, query: Any) -> str:
    """The mode to search ``query`` in: the given one, else hybrid for text, vector for a vector."""
    text = isinstance(query, str)
    if mode is None:
        return "hybrid" if text else "vector"
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "vector" and not text:
        raise InvalidInputError(f"a {mode} search needs a text query, not a vector")
    return mode


def filter_columns(spec: TableSpec) -> dict[str, str]:
    """The fields a filter may name -> their quoted column (link-table lists cannot be named)."""
    return {"id": '"id"', **{c.field: f'"{c.name}"' for c in spec.columns}}


def _where_specs(db: RecordDB, where: Mapping[str, Any], kind: str | None) -> list[TableSpec]:
    specs = [db._spec(kind)] if kind is not None else list(db.tables)
    fields = set(where) if isinstance(where, Mapping) else set()
    usable = [s for s in specs if fields <= set(filter_columns(s))]
    if usable or not isinstance(where, Mapping):
        return usable or specs[:1]
    spec = specs[0]
    lists = sorted(fields & set(spec.links_by_field))
    if lists:
        raise UnknownFieldError(
            f"{spec.record_type.__name__}.{lists[0]} is a list kept in a link table and cannot "
            f"be filtered on; filter on one of: {', '.join(sorted(filter_columns(spec)))}"
        )
    return specs[:1]  # compile_where names the unknown field and the valid ones


def matching_keys(db: RecordDB, where: Mapping[str, Any] | None, kind: str | None) -> list[str] | None:
    """The vector keys (``"<kind>:<id>"``) of the rows ``where`` keeps; None without a filter."""
    if where is None:
        return None
    keys: list[str] = []
    for spec in _where_specs(db, where, kind):
        sql, params = compile_where(db._dialect.filter_values(where, spec), filter_columns(spec),
                                    spec.record_type.__name__, like=db._dialect.like)
        rows = db._reader().execute(f"SELECT id FROM {spec.table} WHERE {sql}", params)
        keys += [f"{spec.kind}:{row_id}" for (row_id,) in rows]
    return keys


def found(
    db: RecordDB, query: Any, want: int, *, kind: str | None, mode: str, ids: list[str] | None,
    reranker: Any,
) -> list[Found]:
    """The ``want`` best vectors for ``query`` (a vector already, in vector mode)."""
    if mode == "vector":
        return [(key, d, None, rank, None) for rank, (key, d) in
                enumerate(db.search_by_vector(query, want, kind=kind, ids=ids), 1)]
    if mode == "keyword":
        return [(key, None, score, None, rank) for rank, (key, score) in
                enumerate(db.search_by_keyword(query, want, kind=kind, ids=ids), 1)]
    return [(h.record_id, h.distance, h.score, h.vector_rank, h.keyword_rank)
            for h in db.search_hybrid(query, want, kind=kind, ids=ids, reranker=reranker)]


def resolve(db: RecordDB, found: list[Found]) -> list[SearchHit]:
    """The hits whose rows still exist, in ``found``'s order, with their records."""
    parsed = [(db._parse_key(key), rest) for key, *rest in found]
    wanted: dict[str, list[int]] = {}
    for target, _ in parsed:
        if target is not None:
            wanted.setdefault(target[0].kind, []).append(target[1])
    records: dict[tuple[str, int], Any] = {}
    for kind, ids in wanted.items():
        marks = ",".join("?" * len(ids))
        for record in db._by_kind[kind].select(
            db._sql, f"WHERE id IN ({marks})", ids, lenient=True
        ):
            if isinstance(record, UnreadableRow):
                log.warning("search: skipping a row that cannot be read: %s", record.error)
                continue
            records[(kind, record.id)] = record
    hits = []
    for target, (distance, score, vector_rank, keyword_rank) in parsed:
        record = records.get((target[0].kind, target[1])) if target else None
        if record is not None:
            hits.append(SearchHit(target[1], target[0].kind, distance, record, score,
                                  vector_rank, keyword_rank))
    return hits
