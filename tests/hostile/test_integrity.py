"""Issue 10, items 9, 10 and 6: edited metadata, damage the open-time samples miss, and a store
half re-embedded with another model.

Each test edits the files the way a careless or hostile user (or a bad disk) would and asserts
what that user notices: the right record comes back, one warning says the files are rebuilt,
and ``verify_index()`` names the problem and what to do instead of saying ok.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3

import numpy as np
import pytest
from hostile_helpers import NotesDB

from embeddable_db.engine.sqlite.manifest import _SAMPLE_BYTES, _SAMPLES, file_checksum, parse_manifest
from embeddable_db.engine.sqlite.manifest_records import Records

BACKENDS = {
    "annoy": {"backend": "annoy"},
    "faiss": {"backend": "faiss"},
    "hnsw": {"backend": "faiss", "index_type": "hnsw"},
}
N = 40


def _open(path, backend, **options):
    options.setdefault("model_name", "hash:32")
    return NotesDB(str(path), **BACKENDS[backend], **options)


def _filled(tmp_path, backend, n=N, **options):
    """A saved, closed store of ``n`` notes; returns its path."""
    path = tmp_path / "n.db"
    db = _open(path, backend, **options)
    for i in range(n):
        db.conn.execute("INSERT INTO notes(id, body) VALUES (?, ?)", (i + 1, f"note {i + 1} {i * 7}"))
    db.conn.commit()
    db.backfill_embeddings()
    db.save_index()
    db.close()
    db.conn.close()
    return path


def _vector(path, record_id):
    conn = sqlite3.connect(str(path))
    try:
        (blob,) = conn.execute(
            "SELECT vector FROM embeddings WHERE record_id = ?", (str(record_id),)
        ).fetchone()
    finally:
        conn.close()
    return np.frombuffer(blob, "<f4").copy()


def _metadata(path):
    return str(path).removesuffix(".db") + "_embeddings.json"


def _swap_ids_in_text(meta, a, b):
    """Swap two records' ids in the JSON text, byte for byte (same length, still valid JSON)."""
    text = open(meta, encoding="utf-8").read()
    first, second = f',"{a}",', f',"{b}",'
    assert text.count(first) == 1 and text.count(second) == 1
    text = text.replace(first, "\0").replace(second, first).replace("\0", second)
    with open(meta, "w", encoding="utf-8") as handle:
        handle.write(text)


def _edit_labels_text(meta, runs, reseal=False):
    """Put other label runs in the JSON text; ``reseal`` gives it a valid checksum again."""
    text = open(meta, encoding="utf-8").read()
    start = text.index('"labels":') + len('"labels":')
    _, end = json.JSONDecoder().raw_decode(text, start)
    text = text[:start] + json.dumps(runs, separators=(",", ":")) + text[end:]
    if reseal:
        body = text[: text.rindex(',"checksum":')]
        text = f'{body},"checksum":"{hashlib.sha256(body.encode()).hexdigest()}"}}'
    with open(meta, "w", encoding="utf-8") as handle:
        handle.write(text)


def _forge(meta, edit_rows=None, edit=None):
    """Edit the manifest (or its rows) and write it back with a valid checksum, as a user of
    this library's own manifest module could: only a comparison with SQLite can catch this."""
    manifest = parse_manifest(open(meta, encoding="utf-8").read(), details=True)
    if edit_rows is not None:
        rows = manifest.records.rows()
        edit_rows(rows)
        manifest.records = Records.from_rows(rows)
    if edit is not None:
        edit(manifest)
    with open(meta, "w", encoding="utf-8") as handle:
        handle.write(manifest.to_json())


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# -- item 9: the metadata JSON ----------------------------------------------------------------
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_ids_swapped_in_the_metadata_are_not_served(tmp_path, backend, caplog):
    path = _filled(tmp_path, backend)
    _swap_ids_in_text(_metadata(path), 3, 7)
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        db = _open(path, backend)
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "checksum" in warnings[0] and "rebuilding" in warnings[0]
    assert db.search_by_vector(_vector(path, 3), top_k=1)[0][0] == "3"
    assert db.search_by_vector(_vector(path, 7), top_k=1)[0][0] == "7"
    # The FAISS case: a removed record came back after save and reopen.
    assert db.remove_embedding(3)
    db.save_index()
    db.close()
    again = _open(path, backend)
    assert "3" not in [rid for rid, _ in again.search_by_vector(_vector(path, 7), top_k=N)]
    assert again.search_by_vector(_vector(path, 7), top_k=1)[0][0] == "7"
    assert again.verify_index().ok


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_verify_finds_ids_swapped_in_a_metadata_file_with_a_valid_checksum(tmp_path, backend):
    path = _filled(tmp_path, backend)

    def swap(rows):
        by_id = {row[1]: row for row in rows}
        by_id["3"][1], by_id["7"][1] = "7", "3"

    _forge(_metadata(path), swap)
    db = _open(path, backend)
    report = db.verify_index()
    assert not report.ok
    assert any("wrong records" in p and "rebuild_index()" in p for p in report.problems), (
        report.problems
    )
    repaired = db.verify_index(repair=True)
    assert repaired.repaired and repaired.ok, repaired.problems
    assert db.search_by_vector(_vector(path, 3), top_k=1)[0][0] == "3"
    db.close()


