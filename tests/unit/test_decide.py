"""decide.py: what becomes of a task whose dependencies have finished, by their states."""

from __future__ import annotations

import os

from hypothesis import example, given
from hypothesis import strategies as st

from durable import spec
from durable.decide import MAX_BACKOFF, RUN, Ending, backoff, decide
from durable.events import TaskSkipped, TaskUpstreamFailed
from durable.loader import plan_workflow
from durable.refs import Scope
from durable.state import (
    CANCELLED,
    FAILED,
    PENDING,
    SKIPPED,
    SUCCEEDED,
    UPSTREAM_FAILED,
    RunState,
)

FINISHED = (SUCCEEDED, SKIPPED, FAILED, UPSTREAM_FAILED, CANCELLED)
SCOPE = Scope(params={}, run_id="r", outputs={})


def _expected(trigger: str, states: list[str], deps: list[str]) -> str:
    """The rule as the module docstring states it: a failure upstream blocks unless
    `all_done`; then, under `all_success`, the first skipped upstream skips it."""
    if trigger != "all_done":
        if any(s in (FAILED, UPSTREAM_FAILED, CANCELLED) for s in states):
            return "upstream_failed"
        if trigger == "all_success" and SKIPPED in states:
            return f"skipped: upstream '{deps[states.index(SKIPPED)]}' skipped"
    return "run"


@given(
    trigger=st.sampled_from(spec.TRIGGERS),
    states=st.lists(st.sampled_from(FINISHED), min_size=0, max_size=5),
)
@example(trigger="all_success", states=[SUCCEEDED, SKIPPED, SKIPPED])  # the first is named
@example(trigger="all_success", states=[SKIPPED, FAILED])  # a failure outranks a skip
@example(trigger="none_failed", states=[SKIPPED, SKIPPED])
@example(trigger="all_done", states=[FAILED, SKIPPED])
def test_the_verdict_follows_the_dependencies_states(trigger: str, states: list[str]) -> None:
    deps = [f"d{i}" for i in range(len(states))]
    tasks = [{"id": dep, "tool": "echo"} for dep in deps]
    tasks.append({"id": "t", "tool": "echo", "dependencies": deps, "trigger": trigger})
    plan = plan_workflow(spec.from_data({"name": "w", "tasks": tasks}), os.getcwd())
    state = RunState.new(plan.tasks)
    for dep, dep_state in zip(deps, states, strict=True):
        state.tasks[dep].state = dep_state
    assert state.tasks["t"].state == PENDING

    verdict = decide(plan.tasks["t"], state.tasks, SCOPE, 5.0, 3)

    if verdict == RUN:
        got = "run"
    else:
        assert isinstance(verdict, Ending)
        assert not verdict.failure
        if isinstance(verdict.event, TaskUpstreamFailed):
            got = "upstream_failed"
        else:
            assert isinstance(verdict.event, TaskSkipped)
            got = f"skipped: {verdict.event.reason}"
        assert verdict.event.task_id == "t"
        assert verdict.event.at == 5.0
    assert got == _expected(trigger, states, deps)


def test_the_delay_doubles_at_each_retry_up_to_the_cap() -> None:
    assert [backoff(0.5, retry) for retry in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff(1.0, 12) == 2048.0 and backoff(1.0, 13) == MAX_BACKOFF
    assert backoff(2 * MAX_BACKOFF, 5) == 2 * MAX_BACKOFF  # a longer delay is its own cap


@given(
    st.floats(min_value=0, max_value=spec.MAX_SECONDS), st.integers(min_value=1, max_value=10**6)
)
@example(0.0, 1100)  # a delay of 0 retried past 1,024 times overflowed the int-to-float
@example(spec.MAX_SECONDS, 10**6)
def test_no_number_of_retries_overflows(delay: float, retry: int) -> None:
    waited = backoff(delay, retry)
    assert delay <= waited <= max(delay, MAX_BACKOFF)
