"""TableStore on real SQLite files written with plain SQL, as another application would."""

from __future__ import annotations

import re
import sqlite3

import pytest

from conftest import CountingEncoder, file_bytes, sqlite_dump
from embeddable_db import InvalidInputError, ReadOnlyError, TableStore

NOTES = [
    ("WAL mode", "readers keep reading while one writer writes", "wal@x", 1),
    ("Busy timeout", "a locked database waits instead of failing at once", "busy@x", 2),
    ("Vacuum", "rebuilds the file and gives free pages back", "vacuum@x", 3),
    ("Triggers", "run SQL after an insert, update or delete", "trig@x", 4),
]


def make_db(path, rows=NOTES) -> str:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, body TEXT, "
                 "email TEXT UNIQUE, rank INTEGER)")
    conn.executemany("INSERT INTO notes(title, body, email, rank) VALUES (?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    return str(path)


def run_sql(path, sql, args=()):
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(sql, args)
    conn.close()


def user_rows(path, table="notes"):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path):
    return make_db(tmp_path / "app.db")


@pytest.fixture
def opened():
    stores = []

    def open_(*args, **kwargs):
        kwargs.setdefault("encoder", CountingEncoder(32))
        store = TableStore(*args, **kwargs)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()


def test_search_returns_the_rows_themselves(db, opened):
    store = opened(db, "notes", columns=["title", "body"])
    assert store.backfill_embeddings().embedded == 4
    hits = store.search("Busy timeout a locked database waits instead of failing at once", top_k=2)
    assert hits[0]["title"] == "Busy timeout" and hits[0]["email"] == "busy@x"
    assert set(hits[0]) == {"id", "title", "body", "email", "rank", "_distance"}
    assert hits[0]["_distance"] < hits[1]["_distance"]
    words = store.search("free pages", mode="keyword")
    assert [hit["title"] for hit in words] == ["Vacuum"] and words[0]["_score"] > 0
    assert [hit["title"] for hit in store.similar(1, top_k=3)] != []
    assert all(hit["id"] != 1 for hit in store.similar(1, top_k=3))


def test_template_decides_the_text(db, opened):
    store = opened(db, "notes", template="{title}: {body} ({rank})")
    store.backfill_embeddings()
    assert store.embedding_text({"title": "A", "body": "b", "rank": None}) == "A: b ()"
    assert store.search("Vacuum: rebuilds the file and gives free pages back (3)", top_k=1)[0]["id"] == 3


def test_nothing_of_the_users_rows_changes(db, opened):
    before = user_rows(db)
    store = opened(db, "notes", columns=["body"])
    store.backfill_embeddings()
    store.search("writer", top_k=2)
    store.drop()
    assert user_rows(db) == before
    names = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert names == {"notes", "sqlite_autoindex_notes_1"}  # drop left the schema as it was


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"columns": ["title", "bdy"]}, "has no column 'bdy'; its columns are id, title, body, email, rank"),
    ({"template": "{title} {nope}"}, "has no column 'nope'"),
    ({"template": "{title.upper}"}, "no column 'title.upper'"),
    ({"template": "{title!r}"}, "plain column name"),
    ({"template": "no fields"}, "names no column"),
    ({}, "give columns=[...] or template="),
    ({"columns": ["title"], "template": "{title}"}, "exactly one of"),
    ({"columns": "title"}, "non-empty list"),
    ({"columns": ["title"], "key": "rank"}, "key 'rank' is not unique"),
    ({"columns": ["title"], "key": "nope"}, "no column 'nope'"),
    ({"columns": ["title"], "where": "rank > (SELECT 1 FROM other)"}, "not a condition"),
    ({"columns": ["title"], "where": "rank > 1; DROP TABLE notes"}, "not a condition"),
    ({"columns": ["title"], "where": "1) UNION SELECT name FROM sqlite_master WHERE (1"},
     "not a condition"),
    ({"columns": ["title"], "where": "rnk > 1"}, "not a condition"),
    ({"columns": ["title"], "track_changes": "yes"}, "track_changes must be True or False"),
])
def test_bad_arguments_are_refused_and_change_nothing(db, kwargs, message):
    run_sql(db, "CREATE TABLE other (x)")
    before = sqlite_dump(db)
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        TableStore(db, "notes", encoder=CountingEncoder(8), **kwargs)
    assert sqlite_dump(db) == before


