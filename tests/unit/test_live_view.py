"""The live view without a terminal: its model (what it shows for given states), the
summary, the text it draws, and the reporter on a real run rendered into a string.

`durable run` on a real pseudo-terminal is tested in tests/e2e/test_live_view_cli.py.
"""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console, Group

from durable import Task, Workflow
from durable.errors import OutputClosed
from durable.events import (
    Event,
    RunResumed,
    RunStarted,
    TaskCancelled,
    TaskFailed,
    TaskRetrying,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    TaskUpstreamFailed,
)
from durable.report import JsonReporter, PlainReporter, QuietReporter, draw, for_output, live
from durable.report.live import LiveReporter
from durable.report.model import ETA_AFTER, LiveModel, Notice
from durable.report.summary import summarize
from durable.runner import Hooks, arun
from durable.state import RunState

T0 = 1_000_000.0  # a wall-clock time; the model never reads the clock itself


class Run:
    """A run's state and its live model, fed the same events in the engine's order."""

    def __init__(self, ids: list[str], tools: dict[str, str] | None = None) -> None:
        self.state = RunState.new(ids)
        self.model = LiveModel("r1", "demo", tools or dict.fromkeys(ids, "echo"), self.state)

    def feed(self, *events: Event) -> Run:
        for event in events:
            self.state.apply(event)
            self.model.apply(event)
        return self


def started(task_id: str, at: float, attempt: int = 1) -> TaskStarted:
    return TaskStarted(task_id=task_id, attempt=attempt, at=at)


def succeeded(task_id: str, at: float, attempt: int = 1) -> TaskSucceeded:
    return TaskSucceeded(task_id=task_id, attempt=attempt, at=at)


def ids(n: int) -> list[str]:
    return [f"t{i}" for i in range(n)]


