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
