"""``embed``, ``tables``, ``drop``, ``similar`` and ``search DB TABLE QUERY``: thin over
``TableStore``.

Before a store is opened its file is read, read-only, for what it remembers: the settings of
the first ``embed`` (so later runs need only ``DB TABLE``), the model its vectors were made by
and the backend of its index. Read commands open the store ``read_only`` (nothing written, the
user's file opened ``mode=ro``); ``embed`` refuses other settings or another model than the
remembered ones unless ``--replace`` says to re-embed. Bad flags, an unknown table or column,
a table never embedded: exit 2. Records that failed: exit 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sqlite3
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..encoder import model_identity
from ..errors import EmbeddingError, InvalidInputError
from ..filters import parse_where_option
from ..handle import is_locked, sqlite_error
from ..options import store_paths
from ..tables.schema import describe, quote
from ..tables.store import SETTINGS_KEY, TableStore, store_table_name
from .output import Progress, clean, dumps, human_bytes, print_table, warn
from .parser import UsageError


@dataclass(frozen=True)
class Peek:
    """What a table's store already holds, read without writing anything."""

    table: str  #: the schema's spelling of the table
    settings: dict[str, Any] | None
    model: str | None
    backend: str | None


def _read_only(path: str) -> sqlite3.Connection:
    """A connection that writes nothing, not even ``-wal``/``-shm`` for a file closed cleanly."""
    uri = Path(os.path.abspath(path)).as_uri() + "?mode=ro"
    if not any(os.path.exists(path + end) for end in ("-wal", "-journal")):
        uri += "&immutable=1"
    return sqlite3.connect(uri, uri=True, timeout=5.0)


def _meta(conn: sqlite3.Connection, store_table: str) -> dict[str, str]:
    meta = f"{store_table}_meta"
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                    (meta,)).fetchone() is None:
        return {}
    return dict(conn.execute(f"SELECT key, value FROM {quote(meta)}").fetchall())


def _backend(file: str, store_table: str) -> str | None:
    _, metadata = store_paths(file, store_table, None, None)
    try:
        with open(metadata, encoding="utf-8") as handle:
            return json.load(handle).get("backend")
    except (OSError, ValueError, AttributeError):
        return None


def peek(args: argparse.Namespace, table: str) -> Peek:
    conn = _read_only(args.db)
    try:
        name = describe(conn, "main", table).name
    finally:
        conn.close()
    holder = args.store if args.store else args.db
    store_table = store_table_name(name)
    meta: dict[str, str] = {}
    if os.path.isfile(holder):
        conn = _read_only(holder)
        try:
            meta = _meta(conn, store_table)
        finally:
            conn.close()
    settings = json.loads(meta[SETTINGS_KEY]) if SETTINGS_KEY in meta else None
    return Peek(name, settings, meta.get("model"), _backend(holder, store_table))


def _not_embedded(args: argparse.Namespace, name: str) -> UsageError:
    where = f" --store {args.store}" if args.store else ""
    return UsageError(
        f"{args.prog} {args.command}: error: table {name!r} of {args.db} is not embedded"
        f"{where}: run `{args.prog} embed {args.db} {name} --column COLUMN{where}` first"
    )


@contextmanager
def opened(args: argparse.Namespace, found: Peek, **keywords: Any):
    """The table's store with its remembered settings (or ``keywords``); closed at the end."""
    keywords.setdefault("read_only", True)
    keywords.setdefault("model_name", found.model)
    keywords.setdefault("backend", found.backend or "annoy")
    store = TableStore(args.db, found.table, store=args.store,
                       model_backend=getattr(args, "model_backend", "torch"), **keywords)
    try:
        yield store
    finally:
        store.close()


