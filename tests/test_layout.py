"""The tree's shape (README "Architecture", docs/architecture.md): dependencies point one way
and modules stay small. Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "embeddable_db"
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    """Dotted names below the package ("engine.sqlite.store") -> file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, *, top_level_only: bool) -> set[str]:
    """The package's modules that ``name`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                base = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("embeddable_db"):
                base = node.module.removeprefix("embeddable_db").lstrip(".")
            else:
                continue
            out.add(base)
            out.update(f"{base}.{alias.name}".strip(".") for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("embeddable_db."):
                    out.add(alias.name.removeprefix("embeddable_db."))
    modules = _modules()
    return {m for m in out if m in modules}


MODULES = _modules()


def test_the_layout_is_what_the_readme_describes():
    for name in ("mixin", "options", "encoding", "backfill", "rows", "engine", "engine.sqlite",
                 "engine.sqlite.store", "engine.sqlite.live_view", "engine.sqlite.index_files",
                 "engine.sqlite.verify", "backends", "databases", "cli"):
        assert name in MODULES, name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_450_lines(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_nothing_below_the_mixin_imports_it(name):
    above = ("", "mixin", "databases", "tables", "cli")  # "" is the package's __init__
    if name.split(".")[0] in above:
        return
    assert "mixin" not in _imports(name, MODULES[name], top_level_only=False)


def test_dependencies_point_one_way():
    """backends know nothing of engines or models; encoding and backfill nothing of SQLite;
    the engine protocol loads an engine only when one is asked for."""
    never = {
        "backends": ("engine", "encoding", "encoder", "backfill", "databases", "cli"),
        "encoding": ("engine", "backfill", "handle", "files", "databases", "cli"),
        "backfill": ("engine.sqlite", "handle", "files", "databases", "cli"),
        "rows": ("engine", "encoding", "backfill"),
        "engine.sqlite": ("backfill", "databases", "cli"),
    }
    for name, path in MODULES.items():
        for prefix, forbidden in never.items():
            if name == prefix or name.startswith(prefix + "."):
                imported = _imports(name, path, top_level_only=False)
                bad = {m for m in imported for f in forbidden if m == f or m.startswith(f + ".")}
                assert not bad, f"{name} imports {sorted(bad)}"
    assert not {m for m in _imports("engine", MODULES["engine"], top_level_only=True)
                if m.startswith("engine.sqlite")}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "web" and not n.startswith("web.")))
def test_only_the_serve_command_imports_the_web_page_and_only_lazily(name):
    """The [web] extra is optional: the core must import without Starlette or Jinja2."""
    def web(imported: set[str]) -> set[str]:
        return {m for m in imported if m == "web" or m.startswith("web.")}

    anywhere = web(_imports(name, MODULES[name], top_level_only=False))
    if name.startswith("cli"):
        assert not web(_imports(name, MODULES[name], top_level_only=True)), name
    else:
        assert not anywhere, f"{name} imports {sorted(anywhere)}"
