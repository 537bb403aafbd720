"""The six-database commands (``migrate`` is in ``migrating.py``) and ``main``: exit codes 0
ok, 1 some records or checks failed, 2 usage error, 130 interrupted (Ctrl-C at any moment: one
line, no traceback)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..databases import REGISTRY
from ..databases.opening import URL_ENV
from ..encoder import get_encoder
from ..errors import EmbeddingError
from ..reports import MODEL_SWITCH_PROBLEM, BackfillInterrupted, BackfillPlan, BackfillResult
from . import hits as hits_out
from .migrating import run_migrate
from .output import GuardedOutput, Progress, clean, dumps, human_bytes, print_table, warn
from .parser import URL_SCHEMES, UsageError, build_parser
from .stores import (
    Target,
    backfill_lock,
    choose_models,
    choose_read_url,
    find_targets,
    half_switched,
    open_db,
    require_existing,
    resolve_data_dir,
    store_size,
)

log = logging.getLogger("embeddable_db.cli")
ERRORS = (EmbeddingError, OSError, ValueError, sqlite3.Error)


def for_each_db(
    targets: Sequence[Target], work: Callable[[Target], bool],
    failed: Callable[[str, Exception], None] | None = None,
) -> int:
    """Run ``work(target)`` per database; an error is reported and the next database still runs."""
    ok = True
    for target in targets:
        try:
            ok = work(target) and ok
        except Exception as exc:  # noqa: BLE001 - only the errors of a database, see below
            if not isinstance(exc, ERRORS) and not server_error(exc):
                raise
            warn(f"{target.name}: error: {exc}")
            if failed is not None:
                failed(target.name, exc)
            ok = False
    return 0 if ok else 1


def server_error(exc: BaseException) -> bool:
    """An error of the PostgreSQL server or connection (psycopg's), known without importing
    psycopg: one database's failure, like a SQLite error."""
    return any(cls.__module__.split(".")[0] == "psycopg" for cls in type(exc).__mro__)


def prepare(args: argparse.Namespace, *, reads: bool) -> tuple[list[Target], dict[str, str]]:
    """The databases and the model for each; read commands need them to exist already."""
    targets = find_targets(args)
    if reads:
        require_existing(args, targets)
    return targets, choose_models(args, targets)


# -- backfill -------------------------------------------------------------------------------------
def run_backfill(args: argparse.Namespace) -> int:
    targets, models = prepare(args, reads=args.dry_run)  # a dry run only reads
    rows: list[tuple[str, BackfillResult | None]] = []
    errors: list[tuple[str, Exception]] = []
    failures: list[str] = []
    used: set[str] = set()
    scanned: list[str] = []  # read in full, not only what the triggers recorded
    where: dict[str, Any] = {"name": None, "result": None}

    def work(target: Target) -> bool:
        where.update(name=target.name, result=None)
        with backfill_lock(args, target.name) as acquired:
            if not acquired:
                rows.append((target.name, None))
                return True
            model = models[target.name]
            with open_db(target, args, model=model, read_only=args.dry_run) as db:
                used.add(model)
                total = None if args.full else db.pending_changes()
                if total is None:  # every record is read
                    scanned.append(target.name)
                    total = sum(db.count(kind=kind) for kind in db.embedding_kinds)  # SQL
                progress = Progress(target.name, total)
                try:
                    result = db.backfill_embeddings(
                        batch_size=args.batch_size, dry_run=args.dry_run, progress=progress,
                        full=args.full,
                    )
                finally:
                    progress.close()
                where["result"] = result
        rows.append((target.name, result))
        failures.extend(f"{target.name} {rid}: {error}" for rid, error in result.failures)
        return result.failed == 0

    try:
        code = for_each_db(targets, work, lambda name, exc: errors.append((name, exc)))
    except KeyboardInterrupt as stop:
        result = stop.result if isinstance(stop, BackfillInterrupted) else where["result"]
        if result is not None and (not rows or rows[-1][0] != where["name"]):
            rows.append((where["name"], result))
        print_summary(rows, args.dry_run)
        warn(interrupted(where["name"], result, args.dry_run))
        return 130
    print_summary(rows, args.dry_run)
    print(read_line([name for name, result in rows if result is not None], scanned))
    for name, exc in errors:
        print(clean(f"{name}: not backfilled: {exc}"))
    for line in failures[:20]:
        warn(f"failed: {line}")
    if len(failures) > 20:
        warn(f"... and {len(failures) - 20} more failures")
    encoders = [get_encoder(model, backend=args.model_backend) for model in sorted(used)]
    print(f"model calls: {sum(getattr(e, 'calls', 0) for e in encoders)}, "
          f"texts encoded: {sum(getattr(e, 'texts_encoded', 0) for e in encoders)}")
    return code


def read_line(done: list[str], scanned: list[str]) -> str:
    """Which databases a backfill read in full and which only where the triggers said."""
    quick = [name for name in done if name not in scanned]
    full = [name for name in done if name in scanned]
    parts = ([f"only the records changed since the last backfill (recorded by triggers): "
              f"{', '.join(quick)}"] if quick else []) + (
             [f"every record (hash scan): {', '.join(full)}"] if full else [])
    return "read: " + "; ".join(parts) if parts else "read: nothing"


def interrupted(name: str | None, result: BackfillResult | None, dry_run: bool) -> str:
    """What an interrupted backfill really kept: the committed vectors, not the records read."""
    if name is None:
        return "interrupted before any database was opened: nothing was written"
    if dry_run:
        return f"interrupted in {name}: a dry run, nothing was written"
    if result is None or result.last_committed_id is None:
        return (f"interrupted in {name} before a batch of it was committed: run the backfill "
                "again to finish")
    return (f"interrupted in {name}: {result.committed} vectors were committed and are kept "
            f"(the last for record {result.last_committed_id!r}): run the backfill again to "
            "finish")


def print_summary(rows: Sequence[tuple[str, BackfillResult | None]], dry_run: bool) -> None:
    header = ("database", "embedded", "re-embedded", "removed", "unchanged", "failed",
              "seconds", "records/s")
    lines: list[Sequence[Any]] = [header]
    for name, r in rows:
        if r is None:
            lines.append((name, "skipped", "", "", "", "", "", ""))
            continue
        rate = r.processed / r.seconds if r.seconds > 0 else 0.0
        lines.append((name, r.embedded, r.reembedded, r.removed, r.unchanged, r.failed,
                      f"{r.seconds:.2f}", f"{rate:.0f}"))
    if rows:
        print_table(lines)
    if dry_run:
        print("dry run: nothing was encoded or written")


# -- search ---------------------------------------------------------------------------------------
def run_search(args: argparse.Namespace) -> int:
    where = f"{args.prog} search: error:"
    if not args.query.strip():
        raise UsageError(f"{where} the query is empty: give the words to search for")
    if args.kind is not None:
        kinds = sorted({k for n in args.db for k in (REGISTRY[n].embedding_kinds or ())})
        if args.kind not in kinds:
            raise UsageError(f"{where} unknown kind {args.kind!r}: choose from {', '.join(kinds)}")
        args.db = [n for n in args.db if args.kind in (REGISTRY[n].embedding_kinds or ())]
    filters = hits_out.parse_where(args.where, where)
    if filters:
        args.db = hits_out.databases_with(
            args.db, set(filters), lambda name: hits_out.field_sets(name, args.kind), where)
    targets, models = prepare(args, reads=True)
    hits: list[tuple[str, Any, str]] = []
    queries: dict[str, Any] = {}  # model -> the query's vector: one encoding per model

    sides: list[hits_out.Sides] = []  # hybrid: each database's two rankings, fused at the end

    def work(target: Target) -> bool:
        with open_db(target, args, model=models[target.name], read_only=True) as db:
            if db.embedding_count() == 0:
                return True
            query: Any = args.query
            if args.mode != "keyword":
                if db.model_id not in queries:
                    queries[db.model_id] = db.encode_texts([args.query])[0]
                query = queries[db.model_id]
            if args.mode == "hybrid":
                sides.append(hits_out.both_sides(db, target.name, args.query, query, args.top_k,
                                                 kind=args.kind, where=filters))
                return True
            for hit in db.search(query, args.top_k, kind=args.kind, mode=args.mode,
                                 where=filters):
                hits.append((target.name, hit, " ".join(db.embedding_text(hit.record).split())))
        return True

    code = for_each_db(targets, work)
    if args.mode == "hybrid":
        hits = hits_out.fused_across(sides, args.top_k)
    hits = hits_out.merged(hits, args.mode, args.top_k)
    if args.json:
        print(dumps([hits_out.hit_json(name, hit, args.mode) for name, hit, _ in hits]))
    elif hits:
        print_table(hits_out.table_rows(hits, args.mode))
    else:
        print("no hits (have the databases been backfilled?)")
    return code


# -- stats, verify, rebuild -----------------------------------------------------------------------
def run_stats(args: argparse.Namespace) -> int:
    """Per database: what backfill would do now (its own plan, counted per reason) and the
    store's state. ``records`` are the records a backfill reads, ``vectors`` the vectors a
    search finds, ``missing``/``stale``/``orphaned`` what it would embed, re-embed and remove,
    ``unreadable`` the records it would skip."""
    targets, models = prepare(args, reads=True)
    lines: list[Sequence[Any]] = [("database", "records", "vectors", "missing", "stale",
                                   "orphaned", "unreadable", "model", "dim", "backend",
                                   "index size")]
    notes: list[str] = []

    def work(target: Target) -> bool:
        with open_db(target, args, model=models[target.name], read_only=True) as db:
            plan = db.backfill_plan()
            counts = db.model_counts()
            size = store_size(db)
            model = db.model_id + (f" (+{len(counts) - 1} other)" if len(counts) > 1 else "")
            vectors = db.embedding_count()
            lines.append((target.name, plan.records, vectors, plan.missing,
                          plan.stale, plan.orphaned, plan.failed, model, db.dimension or "-",
                          db.backend_name, human_bytes(size)))
            hint = faster_search(target.name, db.backend_name, vectors)
            if hint:
                notes.append(hint)
            why = stale_reasons(plan)
            if why:
                notes.append(f"{target.name}: {plan.stale} stale: {why}")
            note = half_switched(target.name, db.model_id, counts)
            if note:
                notes.append(note)
        return True

    code = for_each_db(targets, work)
    print_table(lines)
    for note in notes:
        print(clean(note))
    return code


#: From this many vectors an Annoy store searches by its trees (below: an exact scan, ~1 ms) and
#: FAISS HNSW answers ~10x faster at recall@10 >= 0.95 (make bench-scale: 2.5 vs 0.18 ms at
#: 100k, ??? at 1M), so stats says so.
HNSW_HINT_FROM = 50_000


def faster_search(name: str, backend: str, vectors: int) -> str | None:
    """The one-line pointer to HNSW for a large Annoy store, else None."""
    if backend != "annoy" or vectors < HNSW_HINT_FROM:
        return None
    return (f"{name}: {vectors:,} vectors: backend='faiss', index_type='hnsw' searches "
            "~10x faster here")


def stale_reasons(plan: BackfillPlan) -> str:
    """"2 text changed, 1 older embedding_version": why the stale vectors are stale."""
    reasons = [(plan.stale_text, "text changed"), (plan.stale_model, "another model"),
               (plan.stale_version, "older embedding_version"), (plan.stale_kind, "kind changed")]
    return ", ".join(f"{n} {why}" for n, why in reasons if n)


def run_verify(args: argparse.Namespace) -> int:
    targets, models = prepare(args, reads=True)

    def work(target: Target) -> bool:
        with open_db(target, args, model=models[target.name], read_only=True) as db:
            report = db.verify_index()
            counts = db.model_counts()
            model = db.model_id
        # The library's advice on a half-switched store is replaced by the command to run.
        problems = [p for p in report.problems if not p.startswith(MODEL_SWITCH_PROBLEM)]
        note = half_switched(target.name, model, counts)
        if note:
            problems.append(note)
        state = "PROBLEMS" if problems else "ok"
        if target.url is not None:  # no files: the table, its HNSW index, its keyword text
            counts = (f"postgres {report.sqlite_count}, index {report.index_count}, keywords "
                      f"{report.keyword_count}")
        else:
            counts = (f"sqlite {report.sqlite_count}, index {report.index_count}, metadata "
                      f"{report.metadata_count}, file {report.file_count}, pending "
                      f"{report.pending_changes}")
        print(clean(f"{target.name}: {state}: {counts}"))
        for problem in problems:
            print(clean(f"  {problem}"))
        return not problems

    return for_each_db(targets, work)


def run_rebuild(args: argparse.Namespace) -> int:
    targets, models = prepare(args, reads=True)  # writes index files, but only for databases

    def work(target: Target) -> bool:
        started = time.perf_counter()
        with open_db(target, args, model=models[target.name], read_only=False) as db:
            db.rebuild_index()
            count = db.embedding_count()
        print(f"{target.name}: rebuilt {count} vectors in {time.perf_counter() - started:.2f} s")
        return True

    return for_each_db(targets, work)


def run_serve(args: argparse.Namespace) -> int:
    """The web page (extra ``[web]``), imported only here so the CLI works without it. Files
    given alone are served alone; with ``--data-dir`` (or none), the data directory too."""
    data_dir = None if (args.files and not args.data_dir_given) or args.database_url else args.data_dir
    if data_dir is not None and not data_dir.is_dir():
        raise UsageError(f"{args.prog} serve: error: data directory {str(data_dir)!r} does "
                         "not exist: check --data-dir or $EMBEDDABLE_DB_HOME")
    for file in args.files:
        if not os.path.isfile(file):
            raise UsageError(f"{args.prog} serve: error: there is no database file {file!r}: "
                             "give SQLite files with tables embedded by `embed`")
    try:
        from ..web.server import serve
    except ImportError as exc:
        raise UsageError(f"{args.prog} serve: error: {exc.name} is not installed: "
                         "pip install 'embeddable-db[web]'") from None
    return serve(data_dir, args.files, host=args.host, port=args.port, open_browser=args.open,
                 allow_backfill=args.allow_backfill, model_backend=args.model_backend,
                 url=args.database_url, read_url=args.read_url)


COMMANDS = {
    "migrate": run_migrate,
    "serve": run_serve,
    "backfill": run_backfill,
    "search": run_search,
    "stats": run_stats,
    "verify": run_verify,
    "rebuild": run_rebuild,
}


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Parse, run, and exit cleanly whatever happens to the output or the user's patience."""
    output = GuardedOutput()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGINT)
    code = 130
    try:
        if previous is not None and previous is not signal.SIG_IGN:  # ignored: a background job
            signal.signal(signal.SIGINT, signal.default_int_handler)
        code = run(argv, prog or "embeddable-db")
    except KeyboardInterrupt:
        if previous is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: still this exit
        warn("interrupted")
    finally:
        code = output.finish(code)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return code


