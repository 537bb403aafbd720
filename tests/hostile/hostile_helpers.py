"""Shared pieces of the hostile-user tests: snapshots that prove a call changed nothing.

Each test in this folder plays a careless or hostile user (issue 10) and asserts what that
user would notice: a refused call, a clear message, and files that are byte-for-byte the same.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/conftest.py holds NotesDB and VectorDB
from conftest import NotesDB, VectorDB, file_bytes, sqlite_dump  # noqa: E402,F401 - re-exported


def tree_digest(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every regular file under ``folder`` (relative path -> digest).

    Comparing two digests proves that nothing was created, removed or changed in between.
    """
    out: dict[str, str] = {}
    root = Path(folder)
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


_EMPTY = hashlib.sha256(b"").hexdigest()


def user_visible_digest(folder: str | os.PathLike) -> dict[str, str]:
    """``tree_digest`` without what SQLite itself makes for a read-only reader of a WAL
    database: its shared-memory ``-shm`` file and an empty ``-wal``. A reader needs them to
    read safely while another process writes; a ``-wal`` with anything in it is kept, so a
    write still shows."""
    return {
        name: digest
        for name, digest in tree_digest(folder).items()
        if not name.endswith("-shm") and not (name.endswith("-wal") and digest == _EMPTY)
    }
