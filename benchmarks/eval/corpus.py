"""The evaluation corpus: one document per documented module, class or function of the stdlib.

Read with ``ast`` from this interpreter's stdlib folder (nothing imported), in sorted order
with fixed filters, so that the same Python gives the same documents and ids. A document's id
is its dotted name (``json.dumps``, ``posixpath.join``, ``collections.OrderedDict.move_to_end``)
and its text is that name followed by its docstring: what a user sees in ``help()``.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# Folders left out: third-party code, test suites, demos, generated codecs (near-identical text).
SKIP_DIRS = {
    "site-packages", "idlelib", "lib2to3", "turtledemo", "ensurepip", "__pycache__",
    "pydoc_data", "encodings", "lib-dynload",
}
MIN_DOC_CHARS = 20  # shorter docstrings ("Return self.") say too little to be an answer
MAX_DOC_CHARS = 2000  # long module docstrings are cut: the model reads ~256 tokens anyway
_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _public(name: str) -> bool:
    return not name.startswith("_") or name == "__init__"


def _walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
    """(dotted name, docstring) of the public classes and functions defined in ``node``'s body.

    Only module and class bodies are entered: a function nested in a function is not an API.
    """
    for child in getattr(node, "body", []):
        if isinstance(child, _DEFS) and _public(child.name):
            name = f"{prefix}.{child.name}"
            doc = ast.get_docstring(child)
            if doc:
                yield name, doc
            if isinstance(child, ast.ClassDef):
                yield from _walk(child, name)


def _files(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs if d not in SKIP_DIRS and not d.startswith(("test", "config-"))
        )
        for name in sorted(files):
            if name.endswith(".py") and not name.startswith("test_"):
                yield Path(folder, name)


def build_corpus(root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """[(doc_id, text)] sorted by id; the first definition wins when a name is defined twice."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    docs: dict[str, str] = {}
    for path in _files(root):
        module = _module_name(root, path)
        if any(not _public(part) for part in module.split(".")):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        found = [(module, ast.get_docstring(tree) or ""), *_walk(tree, module)]
        for name, doc in found:
            doc = doc.strip()
            if len(doc) >= MIN_DOC_CHARS and name not in docs:
                docs[name] = f"{name}: {doc[:MAX_DOC_CHARS]}"
    return sorted(docs.items())


if __name__ == "__main__":
    corpus = build_corpus()
    print(f"{len(corpus)} documents")
    for doc_id, text in corpus[:: max(1, len(corpus) // 15)]:
        print(f"  {doc_id:<50} {text[len(doc_id) + 2:][:70]!r}")
