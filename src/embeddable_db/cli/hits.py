"""What ``search`` needs beyond the databases: ``--where`` checked against each database's
records, hits merged across databases, and their table and JSON forms.

Hybrid search over several databases is one fusion, not a merge of each database's own: a
database's fused scores depend on its own keyword weight (how well its best match covers the
query), so the best vector hit of one database could rank below the second keyword hit of
another. Each database gives its vector and keyword rankings (``both_sides``); they are merged
into one ranking per side (by distance, and by bm25 score) and fused once, with the keyword
weight of the best-covering database (``fused_across``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import fusion
from ..databases import REGISTRY
from ..databases.searching import filter_columns
from ..filters import parse_where_option
from .parser import UsageError


def parse_where(options: Sequence[str] | None, where: str) -> dict[str, tuple[str, str]] | None:
    """``--where`` options as a filter dict (repeated options are joined by AND)."""
    if not options:
        return None
    parsed: dict[str, tuple[str, str]] = {}
    for text in options:
        try:
            field, condition = parse_where_option(text)
        except ValueError as exc:
            raise UsageError(f"{where} {exc}") from None
        if field in parsed:
            raise UsageError(f"{where} --where names {field!r} twice: give each field once")
        parsed[field] = condition
    return parsed


def field_sets(name: str, kind: str | None) -> list[set[str]]:
    """The fields each table (of ``kind``) of database ``name`` can be filtered on."""
    return [set(filter_columns(t)) for t in REGISTRY[name].tables if kind in (None, t.kind)]


def databases_with(names: list[str], fields: set[str], sets_of: Callable[[str], list[set[str]]],
                   where: str) -> list[str]:
    """Those of ``names`` having a table whose records have every field (``sets_of(name)``:
    the filterable fields of each of its tables, e.g. ``field_sets``)."""
    keep = [n for n in names if any(fields <= fs for fs in sets_of(n))]
    if not keep:
        valid = sorted({f for n in names for fs in sets_of(n) for f in fs})
        raise UsageError(
            f"{where} no database has records with field(s) {', '.join(sorted(fields))}; "
            f"fields you can filter on: {', '.join(valid)}"
        )
    return keep


#: One database's part of a hybrid search: (name, vector hits, keyword hits, coverage, texts).
Sides = tuple[str, list, list, float, dict]


def both_sides(db: Any, name: str, text: str, vector: Any, top_k: int, *, kind: str | None,
               where: Any) -> Sides:
    """One database's vector and keyword rankings, deep enough for a stable fusion, every hit
    with its distance (keyword-only hits: from their stored vectors) and its text."""
    depth = fusion.candidates(top_k, fusion.RRF_K)
    by_vector = db.search(vector, depth, kind=kind, mode="vector", where=where)
    by_keyword = db.search(text, depth, kind=kind, mode="keyword", where=where)
    seen = {hit.key: hit.distance for hit in by_vector}
    for i, hit in enumerate(by_keyword):
        distance = seen.get(hit.key)
        if distance is None:
            stored = db.get_vector(hit.key)
            distance = None if stored is None else float(1.0 - np.dot(stored, vector))
        by_keyword[i] = dataclasses.replace(hit, distance=distance)
    texts = {hit.key: " ".join(db.embedding_text(hit.record).split())
             for hit in [*by_vector, *by_keyword]}
    # judged by the best match within the filters, as search_hybrid judges it
    coverage = db.keyword_coverage(text, by_keyword[0].score) if by_keyword else 0.0
    return name, by_vector, by_keyword, coverage, texts


def fused_across(sides: list[Sides], top_k: int) -> list[tuple[str, Any, str]]:
    """The databases' rankings fused into one (module docstring), best ``top_k`` first."""
    found: dict[str, tuple[str, Any, str]] = {}
    vector, keyword = [], []
    for name, by_vector, by_keyword, _, texts in sides:
        for side, hits in ((vector, by_vector), (keyword, by_keyword)):
            for hit in hits:
                key = f"{name}\x00{hit.key}"
                found.setdefault(key, (name, hit, texts[hit.key]))
                side.append((key, hit.distance if side is vector else -hit.score))
    vector.sort(key=lambda item: (item[1], item[0]))
    keyword.sort(key=lambda item: (item[1], item[0]))
    coverage = max((c for _, _, _, c, _ in sides), default=0.0)
    weights = (fusion.keyword_weight(1.0, coverage, True), 1.0)
    out = []
    for key, score, vector_rank, keyword_rank in fusion.fuse(vector, keyword, weights,
                                                             fusion.RRF_K)[:top_k]:
        name, hit, text = found[key]
        out.append((name, dataclasses.replace(hit, score=score, vector_rank=vector_rank,
                                              keyword_rank=keyword_rank), text))
    return out


def merged(hits: list[tuple[str, Any, str]], mode: str, top_k: int) -> list[tuple[str, Any, str]]:
    """The best ``top_k`` across databases: by distance in vector mode, else by score (a
    fused score is made of ranks, so it compares across databases; bm25 only roughly)."""
    if mode == "vector":
        hits.sort(key=lambda found: found[1].distance)
    else:
        hits.sort(key=lambda found: -found[1].score)
    return hits[:top_k]


def _number(value: float | None, digits: int = 3) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table_rows(hits: list[tuple[str, Any, str]], mode: str) -> list[Sequence[Any]]:
    lines: list[Sequence[Any]] = [
        ("score", "distance", "vector#", "keyword#", "database", "kind", "id", "text")
    ]
    for name, hit, text in hits:
        lines.append((
            _number(hit.score, 4), _number(hit.distance), hit.vector_rank or "",
            hit.keyword_rank or "", name, hit.kind, hit.record_id,
            text[:60] + ("…" if len(text) > 60 else ""),
        ))
    if mode == "vector":  # no scores: leave the column out
        lines = [line[1:] for line in lines]
    return lines


def hit_json(name: str, hit: Any, mode: str) -> dict[str, Any]:
    distance = hit.distance
    return {
        "database": name,
        "record_id": hit.record_id,
        "kind": hit.kind,
        "mode": mode,
        "distance": None if distance is None or math.isnan(distance) else round(float(distance), 6),
        "score": None if hit.score is None else round(float(hit.score), 6),
        "vector_rank": hit.vector_rank,
        "keyword_rank": hit.keyword_rank,
        "record": hit.record if isinstance(hit.record, dict) else dataclasses.asdict(hit.record),
    }