def render(renderable: Any, width: int = 80) -> str:
    """As the live area renders it (`console.print` would rewrap a bare `Text`)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False)
    console.print(Group(renderable))
    return console.file.getvalue()  # type: ignore[attr-defined]


# -- counts ---------------------------------------------------------------------------------


def test_counts_follow_every_kind_of_transition() -> None:
    run = Run(ids(8)).feed(
        RunStarted(at=T0),
        started("t0", T0),
        succeeded("t0", T0 + 1),
        started("t1", T0),
        TaskFailed(task_id="t1", attempt=1, at=T0 + 1, error="boom"),
        TaskSkipped(task_id="t2", at=T0 + 1, reason="condition false"),
        TaskUpstreamFailed(task_id="t3", at=T0 + 1),
        started("t4", T0),
        TaskRetrying(task_id="t4", attempt=1, at=T0 + 1, error="flaky", delay=1),
        started("t5", T0),
        TaskCancelled(task_id="t5", attempt=1, at=T0 + 1),
        started("t6", T0 + 1),
    )
    view = run.model.view(T0 + 2, room=10)
    assert view.counts == [
        ("succeeded", 1),
        ("failed", 1),
        ("skipped", 1),
        ("upstream_failed", 1),
        ("cancelled", 1),
        ("retrying", 1),
        ("running", 1),
        ("waiting", 1),
    ]
    assert (view.total, view.finished) == (8, 5)
    # The same counts as the fold, state by state.
    shown = dict(view.counts)
    for state, n in run.state.counts().items():
        assert shown.get(state, shown.get("waiting" if state == "pending" else state)) == n


def test_a_retried_task_runs_again_and_leaves_retrying() -> None:
    run = Run(ids(1)).feed(
        RunStarted(at=T0),
        started("t0", T0),
        TaskRetrying(task_id="t0", attempt=1, at=T0 + 1, error="flaky", delay=0.5),
        started("t0", T0 + 1.5, attempt=2),
    )
    view = run.model.view(T0 + 2, room=10)
    assert dict(view.counts) == {"running": 1, "waiting": 0}
    assert [(row.task_id, row.attempt, row.seconds) for row in view.rows] == [("t0", 2, 0.5)]


def test_a_session_that_resumes_counts_what_it_kept() -> None:
    """`run_resumed` sends failed and unfinished tasks back to pending; kept ones stay finished."""
    run = Run(ids(4)).feed(
        RunStarted(at=T0),
        started("t0", T0),
        succeeded("t0", T0 + 1),
        started("t1", T0),
        TaskFailed(task_id="t1", attempt=1, at=T0 + 1, error="boom"),
        started("t2", T0),  # the process died here
    )
    run.feed(RunResumed(at=T0 + 100))
    view = run.model.view(T0 + 101, room=10)
    assert dict(view.counts) == {"succeeded": 1, "running": 0, "waiting": 3}
    assert view.finished == 1 and view.elapsed == 1.0


def test_apply_all_is_apply_event_by_event() -> None:
    """The live reporter feeds the model in batches: the same result, resume included."""
    events: list[Event] = [
        RunStarted(at=T0),
        started("t0", T0),
        started("t1", T0),
        TaskRetrying(task_id="t1", attempt=1, at=T0 + 1, error="x", delay=0),
        succeeded("t0", T0 + 1),
        started("t1", T0 + 1, attempt=2),
        TaskFailed(task_id="t1", attempt=2, at=T0 + 2, error="boom"),
        TaskSkipped(task_id="t2", at=T0 + 2, reason="no"),
        started("t3", T0 + 2),
        RunResumed(at=T0 + 10),
        started("t1", T0 + 11, attempt=3),
        succeeded("t1", T0 + 12, attempt=3),
        started("t3", T0 + 11),
    ]
    one, batch = Run(ids(5)), Run(ids(5))
    one.feed(*events)
    for event in events:
        batch.state.apply(event)
    batch.model.apply_all(events)
    assert batch.model.view(T0 + 13, room=5) == one.model.view(T0 + 13, room=5)
    assert batch.model.take_notices() == one.model.take_notices()


# -- the running tasks -------------------------------------------------------------------------


def test_running_tasks_longest_running_first_with_tool_attempt_and_time() -> None:
    run = Run(["fetch", "embed", "search"], {"fetch": "http", "embed": "embed", "search": "web"})
    run.feed(
        RunStarted(at=T0),
        started("search", T0 + 3),
        started("fetch", T0 + 1),
        started("embed", T0 + 2),
    )
    rows = run.model.view(T0 + 10, room=10).rows
    # Started in that order, so longest-running first is start order.
    assert [(r.task_id, r.tool, r.attempt, r.seconds) for r in rows] == [
        ("search", "web", 1, 7.0),
        ("fetch", "http", 1, 9.0),
        ("embed", "embed", 1, 8.0),
    ]


def test_a_restarted_attempt_moves_behind_the_older_ones() -> None:
    run = Run(ids(3)).feed(
        RunStarted(at=T0),
        started("t0", T0),
        started("t1", T0 + 1),
        TaskRetrying(task_id="t0", attempt=1, at=T0 + 2, error="x", delay=0),
        started("t0", T0 + 2, attempt=2),
        started("t2", T0 + 3),
    )
    assert [row.task_id for row in run.model.view(T0 + 4, room=10).rows] == ["t1", "t0", "t2"]


@pytest.mark.parametrize(
    ("running", "room", "shown", "more"),
    [(3, 3, 3, 0), (4, 3, 2, 2), (10, 5, 4, 6), (2, 0, 0, 2), (0, 3, 0, 0)],
)
def test_the_list_is_cut_to_the_room_with_n_more(
    running: int, room: int, shown: int, more: int
) -> None:
    run = Run(ids(10)).feed(RunStarted(at=T0), *(started(f"t{i}", T0 + i) for i in range(running)))
    view = run.model.view(T0 + 20, room=room)
    assert (len(view.rows), view.more) == (shown, more)
    assert len(view.rows) + (1 if view.more else 0) <= max(room, 1)


def test_a_progress_message_is_shown_while_its_attempt_runs() -> None:
    run = Run(ids(2)).feed(RunStarted(at=T0), started("t0", T0), started("t1", T0))
    run.model.set_progress("t0", "page 3 of 10")
    run.model.set_progress("t9", "not running: ignored")
    assert [row.progress for row in run.model.view(T0 + 1, room=5).rows] == ["page 3 of 10", None]
    run.feed(succeeded("t0", T0 + 2))
    assert run.model.progress == {}


def test_an_instance_of_a_foreach_task_shows_its_tasks_tool() -> None:
    run = Run(["fan[0]"], {"fan": "http"}).feed(RunStarted(at=T0), started("fan[0]", T0))
    assert run.model.view(T0, room=5).rows[0].tool == "http"


# -- the clock, the rate and the ETA ---------------------------------------------------------


def test_the_clock_moves_with_now_alone() -> None:
    """Nothing finishes for 8 s: the elapsed time and the running time still advance."""
    run = Run(ids(1)).feed(RunStarted(at=T0), started("t0", T0 + 0.5))
    first, later = run.model.view(T0 + 1, room=5), run.model.view(T0 + 8, room=5)
    assert (first.elapsed, later.elapsed) == (1.0, 8.0)
    assert (first.rows[0].seconds, later.rows[0].seconds) == (0.5, 7.5)
    assert dict(later.counts)["running"] == 1


def test_no_rate_or_eta_before_they_mean_something() -> None:
    run = Run(ids(100)).feed(RunStarted(at=T0), started("t0", T0), succeeded("t0", T0 + 0.1))
    view = run.model.view(T0 + 0.5, room=5)
    assert view.rate is None and view.eta is None
    view = run.model.view(T0 + ETA_AFTER - 0.5, room=5)
    assert view.rate is not None and view.eta is None


def test_rate_over_the_last_seconds_and_eta_from_it() -> None:
    n = 1000
    run = Run(ids(n)).feed(RunStarted(at=T0))
    # 100 tasks a second for 10 s, then nothing.
    for i in range(n // 2):
        at = T0 + i / 50
        run.feed(started(f"t{i}", at), succeeded(f"t{i}", at))
    view = run.model.view(T0 + 10, room=5)
    assert view.rate == pytest.approx(50, rel=0.1)
    assert view.eta == pytest.approx(500 / 50, rel=0.1)
    stalled = run.model.view(T0 + 30, room=5)
    assert stalled.rate == 0 and stalled.eta is None


# -- notices ----------------------------------------------------------------------------------


def test_failures_and_retries_become_notices_once_with_their_first_line() -> None:
    run = Run(ids(2)).feed(
        RunStarted(at=T0),
        started("t0", T0),
        TaskRetrying(task_id="t0", attempt=1, at=T0, error="Timeout\ntraceback...", delay=2),
        started("t1", T0),
        TaskFailed(task_id="t1", attempt=1, at=T0, error="ValueError: bad\nmore"),
    )
    assert run.model.take_notices() == [
        Notice("t0", 1, "Timeout", 2),
        Notice("t1", 1, "ValueError: bad"),
    ]
    assert run.model.take_notices() == []
    assert render(draw.notice(Notice("t1", 1, "ValueError: bad"))).strip() == (
        "✗ t1 failed (attempt 1): ValueError: bad"
    )
    assert render(draw.notice(Notice("t0", 1, "Timeout", 2))).strip() == (
        "↻ t0 retrying (attempt 1): Timeout; again in 2s"
    )


# -- the drawing -------------------------------------------------------------------------------


def test_a_frame_shows_header_bar_counts_and_rows_cut_to_the_width() -> None:
    long_id = "a_task_with_a_very_long_name_indeed_" * 3
    run = Run([*ids(9), long_id]).feed(RunStarted(at=T0))
    for i in range(6):
        run.feed(started(f"t{i}", T0), succeeded(f"t{i}", T0 + 0.5 * i))
    run.feed(
        *(started(task_id, T0 + i) for i, task_id in enumerate([long_id, "t6", "t7", "t8"], 1))
    )
    run.model.set_progress("t6", "downloading page 3")
    view = run.model.view(T0 + 4.25, room=3)
    lines = render(draw.frame(view, 60), width=60).splitlines()
    assert lines[0].startswith("run r1 · demo · 4.2s · ")
    assert "ETA" in lines[0]
    assert lines[1].endswith("  6/10  60%")
    assert lines[2] == "6 succeeded · 4 running · 0 waiting"
    assert lines[3].startswith("  a_task_with_a_very_long_name_in…  echo  #1     3.2s")
    assert lines[4].startswith("  t6 ") and lines[4].endswith("  2.2s  down…")
    assert lines[5] == "  +2 more"
    assert len(lines) == 6
    assert all(len(line) <= 60 for line in lines)


def test_ascii_bar_where_the_terminal_cannot_show_more() -> None:
    run = Run(ids(4)).feed(RunStarted(at=T0), started("t0", T0), succeeded("t0", T0))
    bar = draw.bar(run.model.view(T0, room=1), 40, ascii_only=True).plain
    assert bar.startswith("#") and "-" in bar and bar.endswith("1/4  25%")


@pytest.mark.parametrize(
    ("value", "text"), [(0.04, "0.0s"), (12.34, "12.3s"), (245, "4m05s"), (7380, "2h03m")]
)
def test_durations(value: float, text: str) -> None:
    assert draw.seconds(value) == text


# -- the summary ------------------------------------------------------------------------------


def test_summary_of_a_failed_run_names_slowest_failures_and_both_commands() -> None:
    run = Run([*"abcdefgh", "old"]).feed(
        RunStarted(at=T0 - 100),
        started("old", T0 - 100),
        succeeded("old", T0 - 50),  # an earlier session's: not this session's slowest
        RunResumed(at=T0),
    )
    for task_id, seconds in [("a", 3), ("b", 7), ("c", 0.001), ("d", 5), ("e", 1), ("f", 1)]:
        run.feed(started(task_id, T0))
        if task_id == "f":
            run.feed(TaskFailed(task_id="f", attempt=1, at=T0 + 1, error="RuntimeError: no\ntrace"))
        else:
            run.feed(succeeded(task_id, T0 + seconds))
    run.feed(TaskUpstreamFailed(task_id="g", at=T0 + 1))
    summary = summarize(run.model, "failed", 12.5, db="my runs.db")
    assert summary.slowest == [("b", 7), ("d", 5), ("a", 3)]
    assert summary.failed == [("f", 1, "RuntimeError: no")]
    assert summary.counts == [
        ("succeeded", 6),
        ("failed", 1),
        ("upstream_failed", 1),
        ("unfinished", 1),
    ]
    assert (summary.finished, summary.total) == (8, 9)
    assert summary.commands == [
        ("resume", "durable resume r1 --db 'my runs.db'"),
        ("inspect", "durable status r1 --db 'my runs.db'"),
    ]
    text = render(draw.summary(summary), width=100)
    assert text.splitlines() == [
        "run r1 failed in 12.5s · 8/9 finished: 6 succeeded, 1 failed, 1 upstream failed, 1 unfinished",
        "  slowest: b 7.0s, d 5.0s, a 3.0s",
        "  failed: f (attempt 1): RuntimeError: no",
        "  resume:  durable resume r1 --db 'my runs.db'",
        "  inspect: durable status r1 --db 'my runs.db'",
    ]


def test_summary_of_a_success_offers_inspection_only_and_caps_failures() -> None:
    run = Run(["a"]).feed(RunStarted(at=T0), started("a", T0), succeeded("a", T0 + 0.01))
    ok = summarize(run.model, "succeeded", 1.0)
    assert ok.commands == [("inspect", "durable status r1")]
    assert ok.slowest == []  # too quick to be worth naming
    run = Run(ids(8)).feed(RunStarted(at=T0))
    for i in range(8):
        run.feed(started(f"t{i}", T0), TaskFailed(task_id=f"t{i}", attempt=1, at=T0, error="x"))
    failed = summarize(run.model, "failed", 1.0)
    assert (len(failed.failed), failed.more_failed) == (5, 3)


def test_slowest_attempts_are_the_same_one_by_one_and_in_batches() -> None:
    events: list[Event] = [RunStarted(at=T0)]
    for i, seconds in enumerate([0.5, 9, 2, 7, 0.2, 8, 1]):
        events += [started(f"t{i}", T0), succeeded(f"t{i}", T0 + seconds)]
    one, batch = Run(ids(7)), Run(ids(7))
    one.feed(*events)
    batch.model.apply_all(events)
    assert one.model.slowest == batch.model.slowest == [(9, "t1"), (8, "t5"), (7, "t3")]


# -- which reporter -----------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("options", "term", "expected"),
    [
        ({}, "xterm-256color", LiveReporter),
        ({"live": False}, "xterm-256color", PlainReporter),
        ({"quiet": True}, "xterm-256color", QuietReporter),
        ({"json": True}, "xterm-256color", JsonReporter),
        ({"json": True, "quiet": True}, "xterm-256color", JsonReporter),
        ({}, "dumb", PlainReporter),
    ],
)
def test_the_reporter_for_a_terminal(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, bool], term: str, expected: type
) -> None:
    monkeypatch.setenv("TERM", term)
    assert type(for_output(stream=FakeTerminal(), **options)) is expected


def test_only_the_quiet_reporter_watches_no_event() -> None:
    """`--quiet` shows nothing per event: the CLI then gives the engine no `on_event`
    (`Reporter.watches`), so that it need not make the events' objects."""
    assert not QuietReporter(FakeTerminal()).watches
    for reporter in (LiveReporter, PlainReporter, JsonReporter):
        assert reporter(FakeTerminal()).watches, reporter


