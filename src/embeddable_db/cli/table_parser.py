"""Flags of the commands that work on any table of any SQLite file (``embed``, ``tables``,
``drop``, ``similar`` and ``search DB TABLE QUERY``), in the conventions of sqlite-utils and
llm: the database path and table are positional, every command's ``--help`` has an example.

``search QUERY`` already searches the six databases. ``search DB TABLE QUERY`` is told apart
by its first positional: when that names an existing SQLite file (by its header) it is a table
search (``table_search_argv``); anything else is the six-database search, as documented.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from ..encoder import MODEL_BACKENDS
from ..tables.store import MODES
from .parser import Parser, backend_name, model_name, positive_int

SQLITE_HEADER = b"SQLite format 3\x00"
GLOBAL_FLAGS = ("-v", "--verbose")


def is_sqlite_file(path: str) -> bool:
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as handle:
            return handle.read(16) == SQLITE_HEADER
    except (OSError, ValueError):
        return False


def sqlite_file(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file {text!r}")
    if not is_sqlite_file(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a SQLite database file")
    return text


def table_search_argv(argv: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """(global flags, the table search's arguments) when ``argv`` is ``search DB TABLE ...``
    with DB an existing SQLite file; None for every other command line."""
    at = 0
    while at < len(argv) and argv[at] in GLOBAL_FLAGS:
        at += 1
    if len(argv) > at + 1 and argv[at] == "search" and is_sqlite_file(argv[at + 1]):
        return list(argv[:at]), list(argv[at + 1 :])
    return None


def _example(text: str) -> dict:
    return {"epilog": "example:\n  " + text, "formatter_class": argparse.RawDescriptionHelpFormatter}


def _db_table(sub: argparse.ArgumentParser, table: bool = True) -> None:
    sub.add_argument("db", type=sqlite_file, metavar="DB", help="the SQLite database file")
    if table:
        sub.add_argument("table", metavar="TABLE", help="a table of DB")
    sub.add_argument("--store", default=None, metavar="FILE",
                     help="keep the vectors, keyword index and index files in FILE instead of "
                     "in DB (DB is then only read)")


def _model(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--model-backend", choices=MODEL_BACKENDS, default="torch",
                     help="run the model on torch, or on ONNX Runtime (default model only)")


def _rows_out(sub: argparse.ArgumentParser, top_k: int) -> None:
    sub.add_argument("--top-k", type=positive_int, default=top_k, help=f"rows to show (default: {top_k})")
    sub.add_argument("-c", "--column", dest="show", action="append", default=None, metavar="COLUMN",
                     help="a column to show (repeat for more; default: the key and the embedded "
                     "columns, or every column with --json/--csv)")
    formats = sub.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="print the rows as JSON")
    formats.add_argument("--csv", action="store_true", help="print the rows as CSV")


def add_table_commands(commands) -> None:
    """``embed``, ``tables``, ``drop`` and ``similar`` on the main parser's subcommands."""
    embed = commands.add_parser(
        "embed", help="embed the rows of any table of a SQLite file",
        description="Embed the text of a table's rows. The first run remembers its settings; "
        "later runs re-embed only the rows that changed (recorded by triggers, or found by a "
        "hash of every row with --no-triggers or --store).",
        **_example("embeddable-db embed app.db notes --column title --column body\n"
                   "  embeddable-db embed app.db notes          # later: only what changed"),
    )
    _db_table(embed)
    text = embed.add_mutually_exclusive_group()
    text.add_argument("-c", "--column", dest="columns", action="append", default=None,
                      metavar="COLUMN", help="a column whose text is embedded (repeat for more)")
    text.add_argument("--template", default=None,
                      help="the text to embed, with column names in braces: '{title}: {body}'")
    embed.add_argument("--where", default=None, metavar="SQL",
                       help="embed only the rows of this SQL condition on the table's columns")
    embed.add_argument("--key", default=None, metavar="COLUMN",
                       help="the unique column that names a row (default: the primary key, "
                       "else the rowid)")
    embed.add_argument("--backend", type=backend_name, default=None,
                       help="vector index backend: annoy or faiss (default: the one the store was "
                       "built with, else annoy; another one converts)")
    embed.add_argument("--model", type=model_name, default=None,
                       help="sentence-transformers model name or path (default: the one the "
                       "store's vectors were made by, else the default model)")
    _model(embed)
    embed.add_argument("--batch-size", type=positive_int, default=100,
                       help="rows encoded and committed at once (default: 100)")
    embed.add_argument("--no-triggers", action="store_true",
                       help="do not add triggers to DB (changes are then found by a hash scan)")
    embed.add_argument("--replace", action="store_true",
                       help="change the remembered columns, template, where, key or model "
                       "(re-embeds what they change)")
    embed.add_argument("--full", action="store_true",
                       help="compare every row with its vector, not only the recorded changes")

    tables = commands.add_parser(
        "tables", help="the embedded tables of a SQLite file",
        description="Each embedded table: rows, vectors, missing, stale, model, backend, size.",
        **_example("embeddable-db tables app.db"),
    )
    _db_table(tables, table=False)
    formats = tables.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="print as JSON")
    formats.add_argument("--csv", action="store_true", help="print as CSV")
    _model(tables)

    drop = commands.add_parser(
        "drop", help="remove a table's vectors, triggers and index files",
        description="Remove everything embed added for TABLE; the rows of TABLE are left alone.",
        **_example("embeddable-db drop app.db notes"),
    )
    _db_table(drop)

    similar = commands.add_parser(
        "similar", help="the rows nearest to one row of a table",
        description="The rows whose vectors are nearest to the vector of the row KEY.",
        **_example("embeddable-db similar app.db notes 42 --top-k 5"),
    )
    _db_table(similar)
    similar.add_argument("key", metavar="KEY", help="the key of the row (its primary key or rowid)")
    _rows_out(similar, 10)
    _model(similar)


def build_table_search_parser(prog: str) -> Parser:
    search = Parser(
        prog=f"{prog} search",
        description="Search an embedded table: the rows best matching QUERY.",
        **_example(f"{prog} search app.db notes 'database is locked' --mode hybrid -c title"),
    )
    _db_table(search)
    search.add_argument("query", metavar="QUERY")
    search.add_argument("--mode", choices=MODES, default="vector",
                        help="vector (meaning), keyword (words, BM25) or hybrid (both, fused)")
    search.add_argument("--where", action="append", default=None, metavar="FILTER",
                        help="only rows where COLUMN=VALUE (also !=, <, <=, >, >=, and ~ for "
                        "like); repeat to combine")
    _rows_out(search, 10)
    _model(search)
    return search
