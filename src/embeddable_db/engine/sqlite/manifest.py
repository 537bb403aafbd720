"""The JSON metadata beside an index file: who owns it, what it holds, and how to check it.

The manifest names its store (``store_id`` from the SQLite meta table), model, dimension,
backend, the index file's generation, size and checksum, the highest SQLite ``seq`` the index
contains, and per record: label, record id, kind, source id, created_at, embedding version, in
columns (``manifest_records``; schema 3, which still reads schema 2's rows). Vectors never go
here: they live in SQLite and in the index.

Files are written to a temporary file in the same folder, fsynced and ``os.replace``d, so a
reader sees the old file or the new one, never half of one. Both temporary files are written
before either is replaced, so a failed write (a full disk) leaves the previous pair intact. The
index is replaced first and the manifest last; a kill in between leaves a manifest whose
checksum does not match the index, which the mixin treats as stale and rebuilds from SQLite.
Temporary files of a writer killed mid-save are deleted by the next open (``remove_stale_temps``).

The manifest ends with a ``checksum`` of everything before it (schema 2): labels and record ids
are what search answers with, so an edited or damaged byte anywhere in the file makes it
untrusted instead of answering with the wrong record. ``parse_manifest`` records the mismatch
in ``damage`` rather than raising: the store still refuses a manifest naming another store or
model (it may be someone else's file) before it rebuilds a damaged one of its own from SQLite.
The digest is over the file's own text, not a re-serialisation, so checking it costs one
sha256 over a few MB at open. ``index_digest`` is a sha256 of the whole index file, taken at
save: ``verify_index()`` reads all of it, while opening only checks ``file_checksum``'s samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from ...files import mode_for, open_regular, permission_denied
from .manifest_records import RECORD_FIELDS, ColumnError, Records

SCHEMA_VERSION = 3  # 2: the manifest checksum and index_digest; 3: records in columns
READABLE_SCHEMAS = (2, 3)
_SAMPLE_BYTES = 64 * 1024
_SAMPLES = 64
_CHUNK = 1 << 20
_CHECKSUM_KEY = ',"checksum":"'
_CHECKSUM_HEX = 64  # sha256
_TEMP_MARK = ".~tmp-"


class ManifestError(ValueError):
    """The manifest is unreadable or malformed (the caller rebuilds it)."""


@dataclass
class Manifest:
    store_id: str
    database: str
    model: str | None
    dim: int | None
    backend: str
    params: dict[str, Any]
    embedding_version: int
    generation: int = 0
    synced_seq: int = 0
    index_size: int | None = None
    index_checksum: str | None = None
    index_digest: str | None = None
    metric: str = "cosine"
    records: Records = field(default_factory=lambda: Records.from_rows([]))
    schema_version: int = SCHEMA_VERSION
    # Why the file's checksum failed (None: intact). Not written: the checksum is.
    damage: str | None = field(default=None, compare=False)

    @property
    def count(self) -> int:
        return len(self.records)

    def to_json(self) -> str:
        """Schema 3: the header, the count, the columns, and ``details`` last of all."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _UNWRITTEN}
        data["schema_version"] = SCHEMA_VERSION
        data["count"] = self.count
        data.update(self.records.to_json_fields())
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        return f'{body[:-1]}{_CHECKSUM_KEY}{_text_digest(body[:-1])}"}}'


def _text_digest(text: str | memoryview) -> str:
    # surrogatepass: a digest must not be the thing that fails on an odd record id.
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def _text_damage(text: str, encoded: bytes | None = None) -> str | None:
    """None when the text ends with ``,"checksum":"<sha256 of everything before it>"}``.

    ``encoded`` is the text's UTF-8 bytes when the caller has them (the file it decoded), so
    they are not made again (~25 ms at 1M records)."""
    end = len(text)
    while end and text[end - 1] in " \t\r\n":
        end -= 1
    tail = len(_CHECKSUM_KEY) + _CHECKSUM_HEX + 2
    suffix = text[end - tail : end]
    if end < tail or not suffix.startswith(_CHECKSUM_KEY) or not suffix.endswith('"}'):
        return "it has no checksum"
    data = text.encode("utf-8", "surrogatepass") if encoded is None else encoded
    body = memoryview(data)[: len(data) - (len(text) - end) - tail]  # the suffix is ASCII
    if suffix[len(_CHECKSUM_KEY) : -2] != _text_digest(body):
        return "its checksum does not match its contents: it was edited or damaged"
    return None


