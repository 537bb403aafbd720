"""The ``embeddable-db`` command: backfill, search, stats, verify and rebuild the six databases.

A thin layer over the library: it parses flags, opens each database in turn, calls the
library, prints what happened, and turns outcomes into exit codes (0 success, 1 some records or
checks failed, 2 usage error). One failing database never stops the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .backends import backend_names
from .databases import DEFAULT_HOME, HOME_ENV, REGISTRY
from .encoder import DEFAULT_MODEL, MODEL_BACKENDS, get_encoder
from .errors import EmbeddingError
from .reports import BackfillInterrupted, BackfillResult

log = logging.getLogger("embeddable_db.cli")
NAMES = tuple(REGISTRY)


class UsageError(Exception):
    """Bad flags: one line naming the valid choices, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        raise UsageError(f"{self.prog}: error: {message}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def database_name(text: str) -> str:
    if text not in REGISTRY:
        raise argparse.ArgumentTypeError(
            f"unknown database {text!r}: choose from {', '.join(NAMES)}"
        )
    return text


def backend_name(text: str) -> str:
    if text not in backend_names():
        raise argparse.ArgumentTypeError(
            f"unknown backend {text!r}: choose from {', '.join(backend_names())}"
        )
    return text


def build_parser(prog: str = "embeddable-db") -> Parser:
    parser = Parser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def common(sub: argparse.ArgumentParser, backend_default: str | None) -> None:
        sub.add_argument(
            "--db", nargs="+", type=database_name, default=list(NAMES), metavar="NAME",
            help=f"databases to use (default: all of {', '.join(NAMES)})",
        )
        sub.add_argument(
            "--data-dir", type=Path, default=None,
            help="folder holding the databases (default: $EMBEDDABLE_DB_HOME or ./data)",
        )
        sub.add_argument(
            "--backend", type=backend_name, default=backend_default,
            help="vector index backend: annoy or faiss"
            + ("" if backend_default else " (default: the one each store was built with)"),
        )
        sub.add_argument(
            "--model", default=DEFAULT_MODEL,
            help="sentence-transformers model name or path (default: %(default)s)",
        )
        sub.add_argument(
            "--model-backend", choices=MODEL_BACKENDS, default="torch",
            help="run the model on torch, or on ONNX Runtime (default model only; "
            "no torch import, fast start)",
        )

    backfill = commands.add_parser("backfill", help="embed missing and stale records")
    common(backfill, "annoy")
    backfill.add_argument("--batch-size", type=positive_int, default=100,
                          help="records encoded and committed at once (default: 100)")
    backfill.add_argument("--dry-run", action="store_true",
                          help="report what would be done; encode nothing")
    backfill.add_argument("--no-wait", action="store_true",
                          help="skip a database another backfill is working on instead of waiting")

    search = commands.add_parser("search", help="semantic search across databases")
    search.add_argument("query")
    common(search, None)
    search.add_argument("--top-k", type=positive_int, default=5)
    search.add_argument("--kind", default=None, help="only hits of this kind")
    search.add_argument("--json", action="store_true", help="print hits as JSON")

    for name, text in (
        ("stats", "records, vectors, missing, stale, orphaned per database"),
        ("verify", "check that SQLite, index and metadata agree (exit 1 if not)"),
        ("rebuild", "rebuild indexes from the stored vectors (no re-encoding)"),
    ):
        common(commands.add_parser(name, help=text), None)
    return parser


# -- opening databases ----------------------------------------------------------------------------
def stored_backend(cls: Any, data_dir: Path) -> str | None:
    """The backend a store's index was last written with, so reading it does not rebuild it."""
    _, index_path, metadata_path = cls.resolve_paths(data_dir=data_dir)
    metadata_path = metadata_path or str(Path(index_path).with_suffix(".json"))
    try:
        with open(metadata_path, encoding="utf-8") as handle:
            backend = json.load(handle).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if backend in backend_names() else None


def open_db(name: str, args: argparse.Namespace, **options: Any):
    cls = REGISTRY[name]
    backend = args.backend or stored_backend(cls, args.data_dir) or "annoy"
    return cls(data_dir=args.data_dir, backend=backend, model_name=args.model,
               model_backend=args.model_backend, **options)


def for_each_db(args: argparse.Namespace, work: Callable[[str], bool]) -> int:
    """Run ``work(name)`` per database; an error is reported and the next database still runs."""
    ok = True
    for name in dict.fromkeys(args.db):
        try:
            ok = work(name) and ok
        except (EmbeddingError, OSError, ValueError, sqlite3.Error) as exc:
            print(f"{name}: error: {exc}", file=sys.stderr)
            ok = False
    return 0 if ok else 1


# -- backfill -------------------------------------------------------------------------------------
@contextmanager
def backfill_lock(args: argparse.Namespace, name: str) -> Iterator[bool]:
    """One backfill per database at a time; yields False when skipping a busy database."""
    folder = args.data_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".backfill.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if args.no_wait:
            print(f"{name}: another backfill is running; skipped", file=sys.stderr)
            yield False
            return
        print(f"{name}: waiting for another backfill to finish ...", file=sys.stderr)
        lock.acquire()
    try:
        yield True
    finally:
        lock.release()


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, name: str, total: int) -> None:
        self.name = name
        self.total = total
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=name, unit="rec", leave=False)

    def __call__(self, result: BackfillResult) -> None:
        if self.bar is not None:
            self.bar.n = result.processed
            self.bar.refresh()
        else:
            print(f"{self.name}: {result.processed}/{self.total} records", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_backfill(args: argparse.Namespace) -> int:
    rows: list[tuple[str, BackfillResult | None]] = []
    failures: list[str] = []

    def work(name: str) -> bool:
        with backfill_lock(args, name) as acquired:
            if not acquired:
                rows.append((name, None))
                return True
            db = open_db(name, args, allow_model_change=True)
            try:
                progress = Progress(name, sum(1 for _ in db.iter_records()))
                try:
                    result = db.backfill_embeddings(
                        batch_size=args.batch_size, dry_run=args.dry_run, progress=progress
                    )
                finally:
                    progress.close()
            except BackfillInterrupted as stop:
                rows.append((name, stop.result))
                print_summary(rows, args.dry_run)
                print(f"interrupted in {name} after record {stop.result.last_record_id!r}; "
                      "committed batches are kept: run the backfill again to finish",
                      file=sys.stderr)
                raise SystemExit(130) from None
            finally:
                db.close()
        rows.append((name, result))
        failures.extend(f"{name} {rid}: {error}" for rid, error in result.failures)
        return result.failed == 0

    code = for_each_db(args, work)
    print_summary(rows, args.dry_run)
    for line in failures[:20]:
        print(f"failed: {line}", file=sys.stderr)
    if len(failures) > 20:
        print(f"... and {len(failures) - 20} more failures", file=sys.stderr)
    encoder = get_encoder(args.model, backend=args.model_backend)
    print(f"model calls: {getattr(encoder, 'calls', 0)}, "
          f"texts encoded: {getattr(encoder, 'texts_encoded', 0)}")
    return code


def print_summary(rows: Sequence[tuple[str, BackfillResult | None]], dry_run: bool) -> None:
    header = ("database", "embedded", "re-embedded", "removed", "unchanged", "failed",
              "seconds", "records/s")
    lines = [header]
    for name, r in rows:
        if r is None:
            lines.append((name, "skipped", "", "", "", "", "", ""))
            continue
        rate = r.processed / r.seconds if r.seconds > 0 else 0.0
        lines.append((name, r.embedded, r.reembedded, r.removed, r.unchanged, r.failed,
                      f"{r.seconds:.2f}", f"{rate:.0f}"))
    print_table(lines)
    if dry_run:
        print("dry run: nothing was encoded or written")


def print_table(lines: Sequence[Sequence[Any]]) -> None:
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        cells = [str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                 for i, (cell, w) in enumerate(zip(line, widths, strict=True))]
        print("  ".join(cells).rstrip())


# -- search ---------------------------------------------------------------------------------------
def run_search(args: argparse.Namespace) -> int:
    if args.kind is not None:
        kinds = sorted({k for n in args.db for k in (REGISTRY[n].embedding_kinds or ())})
        if args.kind not in kinds:
            raise UsageError(f"embeddable-db search: error: unknown kind {args.kind!r}: "
                             f"choose from {', '.join(kinds)}")
    hits: list[tuple[str, Any, str]] = []
    query_vector = None

    def work(name: str) -> bool:
        nonlocal query_vector
        cls = REGISTRY[name]
        if args.kind is not None and args.kind not in (cls.embedding_kinds or ()):
            return True
        db = open_db(name, args)
        try:
            if db.embedding_count() == 0:
                return True
            if query_vector is None:
                query_vector = db.encode_texts([args.query])[0]
            for hit in db.search(query_vector, args.top_k, kind=args.kind):
                hits.append((name, hit, " ".join(db.embedding_text(hit.record).split())))
        finally:
            db.close()
        return True

    code = for_each_db(args, work)
    hits.sort(key=lambda found: found[1].distance)
    hits = hits[: args.top_k]
    if args.json:
        print(json.dumps([hit_json(name, hit) for name, hit, _ in hits], indent=1, default=str))
    else:
        lines = [("distance", "database", "kind", "id", "text")]
        for name, hit, text in hits:
            lines.append((f"{hit.distance:.3f}", name, hit.kind, hit.record_id,
                          text[:70] + ("…" if len(text) > 70 else "")))
        if hits:
            print_table(lines)
        else:
            print("no hits (have the databases been backfilled?)")
    return code


def hit_json(name: str, hit: Any) -> dict[str, Any]:
    return {
        "database": name,
        "record_id": hit.record_id,
        "kind": hit.kind,
        "distance": round(float(hit.distance), 6),
        "record": dataclasses.asdict(hit.record),
    }


# -- stats, verify, rebuild -----------------------------------------------------------------------
def run_stats(args: argparse.Namespace) -> int:
    lines = [("database", "records", "vectors", "missing", "stale", "orphaned", "model", "dim",
              "backend", "index size")]

    def work(name: str) -> bool:
        db = open_db(name, args, allow_model_change=True)
        try:
            plan = db.backfill_embeddings(dry_run=True)
            size = sum(os.path.getsize(p) for p in (db.index_path, db.metadata_path)
                       if p and os.path.exists(p))
            lines.append((name, plan.processed, db.embedding_count(), plan.embedded,
                          plan.reembedded, plan.removed, db.model_id, db.dimension or "-",
                          db.backend_name, human_bytes(size)))
        finally:
            db.close()
        return True

    code = for_each_db(args, work)
    print_table(lines)
    return code


def human_bytes(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def run_verify(args: argparse.Namespace) -> int:
    def work(name: str) -> bool:
        db = open_db(name, args)
        try:
            report = db.verify_index()
        finally:
            db.close()
        state = "ok" if report.ok else "PROBLEMS"
        print(f"{name}: {state}: sqlite {report.sqlite_count}, index {report.index_count}, "
              f"metadata {report.metadata_count}, file {report.file_count}, "
              f"pending {report.pending_changes}")
        for problem in report.problems:
            print(f"  {problem}")
        return report.ok

    return for_each_db(args, work)


def run_rebuild(args: argparse.Namespace) -> int:
    def work(name: str) -> bool:
        started = time.perf_counter()
        db = open_db(name, args)
        try:
            db.rebuild_index()
            count = db.embedding_count()
        finally:
            db.close()
        print(f"{name}: rebuilt {count} vectors in {time.perf_counter() - started:.2f} s")
        return True

    return for_each_db(args, work)


COMMANDS = {
    "backfill": run_backfill,
    "search": run_search,
    "stats": run_stats,
    "verify": run_verify,
    "rebuild": run_rebuild,
}


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    parser = build_parser(prog or "embeddable-db")
    try:
        args = parser.parse_args(argv)
        args.data_dir = Path(args.data_dir or os.environ.get(HOME_ENV) or DEFAULT_HOME)
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
