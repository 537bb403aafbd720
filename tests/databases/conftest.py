"""Fixtures for the six databases: a counting encoder, an opener that closes what it opened."""

from __future__ import annotations

import pytest

from .cases import CASES, Case, CountingEncoder


@pytest.fixture
def encoder():
    return CountingEncoder(64)


@pytest.fixture
def open_db(tmp_path, encoder):
    """``open_db(cls, path=None, **options)``: opened in tmp_path/data unless a path is given."""
    opened = []

    def make(cls, path=None, **options):
        options.setdefault("encoder", encoder)
        if path is None:
            options.setdefault("data_dir", tmp_path / "data")
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
