"""Fixtures for the six databases: a counting encoder, an opener that closes what it opened,
and the engine it opens them on.

Every test that uses ``open_db`` runs twice, on SQLite (a file under tmp_path) and on
PostgreSQL (a new database of the test server; each of the six takes its schema there),
unless it is marked ``sqlite_only`` (it is about files: paths, index files, FTS5 tables, the
trace of SQLite statements) or ``model`` (the real model's answers do not depend on the
engine, and one run of it is enough).
"""

from __future__ import annotations

import pytest

from .cases import CASES, Case, CountingEncoder

ENGINES = ("sqlite", "postgres")


def pytest_generate_tests(metafunc):
    if "engine" not in metafunc.fixturenames:
        return
    definition = metafunc.definition
    if definition.get_closest_marker("sqlite_only") or definition.get_closest_marker("model"):
        return  # the engine fixture's default: sqlite, and the test ids stay as they were
    metafunc.parametrize("engine", ENGINES, indirect=True)


@pytest.fixture
def engine(request) -> str:
    """``"sqlite"`` or ``"postgres"``: where ``open_db`` opens the databases."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def encoder():
    return CountingEncoder(64)


@pytest.fixture
def location(engine, tmp_path, request) -> dict:
    """The keywords that place a database: ``data_dir`` (SQLite) or ``url`` (PostgreSQL)."""
    if engine == "postgres":
        return {"url": request.getfixturevalue("pg_url")}
    return {"data_dir": tmp_path / "data"}


@pytest.fixture
def open_db(location, encoder):
    """``open_db(cls, path=None, **options)``: opened where ``location`` says unless a path
    (SQLite) is given."""
    opened = []

    def make(cls, path=None, **options):
        options.setdefault("encoder", encoder)
        if path is None:
            for key, value in location.items():
                options.setdefault(key, value)
        db = cls(path, **options)
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.close()


@pytest.fixture(params=list(CASES))
def case(request) -> Case:
    """Each of the six databases in turn."""
    return CASES[request.param]
