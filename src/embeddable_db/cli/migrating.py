"""``embeddable-db migrate``: the six databases' SQLite files copied to PostgreSQL.

A thin layer over ``databases.migrate.migrate`` (which does the work, and says why it is built
as it is): flags, a progress bar per database on a terminal, the summary and each database's
verify line (or ``--json``), and the exit code: 0 when every database copied and verified,
1 when one failed or its two sides disagree (the others still ran), 2 for bad input (nothing
was written on either side), 130 interrupted (what was committed is kept: run it again).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from ..databases import REGISTRY
from ..databases.opening import URL_ENV
from ..errors import EmbeddingError
from .output import Progress, clean, dumps, print_table, warn
from .parser import NAMES, URL_SCHEMES, UsageError, database_name, database_url, folder, positive_int


def add_migrate_command(commands: Any) -> None:
    sub = commands.add_parser(
        "migrate", help="copy the databases from SQLite to PostgreSQL (no re-encoding)",
        description="Copy the records and vectors of the SQLite databases in --data-dir to the "
        "PostgreSQL database --to, one schema per database, without calling the model; then "
        "verify both sides. Run it again to copy only what changed since (added, edited and "
        "deleted records).",
        epilog="example: embeddable-db migrate --data-dir data --to postgresql://me@localhost/app",
    )
    sub.add_argument("--data-dir", type=folder, default=None,
                     help="folder holding the SQLite databases (default: $EMBEDDABLE_DB_HOME or "
                     "./data)")
    sub.add_argument("--to", type=database_url, default=None, metavar="URL",
                     help="the PostgreSQL database to copy to (postgresql://user@host/dbname; "
                     "default: $EMBEDDABLE_DB_URL)")
    sub.add_argument("--db", nargs="+", type=database_name, default=None, metavar="NAME",
                     help=f"databases to copy (default: those of {', '.join(NAMES)} that exist)")
    sub.add_argument("--page-size", type=positive_int, default=1000,
                     help="records or vectors read, compared and written at once (default: 1000)")
    sub.add_argument("--json", action="store_true", help="print the report as JSON")


def run_migrate(args: argparse.Namespace) -> int:
    from ..databases.migrate import migrate

    where = f"{args.prog} migrate: error:"
    url = args.to or os.environ.get(URL_ENV, "").strip() or None
    if url is None:
        raise UsageError(f"{where} name the PostgreSQL database to copy to: --to "
                         f"postgresql://user@host/dbname (or set ${URL_ENV})")
    if not url.startswith(URL_SCHEMES):
        raise UsageError(f"{where} ${URL_ENV} is not a PostgreSQL URL: give --to "
                         "postgresql://user@host/dbname")
    names = args.db
    if names is None:  # the ones there are; none at all is the error migrate() gives
        names = [n for n in REGISTRY if os.path.isfile(REGISTRY[n].resolve_paths(
            data_dir=args.data_dir)[0])] or list(REGISTRY)
    bars = Bars()
    try:
        report = migrate(args.data_dir, url, names, progress=bars, page_size=args.page_size)
    except EmbeddingError as exc:  # bad input or an unreachable server: nothing was written
        raise UsageError(f"{where} {exc}") from None
    except KeyboardInterrupt:
        bars.close()
        warn("interrupted: what was copied so far is kept; run migrate again to finish "
             "(it copies only what is still missing or different)")
        return 130
    bars.close()
    if args.json:
        print(dumps(report_json(report)))
    else:
        print_report(report)
    return 0 if report.ok else 1


class Bars:
    """migrate()'s progress: one ``Progress`` (a tqdm bar on a terminal) per database."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.bar: Progress | None = None

    def __call__(self, name: str, done: int, total: int) -> None:
        if name != self.name:
            self.close()
            self.name, self.bar = name, Progress(name, total)
        assert self.bar is not None
        self.bar(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.name = self.bar = None


def print_report(report: Any) -> None:
    lines: list[Sequence[Any]] = [("database", "", "copied", "updated", "removed", "unchanged",
                                   "seconds", "records/s")]
    for db in report.databases:
        if db.error is not None:
            lines.append((db.name, "failed", "", "", "", "", f"{db.seconds:.2f}", ""))
            continue
        for what, counts in (("records", db.records), ("vectors", db.vectors)):
            timing = (f"{db.seconds:.2f}", f"{db.rate:.0f}") if what == "records" else ("", "")
            lines.append((db.name if what == "records" else "", what, counts.copied,
                          counts.updated, counts.removed, counts.unchanged, *timing))
    print_table(lines)
    for db in report.databases:
        if db.error is not None:
            print(clean(f"{db.name}: not migrated: {db.error}"))
            continue
        mine, theirs = db.models
        model = (f"model {mine} on both" if mine == theirs and mine is not None
                 else "no vectors" if mine == theirs else f"model {mine} / {theirs}")
        kinds = ", ".join(f"{kind} {c.records[0]} records, {c.vectors[0]} vectors"
                          for kind, c in db.kinds.items())
        state = "PROBLEMS" if db.problems else "verified"
        print(clean(f"{db.name}: {state}: SQLite and PostgreSQL agree on {kinds}; {model}"
                    if not db.problems else f"{db.name}: {state}: {kinds}; {model}"))
        for problem in db.problems:
            print(clean(f"  {problem}"))
    print(clean(f"to: {report.url}; nothing was re-encoded (vectors are copied as stored)"))


def report_json(report: Any) -> dict[str, Any]:
    return {
        "url": report.url,
        "ok": report.ok,
        "databases": [{
            "database": db.name, "ok": db.ok, "error": db.error,
            "records": dataclasses.asdict(db.records), "vectors": dataclasses.asdict(db.vectors),
            "seconds": round(db.seconds, 3), "records_per_second": round(db.rate, 1),
            "models": {"sqlite": db.models[0], "postgres": db.models[1]},
            "kinds": {kind: {"records": {"sqlite": c.records[0], "postgres": c.records[1]},
                             "vectors": {"sqlite": c.vectors[0], "postgres": c.vectors[1]}}
                      for kind, c in db.kinds.items()},
            "problems": db.problems,
        } for db in report.databases],
    }