def test_unknown_table_lists_the_real_ones(db):
    with pytest.raises(InvalidInputError, match="no table 'note'.* its tables are notes"):
        TableStore(db, "note", columns=["body"], encoder=CountingEncoder(8))
    with pytest.raises(InvalidInputError, match="no database file"):
        TableStore(db + ".missing", "notes", columns=["body"], encoder=CountingEncoder(8))


def test_odd_names_are_quoted_never_sql(tmp_path, opened):
    path = str(tmp_path / "odd.db")
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE "my ""odd"" table; --" ("select" TEXT, "from" TEXT)')
    conn.execute('INSERT INTO "my ""odd"" table; --" VALUES (\'quoted names\', \'x\')')
    conn.commit()
    conn.close()
    store = opened(path, 'MY "ODD" TABLE; --', columns=["SELECT", "from"])
    assert store.backfill_embeddings().embedded == 1
    assert store.search("quoted names x", top_k=1)[0]["select"] == "quoted names"
    run_sql(path, 'UPDATE "my ""odd"" table; --" SET "select" = \'changed\'')
    assert store.backfill_embeddings().reembedded == 1


def test_keys_rowid_composite_and_text(tmp_path, opened):
    path = str(tmp_path / "keys.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE pairs (a TEXT, b TEXT, body TEXT, PRIMARY KEY (a, b))")
    conn.execute("CREATE TABLE words (w TEXT PRIMARY KEY, body TEXT) WITHOUT ROWID")
    conn.execute("CREATE TABLE bare (a TEXT, b TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID")
    conn.executemany("INSERT INTO pairs VALUES (?, ?, ?)", [("x", "1", "one"), ("x", "2", "two")])
    conn.executemany("INSERT INTO words VALUES (?, ?)", [("17", "seventeen"), ("apple", "fruit")])
    conn.commit()
    conn.close()
    pairs = opened(path, "pairs", columns=["body"])
    assert pairs.table_settings["key"] == "rowid"
    pairs.backfill_embeddings()
    assert {hit["b"] for hit in pairs.search("one", top_k=2)} == {"1", "2"}
    words = opened(path, "words", columns=["body"])
    words.backfill_embeddings()
    assert words.search("seventeen", top_k=1)[0]["w"] == "17"  # a text key that looks like a number
    run_sql(path, "UPDATE words SET body = 'a number' WHERE w = '17'")
    assert words.backfill_embeddings().reembedded == 1
    with pytest.raises(InvalidInputError, match="no one-column primary key and no rowid"):
        TableStore(path, "bare", columns=["b"], encoder=CountingEncoder(8))


def test_no_op_backfill_reads_no_row_and_edits_cost_only_their_rows(db, opened):
    encoder = CountingEncoder(32)
    store = opened(db, "notes", columns=["title", "body"], encoder=encoder)
    store.backfill_embeddings()
    assert store.changes_trusted()
    calls = encoder.texts_encoded
    nothing = store.backfill_embeddings()
    assert (nothing.processed, encoder.texts_encoded) == (0, calls)
    assert store.backfill_plan().records == 0  # not even read
    run_sql(db, "UPDATE notes SET rank = 10 WHERE id = 1")  # not an embedded column
    assert store.backfill_plan().records == 0
    run_sql(db, "UPDATE notes SET body = 'edited' WHERE id = 2")
    run_sql(db, "INSERT INTO notes(title, body) VALUES ('New', 'a new note')")
    run_sql(db, "DELETE FROM notes WHERE id = 3")
    result = store.backfill_embeddings()
    assert (result.embedded, result.reembedded, result.removed) == (1, 1, 1)
    assert encoder.texts_encoded == calls + 2
    assert store.backfill_plan(full=True).unchanged == 4  # the full scan agrees


