"""The timeline model (`durable.timeline`) and its HTML (`durable.timeline_html`): pure,
built from hand-written event histories."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durable import graph, timeline_html
from durable.events import (
    Event,
    RunFinished,
    RunInterrupted,
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
from durable.spec import Task, Workflow
from durable.state import IllegalTransition, RunState
from durable.timeline import (
    CANCELLED,
    CUT,
    DIED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    LIVE,
    RETRIED,
    RUNNING,
    SUCCEEDED,
    build,
)

T0 = 1_700_000_000.0


def bars(page: str) -> int:
    """The chart's bars (the legend's swatches are bars too, without `data-i`)."""
    return len(re.findall(r'<rect class="bar [^"]*" data-i="', page))


def plan_of(deps: dict[str, list[str]], max_concurrency: int = 4) -> graph.Plan:
    workflow = Workflow(
        name="wf",
        max_concurrency=max_concurrency,
        tasks=[Task(id=task_id, tool="echo", dependencies=d) for task_id, d in deps.items()],
    )
    return graph.build_trusted(workflow, lambda _: None)  # type: ignore[arg-type,return-value]


def started(task: str, at: float, attempt: int = 1) -> TaskStarted:
    return TaskStarted(task_id=task, attempt=attempt, at=T0 + at)


def succeeded(task: str, at: float, attempt: int = 1) -> TaskSucceeded:
    return TaskSucceeded(task_id=task, attempt=attempt, at=T0 + at)


def history() -> tuple[graph.Plan, list[Event]]:
    """Retries, a failure, an upstream failure, an interruption, a resume next day."""
    plan = plan_of({"a": [], "b": ["a"], "c": [], "d": ["c"], "e": ["a"], "f": ["b", "e"]})
    day = 86_400.0
    events: list[Event] = [
        RunStarted(at=T0),
        started("a", 0),
        started("c", 0),
        succeeded("a", 1),
        started("b", 1),
        started("e", 1),
        TaskRetrying(task_id="b", attempt=1, at=T0 + 2, error="boom", delay=0.5),
        TaskFailed(task_id="c", attempt=1, at=T0 + 2, error="bad <b>input</b>"),
        TaskUpstreamFailed(task_id="d", at=T0 + 2),
        started("b", 2.5, attempt=2),
        succeeded("b", 3, attempt=2),
        TaskCancelled(task_id="e", attempt=1, at=T0 + 4),
        RunInterrupted(at=T0 + 4),
        RunResumed(at=T0 + day),
        started("c", day, attempt=1),
        started("e", day, attempt=1),
        TaskFailed(task_id="c", attempt=1, at=T0 + day + 1, error="bad again"),
        TaskUpstreamFailed(task_id="d", at=T0 + day + 1),
        succeeded("e", day + 2),
        started("f", day + 2),
        succeeded("f", day + 3),
        RunFinished(at=T0 + day + 3, status="failed"),
    ]
    return plan, events


def test_attempts_open_at_start_and_close_at_their_outcome() -> None:
    plan, events = history()
    drawn = build("r1", events, plan, status="failed")
    outcomes = [(a.task_id, a.session, a.outcome) for a in drawn.attempts]
    assert outcomes == [
        ("a", 0, SUCCEEDED),
        ("c", 0, FAILED),
        ("b", 0, RETRIED),
        ("e", 0, CUT),  # cancelled by Ctrl-C (the session ends interrupted): cut off
        ("b", 0, SUCCEEDED),
        ("c", 1, FAILED),
        ("e", 1, SUCCEEDED),
        ("f", 1, SUCCEEDED),
    ]
    retried = drawn.attempts[2]
    assert (retried.start, retried.end, retried.delay, retried.error) == (
        T0 + 1,
        T0 + 2,
        0.5,
        "boom",
    )
    assert [(m.task_id, m.outcome) for m in drawn.marks] == [("d", "upstream_failed")] * 2
    assert drawn.states == {
        "a": "succeeded",
        "b": "succeeded",
        "c": "failed",
        "d": "upstream_failed",
        "e": "succeeded",
        "f": "succeeded",
    }


def test_a_run_no_process_drives_shows_its_tasks_in_flight_interrupted() -> None:
    """As `status` does; the header said "4 running" of a run whose process died."""
    plan = plan_of({"a": [], "b": [], "c": []})
    events: list[Event] = [
        RunStarted(at=T0),
        started("a", 0),
        started("b", 0),
        TaskRetrying(task_id="b", attempt=1, at=T0 + 1, error="boom", delay=60),
        started("c", 0),
        succeeded("c", 1),
    ]
    dead = build("r1", events, plan, status="interrupted")
    assert dead.states == {"a": "interrupted", "b": "interrupted", "c": "succeeded"}
    driven = build("r1", events, plan, status="running", live=True)
    assert driven.states == {"a": "running", "b": "retrying", "c": "succeeded"}


def test_a_run_cancelled_by_durable_cancel_draws_its_attempts_cancelled() -> None:
    """Only Ctrl-C's cancellations are cut off: a session that `cancel` ended keeps them."""
    plan = plan_of({"a": []})
    events: list[Event] = [
        RunStarted(at=T0),
        started("a", 0),
        TaskCancelled(task_id="a", attempt=1, at=T0 + 1),
        RunFinished(at=T0 + 1, status="cancelled"),
    ]
    drawn = build("r1", events, plan, status="cancelled")
    assert [a.outcome for a in drawn.attempts] == [CANCELLED]