# -- embed ----------------------------------------------------------------------------------------
def run_embed(args: argparse.Namespace) -> int:
    found = peek(args, args.table)
    where = f"{args.prog} embed: error:"
    given = args.columns is not None or args.template is not None
    if not given and (args.where is not None or args.key is not None):
        raise UsageError(f"{where} --where and --key go with --column or --template")
    if not given and found.settings is None:
        raise UsageError(f"{where} table {found.table!r} is not embedded yet: say what to embed "
                         "with --column COLUMN (repeatable) or --template '{title}: {body}'")
    text = {"columns": args.columns, "template": args.template, "key": args.key,
            "where": args.where} if given else {}
    if given and found.settings is not None and not args.replace:
        with opened(args, found, **text) as probe:  # read-only: checks and normalises them
            wanted = probe.table_settings
        old = {k: v for k, v in found.settings.items() if k != "track_changes"}
        new = {k: v for k, v in wanted.items() if k != "track_changes"}
        if old != new:
            said = ", ".join(f"{k}={v!r}" for k, v in old.items() if v is not None and k != "table")
            raise UsageError(f"{where} {found.table!r} is embedded with {said}: run "
                             f"`{args.prog} embed {args.db} {found.table}` to keep them, or add "
                             "--replace to re-embed with the new settings")
    model, switch = found.model, False
    if args.model is not None and (found.model is None or model_identity(args.model, None) != found.model):
        if found.model is not None and not args.replace:
            raise UsageError(f"{where} the vectors of {found.table!r} were made by model "
                             f"{found.model!r}, not {args.model!r}: drop --model, or add "
                             "--replace to re-embed every row with it")
        model, switch = args.model, found.model is not None
    track = not args.no_triggers and (given or (found.settings or {}).get("track_changes", True)
                                      or args.store is not None)
    keywords = dict(text, read_only=False, model_name=model, allow_model_change=switch,
                    backend=args.backend or found.backend or "annoy", track_changes=bool(track))
    with opened(args, found, **keywords) as store:
        changed = None if args.full else store.pending_changes()
        incremental = changed is not None
        total = changed if incremental else store.conn.execute(
            f"SELECT COUNT(*) FROM {store.table_info.qualified}").fetchone()[0]
        progress = Progress(found.table, total)
        try:
            result = store.backfill_embeddings(args.batch_size, progress=progress, full=args.full)
        finally:
            progress.close()
        encoder = store.encoder
    rate = result.processed / result.seconds if result.seconds > 0 else 0.0
    print_table([("table", "embedded", "re-embedded", "removed", "unchanged", "failed", "seconds",
                  "records/s"),
                 (found.table, result.embedded, result.reembedded, result.removed,
                  result.unchanged, result.failed, f"{result.seconds:.2f}", f"{rate:.0f}")])
    print("read: the rows changed since the last run (recorded by triggers)" if incremental
          else "read: every row (hash scan)")
    for key, error in result.failures[:20]:
        warn(f"failed: {found.table} {key}: {error}")
    print(f"model calls: {getattr(encoder, 'calls', 0)}, "
          f"texts encoded: {getattr(encoder, 'texts_encoded', 0)}")
    return 1 if result.failed else 0


# -- tables, drop ---------------------------------------------------------------------------------
def embedded_tables(holder: str) -> list[str]:
    """The tables whose stores live in the file ``holder`` (read without writing anything)."""
    conn = _read_only(holder)
    try:
        metas = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%\\_meta' ESCAPE '\\'")]
        names = []
        for meta in metas:
            try:
                row = conn.execute(f"SELECT value FROM {quote(meta)} WHERE key = ?",
                                   (SETTINGS_KEY,)).fetchone()
            except sqlite3.Error:  # a table of the user's own named *_meta
                row = None
            if row:
                names.append(json.loads(row[0])["table"])
    finally:
        conn.close()
    return names


def run_tables(args: argparse.Namespace) -> int:
    holder = args.store if args.store else args.db
    if args.store and not os.path.isfile(args.store):
        raise UsageError(f"{args.prog} tables: error: no store file {args.store!r}")
    names = embedded_tables(holder)
    header = ("table", "rows", "vectors", "missing", "stale", "model", "backend", "changes",
              "index size")
    lines: list[tuple] = []
    for name in sorted(names):
        found = peek(args, name)
        with opened(args, found) as store:
            plan = store.backfill_plan(full=True)
            size = sum(os.path.getsize(p) for p in (store.index_path, store.metadata_path)
                       if p and os.path.isfile(p))
            changes = "triggers" if found.settings.get("track_changes") else "hash scan"
            lines.append((name, plan.records, store.embedding_count(), plan.missing, plan.stale,
                          store.model_id, store.backend_name, changes, human_bytes(size)))
    if args.json:
        print(dumps([dict(zip(header, line, strict=True)) for line in lines]))
    elif args.csv:
        write_csv(header, lines)
    elif lines:
        print_table([header, *lines])
    else:
        print(f"no embedded tables in {holder} (embed one with `{args.prog} embed`)")
    return 0


