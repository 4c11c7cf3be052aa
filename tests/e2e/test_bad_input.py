"""What the real command does with bad input: one clear line, the right exit code, no harm.

Each case checks that the first line on stderr names the culprit (the task, the run
id, the param, the file), that the exit code is the documented one (1 for a run
whose tasks failed, 2 for bad input), that no traceback leaks out, and, where a
journal exists, that it is exactly as it was before: a refused command writes
nothing.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

# -- helpers ------------------------------------------------------------------


def assert_refused(result: subprocess.CompletedProcess[str], code: int, *culprits: str) -> None:
    """Exit `code`, no traceback, and a first stderr line that names every culprit."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output, output
    lines = result.stderr.splitlines()
    assert lines, f"nothing on stderr; stdout was {result.stdout!r}"
    for culprit in culprits:
        assert culprit in lines[0], lines[0]


def digest(journal_rows: Any, db: Path) -> str:
    """A hash of everything the journal holds: every run row and every event row."""
    runs = journal_rows(db, "SELECT * FROM runs ORDER BY run_id")
    events = journal_rows(db, "SELECT * FROM events ORDER BY seq")
    return hashlib.sha256(repr((runs, events)).encode()).hexdigest()


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


SIMPLE = """
name: simple
params: {count: 2}
tasks:
  - {id: a, tool: echo, input: {count: "${params.count}"}}
"""


@pytest.fixture(scope="module")
def journal(durable, write, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A valid journal holding one succeeded run, `known`."""
    folder = tmp_path_factory.mktemp("journal")
    workflow = write(folder, "simple.yaml", SIMPLE)
    db = folder / "journal.db"
    result = durable("run", str(workflow), "--db", str(db), "--run-id", "known", cwd=folder)
    assert result.returncode == 0, result.stderr
    return {"folder": folder, "workflow": workflow, "db": db}


# -- tasks that fail: the run finishes, exit 1 --------------------------------

TOOLS = '''
from __future__ import annotations

import durable


@durable.tool
def make_object() -> object:
    return object()


@durable.tool
def make_set() -> set:
    return {1, 2}


@durable.tool
def kind_of(value: object) -> str:
    """The Python type a dependent was handed."""
    return type(value).__name__


@durable.tool
def explode() -> None:
    raise RuntimeError("kaboom")
'''

FAILING = {
    "object": """
name: unserialisable
imports: [tools]
tasks:
  - {id: bad, tool: make_object}
  - {id: fine, tool: echo, input: {n: 1}}
""",
    "set": """
name: a_set
imports: [tools]
tasks:
  - {id: bad, tool: make_set}
  - {id: seen, tool: kind_of, input: {value: "${bad.output}"}}
""",
    "raises": """
name: raises
imports: [tools]
tasks:
  - {id: bad, tool: explode}
  - {id: fine, tool: echo, input: {n: 1}}
""",
    "timeout": """
name: slow
tasks:
  - {id: bad, tool: sleep, input: {seconds: 20}, timeout: 0.2}
  - {id: fine, tool: echo, input: {n: 1}}
""",
}


@pytest.fixture(scope="module")
def failing(durable, write, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Each FAILING workflow run once (all at once), with its `status --json`."""

    # Folders are made here, one by one: `mktemp` is not thread-safe (its first
    # call creates the session's base folder).
    folders = {name: tmp_path_factory.mktemp(name) for name in FAILING}

    def run(name: str) -> dict[str, Any]:
        folder = folders[name]
        write(folder, "tools.py", TOOLS)
        workflow = write(folder, "workflow.yaml", FAILING[name])
        db = str(folder / "journal.db")
        began = time.monotonic()
        result = durable("run", str(workflow), "--db", db, "--run-id", name, cwd=folder)
        elapsed = time.monotonic() - began
        status = durable("status", name, "--db", db, "--json", cwd=folder)
        assert status.returncode == 0, status.stderr
        log = durable("log", name, "--db", db, "--json", cwd=folder) if name == "object" else None
        return {
            "result": result,
            "elapsed": elapsed,
            "status": json.loads(status.stdout),
            "log": log,
        }

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(FAILING, pool.map(run, FAILING), strict=True))