@pytest.mark.parametrize("backend", ["annoy", "faiss"])
@pytest.mark.parametrize("forged", [False, True], ids=["edited", "forged"])
def test_shifted_labels_rebuild_or_are_reported(tmp_path, backend, forged, caplog):
    """Labels moved by one: no None ids or KeyError; a search answers right or verify says why."""
    path = _filled(tmp_path, backend)
    meta = _metadata(path)

    def shift(rows):  # down by one: still ascending and within SQLite's labels
        for row in rows:
            row[0] -= 1

    if forged:
        _forge(meta, shift)
    else:
        _edit_labels_text(meta, [[2, N]])
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        db = _open(path, backend)
    hits = db.search_by_vector(_vector(path, 5), top_k=N)
    assert all(isinstance(rid, str) for rid, _ in hits) and len(hits) == N
    if _warnings(caplog):  # refused at open (checksum, or ids beyond SQLite's, or FAISS ids)
        assert len(_warnings(caplog)) == 1 and "rebuilding" in _warnings(caplog)[0]
        assert hits[0][0] == "5" and db.verify_index().ok
    else:  # forged consistently for Annoy: only the full comparison with SQLite can tell
        assert backend == "annoy" and forged
        problems = db.verify_index().problems
        assert any("wrong records" in p for p in problems), problems
        assert db.verify_index(repair=True).ok
        assert db.search_by_vector(_vector(path, 5), top_k=1)[0][0] == "5"
    db.close()


@pytest.mark.parametrize("label", [10**15, 2**63], ids=["1e15", "2**63"])
@pytest.mark.parametrize("forged", [False, True], ids=["edited", "forged"])
def test_a_huge_label_does_not_make_the_store_unopenable(tmp_path, forged, label, caplog):
    path = _filled(tmp_path, "faiss")
    meta = _metadata(path)
    if forged:
        _edit_labels_text(meta, [[1, N - 1], [label, 1]], reseal=True)
    else:
        _edit_labels_text(meta, [[1, N - 1], [label, 1]])
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        db = _open(path, "faiss")  # a list of 10**15 entries was allocated here
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "rebuilding" in warnings[0], warnings
    assert db.search_by_vector(_vector(path, 40), top_k=1)[0][0] == "40"
    assert db.verify_index().ok
    db.close()


def test_a_record_id_listed_twice_is_found_by_verify_and_repaired(tmp_path):
    """Only a file forged with a valid checksum lists an id twice; like swapped ids, opening
    does not pay to look (a set of 1M ids is a third of the open), verify_index() finds it."""
    path = _filled(tmp_path, "faiss")
    _forge(_metadata(path), lambda rows: rows[4].__setitem__(1, rows[5][1]))
    db = _open(path, "faiss")
    problems = db.verify_index().problems
    assert any("wrong records" in p for p in problems), problems
    assert db.verify_index(repair=True).ok
    assert db.search_by_vector(_vector(path, 5), top_k=1)[0][0] == "5"
    db.close()


# -- item 10: damage the open-time samples do not read ---------------------------------------
def _gap_offset(index_path, vector):
    """Where ``vector``'s bytes sit in the index file, entirely between two checksum samples."""
    data = open(index_path, "rb").read()
    size = len(data)
    assert size > _SAMPLE_BYTES * _SAMPLES, "the file must be larger than the samples"
    step = (size - _SAMPLE_BYTES) // (_SAMPLES - 1)
    needle = vector.astype("<f4").tobytes()
    offset = data.find(needle)
    assert offset >= 0
    start = offset % step
    return offset if _SAMPLE_BYTES <= start and start + len(needle) <= step else None


