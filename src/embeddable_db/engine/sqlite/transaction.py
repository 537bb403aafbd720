"""One owner per transaction: whoever begins one commits it, nesting by SAVEPOINT.

The store's writes, the engine's ``transaction()`` and so a database's record write and its
vector write all go through ``atomic``: they commit together, in whichever order they came, or
not at all; a caller's own transaction is left for the caller to commit (sqlite-utils'
``Database.atomic()`` is the model).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def atomic(conn: sqlite3.Connection) -> Iterator[bool]:
    """One owner per transaction, nesting by SAVEPOINT (as sqlite-utils' ``atomic()``).

    With no transaction open, this begins one (BEGIN IMMEDIATE: the write lock is taken up
    front, so the busy timeout applies and ``seq`` values are handed out in commit order across
    processes), commits it on success and rolls it back on error; it yields True, the owner.
    Inside a transaction someone else opened, the changes go in a SAVEPOINT: an error rolls back
    only them, never the owner's pending changes, and success leaves the commit to the owner
    (it yields False). Whoever began a transaction commits it; nothing else does.
    """
    if not conn.in_transaction:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield True
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        conn.commit()
        return
    conn.execute("SAVEPOINT embeddable_db")
    try:
        yield False
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled everything back (disk full)
            conn.execute("ROLLBACK TO embeddable_db")
            conn.execute("RELEASE embeddable_db")
        raise
    conn.execute("RELEASE embeddable_db")
