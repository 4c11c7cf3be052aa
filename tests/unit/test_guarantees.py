"""The promises the README makes, checked by what a user could observe.

Each test here reads the outcome from outside the code that keeps the promise: the
`synchronous` pragma of the SQLite connection that really writes the events, the
transactions SQLite really committed, the journal as another connection sees it
while a tool runs, the delays between attempts. They were written because one-line
bugs in those places went unnoticed by the rest of the suite (issue 13).

The connections are watched by wrapping `sqlite3.connect` for the length of a test:
whatever the journal's layout, the connection that runs `INSERT INTO events` is the
one that writes the journal.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from durable_cli.main import cli
from journal_reads import journal_events

from durable import spec
from durable.errors import DurableError
from durable.events import TaskRetrying, TaskStarted
from durable.executors import current_context
from durable.runner import RunResult, arun
from durable.tools import REGISTRY

# -- watching SQLite ---------------------------------------------------------------------

_connect = sqlite3.connect


class SqliteSpy:
    """Every sqlite3 connection opened while installed, and the statements each one ran."""

    def __init__(self) -> None:
        self.connections: list[sqlite3.Connection] = []
        self.statements: dict[int, list[str]] = collections.defaultdict(list)

    def connect(self, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = _connect(*args, **kwargs)
        index = len(self.connections)
        self.connections.append(connection)
        connection.set_trace_callback(lambda sql: self.statements[index].append(sql))
        return connection

    def writers(self) -> list[int]:
        """The connections that wrote events: the journal's write connection(s)."""
        return [
            index
            for index, statements in list(self.statements.items())
            if any(_is_event_insert(sql) for sql in statements)
        ]

    def event_commits(self) -> int:
        """Transactions committed that wrote at least one event (any connection): an
        event insert outside BEGIN ... COMMIT is a transaction of its own. (The trace
        shows an insert again each time its per-row trigger runs: the same text.)"""
        total = 0
        for statements in list(self.statements.values()):
            wrote = opened = False
            previous = None
            for sql in statements:
                word = sql.strip().upper()
                if _is_event_insert(sql):
                    wrote = True
                    if not opened:
                        total += sql != previous
                        wrote = False
                elif word.startswith("BEGIN"):
                    opened = True
                elif word in ("COMMIT", "END", "END TRANSACTION", "COMMIT TRANSACTION"):
                    total += wrote
                    wrote = opened = False
                elif word.startswith("ROLLBACK"):
                    wrote = opened = False
                previous = sql
        return total

    def synchronous(self) -> dict[int, int]:
        """`PRAGMA synchronous` of each open connection usable from this thread."""
        found = {}
        for index, connection in enumerate(self.connections):
            try:
                found[index] = connection.execute("PRAGMA synchronous").fetchone()[0]
            except sqlite3.ProgrammingError:  # closed, or owned by another thread
                continue
        return found


def _is_event_insert(sql: str) -> bool:
    return " ".join(sql.split()).upper().startswith("INSERT INTO EVENTS")


SPY: SqliteSpy | None = None


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[SqliteSpy]:
    global SPY
    SPY = SqliteSpy()
    monkeypatch.setattr(sqlite3, "connect", SPY.connect)
    try:
        yield SPY
    finally:
        SPY = None


# -- tools (names unique to this file) -----------------------------------------------------

SEEN_SYNCHRONOUS: list[dict[int, int]] = []
CALLED: list[str] = []
UNCOMMITTED_AT_START: dict[str, list[str]] = {}
JOURNAL_PATH: list[Path] = []
FAILURES_LEFT: dict[str, int] = {}
#: Rows that end a task; `task_ran` is a start and its success in one row.
TERMINAL_KINDS = (
    "task_succeeded",
    "task_ran",
    "task_failed",
    "task_cancelled",
    "task_upstream_failed",
)


@pytest.fixture(autouse=True)
def _reset_tool_state() -> None:
    SEEN_SYNCHRONOUS.clear()
    CALLED.clear()
    UNCOMMITTED_AT_START.clear()
    JOURNAL_PATH.clear()
    FAILURES_LEFT.clear()


async def guar_synchronous() -> None:
    """Records `PRAGMA synchronous` of every connection, read while the run is live."""
    assert SPY is not None
    SEEN_SYNCHRONOUS.append(SPY.synchronous())