def test_sessions_end_at_their_last_event_and_say_how() -> None:
    plan, events = history()
    drawn = build("r1", events, plan, status="failed")
    assert [(s.start, s.end, s.ended) for s in drawn.sessions] == [
        (T0, T0 + 4, INTERRUPTED),
        (T0 + 86_400, T0 + 86_403, FINISHED),
    ]
    assert drawn.sessions[1].status == "failed"
    assert drawn.active_seconds == 7


def test_an_attempt_open_when_the_process_died_is_cut_at_its_sessions_last_event() -> None:
    plan = plan_of({"a": [], "b": []})
    events = [
        RunStarted(at=T0),
        started("a", 0),
        started("b", 0.5),
        succeeded("b", 2),
        RunResumed(at=T0 + 60),
        started("a", 60),
        succeeded("a", 61),
        RunFinished(at=T0 + 61, status="succeeded"),
    ]
    drawn = build("r", events, plan, status="succeeded")
    cut = drawn.attempts[0]
    assert (cut.task_id, cut.outcome, cut.end) == ("a", CUT, T0 + 2)
    assert drawn.sessions[0].ended == DIED


def test_an_interrupted_attempt_is_cut_at_run_interrupted() -> None:
    plan = plan_of({"a": []})
    events = [RunStarted(at=T0), started("a", 0), RunInterrupted(at=T0 + 3)]
    drawn = build("r", events, plan, status="interrupted")
    assert [(a.outcome, a.end) for a in drawn.attempts] == [(CUT, T0 + 3)]


def test_a_live_run_has_running_attempts_and_a_live_session() -> None:
    plan = plan_of({"a": [], "b": []})
    events = [RunStarted(at=T0), started("a", 0), started("b", 1), succeeded("b", 2)]
    drawn = build("r", events, plan, status="running", live=True)
    first = drawn.attempts[0]
    assert (first.task_id, first.outcome, first.end) == ("a", RUNNING, T0 + 2)
    assert drawn.sessions[0].ended == LIVE
    dead = build("r", events, plan, status="interrupted", live=False)
    assert dead.attempts[0].outcome == CUT
    assert dead.sessions[0].ended == DIED


def test_the_critical_path_follows_the_dependency_that_finished_last() -> None:
    plan = plan_of({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "x": []})
    events = [
        RunStarted(at=T0),
        started("a", 0),
        started("x", 0),
        succeeded("a", 1),
        started("b", 1),
        started("c", 1),
        succeeded("b", 2),
        succeeded("c", 5),
        started("d", 5),
        succeeded("x", 5.5),
        succeeded("d", 6),
        RunFinished(at=T0 + 6, status="succeeded"),
    ]
    drawn = build("r", events, plan, status="succeeded")
    assert drawn.critical == ["a", "c", "d"]
    assert {a.task_id for a in drawn.attempts if a.critical} == {"a", "c", "d"}


def test_the_critical_path_crosses_a_resume() -> None:
    plan, events = history()
    drawn = build("r1", events, plan, status="failed")
    # f finished last; of its deps, e (resumed) finished after b.
    assert drawn.critical == ["a", "e", "f"]


