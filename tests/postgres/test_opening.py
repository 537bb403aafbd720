"""Opening a PostgreSQL store: the backend and path options, the missing extra, the SQLite
path that never imports psycopg, owners, read-only opens and the test server itself."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

import embeddable_db
from conformance.encoders import make_encoder
from conformance.engines import PgRecordsStore
from embeddable_db import BackendUnavailableError, InvalidInputError, StoreConflictError

SRC = str(Path(embeddable_db.__file__).resolve().parents[1])
TESTS = str(Path(__file__).resolve().parents[1])


def tables(conninfo: str) -> list[str]:
    """The schema's tables but the test store's own ``records``."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return sorted(row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            if row[0] != "records")


def open_store(conninfo: str, **options):
    options.setdefault("encoder", make_encoder("hash:32"))
    return PgRecordsStore(conninfo, **options)


def closing(store) -> None:
    store.close()
    store.conn.close()


def test_pgvector_is_the_default_backend_and_the_only_one(pg_conninfo):
    store = open_store(pg_conninfo)
    assert store.embedding_options.backend == "pgvector"
    assert store.index_path is None and store.metadata_path is None
    closing(store)
    store = open_store(pg_conninfo, backend="pgvector", index_options={"ef_search": 200, "m": 8})
    assert store.embedding_options.backend_settings == {"ef_search": 200, "m": 8}
    closing(store)
    store = open_store(pg_conninfo, index_options={"ef_search": 64})  # no backend= needed
    assert store.embedding_options.backend_settings == {"ef_search": 64}
    closing(store)


@pytest.mark.parametrize("options, error, message", [
    ({"backend": "annoy"}, InvalidInputError, "backend 'annoy' is for SQLite databases"),
    ({"backend": "faiss"}, InvalidInputError, "uses backend='pgvector'"),
    ({"index_path": "x.index"}, InvalidInputError, "index_path name index files"),
    ({"metadata_path": "x.json"}, InvalidInputError, "metadata_path name index files"),
    ({"backend": "milvus"}, BackendUnavailableError, "or pgvector"),
    ({"backend": "pgvector", "index_options": {"n_trees": 3}}, InvalidInputError,
     "unknown setting 'n_trees'"),
    ({"backend": "pgvector", "index_options": {"ef_search": 0}}, InvalidInputError, "ef_search"),
    ({"backend": "pgvector", "index_type": "hnsw"}, InvalidInputError, "index_type is a FAISS"),
])
def test_sqlite_options_with_a_postgres_connection_are_refused_and_change_nothing(
    pg_conninfo, options, error, message,
):
    before = tables(pg_conninfo)
    with pytest.raises(error, match=message):
        open_store(pg_conninfo, **options)
    assert tables(pg_conninfo) == before == []


def test_pgvector_with_a_sqlite_connection_is_refused(make_notes, tmp_path):
    with pytest.raises(InvalidInputError, match="backend 'pgvector' is the PostgreSQL engine's"):
        make_notes(backend="pgvector")
    with pytest.raises(InvalidInputError, match="bad options for backend 'annoy'.*ef_search"):
        make_notes(index_options={"ef_search": 64})  # pgvector's, on a SQLite database
    assert not list(tmp_path.glob("*.index"))


def test_a_second_class_on_the_same_table_is_refused(pg_conninfo):
    closing(open_store(pg_conninfo))

    class Other(PgRecordsStore):
        def iter_records(self):
            return iter(())

    with pytest.raises(StoreConflictError, match="holds the vectors of .*PgRecordsStore"):
        Other(pg_conninfo, encoder=make_encoder("hash:32"))


def test_read_only_open_of_a_new_schema_creates_nothing(pg_conninfo):
    store = open_store(pg_conninfo, read_only=True)
    assert store.embedding_count() == 0
    assert store.search_by_vector([1.0] * 32, top_k=3) == []
    assert store.search_by_keyword("anything") == []
    assert store.verify_index().ok
    closing(store)
    assert tables(pg_conninfo) == []


def run(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, TESTS]), OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=120)


def test_the_sqlite_path_never_imports_psycopg(tmp_path):
    result = run(f"""
        import sys
        import embeddable_db
        from conftest import NotesDB
        db = NotesDB({str(tmp_path / 'n.db')!r}, encoder=embeddable_db.HashingEncoder(16))
        db.add_note("hello world")
        db.backfill_embeddings()
        assert db.search_by_text("hello", top_k=1)[0][0] == "1"
        assert db.search_by_keyword("hello")[0][0] == "1"
        db.close()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("psycopg", "pgvector"))
        print("loaded:", loaded)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded: []"


def test_a_missing_extra_is_a_clear_error_naming_the_package(pg_conninfo):
    result = run(f"""
        import sys
        sys.modules["pgvector"] = None  # as if pgvector were not installed
        from embeddable_db import BackendUnavailableError
        from conformance.engines import PgRecordsStore
        from conformance.encoders import make_encoder
        try:
            PgRecordsStore({pg_conninfo!r}, encoder=make_encoder("hash:8"))
        except BackendUnavailableError as exc:
            print(exc)
    """)
    assert result.returncode == 0, result.stderr
    assert "needs the 'pgvector' package" in result.stdout
    assert "pip install 'embeddable-db[postgres]'" in result.stdout
    assert tables(pg_conninfo) == []


def test_other_connections_are_refused_with_what_to_do():
    class FakePsycopg2:
        pass

    FakePsycopg2.__module__ = "psycopg2.extensions"

    class Store(embeddable_db.EmbeddableDBMixin):
        def __init__(self, conn):
            self.conn = conn
            super().__init__(encoder=make_encoder("hash:8"))

    with pytest.raises(embeddable_db.EmbeddingError, match="psycopg2 is not supported"):
        Store(FakePsycopg2())


def test_the_test_server_runs_unprivileged_on_a_socket_in_its_own_folder(postgres_server):
    status = Path(f"/proc/{postgres_server.process.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    if os.geteuid() == 0:
        assert uid != 0 and uid == postgres_server._user.pw_uid
    with psycopg.connect(postgres_server.conninfo("postgres")) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == ""
        (data,) = conn.execute("SHOW data_directory").fetchone()
        (vector,) = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    assert Path(data).is_relative_to(postgres_server.root)
    assert postgres_server.socket_dir.is_relative_to(postgres_server.root)
    assert tuple(int(x) for x in vector.split(".")) >= (0, 8, 4)
    assert postgres_server.start_seconds < 30
