"""What the command prints: tables, JSON, progress, and what happens when nobody reads it.

Stored text comes from any program that writes the databases, so it is escaped before it
reaches a terminal (an ESC or NUL byte must not drive it) and non-finite numbers never make
the JSON invalid. Output is best effort: a closed pipe (``| head -1``) or a full disk stops the
printing, never the work; the command still finishes and exits with its own status.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..reports import BackfillResult

# C0 and C1 controls and DEL, line/paragraph separators, bidirectional overrides and isolates
# (they reorder what a terminal shows), lone surrogates (they cannot even be encoded).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def clean(value: Any) -> str:
    """``str(value)`` with control characters as ``\\x1b``-style escapes; other text as is."""
    return _UNSAFE.sub(_escape, str(value))


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None, so that the JSON is valid for any reader."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(json_safe(value), indent=1, default=str, allow_nan=False)


def print_table(lines: Sequence[Sequence[Any]]) -> None:
    cells = [[clean(cell) for cell in line] for line in lines]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    for line in cells:
        out = [cell.ljust(w) if i == 0 else cell.rjust(w)
               for i, (cell, w) in enumerate(zip(line, widths, strict=True))]
        print("  ".join(out).rstrip())


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def warn(text: str) -> None:
    """One line on stderr, escaped (it may quote paths, ids or stored text)."""
    print(clean(text), file=sys.stderr, flush=True)


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise."""

    #: Plain lines come at most this often (and always for the last record): a 1M-record
    #: backfill called back 10,000 times.
    EVERY_SECONDS = 2.0

    def __init__(self, name: str, total: int) -> None:
        self.name = name
        self.total = total
        self.bar = None
        self.started = time.monotonic()
        self.said = -math.inf
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=name, unit="rec", leave=False, file=sys.stderr)

    def __call__(self, result: BackfillResult | int) -> None:
        done = result if isinstance(result, int) else result.processed
        if self.bar is not None:
            self.bar.n = done
            self.bar.refresh()
            return
        now = time.monotonic()
        if now - self.said < self.EVERY_SECONDS and done < self.total:
            return
        self.said = now
        rate = done / max(now - self.started, 1e-9)
        left = f", {(self.total - done) / rate:.0f} s left" if rate and done < self.total else ""
        print(f"{self.name}: {done}/{self.total} records ({rate:,.0f} records/s{left})",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class QuietStream:
    """A stdout or stderr that swallows write errors: the first one stops the printing only."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.error: OSError | None = None

    def write(self, text: str) -> int:
        if self.error is None:
            try:
                try:
                    self.stream.write(text)
                except UnicodeEncodeError:  # a terminal that cannot show some character
                    encoding = getattr(self.stream, "encoding", None) or "ascii"
                    self.stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
            except OSError as exc:
                self.error = exc
        return len(text)

    def flush(self) -> None:
        if self.error is None:
            try:
                self.stream.flush()
            except OSError as exc:
                self.error = exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class GuardedOutput:
    """Install ``QuietStream`` on stdout and stderr for one command; ``finish`` undoes it."""

    def __init__(self) -> None:
        self.saved = (sys.stdout, sys.stderr)
        self.out, self.err = QuietStream(sys.stdout), QuietStream(sys.stderr)
        sys.stdout, sys.stderr = self.out, self.err

    def finish(self, code: int) -> int:
        """The exit code: the command's own, also after a closed pipe (``| head`` is normal
        use); 1 if output was lost to another error (such as a full disk) and it was 0."""
        self.out.flush()
        self.err.flush()
        sys.stdout, sys.stderr = self.saved
        lost = False
        for quiet in (self.out, self.err):
            if quiet.error is None:
                continue
            lost = lost or not isinstance(quiet.error, BrokenPipeError)
            _point_at_devnull(quiet.stream)  # what is still buffered goes nowhere, quietly
        if lost:
            other = self.err if self.err.error is None else None
            if other is not None:
                failed = self.out.error
                other.write(f"could not write the output: {failed}\n")
                other.flush()
            return code or 1
        return code


def _point_at_devnull(stream: Any) -> None:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (captured in a test)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
