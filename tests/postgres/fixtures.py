"""The PostgreSQL fixtures, shared by every test folder (imported by ``tests/conftest.py``).

``postgres_server`` starts one real server per test session, only when a test asks for it
(a run of the SQLite tests alone starts none); a server that cannot start fails those tests
with the reason, it never skips them. ``pg_schema`` gives each test its own new schema in
one session database, and ``pg_conninfo`` a connection string whose ``search_path`` is that
schema (then ``public``, where the vector extension lives); ``pg_url`` is a URL of a new
database (the six databases' ``url=``).

``pg_replica`` is a primary with a streaming hot standby, one pair per test module that asks
for it: a server of its own rather than the session's, which by then holds every database the
other tests made (a base backup copies them all) and whose every test would be replayed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from .server import LocalPostgres, LocalStandby


@dataclass(frozen=True)
class PgSchema:
    """One test's schema: where to connect, and the conninfo that makes it the default."""

    server: LocalPostgres
    dbname: str
    name: str

    @property
    def conninfo(self) -> str:
        return self.server.conninfo(self.dbname, options=f"-c search_path={self.name},public")


def new_schema(server: LocalPostgres, dbname: str) -> PgSchema:
    import psycopg
    from psycopg import sql

    name = f"s_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.conninfo(dbname), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    return PgSchema(server, dbname, name)


@contextmanager
def running_server() -> Iterator[LocalPostgres]:
    """A new server, started (one that cannot start fails the test with the reason), and
    stopped at the end: the session's, or a test's own that it restarts under its feet."""
    server = LocalPostgres()
    try:
        server.start()
    except Exception as exc:
        pytest.fail(f"the PostgreSQL test server did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    with running_server() as server:
        yield server


@pytest.fixture(scope="session")
def pg_database(postgres_server) -> str:
    """The session's database, with the vector extension."""
    return postgres_server.create_database("embeddable_test")


@pytest.fixture
def pg_schema(postgres_server, pg_database) -> PgSchema:
    return new_schema(postgres_server, pg_database)


@pytest.fixture
def pg_conninfo(pg_schema) -> str:
    return pg_schema.conninfo


@pytest.fixture
def pg_stores(pg_conninfo):
    """``open_(cls=PgRecordsStore, **options)``: a store on the test's schema (the hashing
    encoder unless given one); whatever is still open is rolled back and closed at the end."""
    from conformance.encoders import make_encoder
    from conformance.engines import PgRecordsStore

    opened = []

    def open_(cls=PgRecordsStore, **options):
        options.setdefault("encoder", make_encoder("hash:32"))
        store = cls(pg_conninfo, **options)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        if not store.conn.closed:
            store.conn.rollback()
            store.close()
            store.conn.close()


@pytest.fixture
def pg_url(postgres_server) -> str:
    """A ``postgresql://`` URL of a new database of the session's server (the vector
    extension installed), for the six databases, which each take a schema named after
    themselves: a test of its own database keeps them apart (~40 ms to make)."""
    return postgres_server.url(postgres_server.create_database())


@dataclass(frozen=True)
class Replica:
    """A primary and its hot standby; ``database()`` makes a database on the primary and waits
    until the standby has it too."""

    primary: LocalPostgres
    standby: LocalStandby

    def database(self) -> str:
        import psycopg

        name = self.primary.create_database()
        with psycopg.connect(self.primary.conninfo("postgres"), autocommit=True) as conn:
            (position,) = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        self.wait_replayed(position)
        return name

    def wait_replayed(self, position, timeout: float = 30.0) -> None:
        """Wait until the standby has replayed the primary's WAL up to ``position``."""
        import time

        import psycopg

        deadline = time.monotonic() + timeout
        with psycopg.connect(self.standby.conninfo("postgres"), autocommit=True) as conn:
            while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                   (str(position),)).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the standby did not replay {position} in {timeout} s")
                time.sleep(0.01)


@pytest.fixture(scope="module")
def pg_replica():
    primary = LocalPostgres()
    try:
        primary.start()
        standby = primary.start_standby()
    except Exception as exc:
        primary.stop()
        pytest.fail(f"the PostgreSQL primary and standby did not start: {exc}", pytrace=False)
    try:
        yield Replica(primary, standby)
    finally:
        primary.stop()
