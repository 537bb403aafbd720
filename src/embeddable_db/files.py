"""Path safety for the index and metadata files: what a store may open, read and replace.

Paths are text of UTF-8 characters (the index libraries and the JSON manifest carry nothing
else) and are resolved once, so a symlinked path, its lock and its files are the target's.
Only regular files are opened, never in a way that blocks on a FIFO or reads a device without
end, and the database's own files are never an index or metadata path. A file the user may
not read is said to be so ("permission denied"), never taken for damage and rebuilt. Which
existing files are the store's own is decided in ``ownership.py`` with ``check_replaceable``.
A replacement file gets the permission bits of the file it replaces, else the umask's.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
from collections.abc import Callable, Iterable
from typing import Any

from .errors import EmbeddingError, InvalidInputError, StoreConflictError

FILE_IDS_KEY = "file_ids"  # meta key: [[st_dev, st_ino], ...] of the files last published
_CHUNK = 1 << 20

FileId = tuple[int, int]


def text_path(value: Any, name: str) -> str:
    """``value`` as a str path, refusing what the index libraries and JSON cannot carry.

    A bytes path or a str with surrogate escapes (undecodable bytes) passed the checks and
    failed deep in SWIG or a codec; a NUL byte fails in the OS. One clear error instead.
    """
    try:
        path = os.fspath(value)
    except TypeError as exc:
        raise InvalidInputError(
            f"{name} must be a str or os.PathLike (index_path and metadata_path must be "
            f"paths), got {type(value).__name__}"
        ) from exc
    if isinstance(path, bytes):
        try:
            path = path.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(
                f"{name} {value!r} is not valid UTF-8: choose a path of UTF-8 characters"
            ) from exc
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{name} {path.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8: choose a "
            "path of UTF-8 characters"
        ) from exc
    if "\0" in path:
        raise InvalidInputError(f"{name} {path!r} contains a NUL character")
    return path


def resolved(value: Any, name: str) -> str:
    """The absolute path with symlinks resolved, once: the lock and the files are the target's."""
    return os.path.realpath(os.path.abspath(text_path(value, name)))


def permission_denied(path: str, action: str = "read") -> EmbeddingError:
    return EmbeddingError(
        f"permission denied to {action} {path}: ask its owner to give you access (for a "
        "shared folder: chmod g+rw and a common group), or choose another index_path/"
        "metadata_path"
    )


def _not_regular(path: str, mode: int) -> StoreConflictError:
    kind = (
        "a folder" if stat.S_ISDIR(mode)
        else "a FIFO" if stat.S_ISFIFO(mode)
        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    return StoreConflictError(
        f"{path} is {kind}, not a regular file: the store only reads and replaces its own "
        "regular files; choose another index_path/metadata_path"
    )


def _raise_plainly(path: str, exc: OSError) -> None:
    """Raise an OS error on a store file as the user should read it (permission denied, a
    symlink loop, named); return for anything else, which the caller re-raises as it came."""
    if isinstance(exc, PermissionError):
        raise permission_denied(path) from exc
    if exc.errno == errno.ELOOP:
        raise StoreConflictError(f"{path} is a symlink loop: delete it") from exc


def stat_regular(path: str) -> os.stat_result | None:
    """The stat of a regular file at ``path``; None when there is none; refused otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _raise_plainly(path, exc)
        raise
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    return st


def open_regular(path: str):
    """``path`` opened for binary reading, only if it is a regular file.

    O_NONBLOCK makes opening a FIFO return at once (instead of waiting for a writer), and
    fstat on the open descriptor checks the very file that will be read. FileNotFoundError
    passes through; lack of permission is said as such, not as damage.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        _raise_plainly(path, exc)
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def holds_nothing(path: str) -> bool:
    """True for an empty file or one of only zero bytes: replacing it loses nothing."""
    with open_regular(path) as handle:
        while chunk := handle.read(_CHUNK):
            if chunk.count(0) != len(chunk):
                return False
    return True


def same_path(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def database_file(conn: sqlite3.Connection) -> str:
    """The main database's file, '' for an in-memory database."""
    try:
        row = next((r for r in conn.execute("PRAGMA database_list") if r[1] == "main"), None)
    except sqlite3.OperationalError as exc:  # "Could not decode to UTF-8 column 'file'"
        raise InvalidInputError(
            f"the database's file name is not valid UTF-8 ({exc}): choose a path of UTF-8 "
            "characters"
        ) from exc
    return row[2] if row and row[2] else ""


def check_not_database(path: str, db_file: str, name: str, option: str | None = None) -> None:
    """Refuse the database's own file and its companions, however the path is spelled."""
    if not db_file:
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        if same_path(path, db_file + suffix):
            part = f" ({suffix[1:]} file)" if suffix else ""
            raise StoreConflictError(
                f"{name} {path} is the database's own file{part} ({db_file}): choose another "
                f"{option or name}"
            )


def check_lock_path(lock_path: str) -> None:
    """A planted symlink at the lock path gave a raw ELOOP; say what it is and what to do."""
    if os.path.islink(lock_path):
        raise EmbeddingError(lock_symlink_message(lock_path))


def lock_symlink_message(lock_path: str) -> str:
    return (
        f"the lock file {lock_path} is a symlink, which the store never makes and will not "
        "follow: delete it (no process of this store is using it)"
    )


def stat_key(path: str) -> tuple[int, ...] | None:
    """What changes when a file is replaced or rewritten (None when there is no file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def file_id(st: os.stat_result) -> FileId:
    return (st.st_dev, st.st_ino)


def known_ids(read_meta: Callable[[str], str | None]) -> set[FileId] | None:
    """The ids of the files the store last published; None when it never recorded any."""
    try:
        value = read_meta(FILE_IDS_KEY)
    except sqlite3.OperationalError:  # no meta table yet: a new store owns no files
        return None
    if value is None:
        return None
    try:
        return {(int(dev), int(ino)) for dev, ino in json.loads(value)}
    except (ValueError, TypeError):
        return set()


def merged_ids(new: Iterable[FileId], old: Iterable[FileId]) -> str:
    ids: list[FileId] = []
    for item in [*new, *old]:
        if item not in ids:
            ids.append(item)
    return json.dumps([list(item) for item in ids])


def check_replaceable(
    path: str,
    what: str,
    known: set[FileId] | None,
    trusted: Callable[[], bool],
) -> os.stat_result | None:
    """Raise StoreConflictError unless the file at ``path`` may be replaced by the store.

    Returns its stat (None when there is no file). ``trusted()`` is the content test (a
    manifest of this store or database; an index matching it), asked only when the file is
    not one the store recorded, so an ordinary open costs one stat.
    """
    st = stat_regular(path)
    if st is None or (known and file_id(st) in known):
        return st
    if trusted() or holds_nothing(path):
        return st
    raise StoreConflictError(
        f"{path} already exists and is not this store's {what} file (the store did not write "
        "it, and will not replace it): choose another index_path/metadata_path, or delete the "
        "file if you do not need it"
    )


def check_readable(path: str) -> None:
    """Open and close ``path`` if it exists: a permission problem is said before any repair."""
    try:
        open_regular(path).close()
    except FileNotFoundError:
        pass


def current_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it the only portable way, and put it back
    os.umask(mask)
    return mask


def mode_for(path: str) -> int:
    """Permission bits for a file about to replace ``path``: the old file's, else the umask's.

    A temporary file is created 0600; published as is, another user of a shared folder could
    no longer read it. Keeping the old file's bits keeps a user's ``chmod`` (0444 included).
    """
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode) & 0o777
    return 0o666 & ~current_umask()
