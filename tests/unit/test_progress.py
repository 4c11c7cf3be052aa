"""Progress and log lines from inside a task: `ctx.progress`, `ctx.log`, and their events.

The events (`task_progress`, `task_log`) are not transitions: the fold accepts them in
any state and changes nothing. The engine journals progress at most every
`PROGRESS_EVERY` seconds per task, log lines within per-attempt limits, both only
while their attempt runs and both before the attempt's outcome.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_state import TASK_IDS, legal_histories  # the legal random histories of the fold

import durable
from durable import spec
from durable.events import (
    RunFinished,
    RunStarted,
    TaskLog,
    TaskProgress,
    TaskRetrying,
    TaskStarted,
    TaskSucceeded,
    encode_data,
    from_row,
    kind_of,
)
from durable.executors import LOG_LINE_CHARS, LOG_LINES, PROGRESS_EVERY, TaskContext
from durable.journal import Journal
from durable.report import PlainReporter, describe_event
from durable.report.model import LiveModel, progress_text
from durable.runner import RunResult, arun
from durable.state import IllegalTransition, RunState
from durable.tools import REGISTRY

T0 = 1_000_000.0

# -- tools (names unique to this file) ---------------------------------------------------

RELEASE = threading.Event()


def prog_tight_sync(n: int) -> int:
    """10,000 progress reports in a tight loop, from a thread."""
    ctx = durable.current_context()
    for i in range(n):
        ctx.progress(i / n, f"step {i}")
    return n


async def prog_tight_async(n: int) -> int:
    ctx = durable.current_context()
    for i in range(n):
        ctx.progress(i / n, f"step {i}")
    return n


def prog_paced(seconds: float) -> int:
    """Reports as fast as it can for `seconds`: the rate limit decides what is kept."""
    ctx = durable.current_context()
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        ctx.progress(None, f"call {count}")
        count += 1
    return count


def prog_logger(lines: int, width: int = 10) -> int:
    ctx = durable.current_context()
    ctx.log.debug("not kept: the durable.task logger is at INFO")
    for i in range(lines):
        ctx.log.info("line %d %s", i, "x" * width)
    return lines


async def prog_async_logger() -> str:
    ctx = durable.current_context()
    ctx.log.warning("first")
    await asyncio.sleep(0)
    try:
        raise ValueError("boom")
    except ValueError:
        ctx.log.exception("it failed")
    return "ok"


async def prog_async_flood(lines: int) -> int:
    """Logs without ever yielding: the lines cannot reach the loop until it returns."""
    log = durable.current_context().log
    for i in range(lines):
        log.info("line %d", i)
    return lines


def prog_outlives(seconds: float) -> None:
    """Times out; then, abandoned in its thread, reports and logs: nothing is kept."""
    ctx = durable.current_context()
    ctx.progress(0.1, "before the timeout")
    time.sleep(seconds)
    ctx.progress(0.9, "after the timeout")
    ctx.log.info("after the timeout")
    RELEASE.set()


def prog_process(n: int) -> int:
    ctx = durable.current_context()
    for i in range(n):
        ctx.progress(i / n, "in another process: a no-op")
    ctx.log.info("in another process: not journaled")
    return n


for _tool in (prog_tight_sync, prog_tight_async, prog_paced, prog_logger, prog_async_logger):
    REGISTRY.add(_tool, name=_tool.__name__)
REGISTRY.add(prog_outlives, name="prog_outlives")
REGISTRY.add(prog_async_flood, name="prog_async_flood")
REGISTRY.add(prog_process, name="prog_process", cpu_bound=True)


def run(tmp_path: Path, tasks: list[dict[str, Any]]) -> tuple[RunResult, list[Any]]:
    workflow = spec.from_data({"name": "progress-test", "tasks": tasks})

    async def main() -> tuple[RunResult, list[Any]]:
        result = await arun(workflow, db=tmp_path / "journal.db")
        journal = await Journal.open(tmp_path / "journal.db", create=False, readonly=True)
        try:
            return result, [event for _, event in await journal.events(result.run_id)]
        finally:
            await journal.close()

    return asyncio.run(main())


def of(events: list[Any], kind: type, task_id: str | None = None) -> list[Any]:
    return [e for e in events if type(e) is kind and (task_id is None or e.task_id == task_id)]


def between_start_and_outcome(events: list[Any], task_id: str) -> None:
    """Every note of the task lies between a `task_started` and that attempt's outcome."""
    open_attempt = None
    for event in events:
        if getattr(event, "task_id", None) != task_id:
            continue
        if isinstance(event, TaskStarted):
            open_attempt = event.attempt
        elif isinstance(event, TaskProgress | TaskLog):
            assert event.attempt == open_attempt, event
        else:
            open_attempt = None