def test_unserialisable_output_fails_the_task_naming_the_type(
    failing: dict[str, dict[str, Any]],
) -> None:
    case = failing["object"]
    assert_refused(case["result"], 1, "bad", "object")
    tasks = case["status"]["tasks"]
    assert tasks["bad"]["state"] == "failed"
    assert "object" in tasks["bad"]["error"]
    assert tasks["fine"]["state"] == "succeeded"
    # The journal holds the failure, and reading it back works.
    assert case["log"].returncode == 0, case["log"].stderr
    bad_kinds = [
        e["kind"]
        for e in map(json.loads, case["log"].stdout.splitlines())
        if e.get("task_id") == "bad"
    ]
    assert bad_kinds == ["task_started", "task_failed"]


def test_set_output_is_journaled_as_a_list_and_handed_on_as_one(
    failing: dict[str, dict[str, Any]],
) -> None:
    """An output is what the journal stores: msgspec writes a set as an array.

    So the task succeeds, its output reads back as a list, and its dependent is
    handed that list (not the Python set), live as it would be after a resume.
    """
    case = failing["set"]
    assert case["result"].returncode == 0, case["result"].stdout + case["result"].stderr
    assert "Traceback" not in case["result"].stdout + case["result"].stderr
    tasks = case["status"]["tasks"]
    assert tasks["bad"]["state"] == "succeeded"
    assert tasks["bad"]["output"] == [1, 2]
    assert tasks["seen"]["output"] == "list"


def test_raising_tool_fails_the_task_with_its_error(failing: dict[str, dict[str, Any]]) -> None:
    case = failing["raises"]
    assert_refused(case["result"], 1, "bad", "kaboom")
    tasks = case["status"]["tasks"]
    assert tasks["bad"]["state"] == "failed"
    assert "RuntimeError" in tasks["bad"]["error"] and "kaboom" in tasks["bad"]["error"]
    assert tasks["fine"]["state"] == "succeeded"
    assert case["status"]["status"] == "failed"


def test_timeout_fails_the_task(failing: dict[str, dict[str, Any]]) -> None:
    case = failing["timeout"]
    assert_refused(case["result"], 1, "bad", "timed out")
    assert case["elapsed"] < 10
    tasks = case["status"]["tasks"]
    assert tasks["bad"]["state"] == "failed"
    assert "timed out" in tasks["bad"]["error"]
    assert tasks["fine"]["state"] == "succeeded"


# -- bad input: exit 2, nothing written ---------------------------------------


@pytest.mark.parametrize("command", ["resume", "status", "log", "output"])
def test_unknown_run_id(durable, journal_rows, journal: dict[str, Path], command: str) -> None:
    db = journal["db"]
    before = digest(journal_rows, db)
    result = durable(command, "no-such-run", "--db", str(db), cwd=journal["folder"])
    assert_refused(result, 2, "no-such-run")
    assert result.stdout == ""
    assert digest(journal_rows, db) == before


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (("-p", "nosuch=1"), "nosuch"),
        (("-p", "noequals"), "noequals"),
        # The journal keeps 64-bit integers: a larger one crashed the run it started.
        (("-p", "count=100000000000000000000000"), "param 'count': an integer outside 64 bits"),
        (("-p", "count=" + "[" * 3000 + "]" * 3000), "param 'count': nested deeper than 100"),
    ],
    ids=["undeclared-param", "malformed-param", "huge-integer-param", "deep-param"],
)
def test_bad_param(
    durable, journal_rows, journal: dict[str, Path], args: tuple[str, ...], culprit: str
) -> None:
    db = journal["db"]
    before = digest(journal_rows, db)
    result = durable("run", str(journal["workflow"]), *args, "--db", str(db), cwd=journal["folder"])
    assert_refused(result, 2, culprit)
    assert digest(journal_rows, db) == before


def test_missing_workflow_file(durable, journal_rows, journal: dict[str, Path]) -> None:
    db = journal["db"]
    before = digest(journal_rows, db)
    result = durable("run", "does-not-exist.yaml", "--db", str(db), cwd=journal["folder"])
    assert_refused(result, 2, "does-not-exist.yaml")
    assert digest(journal_rows, db) == before


