"""Engine factories: how the conformance suite opens, reopens and crashes one store per engine.

The tests never touch an engine's internals: they get a store (an ``EmbeddableDBMixin``
instance) from a factory and use the public API on it. What differs between engines --
where the records and vectors live, what "the index files" are, how another process opens the
same store -- is the factory's job, so a second engine is one subclass of ``EngineFactory``
added to ``ENGINES``; its ``variants`` become test parameters (``<name>-<variant>``).

What a new engine's factory must provide:

- ``name`` (class attribute): the engine's name, the first part of every test id.
- ``variants`` (class attribute): ``{variant: constructor options}``, one test parameter each
  (the SQLite engine's are its ANN backends); ``approximate``: the variants whose search may
  miss a true neighbour (the suite then demands recall instead of exact top-k, and still
  exact distances for every hit).
- ``available()`` (classmethod): None, or why the engine cannot run here (its tests skip).
  The PostgreSQL engine never skips: its server is a fixture, and one that cannot start fails.
- ``for_test(request, workdir, variant)`` (classmethod): the factory for one test; by default
  ``cls(workdir, variant)``; a server engine takes its fixtures from ``request`` here (the
  PostgreSQL one: a fresh schema of the test server).
- ``__init__(workdir, variant)``: nothing opened yet. ``workdir`` is the test's own empty
  temporary folder; a server engine is also given where its fresh database or schema is, and
  puts that in ``spec()``, so that ``from_spec`` in another process finds the same store.
- ``_connect(options) -> store``: open the factory's one store with these mixin constructor
  keywords (plus the variant's). The store is an ``EmbeddableDBMixin`` whose
  ``iter_records()`` yields the rows of the factory's records table as
  ``(id, {"body": text}, kind)`` and whose ``embedding_text(record)`` is ``record["body"]``.
  Called again after ``close``, it opens the same store (same records, same vectors).
- ``_disconnect(store)``: release what ``_connect`` made, after ``store.close()``.
- ``_put_records(rows)`` / ``_delete_records(ids)``: insert-or-replace ``(id, text, kind)``
  rows in, or delete ids from, the records table, committed, as the user's own SQL would.
- ``_discard_derived()``: delete everything the engine derives from the stored vectors (the
  SQLite engine's index and metadata files; pgvector's ANN index), keeping the vectors;
  fail if there was nothing to delete. Called while no store of the factory is open.
- ``spec()`` / ``from_spec(spec)``: a JSON description of the factory and its inverse; the
  defaults (name, variant, workdir) do when ``__init__`` needs nothing else.

The base class builds the rest on those: ``open``, ``reopen``, ``close``, ``put_records``,
``delete_records``, ``crash_and_reopen`` (a child process, ``child.py``, that writes through
the same factory and is SIGKILLed) and ``close_all``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import embeddable_db
from embeddable_db import EmbeddableDBMixin

from .encoders import make_encoder

HERE = Path(__file__).resolve().parent
CHILD = HERE / "child.py"
CHILD_TIMEOUT_SECONDS = 60

Row = tuple[Any, str, str]  # (record id, text, kind)


class EngineFactory(ABC):
    """One store of one engine variant, opened and reopened through the public API only."""

    name: ClassVar[str]
    variants: ClassVar[Mapping[str, Mapping[str, Any]]]
    approximate: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, workdir: Path, variant: str) -> None:
        if variant not in self.variants:
            raise ValueError(f"{self.name} has no variant {variant!r}")
        self.workdir = Path(workdir)
        self.variant = variant
        self._open: dict[int, tuple[EmbeddableDBMixin, dict[str, Any]]] = {}

    @classmethod
    def available(cls) -> str | None:
        return None

    @classmethod
    def for_test(cls, request: Any, workdir: Path, variant: str) -> EngineFactory:
        return cls(workdir, variant)

    @property
    def exact(self) -> bool:
        """True when search must equal a brute-force scan on the suite's (small) stores."""
        return self.variant not in self.approximate

    def __repr__(self) -> str:
        return f"<{self.name}-{self.variant} engine in {self.workdir}>"

    # -- what each engine provides ------------------------------------------------------------
    @abstractmethod
    def _connect(self, options: dict[str, Any]) -> EmbeddableDBMixin: ...

    @abstractmethod
    def _disconnect(self, store: EmbeddableDBMixin) -> None: ...

    @abstractmethod
    def _put_records(self, rows: Sequence[tuple[str, str, str]]) -> None: ...

    @abstractmethod
    def _delete_records(self, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def _discard_derived(self) -> None: ...

    def spec(self) -> dict[str, Any]:
        return {"engine": self.name, "variant": self.variant, "workdir": str(self.workdir)}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> EngineFactory:
        return cls(Path(spec["workdir"]), spec["variant"])

    # -- what the tests use -----------------------------------------------------------------
    def open(
        self,
        records: Mapping[Any, str] | None = None,
        *,
        kinds: str | Mapping[Any, str] = "note",
        encoder: Any = "hash:64",
        **options: Any,
    ) -> EmbeddableDBMixin:
        """Put ``records`` (id -> text; kind from ``kinds``, one for all or per id) in the
        records table, then open the store. ``encoder``: a fake's name (``encoders.py``) or
        an encoder object; ``options``: more mixin keywords (``embedding_version``, ...)."""
        if records:
            self.put_records(records, kinds=kinds)
        if isinstance(encoder, str):
            encoder = make_encoder(encoder)
        options = {"encoder": encoder, **options}
        store = self._connect(dict(options))
        self._open[id(store)] = (store, options)
        return store

    def close(self, store: EmbeddableDBMixin) -> dict[str, Any]:
        """Close ``store`` and what it was opened on; returns the options it was opened with."""
        _, options = self._open.pop(id(store))
        try:
            store.close()
        finally:
            self._disconnect(store)
        return options

    def reopen(
        self, store: EmbeddableDBMixin, *, discard_derived: bool = False, **changes: Any
    ) -> EmbeddableDBMixin:
        """Close ``store`` and open the same store again, with the same options (the same
        encoder object, so its counts go on) updated by ``changes``; with ``discard_derived``,
        delete the engine's derived index data in between."""
        options = self.close(store) | changes
        if discard_derived:
            self._discard_derived()
        return self.open(**options)

    def put_records(self, records: Mapping[Any, str], *, kinds: str | Mapping[Any, str] = "note") -> None:
        rows = [
            (str(rid), text, kinds if isinstance(kinds, str) else kinds[rid])
            for rid, text in records.items()
        ]
        self._put_records(rows)

    def delete_records(self, ids: Iterable[Any]) -> None:
        self._delete_records([str(rid) for rid in ids])

    def close_all(self) -> None:
        for store, _ in list(self._open.values()):
            self.close(store)

    def crash_and_reopen(
        self, steps: Sequence[Sequence[Any]], *, encoder: str, **options: Any
    ) -> EmbeddableDBMixin:
        """Run ``steps`` in a child process on this store, SIGKILL it once every step has
        returned (it then waits with the store open: ``close()`` never runs), and open the
        store here again with the same options and a fresh ``encoder`` of that name.

        Steps: ``("add", id, text, kind)``, ``("add_many", [(id, text, kind), ...])``,
        ``("remove", id)``, ``("save",)``. The child acknowledges each after it returned."""
        plan = self.workdir / "crash-plan.json"
        plan.write_text(json.dumps({
            "spec": self.spec(), "encoder": encoder, "options": options, "steps": list(steps),
        }))
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        # The child imports the library this process imported (a worktree's src, say).
        library_root = str(Path(embeddable_db.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(
            [library_root, str(HERE.parent), *filter(None, [env.get("PYTHONPATH")])]
        )
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(plan)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        try:
            lines = _read_until(proc, "waiting", CHILD_TIMEOUT_SECONDS)
            expected = [f"ok {i}" for i in range(len(steps))]
            if lines != ["ready", *expected]:
                proc.kill()
                raise AssertionError(f"child said {lines}; stderr:\n{proc.communicate()[1]}")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=CHILD_TIMEOUT_SECONDS)
            assert proc.returncode == -signal.SIGKILL, f"child exited with {proc.returncode}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                pipe.close()
        return self.open(encoder=encoder, **options)


def _read_until(proc: subprocess.Popen, last: str, timeout: float) -> list[str]:
    """The child's stdout lines up to ``last`` (excluded) or EOF; a child still silent after
    ``timeout`` seconds is killed, which ends the read."""
    lines: list[str] = []
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.strip() == last:
                break
            lines.append(line.strip())
    finally:
        timer.cancel()
    return lines


# -- SQLite: the records, the vectors and the index files' source of truth in one file -------------
RECORDS_DDL = (
    "CREATE TABLE IF NOT EXISTS records(id TEXT PRIMARY KEY, body TEXT NOT NULL, kind TEXT NOT NULL)"
)


class RecordsStore(EmbeddableDBMixin):
    """A store over one ``records`` table in its own SQLite file (the README's usage)."""

    def __init__(self, path: str, **options: Any) -> None:
        self.conn = sqlite3.connect(path, timeout=60)
        self.conn.execute(RECORDS_DDL)
        self.conn.commit()
        try:
            super().__init__(**options)
        except BaseException:  # a refused open (another model, say) leaves no connection behind
            self.conn.close()
            raise

    def embedding_text(self, record):
        return record["body"]

    def iter_records(self):
        for rid, body, kind in self.conn.execute("SELECT id, body, kind FROM records ORDER BY id"):
            yield rid, {"body": body}, kind


class SqliteEngine(EngineFactory):
    """Today's engine, over each ANN backend. Annoy answers by an exact numpy scan while the
    index holds at most ``exact_below`` = 50,000 vectors (backends/annoy.py), far above any
    store here; FAISS flat is exact at every size; FAISS HNSW is approximate at every size
    (only vectors still in the exact delta are scanned exactly)."""

    name = "sqlite"
    variants = {
        "annoy": {"backend": "annoy"},
        "faiss": {"backend": "faiss"},  # index_type "flat", the default
        "faiss-hnsw": {"backend": "faiss", "index_type": "hnsw"},
    }
    approximate = frozenset({"faiss-hnsw"})

    def __init__(self, workdir: Path, variant: str) -> None:
        super().__init__(workdir, variant)
        self.db_path = self.workdir / "store.db"
        self._derived: tuple[str, str] | None = None

    def _connect(self, options: dict[str, Any]) -> EmbeddableDBMixin:
        store = RecordsStore(str(self.db_path), **self.variants[self.variant], **options)
        self._derived = (store.index_path, store.metadata_path)
        return store

    def _disconnect(self, store: EmbeddableDBMixin) -> None:
        store.conn.close()

    def _records_conn(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.db_path), timeout=60)
        conn.execute(RECORDS_DDL)
        return conn

    def _put_records(self, rows: Sequence[tuple[str, str, str]]) -> None:
        conn = self._records_conn()
        try:
            with conn:
                conn.executemany("INSERT OR REPLACE INTO records(id, body, kind) VALUES (?, ?, ?)", rows)
        finally:
            conn.close()

    def _delete_records(self, ids: Sequence[str]) -> None:
        conn = self._records_conn()
        try:
            with conn:
                conn.executemany("DELETE FROM records WHERE id = ?", [(rid,) for rid in ids])
        finally:
            conn.close()

    def _discard_derived(self) -> None:
        assert self._derived is not None, "no store was opened, so there are no index files"
        for path in self._derived:
            os.remove(path)  # FileNotFoundError: the store wrote no index files to discard


# -- PostgreSQL: records and vectors in one schema of the test server -------------------------------
PG_RECORDS_DDL = (
    "CREATE TABLE IF NOT EXISTS records(id text PRIMARY KEY, body text NOT NULL, kind text NOT NULL)"
)


class PgRecordsStore(EmbeddableDBMixin):
    """The same store over a ``records`` table of a PostgreSQL schema. The connection is in
    autocommit mode, as the engine's docstring recommends: iter_records' SELECT then opens no
    transaction that every batch of a backfill would wait in."""

    def __init__(self, conninfo: str, **options: Any) -> None:
        import psycopg

        self.conn = psycopg.connect(conninfo, autocommit=True)
        try:
            self.conn.execute(PG_RECORDS_DDL)
            super().__init__(**options)
        except BaseException:
            self.conn.close()
            raise

    def embedding_text(self, record):
        return record["body"]

    def iter_records(self):
        for rid, body, kind in self.conn.execute("SELECT id, body, kind FROM records ORDER BY id"):
            yield rid, {"body": body}, kind


class PostgresEngine(EngineFactory):
    """pgvector's HNSW index is approximate at every size (the planner may also scan small
    tables exactly, which the suite accepts the same way); its distances are exact."""

    name = "postgres"
    variants = {"pgvector": {}}
    approximate = frozenset({"pgvector"})

    def __init__(self, workdir: Path, variant: str, conninfo: str = "") -> None:
        super().__init__(workdir, variant)
        if not conninfo:
            raise ValueError("the PostgreSQL factory needs the conninfo of a test schema")
        self.conninfo = conninfo

    @classmethod
    def for_test(cls, request: Any, workdir: Path, variant: str) -> EngineFactory:
        return cls(workdir, variant, request.getfixturevalue("pg_conninfo"))

    def spec(self) -> dict[str, Any]:
        return super().spec() | {"conninfo": self.conninfo}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> EngineFactory:
        return cls(Path(spec["workdir"]), spec["variant"], spec["conninfo"])

    def _connect(self, options: dict[str, Any]) -> EmbeddableDBMixin:
        return PgRecordsStore(self.conninfo, **self.variants[self.variant], **options)

    def _disconnect(self, store: EmbeddableDBMixin) -> None:
        store.conn.close()

    def _sql(self, statement: str, rows: Sequence[tuple] = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(PG_RECORDS_DDL)
            with conn.transaction(), conn.cursor() as cur:
                if rows:
                    cur.executemany(statement, rows)
                    return []
                cur.execute(statement)
                return cur.fetchall() if cur.description else []

    def _put_records(self, rows: Sequence[tuple[str, str, str]]) -> None:
        self._sql(
            "INSERT INTO records(id, body, kind) VALUES (%s, %s, %s) ON CONFLICT (id) DO "
            "UPDATE SET body = excluded.body, kind = excluded.kind", rows,
        )

    def _delete_records(self, ids: Sequence[str]) -> None:
        self._sql("DELETE FROM records WHERE id = %s", [(rid,) for rid in ids])

    def _discard_derived(self) -> None:
        """pgvector's HNSW index and the keyword GIN index: the engine's derived data."""
        found = self._sql(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = 'embeddings' AND indexdef ~ 'USING (hnsw|gin)'"
        )
        assert found, "the store has no HNSW or GIN index to discard"
        names = ", ".join('"' + name.replace('"', '""') + '"' for (name,) in found)
        self._sql(f"DROP INDEX {names}")


#: Every engine under the suite; each of its variants is one test parameter.
ENGINES: tuple[type[EngineFactory], ...] = (SqliteEngine, PostgresEngine)


def engine_from_spec(spec: Mapping[str, Any]) -> EngineFactory:
    """The factory ``spec()`` described, in another process."""
    by_name = {engine.name: engine for engine in ENGINES}
    return by_name[spec["engine"]].from_spec(spec)
