"""``verify_index()`` for the SQLite engine: SQLite, the live index and the files as of one moment.

What is compared is in ``integrity.py``; this module makes the moment consistent. Other
processes write while we look: the file lock keeps a save from replacing the files between
reading the metadata and the index, and SQLite is read, and the live index synced, inside one
snapshot taken under that lock, so neither side is ahead. A read-only store takes no lock: it
looks again when a save replaced the files meanwhile.
"""

from __future__ import annotations

from ...reports import VerifyReport
from .index_files import IndexFiles
from .integrity import REPAIR, check_index_file, live_problems, model_switch_problem, scan_problems
from .live_view import LiveView
from .manifest import ManifestError, read_manifest
from .opening import file_ids


def verify_store(view: LiveView, index_files: IndexFiles | None, read_only: bool) -> VerifyReport:
    """Compare everything; retried by a read-only store when a save replaced the files."""
    if index_files is None:
        return _verify_now(view, None)
    paths = index_files.index_path, index_files.metadata_path
    with index_files.locked():
        for _ in range(2 if read_only else 0):
            before = file_ids(*paths)
            report = _verify_now(view, index_files)
            if report.ok or file_ids(*paths) == before:
                return report
        return _verify_now(view, index_files)


def _verify_now(view: LiveView, index_files: IndexFiles | None) -> VerifyReport:
    """Everything is read: SQLite's ids and vectors against the live index, the metadata
    and every vector in the index file (the open-time checks only sample the file)."""
    store = view.store
    problems: list[str] = []
    manifest = items = metadata_count = file_count = None
    index_path = metadata_path = None
    pending = 0
    if index_files is not None:
        index_path, metadata_path = index_files.index_path, index_files.metadata_path
        try:
            manifest = read_manifest(metadata_path, details=True)
        except ManifestError as exc:
            problems.append(f"metadata {metadata_path} is damaged: {exc}")
        else:
            if manifest is None:
                problems.append(f"metadata {metadata_path} is missing")
        if manifest is not None:
            if manifest.damage:
                problems.append(f"metadata {metadata_path} is damaged: {manifest.damage}; {REPAIR}")
            metadata_count = manifest.count
            file_count, items, problem = check_index_file(
                index_path, manifest, index_files.new_backend
            )
            if problem:
                problems.append(problem)
    with view.snapshot():
        dim = view.dim or view.current_dim()
        seq = store.last_seq()
        compared = manifest
        if manifest is not None:
            pending = len(store.changes_since(manifest.synced_seq))
            if manifest.store_id != store.store_id:
                problems.append(f"metadata {metadata_path} belongs to another store")
                compared = None
            elif manifest.synced_seq > seq:
                problems.append("metadata is newer than the database")
                compared = None
        stored, counts, found = scan_problems(
            store.scan(), view.model_id, dim, compared, items, index_path
        )
        switch = model_switch_problem(counts, store.identity()[0])
        if view.live.synced_seq < seq:
            view.sync()
    live = view.live
    live_ids = {label: (rid, kind) for label, rid, kind in live.table.items()}
    problems[:0] = live_problems(live_ids, stored)
    problems += found
    if switch:
        problems.append(switch)
    return VerifyReport(
        sqlite_count=len(stored),
        index_count=len(live_ids),
        metadata_count=metadata_count,
        file_count=file_count,
        pending_changes=pending,
        problems=problems,
    )