def test_changes_while_the_triggers_were_gone_are_found(db, opened):
    store = opened(db, "notes", columns=["body"])
    store.backfill_embeddings()
    conn = sqlite3.connect(db)
    triggers = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
    assert triggers
    with conn:  # another tool rebuilds the table, as sqlite-utils transform does
        for name in triggers:
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute("UPDATE notes SET body = 'changed behind its back' WHERE id = 4")
    conn.close()
    assert not store.changes_trusted()
    result = store.backfill_embeddings()
    assert result.reembedded == 1 and result.unchanged == 3  # a full hash scan
    assert store.changes_trusted()
    assert len(sqlite3.connect(db).execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()) == len(triggers)


def test_an_edited_trigger_is_not_trusted(db, opened):
    store = opened(db, "notes", columns=["body"])
    store.backfill_embeddings()
    conn = sqlite3.connect(db)
    name, sql = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                             "AND name LIKE '%after_update'").fetchone()
    with conn:
        conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute(sql.replace('"body"', '"rank"'))  # watches another column now
    conn.close()
    assert not store.changes_trusted()


def test_model_version_and_settings_changes_rescan(db, opened):
    store = opened(db, "notes", columns=["body"])
    store.backfill_embeddings()
    store.close()
    newer = opened(db, "notes", columns=["body"], embedding_version=2)
    assert not newer.changes_trusted()
    assert newer.backfill_embeddings().reembedded == 4
    newer.close()
    reused = opened(db, "notes", embedding_version=2)  # the recorded settings
    assert reused.table_settings["columns"] == ["body"] and reused.changes_trusted()
    reused.close()
    other = opened(db, "notes", columns=["title"], embedding_version=2)
    assert other.backfill_embeddings().reembedded == 4


def test_track_changes_false_leaves_the_schema_alone(db, opened):
    store = opened(db, "notes", columns=["body"], track_changes=False)
    store.backfill_embeddings()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0] == 0
    assert not conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '%changes'").fetchall()
    conn.close()
    run_sql(db, "UPDATE notes SET body = 'x' WHERE id = 1")
    assert store.backfill_embeddings().reembedded == 1  # found by the hash scan


def test_store_in_another_file_writes_nothing_into_the_users(tmp_path, db, opened):
    before = file_bytes(db)
    vectors = str(tmp_path / "app.vectors.db")
    store = opened(db, "notes", columns=["body"], store=vectors)
    assert store.backfill_embeddings().embedded == 4
    assert store.search("pages back", top_k=1)[0]["title"] == "Vacuum"
    assert store.index_path.startswith(str(tmp_path / "app.vectors"))
    store.close()
    assert file_bytes(db) == before
    run_sql(db, "UPDATE notes SET body = 'totally different' WHERE id = 3")
    again = opened(db, "notes", store=vectors)
    assert again.backfill_embeddings().reembedded == 1
    again.close()
    reader = opened(db, "notes", store=vectors, read_only=True)
    assert reader.search("totally different", top_k=1)[0]["id"] == 3
    with pytest.raises(ReadOnlyError):
        reader.backfill_embeddings()


def test_where_limits_the_rows_and_follows_them(db, opened):
    store = opened(db, "notes", columns=["body"], where="rank >= 3")
    assert store.backfill_embeddings().embedded == 2
    assert {hit["id"] for hit in store.search("anything", top_k=10)} == {3, 4}
    run_sql(db, "UPDATE notes SET rank = 0 WHERE id = 4")  # leaves the where
    run_sql(db, "UPDATE notes SET rank = 9 WHERE id = 1")  # enters it
    result = store.backfill_embeddings()
    assert (result.embedded, result.removed) == (1, 1)
    assert {hit["id"] for hit in store.search("anything", top_k=10)} == {1, 3}


def test_a_failed_row_is_retried_by_the_next_backfill(db, opened):
    class Picky(CountingEncoder):
        fail = True

        def encode(self, texts, **kwargs):
            if self.fail and any("poison" in t for t in texts):
                raise RuntimeError("model refused")
            return super().encode(texts, **kwargs)

    encoder = Picky(32)
    store = opened(db, "notes", columns=["body"], encoder=encoder)
    store.backfill_embeddings()
    run_sql(db, "UPDATE notes SET body = 'poison' WHERE id = 1")
    assert store.backfill_embeddings().failed == 1
    encoder.fail = False
    assert store.backfill_embeddings().reembedded == 1


