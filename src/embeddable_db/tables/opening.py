"""Opening the connection a ``TableStore`` uses, and the names of its tables.

With ``store=`` the connection's main database is the store's file and the user's database is
attached read-only as ``src``: every table the engine creates (unqualified names) then lands in
the store's file, and nothing can be written into the user's.
"""

from __future__ import annotations

import os
import re
import sqlite3
from hashlib import sha256
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote

from ..errors import InvalidInputError
from ..files import text_path
from ..handle import connect_read_only
from .schema import quote

_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")
_INT = re.compile(r"-?[1-9][0-9]{0,17}|0")


def store_table_name(table: str) -> str:
    """The embeddings table of a user's table: ``<table>_embeddings`` for a plain name, else a
    name made from its hash (the engine's tables must be plain identifiers)."""
    if _PLAIN.fullmatch(table):
        return f"{table}_embeddings"
    return f"t{sha256(table.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}_embeddings"


def bound(keys: list[str]) -> list[Any]:
    """Each key as text, and as an integer too when it is one: a column without type affinity
    keeps 5 and '5' apart, while the record id of either is '5'."""
    out: list[Any] = []
    for key in keys:
        out.append(key)
        if _INT.fullmatch(key):
            out.append(int(key))
    return out



def connect(source: Any, store: Any, read_only: bool) -> tuple[sqlite3.Connection, bool, str]:
    """(connection, whether this store opened it, the schema the user's table is in)."""
    if isinstance(source, sqlite3.Connection):
        if store is None:
            source.execute("PRAGMA busy_timeout = 30000")
            return source, False, "main"
        row = next((r for r in source.execute("PRAGMA database_list") if r[1] == "main"), None)
        if not row or not row[2]:
            raise InvalidInputError("store= needs the connection's database to be a file")
        path = row[2]
    else:
        path = text_path(source, "path_or_connection")
        if not os.path.isfile(path):
            raise InvalidInputError(
                f"there is no database file {path!r}: TableStore works on an existing SQLite "
                "file (check the path)"
            )
    if store is None:
        conn = (connect_read_only(path, timeout=30.0, check_same_thread=False) if read_only
                else sqlite3.connect(path, timeout=30.0, check_same_thread=False))
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn, True, "main"
    store = os.path.abspath(text_path(store, "store"))
    if os.path.exists(store) and os.path.samefile(store, path):
        raise InvalidInputError("store= must be another file than the database itself")
    if read_only:
        conn = connect_read_only(store, timeout=30.0, check_same_thread=False)
    else:
        conn = sqlite3.connect("file:" + url_quote(store), uri=True, timeout=30.0,
                               check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        if not read_only:  # now: a plain "journal_mode = WAL" later would try the attached file too
            conn.execute("PRAGMA main.journal_mode = WAL").fetchall()
        conn.execute("ATTACH DATABASE ? AS src", (Path(os.path.abspath(path)).as_uri() + "?mode=ro",))
    except BaseException:
        conn.close()
        raise
    return conn, True, "src"


def refuse_our_own(conn: sqlite3.Connection, name: str) -> None:
    """A store's own tables (vectors, text, change log) are not records to embed."""
    metas = [r[0] for r in conn.execute(
        "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name LIKE '%\\_meta' ESCAPE '\\'"
    )]
    for meta in metas:
        base = meta[: -len("_meta")]
        if name == base or name.startswith(base + "_"):
            try:
                ours = conn.execute(f"SELECT 1 FROM {quote(meta)} WHERE key = 'store_id'").fetchone()
            except sqlite3.Error:  # the user's own table of that name
                ours = None
            if ours:
                raise InvalidInputError(
                    f"table {name!r} is part of the embeddings store {base!r}: embed one of "
                    "the database's own tables"
                )
