"""verify() (verify.py, comparing as integrity.py says) on its own, over a real store, its live
view and its files: a fresh save is reported ok; each way SQLite, the live index and the files
can disagree is reported as a named problem; changes not yet saved are pending, not problems."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from embeddable_db.engine.sqlite import verify as verify_module
from embeddable_db.engine.sqlite.manifest import publish, read_manifest, write_manifest_temp
from embeddable_db.engine.sqlite.manifest_records import Records
from embeddable_db.engine.sqlite.store import vector_to_blob
from embeddable_db.engine.sqlite.verify import verify_store as verify

from .stored import DIM, Connections, files_for, folder_bytes, row, rows, save, view_of
from .vectors import unit_vectors

REPAIR = "verify_index(repair=True)"


def saved(store, folder, backend="faiss"):
    """23 vectors of two kinds (a removal among them), their view, and their files written."""
    store.upsert(rows(20, seed=1) + rows(4, start=20, seed=2, kind="faq"))
    store.remove(["r3"])
    view = view_of(store, backend)
    files = files_for(store, folder, backend=backend)
    save(view, files)
    return view, files


def label_of(store, record_id):
    (label,) = store.conn.execute(
        "SELECT label FROM embeddings WHERE record_id = ?", (record_id,)
    ).fetchone()
    return label


def behind_the_back(store, sql, *args):
    """A change made with plain SQL: no new seq, so nothing tells the view or the files."""
    store.conn.execute(sql, args)
    store.conn.commit()


def rewrite_manifest(path, **changes):
    """The manifest with ``changes``, written whole with a valid checksum of its own."""
    manifest = dataclasses.replace(read_manifest(path), **changes)
    publish(write_manifest_temp(path, manifest), path)


def only(report, *parts):
    """The one problem reported, after checking that it says each of ``parts``."""
    assert not report.ok and len(report.problems) == 1, report.problems
    for part in parts:
        assert part in report.problems[0]
    return report.problems[0]


# -- agreement ---------------------------------------------------------------------------------
def test_a_fresh_save_is_ok(store, folder, backend):
    view, files = saved(store, folder, backend)
    report = verify(view, files, read_only=False)
    assert report.ok and report.problems == []
    assert (report.sqlite_count, report.index_count) == (23, 23)
    assert (report.metadata_count, report.file_count, report.pending_changes) == (23, 23, 0)


def test_without_files_only_the_live_index_is_compared(store):
    store.upsert(rows(5))
    view = view_of(store)
    report = verify(view, None, read_only=False)
    assert report.ok and (report.sqlite_count, report.index_count) == (5, 5)
    assert report.metadata_count is None and report.file_count is None


def test_read_only_verify_changes_nothing(store, folder):
    view, files = saved(store, folder)
    os.unlink(files.lock.lock_file)
    before = folder_bytes(folder)
    reader = files_for(store, folder, read_only=True)
    assert verify(view, reader, read_only=True).ok
    assert folder_bytes(folder) == before


def test_a_read_only_verify_looks_again_when_a_save_replaced_the_files(
    db, store, folder, monkeypatch
):
    """A reader holds no lock where there is no lock file: a save between reading the
    metadata and the index file is not damage."""
    view, files = saved(store, folder)
    os.unlink(files.lock.lock_file)
    theirs = db.store()
    their_view, writer = view_of(theirs), files_for(theirs, folder)
    check_index_file, calls = verify_module.check_index_file, []

    def a_save_midway(*args):
        if not calls:  # after the metadata was read, before the index file is
            theirs.upsert([row("midway", seed=88)])
            save(their_view, writer)
        calls.append(args)
        return check_index_file(*args)

    monkeypatch.setattr(verify_module, "check_index_file", a_save_midway)
    report = verify(view, files_for(store, folder, read_only=True), read_only=True)
    assert report.ok, report.problems
    assert len(calls) == 2 and report.metadata_count == report.index_count == 24


def test_changes_not_yet_saved_are_pending_not_problems(db, store, folder, backend):
    view, files = saved(store, folder, backend)
    store.upsert([row("unsaved", seed=40), row("r1", seed=41)])
    view.wrote()
    theirs = db.store()
    theirs.remove(["r2"])  # another connection's, not yet seen by the view
    report = verify(view, files, read_only=False)
    assert report.ok, report.problems
    assert report.pending_changes == 3
    assert (report.sqlite_count, report.index_count, report.metadata_count) == (23, 23, 23)
    assert "r2" not in view.live.label_of  # verify brought the view up to date


# -- SQLite changed behind the store's back ---------------------------------------------------
def test_a_vector_changed_in_sqlite_is_found_in_the_index_file(store, folder, backend):
    view, files = saved(store, folder, backend)
    label = label_of(store, "r5")
    behind_the_back(
        store, "UPDATE embeddings SET vector = ? WHERE record_id = 'r5'",
        vector_to_blob(unit_vectors(1, DIM, seed=123)[0]),
    )
    only(
        verify(view, files, read_only=False),
        f"index file {files.index_path} holds 1 vectors that differ from SQLite's",
        f"label {label}, record 'r5'", REPAIR,
    )


def test_a_kind_changed_in_sqlite_is_found_in_the_metadata_and_the_live_index(store, folder):
    view, files = saved(store, folder)
    label = label_of(store, "r6")
    behind_the_back(store, "UPDATE embeddings SET kind = 'faq' WHERE record_id = 'r6'")
    report = verify(view, files, read_only=False)
    assert len(report.problems) == 2, report.problems
    live, metadata = report.problems
    assert "live index answers 1 labels with another record than SQLite" in live
    assert f"label {label}" in live
    assert "metadata names another record or kind than SQLite for 1 labels" in metadata
    assert f"(first: label {label})" in metadata


def test_a_row_deleted_from_sqlite_is_extra_in_the_live_index_and_the_metadata(store, folder):
    view, files = saved(store, folder)
    behind_the_back(store, "DELETE FROM embeddings WHERE record_id = 'r7'")
    report = verify(view, files, read_only=False)
    assert report.sqlite_count == 22 and report.index_count == 23
    assert len(report.problems) == 2, report.problems
    live, metadata = report.problems
    assert "live index holds 23 vectors, SQLite 22 (0 missing, 1 extra)" in live
    assert "metadata lists 23 records: 0 that SQLite held when it was saved are missing " \
        "and 1 are not in SQLite" in metadata


def test_the_store_holding_two_models_is_said(store, folder):
    view, files = saved(store, folder)
    store.upsert([row("x", model="other"), row("y", model="other")])
    report = verify(view, files, read_only=False)
    problem = only(report, "the store holds vectors of 2 models", "23 by 'm'", "2 by 'other'")
    assert "backfill_embeddings()" in problem


def test_metadata_newer_than_the_database_is_said(store, folder):
    view, files = saved(store, folder)
    with store.write():  # the database restored from an older backup
        store.set_meta("seq", "3")
    only(verify(view, files, read_only=False), "metadata is newer than the database")


# -- the files --------------------------------------------------------------------------------
def test_a_record_missing_from_the_metadata(store, folder):
    view, files = saved(store, folder)
    manifest = read_manifest(files.metadata_path, details=True)
    rewrite_manifest(files.metadata_path, records=Records.from_rows(manifest.records.rows()[1:]))
    report = verify(view, files, read_only=False)
    assert report.metadata_count == 22 and len(report.problems) == 2, report.problems
    index, metadata = report.problems
    assert f"index file {files.index_path} cannot be read" in index  # 23 vectors, 22 listed
    assert "metadata lists 22 records: 1 that SQLite held when it was saved are missing and " \
        "0 are not in SQLite" in metadata and REPAIR in metadata


@pytest.mark.parametrize("garbage, said", [
    (b"\x00\xff not text", "unreadable"),
    (b"{not json", "not valid JSON"),
    (b"[]", "top level is not an object"),
])
def test_unreadable_metadata_is_said(store, folder, garbage, said):
    view, files = saved(store, folder)
    with open(files.metadata_path, "wb") as handle:
        handle.write(garbage)
    report = verify(view, files, read_only=False)
    only(report, f"metadata {files.metadata_path} is damaged", said)
    assert report.metadata_count is None and report.file_count is None


def test_edited_metadata_is_said(store, folder):
    view, files = saved(store, folder)
    with open(files.metadata_path, "rb") as handle:
        data = handle.read()
    with open(files.metadata_path, "wb") as handle:
        handle.write(data.replace(b'"r1",', b'"x1",', 1))
    report = verify(view, files, read_only=False)
    assert len(report.problems) == 2, report.problems
    damaged, names = report.problems
    assert f"metadata {files.metadata_path} is damaged: its checksum does not match" in damaged
    assert REPAIR in damaged
    assert "metadata names another record or kind than SQLite for 1 labels" in names


def test_missing_metadata_is_said(store, folder):
    view, files = saved(store, folder)
    os.unlink(files.metadata_path)
    only(verify(view, files, read_only=False), f"metadata {files.metadata_path} is missing")


def test_a_missing_index_file_is_said(store, folder, backend):
    view, files = saved(store, folder, backend)
    os.unlink(files.index_path)
    report = verify(view, files, read_only=False)
    only(report, f"index file {files.index_path} cannot be read")
    assert report.file_count is None and report.metadata_count == 23


def test_a_damaged_index_file_is_said(store, folder, backend):
    view, files = saved(store, folder, backend)
    with open(files.index_path, "r+b") as handle:
        handle.seek(-5, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-5, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 0xFF]))
    only(
        verify(view, files, read_only=False),
        f"index file {files.index_path} does not match its metadata checksum",
    )


def test_an_index_file_changed_where_opening_does_not_look_is_said(store, folder):
    """Opening samples the file; verify reads all of it against its sha256."""
    view, files = saved(store, folder)
    rewrite_manifest(files.metadata_path, index_digest="0" * 64)
    only(
        verify(view, files, read_only=False),
        f"index file {files.index_path} has changed since it was saved", REPAIR,
    )


def test_metadata_of_another_store_is_said(tmp_path, store, folder):
    view, files = saved(store, folder)
    others = Connections(str(tmp_path / "other.db"))
    try:
        theirs = others.store()
        theirs.upsert(rows(3, seed=9))
        manifest = read_manifest(files.metadata_path)
        rewrite_manifest(files.metadata_path, store_id=theirs.store_id,
                         database=f"{others.path} (table embeddings)")
        assert manifest.store_id != theirs.store_id
        only(
            verify(view, files, read_only=False),
            f"metadata {files.metadata_path} belongs to another store",
        )
    finally:
        others.close()


def test_verify_reads_sqlite_and_files_in_one_snapshot(db, store, folder, monkeypatch):
    """A commit of another connection while verify reads SQLite is not half seen."""
    view, files = saved(store, folder)
    theirs = db.store()
    scan = store.scan

    def scan_while_another_commits():
        theirs.upsert([row("racing", seed=77)])
        return scan()

    monkeypatch.setattr(store, "scan", scan_while_another_commits)
    report = verify(view, files, read_only=False)
    assert report.ok, report.problems
    assert report.pending_changes == 0 and report.sqlite_count == 23
    np.testing.assert_array_equal(store.get_vector("racing"), unit_vectors(1, DIM, seed=77)[0])