def _committed_outcome(db: Path, run_id: str, task_id: str) -> bool:
    """Whether another connection sees a terminal event of the task: committed, on disk."""
    connection = _connect(f"file:{db}?mode=ro", uri=True)
    try:
        marks = ", ".join("?" * len(TERMINAL_KINDS))
        (count,) = connection.execute(
            f"SELECT count(*) FROM events WHERE run_id = ? AND task_id = ? AND kind IN ({marks})",
            (run_id, task_id, *TERMINAL_KINDS),
        ).fetchone()
    finally:
        connection.close()
    return count > 0


async def guar_barrier(fail: bool = False, hold: float = 0.01) -> str:
    """Notes which earlier tasks had no committed outcome when this one started."""
    context = current_context()
    UNCOMMITTED_AT_START[context.task_id] = [
        task_id
        for task_id in CALLED
        if not _committed_outcome(JOURNAL_PATH[0], context.run_id, task_id)
    ]
    CALLED.append(context.task_id)
    await asyncio.sleep(hold)
    if fail:
        raise RuntimeError("fails on purpose")
    return context.task_id


async def guar_flaky(key: str) -> str:
    if FAILURES_LEFT.get(key, 0) > 0:
        FAILURES_LEFT[key] -= 1
        raise RuntimeError(f"flaky {key}")
    return "ok"


for _tool in (guar_synchronous, guar_barrier, guar_flaky):
    REGISTRY.add(_tool, name=_tool.__name__)


# -- helpers ---------------------------------------------------------------------------


def workflow(tasks: list[dict[str, Any]], **fields: Any) -> spec.Workflow:
    return spec.from_data({"name": "guarantees", "tasks": tasks, **fields})


def run(wf: spec.Workflow, db: Path, **options: Any) -> RunResult:
    options.setdefault("durability", "off")
    return asyncio.run(arun(wf, db=db, **options))


def event_count(db: Path, run_id: str) -> int:
    """A run's events in the journal: a `task_ran` row holds two."""
    connection = _connect(db)
    try:
        return connection.execute(
            "SELECT sum(CASE kind WHEN 'task_ran' THEN 2 ELSE 1 END) FROM events WHERE run_id = ?",
            (run_id,),
        ).fetchone()[0]
    finally:
        connection.close()


# -- durability: the pragma on the connection that writes ------------------------------------

# SQLite's codes for PRAGMA synchronous.
SYNCHRONOUS = {"off": 0, "normal": 1, "full": 2}


@pytest.mark.parametrize("durability", ["normal", "full", "off"])
def test_durability_sets_synchronous_on_the_connection_that_writes_events(
    tmp_path: Path, spy: SqliteSpy, durability: str
) -> None:
    """`full` must fsync every commit (FULL), `normal` survive a process crash (NORMAL)."""
    wf = workflow(
        [
            {"id": "a", "tool": "echo", "input": {"n": 1}},
            # b starts once a's success is committed: the writer has written by then.
            {"id": "b", "tool": "guar_synchronous", "dependencies": ["a"]},
        ]
    )
    result = run(wf, tmp_path / "journal.db", durability=durability)
    assert result.ok, result.tasks
    writers = spy.writers()
    assert writers, "no connection wrote events"
    (seen,) = SEEN_SYNCHRONOUS
    assert {seen.get(index) for index in writers} == {SYNCHRONOUS[durability]}


def test_journal_is_in_wal_mode(tmp_path: Path) -> None:
    """`normal` is only crash-safe in WAL mode; the file says which mode it is in."""
    run(workflow([{"id": "a", "tool": "echo"}]), tmp_path / "journal.db", durability="normal")
    connection = _connect(tmp_path / "journal.db")
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        connection.close()


# -- RunStats ----------------------------------------------------------------------------


def test_stats_commits_counts_the_transactions_that_wrote_events(
    tmp_path: Path, spy: SqliteSpy
) -> None:
    db = tmp_path / "journal.db"
    n = 6
    chain = [{"id": "t0", "tool": "echo", "input": 0}] + [
        {"id": f"t{i}", "tool": "echo", "input": f"${{t{i - 1}.output}}"} for i in range(1, n)
    ]
    result = run(workflow(chain), db, max_concurrency=1)
    assert result.ok
    assert result.stats.commits == spy.event_commits()
    assert result.stats.events == event_count(db, result.run_id)
    # The durability barrier: each task's success commits before its dependent starts,
    # while group commit puts several events in most commits.
    assert n <= result.stats.commits < result.stats.events