def test_a_pipe_never_gets_the_live_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    assert type(for_output(stream=io.StringIO())) is PlainReporter


# -- the reporters on a real run ----------------------------------------------------------------


WORKFLOW = Workflow(
    name="slowish",
    tasks=[
        Task(id="nap", tool="sleep", input={"seconds": 0.45}),
        Task(id="after", tool="echo", input={"n": 1}, dependencies=["nap"]),
    ],
)


def test_the_live_reporter_draws_on_a_timer_and_ends_with_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A loaded machine makes frames dear, and dear frames come less often (`BUDGET`):
    # here the timer alone sets the pace.
    monkeypatch.setattr(live, "BUDGET", 1.0)
    stream = io.StringIO()
    console = Console(
        file=stream, force_terminal=True, width=80, height=20, color_system=None, highlight=False
    )
    reporter = LiveReporter(stream, console=console)
    result = asyncio.run(arun(
        WORKFLOW, db=tmp_path / "j.db", run_id="live-1", durability="off",
        hooks=Hooks(on_start=reporter.on_start, on_event=reporter.on_event),
    ))  # fmt: skip
    # Four events while `nap` sleeps 0.45 s, and yet a frame every 0.1 s or so.
    assert reporter.frames >= 3
    reporter.finish(result, 0.5)
    reporter.close()  # twice is harmless
    screen = stream.getvalue()
    assert screen.startswith("run live-1 started: slowish (2 tasks)")
    assert "  nap  sleep  #1" in screen
    assert "run live-1 succeeded in 0.5s · 2/2 finished: 2 succeeded" in screen
    assert re.search(r"\n  slowest: nap \d\.\ds\n", screen)
    assert "  inspect: durable status live-1" in screen