# -- the events and the fold ---------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        TaskProgress(task_id="t", attempt=2, at=1.5, fraction=0.25, message="a quarter"),
        TaskProgress(task_id="t", attempt=1, at=1.5, fraction=None, message=""),
        TaskLog(task_id="t", attempt=3, at=2.5, level="WARNING", message="two\nlines"),
    ],
    ids=kind_of,
)
def test_the_new_kinds_round_trip_through_a_row(event: Any) -> None:
    row = (kind_of(event), event.task_id, event.attempt, event.at, encode_data(event))
    assert from_row(*row) == event


@pytest.mark.parametrize("state_of_t", ["pending", "running", "retrying", "succeeded", "failed"])
def test_the_fold_accepts_notes_in_any_state_and_changes_nothing_but_the_last_time(
    state_of_t: str,
) -> None:
    history: list[Any] = [RunStarted(at=T0)]
    if state_of_t != "pending":
        history.append(TaskStarted(task_id="t", attempt=1, at=T0 + 1))
    if state_of_t == "retrying":
        history.append(TaskRetrying(task_id="t", attempt=1, at=T0 + 2, error="e", delay=1))
    elif state_of_t == "succeeded":
        history.append(TaskSucceeded(task_id="t", attempt=1, at=T0 + 2, output=1))
    elif state_of_t == "failed":
        from durable.events import TaskFailed

        history.append(TaskFailed(task_id="t", attempt=1, at=T0 + 2, error="e"))
    before = RunState.fold(["t", "u"], history)
    after = RunState.fold(
        ["t", "u"],
        [
            *history,
            TaskProgress(task_id="t", attempt=1, at=T0 + 5, fraction=0.5, message="half"),
            TaskLog(task_id="t", attempt=1, at=T0 + 6, level="INFO", message="hello"),
        ],
    )
    assert after.tasks == before.tasks
    assert after.last_event_at == T0 + 6
    assert (after.status, after.sessions, after.elapsed) == (
        before.status,
        before.sessions,
        before.elapsed,
    )


@settings(max_examples=150, deadline=None)
@given(legal_histories(), st.data())
def test_notes_anywhere_in_a_legal_history_change_no_task_and_no_run_status(
    history: Any, data: st.DataObject
) -> None:
    """Inserted at any point, about any task, in any state: the fold goes through and
    every task ends as it would have (the clocks aside: a note is a committed event)."""
    events, _ = history
    noted = list(events)
    for _ in range(data.draw(st.integers(1, 5))):
        where = data.draw(st.integers(1, len(noted)))
        at = noted[where - 1].at  # a note is committed between its neighbours
        task_id = data.draw(st.sampled_from(TASK_IDS))
        note = data.draw(
            st.sampled_from(
                [
                    TaskProgress(task_id=task_id, attempt=1, at=at, fraction=0.5, message="m"),
                    TaskLog(task_id=task_id, attempt=1, at=at, level="INFO", message="m"),
                ]
            )
        )
        noted.insert(where, note)
    plain, with_notes = RunState.fold(TASK_IDS, events), RunState.fold(TASK_IDS, noted)
    assert {
        t: (s.state, s.attempts, s.output, s.error, s.deaths) for t, s in plain.tasks.items()
    } == {
        t: (s.state, s.attempts, s.output, s.error, s.deaths) for t, s in with_notes.tasks.items()
    }
    assert (plain.status, plain.interrupted, plain.sessions, plain.after_death) == (
        with_notes.status,
        with_notes.interrupted,
        with_notes.sessions,
        with_notes.after_death,
    )
    assert plain.elapsed == with_notes.elapsed


def test_a_note_for_an_unknown_task_is_not_a_possible_history() -> None:
    with pytest.raises(IllegalTransition, match="unknown task 'nope'"):
        RunState.fold(
            ["t"], [RunStarted(at=T0), TaskLog(task_id="nope", at=T0, level="INFO", message="x")]
        )


def test_a_session_that_died_ends_at_its_last_note() -> None:
    """Notes are committed events: a dead session's clocks stop at the last of them."""
    from durable.events import RunResumed

    state = RunState.fold(
        ["t"],
        [
            RunStarted(at=T0),
            TaskStarted(task_id="t", attempt=1, at=T0),
            TaskProgress(task_id="t", attempt=1, at=T0 + 7, message="alive"),
            RunResumed(at=T0 + 100),
        ],
    )
    assert state.elapsed == 7.0
    assert state.tasks["t"].elapsed == 7.0


