"""The labelled queries: loading, the checks they must pass, and their word overlap with answers.

Overlap is why the two kinds exist: a paraphrase should share few words with its answer (only
meaning can find it), a literal query names a word the answer contains (a keyword index can).
The overlap of a query is the share of its content words (lower-cased, stop words dropped, a
plural ``s`` ignored) found in the text of its answer, at best over its answers.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

QUERIES = Path(__file__).resolve().parent / "queries.jsonl"
KINDS = ("paraphrase", "literal")
_WORD = re.compile(r"[^\W_]+")  # letters and digits: the same split as FTS5's unicode61 tokenizer
STOP_WORDS = frozenset(
    """a an and are as at be but by can do does for from get has have how i if in into is it its
    like me my of on once one or out so some such than that the their them then there these this
    to up what when where which while who will with without you your""".split()
)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def content_words(text: str) -> set[str]:
    return {w.removesuffix("s") if len(w) > 3 else w for w in words(text) if w not in STOP_WORDS}


def load_queries(path: Path = QUERIES) -> list[dict]:
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def check_queries(queries: list[dict], corpus_ids: set[str]) -> None:
    """Raise ValueError unless every query is well formed and every answer is in the corpus."""
    problems = []
    seen = set()
    for n, q in enumerate(queries, 1):
        if set(q) != {"query", "kind", "answers"} or q["kind"] not in KINDS:
            problems.append(f"line {n}: needs query, kind in {KINDS}, answers")
            continue
        if not q["answers"] or not q["query"].strip():
            problems.append(f"line {n}: empty query or no answers")
        if q["query"] in seen:
            problems.append(f"line {n}: duplicate query {q['query']!r}")
        seen.add(q["query"])
        problems += [f"line {n}: answer {a!r} is not in the corpus" for a in q["answers"]
                     if a not in corpus_ids]
    if problems:
        raise ValueError("bad queries:\n  " + "\n  ".join(problems))


def overlap(query: str, answer_text: str) -> float:
    """Share of the query's content words that occur in the answer's text."""
    mine = content_words(query)
    return len(mine & content_words(answer_text)) / len(mine) if mine else 0.0


def overlap_report(queries: list[dict], texts: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per kind: mean and median best overlap, share with none, share with half or more."""
    report = {}
    for kind in KINDS:
        best = [max(overlap(q["query"], texts[a]) for a in q["answers"])
                for q in queries if q["kind"] == kind]
        if best:
            report[kind] = {
                "queries": len(best), "mean": statistics.fmean(best), "median": statistics.median(best),
                "none": sum(b == 0 for b in best) / len(best),
                "half_or_more": sum(b >= 0.5 for b in best) / len(best),
            }
    return report
