"""The index files: a cache of the live index on disk, its JSON manifest and their lock file.

They are derived data: SQLite holds every vector, so files that are missing, damaged, stale or
written for another backend are rebuilt from it (with one warning), never trusted. They are
written atomically under a file lock at flush points, and only over files this store wrote
(``ownership.py``); files of another store or model are refused, never overwritten. A
read-only store holds the existing lock file shared (``handle.SharedLock``) and writes nothing.

``stamp`` remembers which metadata file was last written or loaded, so a flush with nothing new
costs a ``stat`` and a store can tell whether the files on disk are still the ones it knows.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from filelock import FileLock, Timeout

from ... import files
from ...backends import VectorIndex
from ...errors import CorruptIndexError, EmbeddingError, ModelConflictError, StoreConflictError
from .integrity import checked_labels
from .label_table import LabelTable
from .live_index import LiveIndex
from .manifest import (
    Manifest,
    ManifestError,
    discard_temp,
    file_checksum,
    file_digest,
    publish,
    read_manifest,
    remove_stale_temps,
    write_manifest_temp,
    write_temp,
)
from .opening import EmptyStore, SharedLock, file_ids
from .ownership import OwnFiles, own_files, remember_published, remember_written
from .store import EmbeddingStore

log = logging.getLogger(__name__)

LOCK_TIMEOUT_SECONDS = 300


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a store builds its maps of 100k records: its
    passes over the growing heap took half the time of opening a large store, and these
    objects hold no cycles. A collector the application had turned off stays off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class IndexFiles:
    """The index file and its manifest at two paths, for one store, model and backend."""

    def __init__(
        self,
        store: EmbeddingStore,
        index_path: str,
        metadata_path: str,
        *,
        database: str,
        model_id: str,
        backend_name: str,
        new_backend: Callable[[int], VectorIndex],
        embedding_version: int,
        allow_model_change: bool,
        read_only: bool,
    ) -> None:
        self.store = store
        self.index_path, self.metadata_path = index_path, metadata_path
        self.database = database
        self.model_id = model_id
        self.backend_name = backend_name
        self.new_backend = new_backend
        self.params: dict[str, Any] = new_backend(2).params()
        self.embedding_version = embedding_version
        self.allow_model_change = allow_model_change
        self.read_only = read_only
        lock = FileLock(f"{index_path}.lock", timeout=LOCK_TIMEOUT_SECONDS)
        self.lock = SharedLock(lock.lock_file) if read_only else lock  # shared: never creates it
        #: (mtime_ns, size, synced_seq) of the metadata last written or loaded, or None.
        self.stamp: tuple[int, int, int] | None = None
        #: The files on disk hold another model's vectors (an allowed model change).
        self.foreign = False
        self._parsed: tuple | None = None
        self._said: list[tuple] = []  # what loading found, logged once the files held still

    # -- the lock ----------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        try:
            with self.lock:
                yield
        except Timeout as exc:
            raise EmbeddingError(
                f"another process has held {self.lock.lock_file} for "
                f"{LOCK_TIMEOUT_SECONDS} s; if none is running, delete the lock file"
            ) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP and os.path.islink(self.lock.lock_file):
                raise EmbeddingError(files.lock_symlink_message(self.lock.lock_file)) from exc
            raise

    # -- opening -----------------------------------------------------------------------------------
    def check_before_open(self) -> None:
        """Refuse foreign files and unreadable ones before the lock file or anything else is
        written; repeated under the lock (where a writer cannot be mid-save) before refusing."""
        for path in (self.index_path, self.metadata_path):
            files.check_readable(path)
        try:
            self.own()
        except StoreConflictError:
            if not os.path.exists(self.lock.lock_file):
                raise  # no writer has ever run here: nothing can be mid-save
            with self.locked():
                self.own()

    def prepare(self) -> None:
        """Under the lock, before loading: no FIFO blocks, "permission denied" is said, and a
        writer clears the temporary files a killed save left."""
        for path in (self.index_path, self.metadata_path):
            files.check_readable(path)
        if not self.read_only:
            remove_stale_temps(self.index_path)
            remove_stale_temps(self.metadata_path)

    def own(self) -> OwnFiles:
        """Both files' stats once each is known to be this store's, or absent (ownership.py)."""
        found = own_files(self.store, self.index_path, self.metadata_path, self.database)
        self._parsed = found.parsed  # for _read_manifest_once
        return found

    def load(self, current_dim: int | None) -> tuple[LiveIndex | None, Manifest | None]:
        """(the live index from the files, or None to rebuild; the manifest read).

        A read-only open holds no lock, so a save may replace the files while it reads them
        (index first, then metadata, each atomically): when either file changed meanwhile, it
        reads them again, and after three tries rebuilds from SQLite.
        """
        live, manifest = self._load(current_dim)
        self.foreign = manifest is not None and manifest.model not in (None, self.model_id)
        return live, manifest

    def _load(self, current_dim: int | None) -> tuple[LiveIndex | None, Manifest | None]:
        if isinstance(self.store, EmptyStore):  # no embeddings table: the files are not ours
            return None, None
        manifest = None
        for _ in range(3):
            self._said = []  # told only about files that held still meanwhile
            before = file_ids(self.index_path, self.metadata_path)
            manifest = self._read_own_manifest(current_dim)
            live = None
            if manifest is not None and not (
                manifest.model is None and not manifest.count and self.store.count()
            ):  # (an empty index written without a model, as an open with another model did,
                # says nothing about this model's vectors: never trust it to mean "none")
                live = self._load_files(manifest)
            if not self.read_only or file_ids(self.index_path, self.metadata_path) == before:
                break
        else:  # the files kept changing under a reader: rebuild from SQLite instead
            live = None
        for level, message, args in self._said:
            log.log(level, message, *args)
        return live, manifest

    def _say(self, level: int, message: str, *args: Any) -> None:
        self._said.append((level, message, args))

    def _read_manifest_once(self) -> Manifest | None:
        """The manifest, reusing the one ``own`` parsed if the file is unchanged since: a
        100k-record manifest takes a noticeable time to parse, and opening needs it once."""
        cached, self._parsed = self._parsed, None
        if cached is not None and cached[0] is not None and (
            files.stat_key(self.metadata_path) == cached[0]
        ):
            return cached[1]
        return read_manifest(self.metadata_path)

    def _read_own_manifest(self, current_dim: int | None) -> Manifest | None:
        """The manifest if it is usable; None (after one warning) when missing or damaged.

        A manifest of another store, model or dimension is refused, never overwritten.
        """
        path = self.metadata_path
        rebuilding = "rebuilding the index from the vectors in SQLite"
        try:
            manifest = self._read_manifest_once()
        except ManifestError as exc:
            self._say(logging.WARNING, "embedding metadata %s is damaged (%s): %s", path, exc, rebuilding)
            return None
        if manifest is None:
            if self.store.count():
                self._say(logging.WARNING, "embedding metadata %s is missing: %s", path, rebuilding)
            return None
        if manifest.store_id != self.store.store_id:
            if manifest.database == self.database:
                self._say(logging.WARNING,
                    "embedding metadata %s was written for an earlier database of the same "
                    "name (%s was deleted and created again): the old index is discarded and "
                    "rebuilt from the vectors in SQLite", path, manifest.database,
                )
                return None
            raise StoreConflictError(
                f"{path} belongs to another store ({manifest.database}): give "
                "each store its own index_path and metadata_path"
            )
        if manifest.model not in (None, self.model_id) and not self.allow_model_change:
            raise ModelConflictError(
                f"{path} holds vectors of model {manifest.model!r}, not "
                f"{self.model_id!r}: open the store with that model, or pass "
                "allow_model_change=True and re-embed with backfill_embeddings()"
            )
        if manifest.model == self.model_id and None not in (manifest.dim, current_dim) and (
            manifest.dim != current_dim
        ):
            raise StoreConflictError(
                f"{path} describes {manifest.dim}-dimensional vectors but the "
                f"store holds {current_dim}-dimensional ones: delete the file to rebuild it"
            )
        return manifest

    def _load_files(self, manifest: Manifest) -> LiveIndex | None:
        """The live index from intact files; None (after one warning) when they can't be used."""
        if manifest.damage:
            self._say(logging.WARNING,
                "embedding metadata %s is damaged (%s): rebuilding the index from the vectors "
                "in SQLite", self.metadata_path, manifest.damage,
            )
            return None
        if manifest.backend != self.backend_name or manifest.params != self.params:
            self._say(logging.INFO,
                "index %s was built by %s %s; rebuilding it for %s %s from stored vectors",
                self.index_path, manifest.backend, manifest.params, self.backend_name,
                self.params,
            )
            return None
        if manifest.model != self.model_id and manifest.model is not None:
            return None  # an allowed model change: the old index is of no use
        if manifest.synced_seq > self.store.last_seq():
            self._say(logging.WARNING,
                "index %s is newer than its database (was the database restored from a "
                "backup?): rebuilding it from SQLite", self.index_path,
            )
            return None
        records = manifest.records
        if not len(records):
            return LiveIndex(None, manifest.dim, None, manifest.synced_seq, manifest.generation)
        try:
            labels = checked_labels(records.labels, self.store.max_label())
            size, checksum = file_checksum(self.index_path)
            if (size, checksum) != (manifest.index_size, manifest.index_checksum):
                raise CorruptIndexError("its checksum does not match the metadata")
            backend = self.new_backend(manifest.dim)
            backend.load(self.index_path, labels)
            # A record id listed twice passes these checks only in a file forged with a valid
            # checksum; verify_index() finds it, as it finds swapped ids (a set of 1M ids here
            # cost 0.18 s, a third of the open).
            live = LiveIndex(
                backend, manifest.dim, LabelTable(records), manifest.synced_seq,
                manifest.generation,
            )
        except (OSError, ValueError, RuntimeError, OverflowError, CorruptIndexError) as exc:
            self._say(logging.WARNING,
                "index %s cannot be used (%s): rebuilding it from the vectors in SQLite",
                self.index_path, exc,
            )
            return None
        self._remember(manifest.synced_seq)
        return live

    # -- stamps ------------------------------------------------------------------------------------
    def _remember(self, synced_seq: int) -> None:
        stat = os.stat(self.metadata_path)
        self.stamp = (stat.st_mtime_ns, stat.st_size, synced_seq)

    def unchanged(self) -> bool:
        """True when the metadata on disk is still the file we last wrote or loaded."""
        if self.stamp is None:
            return False
        try:
            stat = os.stat(self.metadata_path)
        except OSError:
            return False
        return self.stamp[:2] == (stat.st_mtime_ns, stat.st_size)

    def current(self, live: LiveIndex) -> bool:
        """True when the files on disk are the ones we last wrote or loaded, and hold
        everything ``live`` holds (FAISS takes new vectors in place, leaving nothing
        pending, so an unchanged file alone does not mean there is nothing to save)."""
        return self.unchanged() and self.stamp[2] == live.synced_seq

    def may_write(self, live: LiveIndex) -> bool:
        """Never by a read-only store; and an index holding no vectors never replaces another
        model's files or is written while SQLite holds other models' vectors (it would claim
        that there are none)."""
        if self.read_only:
            return False
        return len(live) > 0 or not (self.foreign or self.store.count())

    # -- writing -----------------------------------------------------------------------------------
    def write(self, live: LiveIndex) -> None:
        """Write the (compacted) backend and its manifest; call under ``locked()``."""
        if not self.may_write(live):
            return
        assert live.pending == 0, "compact before writing files"
        on_disk = 0
        # Only files this store wrote are replaced or deleted; checked before writing any.
        current = self.own()
        self._parsed = None  # read again below, after the lock was taken
        try:
            previous = read_manifest(self.metadata_path)
            if previous is not None:
                if previous.store_id != self.store.store_id and (
                    previous.database != self.database
                ):
                    raise StoreConflictError(
                        f"{self.metadata_path} now belongs to another store ({previous.database})"
                        ": give each store its own index_path and metadata_path"
                    )
                on_disk = previous.generation
        except ManifestError:
            pass
        generation = max(on_disk, live.generation) + 1
        # Until this write succeeds the files may not match the live index: a failed write
        # (a full disk) must not let the next save think there is nothing to do.
        self.stamp = None
        index_tmp = manifest_tmp = None
        try:
            if live.backend is not None and len(live.backend):
                index_tmp = write_temp(self.index_path, live.backend.save)
            manifest_tmp = write_manifest_temp(
                self.metadata_path, self._manifest(live, generation, index_tmp)
            )
            # Both files are written and fsynced before either replaces its old version,
            # so a failed write leaves the previous index and metadata intact as a pair.
            new_ids = remember_written(self.store, (index_tmp, manifest_tmp), current)
            if index_tmp is not None:
                publish(index_tmp, self.index_path)
            elif current.index is not None:  # only ever a file own() said is ours
                with suppress(FileNotFoundError):
                    os.unlink(self.index_path)
            publish(manifest_tmp, self.metadata_path)
            remember_published(self.store, new_ids)
        except BaseException:
            discard_temp(index_tmp)
            discard_temp(manifest_tmp)
            raise
        live.generation = generation
        self._remember(live.synced_seq)

    def _manifest(self, live: LiveIndex, generation: int, index_file: str | None) -> Manifest:
        """The manifest of ``live`` and its just-written ``index_file``: sampled checksum for
        opening, full sha256 for verify (reading the file back costs ~0.15 s per 154 MB)."""
        size = checksum = digest = None
        if index_file is not None:
            size, checksum = file_checksum(index_file)
            digest = file_digest(index_file)
        records = live.table.records()
        records.details = self._details(live, records.labels.tolist())
        return Manifest(
            store_id=self.store.store_id,
            database=self.database,
            model=self.model_id if live.dim is not None else None,
            dim=live.dim,
            backend=self.backend_name,
            params=self.params,
            embedding_version=self.embedding_version,
            generation=generation,
            synced_seq=live.synced_seq,
            index_size=size,
            index_checksum=checksum,
            index_digest=digest,
            records=records,
        )

    def _details(self, live: LiveIndex, labels: list[int]) -> tuple[list, list, list]:
        """(source ids, creation times, versions) of ``labels`` from SQLite, by a merge of
        two label-ordered streams: no dict of a million rows."""
        sources: list[str] = []
        created: list[str] = []
        versions: list[int] = []
        rows = iter(self.store.mapping(self.model_id, live.dim) if live.dim is not None else ())
        row = next(rows, None)
        for label in labels:
            while row is not None and row[0] < label:
                row = next(rows, None)
            if row is not None and row[0] == label:
                sources.append(row[3])
                created.append(row[4])
                versions.append(row[5])
            else:  # changed in SQLite since the view synced: the next save has it
                sources.append("")
                created.append("")
                versions.append(self.embedding_version)
        return sources, created, versions
