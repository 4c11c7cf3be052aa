"""engine.py, driven through `runner.arun`/`aresume` on a real SQLite journal.

Every test runs a workflow end to end and then checks what it did twice: in the
`RunResult` the live scheduler returned, and in the events read back from SQLite.
"""

from __future__ import annotations

import asyncio
import collections
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from journal_reads import journal_events

from durable import engine as engine_module
from durable import spec
from durable.context import current_context
from durable.errors import DurableError, OutputClosed
from durable.events import (
    RunFinished,
    RunInterrupted,
    RunResumed,
    RunStarted,
    TaskCancelled,
    TaskRetrying,
    TaskStarted,
    TaskSucceeded,
    kind_of,
)
from durable.journal import Journal, RunRecord
from durable.runner import Hooks, RunResult, aresume, arun
from durable.state import (
    CANCELLED,
    FAILED,
    PENDING,
    SKIPPED,
    SUCCEEDED,
    UPSTREAM_FAILED,
    RunState,
)
from durable.tools import REGISTRY

# -- tools (names unique to this file) ---------------------------------------------------


class Gauge:
    """Counts calls in progress and remembers the peak."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0

    def enter(self) -> None:
        self.current += 1
        self.peak = max(self.peak, self.current)

    def leave(self) -> None:
        self.current -= 1


GAUGES: dict[str, Gauge] = collections.defaultdict(Gauge)
CALLS: collections.Counter[str] = collections.Counter()
FLAKY: dict[str, int] = {}  # task key -> how many more calls fail


@pytest.fixture(autouse=True)
def _reset_tool_state():
    GAUGES.clear()
    CALLS.clear()
    FLAKY.clear()
    MARKS.clear()
    ARRIVED.clear()


async def eng_gauged(gauges: list[str], hold: float = 0.05, value: Any = None) -> Any:
    for name in gauges:
        GAUGES[name].enter()
    try:
        await asyncio.sleep(hold)
    finally:
        for name in gauges:
            GAUGES[name].leave()
    return value


async def eng_slowtool(hold: float = 0.05) -> str:
    return await eng_gauged(["all", "slowtool"], hold, "slow")


async def eng_othertool(hold: float = 0.05) -> str:
    return await eng_gauged(["all", "othertool"], hold, "other")


async def eng_counted(key: str, value: Any = None) -> Any:
    """Counts its calls by key; fails while FLAKY[key] says so."""
    CALLS[key] += 1
    if FLAKY.get(key, 0) > 0:
        FLAKY[key] -= 1
        raise RuntimeError(f"flaky {key}")
    return value


async def eng_fail(message: str = "boom", after: float = 0.0) -> None:
    if after:
        await asyncio.sleep(after)
    raise ValueError(message)


async def eng_hang(seconds: float = 30.0) -> str:
    await asyncio.sleep(seconds)
    return "woke"


MARKS: set[str] = set()
ARRIVED: collections.Counter[str] = collections.Counter()


async def eng_mark(key: str, value: Any = None) -> Any:
    """Records that it ran, under `key`, for `eng_wait_for_mark`."""
    MARKS.add(key)
    return value


async def eng_wait_for_mark(key: str) -> str:
    """Runs until `eng_mark(key)` has run, or for 10 s at most."""
    deadline = time.monotonic() + 10
    while key not in MARKS and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return "released" if key in MARKS else "timed out"


async def eng_barrier(key: str, parties: int) -> bool:
    """Waits until `parties` calls are in progress at once, for 10 s at most."""
    ARRIVED[key] += 1
    deadline = time.monotonic() + 10
    while ARRIVED[key] < parties and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return ARRIVED[key] >= parties


async def eng_says(line: str) -> str:
    """Logs a line (a `task_log` row between its start and its success), then returns it."""
    current_context().log.info(line)
    return line


for _tool in (
    eng_says,
    eng_gauged,
    eng_slowtool,
    eng_othertool,
    eng_counted,
    eng_fail,
    eng_hang,
    eng_mark,
    eng_wait_for_mark,
    eng_barrier,
):
    REGISTRY.add(_tool, name=_tool.__name__)


# -- helpers ---------------------------------------------------------------------------


def workflow(tasks: list[dict[str, Any]], **fields: Any) -> spec.Workflow:
    return spec.from_data({"name": "engine-test", "tasks": tasks, **fields})


def run(
    wf: spec.Workflow, db: Path, params: dict[str, Any] | None = None, **options: Any
) -> RunResult:
    return asyncio.run(arun(wf, params, db=db, durability="off", **options))


def resume(run_id: str, db: Path, **options: Any) -> RunResult:
    return asyncio.run(aresume(run_id, db=db, durability="off", **options))


def assert_fold_matches(result: RunResult, db: Path) -> list:
    """The fold of the journaled events is exactly the live state the run returned."""
    events = journal_events(db, result.run_id)
    folded = RunState.fold(result.tasks, events)
    assert folded.tasks == result.tasks
    assert folded.status == result.status
    return events


def kinds(events: list, task_id: str) -> list[str]:
    return [kind_of(e) for e in events if getattr(e, "task_id", None) == task_id]


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "journal.db"


# -- the fold equals the live state -------------------------------------------------------


def test_fold_of_a_real_run_equals_the_live_state(db):
    FLAKY["r"] = 1
    wf = workflow(
        [
            {"id": "a", "tool": "echo", "input": {"n": 3, "items": [1, "two", None]}},
            {
                "id": "b",
                "tool": "eng_counted",
                "input": {"key": "r", "value": "${a.output.items}"},
                "retries": 2,
                "retry_delay": 0.01,
            },
            {"id": "c", "tool": "eng_fail"},
            {"id": "d", "tool": "echo", "input": "${c.output}"},
            {"id": "e", "tool": "echo", "when": "${a.output.n} > 5", "input": 1},
            {"id": "f", "tool": "echo", "dependencies": ["e"], "input": 2},
            {
                "id": "g",
                "tool": "echo",
                "dependencies": ["b", "e"],
                "trigger": "none_failed",
                "input": {"b": "${b.output}", "e": "${e.output}"},
            },
        ]
    )
    result = run(wf, db)
    assert result.status == FAILED
    assert {t: s.state for t, s in result.tasks.items()} == {
        "a": SUCCEEDED,
        "b": SUCCEEDED,
        "c": FAILED,
        "d": UPSTREAM_FAILED,
        "e": SKIPPED,
        "f": SKIPPED,
        "g": SUCCEEDED,
    }
    assert result.tasks["b"].attempts == 2
    assert result.outputs["g"] == {"b": [1, "two", None], "e": None}
    events = assert_fold_matches(result, db)
    assert isinstance(events[0], RunStarted)
    assert events[-1] == RunFinished(at=events[-1].at, status=FAILED)
    # Each task's events are in the order of their times. Across tasks, the order
    # within one commit is the rows': a `task_ran` row takes its start's place.
    times = collections.defaultdict(list)
    for event in events:
        times[getattr(event, "task_id", None)].append(event.at)
    assert all(ats == sorted(ats) for ats in times.values()), times


def test_a_watched_run_and_an_unwatched_one_journal_the_same_events(tmp_path):
    """Nobody watching, the engine journals `task_started` by its fields, with no event
    object (`Engine._emit_started`); watched, it makes one to show. Both runs journal
    the same events, fingerprints and outputs included, and the watcher saw exactly
    what was journaled."""
    wf = workflow(
        [
            {"id": "a", "tool": "echo", "input": {"n": 3}},
            {"id": "b", "tool": "echo", "input": {"m": "${a.output.n}"}},
            {"id": "c", "tool": "eng_fail", "dependencies": ["b"]},
            {"id": "d", "tool": "echo", "input": "${c.output}"},
        ]
    )
    seen: list[Any] = []
    watched = run(wf, tmp_path / "watched.db", hooks=Hooks(on_event=seen.append))
    unwatched = run(wf, tmp_path / "unwatched.db")

    def fields(events: list[Any]) -> list[tuple[Any, ...]]:
        return [
            (
                kind_of(e),
                getattr(e, "task_id", None),
                getattr(e, "attempt", None),
                getattr(e, "fingerprint", None),
                getattr(e, "output", None),
                getattr(e, "error", None),
            )
            for e in events
        ]

    journaled = journal_events(tmp_path / "watched.db", watched.run_id)
    assert fields(journaled) == fields(journal_events(tmp_path / "unwatched.db", unwatched.run_id))
    assert seen == journaled
    started = [e for e in journaled if isinstance(e, TaskStarted)]
    assert [e.task_id for e in started] == ["a", "b", "c"]
    assert all(e.fingerprint for e in started)  # the rendered inputs are fingerprinted
    states = {"a": SUCCEEDED, "b": SUCCEEDED, "c": FAILED, "d": UPSTREAM_FAILED}
    for result, db in ((watched, "watched.db"), (unwatched, "unwatched.db")):
        assert {t: s.state for t, s in result.tasks.items()} == states
        assert_fold_matches(result, tmp_path / db)


# -- concurrency --------------------------------------------------------------------------


def test_max_concurrency_is_reached_and_never_exceeded(db):
    wf = workflow(
        [{"id": f"t{i}", "tool": "eng_gauged", "input": {"gauges": ["all"]}} for i in range(40)]
    )
    result = run(wf, db, max_concurrency=5)
    assert result.ok
    assert GAUGES["all"].peak == 5


def test_workflow_max_concurrency_is_the_default(db):
    tasks = [
        {"id": f"t{i}", "tool": "eng_gauged", "input": {"gauges": ["all"], "hold": 0.02}}
        for i in range(12)
    ]
    result = run(workflow(tasks, max_concurrency=3), db)
    assert result.ok
    assert GAUGES["all"].peak == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_concurrency": -1}, "max_concurrency must be a whole number of at least 1, not -1"),
        ({"max_concurrency": 0}, "max_concurrency must be a whole number of at least 1, not 0"),
        ({"durability": "Full"}, "durability must be one of 'normal', 'full', 'off', not 'Full'"),
        ({"max_deaths": 0}, "max_deaths must be a whole number of at least 1, not 0"),
    ],
)
def test_the_api_refuses_session_options_the_cli_would(db, options, message):
    """Through `durable.run`, `max_concurrency=-1` started nothing and waited forever,
    `0` was taken for the default, and `durability='Full'` raised a KeyError after
    making the journal file. Refused now, before anything is written."""
    wf = workflow([{"id": "a", "tool": "echo", "input": 1}])
    session = {"durability": "off", **options}
    with pytest.raises(DurableError) as refused:
        asyncio.run(arun(wf, db=db, **session))
    assert str(refused.value) == message
    assert not db.exists()
    with pytest.raises(DurableError, match=re.escape(message)):
        asyncio.run(aresume("nope", db=db, **session))


def test_per_tool_limit_holds_while_other_tools_run(db):
    tasks = [{"id": f"s{i}", "tool": "eng_slowtool"} for i in range(10)]
    tasks += [{"id": f"o{i}", "tool": "eng_othertool"} for i in range(10)]
    wf = workflow(tasks, limits={"eng_slowtool": 2})
    result = run(wf, db, max_concurrency=10)
    assert result.ok
    assert GAUGES["slowtool"].peak == 2
    assert GAUGES["othertool"].peak >= 7  # the saturated tool does not block the others
    assert GAUGES["all"].peak == 10
    assert_fold_matches(result, db)


def test_independent_tasks_run_in_parallel(db):
    """All 50 independent tasks are in progress at once (under `-j 50`), not in waves.

    Each call waits until all 50 have arrived: together they return at once; run
    in waves, they would each give up after 10 s and return False.
    """
    tasks = [
        {"id": f"t{i}", "tool": "eng_barrier", "input": {"key": "all", "parties": 50}}
        for i in range(50)
    ]
    result = run(workflow(tasks), db, max_concurrency=50)
    assert result.ok
    assert result.outputs == {f"t{i}": True for i in range(50)}


def test_a_slow_branch_does_not_delay_an_unrelated_one(db):
    """A chain finishes while an unrelated task is still running.

    The slow task runs until the chain's last link has run (10 s at most): it is
    released only if the chain did not wait for it.
    """
    chain = [{"id": "c0", "tool": "echo", "input": 0}]
    chain += [
        {"id": f"c{i}", "tool": "echo", "input": f"${{c{i - 1}.output}}"} for i in range(1, 4)
    ]
    chain += [{"id": "c4", "tool": "eng_mark", "input": {"key": "c4", "value": "${c3.output}"}}]
    wf = workflow([{"id": "slow", "tool": "eng_wait_for_mark", "input": {"key": "c4"}}, *chain])
    result = run(wf, db)
    assert result.ok
    slow, last = result.tasks["slow"], result.tasks["c4"]
    assert last.output == 0  # passed down the chain
    assert slow.output == "released"
    assert last.finished_at <= slow.finished_at


# -- failure, retries, timeouts ------------------------------------------------------------


def test_a_failure_is_isolated_to_its_dependents(db):
    wf = workflow(
        [
            {"id": "bad", "tool": "eng_fail", "input": {"message": "no such thing"}},
            {"id": "child", "tool": "echo", "input": "${bad.output}"},
            {
                "id": "grandchild",
                "tool": "echo",
                "dependencies": ["child"],
                "trigger": "none_failed",
            },
            {"id": "good", "tool": "sleep", "input": {"seconds": 0.1, "result": "fine"}},
            {"id": "after_good", "tool": "echo", "input": "${good.output}"},
        ]
    )
    result = run(wf, db)
    assert result.status == FAILED
    assert result.tasks["bad"].state == FAILED
    assert result.tasks["bad"].error == "ValueError: no such thing"
    assert result.tasks["child"].state == UPSTREAM_FAILED
    assert result.tasks["grandchild"].state == UPSTREAM_FAILED
    assert result.outputs["after_good"] == "fine"
    events = assert_fold_matches(result, db)
    assert kinds(events, "child") == ["task_upstream_failed"]


def test_thousands_of_attempts_that_fail_at_once_and_retry_all_succeed(db):
    """An attempt that fails in its first step gives its slot back inside the pump
    that started it: where attempts start eagerly (Python 3.12+), that is a call of
    the pump from inside itself, once per such task. It must not nest (2,000 would
    pass the recursion limit), and every task must still get its retry."""
    n = 2000
    for i in range(n):
        FLAKY[f"t{i}"] = 1
    tasks = [
        {
            "id": f"t{i}",
            "tool": "eng_counted",
            "input": {"key": f"t{i}", "value": i},
            "retries": 1,
            "retry_delay": 0,
        }
        for i in range(n)
    ]
    wf = workflow(tasks)
    result = run(wf, db, max_concurrency=8)
    assert result.status == SUCCEEDED
    assert all(CALLS[f"t{i}"] == 2 for i in range(n))
    assert [result.tasks[f"t{i}"].output for i in range(n)] == list(range(n))
    assert_fold_matches(result, db)


def test_retries_count_tries_and_double_the_delay(db):
    wf = workflow([{"id": "r", "tool": "eng_fail", "retries": 3, "retry_delay": 0.01}])
    result = run(wf, db)
    assert result.status == FAILED
    assert result.tasks["r"].attempts == 4
    events = assert_fold_matches(result, db)
    assert kinds(events, "r") == ["task_started", "task_retrying"] * 3 + [
        "task_started",
        "task_failed",
    ]
    retrying = [e for e in events if isinstance(e, TaskRetrying)]
    assert [e.delay for e in retrying] == pytest.approx([0.01, 0.02, 0.04])
    assert [e.attempt for e in retrying] == [1, 2, 3]
    assert all(e.error == "ValueError: boom" for e in retrying)
    started = [e for e in events if isinstance(e, TaskStarted)]
    assert [e.attempt for e in started] == [1, 2, 3, 4]
    for retry, next_start in zip(retrying, started[1:], strict=True):
        assert next_start.at - retry.at >= retry.delay - 0.005  # the backoff was waited


def test_a_retry_can_succeed(db):
    FLAKY["x"] = 2
    wf = workflow(
        [
            {
                "id": "x",
                "tool": "eng_counted",
                "input": {"key": "x", "value": 7},
                "retries": 5,
                "retry_delay": 0.01,
            }
        ]
    )
    result = run(wf, db)
    assert result.ok
    assert result.outputs == {"x": 7}
    assert result.tasks["x"].attempts == 3
    assert result.tasks["x"].error is None
    assert CALLS["x"] == 3


def test_a_when_that_cannot_be_evaluated_fails_the_task(db):
    wf = workflow(
        [
            {"id": "a", "tool": "echo", "input": "text"},
            {"id": "b", "tool": "echo", "when": "${a.output.n} > 1", "input": 1},
            {"id": "c", "tool": "echo", "dependencies": ["b"]},
        ]
    )
    result = run(wf, db)
    assert result.tasks["b"].state == FAILED
    assert result.tasks["b"].error.startswith("when: ")
    assert result.tasks["b"].attempts == 0
    assert result.tasks["c"].state == UPSTREAM_FAILED
    assert_fold_matches(result, db)


def test_an_input_that_cannot_be_rendered_fails_without_retries(db):
    wf = workflow(
        [
            {"id": "bad", "tool": "eng_fail"},
            {
                "id": "cleanup",
                "tool": "eng_counted",
                "trigger": "all_done",
                "retries": 2,
                "input": {"key": "cleanup", "value": "${bad.output}"},
            },
        ]
    )
    result = run(wf, db)
    assert result.tasks["cleanup"].state == FAILED
    assert result.tasks["cleanup"].error.startswith("input: ")
    assert result.tasks["cleanup"].attempts == 1
    assert CALLS["cleanup"] == 0


# -- conditions and triggers -----------------------------------------------------------------


def test_when_false_skips_and_skips_propagate_under_all_success(db):
    wf = workflow(
        [
            {"id": "measure", "tool": "echo", "input": {"n": 50}},
            {"id": "big", "tool": "echo", "when": "${measure.output.n} > 100", "input": "big"},
            {"id": "small", "tool": "echo", "when": "${measure.output.n} <= 100", "input": "small"},
            {"id": "after_big", "tool": "echo", "dependencies": ["big"]},
            {"id": "after_after", "tool": "echo", "dependencies": ["after_big"]},
            {
                "id": "join",
                "tool": "echo",
                "dependencies": ["big", "small"],
                "trigger": "none_failed",
                "input": {"big": "${big.output}", "small": "${small.output}"},
            },
            {"id": "strict_join", "tool": "echo", "dependencies": ["big", "small"]},
            {"id": "flagged", "tool": "echo", "when": "${params.enabled}", "input": 1},
        ],
        params={"enabled": False},
    )
    result = run(wf, db)
    assert result.status == SUCCEEDED  # skipping is not failing
    states = {t: s.state for t, s in result.tasks.items()}
    assert states == {
        "measure": SUCCEEDED,
        "big": SKIPPED,
        "small": SUCCEEDED,
        "after_big": SKIPPED,
        "after_after": SKIPPED,
        "join": SUCCEEDED,
        "strict_join": SKIPPED,
        "flagged": SKIPPED,
    }
    assert result.tasks["big"].reason == "condition false: ${measure.output.n} > 100"
    assert result.tasks["after_big"].reason == "upstream 'big' skipped"
    assert result.tasks["after_after"].reason == "upstream 'after_big' skipped"
    # a reference to a skipped task's output resolves to null
    assert result.outputs["join"] == {"big": None, "small": "small"}
    assert result.tasks["big"].attempts == 0
    events = assert_fold_matches(result, db)
    assert kinds(events, "big") == ["task_skipped"]


def test_all_done_runs_after_a_failure_and_none_failed_does_not(db):
    wf = workflow(
        [
            {"id": "bad", "tool": "eng_fail"},
            {"id": "ok", "tool": "echo", "input": 1},
            {
                "id": "cleanup",
                "tool": "echo",
                "dependencies": ["bad", "ok"],
                "trigger": "all_done",
                "input": "${ok.output}",
            },
            {
                "id": "report",
                "tool": "echo",
                "dependencies": ["bad", "ok"],
                "trigger": "none_failed",
            },
            {"id": "after_cleanup", "tool": "echo", "dependencies": ["cleanup"]},
        ]
    )
    result = run(wf, db)
    assert result.status == FAILED
    assert result.tasks["cleanup"].state == SUCCEEDED
    assert result.outputs["cleanup"] == 1
    assert result.tasks["report"].state == UPSTREAM_FAILED
    assert result.tasks["after_cleanup"].state == SUCCEEDED
    assert_fold_matches(result, db)


# -- fail-fast -------------------------------------------------------------------------------


def test_fail_fast_cancels_running_tasks(db):
    wf = workflow(
        [
            {"id": "bad", "tool": "eng_fail", "input": {"after": 0.05}},
            {"id": "hang1", "tool": "eng_hang"},
            {"id": "hang2", "tool": "eng_hang"},
            {"id": "later", "tool": "echo", "dependencies": ["hang1"]},
        ]
    )
    start = time.monotonic()
    result = run(wf, db, fail_fast=True)
    assert time.monotonic() - start < 3
    assert result.status == FAILED
    states = {t: s.state for t, s in result.tasks.items()}
    assert states == {"bad": FAILED, "hang1": CANCELLED, "hang2": CANCELLED, "later": PENDING}
    events = assert_fold_matches(result, db)
    assert sorted(e.task_id for e in events if isinstance(e, TaskCancelled)) == ["hang1", "hang2"]


def test_fail_fast_cancels_tasks_that_had_not_taken_a_step_yet(db):
    """A task cancelled before its coroutine first ran still ends `cancelled`.

    `bad` fails in its first step, before `hang1`/`hang2` (launched in the same
    `_pump`) have run at all. Stopping the run must still journal a
    `task_cancelled` for each and release its slot, so that no task is left
    `running` in the result or in the journal. An interrupt (SIGINT) at such a
    moment goes through the same stop.
    """
    wf = workflow(
        [
            {"id": "bad", "tool": "eng_fail"},
            {"id": "hang1", "tool": "eng_hang"},
            {"id": "hang2", "tool": "eng_hang"},
        ]
    )
    result = run(wf, db, fail_fast=True)
    assert result.status == FAILED
    states = {t: s.state for t, s in result.tasks.items()}
    # Where attempts start eagerly (Python 3.12+), `bad` fails inside its own start,
    # and the other two are never started at all.
    others = PENDING if engine_module._EAGER else CANCELLED
    assert states == {"bad": FAILED, "hang1": others, "hang2": others}
    assert_fold_matches(result, db)


def test_fail_fast_starts_nothing_after_the_failure(db):
    """With fail_fast, the failing task's slot is not refilled: the run stops first.

    Once a failure is known, releasing its slot must not start a waiting task
    (`queued` here): the stop comes before the slot is handed on, so `queued` never
    gets a `task_started` and stays `pending`.
    """
    wf = workflow(
        [
            {"id": "bad", "tool": "eng_fail", "input": {"after": 0.05}},
            {"id": "hang", "tool": "eng_hang"},
            {"id": "queued", "tool": "eng_hang"},
        ]
    )
    result = run(wf, db, fail_fast=True, max_concurrency=2)
    events = journal_events(db, result.run_id)
    assert kinds(events, "queued") == []
    assert result.tasks["queued"].state == PENDING


def test_without_fail_fast_the_rest_keeps_running(db):
    wf = workflow(
        [
            {"id": "bad", "tool": "eng_fail"},
            {"id": "slow", "tool": "sleep", "input": {"seconds": 0.2, "result": 1}},
        ]
    )
    result = run(wf, db)
    assert result.status == FAILED
    assert result.tasks["slow"].state == SUCCEEDED


# -- the durability barrier -----------------------------------------------------------------


def test_dependents_start_only_after_the_dependency_is_committed(db, monkeypatch):
    batches: list[list[tuple[str | None, str]]] = []
    original = Journal._write

    def recording_write(self, rows, remember=()):
        original(self, rows, remember)
        # rows are (run_id, task_id, attempt, kind, at, data); recorded once committed.
        # A `task_ran` row is a start and a success committed together.
        batch = []
        for row in rows:
            kinds = ("task_started", "task_succeeded") if row[3] == "task_ran" else (row[3],)
            batch += [(row[1], kind) for kind in kinds]
        batches.append(batch)

    monkeypatch.setattr(Journal, "_write", recording_write)

    tasks = [{"id": "root", "tool": "echo", "input": {"v": 1}}]
    tasks += [
        {"id": f"fan{i}", "tool": "echo", "input": {"i": i, "v": "${root.output.v}"}}
        for i in range(20)
    ]
    tasks += [{"id": "join", "tool": "echo", "dependencies": [f"fan{i}" for i in range(20)]}]
    tasks += [{"id": "tail", "tool": "echo", "input": "${join.output}"}]
    tasks += [
        {"id": f"solo{i}", "tool": "eng_gauged", "input": {"gauges": [], "hold": 0.001}}
        for i in range(20)
    ]
    result = run(workflow(tasks), db, max_concurrency=64)
    assert result.ok

    batch_of: dict[tuple[str | None, str], int] = {}
    for number, batch in enumerate(batches):
        for key in batch:
            batch_of.setdefault(key, number)
    deps = {"join": [f"fan{i}" for i in range(20)], "tail": ["join"]}
    deps |= {f"fan{i}": ["root"] for i in range(20)}
    for task_id, its_deps in deps.items():
        for dep in its_deps:
            assert batch_of[(task_id, "task_started")] > batch_of[(dep, "task_succeeded")], (
                task_id,
                dep,
            )
    # group commit under load: far fewer commits than events
    assert len(batches) < sum(len(batch) for batch in batches) / 2


def test_a_fast_attempt_is_one_row_unless_its_task_wrote_a_row_between(db):
    """An attempt whose start and success share a commit is one `task_ran` row (the
    first tasks of a run included: the writer lets them take their first step before
    it takes its first batch); one that logged keeps its start, its line and its
    success in rows of their own, in that order. Read back, both are the same events,
    and their fold is the live state."""
    tasks = [{"id": f"quiet{i}", "tool": "echo", "input": i} for i in range(8)]
    tasks += [{"id": "chatty", "tool": "eng_says", "input": {"line": "hello"}}]
    tasks += [{"id": "after", "tool": "echo", "input": "${chatty.output}"}]
    result = run(workflow(tasks), db, max_concurrency=64)
    assert result.ok
    connection = sqlite3.connect(db)
    try:
        rows = connection.execute(
            "SELECT task_id, kind FROM events WHERE run_id = ? ORDER BY seq", (result.run_id,)
        ).fetchall()
    finally:
        connection.close()
    by_task = collections.defaultdict(list)
    for task_id, kind in rows:
        by_task[task_id].append(kind)
    assert {task_id: by_task[task_id] for task_id in ("quiet0", "quiet7", "after")} == {
        "quiet0": ["task_ran"],
        "quiet7": ["task_ran"],
        "after": ["task_ran"],
    }
    assert by_task["chatty"] == ["task_started", "task_log", "task_succeeded"]
    events = assert_fold_matches(result, db)
    assert kinds(events, "quiet3") == ["task_started", "task_succeeded"]
    assert kinds(events, "chatty") == ["task_started", "task_log", "task_succeeded"]
    assert result.stats.events == len(events)


# -- resume --------------------------------------------------------------------------------


def test_resume_after_a_failure_reruns_only_what_did_not_succeed(db):
    FLAKY["b"] = 1
    wf = workflow(
        [
            {"id": "a", "tool": "eng_counted", "input": {"key": "a", "value": {"x": 1}}},
            {"id": "b", "tool": "eng_counted", "input": {"key": "b", "value": "${a.output.x}"}},
            {"id": "c", "tool": "eng_counted", "input": {"key": "c", "value": "${b.output}"}},
            {"id": "d", "tool": "eng_counted", "input": {"key": "d"}},
            {"id": "e", "tool": "eng_counted", "when": "${a.output.x} > 5", "input": {"key": "e"}},
        ]
    )
    first = run(wf, db)
    assert first.status == FAILED
    assert first.tasks["c"].state == UPSTREAM_FAILED
    assert dict(CALLS) == {"a": 1, "b": 1, "d": 1}

    second = resume(first.run_id, db)
    assert second.status == SUCCEEDED
    assert dict(CALLS) == {
        "a": 1,
        "b": 2,
        "c": 1,
        "d": 1,
    }  # a and d were not run again, e stayed skipped
    assert second.outputs["c"] == 1
    assert second.tasks["b"].attempts == 2  # attempt numbers go on across sessions
    assert second.tasks["e"].state == SKIPPED

    events = assert_fold_matches(second, db)
    assert sum(isinstance(e, RunResumed) for e in events) == 1
    assert kinds(events, "a") == ["task_started", "task_succeeded"]

    third = resume(first.run_id, db)
    assert third.already_finished
    assert dict(CALLS) == {"a": 1, "b": 2, "c": 1, "d": 1}


def test_resume_when_a_kept_task_depends_on_a_rerun_one(db):
    """A kept task may depend on one that reruns: resume reruns it and keeps the other.

    `cleanup` (trigger all_done) succeeded after `report` failed. On resume only
    `report` runs again; when its success commits, the already-kept `cleanup` is
    neither counted down nor run again, and the run succeeds. This is the shape of
    examples/branching (report -> cleanup: all_done).
    """
    FLAKY["report"] = 1
    wf = workflow(
        [
            {"id": "report", "tool": "eng_counted", "input": {"key": "report", "value": 1}},
            {
                "id": "cleanup",
                "tool": "eng_counted",
                "dependencies": ["report"],
                "trigger": "all_done",
                "input": {"key": "cleanup"},
            },
        ]
    )
    first = run(wf, db)
    assert {t: s.state for t, s in first.tasks.items()} == {"report": FAILED, "cleanup": SUCCEEDED}
    second = resume(first.run_id, db)
    assert second.status == SUCCEEDED
    assert dict(CALLS) == {"report": 2, "cleanup": 1}


def test_resume_after_a_crash_reruns_the_task_that_was_running(db):
    """A journal left by a process that died while `b` ran: `b` runs again, `a` does not."""
    wf = workflow(
        [
            {"id": "a", "tool": "eng_counted", "input": {"key": "a", "value": 5}},
            {"id": "b", "tool": "eng_counted", "input": {"key": "b", "value": "${a.output}"}},
            {"id": "c", "tool": "eng_counted", "input": {"key": "c", "value": "${b.output}"}},
        ]
    )

    async def write_crashed_run():
        journal = await Journal.open(db, durability="off")
        journal.start()
        await journal.create_run(
            RunRecord(
                run_id="crashed",
                workflow=wf.name,
                spec=spec.encode(wf),
                spec_hash=spec.spec_hash(wf),
                params={},
                base_dir=str(db.parent),
                created_at=time.time(),
                cwd=str(db.parent),
            ),
            RunStarted(at=1.0),
        )
        for event in [
            TaskStarted(task_id="a", attempt=1, at=2.0),
            TaskSucceeded(task_id="a", attempt=1, at=3.0, output=5),
            TaskStarted(task_id="b", attempt=1, at=4.0),
        ]:
            journal.append("crashed", event)
        await journal.flush()
        await journal.close()

    asyncio.run(write_crashed_run())
    result = resume("crashed", db)
    assert result.status == SUCCEEDED
    assert dict(CALLS) == {"b": 1, "c": 1}
    assert result.outputs == {"a": 5, "b": 5, "c": 5}
    assert result.tasks["b"].attempts == 2  # the lost attempt still counts
    assert result.tasks["a"].finished_at == 3.0
    assert_fold_matches(result, db)


# -- property: random DAGs ---------------------------------------------------------------------


@st.composite
def random_dags(draw):
    count = draw(st.integers(1, 8))
    tasks = []
    for i in range(count):
        deps = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        behaviour = draw(st.sampled_from(["ok", "ok", "ok", "fail", "skip"]))
        task: dict[str, Any] = {"id": f"t{i}", "dependencies": [f"t{d}" for d in deps]}
        if behaviour == "fail":
            task["tool"] = "eng_fail"
        else:
            task |= {"tool": "eng_gauged", "input": {"gauges": [], "hold": 0.001, "value": i}}
        if behaviour == "skip":
            task["when"] = "false"
        task["trigger"] = draw(
            st.sampled_from(["all_success", "all_success", "none_failed", "all_done"])
        )
        tasks.append(task)
    return tasks


def _expected_states(tasks: list[dict[str, Any]]) -> dict[str, str]:
    """What the README's trigger rules say each task ends as (tasks in topological order)."""
    states: dict[str, str] = {}
    for task in tasks:
        dep_states = [states[d] for d in task["dependencies"]]
        trigger = task["trigger"]
        if trigger != "all_done" and any(s in (FAILED, UPSTREAM_FAILED) for s in dep_states):
            states[task["id"]] = UPSTREAM_FAILED
        elif (trigger == "all_success" and SKIPPED in dep_states) or task.get("when") == "false":
            states[task["id"]] = SKIPPED
        else:
            states[task["id"]] = FAILED if task["tool"] == "eng_fail" else SUCCEEDED
    return states


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(random_dags())
def test_random_dags_end_as_designed(tmp_path, tasks):
    db = tmp_path / f"journal-{time.monotonic_ns()}.db"
    result = run(workflow(tasks), db, max_concurrency=3)
    expected = _expected_states(tasks)
    assert {t: s.state for t, s in result.tasks.items()} == expected
    assert result.status == (
        SUCCEEDED if all(s in (SUCCEEDED, SKIPPED) for s in expected.values()) else FAILED
    )
    events = assert_fold_matches(result, db)
    # each dependent started only after every dependency reached a final state
    finished_seq = {}
    for seq, event in enumerate(events):
        if kind_of(event) in {
            "task_succeeded",
            "task_failed",
            "task_skipped",
            "task_upstream_failed",
        }:
            finished_seq[event.task_id] = seq
    for seq, event in enumerate(events):
        if isinstance(event, TaskStarted):
            task = next(t for t in tasks if t["id"] == event.task_id)
            assert all(finished_seq[d] < seq for d in task["dependencies"])