# click's usage errors, in durable's layout: `error:` and click's words for the problem
# (which name the option or argument) first, then the usage line and the help hint.
USAGE_ERRORS = [
    pytest.param(("run", "WORKFLOW", "-j", "0"), "durable run", "'--jobs'", id="jobs-0"),
    pytest.param(
        ("run", "WORKFLOW", "--durability", "bogus"),
        "durable run",
        "'--durability'",
        id="durability",
    ),
    pytest.param(
        ("run", "WORKFLOW", "--db", "."),
        "durable run",
        "'--db'",
        id="db-directory",
        marks=pytest.mark.sqlite_only("a --db that is a directory"),
    ),
    pytest.param(("runs", "--since", "soon"), "durable runs", "'--since'", id="since"),
    pytest.param(  # a date Python reads, and cannot turn into a time (it said "no date")
        ("runs", "--since", "0001-01-01"),
        "durable runs",
        "too far from 1970",
        id="since-0001",
    ),
    pytest.param(("runs", "--limit", "0"), "durable runs", "'--limit'", id="limit-0"),
    pytest.param(("runs", "--status", "bogus"), "durable runs", "'--status'", id="status"),
    pytest.param(("prune", "--older-than", "soon"), "durable prune", "'--older-than'", id="age"),
    pytest.param(
        ("graph", "WORKFLOW", "--format", "bogus"), "durable graph", "'--format'", id="format"
    ),
    pytest.param(
        ("run", "WORKFLOW", "--json", "-q"), "durable run", "--json and --quiet", id="json-quiet"
    ),
    pytest.param(("run",), "durable run", "'WORKFLOW'", id="missing-argument"),
    pytest.param(("run", "WORKFLOW", "--bogus"), "durable run", "'--bogus'", id="unknown-option"),
    pytest.param(("--bogus",), "durable", "'--bogus'", id="unknown-top-option"),
    pytest.param(("bogus",), "durable", "'bogus'", id="unknown-command"),
    pytest.param(("cache", "bogus"), "durable cache", "'bogus'", id="unknown-subcommand"),
    # click's FloatRange reads `nan` and `inf`, and lets them through.
    pytest.param(("worker", "--lease", "nan"), "durable worker", "'--lease'", id="lease-nan"),
    pytest.param(("worker", "--grace", "inf"), "durable worker", "'--grace'", id="grace-inf"),
]


@pytest.mark.parametrize(("args", "command", "culprit"), USAGE_ERRORS)
def test_usage_error_says_error_first(
    durable,
    journal_rows,
    journal: dict[str, Path],
    args: tuple[str, ...],
    command: str,
    culprit: str,
) -> None:
    db = journal["db"]
    before = digest(journal_rows, db)
    args = tuple(str(journal["workflow"]) if arg == "WORKFLOW" else arg for arg in args)
    env = {"DURABLE_DB": str(db)}
    result = durable(*args, env=env, cwd=journal["folder"])
    assert_refused(result, 2, culprit)
    lines = result.stderr.splitlines()
    assert len(lines) == 3 and lines[0].startswith("error: "), result.stderr
    assert lines[1].startswith(f"  Usage: {command} "), result.stderr
    assert lines[2] == f"  Try '{command} --help' for help.", result.stderr
    assert result.stdout == ""
    assert digest(journal_rows, db) == before


# A command that would create the journal, one that reads it, one that would drive a run.
JOURNAL_COMMANDS = [("run", "WORKFLOW"), ("status", "known"), ("resume", "known")]


def _command(args: tuple[str, ...], workflow: Path) -> list[str]:
    return [str(workflow) if arg == "WORKFLOW" else arg for arg in args]