@pytest.fixture
def big_store(tmp_path):
    """A saved store whose index file is ~3x what the 64 samples of 64 KiB read."""

    def make(backend):
        return _filled(tmp_path, backend, n=8000, model_name="hash:384")

    return make


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("forged", [False, True], ids=["overwritten", "checksums-forged"])
def test_one_vector_overwritten_between_samples_is_found_by_verify(
    big_store, backend, forged, caplog
):
    path = big_store(backend)
    index_path = str(path).removesuffix(".db") + "_embeddings.index"
    meta = _metadata(path)
    offset = victim = None
    for record in range(1, 8001, 7):
        offset = _gap_offset(index_path, _vector(path, record))
        if offset is not None:
            victim = record
            break
    assert victim is not None
    with open(index_path, "r+b") as handle:  # another record's vector in its place
        handle.seek(offset)
        handle.write(_vector(path, victim + 1).astype("<f4").tobytes())
    if forged:  # the user also fixed both checksums: only reading the vectors back tells

        def reseal(manifest):
            manifest.index_size, manifest.index_checksum = file_checksum(index_path)
            manifest.index_digest = hashlib.sha256(open(index_path, "rb").read()).hexdigest()

        _forge(meta, edit=reseal)
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        db = _open(path, backend, model_name="hash:384")
    assert _warnings(caplog) == []  # open only samples the file: this damage is served
    report = db.verify_index()
    assert not report.ok
    assert any(index_path in p and "rebuild_index()" in p for p in report.problems), report.problems
    assert db.verify_index(repair=True).ok
    assert db.search_by_vector(_vector(path, victim), top_k=1)[0][0] == str(victim)
    db.close()


# -- item 6 (library part): a store half re-embedded with another model ------------------------
@pytest.mark.parametrize("backend", ["annoy", "faiss"])
def test_verify_reports_a_half_switched_store_and_what_to_do(tmp_path, backend):
    path = _filled(tmp_path, backend, model_name="hash:16")
    db = _open(path, backend, model_name="hash:24", allow_model_change=True)
    db.add_embeddings([(i, {"body": f"note {i}"}, "note") for i in range(1, 16)])
    report = db.verify_index()
    assert not report.ok
    [problem] = [p for p in report.problems if "models" in p]
    assert "25 by 'hash:16'" in problem and "15 by 'hash:24'" in problem
    assert db.model_counts() == {"hash:16": 25, "hash:24": 15}  # what stats shows: the same
    assert "model_name='hash:24'" in problem and "backfill_embeddings()" in problem
    assert "--allow-model-change" in problem
    assert db.verify_index(repair=True).problems == [problem]  # a rebuild cannot finish it
    db.backfill_embeddings()
    assert db.verify_index().ok and db.model_counts() == {"hash:24": N}
    db.close()


def test_an_intact_store_verifies_ok_on_every_backend(tmp_path):
    """The new checks do not cry wolf: a store with pending changes and removals is ok."""
    for backend in BACKENDS:
        folder = tmp_path / backend
        folder.mkdir()
        path = _filled(folder, backend)
        db = _open(path, backend)
        db.remove_embedding(2)
        db.add_embedding(3, {"body": "changed text"}, "note")
        assert db.verify_index().ok, (backend, db.verify_index().problems)
        db.close()
        again = _open(path, backend)
        assert again.verify_index().ok
        assert os.path.exists(again.index_path)
        again.close()


def test_metadata_of_the_previous_schema_is_rebuilt_once(tmp_path, caplog):
    """Schema 1 had no checksum: such a file is rebuilt with one warning, then opens silently."""
    path = _filled(tmp_path, "annoy")
    meta = _metadata(path)
    text = open(meta, encoding="utf-8").read()
    body = text[: text.rindex(',"checksum":')]
    body = body.replace('"schema_version":3', '"schema_version":1')
    body = body.replace(body[body.index('"index_digest":') : body.index(',"metric"')] + ",", "")
    open(meta, "w", encoding="utf-8").write(body + "}")
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        db = _open(path, "annoy")
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "schema_version 1" in warnings[0] and "rebuilding" in warnings[0]
    assert db.search_by_vector(_vector(path, 9), top_k=1)[0][0] == "9"
    db.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        again = _open(path, "annoy")
    assert _warnings(caplog) == [] and again.verify_index().ok
    again.close()
