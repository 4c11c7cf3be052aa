"""state.py: the fold from events to a run's state, and the transitions it forbids."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durable.events import (
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
from durable.state import (
    CANCELLED,
    FAILED,
    KEPT,
    PENDING,
    RETRYING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    TERMINAL,
    UPSTREAM_FAILED,
    IllegalTransition,
    RunState,
    TaskState,
)


def fold(task_ids, events):
    return RunState.fold(task_ids, events)


class TestNormalRuns:
    def test_new_state_is_all_pending(self):
        state = RunState.new(["a", "b"])
        assert state.tasks == {"a": TaskState(), "b": TaskState()}
        assert state.tasks["a"].state == PENDING
        assert (state.status, state.started_at, state.sessions, state.interrupted) == (
            None,
            None,
            0,
            False,
        )

    def test_a_successful_run(self):
        events = [
            RunStarted(at=1.0),
            TaskStarted(task_id="a", attempt=1, at=2.0),
            TaskStarted(task_id="b", attempt=1, at=2.5),
            TaskSucceeded(task_id="a", attempt=1, at=3.0, output={"n": 1}),
            TaskSucceeded(task_id="b", attempt=1, at=3.5, output=[1, 2]),
            TaskStarted(task_id="c", attempt=1, at=4.0),
            TaskSucceeded(task_id="c", attempt=1, at=5.0, output=None),
            RunFinished(at=6.0, status="succeeded"),
        ]
        state = fold(["a", "b", "c"], events)
        assert state.tasks["a"] == TaskState(SUCCEEDED, 1, 2.0, 3.0, {"n": 1}, elapsed=1.0)
        assert state.tasks["b"] == TaskState(SUCCEEDED, 1, 2.5, 3.5, [1, 2], elapsed=1.0)
        assert state.tasks["c"] == TaskState(SUCCEEDED, 1, 4.0, 5.0, None, elapsed=1.0)
        assert (state.started_at, state.finished_at, state.status) == (1.0, 6.0, "succeeded")
        assert state.sessions == 1
        assert state.counts() == {SUCCEEDED: 3}
        assert state.outcome() == SUCCEEDED

    def test_retries_then_failure_then_downstream(self):
        events = [
            RunStarted(at=1.0),
            TaskStarted(task_id="a", attempt=1, at=2.0),
            TaskRetrying(task_id="a", attempt=1, at=3.0, error="E: first", delay=0.5),
            TaskStarted(task_id="a", attempt=2, at=3.5),
            TaskFailed(task_id="a", attempt=2, at=4.0, error="E: second"),
            TaskUpstreamFailed(task_id="b", at=4.1),
            TaskSkipped(task_id="c", at=4.2, reason="condition false: x"),
            RunFinished(at=5.0, status="failed"),
        ]
        state = fold(["a", "b", "c"], events)
        a = state.tasks["a"]
        assert (a.state, a.attempts, a.started_at, a.finished_at, a.error) == (
            FAILED,
            2,
            2.0,
            4.0,
            "E: second",
        )
        assert state.tasks["b"].state == UPSTREAM_FAILED
        assert state.tasks["b"].finished_at == 4.1
        assert (state.tasks["c"].state, state.tasks["c"].reason) == (SKIPPED, "condition false: x")
        assert state.counts() == {FAILED: 1, UPSTREAM_FAILED: 1, SKIPPED: 1}
        assert state.outcome() == FAILED
        assert state.status == "failed"

    def test_retrying_keeps_the_error_until_the_next_start(self):
        state = fold(
            ["a"],
            [
                RunStarted(at=1.0),
                TaskStarted(task_id="a", attempt=1, at=2.0),
                TaskRetrying(task_id="a", attempt=1, at=3.0, error="E: first", delay=0.5),
            ],
        )
        assert (state.tasks["a"].state, state.tasks["a"].error) == (RETRYING, "E: first")
        state.apply(TaskStarted(task_id="a", attempt=2, at=3.5))
        assert (state.tasks["a"].state, state.tasks["a"].error, state.tasks["a"].attempts) == (
            RUNNING,
            None,
            2,
        )
        assert state.tasks["a"].started_at == 2.0  # the first start is kept

    def test_failed_from_pending(self):
        """A `when` that cannot be evaluated fails a task that never started."""
        state = fold(
            ["a"], [RunStarted(at=1.0), TaskFailed(task_id="a", at=2.0, error="when: boom")]
        )
        assert state.tasks["a"].state == FAILED
        assert state.tasks["a"].attempts == 0

    def test_cancelled_while_running_and_while_retrying(self):
        state = fold(
            ["a", "b"],
            [
                RunStarted(at=1.0),
                TaskStarted(task_id="a", attempt=1, at=2.0),
                TaskStarted(task_id="b", attempt=1, at=2.0),
                TaskRetrying(task_id="b", attempt=1, at=3.0, error="E", delay=9.0),
                TaskCancelled(task_id="a", attempt=1, at=4.0),
                TaskCancelled(task_id="b", attempt=1, at=4.0),
                RunInterrupted(at=4.5),
            ],
        )
        assert state.counts() == {CANCELLED: 2}
        assert state.interrupted is True
        assert state.finished_at == 4.5
        assert state.status is None

    def test_fold_does_not_touch_the_clock(self, monkeypatch):
        import time

        monkeypatch.setattr(time, "time", lambda: pytest.fail("the fold read the clock"))
        fold(["a"], [RunStarted(at=1.0), TaskStarted(task_id="a", attempt=1, at=2.0)])


class TestIllegalTransitions:
    BASE = [RunStarted(at=1.0), TaskStarted(task_id="a", attempt=1, at=2.0)]
    SUCCEEDED_A = [*BASE, TaskSucceeded(task_id="a", attempt=1, at=3.0, output=1)]

    def test_succeeded_twice(self):
        state = fold(["a"], self.SUCCEEDED_A)
        with pytest.raises(IllegalTransition, match=r"'a'.*TaskSucceeded.*'succeeded'"):
            state.apply(TaskSucceeded(task_id="a", attempt=1, at=4.0, output=2))
        assert state.tasks["a"].output == 1  # the refused event changed nothing

    def test_started_after_succeeded(self):
        state = fold(["a"], self.SUCCEEDED_A)
        with pytest.raises(IllegalTransition, match="TaskStarted"):
            state.apply(TaskStarted(task_id="a", attempt=2, at=4.0))

    def test_started_by_its_fields_refuses_what_apply_refuses(self):
        """`RunState.started` is the rule the engine calls directly: it refuses the same
        transitions, with the same message, and changes nothing when it does."""
        state = fold(["a"], self.SUCCEEDED_A)
        with pytest.raises(IllegalTransition, match=r"task 'a': TaskStarted is illegal in state"):
            state.started("a", 2, 4.0, None)
        with pytest.raises(IllegalTransition, match=r"^TaskStarted for unknown task 'zz'$"):
            state.started("zz", 1, 4.0, None)
        assert (state.tasks["a"].attempts, state.last_event_at) == (1, 3.0)
        state = fold(["a"], self.BASE[:1])
        state.started("a", 1, 2.0, "f" * 32)
        assert state == fold(
            ["a"],
            [*self.BASE[:1], TaskStarted(task_id="a", attempt=1, at=2.0, fingerprint="f" * 32)],
        )

    def test_unknown_task(self):
        state = fold(["a"], self.BASE)
        with pytest.raises(IllegalTransition, match="unknown task 'zz'"):
            state.apply(TaskStarted(task_id="zz", attempt=1, at=2.0))
        assert set(state.tasks) == {"a"}

    def test_skipped_while_running(self):
        state = fold(["a"], self.BASE)
        with pytest.raises(IllegalTransition, match=r"TaskSkipped.*'running'"):
            state.apply(TaskSkipped(task_id="a", at=3.0, reason="x"))
        assert state.tasks["a"].state == RUNNING

    @pytest.mark.parametrize(
        ("prefix", "event"),
        [
            ([], TaskSucceeded(task_id="a", attempt=1, at=3.0)),  # never started
            ([], TaskRetrying(task_id="a", attempt=1, at=3.0, error="e", delay=1.0)),
            ([], TaskCancelled(task_id="a", attempt=0, at=3.0)),
            (
                [TaskStarted(task_id="a", attempt=1, at=2.0)],
                TaskStarted(task_id="a", attempt=2, at=3.0),
            ),
            (
                [TaskStarted(task_id="a", attempt=1, at=2.0)],
                TaskUpstreamFailed(task_id="a", at=3.0),
            ),
            (
                [TaskSkipped(task_id="a", at=2.0, reason="r")],
                TaskStarted(task_id="a", attempt=1, at=3.0),
            ),
            (
                [TaskFailed(task_id="a", at=2.0, error="e")],
                TaskFailed(task_id="a", at=3.0, error="e"),
            ),
            (
                [TaskUpstreamFailed(task_id="a", at=2.0)],
                TaskSkipped(task_id="a", at=3.0, reason="r"),
            ),
        ],
    )
    def test_other_illegal_task_events(self, prefix, event):
        state = fold(["a"], [RunStarted(at=1.0), *prefix])
        with pytest.raises(IllegalTransition):
            state.apply(event)

    def test_run_started_twice(self):
        with pytest.raises(IllegalTransition, match="twice"):
            fold(["a"], [RunStarted(at=1.0), RunStarted(at=2.0)])

    def test_resumed_before_started(self):
        with pytest.raises(IllegalTransition, match="before run_started"):
            fold(["a"], [RunResumed(at=1.0)])

    def test_not_an_event(self):
        with pytest.raises(IllegalTransition, match="unknown event"):
            RunState.new(["a"]).apply("task_started")  # type: ignore[arg-type]


class TestRunResumed:
    def test_resets_unfinished_work_and_keeps_final_outputs(self):
        ids = ["ok", "skip", "run", "fail", "cancel", "upfail", "retry", "never"]
        state = fold(
            ids,
            [
                RunStarted(at=1.0),
                TaskStarted(task_id="ok", attempt=1, at=2.0),
                TaskSucceeded(task_id="ok", attempt=1, at=3.0, output={"kept": [1, 2]}),
                TaskSkipped(task_id="skip", at=3.0, reason="condition false: no"),
                TaskStarted(task_id="run", attempt=1, at=2.0),
                TaskStarted(task_id="fail", attempt=1, at=2.0),
                TaskFailed(task_id="fail", attempt=1, at=3.0, error="E: bad"),
                TaskStarted(task_id="cancel", attempt=1, at=2.0),
                TaskCancelled(task_id="cancel", attempt=1, at=3.0),
                TaskUpstreamFailed(task_id="upfail", at=3.0),
                TaskStarted(task_id="retry", attempt=1, at=2.0),
                TaskRetrying(task_id="retry", attempt=1, at=3.0, error="E: again", delay=1.0),
                RunFinished(at=4.0, status="failed"),
            ],
        )
        state.apply(RunResumed(at=10.0))

        assert state.tasks["ok"] == TaskState(SUCCEEDED, 1, 2.0, 3.0, {"kept": [1, 2]}, elapsed=1.0)
        assert state.tasks["skip"] == TaskState(
            SKIPPED, 0, None, 3.0, None, None, "condition false: no"
        )
        for task_id in ["run", "fail", "cancel", "upfail", "retry", "never"]:
            task = state.tasks[task_id]
            assert task.state == PENDING, task_id
            assert task.finished_at is None
            assert task.error is None
        # attempts are counted across sessions, so the next attempt numbers go on
        assert state.tasks["fail"].attempts == 1
        assert state.tasks["run"].attempts == 1
        assert (state.status, state.finished_at, state.interrupted, state.sessions) == (
            None,
            None,
            False,
            2,
        )
        assert state.started_at == 1.0

        # a task reset to pending can start again with the next attempt number
        state.apply(TaskStarted(task_id="run", attempt=2, at=11.0))
        assert state.tasks["run"].attempts == 2
        assert state.tasks["run"].started_at == 2.0

    def test_kept_tasks_stay_final_after_resume(self):
        state = fold(
            ["a"],
            [
                RunStarted(at=1.0),
                TaskStarted(task_id="a", attempt=1, at=2.0),
                TaskSucceeded(task_id="a", attempt=1, at=3.0, output=5),
                RunInterrupted(at=4.0),
                RunResumed(at=5.0),
            ],
        )
        assert state.interrupted is False
        with pytest.raises(IllegalTransition):
            state.apply(TaskStarted(task_id="a", attempt=2, at=6.0))

    def test_resume_counts_sessions(self):
        state = fold(["a"], [RunStarted(at=1.0), RunResumed(at=2.0), RunResumed(at=3.0)])
        assert state.sessions == 3


class TestOutcome:
    @pytest.mark.parametrize(
        ("states", "expected"),
        [
            ([], SUCCEEDED),
            ([SUCCEEDED], SUCCEEDED),
            ([SUCCEEDED, SKIPPED], SUCCEEDED),
            ([SKIPPED, SKIPPED], SUCCEEDED),
            ([SUCCEEDED, PENDING], FAILED),
            ([SUCCEEDED, RUNNING], FAILED),
            ([SUCCEEDED, RETRYING], FAILED),
            ([SUCCEEDED, FAILED], FAILED),
            ([SUCCEEDED, UPSTREAM_FAILED], FAILED),
            ([SUCCEEDED, CANCELLED], FAILED),
        ],
    )
    def test_outcome(self, states, expected):
        state = RunState(tasks={f"t{i}": TaskState(state=s) for i, s in enumerate(states)})
        assert state.outcome() == expected

    def test_kept_and_terminal(self):
        assert {SUCCEEDED, SKIPPED} == KEPT
        assert KEPT <= TERMINAL
        assert {RUNNING, RETRYING, PENDING}.isdisjoint(TERMINAL)


# -- property: the fold is a fold ------------------------------------------------

TASK_IDS = ["a", "b", "c", "d"]


def _legal_events(model, tick):
    """Every event the state machine allows next, given a model {task: (state, attempts)}."""
    options = [RunResumed(at=tick), RunFinished(at=tick, status="failed"), RunInterrupted(at=tick)]
    for task_id, (state, attempts) in model.items():
        if state == PENDING:
            options += [
                TaskStarted(task_id=task_id, attempt=attempts + 1, at=tick),
                TaskFailed(task_id=task_id, at=tick, error="when: bad"),
                TaskSkipped(task_id=task_id, at=tick, reason="condition false"),
                TaskUpstreamFailed(task_id=task_id, at=tick),
            ]
        elif state == RUNNING:
            options += [
                TaskSucceeded(
                    task_id=task_id, attempt=attempts, at=tick, output={"t": tick, "l": [task_id]}
                ),
                TaskRetrying(
                    task_id=task_id, attempt=attempts, at=tick, error=f"E{tick}", delay=0.5
                ),
                TaskFailed(task_id=task_id, attempt=attempts, at=tick, error=f"E{tick}"),
                TaskCancelled(task_id=task_id, attempt=attempts, at=tick),
            ]
        elif state == RETRYING:
            options += [
                TaskStarted(task_id=task_id, attempt=attempts + 1, at=tick),
                TaskCancelled(task_id=task_id, attempt=attempts, at=tick),
            ]
    return options


_NEXT = {
    TaskStarted: RUNNING,
    TaskSucceeded: SUCCEEDED,
    TaskRetrying: RETRYING,
    TaskFailed: FAILED,
    TaskSkipped: SKIPPED,
    TaskUpstreamFailed: UPSTREAM_FAILED,
    TaskCancelled: CANCELLED,
}


@st.composite
def legal_histories(draw):
    """A random legal history plus the model's idea of where each task ended."""
    model = {task_id: (PENDING, 0) for task_id in TASK_IDS}
    events = [RunStarted(at=0.0)]
    for tick in range(1, draw(st.integers(0, 40)) + 1):
        event = draw(st.sampled_from(_legal_events(model, float(tick))))
        events.append(event)
        if isinstance(event, RunResumed):
            model = {t: (s if s in KEPT else PENDING, n) for t, (s, n) in model.items()}
        elif type(event) in _NEXT:
            _, attempts = model[event.task_id]
            if isinstance(event, TaskStarted):
                attempts = event.attempt
            model[event.task_id] = (_NEXT[type(event)], attempts)
    return events, model