def run(argv: Sequence[str] | None, prog: str) -> int:
    from .table_commands import TABLE_COMMANDS, run_search_table
    from .table_parser import build_table_search_parser, table_search_argv

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    try:
        table_search = table_search_argv(argv)  # search DB TABLE QUERY: a table of any file
        if table_search is not None:
            flags, rest = table_search
            args = build_table_search_parser(prog).parse_args(rest)
            args.verbose, args.command, args.prog = bool(flags), "search", prog
            _logging(args)
            return run_search_table(args)
        args = parser.parse_args(argv)
        args.prog = prog
        if args.command in TABLE_COMMANDS:
            _logging(args)
            return TABLE_COMMANDS[args.command](args)
        args.data_dir_given = args.data_dir is not None
        args.data_dir = resolve_data_dir(args.data_dir)  # once: every path below derives from it
        if hasattr(args, "database_url"):
            args.database_url = choose_url(args)
            args.read_url = choose_read_url(args)
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )
        return COMMANDS[args.command](args)
    except UsageError as exc:
        warn(str(exc))
        return 2


def choose_url(args: argparse.Namespace) -> str | None:
    """The PostgreSQL database of a six-database command: ``--database-url``, else
    ``$EMBEDDABLE_DB_URL`` unless ``--data-dir`` names a folder (as the library does: a file
    named explicitly wins over the environment); None for the SQLite files."""
    where = f"{args.prog} {args.command}: error:"
    url = args.database_url
    if url is not None and args.data_dir_given:
        raise UsageError(f"{where} --database-url and --data-dir name two places for the "
                         "databases: give one of them")
    if url is None:
        url = None if args.data_dir_given else os.environ.get(URL_ENV, "").strip() or None
        if url is None:
            return None
        if not url.startswith(URL_SCHEMES):
            raise UsageError(f"{where} ${URL_ENV} is not a PostgreSQL URL: set it to "
                             "postgresql://user@host/dbname, or unset it to use --data-dir")
    if getattr(args, "backend", None) is not None:
        raise UsageError(f"{where} --backend {args.backend} is an index file's library, for "
                         "SQLite databases; on PostgreSQL the index is pgvector's, in the "
                         "database: drop --backend")
    return url


def _logging(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
