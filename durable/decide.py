"""What becomes of a task whose dependencies have all finished: it runs, or it ends here.

One rule set for both schedulers: the in-process `Engine` and the workers that
share a run through PostgreSQL (`advance.py`), so a run ends the same way whoever
drives it. Pure: the caller passes the time and the scope to evaluate `when` in.

In order:
- an upstream that failed (or was cancelled, or upstream-failed) blocks the task
  unless its trigger is `all_done`: `upstream_failed`;
- under `all_success`, an upstream that was skipped skips it;
- a task that was running at `max_deaths` process deaths is failed, not started
  again (a poison task: see `engine.py`);
- a `foreach` task expands (its `when` is each instance's, decided later);
- its `when` decides: false skips it, an error evaluating it fails it;
- otherwise it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from durable.errors import DurableError
from durable.events import Event, TaskFailed, TaskSkipped, TaskUpstreamFailed
from durable.graph import TaskPlan
from durable.refs import Scope
from durable.state import CANCELLED, FAILED, SKIPPED, UPSTREAM_FAILED, TaskState

_BLOCKING = frozenset({FAILED, UPSTREAM_FAILED, CANCELLED})

#: The verdicts that are not an ending event.
RUN = "run"
EXPAND = "expand"


class Ending(NamedTuple):
    """The task ends without running, with `event`. `failure` is true when it is a
    failure of the task's own (its `when` raised), which `--fail-fast` stops on."""

    event: Event
    failure: bool = False


def decide(
    plan: TaskPlan,
    tasks: Mapping[str, TaskState],
    scope: Scope,
    now: float,
    max_deaths: int,
) -> Ending | str:
    """`RUN`, `EXPAND`, or the `Ending` the task gets (see the module docstring).

    `scope` is the one the task's `when` sees (bound to its item for an instance).
    """
    task_id = plan.id
    trigger = plan.spec.trigger
    if trigger != "all_done" and plan.deps:
        # One loop, not a list and two scans: every task that runs passes here.
        skipped = None
        for dep in plan.deps:
            state = tasks[dep].state
            if state in _BLOCKING:
                return Ending(TaskUpstreamFailed(task_id=task_id, at=now))
            if state == SKIPPED and skipped is None:
                skipped = dep
        if skipped is not None and trigger == "all_success":
            reason = f"upstream '{skipped}' skipped"
            return Ending(TaskSkipped(task_id=task_id, at=now, reason=reason))
    deaths = tasks[task_id].deaths
    if deaths >= max_deaths:
        return Ending(TaskFailed(task_id=task_id, at=now, error=poison_error(deaths)))
    # The spec's fields first: most tasks have neither, and `plan.foreach` and
    # `plan.when` compile on first use.
    if plan.spec.foreach is not None and plan.foreach is not None:
        return EXPAND
    if plan.spec.when is not None and plan.when is not None:
        try:
            go = bool(plan.when.evaluate(scope))
        except DurableError as exc:
            error = f"when: {exc.message}"
            return Ending(TaskFailed(task_id=task_id, at=now, error=error), failure=True)
        if not go:
            reason = f"condition false: {plan.when.source}"
            return Ending(TaskSkipped(task_id=task_id, at=now, reason=reason))
    return RUN


def poison_error(deaths: int) -> str:
    """Why a task that took its process down `deaths` times is not started again."""
    return (
        f"the process died {deaths} times while this task ran, so it is not started "
        f"again (a tool that exits or crashes the process?); resume with "
        f"--max-deaths {deaths + 1} to try it once more"
    )


#: The longest wait between two attempts that doubling reaches, unless `retry_delay`
#: itself is longer: the 20th retry of a 1 s delay would wait six days.
MAX_BACKOFF = 3600.0


def backoff(retry_delay: float, retry: int) -> float:
    """Seconds before retry number `retry` (1 for the first): `retry_delay`, doubled
    at each retry up to `MAX_BACKOFF` (or `retry_delay`, if it is longer). Computed
    in floats from a bounded exponent, so that no number of retries overflows."""
    return min(retry_delay * 2.0 ** min(retry - 1, 64), max(retry_delay, MAX_BACKOFF))