def run_drop(args: argparse.Namespace) -> int:
    found = peek(args, args.table)
    if found.settings is None:
        raise _not_embedded(args, found.table)
    with opened(args, found, read_only=False, track_changes=False) as store:
        vectors = store.embedding_count()
        store.drop()
    print(f"dropped {found.table}: {vectors} vectors, the change log and the index files; "
          "its rows are untouched")
    return 0


# -- similar, search --------------------------------------------------------------------------------
def run_similar(args: argparse.Namespace) -> int:
    found = peek(args, args.table)
    if found.settings is None:
        raise _not_embedded(args, found.table)
    with opened(args, found) as store:
        hits = store.similar(args.key, args.top_k)
        show_rows(args, store, hits, "_distance", empty="no other row has a vector yet")
    return 0


def run_table_search(args: argparse.Namespace) -> int:
    found = peek(args, args.table)
    if found.settings is None:
        raise _not_embedded(args, found.table)
    if not args.query.strip():
        raise UsageError(f"{args.prog} search: error: the query is empty: give the words to search for")
    where = None
    if args.where:
        where = {}
        for text in args.where:
            field, spec = parse_where_option(text)
            where[field] = spec
    with opened(args, found) as store:
        hits = store.search(args.query, args.top_k, mode=args.mode, where=where)
        if hits:
            empty = ""
        elif not store.embedding_count():
            empty = (f"no row of {found.table!r} has a vector yet: run `{args.prog} embed "
                     f"{args.db} {found.table}`")
        elif where:
            empty = ("no embedded row matches --where " + " ".join(repr(w) for w in args.where)
                     + " (values are compared as written, after the operator)")
        else:
            empty = "no row matches the query" + (" (keyword mode needs one of its words)"
                                                  if args.mode == "keyword" else "")
        show_rows(args, store, hits, "_distance" if args.mode == "vector" else "_score",
                  empty=empty)
    return 0


def show_rows(args: argparse.Namespace, store: TableStore, hits: list[dict], label: str,
              *, empty: str) -> None:
    """The hits as a table, JSON or CSV; ``empty`` says why there are none (on a terminal's
    table output only: JSON and CSV stay parseable)."""
    info = store.table_info
    if args.show:
        columns = list(dict.fromkeys(info.column(c, "--column") for c in args.show))
    elif args.json or args.csv:
        columns = list(info.columns)
    else:
        key = store.table_settings["key"]
        columns = list(dict.fromkeys([*([key] if key in info.columns else []),
                                      *store.embedded_columns]))
    rows = [(hit[label], *(hit[c] for c in columns)) for hit in hits]
    header = (label.lstrip("_"), *columns)
    if args.json:
        print(dumps([dict(zip(header, row, strict=True)) for row in rows]))
    elif args.csv:
        write_csv(header, rows)
    elif rows:
        print_table([header, *[(f"{row[0]:.3f}", *(_short(v) for v in row[1:])) for row in rows]])
    else:
        print(empty)


def _short(value: Any) -> str:
    text = " ".join(str(value).split()) if value is not None else ""
    return text[:60] + ("…" if len(text) > 60 else "")


def write_csv(header, rows) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([clean(v) if isinstance(v, str) else v for v in row])


def usage_errors(run):
    """A command whose bad input (an unknown table, column or key) is a usage error: exit 2."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except InvalidInputError as exc:
            raise UsageError(f"{args.prog} {args.command}: error: {exc}") from None
        except (EmbeddingError, sqlite3.Error, OSError) as exc:
            if is_locked(exc):  # what to do about it, as at open (handle.sqlite_error)
                exc = sqlite_error(str(args.db), exc)
            warn(f"{args.prog} {args.command}: error: {exc}")
            return 1

    return wrapped


TABLE_COMMANDS = {name: usage_errors(run) for name, run in (
    ("embed", run_embed), ("tables", run_tables), ("drop", run_drop), ("similar", run_similar),
)}
run_search_table = usage_errors(run_table_search)