def test_the_timeline_ignores_notes() -> None:
    from durable import graph
    from durable.timeline import build

    workflow = durable.Workflow(name="wf", tasks=[durable.Task(id="t", tool="echo")])
    plan = graph.build_trusted(workflow, lambda _: None)  # type: ignore[arg-type]
    events = [
        RunStarted(at=T0),
        TaskStarted(task_id="t", attempt=1, at=T0),
        TaskProgress(task_id="t", attempt=1, at=T0 + 1, fraction=0.5, message="half"),
        TaskLog(task_id="t", attempt=1, at=T0 + 1, level="INFO", message="hello"),
        TaskSucceeded(task_id="t", attempt=1, at=T0 + 2),
        RunFinished(at=T0 + 2, status="succeeded"),
    ]
    drawn = build("r", events, plan, status="succeeded")
    assert [(a.task_id, a.outcome) for a in drawn.attempts] == [("t", "succeeded")]


# -- the context ---------------------------------------------------------------------------


def test_outside_a_run_progress_and_log_do_nothing() -> None:
    context = TaskContext("r", "t", 1, "r:t")
    context.progress(0.5, "nobody listens")
    context.log.info("nobody listens")


def test_a_fraction_that_is_not_a_number_is_the_tools_error() -> None:
    from durable.executors import TaskReports

    reports = TaskReports("r", RunState.new(["t"]), lambda event: None, asyncio.new_event_loop())
    with pytest.raises((TypeError, ValueError)):
        reports.progress("t", 1, "half", "x")


# -- through the engine ----------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["prog_tight_sync", "prog_tight_async"])
def test_ten_thousand_reports_in_a_tight_loop_journal_a_handful(tmp_path: Path, tool: str) -> None:
    result, events = run(tmp_path, [{"id": "t", "tool": tool, "input": {"n": 10_000}}])
    assert result.status == "succeeded"
    reports = of(events, TaskProgress, "t")
    assert len(reports) <= 2
    between_start_and_outcome(events, "t")
    for report in reports:
        assert 0.0 <= report.fraction <= 1.0
        assert report.message.startswith("step ")


def test_progress_is_journaled_at_most_every_half_second_per_task(tmp_path: Path) -> None:
    result, events = run(
        tmp_path,
        [
            {"id": "a", "tool": "prog_paced", "input": {"seconds": 1.3}},
            {"id": "b", "tool": "prog_paced", "input": {"seconds": 1.3}},
        ],
    )
    assert result.status == "succeeded"
    for task_id in ("a", "b"):
        reports = of(events, TaskProgress, task_id)
        assert 2 <= len(reports) <= 1.3 / PROGRESS_EVERY + 1
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(reports)]
        assert all(gap >= PROGRESS_EVERY * 0.9 for gap in gaps), gaps
        between_start_and_outcome(events, task_id)


def test_log_lines_are_kept_in_order_before_the_outcome(tmp_path: Path) -> None:
    result, events = run(
        tmp_path,
        [
            {"id": "s", "tool": "prog_logger", "input": {"lines": 3}},
            {"id": "a", "tool": "prog_async_logger"},
        ],
    )
    assert result.status == "succeeded"
    assert [(e.level, e.message) for e in of(events, TaskLog, "s")] == [
        ("INFO", f"line {i} xxxxxxxxxx") for i in range(3)
    ]
    logged = of(events, TaskLog, "a")
    assert [e.level for e in logged] == ["WARNING", "ERROR"]
    assert logged[1].message.startswith("it failed\nTraceback")
    assert "ValueError: boom" in logged[1].message
    for task_id in ("s", "a"):
        between_start_and_outcome(events, task_id)


def test_log_lines_past_the_limit_are_dropped_and_counted(tmp_path: Path) -> None:
    result, events = run(
        tmp_path,
        [
            {"id": "many", "tool": "prog_logger", "input": {"lines": LOG_LINES + 500}},
            {"id": "wide", "tool": "prog_logger", "input": {"lines": 2, "width": 10_000}},
        ],
    )
    assert result.status == "succeeded"
    many = of(events, TaskLog, "many")
    assert len(many) == LOG_LINES + 1
    assert many[-1].level == "WARNING"
    assert many[-1].message.startswith("500 more log line(s) of this attempt were dropped")
    wide = of(events, TaskLog, "wide")
    assert [len(e.message) for e in wide] == [LOG_LINE_CHARS, LOG_LINE_CHARS]
    assert wide[0].message.endswith("…")


