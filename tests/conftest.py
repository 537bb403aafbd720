"""Shared fixtures: a small notes store, a counting fake encoder, and the real model (once)."""

from __future__ import annotations

import os
import signal
import sqlite3

import numpy as np
import pytest

from embeddable_db import EmbeddableDBMixin, HashingEncoder
from postgres.fixtures import (  # noqa: F401
    pg_conninfo,
    pg_database,
    pg_replica,
    pg_schema,
    pg_stores,
    pg_url,
    postgres_server,
)

# A test run started as a background job (`pytest &` in a shell without job control) inherits
# SIGINT ignored, and the library deliberately leaves an ignored Ctrl-C ignored: the tests of
# what Ctrl-C does would then see nothing. Give this process, and through exec every child it
# starts, the interactive default.
signal.signal(signal.SIGINT, signal.default_int_handler)
# A URL in the shell that runs the tests would send every database a test opens without a
# file to that server: the tests (and the processes they start) choose their engine themselves.
os.environ.pop("EMBEDDABLE_DB_URL", None)
os.environ.pop("EMBEDDABLE_DB_READ_URL", None)


class CountingEncoder(HashingEncoder):
    """The hashing encoder, counting model calls so tests can prove what was (not) encoded."""


class NotesDB(EmbeddableDBMixin):
    """The README's example store: one table, text embedded in batches."""

    # timeout: several processes may create the table and write to it at once.
    connect_options: dict = {"timeout": 60}

    def __init__(self, path, **options):
        self.conn = sqlite3.connect(path, **self.connect_options)
        self.conn.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
        self.conn.commit()
        super().__init__(**options)

    def embedding_text(self, record):
        return record["body"]

    def iter_records(self):
        for rid, body in self.conn.execute("SELECT id, body FROM notes ORDER BY id"):
            yield rid, {"body": body}, "note"

    def add_note(self, body: str) -> int:
        cur = self.conn.execute("INSERT INTO notes(body) VALUES (?)", (body,))
        self.conn.commit()
        return cur.lastrowid


class VectorDB(EmbeddableDBMixin):
    """A store that supplies ready-made vectors through ``vector()`` (the seed's contract)."""

    def __init__(self, path, **options):
        self.conn = sqlite3.connect(path)
        self.conn.execute("CREATE TABLE IF NOT EXISTS items(id TEXT PRIMARY KEY, vec TEXT)")
        self.conn.commit()
        options.setdefault("model_name", "precomputed")
        super().__init__(**options)

    def vector(self, record):
        return record["vec"]

    def iter_records(self):
        import json

        for rid, vec in self.conn.execute("SELECT id, vec FROM items ORDER BY id"):
            yield rid, {"vec": json.loads(vec)}, "item"


@pytest.fixture
def encoder():
    return CountingEncoder(32)


@pytest.fixture
def make_notes(tmp_path, encoder):
    """Open (or reopen) a NotesDB in tmp_path; closes everything at the end."""
    opened = []

    def make(name="notes.db", **options):
        options.setdefault("encoder", encoder)
        db = NotesDB(str(tmp_path / name), **options)
        opened.append(db)
        return db

    yield make
    for db in opened:
        try:
            db.close()
        finally:
            db.conn.close()


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def sqlite_dump(path) -> list[str]:
    conn = sqlite3.connect(str(path))
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def file_bytes(*paths) -> dict:
    """Each file's bytes (None when it does not exist), to prove a call wrote nothing."""
    out = {}
    for path in paths:
        try:
            with open(path, "rb") as handle:
                out[str(path)] = handle.read()
        except FileNotFoundError:
            out[str(path)] = None
    return out


def as_before_keywords(path, table: str = "embeddings") -> None:
    """Make the store at ``path`` what the code before the keyword index left (schema 1): the
    same embeddings and meta tables, no keyword tables and no schema version."""
    conn = sqlite3.connect(str(path))
    with conn:
        conn.execute(f"DROP TABLE {table}_fts")
        conn.execute(f"DROP TABLE {table}_text")
        conn.execute(f"DELETE FROM {table}_meta WHERE key = 'schema'")
    conn.close()


@pytest.fixture(scope="session")
def real_encoder():
    """The real default model, loaded once per test session on one torch thread."""
    os.environ.setdefault("EMBEDDABLE_DB_THREADS", "1")
    from embeddable_db import get_encoder

    enc = get_encoder()
    enc.model  # noqa: B018 - load now, so the first test does not pay alone
    return enc