def test_running_counts_attempts_and_a_handed_over_slot_is_not_two() -> None:
    plan = plan_of({"a": [], "b": [], "c": []})
    events = [
        RunStarted(at=T0),
        started("a", 0),
        started("b", 0),
        succeeded("a", 1),
        started("c", 1),
        succeeded("b", 2),
        succeeded("c", 3),
        RunFinished(at=T0 + 3, status="succeeded"),
    ]
    drawn = build("r", events, plan, status="succeeded")
    assert drawn.running == [[(T0, 2), (T0 + 1, 2), (T0 + 2, 1), (T0 + 3, 0)]]
    assert drawn.peak == 2


def test_many_tasks_are_packed_into_concurrency_slots() -> None:
    count, width = 1000, 10
    plan = plan_of({f"t{i}": [] for i in range(count)}, max_concurrency=width)
    events: list[Event] = [RunStarted(at=T0)]
    for i in range(count):  # `width` at a time, staggered
        wave, lane = divmod(i, width)
        events.append(started(f"t{i}", wave + lane * 0.01))
        events.append(succeeded(f"t{i}", wave + 1 + lane * 0.01 - 0.005))
    events.sort(key=lambda e: e.at)
    drawn = build("r", events, plan, status="succeeded")
    assert drawn.packed
    assert len(drawn.rows) == width == drawn.peak
    by_row: dict[int, list[tuple[float, float]]] = {}
    for a in drawn.attempts:
        by_row.setdefault(a.row, []).append((a.start, a.end))
    for spans in by_row.values():
        spans.sort()
        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))


def test_rows_are_tasks_in_the_order_they_first_did_something() -> None:
    plan, events = history()
    drawn = build("r1", events, plan, status="failed")
    assert not drawn.packed
    assert drawn.rows == ["a", "c", "b", "e", "d", "f"]


# -- the HTML ---------------------------------------------------------------------


def test_the_page_has_one_bar_per_attempt_and_marks_the_resume() -> None:
    plan, events = history()
    page = timeline_html.render(build("r1", events, plan, status="failed"))
    assert bars(page) == 8
    assert len(re.findall(r'class="mark ', page)) == 2
    assert "23 h 59 min later" in page  # the dead time, labelled, not drawn to scale
    assert "interrupted" in page


def test_the_page_needs_nothing_from_the_network() -> None:
    plan, events = history()
    page = timeline_html.render(build("r1", events, plan, status="failed"))
    assert not re.search(r"https?:|//[a-z]|\bsrc=|\bhref=|@import|url\((?!#)", page)
    assert "default-src 'none'" in page


def test_user_data_is_escaped_everywhere() -> None:
    evil = '<img src=x onerror="alert(1)">'
    plan = plan_of({evil: []})
    events = [
        RunStarted(at=T0),
        started(evil, 0),
        TaskFailed(
            task_id=evil, attempt=1, at=T0 + 1, error="</script><script>alert(2)</script> & co"
        ),
        RunFinished(at=T0 + 1, status="failed"),
    ]
    page = timeline_html.render(build("r<1>", events, plan, status="failed"))
    assert "<img" not in page
    assert "alert(2)</script>" not in page
    assert page.count("</script>") == 3  # the page's own three scripts, and no more
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "r&lt;1&gt;" in page


def test_a_skipped_task_is_a_mark_not_a_bar() -> None:
    plan = plan_of({"a": [], "b": ["a"]})
    events = [
        RunStarted(at=T0),
        started("a", 0),
        succeeded("a", 1),
        TaskSkipped(task_id="b", at=T0 + 1, reason="when was false"),
        RunFinished(at=T0 + 1, status="succeeded"),
    ]
    drawn = build("r", events, plan, status="succeeded")
    assert [(m.task_id, m.outcome, m.reason) for m in drawn.marks] == [
        ("b", "skipped", "when was false")
    ]
    assert bars(timeline_html.render(drawn)) == 1


def test_an_empty_run_still_draws() -> None:
    plan = plan_of({"a": []})
    page = timeline_html.render(build("r", [RunStarted(at=T0)], plan, status="interrupted"))
    assert "<svg" in page and bars(page) == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0004, "0 ms"),
        (0.34, "340 ms"),
        (2.5, "2.5 s"),
        (12.34, "12.3 s"),
        (252, "4 min 12 s"),
        (65_000, "18 h 3 min"),
        (190_000, "2 d 4 h"),
    ],
)
def test_durations_read_as_people_say_them(seconds: float, text: str) -> None:
    assert timeline_html.duration(seconds) == text