# -- whoever watches the run stops reading (`durable run ... | head`) ------------------


class Watcher:
    """An `on_event` hook whose output closes once it has seen `after` events."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.seen: list[Any] = []

    def on_event(self, event: Any) -> None:
        self.seen.append(event)
        if len(self.seen) == self.after:
            raise OutputClosed("Broken pipe")


def chain(n: int) -> spec.Workflow:
    return workflow(
        [
            {"id": f"c{i}", "tool": "eng_counted", "input": {"key": f"c{i}", "value": i}}
            | ({"dependencies": [f"c{i - 1}"]} if i else {})
            for i in range(n)
        ]
    )


def assert_fold_interrupted(result: RunResult, db: Path) -> list:
    """The journal says what the live run did, and that it was interrupted."""
    events = journal_events(db, result.run_id)
    folded = RunState.fold(result.tasks, events)
    assert folded.tasks == result.tasks
    assert folded.interrupted and folded.status is None
    return events


def test_an_output_closed_mid_run_stops_it_as_an_interrupt(db):
    watcher = Watcher(after=4)  # run_started, c0 started and succeeded, c1 started
    result = run(chain(10), db, hooks=Hooks(on_event=watcher.on_event))
    assert result.status == "interrupted"
    events = assert_fold_interrupted(result, db)
    assert isinstance(events[-1], RunInterrupted)
    # The hook is not called again once it said its output is closed.
    assert len(watcher.seen) == 4
    # Stopped at once: c1, started as the output closed, is cancelled, nothing after it ran.
    assert result.tasks["c0"].state == SUCCEEDED
    assert result.tasks["c1"].state in (CANCELLED, SUCCEEDED)
    assert all(result.tasks[f"c{i}"].state == PENDING for i in range(3, 10))
    finished = resume(result.run_id, db)
    assert finished.status == "succeeded"
    assert CALLS["c0"] == 1 and all(CALLS[f"c{i}"] == 1 for i in range(2, 10))


def test_an_output_closed_before_the_run_starts_runs_nothing(db):
    def on_start(*_: Any) -> None:
        raise OutputClosed("Broken pipe")

    result = run(chain(3), db, hooks=Hooks(on_start=on_start))
    assert result.status == "interrupted"
    events = assert_fold_interrupted(result, db)
    assert [kind_of(e) for e in events] == ["run_started", "run_interrupted"]
    assert not CALLS


def test_params_given_in_python_are_used_as_given(db):
    """Only text typed on a command line is read as JSON where the default is not
    text; a Python caller's `"123"` became the number 123."""
    wf = workflow(
        [{"id": "a", "tool": "echo", "input": {"n": "${params.n}", "tag": "${params.tag}"}}],
        params={"n": 0, "tag": None},
    )
    given = run(wf, db, {"n": "7", "tag": "true"})
    assert given.outputs["a"] == {"n": "7", "tag": "true"}
    from durable.runner import CommandLineText

    typed = run(wf, db, {"n": CommandLineText("7"), "tag": CommandLineText("true")})
    assert typed.outputs["a"] == {"n": 7, "tag": True}
