"""Fixtures of the tests of the engine's parts: a store on a SQLite file in tmp_path (more
connections to the same file through ``db``), a folder for its index files, each backend."""

from __future__ import annotations

import pytest

from .stored import BACKENDS, Connections


@pytest.fixture
def db(tmp_path):
    connections = Connections(str(tmp_path / "store.db"))
    yield connections
    connections.close()


@pytest.fixture
def store(db):
    return db.store()


@pytest.fixture
def folder(tmp_path):
    return str(tmp_path / "files")


@pytest.fixture(params=list(BACKENDS))
def backend(request):
    return request.param
