"""inspection.py and the fold's clocks: durations, interrupted tasks, run id prefixes,
`runs` filters, attempts, and following a run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
import msgspec
import pytest
from hypothesis import given, settings
from test_state import TASK_IDS, legal_histories  # the legal random histories of the fold

from durable import spec as spec_module
from durable.errors import RunNotFound
from durable.events import (
    RunFinished,
    RunInterrupted,
    RunResumed,
    RunStarted,
    TaskCancelled,
    TaskExpanded,
    TaskFailed,
    TaskRetrying,
    TaskStarted,
    TaskSucceeded,
)
from durable.inspection import (
    AmbiguousRunId,
    DamagedRun,
    Follower,
    RunLine,
    RunView,
    attempts_of,
    names_task,
    resolve_run_id,
    select_runs,
    status_document,
)
from durable.journal import Journal, RunRecord
from durable.runlock import RunLock
from durable.spec import Task, Workflow
from durable.state import RunState

IDS = ["a", "b", "c"]


def view(events: list, status: str, observed_at: float = 100.0, ids: list[str] = IDS) -> RunView:
    state = RunState.fold(ids, events)
    record = RunRecord("r", "wf", b"{}", "h", {}, "/", 0.0)
    return RunView(record, state, status, len(events), observed_at)


# -- the fold's clocks ---------------------------------------------------------------


def test_a_task_s_duration_is_its_attempts_not_the_retry_delay():
    state = RunState.fold(
        IDS,
        [
            RunStarted(at=0.0),
            TaskStarted(task_id="a", attempt=1, at=1.0),
            TaskRetrying(task_id="a", attempt=1, at=2.0, error="E", delay=10.0),
            TaskStarted(task_id="a", attempt=2, at=12.0),
            TaskSucceeded(task_id="a", attempt=2, at=15.0),
            RunFinished(at=16.0, status="succeeded"),
        ],
    )
    assert state.tasks["a"].elapsed == 4.0
    assert state.tasks["a"].attempt_started_at is None
    assert state.elapsed == 16.0 and state.session_started_at is None


def test_dead_time_between_a_death_and_the_resume_is_never_counted():
    """The 2 s task that showed 20.82 s after a resume: it shows its attempts only."""
    events = [
        RunStarted(at=0.0),
        TaskStarted(task_id="a", attempt=1, at=1.0),
        TaskStarted(task_id="b", attempt=1, at=1.5),
        TaskSucceeded(task_id="b", attempt=1, at=2.0),  # the dead session's last event
        # the process dies at about 2.5; nobody runs it until 20.0
        RunResumed(at=20.0),
        TaskStarted(task_id="a", attempt=2, at=20.1),
        TaskSucceeded(task_id="a", attempt=2, at=22.1),
        TaskStarted(task_id="c", attempt=1, at=22.2),
        TaskSucceeded(task_id="c", attempt=1, at=22.3),
        RunFinished(at=22.5, status="succeeded"),
    ]
    state = RunState.fold(IDS, events)
    assert state.tasks["a"].elapsed == pytest.approx(1.0 + 2.0)  # 1..2 (died), 20.1..22.1
    assert state.tasks["a"].deaths == 1
    assert state.elapsed == pytest.approx(2.0 + 2.5)  # sessions 0..2 and 20..22.5
    assert view(events, "succeeded").task_duration(state.tasks["a"]) == pytest.approx(3.0)


def test_an_interrupt_stops_the_clocks_of_what_was_running():
    events = [
        RunStarted(at=0.0),
        TaskStarted(task_id="a", attempt=1, at=1.0),
        TaskCancelled(task_id="a", attempt=1, at=3.0),
        RunInterrupted(at=3.5),
        RunResumed(at=50.0),
        TaskStarted(task_id="a", attempt=2, at=51.0),
    ]
    state = RunState.fold(IDS, events)
    assert state.tasks["a"].elapsed == 2.0
    assert state.elapsed == 3.5 and state.session_started_at == 50.0
    # live: the open attempt and session count up to now
    live = view(events, "running", observed_at=53.0)
    assert live.task_duration(state.tasks["a"]) == 4.0
    assert live.duration() == 6.5


@settings(max_examples=100, deadline=None)
@given(legal_histories())
def test_clocks_never_go_backwards_and_every_ended_session_is_closed(history):
    events, _ = history
    state = RunState.fold(TASK_IDS, [])
    for event in events:
        before = {task_id: task.elapsed for task_id, task in state.tasks.items()}
        run_before = state.elapsed
        state.apply(event)
        assert state.elapsed >= run_before
        for task_id, task in state.tasks.items():
            assert task.elapsed >= before[task_id]
            if task.attempt_started_at is not None:
                assert task.state == "running"
        if isinstance(event, RunFinished | RunInterrupted):
            assert state.session_started_at is None
            assert all(task.attempt_started_at is None for task in state.tasks.values())
    # tick = 1 s per event: nothing can have taken longer than the whole history
    assert state.elapsed <= len(events)


# -- what `status` and `runs` show --------------------------------------------------

DEAD = [
    RunStarted(at=0.0),
    TaskStarted(task_id="a", attempt=1, at=1.0),
    TaskStarted(task_id="b", attempt=1, at=1.0),
    TaskRetrying(task_id="b", attempt=1, at=2.0, error="E", delay=5.0),
    TaskStarted(task_id="c", attempt=1, at=1.5),
    TaskFailed(task_id="c", attempt=1, at=4.0, error="boom\nsecond line"),
]


def test_in_flight_tasks_of_an_interrupted_run_are_interrupted():
    dead = view(DEAD, "interrupted", observed_at=1000.0)
    document = status_document(dead)
    states = {task_id: task["state"] for task_id, task in document["tasks"].items()}
    assert states == {"a": "interrupted", "b": "interrupted", "c": "failed"}
    assert dead.counts() == {"interrupted": 2, "failed": 1}
    # a dead session counts up to its last event, not up to now
    assert document["tasks"]["a"]["duration"] == 3.0
    assert document["duration"] == 4.0
    # the same tasks of a live run are running
    live = view(DEAD, "running", observed_at=10.0)
    assert live.task_state(live.state.tasks["a"]) == "running"
    assert status_document(live)["tasks"]["a"]["duration"] == 9.0


def test_status_order_and_the_failed_filter():
    events = [
        RunStarted(at=0.0),
        TaskStarted(task_id="x", attempt=1, at=1.0),
        TaskSucceeded(task_id="x", attempt=1, at=2.0),
        TaskStarted(task_id="y", attempt=1, at=3.0),
        TaskStarted(task_id="z", attempt=1, at=2.5),
        TaskFailed(task_id="z", attempt=1, at=4.0, error="E"),
    ]
    ids = ["p", "x", "y", "z"]
    live = view(events, "running", ids=ids)
    assert [task_id for task_id, _ in live.ordered()] == ["z", "y", "x", "p"]
    assert list(status_document(live, failed_only=True)["tasks"]) == ["z"]
    assert set(status_document(live)["tasks"]["z"]) == {
        "state",
        "attempts",
        "started_at",
        "finished_at",
        "duration",
        "output",
        "error",
    }


def test_attempts_of_a_task_across_a_death():
    events = [
        RunStarted(at=0.0),
        TaskStarted(task_id="a", attempt=1, at=1.0),
        TaskRetrying(task_id="a", attempt=1, at=2.0, error="E", delay=1.0),
        TaskStarted(task_id="a", attempt=2, at=3.0),
        TaskStarted(task_id="b", attempt=1, at=4.0),  # the dead session's last event
        RunResumed(at=40.0),
        TaskStarted(task_id="a", attempt=3, at=41.0),
    ]
    live = view(events, "running", observed_at=43.5)
    found = attempts_of(IDS, events, "a", live)
    assert [(a.attempt, a.started_at, a.duration, a.outcome) for a in found] == [
        (1, 1.0, 1.0, "retrying"),
        (2, 3.0, 1.0, "interrupted"),  # died: counted up to the session's last event
        (3, 41.0, 2.5, "running"),
    ]
    assert found[1].ended_at == 4.0 and found[2].ended_at is None


def test_attempts_of_an_instance_start_with_its_expansion():
    events = [
        RunStarted(at=0.0),
        TaskExpanded(task_id="a", at=2.0, count=2, digest="d"),
        TaskStarted(task_id="a[1]", attempt=1, at=3.0),
        TaskRetrying(task_id="a[1]", attempt=1, at=4.0, error="E", delay=0.0),
        TaskStarted(task_id="a[1]", attempt=2, at=5.0),
        TaskSucceeded(task_id="a[1]", attempt=2, at=7.0, output=1),
    ]
    done = view(events, "running", observed_at=9.0)
    found = attempts_of(IDS, events, "a[1]", done)
    assert [(a.attempt, a.started_at, a.ended_at, a.outcome) for a in found] == [
        (1, 3.0, 4.0, "retrying"),
        (2, 5.0, 7.0, "succeeded"),
    ]
    assert attempts_of(IDS, events, "a[0]", done) == []  # expanded, never started


FANNED = Workflow(
    name="wf",
    tasks=[Task(id="a", tool="echo", foreach=[1, 2]), Task(id="b", tool="echo")],
)


@pytest.mark.parametrize(
    ("task_id", "before", "after"),
    [
        ("a", True, True),
        ("b", True, True),
        ("a[1]", True, True),  # before: it will be, once `a` expands (log --follow)
        ("a[2]", True, False),  # `a` expanded into two instances: there is no third
        ("b[0]", False, False),  # `b` has no foreach
        ("a[x]", False, False),
        ("a[1", False, False),
        ("c", False, False),
    ],
)
def test_names_task_knows_instances_before_and_after_their_expansion(
    task_id: str, before: bool, after: bool
):
    started = [RunStarted(at=0.0)]
    expanded = [*started, TaskExpanded(task_id="a", at=1.0, count=2, digest="d")]
    ids = [task.id for task in FANNED.tasks]
    assert names_task(FANNED, RunState.fold(ids, started), task_id) is before
    assert names_task(FANNED, RunState.fold(ids, expanded), task_id) is after


# -- the journal: prefixes, filters, following ----------------------------------------

WORKFLOW = Workflow(name="wf", tasks=[Task(id="a", tool="echo")])


async def _journal(path: Path, runs: list[tuple[str, str, float]]) -> Journal:
    journal = await Journal.open(path, durability="off")
    journal.start()
    for run_id, workflow, created_at in runs:
        spec = spec_module.encode(msgspec.structs.replace(WORKFLOW, name=workflow))
        record = RunRecord(run_id, workflow, spec, "h", {}, "/", created_at)
        await journal.create_run(record, RunStarted(at=created_at))
    return journal


def test_run_ids_by_unique_prefix(tmp_path: Path):
    async def main() -> None:
        journal = await _journal(
            tmp_path / "j.db", [("ab", "wf", 1.0), ("abc1", "wf", 2.0), ("abd2", "other", 3.0)]
        )
        try:
            assert await resolve_run_id(journal, "ab") == "ab"  # exact wins over prefix
            assert await resolve_run_id(journal, "abc") == "abc1"
            with pytest.raises(AmbiguousRunId) as ambiguous:
                await resolve_run_id(journal, "a")
            assert ambiguous.value.candidates == ["ab", "abc1", "abd2"]
            assert ambiguous.value.exit_code == 2
            assert any("abd2  other" in line for line in ambiguous.value.details)
            for missing in ("zz", "", "abc1x"):
                with pytest.raises(RunNotFound):
                    await resolve_run_id(journal, missing)
        finally:
            await journal.close()

    asyncio.run(main())


def test_select_runs_filters_and_keeps_the_newest(tmp_path: Path):
    async def main() -> None:
        runs = [(f"r{i}", "etl" if i % 2 else "report", float(i)) for i in range(1, 7)]
        journal = await _journal(tmp_path / "j.db", runs)
        try:
            for run_id, _, at in runs[:4]:
                journal.append(run_id, RunFinished(at=at + 0.5, status="succeeded"))
            await journal.flush()

            async def ids(**filters) -> list[str]:
                found = await select_runs(journal, **filters)
                return [item.run_id for item in found]  # type: ignore[union-attr]

            assert await ids() == ["r1", "r2", "r3", "r4", "r5", "r6"]
            assert await ids(limit=2) == ["r5", "r6"]  # the newest, oldest first
            assert await ids(workflow="et*") == ["r1", "r3", "r5"]
            assert await ids(since=3.0, limit=5) == ["r3", "r4", "r5", "r6"]
            assert await ids(statuses={"interrupted"}) == ["r5", "r6"]
            assert await ids(statuses={"succeeded"}, workflow="etl", limit=1) == ["r3"]
            assert await ids(statuses={"failed"}) == []
        finally:
            await journal.close()

    asyncio.run(main())


def test_select_runs_always_lists_a_damaged_run(tmp_path: Path):
    async def main() -> None:
        journal = await _journal(tmp_path / "j.db", [("good", "wf", 1.0), ("bad", "wf", 2.0)])
        try:
            # a task the workflow does not have: its events are not a possible history
            journal.append("bad", TaskStarted(task_id="nope", attempt=1, at=2.1))
            journal.append("good", RunFinished(at=1.5, status="succeeded"))
            await journal.flush()
            found = await select_runs(journal, statuses={"succeeded"})
            assert [type(item) for item in found] == [RunLine, DamagedRun]
            damaged = found[1]
            assert isinstance(damaged, DamagedRun) and "not a possible history" in str(
                damaged.error
            )
        finally:
            await journal.close()

    asyncio.run(main())


def test_follower_ends_with_the_run_or_when_nobody_drives_it(tmp_path: Path):
    async def main() -> None:
        path = tmp_path / "j.db"
        journal = await _journal(path, [("done", "wf", 1.0), ("dead", "wf", 2.0)])
        try:
            journal.append("done", RunFinished(at=1.5, status="failed"))
            await journal.flush()
            follower = Follower(journal, "done", poll=0.01)
            kinds = [type(event).__name__ async for _, event in follower.events()]
            assert kinds == ["RunStarted", "RunFinished"]
            assert (follower.ending, follower.status) == ("finished", "failed")

            follower = Follower(journal, "dead", poll=0.01)
            assert len([event async for event in follower.events()]) == 1
            assert follower.ending == "gone"

            # while the lock is held, it waits, and sees what comes
            with RunLock(path, "live"):
                await _add(journal, "live")
                follower = Follower(journal, "live", poll=0.01)
                seen = []

                async def follow() -> None:
                    async for _, event in follower.events():
                        seen.append(type(event).__name__)

                following = asyncio.create_task(follow())
                await asyncio.sleep(0.1)
                assert not following.done()
                journal.append("live", TaskStarted(task_id="a", attempt=1, at=3.1))
                journal.append("live", RunInterrupted(at=3.2))
                await journal.flush()
                await asyncio.wait_for(following, 5)
            assert seen == ["RunStarted", "TaskStarted", "RunInterrupted"]
            assert follower.ending == "interrupted"
        finally:
            await journal.close()

    asyncio.run(main())


async def _add(journal: Journal, run_id: str) -> None:
    record = RunRecord(run_id, "wf", spec_module.encode(WORKFLOW), "h", {}, "/", 3.0)
    await journal.create_run(record, RunStarted(at=3.0))


# -- command-line parsing --------------------------------------------------------------


def test_since_accepts_ages_and_iso_dates():
    from durable_cli.options import Since

    since = Since()
    import time

    now = time.time()
    assert since.convert("2h", None, None) == pytest.approx(now - 7200, abs=5)
    assert since.convert("3d", None, None) == pytest.approx(now - 3 * 86400, abs=5)
    assert since.convert("2026-11-28T00:00:00+00:00", None, None) == 1795824000.0
    with pytest.raises(click.BadParameter, match="neither an age"):
        since.convert("yesterday", None, None)