@settings(max_examples=150, deadline=None)
@given(legal_histories(), st.data())
def test_fold_of_prefix_then_suffix_equals_fold_of_all(history, data):
    events, model = history
    split = data.draw(st.integers(0, len(events)))
    whole = fold(TASK_IDS, events)

    partial = fold(TASK_IDS, events[:split])
    # the state between the two halves may even be stored and read back
    partial = msgspec.msgpack.decode(msgspec.msgpack.encode(partial), type=RunState)
    for event in events[split:]:
        partial.apply(event)

    assert partial == whole
    assert {t: (s.state, s.attempts) for t, s in whole.tasks.items()} == model


@settings(max_examples=75, deadline=None)
@given(legal_histories())
def test_fold_invariants(history):
    events, _ = history
    state = fold(TASK_IDS, events)
    for task_id, task in state.tasks.items():
        if task.state == SUCCEEDED:
            assert task.finished_at is not None and task.started_at is not None
            assert task.output == {"t": task.finished_at, "l": [task_id]}
        if task.state in {PENDING, RUNNING}:
            assert task.finished_at is None
        if task.state in TERMINAL:
            assert task.finished_at is not None
    assert state.sessions == 1 + sum(isinstance(e, RunResumed) for e in events)
    expected = SUCCEEDED if all(t.state in KEPT for t in state.tasks.values()) else FAILED
    assert state.outcome() == expected
