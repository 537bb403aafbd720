"""The main job, small: embed a few hundred real texts with the default model and search them.

Texts are the first paragraphs of Python standard-library docstrings, so the demo needs no
data download. Everything lands in demo/data/ (recreated on each run).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import shutil
import sqlite3
import sys
import time
from pathlib import Path

from embeddable_db import EmbeddableDBMixin

DATA = Path(__file__).parent / "data"
QUERIES = [
    "compress files into an archive",
    "parse command line arguments",
    "send an email message",
    "database connection timed out",
    "run code concurrently in threads",
]


class DocsDB(EmbeddableDBMixin):
    """Docstrings of standard-library modules, one row per module."""

    def __init__(self, path: Path, **options) -> None:
        self.conn = sqlite3.connect(path)
        self.conn.execute("CREATE TABLE IF NOT EXISTS docs(id INTEGER PRIMARY KEY, module TEXT, body TEXT)")
        self.conn.commit()
        super().__init__(**options)

    def embedding_text(self, record: dict) -> str:
        return f"{record['module']}: {record['body']}"

    def iter_records(self):
        for rid, module, body in self.conn.execute("SELECT id, module, body FROM docs"):
            yield rid, {"module": module, "body": body}, "doc"


def stdlib_docs(limit: int = 300) -> list[tuple[str, str]]:
    """(module, first paragraph of its docstring) for importable stdlib modules."""
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names)
    docs = []
    for name in names:
        if name.startswith("_") or name in {"antigravity", "this", "idlelib", "tkinter", "turtle"}:
            continue
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - some modules need a display or a platform
            continue
        members = [(name, module)] + [
            (f"{name}.{attr}", obj)
            for attr, obj in sorted(vars(module).items())
            if not attr.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and getattr(obj, "__module__", None) == name
        ][:3]
        for label, obj in members:
            doc = inspect.getdoc(obj) or ""
            paragraph = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
            if len(paragraph) > 40:
                docs.append((label, paragraph[:600]))
        if len(docs) >= limit:
            break
    return docs[:limit]


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    docs = stdlib_docs()
    db = DocsDB(DATA / "docs.db")
    db.conn.executemany("INSERT INTO docs(module, body) VALUES (?, ?)", docs)
    db.conn.commit()
    print(f"stored {len(docs)} standard-library docstrings in {DATA / 'docs.db'}")
    print("loading the model and embedding (first use imports sentence-transformers) ...")
    started = time.perf_counter()

    def progress(result) -> None:
        print(f"  embedded {result.embedded} records", flush=True)

    result = db.backfill_embeddings(batch_size=64, progress=progress)
    print(f"backfill: {result.embedded} embedded, {result.failed} failed "
          f"in {time.perf_counter() - started:.1f} s")
    for query in QUERIES:
        print(f"\nsearch: {query!r}")
        modules = dict(db.conn.execute("SELECT id, module FROM docs"))
        for record_id, distance in db.search_by_text(query, top_k=3):
            print(f"  {distance:.3f}  {modules[int(record_id)]}")
    print(f"\nverify: {db.verify_index()}")
    db.close()


if __name__ == "__main__":
    main()
