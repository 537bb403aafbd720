"""The ``embeddable-db`` command: backfill, search, stats, verify and rebuild the six databases.

A thin layer over the library: it parses flags, opens each database in turn, calls the
library, prints what happened, and turns outcomes into exit codes (0 success, 1 some records or
checks failed, 2 usage error, 130 interrupted). One failing database never stops the others.

Parts: ``parser`` (flags), ``stores`` (finding and opening databases without creating,
converting or re-embedding anything a command was not asked to), ``output`` (tables, JSON,
escaping, a closed pipe), ``commands`` (the five commands and ``main``).

This module imports nothing heavy, so that ``python -m embeddable_db.cli`` and the backfill
script can take over Ctrl-C before the rest loads.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run one command; returns its exit code."""
    from .commands import main as run

    return run(argv, prog=prog)


def quit_on_ctrl_c() -> None:
    """Until ``main`` runs, Ctrl-C exits quietly with 130 instead of a traceback from an import."""
    import signal
    import sys

    def stop(signum: int, frame: object) -> None:
        try:
            sys.stderr.write("interrupted\n")
        except (OSError, ValueError):
            pass
        raise SystemExit(130)

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a background job stays immune
        signal.signal(signal.SIGINT, stop)


__all__ = ["main", "quit_on_ctrl_c"]
