"""The keyword index: the text each vector was embedded from, and an FTS5 index over it.

Beside the embeddings table ``T`` (schema version 2, ``schema.py``):

- ``T_text(label INTEGER PRIMARY KEY, text TEXT NOT NULL)``: the text of the live vector with
  that label, as ``embedding_text`` returned it, so its sha256 is the vector's ``text_hash``
  (verify checks that). It is written in the same transaction as the vector and removed with
  it; a row written without text (a ``vector()``-only store) leaves none.
- ``T_fts``: an external-content FTS5 table over ``T_text`` (``content_rowid = label``, the
  default ``unicode61`` tokenizer), written beside ``T_text`` by the same calls.

Why these shapes:

- The text is kept in an ordinary table of ours, so the FTS5 index is derived data like the
  index files: ``rebuild`` makes it again from SQLite, without the model or the records. A
  plain FTS5 table keeps the same text in its own ``_content`` table, so this costs no more
  disk; a contentless one would save the text but could be neither rebuilt nor checked.
- Whether a vector has a keyword row is a join on an integer primary key, cheap enough for
  every state a backfill reads (``EmbeddingStore.states_of``).
- Neither the record id nor the kind is copied: a search joins the embeddings table by label
  (one rowid lookup per match), so a kind change writes no keyword row.
- The index is written by plain statements, not by the triggers of the FTS5 documentation's
  external-content pattern: a trigger (or an INSERT ... SELECT) into FTS5 made a backfill of
  100k short notes ~4 s slower (``_apply``). Only this class writes either table.

No SQL is built from user text: the query is one bound parameter (``match_expression``), and
table names are the store's checked identifiers.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3

from .keyword_query import (
    TermCounts,
    bm25_idf,
    chosen_words,
    match_expression,
    query_terms,
    query_words,
)
from .transaction import atomic

_SHA256 = hashlib.sha256
_CHUNK = 500  # ids per IN (...) list
REPAIR = "run verify_index(repair=True) or rebuild_index() to rebuild it from SQLite"
FILL = "run backfill_embeddings() to index their text (the model is not called)"


class KeywordIndex:
    """The text and FTS5 tables of one embeddings table (see the module docstring).

    ``ready`` is False for a store opened read-only before it was migrated (no keyword
    tables yet); ``empty`` for a read-only store whose embeddings table does not exist."""

    def __init__(self, conn: sqlite3.Connection, table: str) -> None:
        self.conn = conn
        self.table = table
        self.text_table = f"{table}_text"
        self.fts_table = f"{table}_fts"
        self.ready = False
        self.empty = False
        self.term_counts = TermCounts(conn, self.fts_table)

    # -- schema ------------------------------------------------------------------------------
    def create(self) -> None:
        """The text table and the FTS5 table (call inside ``store.write()``)."""
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.text_table} "
            "(label INTEGER PRIMARY KEY, text TEXT NOT NULL)"
        )
        self._create_fts()
        self.ready = True

    def _create_fts(self) -> None:
        self.conn.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {self.fts_table} USING fts5"
            f"(text, content='{self.text_table}', content_rowid='label')"
        )

    # -- writes (inside the store's write(), with the vectors) ----------------------------------
    def write(self, texts: dict[str, str | None]) -> None:
        """The keyword rows of vectors just written: record id -> the text each was made from
        (None: written without text, so an old row would now be stale and goes)."""
        labels = self._labels(list(texts), "")
        old = self._texts(list(labels.values()))
        drop, put = [], []
        for record_id, text in texts.items():
            label = labels[record_id]
            before = old.get(label)
            if before != text:  # an unchanged text (a re-embed by another model) is left alone
                if before is not None:
                    drop.append((label, before))
                if text is not None:
                    put.append((label, text))
        self._apply(drop, put)

    def remove(self, record_ids: list[str]) -> None:
        """Drop the keyword rows of these records' vectors."""
        old = self._texts(list(self._labels(record_ids, "").values()))
        self._apply(list(old.items()), [])

    def fill(self, items: list[tuple[str, str, str]]) -> int:
        """Keyword rows for (record id, text hash, text) whose live vector was made from that
        very text (another writer may have re-embedded it meanwhile) and has none; returns
        how many were written."""
        labels = self._labels([rid for rid, _, _ in items], " AND deleted = 0", hashes=True)
        wanted = {labels[rid][0]: text for rid, digest, text in items
                  if rid in labels and labels[rid][1] == digest}
        have = self._texts(list(wanted))
        put = [(label, text) for label, text in wanted.items() if label not in have]
        self._apply([], put)
        return len(put)

    def _apply(self, drop: list[tuple[int, str]], put: list[tuple[int, str]]) -> None:
        """Delete ``drop`` (label, old text) and insert ``put`` (label, text) in the text table
        and the FTS5 index. No triggers and no INSERT ... SELECT into FTS5: either made FTS5
        write its pending terms to disk per row, 4-5x slower (37 vs 8 us a row, 50k rows)."""
        conn, text, fts = self.conn, self.text_table, self.fts_table
        if drop:  # an external-content index is told the old text of what it drops
            conn.executemany(f"INSERT INTO {fts}({fts}, rowid, text) VALUES ('delete', ?, ?)", drop)
            conn.executemany(f"DELETE FROM {text} WHERE label = ?", [(label,) for label, _ in drop])
        if put:
            conn.executemany(f"INSERT INTO {text}(label, text) VALUES (?, ?)", put)
            conn.executemany(f"INSERT INTO {fts}(rowid, text) VALUES (?, ?)", put)

    def _labels(self, record_ids: list[str], where: str, *, hashes: bool = False) -> dict:
        """record id -> label (with ``hashes``: (label, text hash)) of these records' rows,
        read from the record_id index (no vector is read without ``hashes``)."""
        found: dict = {}
        columns = "record_id, label, text_hash" if hashes else "record_id, label"
        for start in range(0, len(record_ids), _CHUNK):
            chunk = record_ids[start : start + _CHUNK]
            rows = self.conn.execute(
                f"SELECT {columns} FROM {self.table} "
                f"WHERE record_id IN ({','.join('?' * len(chunk))}){where}",
                chunk,
            )
            found.update((row[0], row[1:] if hashes else row[1]) for row in rows)
        return found

    def _texts(self, labels: list[int]) -> dict[int, str]:
        """label -> text of those of ``labels`` that have a keyword row."""
        found: dict[int, str] = {}
        for start in range(0, len(labels), _CHUNK):
            chunk = labels[start : start + _CHUNK]
            found.update(self.conn.execute(
                f"SELECT label, text FROM {self.text_table} "
                f"WHERE label IN ({','.join('?' * len(chunk))})",
                chunk,
            ))
        return found

    # -- reads -------------------------------------------------------------------------------
    def state_sql(self) -> tuple[str, str]:
        """(the column saying whether a vector of ``e`` has a keyword row, the join it needs)."""
        if not self.ready:
            return "0", ""
        return "k.label IS NOT NULL", f"LEFT JOIN {self.text_table} k ON k.label = e.label"

    def search(
        self, text: str, top_k: int, kind: str | None, ids: list[str] | None = None,
        documents: int = 0, fill: int | None = None,
    ) -> list[tuple[str, float]]:
        """``(record_id, score)`` best first; score = -bm25, so higher is better.

        FTS5 scores every match either way (bm25 needs each one's length). Without a filter
        the best ``top_k`` are chosen in the FTS5 table alone and only they are joined to
        their record ids: half the time of joining every match (a word in all of 100k notes:
        0.16 vs 0.31 s). With ``kind`` every match is joined, so that ``top_k`` are found;
        with ``ids`` (bound as one JSON array) only those records' labels are matched.
        Common words are left out of the match (``keyword_query.chosen_words``; ``documents``:
        about how many records the index holds; ``fill``: how many matches are needed before
        commoner words may be left out, default ``top_k``)."""
        if self.empty:
            return []
        needed = top_k if fill is None else fill
        words = chosen_words(query_words(text), self.term_counts, documents, needed)
        query = match_expression(words)
        if query is None:
            return []
        fts, table = self.fts_table, self.table
        if kind is None and ids is None:
            sql = (
                f"SELECT e.record_id, f.score FROM (SELECT rowid, bm25({fts}) AS score "
                f"FROM {fts} WHERE {fts} MATCH ? ORDER BY score, rowid LIMIT ?) f "
                f"JOIN {table} e ON e.label = f.rowid WHERE e.deleted = 0 ORDER BY f.score, f.rowid"
            )
            return [(rid, -score) for rid, score in self.conn.execute(sql, (query, top_k))]
        where, args = [f"{fts} MATCH ?", "e.deleted = 0"], [query]
        if kind is not None:
            where.append("e.kind = ?")
            args.append(kind)
        if ids is not None:
            # On e, not on FTS5's rowid: FTS5 runs its whole query again for each rowid of
            # an IN list (a 1,000-id filter took 370 ms at 100k, against ~5 ms this way).
            where.append("e.record_id IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(ids))
        sql = (
            f"SELECT e.record_id, bm25({fts}) AS score FROM {fts} "
            f"JOIN {table} e ON e.label = {fts}.rowid WHERE {' AND '.join(where)} "
            "ORDER BY score, e.label LIMIT ?"
        )
        rows = self.conn.execute(sql, (*args, top_k))
        return [(record_id, -score) for record_id, score in rows]

    def coverage(self, text: str, best_score: float, documents: int) -> float:
        """How much of the query's information its best match holds, 0..1: the match's bm25
        score over that of a record holding each query term once at average length (the sum
        of the terms' IDF). Rare words weigh most; a word in most rows weighs ~0, a word in
        none the most (the best match cannot hold it)."""
        terms = query_terms(text)
        if not terms or best_score <= 0 or documents <= 0:
            return 0.0
        counts = self.term_counts.counts(terms, documents)
        return min(1.0, best_score / sum(bm25_idf(documents, count) for count in counts))

    def texts_of(self, record_ids: list[str]) -> dict[str, str]:
        """record id -> the text its live vector was made from, for those that have one."""
        if self.empty or not self.ready or not record_ids:
            return {}
        return dict(self.conn.execute(
            f"SELECT e.record_id, k.text FROM {self.table} e JOIN {self.text_table} k "
            "ON k.label = e.label WHERE e.record_id IN (SELECT value FROM json_each(?)) "
            "AND e.deleted = 0",
            (json.dumps(record_ids),),
        ))

    def count(self) -> int:
        return self.conn.execute(f"SELECT COUNT(*) FROM {self.text_table}").fetchone()[0]

    # -- verify and rebuild ---------------------------------------------------------------------
    def problems(self, has_text: bool) -> tuple[int | None, list[str]]:
        """(keyword rows, how they disagree with the vectors): rows of vectors that are gone,
        rows whose text is not what their vector was made from (by its hash), and, for a store
        that embeds text (``has_text``), live vectors without a row. Read in one snapshot."""
        if self.empty or not self.ready:
            return None, []
        count = orphans = stale = 0
        for text, text_hash, live in self.conn.execute(
            f"SELECT k.text, e.text_hash, e.deleted = 0 FROM {self.text_table} k "
            f"LEFT JOIN {self.table} e ON e.label = k.label"
        ):
            count += 1
            if not live:
                orphans += 1
            elif _SHA256(text.encode("utf-8", "surrogatepass")).hexdigest() != text_hash:
                stale += 1
        problems = []
        if orphans:
            problems.append(f"the keyword index holds the text of {orphans} vectors that are "
                            f"gone, so keyword search could answer with them; {REPAIR}")
        if stale:
            problems.append(f"the keyword index holds other text than {stale} vectors were "
                            f"made from; {REPAIR}, then {FILL}")
        if has_text:
            (missing,) = self.conn.execute(
                f"SELECT COUNT(*) FROM {self.table} e WHERE e.deleted = 0 AND NOT EXISTS "
                f"(SELECT 1 FROM {self.text_table} k WHERE k.label = e.label)"
            ).fetchone()
            if missing:
                problems.append(f"{missing} vectors have no keyword row, so keyword search "
                                f"cannot find their records: {FILL}")
        return count, problems

    def check_index(self) -> str | None:
        """A problem when the FTS5 index does not match the text table (FTS5's own
        ``integrity-check``). It is an INSERT, so only a writable store runs it, in a write
        transaction of its own: it reads the whole index and writes nothing."""
        fts = self.fts_table
        try:
            with atomic(self.conn):
                self.conn.execute(f"INSERT INTO {fts}({fts}, rank) VALUES ('integrity-check', 1)")
        except sqlite3.OperationalError:
            raise  # locked, busy, I/O: not a finding about the index
        except sqlite3.DatabaseError as exc:
            return f"the keyword index {fts} does not match the text it indexes ({exc}); {REPAIR}"
        return None

    def rebuild(self) -> None:
        """Drop the rows of vectors that are gone or were made from other text, then make the
        FTS5 index again from the text table (call inside ``store.write()``). The FTS5 table
        is dropped and created rather than told to ``rebuild`` after the deletes: telling a
        damaged index to delete a row could fail, or damage it further."""
        conn, text = self.conn, self.text_table
        self.term_counts.clear()
        conn.execute(f"DROP TABLE IF EXISTS {self.fts_table}")
        conn.execute(
            f"DELETE FROM {text} WHERE label NOT IN "
            f"(SELECT label FROM {self.table} WHERE deleted = 0)"
        )
        stale = [
            (label,)
            for label, body, text_hash in conn.execute(
                f"SELECT k.label, k.text, e.text_hash FROM {text} k "
                f"JOIN {self.table} e ON e.label = k.label"
            )
            if _SHA256(body.encode("utf-8", "surrogatepass")).hexdigest() != text_hash
        ]
        conn.executemany(f"DELETE FROM {text} WHERE label = ?", stale)
        self._create_fts()
        conn.execute(f"INSERT INTO {self.fts_table}({self.fts_table}) VALUES ('rebuild')")
