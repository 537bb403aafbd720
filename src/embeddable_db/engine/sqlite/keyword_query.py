"""A keyword query from any user text: its words, FTS5 terms, IDF, and which words to match.

Every word becomes one quoted FTS5 string, so no character is ever FTS5 syntax: ``AND``,
``-``, ``*``, ``:``, parentheses and quotes are searched as text (a quote doubled inside the
string). FTS5's tokenizer then splits each string exactly as it split the stored text:
``C++`` finds ``c``, ``foo-bar`` finds the two tokens side by side, emoji are tokens, a word of
punctuation only matches nothing. The words are joined by OR and ranked by bm25: a record with
more of the words, and rarer ones, ranks first, so the top hits are those AND would give; but
a query with one word a record lacks (a typo, "how to", a synonym) still finds it, where AND
returns nothing for most sentences a person types. Repeats (ignoring case) are searched once,
and only the first ``MAX_TERMS`` words.

**Common words are left out of the match** (``chosen_words``). FTS5 scores every record that
matches any word (bm25 needs each one's length): at 100k records a sentence with "the" and
"of" in it matched 60,000 records and took 200 ms, for words whose IDF is near 0 (bm25 floors
it at 1e-6 for a word in half the records). So the words are taken rarest first while the
records they can match stay within ``MATCH_BUDGET``; a commoner word is added only while the
rarer ones cannot fill top_k. Records that hold only common words are then not found — they
would have ranked last — and the rare words rank the rest as before; ``bench_hybrid.py``
measures the latency and how often the top 10 differ from the full match.
"""

from __future__ import annotations

import math
import re
import sqlite3
import unicodedata

#: At most this many words of a query are searched; each is one FTS5 phrase lookup.
MAX_TERMS = 64
#: The records the chosen words may match together (FTS5 scores ~1.3 us a matched record).
MATCH_BUDGET = 2_000
# NUL ends FTS5's reading of the query ("unterminated string"); the other control
# characters are separators to the tokenizer anyway.
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def query_words(text: str) -> list[str]:
    """The query's distinct words (ignoring case), the first ``MAX_TERMS`` only."""
    words: dict[str, str] = {}
    for word in _CONTROL.sub(" ", text).split():
        words.setdefault(word.casefold(), word)
        if len(words) == MAX_TERMS:
            break
    return list(words.values())


def match_expression(words: list[str]) -> str | None:
    """The FTS5 query OR-ing these words, each one quoted string; None when there are none."""
    if not words:
        return None
    return " OR ".join('"' + word.replace('"', '""') + '"' for word in words)


def _token_char(char: str) -> bool:
    """Whether FTS5's unicode61 tokenizer keeps ``char`` in a token: ASCII letters and digits,
    and every other character that is not white space, punctuation or a control."""
    if char < "\x80":
        return char.isalnum()
    return unicodedata.category(char)[0] not in "ZPC"


def word_terms(word: str) -> list[str]:
    """The FTS5 terms of one word (lower case, diacritics removed), as unicode61 splits it."""
    plain = "".join(
        c for c in unicodedata.normalize("NFKD", word.casefold()) if not unicodedata.combining(c)
    )
    terms, token = [], ""
    for char in plain + " ":
        if _token_char(char):
            token += char.lower()
        elif token:
            terms.append(token)
            token = ""
    return terms


def query_terms(text: str) -> list[str]:
    """The distinct FTS5 terms of a query's words."""
    return list(dict.fromkeys(t for word in query_words(text) for t in word_terms(word)))


def bm25_idf(documents: int, containing: int) -> float:
    """FTS5's bm25 IDF of a term in ``containing`` of ``documents`` rows (floored as FTS5 does)."""
    return max(1e-6, math.log((documents - containing + 0.5) / (containing + 0.5)))


class TermCounts:
    """How many records hold each term, from FTS5's own vocabulary, remembered per term.

    FTS5 counts them by walking the term's list of records (~1 ms for a word in 60k records),
    so counts are kept until the index has grown or shrunk by a tenth: a weight and a budget
    need them roughly, not to the record. The ``fts5vocab`` table lives in the connection's
    temp schema: it writes nothing to the database, and read-only connections have one."""

    def __init__(self, conn: sqlite3.Connection, fts_table: str) -> None:
        self.conn = conn
        self.fts_table = fts_table
        self._counts: dict[str, int] = {}
        self._at = 0

    def counts(self, terms: list[str], documents: int) -> list[int]:
        if abs(documents - self._at) > self._at // 10:
            self._counts.clear()
            self._at = documents
        missing = [term for term in terms if term not in self._counts]
        if missing:
            vocab = f"temp.{self.fts_table}_vocab"
            self.conn.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {vocab} "
                f"USING fts5vocab(main, '{self.fts_table}', 'row')"
            )
            for term in missing:  # one lookup each ("term IN (...)" scans the vocabulary)
                row = self.conn.execute(
                    f"SELECT doc FROM {vocab} WHERE term = ?", (term,)
                ).fetchone()
                self._counts[term] = row[0] if row else 0
        return [self._counts[term] for term in terms]

    def clear(self) -> None:
        self._counts.clear()


def chosen_words(words: list[str], counts: TermCounts, documents: int, top_k: int) -> list[str]:
    """The words to match (module docstring): rarest first, within ``MATCH_BUDGET`` records,
    and commoner ones only while fewer than ``top_k`` could be matched."""
    per_word = []
    for word in words:
        terms = word_terms(word)
        # A word's phrase matches no more records than its rarest term; no term: nothing.
        per_word.append((min(counts.counts(terms, documents)) if terms else 0, word))
    chosen, matched = [], 0
    for count, word in sorted(per_word, key=lambda item: item[0]):
        if matched + count <= MATCH_BUDGET or matched < top_k:
            chosen.append(word)
            matched += count
    return chosen