def test_another_program_writes_while_the_store_is_open(db, opened):
    store = opened(db, "notes", columns=["body"])
    store.backfill_embeddings()
    other = sqlite3.connect(db, timeout=1)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO notes(title, body) VALUES ('Other', 'written by another program')")
    assert store.search("readers", top_k=1)  # a reader is not blocked by the writer (WAL)
    other.commit()
    other.close()
    assert store.backfill_embeddings().embedded == 1


def test_a_connection_can_be_given_and_stays_open(db):
    conn = sqlite3.connect(db)
    store = TableStore(conn, "notes", columns=["body"], encoder=CountingEncoder(8))
    store.backfill_embeddings()
    store.close()
    assert conn.execute("SELECT COUNT(*) FROM notes").fetchone()[0] == 4
    conn.close()


def test_embedding_the_stores_own_tables_is_refused(db, opened):
    opened(db, "notes", columns=["body"])
    with pytest.raises(InvalidInputError, match="part of the embeddings store"):
        TableStore(db, "notes_embeddings_text", columns=["text"], encoder=CountingEncoder(8))


def test_hybrid_mode_returns_rows_with_their_fused_score(db, opened):
    store = opened(db, "notes", columns=["title", "body"])
    store.backfill_embeddings()
    hits = store.search("Vacuum rebuilds the file", top_k=2, mode="hybrid")
    assert hits[0]["title"] == "Vacuum" and hits[0]["_score"] >= hits[1]["_score"]
    only = store.search("Vacuum rebuilds the file", top_k=2, mode="hybrid", where={"rank": 1})
    assert [hit["id"] for hit in only] == [1]
    with pytest.raises(InvalidInputError, match="unknown search mode"):
        store.search("writer", mode="fuzzy")


def test_search_where_filters_rows_and_still_returns_top_k(tmp_path, opened):
    rows = [(f"note {i}", f"text number {i}", f"{i}@x", i % 5) for i in range(200)]
    path = make_db(tmp_path / "many.db", rows)
    store = opened(path, "notes", columns=["body"])
    store.backfill_embeddings()
    hits = store.search("text number 7", top_k=5, where={"rank": 3})
    assert len(hits) == 5 and all(hit["rank"] == 3 for hit in hits)
    hits = store.search("text", top_k=3, mode="keyword", where={"rank": ("in", [1, 2]),
                                                               "title": ("like", "note 1%")})
    assert len(hits) == 3 and all(hit["rank"] in (1, 2) and hit["title"].startswith("note 1")
                                  for hit in hits)
    assert store.search("text", where={"rank": (">", 10)}) == []
    with pytest.raises(InvalidInputError, match="no field 'rnk'"):
        store.search("text", where={"rnk": 1})
    with pytest.raises(InvalidInputError, match="operator"):
        store.search("text", where={"rank": ("; DROP TABLE notes", 1)})
    assert len(user_rows(path)) == 200


def test_read_only_searches_and_writes_nothing(db, opened):
    writer = opened(db, "notes", columns=["body"])
    writer.backfill_embeddings()
    writer.close()
    paths = [db, writer.index_path, writer.metadata_path]  # SQLite may add -shm/-wal to read
    before = file_bytes(*paths)
    reader = opened(db, "notes", read_only=True)  # the recorded settings
    assert reader.search("free pages back", top_k=1)[0]["title"] == "Vacuum"
    with pytest.raises(ReadOnlyError):
        reader.drop()
    reader.close()
    assert file_bytes(*paths) == before


def test_a_lock_held_too_long_says_what_to_do(db):
    """SQLite's bare "database is locked" becomes an error that says who holds it and what to
    do (the CLI prints it for a lock met at open or during a backfill)."""
    from embeddable_db.handle import is_locked, sqlite_error

    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    waiter = sqlite3.connect(db, timeout=0.05)
    try:
        with pytest.raises(sqlite3.OperationalError) as caught:
            waiter.execute("SELECT count(*) FROM notes").fetchone()
    finally:
        waiter.close()
        holder.execute("ROLLBACK")
        holder.close()
    assert is_locked(caught.value)
    message = str(sqlite_error(db, caught.value))
    assert db in message and "another connection held a lock" in message
    assert "run this again once that program has committed" in message
    assert not is_locked(sqlite3.OperationalError("no such table: x"))