@pytest.mark.sqlite_only("a --db file that is not SQLite")
@pytest.mark.parametrize("args", JOURNAL_COMMANDS, ids=lambda args: args[0])
def test_journal_that_is_not_sqlite(durable, write, tmp_path: Path, args: tuple[str, ...]) -> None:
    workflow = write(tmp_path, "simple.yaml", SIMPLE)
    db = write(tmp_path, "notes.db", "these are my notes, not a journal\n")
    before = file_hash(db)
    result = durable(*_command(args, workflow), "--db", str(db), cwd=tmp_path)
    assert_refused(result, 2, "notes.db")
    assert "SQLite" in result.stderr
    assert file_hash(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db", "simple.yaml"]


@pytest.mark.parametrize("command", ["run", "resume"])
def test_detach_without_workers_is_refused(
    durable, journal_rows, journal: dict[str, Path], command: str
) -> None:
    """`--detach` was taken as `--workers`; on SQLite the error then named `--workers`,
    an option the command did not have."""
    db = journal["db"]
    before = digest(journal_rows, db)
    target = str(journal["workflow"]) if command == "run" else "known"
    result = durable(command, target, "--detach", "--db", str(db), cwd=journal["folder"])
    assert_refused(result, 2, "--detach", "give --workers too")
    assert digest(journal_rows, db) == before


@pytest.mark.sqlite_only("a --db path through a file")
@pytest.mark.parametrize("below", ["j.db", "sub/j.db"])
def test_journal_under_a_file_names_the_file(durable, write, tmp_path: Path, below: str) -> None:
    """mkdir said "File exists" (or "Not a directory"): the file in the way is named."""
    workflow = write(tmp_path, "simple.yaml", SIMPLE)
    result = durable("run", workflow, "--db", f"{workflow}/{below}", cwd=tmp_path)
    assert_refused(result, 2, f"{workflow}/{below}: cannot open: {workflow} is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["simple.yaml"]


@pytest.fixture(scope="module")
def newer_journal(journal: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a valid journal whose schema version says a newer durable wrote it."""
    folder = tmp_path_factory.mktemp("newer")
    db = folder / "journal.db"
    db.write_bytes(journal["db"].read_bytes())
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA user_version = 999")
    connection.commit()
    connection.close()
    assert not Path(f"{db}-wal").exists()
    return db.read_bytes()


@pytest.mark.sqlite_only("a journal file whose PRAGMA user_version is newer")
@pytest.mark.parametrize("args", JOURNAL_COMMANDS, ids=lambda args: args[0])
def test_journal_of_a_newer_schema(
    durable, write, tmp_path: Path, newer_journal: bytes, args: tuple[str, ...]
) -> None:
    workflow = write(tmp_path, "simple.yaml", SIMPLE)
    db = tmp_path / "journal.db"
    db.write_bytes(newer_journal)
    result = durable(*_command(args, workflow), "--db", str(db), cwd=tmp_path)
    assert_refused(result, 2, "journal.db", "999")
    assert db.read_bytes() == newer_journal


GATED = """
name: gated
params: {gate: none}
tasks:
  - {id: gate, tool: shell, input: {command: ["test", "-e", "${params.gate}"]}}
  - {id: hold, tool: sleep, dependencies: [gate], input: {seconds: 30}}
"""


def test_second_resume_of_a_live_run_is_refused(
    durable, start, stop, write, wait_for_events, journal_rows, tmp_path: Path
) -> None:
    workflow = write(tmp_path, "gated.yaml", GATED)
    gate = tmp_path / "gate"
    db = tmp_path / "journal.db"
    first = durable(
        "run", str(workflow), "--db", str(db), "--run-id", "g", "-p", f"gate={gate}", cwd=tmp_path
    )
    assert first.returncode == 1, first.stderr
    gate.touch()
    driver = start("resume", "g", "--db", db, cwd=tmp_path)
    try:
        wait_for_events(db, "g", "task_started", task_id="hold", process=driver)
        before = digest(journal_rows, db)
        second = durable("resume", "g", "--db", str(db), cwd=tmp_path)
        assert_refused(second, 2, "'g'", "another live process")
        assert digest(journal_rows, db) == before
        assert driver.poll() is None
        driver.send_signal(signal.SIGINT)
        driver.communicate(timeout=30)
        assert driver.returncode == 130
    finally:
        stop(driver)


@pytest.mark.parametrize("where", ["default", "--db"])
def test_status_without_a_journal_creates_none(durable, tmp_path: Path, where: str) -> None:
    args = ["--db", str(tmp_path / "sub" / "journal.db")] if where == "--db" else []
    env = {"DURABLE_DB": None}
    result = durable("status", "anything", *args, env=env, cwd=tmp_path)
    assert_refused(result, 2, "journal")
    assert list(tmp_path.iterdir()) == []
