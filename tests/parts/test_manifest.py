"""manifest.py on its own: a manifest reads back as written; a damaged one is never trusted
(ManifestError, or ``damage`` set when only its checksum fails); files are replaced whole."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from embeddable_db.engine.sqlite.manifest import (
    SCHEMA_VERSION,
    Manifest,
    ManifestError,
    discard_temp,
    file_checksum,
    file_digest,
    parse_manifest,
    publish,
    read_manifest,
    remove_stale_temps,
    temp_path,
    write_manifest_temp,
    write_temp,
)
from embeddable_db.engine.sqlite.manifest_records import RECORD_FIELDS, Records
from embeddable_db.errors import StoreConflictError

ROWS = [
    [1, "1", "note", "", "2026-01-01T00:00:00+00:00", 3],
    [5, "café ☕ 日本", "faq", "src-9", "2026-01-02T00:00:00+00:00", 2],
    [9, 'quote " and \\ backslash', "note", "", "2026-01-03T00:00:00+00:00", 3],
]


def manifest(**changes) -> Manifest:
    values = dict(
        store_id="0" * 32,
        database="/data/notes.db",
        model="hash:32",
        dim=32,
        backend="faiss",
        params={"index_type": "flat"},
        embedding_version=3,
        generation=7,
        synced_seq=42,
        index_size=1234,
        index_checksum="ab" * 16,
        index_digest="cd" * 32,
        records=Records.from_rows(ROWS),
    )
    values.update(changes)
    return Manifest(**values)


def save(path, m: Manifest) -> None:
    publish(write_manifest_temp(str(path), m), str(path))


def damaged_text(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1
    return text.replace(old, new)


# -- round trip ----------------------------------------------------------------------------------
def test_a_manifest_reads_back_as_written(tmp_path):
    path = tmp_path / "index.meta.json"
    written = manifest()
    save(path, written)
    read = read_manifest(str(path), details=True)
    assert read == written and read.damage is None and read.records.rows() == ROWS
    opened = read_manifest(str(path))  # what opening reads: everything but the details
    assert opened.records.details is None and opened.damage is None
    assert opened.records.pairs() == {1: ("1", "note"), 5: ("café ☕ 日本", "faq"),
                                      9: ('quote " and \\ backslash', "note")}
    data = json.loads(path.read_text("utf-8"))
    assert data["count"] == 3 and data["schema_version"] == SCHEMA_VERSION == 3
    assert list(data)[-2:] == ["details", "checksum"]  # what opening skips comes last
    assert data["labels"] == [[1, 1], [5, 1], [9, 1]]
    assert "damage" not in data and len(data["checksum"]) == 64
    assert os.listdir(tmp_path) == ["index.meta.json"]  # no temporary file left


def test_an_empty_store_round_trips(tmp_path):
    path = tmp_path / "m.json"
    save(path, manifest(model=None, dim=None, records=Records.from_rows([]), index_size=None,
                        index_checksum=None,
                        index_digest=None))
    read = read_manifest(str(path))
    assert read.model is None and read.count == 0 and read.damage is None


def test_no_file_is_none_not_an_error(tmp_path):
    assert read_manifest(str(tmp_path / "absent.json")) is None


def test_trailing_whitespace_is_not_damage():
    assert parse_manifest(manifest().to_json() + "\n\r\n  ").damage is None


# -- damage ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cut", [0, 1, 100, -1, -2, -70])
def test_a_truncated_manifest_is_a_manifest_error(tmp_path, cut):
    path = tmp_path / "m.json"
    save(path, manifest())
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut > 0 else data[:len(data) + cut] if cut else b"")
    with pytest.raises(ManifestError):
        read_manifest(str(path))


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe\x00garbage",  # not UTF-8
        b"not json at all",
        b"[1, 2, 3]",  # not an object
        b"null",
        b"[" * 100_000 + b"]" * 100_000,  # nested past the parser's recursion limit
        b"\x00" * 4096,  # a zero-filled block
    ],
)
def test_garbage_is_a_manifest_error(tmp_path, data):
    path = tmp_path / "m.json"
    path.write_bytes(data)
    with pytest.raises(ManifestError):
        read_manifest(str(path))


def test_a_changed_byte_is_damage_not_trusted_records():
    text = manifest().to_json()
    edited = parse_manifest(damaged_text(text, '"café', '"cafe'))  # valid JSON, another id
    assert edited.damage and "does not match" in edited.damage
    # Its identity stays readable, so a store can still refuse another store's file.
    assert edited.store_id == "0" * 32 and edited.model == "hash:32"
    relabelled = parse_manifest(damaged_text(text, "[5,", "[6,"))
    assert relabelled.damage and "does not match" in relabelled.damage


def test_a_checksum_that_was_edited_or_removed_is_damage():
    text = manifest().to_json()
    body, digest = text[: -len('"}') - 64], text[-len('"}') - 64 : -2]
    flipped = "0" if digest[0] != "0" else "1"
    assert "does not match" in parse_manifest(body + flipped + digest[1:] + '"}').damage
    without = json.loads(text)
    without.pop("checksum")
    assert parse_manifest(json.dumps(without)).damage == "it has no checksum"


def test_a_schema_2_manifest_of_rows_is_still_read(tmp_path):
    """Stores saved before schema 3 open without a rebuild; the next save writes schema 3."""
    data = json.loads(manifest().to_json())
    for key in ("labels", "record_ids", "kinds", "details", "checksum"):
        del data[key]
    data.update(schema_version=2, records=ROWS, record_fields=RECORD_FIELDS)
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)[:-1]
    digest = hashlib.sha256(body.encode()).hexdigest()
    read = parse_manifest(f'{body},"checksum":"{digest}"}}')
    assert read.damage is None and read.schema_version == 2 and read.records.rows() == ROWS
    assert json.loads(read.to_json())["schema_version"] == 3


@pytest.mark.parametrize("schema", [1, 4, "3", None])
def test_another_schema_is_a_manifest_error(schema):
    data = json.loads(manifest().to_json())
    data["schema_version"] = schema
    with pytest.raises(ManifestError, match="schema_version"):
        parse_manifest(json.dumps(data))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("store_id", 7),
        ("dim", "32"),
        ("dim", True),  # a bool is no int here
        ("generation", None),
        ("params", []),
        ("labels", {}),
        ("labels", [[True, 3]]),  # a bool is no label
        ("labels", [[1.0, 3]]),
        ("labels", [[1, 2]]),  # covers two records of three
        ("labels", [[1, 3, 1]]),
        ("labels", [[1, -3], [2, 6]]),
        ("labels", [[2**70, 3]]),
        ("labels", [[1, 10**12]]),  # never expanded: it does not cover the three records
        ("labels", ["1"]),
        ("record_ids", [1, 5, 9]),
        ("record_ids", ["1", "5"]),
        ("record_ids", "159"),
        ("kinds", ["note", "faq", "note"]),
        ("kinds", {"values": ["note"], "runs": [[0, 2], [1, 1]]}),  # code 1 is no value
        ("kinds", {"values": ["note", 5], "runs": [[0, 3]]}),
        ("kinds", {"values": ["note"], "runs": [[0, 4]]}),
    ],
)
def test_a_field_of_the_wrong_shape_is_a_manifest_error(key, value):
    data = json.loads(manifest().to_json())
    data[key] = value
    with pytest.raises(ManifestError):
        parse_manifest(json.dumps(data))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("created_at", ["", ""]),
        ("created_at", [1, 2, 3]),
        ("source_id", {"values": [""], "runs": [[0, 2]]}),
        ("embedding_version", {"values": ["3"], "runs": [[0, 3]]}),
    ],
)
def test_details_of_the_wrong_shape_are_a_manifest_error_for_readers_of_details(key, value):
    data = json.loads(manifest().to_json())
    data["details"][key] = value
    text = json.dumps(data)
    with pytest.raises(ManifestError):
        parse_manifest(text, details=True)
    assert parse_manifest(text).records.details is None  # opening never reads them


def test_a_missing_field_is_a_manifest_error():
    data = json.loads(manifest().to_json())
    del data["synced_seq"]
    with pytest.raises(ManifestError, match="synced_seq"):
        parse_manifest(json.dumps(data))


def test_what_is_not_a_regular_file_is_refused_not_read(tmp_path):
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(StoreConflictError, match="a folder"):
        read_manifest(str(folder))
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(StoreConflictError, match="a FIFO"):  # returns at once: never waits
        read_manifest(str(fifo))


# -- atomic writes -------------------------------------------------------------------------------
def test_a_write_that_fails_before_publish_leaves_the_old_file(tmp_path):
    path = tmp_path / "m.json"
    save(path, manifest(generation=1))
    old = path.read_bytes()

    def fail_midway(tmp):
        with open(tmp, "w") as handle:
            handle.write('{"half": ')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_temp(str(path), fail_midway)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["m.json"]

    tmp = write_manifest_temp(str(path), manifest(generation=2))  # written, never published
    assert path.read_bytes() == old and read_manifest(str(path)).generation == 1
    discard_temp(tmp)
    discard_temp(tmp)  # a second discard (or None) is harmless
    discard_temp(None)
    assert os.listdir(tmp_path) == ["m.json"]
    save(path, manifest(generation=3))
    assert read_manifest(str(path)).generation == 3


def test_a_published_file_keeps_the_permissions_of_the_one_it_replaces(tmp_path):
    path = tmp_path / "m.json"
    save(path, manifest())
    os.chmod(path, 0o640)
    save(path, manifest(generation=8))
    assert os.stat(path).st_mode & 0o777 == 0o640
    os.chmod(path, 0o444)  # even a read-only one is replaced, and stays read-only
    save(path, manifest(generation=9))
    assert os.stat(path).st_mode & 0o777 == 0o444 and read_manifest(str(path)).generation == 9


def test_temp_names_sit_beside_the_file(tmp_path):
    path = str(tmp_path / "notes.index")
    first, second = temp_path(path), temp_path(path)
    assert first != second
    assert os.path.dirname(first) == str(tmp_path)
    assert os.path.basename(first).startswith(".notes.index.~tmp-")


def test_stale_temps_of_this_file_are_removed_and_nothing_else(tmp_path):
    path = str(tmp_path / "notes.index")
    stale = [temp_path(path), temp_path(path), str(tmp_path / ".notes.index.ab12cd_9.tmp")]
    others = [
        path,
        temp_path(str(tmp_path / "notes.index.v2")),  # a neighbour's save in flight
        temp_path(str(tmp_path / "other.index")),
        str(tmp_path / ".notes.index.~tmp-123"),  # not the shape temp_path makes
        str(tmp_path / ".notes.index.~tmp-0123456789ABCDEF"),
        str(tmp_path / "notes.index.~tmp-0123456789abcdef"),  # no leading dot
        str(tmp_path / ".notes.index.ABCDEFGH.tmp"),
    ]
    for name in stale + others:
        with open(name, "w") as handle:
            handle.write("x")
    folder = temp_path(path)
    os.mkdir(folder)  # a folder of the right shape is left alone
    link = temp_path(path)
    os.symlink(path, link)  # and so is a symlink (whatever it points at stays)
    remove_stale_temps(path)
    left = set(os.listdir(tmp_path))
    assert not left & {os.path.basename(n) for n in stale}
    assert {os.path.basename(n) for n in [*others, folder, link]} <= left
    assert os.path.exists(path)
    remove_stale_temps(str(tmp_path / "missing-folder" / "x.index"))  # no folder: no error


# -- checksums -----------------------------------------------------------------------------------
def write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_file_checksum_of_a_small_file_covers_every_byte(tmp_path):
    data = os.urandom(100_000)
    size, digest = file_checksum(write(tmp_path / "a", data))
    assert size == 100_000 and len(digest) == 32
    assert file_checksum(write(tmp_path / "b", data)) == (size, digest)  # content, not name
    changed = bytearray(data)
    changed[54_321] ^= 1
    assert file_checksum(write(tmp_path / "c", bytes(changed)))[1] != digest
    assert file_checksum(write(tmp_path / "d", data[:-1]))[0] == 99_999
    empty = file_checksum(write(tmp_path / "e", b""))
    assert empty[0] == 0 and empty != file_checksum(write(tmp_path / "f", b"\0"))


SAMPLE = 64 * 1024
BIG = 8 * 1024 * 1024  # 64 samples of 64 KiB, 129 KiB apart: gaps between them
STEP = (BIG - SAMPLE) // 63


def test_file_checksum_of_a_large_file_samples_it_and_file_digest_reads_it_all(tmp_path):
    data = bytearray(os.urandom(BIG))
    path = tmp_path / "big.index"
    checksum = file_checksum(write(path, bytes(data)))
    digest = file_digest(str(path))
    assert checksum[0] == BIG and digest == hashlib.sha256(data).hexdigest()

    sampled = (0, SAMPLE - 1, 32 * STEP + 100, 63 * STEP)
    between = (SAMPLE + 100, 40 * STEP + SAMPLE + 10)
    for offset in sampled + between:
        data[offset] ^= 0xFF
        changed = file_checksum(write(path, bytes(data)))
        assert file_digest(str(path)) != digest  # every byte counts in the full digest
        assert (changed != checksum) == (offset in sampled)  # only sampled bytes count here
        data[offset] ^= 0xFF

    zeroed = bytes(BIG // 2) + bytes(data[BIG // 2 :])  # a zero-filled first half
    assert file_checksum(write(path, zeroed)) != checksum
    assert file_checksum(write(path, bytes(data[:-4096])))[0] == BIG - 4096


@pytest.mark.xfail(strict=True, reason="file_checksum's last sample starts at 63 * "
                   "((size - 64 KiB) // 63), which rounds down: up to the last 62 bytes of a "
                   "large index are never sampled (16 at 8 MiB), so damage there passes the "
                   "open-time check")
def test_file_checksum_samples_the_last_bytes_of_a_large_file(tmp_path):
    data = bytearray(os.urandom(BIG))
    path = tmp_path / "big.index"
    checksum = file_checksum(write(path, bytes(data)))
    data[-1] ^= 0xFF
    assert file_checksum(write(path, bytes(data))) != checksum