def test_ten_thousand_tasks_render_one_bar_each() -> None:
    """A large run draws every attempt. Its time is a benchmark's business
    (bench/test_scaling.py), not a unit test's."""
    count = 10_000
    plan = plan_of({f"t{i}": ([f"t{i - 64}"] if i >= 64 else []) for i in range(count)}, 64)
    events: list[Event] = [RunStarted(at=T0)]
    for i in range(count):
        events.append(started(f"t{i}", i * 0.001))
        events.append(succeeded(f"t{i}", i * 0.001 + 0.05))
    events.sort(key=lambda e: e.at)
    events.append(RunFinished(at=T0 + 11, status="succeeded"))
    page = timeline_html.render(build("r", events, plan, status="succeeded"))
    assert bars(page) == count


# -- any history the fold accepts ------------------------------------------------

ACTIONS = ["start", "succeed", "retry", "fail", "cancel", "skip", "upstream", "interrupt", "resume"]


def _candidate(action: str, task: str, at: float) -> Event:
    match action:
        case "start":
            return TaskStarted(task_id=task, attempt=1, at=at)
        case "succeed":
            return TaskSucceeded(task_id=task, attempt=1, at=at)
        case "retry":
            return TaskRetrying(task_id=task, attempt=1, at=at, error="e", delay=0.1)
        case "fail":
            return TaskFailed(task_id=task, attempt=1, at=at, error="e")
        case "cancel":
            return TaskCancelled(task_id=task, attempt=1, at=at)
        case "skip":
            return TaskSkipped(task_id=task, at=at, reason="r")
        case "upstream":
            return TaskUpstreamFailed(task_id=task, at=at)
        case "interrupt":
            return RunInterrupted(at=at)
    return RunResumed(at=at)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(ACTIONS), st.integers(0, 4), st.floats(0, 5)), max_size=80
    ),
    pack=st.booleans(),
    live=st.booleans(),
)
def test_any_legal_history_draws_one_bar_per_start(
    steps: list[tuple[str, int, float]], pack: bool, live: bool
) -> None:
    """Histories made of whatever events the fold accepts, in any order it accepts them."""
    plan = plan_of({f"t{i}": [] for i in range(5)}, max_concurrency=2)
    state = RunState.new(plan.tasks)
    at = T0
    events: list[Event] = [RunStarted(at=at)]
    state.apply(events[0])
    for action, task, wait in steps:
        at += wait
        event = _candidate(action, f"t{task}", at)
        try:
            state.apply(event)
        except IllegalTransition:
            continue
        events.append(event)
    drawn = build("r", events, plan, status="x", live=live, pack_above=0 if pack else 300)
    starts = sum(isinstance(e, TaskStarted) for e in events)
    assert len(drawn.attempts) == starts
    assert all(a.end >= a.start for a in drawn.attempts)
    assert len(drawn.sessions) == 1 + sum(isinstance(e, RunResumed) for e in events)
    assert all(count >= 0 for steps_ in drawn.running for _, count in steps_)
    if pack:
        by_row: dict[int, list[tuple[int, float, float]]] = {}
        for a in drawn.attempts:
            by_row.setdefault(a.row, []).append((a.session, a.start, a.end))
        for spans in by_row.values():
            spans.sort()
            for (s0, _, end), (s1, start, _) in itertools.pairwise(spans):
                assert s0 < s1 or end <= start
    assert bars(timeline_html.render(drawn)) == starts


def test_many_resumes_still_fit_the_width() -> None:
    plan = plan_of({"a": []})
    events: list[Event] = [RunStarted(at=T0)]
    for i in range(60):
        events += [
            started("a", i * 100),
            TaskCancelled(task_id="a", attempt=1, at=T0 + i * 100 + 1),
        ]
        events += [RunInterrupted(at=T0 + i * 100 + 1), RunResumed(at=T0 + i * 100 + 50)]
    drawn = build("r", events, plan, status="interrupted")
    axis = timeline_html.Axis(drawn, 100, 1300)
    edges = [x for segment in axis.segments for x in segment]
    assert edges == sorted(edges) and edges[0] == 100 and edges[-1] <= 1300.001
