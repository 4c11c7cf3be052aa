"""Poison tasks: process deaths are folded per task, and the engine stops restarting a
task that keeps taking its process down, without failing the tasks that merely ran
beside it.

The e2e tests (`tests/e2e/test_stranded_runs.py`) kill real processes with
`os._exit` and a segfault; these build the journal of such deaths directly, so each
rule is checked on its own.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from durable import spec
from durable.events import (
    RunFinished,
    RunInterrupted,
    RunResumed,
    RunStarted,
    TaskCancelled,
    TaskRetrying,
    TaskStarted,
)
from durable.journal import Journal, RunRecord
from durable.runner import aresume
from durable.state import FAILED, SUCCEEDED, RunState
from durable.tools import REGISTRY

# -- the fold ------------------------------------------------------------------------


def test_a_death_is_charged_to_the_tasks_running_at_it_and_to_no_others():
    events = [
        RunStarted(at=1.0),
        TaskStarted(task_id="a", attempt=1, at=2.0),
        TaskStarted(task_id="b", attempt=1, at=2.0),
        TaskRetrying(task_id="b", attempt=1, at=3.0, error="x", delay=5.0),
        # the process dies here: a is running, b waits out its retry delay, c never began
        RunResumed(at=10.0),
    ]
    state = RunState.fold(["a", "b", "c"], events)
    assert [state.tasks[t].deaths for t in "abc"] == [1, 0, 0]
    assert state.after_death


@pytest.mark.parametrize(
    "ending",
    [RunInterrupted(at=5.0), RunFinished(at=5.0, status="failed")],
    ids=["interrupted", "finished"],
)
def test_a_session_that_ended_with_a_word_is_no_death(ending):
    events = [
        RunStarted(at=1.0),
        TaskStarted(task_id="a", attempt=1, at=2.0),
        TaskCancelled(task_id="a", attempt=1, at=4.0),
        ending,
        RunResumed(at=10.0),
    ]
    state = RunState.fold(["a"], events)
    assert state.tasks["a"].deaths == 0
    assert not state.after_death


def test_deaths_add_up_over_sessions_and_survive_a_finished_session():
    died = [TaskStarted(task_id="a", attempt=1, at=2.0), RunResumed(at=3.0)]
    events = [RunStarted(at=1.0), *died, *died, RunFinished(at=4.0, status="failed")]
    events += [RunResumed(at=5.0)]
    state = RunState.fold(["a"], events)
    assert state.tasks["a"].deaths == 2
    assert not state.after_death  # the session before the last one finished


# -- the engine ----------------------------------------------------------------------

CALLS: list[tuple[str, int]] = []
RUNNING: set[str] = set()


async def poison_probe(key: str, hold: float = 0.02) -> str:
    """Records who else was running when it started, then holds its slot a moment."""
    CALLS.append((key, len(RUNNING)))
    RUNNING.add(key)
    try:
        await asyncio.sleep(hold)
    finally:
        RUNNING.discard(key)
    return key


async def poison_sees_its_start(db: str, run_id: str, task: str) -> bool:
    """True when this attempt's `task_started` is already committed as the tool begins."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (count,) = connection.execute(
            "SELECT count(*) FROM events WHERE run_id = ? AND task_id = ? AND kind = 'task_started'",
            (run_id, task),
        ).fetchone()
    finally:
        connection.close()
    return count >= 1


for _tool in (poison_probe, poison_sees_its_start):
    REGISTRY.add(_tool, name=_tool.__name__)


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    RUNNING.clear()


async def crashed_run(db: Path, tasks: list[dict[str, Any]], deaths: dict[str, int]) -> str:
    """A journal as the process deaths would leave it: each task in `deaths` was
    running when the process died, that many times."""
    workflow = spec.from_data({"name": "poison", "max_concurrency": 8, "tasks": tasks})
    journal = await Journal.open(db, durability="off")
    journal.start()
    try:
        await journal.create_run(
            RunRecord(
                run_id="p",
                workflow=workflow.name,
                spec=spec.encode(workflow),
                spec_hash=spec.spec_hash(workflow),
                params={},
                base_dir=str(db.parent),
                created_at=1.0,
                cwd=str(db.parent),
            ),
            RunStarted(at=1.0),
        )
        at = 2.0
        for session in range(max(deaths.values())):
            if session:
                journal.append("p", RunResumed(at=at))
            attempt = session + 1
            for task_id, count in deaths.items():
                if count > session:
                    journal.append("p", TaskStarted(task_id=task_id, attempt=attempt, at=at))
            at += 1.0
        await journal.flush()
    finally:
        await journal.close()
    return "p"


def probe(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "tool": "poison_probe", "input": {"key": task_id}}


def test_a_task_at_max_deaths_is_failed_unstarted_and_the_rest_runs(tmp_path):
    db = tmp_path / "j.db"
    run_id = asyncio.run(crashed_run(db, [probe("bad"), probe("ok")], {"bad": 3}))
    result = asyncio.run(aresume(run_id, db=db, max_deaths=3))
    assert result.tasks["bad"].state == FAILED
    assert result.tasks["bad"].error.startswith(
        "the process died 3 times while this task ran, so it is not started again"
    )
    assert "--max-deaths 4" in result.tasks["bad"].error
    assert result.tasks["ok"].state == SUCCEEDED
    assert [key for key, _ in CALLS] == ["ok"]


def test_a_higher_max_deaths_tries_the_task_again(tmp_path):
    db = tmp_path / "j.db"
    run_id = asyncio.run(crashed_run(db, [probe("bad")], {"bad": 3}))
    result = asyncio.run(aresume(run_id, db=db, max_deaths=4))
    assert result.tasks["bad"].state == SUCCEEDED
    assert CALLS == [("bad", 0)]


def test_a_suspect_runs_alone(tmp_path):
    """One death short of the limit: nothing else runs while it does, so its next
    death could only be its own. Tasks below that run together as usual."""
    db = tmp_path / "j.db"
    tasks = [probe("s1"), probe("s2"), *(probe(f"n{i}") for i in range(6))]
    run_id = asyncio.run(crashed_run(db, tasks, {"s1": 2, "s2": 2, "n0": 1}))
    result = asyncio.run(aresume(run_id, db=db, max_deaths=3))
    assert result.ok
    alone = {key: others for key, others in CALLS if key in ("s1", "s2")}
    assert alone == {"s1": 0, "s2": 0}
    assert [key for key, _ in CALLS[:2]] == ["s1", "s2"]  # suspects first
    assert max(others for key, others in CALLS if key.startswith("n")) > 0  # the rest in parallel


def test_after_a_death_a_tool_starts_only_once_its_start_is_committed(tmp_path):
    db = tmp_path / "j.db"
    task = {
        "id": "t",
        "tool": "poison_sees_its_start",
        "input": {"db": str(db), "run_id": "p", "task": "t"},
    }
    # One earlier death of another task makes this session one that follows a death.
    other = probe("o")
    run_id = asyncio.run(crashed_run(db, [task, other], {"o": 1}))
    result = asyncio.run(aresume(run_id, db=db, max_deaths=3))
    assert result.ok
    assert result.outputs["t"] is True
