"""The ``embeddable-db`` command: backfill, search, stats, verify and rebuild the six databases
(SQLite files, or a PostgreSQL database with ``--database-url``), and migrate them there.

A thin layer over the library: it parses flags, opens each database in turn, calls the
library, prints what happened, and turns outcomes into exit codes (0 success, 1 some records or
checks failed, 2 usage error, 130 interrupted). One failing database never stops the others.

Parts: ``parser`` (flags), ``stores`` (finding and opening databases without creating,
converting or re-embedding anything a command was not asked to), ``output`` (tables, JSON,
escaping, a closed pipe), ``commands`` (the six-database commands and ``main``), ``migrating``
(``migrate``, over ``databases.migrate``).

This module imports nothing heavy, so that ``python -m embeddable_db.cli`` and the backfill
script can take over Ctrl-C before the rest loads.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run one command; returns its exit code. A Ctrl-C while the library loads exits 130
    quietly (the console script comes straight here); ``commands.main`` then takes over."""
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGINT)
        quit_on_ctrl_c()
    try:
        from .commands import main as run
    finally:
        if previous is not None:  # a caller's own handler (an in-process main()) comes back
            signal.signal(signal.SIGINT, previous)
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
