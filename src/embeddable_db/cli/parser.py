"""The command's flags. Every value is checked here, so a bad one is one line and exit 2."""

from __future__ import annotations

import argparse

from ..backends import backend_names
from ..databases import REGISTRY
from ..encoder import HASH_MODEL_PREFIX, MODEL_BACKENDS

NAMES = tuple(REGISTRY)
URL_SCHEMES = ("postgresql://", "postgres://")
URL_HELP = ("a PostgreSQL database holding the databases, one schema each "
            "(postgresql://user@host/dbname; default: $EMBEDDABLE_DB_URL unless --data-dir is "
            "given; needs the [postgres] extra)")


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


def model_name(text: str) -> str:
    """A model name or path; ``hash:<dimension>`` is checked now rather than per database."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a model, got an empty string")
    if text.startswith(HASH_MODEL_PREFIX):
        dim = text[len(HASH_MODEL_PREFIX) :]
        if not dim.isdigit() or int(dim) < 2:
            raise argparse.ArgumentTypeError(f"{text!r}: use 'hash:<dimension>', e.g. hash:64")
    return text


READ_URL_HELP = ("a hot standby of the --database-url server to send searches to (default: "
                 "$EMBEDDABLE_DB_READ_URL when the databases are on PostgreSQL); writes stay on "
                 "the primary, and a search waits up to 0.2 s for the standby to replay what "
                 "this process wrote, else the primary answers")


def database_url(text: str) -> str:
    """A PostgreSQL URL; checked here for its scheme, the server is asked later."""
    if not text.startswith(URL_SCHEMES):
        raise argparse.ArgumentTypeError(
            f"{text[:80]!r} is not a PostgreSQL URL: use postgresql://user@host/dbname")
    return text


def folder(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string")
    return text


def build_parser(prog: str = "embeddable-db") -> Parser:
    parser = Parser(prog=prog, description="Backfill, search, stats, verify and rebuild the six "
                    "embeddable_db databases (SQLite files, or PostgreSQL with --database-url); migrate "
                    "them to PostgreSQL; embed and search any table of any SQLite file.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def common(sub: argparse.ArgumentParser, backend_help: str) -> None:
        sub.add_argument(
            "--db", nargs="+", type=database_name, default=list(NAMES), metavar="NAME",
            help=f"databases to use (default: all of {', '.join(NAMES)})",
        )
        sub.add_argument(
            "--data-dir", type=folder, default=None,
            help="folder holding the databases (default: $EMBEDDABLE_DB_HOME or ./data)",
        )
        sub.add_argument("--database-url", type=database_url, default=None, metavar="URL",
                         help=URL_HELP)
        sub.add_argument("--backend", type=backend_name, default=None,
                         help="vector index backend of a SQLite database: annoy or faiss "
                         + backend_help)
        sub.add_argument(
            "--model", type=model_name, default=None,
            help="sentence-transformers model name or path (default: the model each "
            "database's vectors were made by; the default model for a database without any)",
        )
        sub.add_argument(
            "--model-backend", choices=MODEL_BACKENDS, default="torch",
            help="run the model on torch, or on ONNX Runtime (default model only; "
            "no torch import, fast start)",
        )

    converts = "(default: the one each store was built with, else annoy; another one converts)"
    reads = "(read commands always use the one each store was built with)"
    backfill = commands.add_parser("backfill", help="embed missing and stale records")
    common(backfill, converts)
    backfill.add_argument("--batch-size", type=positive_int, default=100,
                          help="records encoded and committed at once (default: 100)")
    backfill.add_argument("--dry-run", action="store_true",
                          help="report what would be done; encode and write nothing")
    backfill.add_argument("--full", action="store_true",
                          help="read every record and compare hashes, not only the records "
                          "the triggers recorded as changed")
    backfill.add_argument("--no-wait", action="store_true",
                          help="skip a database another backfill is working on instead of waiting")
    backfill.add_argument("--allow-model-change", action="store_true",
                          help="let --model differ from the model a database's vectors were made "
                          "by: re-embeds all of it")

    search = commands.add_parser(
        "search", help="hybrid, vector or keyword search across databases "
        "(or: search DB TABLE QUERY)",
        epilog="example: embeddable-db search 'invoice reminders' --mode hybrid "
        "--where status=active --where 'estimated_profit>=10'. "
        "search DB TABLE QUERY searches a table of any SQLite file embedded with `embed` "
        "instead: embeddable-db search app.db notes QUERY (see its own --help)",
    )
    search.add_argument("query")
    common(search, reads)
    search.add_argument("--top-k", type=positive_int, default=5)
    search.add_argument("--kind", default=None, help="only hits of this kind")
    search.add_argument(
        "--mode", choices=("hybrid", "vector", "keyword"), default="hybrid",
        help="hybrid (default: keywords and vectors fused, best on the labelled set), vector "
        "(by meaning) or keyword (by words; the model is not loaded)",
    )
    search.add_argument(
        "--where", action="append", metavar="FIELD=VALUE",
        help="only records whose FIELD matches (repeatable, all must hold); also FIELD!=, <, "
        "<=, >, >= VALUE and FIELD~PATTERN (SQL like)",
    )
    search.add_argument("--json", action="store_true", help="print hits as JSON")
    search.add_argument("--read-url", type=database_url, default=None, metavar="URL",
                        help=READ_URL_HELP)

    for name, text, backend_help in (
        ("stats", "records, vectors, missing, stale, orphaned per database", reads),
        ("verify", "check that the stored vectors and their indexes agree: SQLite, index and "
         "metadata files, or PostgreSQL's table and indexes (exit 1 if not)", reads),
        ("rebuild", "rebuild indexes from the stored vectors (no re-encoding)", converts),
    ):
        common(commands.add_parser(name, help=text), backend_help)
    serve = commands.add_parser("serve", help="a local web page to search and browse the stores "
                                "(needs the [web] extra)")
    serve.add_argument("files", nargs="*", metavar="DB",
                       help="SQLite files whose embedded tables (`embed`) to serve as well; "
                       "given without --data-dir, only these")
    serve.add_argument("--data-dir", type=folder, default=None,
                       help="folder holding the databases (default: $EMBEDDABLE_DB_HOME or ./data)")
    serve.add_argument("--database-url", type=database_url, default=None, metavar="URL",
                       help=URL_HELP)
    serve.add_argument("--read-url", type=database_url, default=None, metavar="URL",
                       help=READ_URL_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=positive_int, default=8001, help="port (default: 8001)")
    serve.add_argument("--open", action="store_true", help="open the page in a browser")
    serve.add_argument("--allow-backfill", action="store_true",
                       help="add a backfill button (otherwise nothing on the page writes)")
    serve.add_argument("--model-backend", choices=MODEL_BACKENDS, default="onnx",
                       help="run the model on ONNX Runtime (default: fast first query) or torch")
    from .migrating import add_migrate_command
    from .table_parser import add_table_commands  # here: it imports the tables package

    add_migrate_command(commands)
    add_table_commands(commands)
    return parser