def test_an_async_tool_that_floods_the_log_without_yielding_is_bounded(tmp_path: Path) -> None:
    result, events = run(
        tmp_path, [{"id": "f", "tool": "prog_async_flood", "input": {"lines": 50_000}}]
    )
    assert result.status == "succeeded"
    logged = of(events, TaskLog, "f")
    assert len(logged) == LOG_LINES + 1
    assert [e.message for e in logged[:2]] == ["line 0", "line 1"]
    assert logged[-1].message.startswith(f"{50_000 - LOG_LINES:,} more log line(s)")


def test_an_abandoned_attempt_says_nothing_more(tmp_path: Path) -> None:
    RELEASE.clear()
    result, events = run(
        tmp_path, [{"id": "t", "tool": "prog_outlives", "input": {"seconds": 0.6}, "timeout": 0.2}]
    )
    assert result.status == "failed"
    assert RELEASE.wait(10)
    time.sleep(0.05)  # the abandoned thread's last calls return; the run is already over
    assert all(
        e.message != "after the timeout" for e in of(events, TaskProgress) + of(events, TaskLog)
    )
    between_start_and_outcome(events, "t")


def test_a_cpu_bound_tool_may_report_but_nothing_is_journaled(tmp_path: Path) -> None:
    result, events = run(tmp_path, [{"id": "p", "tool": "prog_process", "input": {"n": 100}}])
    assert result.status == "succeeded", result.tasks["p"].error
    assert of(events, TaskProgress) == of(events, TaskLog) == []


def test_shell_forwards_its_last_line_as_progress(tmp_path: Path) -> None:
    script = "for i in 1 2 3 4; do echo line $i; sleep 0.3; done; printf 'partial'"
    result, events = run(
        tmp_path,
        [
            {
                "id": "out",
                "tool": "shell",
                "input": {"command": ["sh", "-c", script], "progress": True},
            },
            {
                "id": "err",
                "tool": "shell",
                "input": {
                    "command": ["sh", "-c", "echo a >&2; sleep 0.2; echo b"],
                    "progress": "stderr",
                },
            },
            {"id": "quiet", "tool": "shell", "input": {"command": ["sh", "-c", script]}},
        ],
    )
    assert result.status == "succeeded"
    assert result.outputs["out"]["stdout"] == "line 1\nline 2\nline 3\nline 4\npartial"
    messages = [e.message for e in of(events, TaskProgress, "out")]
    assert messages and messages[0] == "line 1"
    assert set(messages) <= {"line 1", "line 2", "line 3", "line 4"}
    assert [e.message for e in of(events, TaskProgress, "err")] == ["a"]
    assert result.outputs["err"]["stdout"] == "b\n"
    assert of(events, TaskProgress, "quiet") == []


def test_shell_refuses_a_bad_progress_input(tmp_path: Path) -> None:
    result, _ = run(
        tmp_path, [{"id": "s", "tool": "shell", "input": {"command": ["true"], "progress": "both"}}]
    )
    assert "progress must be" in (result.tasks["s"].error or "")


# -- how they are shown ----------------------------------------------------------------------


def test_the_live_model_shows_progress_and_ignores_log_lines() -> None:
    state = RunState.new(["t", "u"])
    model = LiveModel("r", "wf", {"t": "tool", "u": "tool"}, state)
    model.apply_all(
        [
            RunStarted(at=T0),
            TaskStarted(task_id="t", attempt=1, at=T0),
            TaskStarted(task_id="u", attempt=1, at=T0),
            TaskProgress(task_id="t", attempt=1, at=T0 + 1, fraction=0.42, message="copying\nmore"),
            TaskLog(task_id="u", attempt=1, at=T0 + 1, level="INFO", message="hello"),
        ]
    )
    assert [row.progress for row in model.view(T0 + 2, room=5).rows] == ["42% copying", None]
    model.apply(TaskSucceeded(task_id="t", attempt=1, at=T0 + 3))
    assert model.progress == {}


@pytest.mark.parametrize(
    ("fraction", "message", "text"),
    [(0.5, "half", "50% half"), (None, "words", "words"), (1.0, "", "100%"), (0.999, "", "99%")],
)
def test_progress_text(fraction: float | None, message: str, text: str) -> None:
    assert progress_text(fraction, message) == text


def test_plain_lines_name_log_lines_and_leave_progress_to_the_live_view() -> None:
    log = TaskLog(task_id="t", attempt=1, at=T0, level="WARNING", message="one\ntwo")
    progress = TaskProgress(task_id="t", attempt=1, at=T0, fraction=0.5, message="half")
    assert describe_event(log).endswith(" t warning: one\n    two")
    assert describe_event(progress).endswith(" t progress: 50% half")
    stream = io.StringIO()
    reporter = PlainReporter(stream)
    reporter.on_event(log)
    reporter.on_event(progress)
    assert stream.getvalue() == ""