_UNWRITTEN = ("damage", "records", "schema_version")
_TYPES: dict[str, tuple[type, ...]] = {
    "store_id": (str,),
    "database": (str,),
    "model": (str, type(None)),
    "dim": (int, type(None)),
    "backend": (str,),
    "params": (dict,),
    "embedding_version": (int,),
    "generation": (int,),
    "synced_seq": (int,),
    "index_size": (int, type(None)),
    "index_checksum": (str, type(None)),
    "index_digest": (str, type(None)),
    "metric": (str,),
}
_DECODER = json.JSONDecoder()
_SPACE = " \t\r\n"


def parse_manifest(text: str, details: bool = False, encoded: bytes | None = None) -> Manifest:
    """Validate types before use: a damaged or foreign file must not crash the store.

    A well-formed manifest whose checksum fails is returned with ``damage`` set: trust its
    identity fields only to refuse, never its records. Without ``details`` a schema 3 file is
    parsed up to its ``details`` and no further: at 1M records that skips ~40 of its ~50 MB.
    """
    damage = _text_damage(text, encoded)
    try:  # a damaged file is parsed whole: is it JSON at all?
        data = json.loads(text) if details or damage else _fields_before_details(text)
    except (ValueError, RecursionError, IndexError) as exc:
        raise ManifestError(f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ManifestError("top level is not an object")
    schema = data.get("schema_version")
    if type(schema) is not int or schema not in READABLE_SCHEMAS:
        raise ManifestError(
            f"schema_version {schema!r} is not {SCHEMA_VERSION}, the one this version writes, "
            "or an earlier one it reads"
        )
    for key, types in _TYPES.items():
        if key not in data:
            raise ManifestError(f"missing field {key!r}")
        value = data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ManifestError(f"field {key!r} has the wrong type")
    try:
        records = _schema_2_records(data) if schema == 2 else Records.from_json_fields(
            {key: data.get(key) for key in ("labels", "record_ids", "kinds")},
            data.get("details") if details else None,
        )
    except (ColumnError, OverflowError) as exc:
        raise ManifestError(f"malformed records ({exc})") from exc
    return Manifest(**{k: data[k] for k in _TYPES}, records=records, schema_version=schema,
                    damage=damage)


def _schema_2_records(data: dict[str, Any]) -> Records:
    """Schema 2's rows as columns: stores saved before schema 3 open without a rebuild."""
    rows = data.get("records")
    if data.get("record_fields") != RECORD_FIELDS or type(rows) is not list:
        raise ColumnError("unexpected record_fields or records")
    width = len(RECORD_FIELDS)
    for row in rows:  # exact type checks: fast on 100k rows, and a bool is no label
        if (
            type(row) is not list
            or len(row) != width
            or type(row[0]) is not int
            or type(row[1]) is not str
            or type(row[2]) is not str
        ):
            raise ColumnError("malformed record entry")
    return Records.from_rows(rows)


def _fields_before_details(text: str) -> dict[str, Any]:
    """The top-level object's fields up to ``details`` (left unparsed), each value parsed by
    the json module's own decoder; anything unexpected raises ValueError or IndexError."""
    data: dict[str, Any] = {}
    i = _skip_space(text, 0)
    if text[i] != "{":
        return json.loads(text)  # not an object: let the caller say so
    i = _skip_space(text, i + 1)
    while text[i] != "}":
        key, i = _DECODER.raw_decode(text, i)
        i = _skip_space(text, i)
        if not isinstance(key, str) or text[i] != ":":
            raise ValueError(f"a key is not followed by ':' at {i}")
        if key == "details":
            return data
        data[key], i = _DECODER.raw_decode(text, _skip_space(text, i + 1))
        i = _skip_space(text, i)
        if text[i] == ",":
            i = _skip_space(text, i + 1)
        elif text[i] != "}":
            raise ValueError(f"expected ',' or '}}' at {i}")
    return data


def _skip_space(text: str, i: int) -> int:
    while text[i] in _SPACE:
        i += 1
    return i


def read_manifest(path: str, details: bool = False) -> Manifest | None:
    """The manifest at ``path``; None when there is no file; ManifestError when damaged.
    ``details`` also reads each record's source id, creation time and version.

    Only a regular file is read (a FIFO or device at the path is refused, never waited on or
    read forever); a file the user may not read is said to be so, not called damaged.
    """
    try:
        with open_regular(path) as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ManifestError(f"unreadable ({exc})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"unreadable ({exc})") from exc
    return parse_manifest(text, details, data)


def file_checksum(path: str) -> tuple[int, str]:
    """(size, digest) of a file from its size and 64 evenly spaced 64 KiB samples.

    Reading a few MiB instead of the whole index keeps opening a 100k-vector store fast, and
    still catches the damage that happens: truncation, zero-fill, replacement, another file.
    """
    size = os.path.getsize(path)
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as handle:
        if size <= _SAMPLE_BYTES * _SAMPLES:
            digest.update(handle.read())
        else:
            step = (size - _SAMPLE_BYTES) // (_SAMPLES - 1)
            for i in range(_SAMPLES):
                handle.seek(i * step)
                digest.update(handle.read(_SAMPLE_BYTES))
    return size, digest.hexdigest()


def file_digest(path: str) -> str:
    """sha256 of the whole file: what ``verify_index()`` checks (~1 GB/s, 0.15 s per 154 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def temp_path(path: str) -> str:
    """A new temporary name beside ``path``: ``.<name>.~tmp-<16 hex digits>``.

    The ``.~tmp-`` separator cannot continue another index's name into this shape (a
    neighbour ``a.index.v2`` makes ``.a.index.v2.~tmp-...``), so sweeping one store's
    temporary files never touches another's in-flight save.
    """
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.join(folder, f".{os.path.basename(path)}{_TEMP_MARK}{secrets.token_hex(8)}")


def _temp_pattern(path: str) -> re.Pattern[str]:
    name = re.escape(os.path.basename(path))
    # The current shape, and the exact shape of earlier versions (mkstemp's 8 characters).
    return re.compile(rf"\.{name}(?:{re.escape(_TEMP_MARK)}[0-9a-f]{{16}}|\.[a-z0-9_]{{8}}\.tmp)")


def write_temp(path: str, write: Callable[[str], None]) -> str:
    """Call ``write(tmp_path)`` on a new temporary file beside ``path`` and fsync it.

    Returns the temporary path for ``publish``; on failure (a full disk) it is removed and
    ``path`` is untouched. The file gets the permission bits of the file it will replace, or
    those the umask gives a new file (see ``files.mode_for``).
    """
    mode = mode_for(path)
    while True:
        tmp = temp_path(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:
            continue
        except PermissionError as exc:
            raise permission_denied(os.path.dirname(tmp), "write in the folder") from exc
        break
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # last: a 0444 file could not be written by its owner
    except BaseException:
        discard_temp(tmp)
        raise
    return tmp


def publish(tmp: str, path: str) -> None:
    """Atomically put a file from ``write_temp`` in place of ``path``."""
    try:
        os.replace(tmp, path)
    except PermissionError as exc:  # e.g. another user's file in a sticky folder
        raise permission_denied(path, "replace") from exc
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def discard_temp(tmp: str | None) -> None:
    if tmp is None:
        return
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def remove_stale_temps(path: str) -> None:
    """Delete temporary files that a killed writer of ``path`` left behind.

    Call only under the store's file lock: every writer holds it, so any temporary file seen
    then belongs to a process that died mid-save (SIGKILL, power loss) and would otherwise
    stay on disk for good, one index-sized file per crash. Only names of exactly the shape
    ``temp_path`` makes for ``path`` match: never a neighbour's, never a user's file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    pattern = _temp_pattern(path)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if pattern.fullmatch(name):
            full = os.path.join(folder, name)
            if os.path.isfile(full) and not os.path.islink(full):
                discard_temp(full)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_manifest_temp(path: str, manifest: Manifest) -> str:
    """The manifest written to a fsynced temporary file beside ``path``, for ``publish``."""
    text = manifest.to_json()

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    return write_temp(path, write)