# -- a slot is held until the outcome is committed --------------------------------------------


@pytest.mark.parametrize("jobs", [1, 2])
def test_no_task_starts_while_more_than_max_concurrency_outcomes_are_uncommitted(
    tmp_path: Path, jobs: int
) -> None:
    """At most `max_concurrency` tasks are ever run without a committed outcome.

    That bounds what a crash can make run twice. Each tool, as it starts, asks a
    separate read-only connection which earlier tasks have a committed outcome.
    """
    db = tmp_path / "journal.db"
    JOURNAL_PATH.append(db)
    tasks = [
        {"id": f"t{i}", "tool": "guar_barrier", "input": {"fail": i % 3 == 1}} for i in range(7)
    ]
    result = run(workflow(tasks), db, max_concurrency=jobs, durability="normal")
    assert sorted(CALLED) == sorted(task["id"] for task in tasks)
    assert result.status == "failed"  # t1 and t4 fail, with no retries: outcomes too
    for task_id, uncommitted in UNCOMMITTED_AT_START.items():
        assert len(uncommitted) < jobs, f"{task_id} started while {uncommitted} were uncommitted"


# -- retries ------------------------------------------------------------------------------


def test_retry_delay_doubles_and_is_waited(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    FAILURES_LEFT["k"] = 3
    delay = 0.05
    wf = workflow(
        [
            {
                "id": "t",
                "tool": "guar_flaky",
                "input": {"key": "k"},
                "retries": 3,
                "retry_delay": delay,
            }
        ]
    )
    result = run(wf, db)
    assert result.ok
    assert result.tasks["t"].attempts == 4
    history = journal_events(db, result.run_id)
    retrying = [(e.at, e.delay) for e in history if isinstance(e, TaskRetrying)]
    started = [e.at for e in history if isinstance(e, TaskStarted)]
    assert [d for _, d in retrying] == pytest.approx([delay, 2 * delay, 4 * delay])
    # And the engine really waited that long before each next attempt.
    for (retried_at, wait), next_start in zip(retrying, started[1:], strict=True):
        assert next_start - retried_at >= 0.9 * wait, (next_start - retried_at, wait)


# -- run ids ------------------------------------------------------------------------------

BAD_RUN_IDS = ["../x", "a/b", "", "x" * 65, "a b", ".hidden", "-x", "a\nb"]


@pytest.mark.parametrize("run_id", BAD_RUN_IDS)
def test_api_refuses_a_run_id_that_is_not_a_plain_word(tmp_path: Path, run_id: str) -> None:
    """Run ids name lock files: one that is a path could lock, or create, files anywhere."""
    folder = tmp_path / "deep" / "er"
    folder.mkdir(parents=True)
    with pytest.raises(DurableError, match="bad run id"):
        run(workflow([{"id": "a", "tool": "echo"}]), folder / "journal.db", run_id=run_id)
    assert not [p for p in tmp_path.rglob("*") if p.name in ("x", "b")]


def test_api_accepts_a_64_character_run_id(tmp_path: Path) -> None:
    run_id = "r" + "x" * 63
    result = run(workflow([{"id": "a", "tool": "echo"}]), tmp_path / "j.db", run_id=run_id)
    assert result.ok and result.run_id == run_id


@pytest.mark.parametrize("run_id", ["../x", "a/b", "", "x" * 65])
def test_cli_refuses_a_run_id_that_is_not_a_plain_word(tmp_path: Path, run_id: str) -> None:
    workflow_file = tmp_path / "wf.yaml"
    workflow_file.write_text("name: ids\ntasks:\n  - {id: a, tool: echo}\n")
    result = CliRunner().invoke(
        cli,
        ["run", str(workflow_file), "--db", str(tmp_path / "j.db"), "--run-id", run_id],
    )
    assert result.exit_code == 2, result.output
    assert "bad run id" in result.output
    assert "Traceback" not in result.output
