"""A run moved on by its committed outcomes, without a scheduler process: the fleet's rules.

When workers share a run (`fleet/`), no process owns it. Whoever commits an
outcome also decides, in the same transaction, what that outcome makes of the rest
of the run: the dependents that are now ready, skipped or upstream-failed, a
`foreach` task's expansion and its end, and the run's own end. `Advance` is that
decision, kept pure so that it is the engine's rules (`decide.py`, `fanout.py`)
applied the same way: a worker folds the run's committed events into it (`apply`),
then hands it its own outcomes (`step`) and journals what comes back.

It never reads the clock or the database: the caller passes the time, and gets back
the events to append (already applied here) and the tasks that became ready.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from durable.decide import EXPAND, RUN, Ending, decide
from durable.errors import DurableError
from durable.events import (
    Event,
    RunFinished,
    TaskExpanded,
    TaskFailed,
    TaskReused,
    TaskSkipped,
    TaskSucceeded,
)
from durable.fanout import digest, group_outcome, group_output, render_items
from durable.graph import Plan, TaskPlan
from durable.refs import Scope, instance_id
from durable.state import EXPANDED, FAILED, PENDING, SKIPPED, SUCCEEDED, TERMINAL, RunState


class Steps(NamedTuple):
    """What a step decided: events to append (in order), tasks now ready to run."""

    events: list[Event]
    ready: list[str]


class Advance:
    """One run's plan, fold and scope, as a worker keeps them between transactions."""

    def __init__(
        self,
        plan: Plan,
        state: RunState,
        params: dict[str, Any],
        run_id: str,
        max_deaths: int,
    ) -> None:
        self.plan = plan
        self.state = state
        self.max_deaths = max_deaths
        outputs: dict[str, Any] = {}
        for task_id, task in state.tasks.items():
            if task.state == SUCCEEDED:
                outputs[task_id] = task.output
            elif task.state == SKIPPED:
                outputs[task_id] = None
            elif task.state == FAILED and (count := task.instances):
                # `all_done` dependents of a failed group see what did succeed (`apply`).
                outputs[task_id] = group_output(state.tasks, task_id, count)
        self.scope = Scope(params=params, run_id=run_id, outputs=outputs)
        #: foreach task -> its instances not yet finished
        self._left: dict[str, int] = {}
        self._decided: set[str] = set()
        #: task -> how many of its first dependencies are known to have finished
        #: (`_unblocked`); only a new session or an amendment unfinishes a task.
        self._finished_deps: dict[str, int] = {}
        for task_id, task in state.tasks.items():
            if task.instances is not None and task_id in plan.tasks:
                self._instantiate(plan.tasks[task_id])

    def scope_of(self, plan: TaskPlan) -> Scope:
        return self.scope if plan.index is None else self.scope.bind(plan.item, plan.index)

    # -- folding committed events ------------------------------------------------

    def apply(self, event: Event) -> bool:
        """Fold one event; True if it finished its task (a terminal state)."""
        self.state.apply(event)
        task_id = getattr(event, "task_id", None)
        if task_id is None:  # a resume or an amendment may have unfinished tasks
            self._finished_deps.clear()
            return False
        task = self.state.tasks[task_id]
        if isinstance(event, TaskExpanded):
            self._instantiate(self.plan.tasks[task_id])
            return False
        if task.state not in TERMINAL:
            return False
        if isinstance(event, TaskSucceeded | TaskReused):
            self.scope.outputs[task_id] = event.output  # type: ignore[index]
        elif isinstance(event, TaskSkipped):
            self.scope.outputs[task_id] = None  # type: ignore[index]
        elif isinstance(event, TaskFailed) and (n := task.instances):
            # `all_done` dependents of a failed group see what did succeed.
            self.scope.outputs[task_id] = group_output(self.state.tasks, task_id, n)  # type: ignore[index]
        group = self.plan.tasks[task_id].group
        if group is not None and group in self._left:
            self._left[group] -= 1
        return True

    def _instantiate(self, plan: TaskPlan) -> None:
        """A `foreach` task's instance plans, from its list as its expansion saw it."""
        items, problem = self.items(plan)
        task = self.state.tasks[plan.id]
        if items is None or (len(items), digest(items)) != (task.instances, task.digest):
            raise DurableError(
                f"task '{plan.id}': its foreach list is not the one it was expanded from "
                f"({problem or 'the outputs it came from changed'})"
            )
        tasks, states = self.plan.tasks, self.state.tasks
        left = 0
        for index, item in enumerate(items):
            instance = plan.instance(index, item)
            tasks[instance.id] = instance
            if states[instance.id].state not in TERMINAL:
                left += 1
        self._left[plan.id] = left

    def items(self, plan: TaskPlan) -> tuple[list[Any] | None, str | None]:
        """A `foreach` task's list rendered from committed outputs, or what is wrong."""
        return render_items(plan, self.scope)

    # -- deciding ----------------------------------------------------------------

    def _steps(self) -> Steps:
        # A task decided to run stays `pending` in the fold until it is claimed, so
        # "pending with its dependencies finished" alone would decide it again when
        # a cascade comes back to it: each step remembers what it decided.
        self._decided = set()
        return Steps([], [])

    def start(self, now: float) -> Steps:
        """A session's first decisions: every pending task whose dependencies have
        all finished, and the unfinished instances of expanded tasks."""
        steps = self._steps()
        states = self.state.tasks
        self._finished_deps.clear()  # its opening event may have been folded without `apply`
        for group in self._left:  # a resume made failed instances pending again
            count = states[group].instances or 0
            self._left[group] = sum(
                states[instance_id(group, index)].state not in TERMINAL for index in range(count)
            )
        for task_id, plan in list(self.plan.tasks.items()):
            task = states[task_id]
            if task.state == PENDING and plan.group is None and self._unblocked(plan):
                self._decide(plan, now, steps)
            elif task.state == EXPANDED:
                for index in range(task.instances or 0):
                    instance = self.plan.tasks[instance_id(task_id, index)]
                    if states[instance.id].state == PENDING:
                        self._decide(instance, now, steps)
                if not self._left.get(task_id) and self._expanded(task_id):
                    self._complete_group(task_id, now, steps)
        self._end_if_done(now, steps)
        return steps

    def step(self, outcomes: Iterable[Event], now: float) -> Steps:
        """Apply this worker's outcomes, then decide what they unblocked, transitively."""
        steps = self._steps()
        for event in outcomes:
            self._ended(event, now, steps)
        self._end_if_done(now, steps)
        return steps

    def _ended(self, event: Event, now: float, steps: Steps) -> None:
        if not self.apply(event):
            return
        task_id = event.task_id  # type: ignore[attr-defined]
        plan = self.plan.tasks[task_id]
        group = plan.group
        if group is not None and not self._left.get(group) and self._expanded(group):
            self._complete_group(group, now, steps)
        states = self.state.tasks
        for dependent in plan.dependents:
            if states[dependent].state == PENDING and self._unblocked(self.plan.tasks[dependent]):
                self._decide(self.plan.tasks[dependent], now, steps)

    def _expanded(self, task_id: str) -> bool:
        return self.state.tasks[task_id].state == EXPANDED

    def _unblocked(self, plan: TaskPlan) -> bool:
        """Whether every dependency has finished. Asked again at each one's end, so
        it goes on from the first it last found unfinished: a task after 50,000
        others costs a pass over them in all, not one per ending."""
        states, deps = self.state.tasks, plan.deps
        checked = self._finished_deps.get(plan.id, 0)
        while checked < len(deps) and states[deps[checked]].state in TERMINAL:
            checked += 1
        self._finished_deps[plan.id] = checked
        return checked == len(deps)

    def _decide(self, plan: TaskPlan, now: float, steps: Steps) -> None:
        if plan.id in self._decided:
            return
        self._decided.add(plan.id)
        verdict = decide(plan, self.state.tasks, self.scope_of(plan), now, self.max_deaths)
        if verdict == RUN:
            steps.ready.append(plan.id)
        elif verdict == EXPAND:
            self._expand(plan, now, steps)
        else:
            assert isinstance(verdict, Ending)
            self._emit(verdict.event, now, steps)

    def _emit(self, event: Event, now: float, steps: Steps) -> None:
        steps.events.append(event)
        self._ended(event, now, steps)

    def _expand(self, plan: TaskPlan, now: float, steps: Steps) -> None:
        items, problem = self.items(plan)
        if items is None:
            self._emit(TaskFailed(task_id=plan.id, at=now, error=problem or ""), now, steps)
            return
        expansion = TaskExpanded(task_id=plan.id, at=now, count=len(items), digest=digest(items))
        steps.events.append(expansion)
        self.apply(expansion)
        if not items:
            self._complete_group(plan.id, now, steps)
            return
        for index in range(len(items)):
            instance = self.plan.tasks[instance_id(plan.id, index)]
            self._decide(instance, now, steps)

    def _complete_group(self, task_id: str, now: float, steps: Steps) -> None:
        count = self.state.tasks[task_id].instances or 0
        outcome, why = group_outcome(self.state.tasks, task_id, count)
        if outcome == SUCCEEDED:
            output = group_output(self.state.tasks, task_id, count)
            event: Event = TaskSucceeded(task_id=task_id, at=now, output=output)
        elif outcome == SKIPPED:
            event = TaskSkipped(task_id=task_id, at=now, reason=why)
        else:
            event = TaskFailed(task_id=task_id, at=now, error=why)
        self._emit(event, now, steps)

    def unfinished(self) -> int:
        tally = self.state.tally
        return sum(count for state, count in tally.items() if state not in TERMINAL)

    def _end_if_done(self, now: float, steps: Steps) -> None:
        live = self.state.status is None and self.state.session_started_at is not None
        if live and not self.unfinished():
            finished = RunFinished(at=now, status=self.state.outcome())
            steps.events.append(finished)
            self.state.apply(finished)