def test_json_run_started_carries_the_workflow_and_its_size(tmp_path: Path) -> None:
    stream = io.StringIO()
    reporter = JsonReporter(stream)
    asyncio.run(arun(
        WORKFLOW, db=tmp_path / "j.db", run_id="json-1", durability="off",
        hooks=Hooks(on_start=reporter.on_start, on_event=reporter.on_event),
    ))  # fmt: skip
    first = stream.getvalue().splitlines()[0]
    assert '"kind":"run_started"' in first
    assert '"workflow":"slowish","tasks":2,"kept":0' in first


class _Unread(io.StringIO):
    """A pipe whose reader quit: every write and flush fails as a closed pipe does."""

    def __init__(self) -> None:
        super().__init__()
        self.tries = 0

    def write(self, text: str) -> int:
        self.tries += 1
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        self.tries += 1
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("kind", [PlainReporter, JsonReporter])
def test_a_closed_output_is_said_once_then_nothing_is_written(kind: Any, tmp_path: Path) -> None:
    """`OutputClosed` once (the engine stops the run on it), then silence: the summary
    and whatever else comes find a reporter that writes nothing and raises nothing."""
    stream = _Unread()
    reporter = kind(stream)
    with pytest.raises(OutputClosed, match="cannot write the output: Broken pipe"):
        reporter.on_start("r", WORKFLOW, RunState({}), False)
        reporter.on_event(RunStarted(at=1.0))
    assert reporter.closed == "Broken pipe"
    tries = stream.tries
    reporter.on_event(RunStarted(at=2.0))
    result = asyncio.run(arun(WORKFLOW, db=tmp_path / "j.db", durability="off"))
    reporter.finish(result, 0.5)
    reporter.close()
    assert stream.tries == tries


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("\x1b[32mgreen 5\x1b[0m\x1b[2K\ttab", "green 5 tab"),  # a colour, then erase the line
        ("\x1b]0;a title\x07copying", "copying"),  # a terminal title
        ("50 files\rdone", "50 files done"),
        ("café ✓ plain", "café ✓ plain"),
        ("first\n\x1b[1Asecond", "first"),
    ],
)
def test_a_tools_escape_codes_never_reach_the_terminal(message: str, shown: str) -> None:
    """A program's progress line with `\\x1b[2K` erased the row it was drawn in (the
    task's id, tool and time) and left its text elsewhere."""
    from durable.report.lines import first_line, progress_text

    assert first_line(message) == shown
    assert progress_text(0.5, message) == f"50% {shown}"
