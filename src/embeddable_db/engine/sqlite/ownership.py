"""Which files at a store's index and metadata paths are the store's own (issue 10, item 1).

The index and its JSON are a cache that the store replaces at will, so it replaces or deletes
only files it wrote. A file is the store's own when:

- its ``(st_dev, st_ino)`` is one the store recorded in its SQLite meta table when it last
  published its files (``remember_written``: the ids of the temporary files and of the files
  they replace are recorded just before the renames, so a kill in between still leaves
  recognised files, then ``remember_published`` keeps only the new ones); a file damaged in
  place keeps its inode and is still recognised and rebuilt;
- or its content proves it: a manifest naming this store, or this very database and table
  (the database was deleted and created again, so its store id changed); an index whose size
  and checksum are those such a manifest records, or any index beside such a manifest when
  the store has recorded no ids yet (files written before ids were recorded);
- or it holds nothing to lose: empty, or only zero bytes.

Anything else is refused before anything is written. Recording ids costs two small commits per
save; without it (a read-only database, a caller's open transaction) intact files are still
recognised by their content. Only ids of existing files are kept, because inode numbers of
deleted files are reused at once; a store file deleted by hand (or a kill between the renames
and the second commit) leaves an id that a new file at the very same path could reuse until
the next save: then that file would be taken for the store's.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from ... import files
from ...errors import StoreConflictError
from .manifest import Manifest, ManifestError, file_checksum, read_manifest
from .store import EmbeddingStore


@dataclass
class OwnFiles:
    index: os.stat_result | None
    metadata: os.stat_result | None
    #: The manifest parsed on the way, keyed by ``files.stat_key``, for the caller to reuse.
    parsed: tuple[tuple[int, ...] | None, Manifest] | None = None


def own_files(
    store: EmbeddingStore, index_path: str, metadata_path: str, database: str
) -> OwnFiles:
    """The stats of both files once each is known to be the store's (or absent); else raise
    StoreConflictError naming the file. Costs one stat per file for files the store recorded.
    ``database`` is the store's ``Manifest.database`` (file and table)."""
    known = files.known_ids(store.meta)
    try:
        store_id = store.meta("store_id")
    except sqlite3.OperationalError:  # before ensure_schema on a new database
        store_id = None
    result = OwnFiles(None, None)
    parsed: list[Manifest | None] = []

    def manifest() -> Manifest | None:
        if not parsed:
            try:
                key = files.stat_key(metadata_path)
                parsed.append(read_manifest(metadata_path))
            except ManifestError:
                parsed.append(None)
            else:
                if parsed[0] is not None:
                    result.parsed = (key, parsed[0])
        found = parsed[0]
        if found is not None and found.store_id != store_id and found.database != database:
            raise StoreConflictError(
                f"{metadata_path} belongs to another store ({found.database}): give each store "
                "its own index_path and metadata_path"
            )
        return found

    def index_vouched() -> bool:
        own = manifest()
        return own is not None and (
            not known
            or files.holds_nothing(index_path)
            or file_checksum(index_path) == (own.index_size, own.index_checksum)
        )

    result.metadata = files.check_replaceable(
        metadata_path, "metadata", known, lambda: manifest() is not None
    )
    result.index = files.check_replaceable(index_path, "index", known, index_vouched)
    return result


def remember_written(
    store: EmbeddingStore, temps: Iterable[str | None], current: OwnFiles
) -> list[files.FileId]:
    """Record the ids of the temporary files about to be published, and of the current files
    (a kill before the rename leaves those in place); returns the new ids for
    ``remember_published``. Only ids of files that exist are kept: a deleted file's inode
    number is soon reused (often by the very next file made in the folder), and must not
    make a stranger look like the store's own."""
    new = [files.file_id(os.stat(tmp)) for tmp in temps if tmp is not None]
    old = [files.file_id(st) for st in (current.index, current.metadata) if st is not None]
    _record(store, files.merged_ids(new, old))
    return new


def remember_published(store: EmbeddingStore, new: list[files.FileId]) -> None:
    """After the renames the replaced files are gone: keep only the ids of the new ones."""
    _record(store, files.merged_ids(new, ()))


def _record(store: EmbeddingStore, value: str) -> None:
    """One small commit; skipped inside a caller's open transaction and on a database that
    cannot be written (intact files are still recognised by their content)."""
    if store.conn.in_transaction:
        return
    try:
        with store.write():
            store.set_meta(files.FILE_IDS_KEY, value)
    except sqlite3.Error:
        pass
