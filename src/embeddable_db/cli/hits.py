"""What ``search`` needs beyond the databases: ``--where`` checked against each database's
records, hits merged across databases, and their table and JSON forms."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

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


def databases_with(names: list[str], fields: set[str], kind: str | None, where: str) -> list[str]:
    """Those of the databases having a table (of ``kind``) whose records have every field."""
    def tables(name: str):
        return [t for t in REGISTRY[name].tables if kind is None or t.kind == kind]

    keep = [n for n in names if any(fields <= set(filter_columns(t)) for t in tables(n))]
    if not keep:
        valid = sorted({f for n in names for t in tables(n) for f in filter_columns(t)})
        raise UsageError(
            f"{where} no database has records with field(s) {', '.join(sorted(fields))}; "
            f"fields you can filter on: {', '.join(valid)}"
        )
    return keep


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
        "record": dataclasses.asdict(hit.record),
    }
