"""The command line used carelessly (issue 10): real subprocesses on real SQLite files.

Each test runs ``python -m embeddable_db.cli`` (or the backfill script) the way a user would
and checks what that user notices: exit codes, one-line messages that say what to do, output a
terminal or a JSON reader can take, and data folders that are byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_helpers import tree_digest, user_visible_digest

import embeddable_db
from embeddable_db.databases import REGISTRY

SRC = Path(embeddable_db.__file__).resolve().parents[1]  # the tree under test
SCRIPT = SRC.parent / "scripts" / "backfill_embeddings.py"
MODEL = "hash:32"  # not the default model: the CLI must find it in each store by itself
BOTS = [("invoice-bot", "reads supplier invoices and books them"),
        ("mail-bot", "summarises customer emails every morning"),
        ("scrape-bot", "scrapes competitor prices from websites")]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EMBEDDABLE_DB_HOME"}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", EMBEDDABLE_DB_THREADS="1")
    env.update(extra)
    return env


def command(*args: object, script: bool = False) -> list[str]:
    start = [sys.executable, str(SCRIPT)] if script else [sys.executable, "-m", "embeddable_db.cli"]
    return [*start, *map(str, args)]


def cli(*args: object, cwd=None, env=None, script: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args, script=script), capture_output=True, text=True,
                          cwd=cwd, env=env or environment(), timeout=300)


def sql(data: Path, name: str, statement: str, rows=((),)) -> None:
    """Plain SQL, as another program would write it (the connection is closed after)."""
    conn = sqlite3.connect(data / name / f"{name}.db")
    with conn:
        conn.executemany(statement, rows)
    conn.close()


def make_data(data: Path, *, model: str = MODEL, bots=BOTS, backfill: bool = True) -> Path:
    """All six databases; bot and error hold rows (inserted with plain SQL), with vectors."""
    for name in REGISTRY:
        REGISTRY[name](data_dir=data, model_name=model).close()
    sql(data, "bot", "INSERT INTO bots (name, purpose) VALUES (?, ?)", bots)
    sql(data, "error", "INSERT INTO errors (message) VALUES (?)",
        [("sqlite3.OperationalError: database is locked",),
         ("ConnectionResetError: connection reset by peer",)])
    if backfill:
        for name in ("bot", "error"):
            db = REGISTRY[name](data_dir=data, model_name=model)
            db.backfill_embeddings()
            db.close()
    return data


@pytest.fixture
def data(tmp_path) -> Path:
    return make_data(tmp_path / "data")


def vectors(data: Path, name: str = "bot") -> dict[str, str]:
    """record id -> model of the live vectors in SQLite."""
    conn = sqlite3.connect(data / name / f"{name}.db")
    with conn:
        rows = conn.execute(f"SELECT record_id, model FROM {REGISTRY[name].embedding_table} "
                            "WHERE deleted = 0 AND vector IS NOT NULL").fetchall()
    conn.close()
    return dict(rows)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def no_traceback(err: str) -> None:
    for bad in ("Traceback", "Exception ignored", "BrokenPipeError", "KeyboardInterrupt"):
        assert bad not in err, err


# -- 3: read commands and dry runs write nothing; each store's own model is used ------------------
@pytest.mark.parametrize("args", [
    ["stats"], ["verify"], ["search", "invoices"], ["search", "invoices", "--json"],
    ["backfill", "--dry-run"],
])
def test_read_commands_and_dry_runs_change_no_file(data, args):
    """All six stores, with vectors and without: read commands open them read-only."""
    before = user_visible_digest(data)
    out = cli(*args, "--data-dir", data)
    assert out.returncode == 0, out.stdout + out.stderr
    assert user_visible_digest(data) == before
    if args[0] == "stats":  # the index was not emptied for the default model
        assert " 3 " in next(line for line in out.stdout.splitlines() if line.startswith("bot"))
        assert MODEL in out.stdout
    if args[:2] == ["search", "invoices"]:
        assert "invoice-bot" in out.stdout  # found with the store's own model, not the default


def test_stats_keeps_the_index_of_a_store_built_with_another_model(data):
    assert cli("stats", "--data-dir", data).returncode == 0
    found = cli("search", "supplier invoices", "--db", "bot", "--json", "--data-dir", data)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["record"]["name"] == "invoice-bot"
    verify = cli("verify", "--data-dir", data)
    assert verify.returncode == 0 and "bot: ok: sqlite 3, index 3" in verify.stdout


def test_dry_run_of_a_model_switch_writes_nothing_and_counts_everything(data):
    before = user_visible_digest(data)
    out = cli("backfill", "--dry-run", "--db", "bot", "--model", "hash:16", "--allow-model-change",
              "--data-dir", data)
    assert out.returncode == 0, out.stderr
    bot = next(line for line in out.stdout.splitlines() if line.startswith("bot")).split()
    assert bot[1:5] == ["0", "3", "0", "0"]  # embedded, re-embedded, removed, unchanged
    assert "nothing was encoded or written" in out.stdout
    assert user_visible_digest(data) == before
    assert set(vectors(data).values()) == {MODEL}


# -- 6: switching models is explicit; a half-switched store is reported ---------------------------
def test_backfill_with_another_model_needs_allow_model_change(data):
    before = tree_digest(data)
    for extra in ([], ["--dry-run"]):
        out = cli("backfill", "--model", "hash:16", *extra, "--data-dir", data)
        assert out.returncode == 2
        line = one_line(out.stderr)
        assert repr(MODEL) in line and "--allow-model-change" in line and "bot" in line
        assert out.stdout == ""
    assert tree_digest(data) == before
    switched = cli("backfill", "--db", "bot", "--model", "hash:16", "--allow-model-change",
                   "--data-dir", data)
    assert switched.returncode == 0, switched.stderr
    assert set(vectors(data).values()) == {"hash:16"} and len(vectors(data)) == 3
    again = cli("backfill", "--db", "bot", "--data-dir", data)  # now the store's model is hash:16
    assert again.returncode == 0 and "texts encoded: 0" in again.stdout


def test_read_commands_refuse_a_model_the_store_was_not_built_with(data):
    before = tree_digest(data)
    for args in (["search", "invoices"], ["stats"], ["verify"]):
        out = cli(*args, "--model", "hash:16", "--data-dir", data)
        assert out.returncode == 2
        assert repr(MODEL) in one_line(out.stderr) and "drop --model" in out.stderr
    assert tree_digest(data) == before


def half_switch(data: Path) -> None:
    """One record embedded with another model, as an interrupted model switch leaves a store."""
    db = REGISTRY["bot"](data_dir=data, model_name="hash:16", allow_model_change=True)
    from embeddable_db.databases import BotRecord
    db.add(BotRecord("new-bot", purpose="files expense reports"))
    db.close()


def test_half_switched_store_is_reported_by_verify_and_stats_with_what_to_do(data):
    half_switch(data)
    verify = cli("verify", "--db", "bot", "--data-dir", data)
    assert verify.returncode == 1, verify.stdout
    assert "half-switched" in verify.stdout and "3 of 'hash:32'" in verify.stdout
    assert "embeddable-db backfill --db bot" in verify.stdout
    stats = cli("stats", "--db", "bot", "--data-dir", data)
    assert stats.returncode == 0
    assert "half-switched" in stats.stdout and "embeddable-db backfill --db bot" in stats.stdout
    assert "hash:16 (+1 other)" in stats.stdout
    finish = cli("backfill", "--db", "bot", "--data-dir", data)  # the advice, as given
    assert finish.returncode == 0, finish.stderr
    assert set(vectors(data).values()) == {"hash:16"} and len(vectors(data)) == 4
    assert cli("verify", "--db", "bot", "--data-dir", data).returncode == 0


# -- 11: a closed output pipe stops the printing, never the work ----------------------------------
def closed_pipe() -> int:
    """The write end of a pipe nobody reads any more, as after ``| head -1`` has exited."""
    read, write = os.pipe()
    os.close(read)
    return write


def big_bot_store(data: Path, n: int) -> None:
    make_data(data, bots=[(f"bot {i}", f"does task {i} of kind {i % 13}") for i in range(n)],
              backfill=False)


def test_backfill_finishes_when_its_output_pipe_is_closed(tmp_path):
    data = tmp_path / "data"
    big_bot_store(data, 600)
    pipe = closed_pipe()
    try:  # `embeddable-db backfill 2>&1 | head -1`
        proc = subprocess.run(command("backfill", "--batch-size", "10", "--data-dir", data,
                                      "--model", MODEL),
                              stdout=pipe, stderr=pipe, env=environment(), timeout=300)
    finally:
        os.close(pipe)
    assert proc.returncode == 0
    assert len(vectors(data)) == 600 and len(vectors(data, "error")) == 2


def test_backfill_reports_on_stderr_when_only_stdout_is_closed(tmp_path):
    data = tmp_path / "data"
    big_bot_store(data, 200)
    pipe = closed_pipe()
    try:
        proc = subprocess.run(command("backfill", "--batch-size", "10", "--data-dir", data,
                                      "--model", MODEL),
                              stdout=pipe, stderr=subprocess.PIPE, text=True, env=environment(),
                              timeout=300)
    finally:
        os.close(pipe)
    assert proc.returncode == 0
    no_traceback(proc.stderr)
    assert "bot: 200/200 records" in proc.stderr
    assert len(vectors(data)) == 200


@pytest.mark.parametrize("args", [["search", "invoices"], ["search", "invoices", "--json"],
                                  ["verify"], ["stats"]])
def test_read_commands_into_a_closed_pipe_exit_quietly(data, args):
    pipe = closed_pipe()
    try:
        proc = subprocess.run(command(*args, "--data-dir", data, "--model", MODEL), stdout=pipe,
                              stderr=subprocess.PIPE, text=True, env=environment(), timeout=300)
    finally:
        os.close(pipe)
    assert proc.returncode == 0  # the command's own status: it did its work
    no_traceback(proc.stderr)
    assert proc.stderr == ""


def test_search_piped_into_head(data):
    shell = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -1; echo "status ${PIPESTATUS[0]}"', "-",
         *command("verify", "--data-dir", data, "--model", MODEL)],
        capture_output=True, text=True, env=environment(), timeout=300)
    no_traceback(shell.stderr)
    assert shell.stdout.splitlines()[0].startswith("bot: ok")
    assert shell.stdout.splitlines()[-1] == "status 0"


# -- 16: Ctrl-C at any moment: exit 130, one line, and the truth about what was committed ----------
def test_ctrl_c_names_what_was_really_committed(tmp_path):
    data = tmp_path / "data"
    big_bot_store(data, 20000)
    proc = subprocess.Popen(command("backfill", "--db", "bot", "--batch-size", "20",
                                    "--data-dir", data, "--model", MODEL),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment())
    try:
        first = proc.stderr.readline()
        assert first.startswith("bot: "), first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    no_traceback(err)
    last = err.strip().splitlines()[-1]
    assert "vectors were committed" in last and "run the backfill again" in last, last
    committed = int(last.split(": ", 1)[1].split()[0])
    named = last.split("the last for record ")[1].split(")")[0].strip("'")
    stored = vectors(data)
    assert committed == len(stored) and named in stored  # what it says is what SQLite holds
    assert f"bot      {committed}" in out or f" {committed} " in out  # the summary agrees


CONSOLE = [sys.executable, "-c", "import sys; from embeddable_db.cli import main; sys.exit(main())"]


@pytest.mark.parametrize(("how", "delay"), [
    ("script", 0.3), ("script", 0.5), ("script", 0.8), ("console", 0.3), ("console", 0.5),
])
def test_ctrl_c_at_any_moment_exits_130_without_a_traceback(tmp_path, how, delay):
    """While the library loads, opens the store or counts (the first tenth of a second is
    Python's own start-up, before any line runs). ``console`` runs main() as pip's console
    script does: the package loads nothing until used, so main() takes Ctrl-C over before
    numpy and the mixin load. A Ctrl-C once batches are being written is
    test_ctrl_c_names_what_was_really_committed: waiting for a progress line there, not a
    fixed delay, keeps both from racing a fast machine to the end."""
    data = tmp_path / "data"
    big_bot_store(data, 30000)
    flags = ["--batch-size", "50", "--data-dir", str(data), "--model", MODEL]
    argv = (command(*flags, script=True) if how == "script"
            else [*CONSOLE, "backfill", *flags])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment())
    try:
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, (out, err)
    no_traceback(err)
    assert err.strip().splitlines()[-1].startswith("interrupted"), err


def test_backfill_counts_records_with_sql_not_a_second_pass(data, monkeypatch, capsys):
    """The progress total comes from COUNT(*): the records are read once, by the backfill."""
    from embeddable_db.cli import main

    calls = []
    cls = REGISTRY["bot"]
    original = cls.iter_records

    def counted(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(cls, "iter_records", counted)
    assert main(["backfill", "--db", "bot", "--data-dir", str(data), "--model", MODEL]) == 0
    assert calls == [1]
    assert "bot: 3/3 records" in capsys.readouterr().err


# -- 19: a missing data folder or database is an error, and nothing is created --------------------
@pytest.mark.parametrize("args", [["search", "x"], ["stats"], ["verify"], ["rebuild"],
                                  ["backfill", "--dry-run"]])
def test_read_commands_on_a_missing_data_dir_create_nothing(tmp_path, args):
    typo = tmp_path / "dta"
    out = cli(*args, "--data-dir", typo, cwd=tmp_path)
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert str(typo) in line and "does not exist" in line and "--data-dir" in line
    assert list(tmp_path.iterdir()) == []
    env = environment(EMBEDDABLE_DB_HOME=str(typo))
    assert cli(*args, env=env, cwd=tmp_path).returncode == 2
    assert list(tmp_path.iterdir()) == []


def test_read_commands_on_a_missing_database_create_nothing(tmp_path):
    data = tmp_path / "data"
    REGISTRY["bot"](data_dir=data, model_name=MODEL).close()
    before = tree_digest(data)
    for args in (["stats"], ["search", "x", "--db", "bot", "workflow"], ["verify", "--db", "info"]):
        out = cli(*args, "--data-dir", data)
        assert out.returncode == 2
        assert "no database" in one_line(out.stderr) and "backfill" in out.stderr
    assert tree_digest(data) == before
    assert sorted(p.name for p in data.iterdir()) == ["bot"]
    assert cli("stats", "--db", "bot", "--data-dir", data, "--model", MODEL).returncode == 0


# -- 20: ~ in --data-dir or $EMBEDDABLE_DB_HOME is expanded once, for every file ------------------
@pytest.mark.parametrize("how", ["flag", "env"])
def test_quoted_tilde_puts_databases_and_locks_under_home(tmp_path, how):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = environment(HOME=str(home), **({"EMBEDDABLE_DB_HOME": "~/dd"} if how == "env" else {}))
    flag = ["--data-dir", "~/dd"] if how == "flag" else []
    out = cli("backfill", "--db", "bot", "--model", MODEL, *flag, cwd=work, env=env)
    assert out.returncode == 0, out.stderr
    assert (home / "dd" / "bot" / "bot.db").is_file()
    assert (home / "dd" / "bot" / ".backfill.lock").exists()
    assert list(work.iterdir()) == []  # no ./~ folder with a lock that excludes nobody
    assert cli("stats", "--db", "bot", "--model", MODEL, *flag, cwd=work, env=env).returncode == 0


# -- 23: valid JSON and a terminal that stored text cannot drive -----------------------------------
HOSTILE = "books \x1b[31mred\x1b[0m rooms\x00 \x07\x9b2J \u202eevil \u00e9t\u00e9 \u65e5\u672c"


@pytest.fixture
def hostile(tmp_path) -> Path:
    data = make_data(tmp_path / "data", bots=[("inf-bot", HOSTILE)], backfill=False)
    sql(data, "bot", "UPDATE bots SET estimated_profit = 9e999")  # another program's Infinity
    assert cli("backfill", "--db", "bot", "--model", MODEL, "--data-dir", data).returncode == 0
    return data


def test_search_json_is_valid_json_for_non_finite_numbers(hostile):
    out = cli("search", "books", "--db", "bot", "--json", "--data-dir", hostile, "--model", MODEL)
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert hits[0]["record"]["estimated_profit"] is None
    assert hits[0]["record"]["purpose"] == HOSTILE  # the text itself survives, escaped by JSON


def test_search_table_escapes_control_characters(hostile):
    out = subprocess.run(command("search", "books", "--db", "bot", "--data-dir", hostile,
                                 "--model", MODEL),
                         capture_output=True, env=environment(PYTHONIOENCODING="utf-8"),
                         timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode("utf-8")
    bad = [ch for ch in text if ch != "\n" and (ord(ch) < 32 or 0x7f <= ord(ch) <= 0x9f
                                                or ch == "\u202e")]
    assert bad == []
    assert "\\x1b[31mred\\x1b[0m rooms\\x00 \\x07\\x9b2J \\u202eevil" in text
    assert "\u00e9t\u00e9 \u65e5\u672c" in text  # ordinary Unicode stays readable


# -- 29: an empty query is a usage error; a failed backfill says what failed -----------------------
@pytest.mark.parametrize("query", ["", "   "])
def test_empty_query_is_a_usage_error(data, query):
    out = cli("search", query, "--data-dir", data, "--model", MODEL)
    assert out.returncode == 2
    assert "query is empty" in one_line(out.stderr)
    assert out.stdout == ""


def test_failed_backfill_says_what_failed(tmp_path):
    data = tmp_path / "data"
    for name in ("bot", "info"):
        (data / name).mkdir(parents=True)
        (data / name / f"{name}.db").write_bytes(b"not a database at all " * 200)
    out = cli("backfill", "--db", "bot", "info", "--model", MODEL, "--data-dir", data)
    assert out.returncode == 1
    assert "bot: not backfilled: file is not a database" in out.stdout
    assert "info: not backfilled: file is not a database" in out.stdout
    assert "database  embedded" not in out.stdout  # no empty table
    no_traceback(out.stderr)


# -- 31: read commands never convert the index -----------------------------------------------------
@pytest.mark.parametrize("args", [["search", "invoices", "--json"], ["stats"], ["verify"]])
def test_read_commands_never_convert_the_index(data, args):
    before = user_visible_digest(data)
    out = cli(*args, "--backend", "faiss", "--db", "bot", "error", "--data-dir", data,
              "--model", MODEL)
    assert out.returncode == 0, out.stderr
    assert user_visible_digest(data) == before
    assert json.loads((data / "bot" / "bot_embeddings.json").read_text())["backend"] == "annoy"
    assert "bot: its index is annoy" in out.stderr and "only backfill and rebuild" in out.stderr
    if args[0] == "search":
        assert json.loads(out.stdout)[0]["record"]["name"] == "invoice-bot"


def test_interrupted_backfill_result_names_the_last_committed_record(tmp_path):
    """``BackfillResult.last_committed_id`` and ``committed``: what SQLite really holds."""
    from embeddable_db import BackfillInterrupted

    data = tmp_path / "data"
    big_bot_store(data, 2000)
    db = REGISTRY["bot"](data_dir=data, model_name=MODEL)
    batches = []

    def progress(result):
        batches.append(result.processed)
        if len(batches) == 3:
            raise KeyboardInterrupt

    with pytest.raises(BackfillInterrupted) as caught:
        db.backfill_embeddings(batch_size=20, progress=progress)
    db.close()
    result = caught.value.result
    stored = vectors(data)
    assert result.committed == len(stored) == 60
    assert result.last_committed_id in stored
    assert result.last_record_id not in stored  # read ahead, never committed: not named as such
    assert f"{result.committed} vectors committed" in str(caught.value)
