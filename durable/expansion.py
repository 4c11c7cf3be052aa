"""The engine's part in `foreach` (`fanout.py`): expanding a task into instances,
and ending it when they have all ended.

A mixin of `Engine`, kept apart so that the scheduler reads as a scheduler: it uses
the engine's state, scope, plan and its `_decide`/`_finish`/`emit`. The rules
themselves (what a group's outcome and output are) are pure, in `fanout.py`.

- `_expand` renders the list from committed outputs and journals `task_expanded`;
  the instances are decided only once that event is committed, so a resume finds
  exactly them and never expands the task again.
- `_reexpand` takes up, in a later session, a task expanded in an earlier one: the
  same list (checked against the journaled count and digest), its unfinished
  instances decided again.
- `_complete_group` ends the task once its last instance has ended.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from durable.events import TaskExpanded, TaskFailed, TaskSkipped, TaskSucceeded
from durable.fanout import digest, group_outcome, group_output, render_items
from durable.graph import TaskPlan
from durable.refs import Scope
from durable.state import PENDING, SKIPPED, SUCCEEDED

if TYPE_CHECKING:
    from collections.abc import Callable

    from durable.graph import Plan
    from durable.state import RunState


class Expansion:
    """The `foreach` half of `Engine` (see the module docstring). What it uses of
    the engine is declared here; `Engine` defines it."""

    plan: Plan
    state: RunState
    scope: Scope
    fail_fast: bool
    _unfinished: int
    _stopping: str | None
    _group_left: dict[str, int]
    _decide: Callable[[str], None]
    _pump: Callable[[], None]
    _stop: Callable[[str], None]
    _crash: Callable[[BaseException], None]
    _finish: Callable[..., None]
    emit: Callable[..., asyncio.Future[None]]

    def _scope(self, plan: TaskPlan) -> Scope:
        return self.scope if plan.index is None else self.scope.bind(plan.item, plan.index)

    def _items(self, plan: TaskPlan) -> tuple[list[Any] | None, str | None]:
        """Render a `foreach` task's list from committed outputs: the items, or what is wrong."""
        return render_items(plan, self.scope)

    def _expand(self, plan: TaskPlan) -> None:
        """Journal the expansion; the instances start once it is committed, so that a
        resume finds exactly them, and never expands the task again."""
        task_id = plan.id
        items, problem = self._items(plan)
        if items is None:
            if self.fail_fast:
                self._stop("fail_fast")
            self._finish(task_id, TaskFailed(task_id=task_id, at=time.time(), error=problem or ""))
            return
        expansion = TaskExpanded(
            task_id=task_id, at=time.time(), count=len(items), digest=digest(items)
        )
        self._unfinished += len(items)
        self.emit(expansion).add_done_callback(partial(self._expanded, plan, items))

    def _expanded(self, plan: TaskPlan, items: list[Any], batch: asyncio.Future[None]) -> None:
        try:
            if batch.exception() is not None:
                self._crash(batch.exception())  # type: ignore[arg-type]
                return
            self._start_instances(plan, items)
            self._pump()
        except BaseException as exc:  # a bug in a callback must not hang the run
            self._crash(exc)

    def _reexpand(self, task_id: str) -> None:
        """Resume a task expanded in an earlier session: the same items, from the same
        committed outputs; its instances that did not finish run again."""
        plan = self.plan.tasks[task_id]
        items, problem = self._items(plan)
        task = self.state.tasks[task_id]
        if items is not None and (len(items), digest(items)) != (task.instances, task.digest):
            problem = (
                f"foreach: its list is not the one it was expanded from ({task.instances} "
                f"items); the outputs it came from changed"
            )
        if items is None:
            self._finish(task_id, TaskFailed(task_id=task_id, at=time.time(), error=problem or ""))
            return
        self._start_instances(plan, items)

    def _start_instances(self, plan: TaskPlan, items: list[Any]) -> None:
        tasks, states = self.plan.tasks, self.state.tasks
        left = 0
        for index, item in enumerate(items):
            instance = plan.instance(index, item)
            tasks[instance.id] = instance
            if states[instance.id].state == PENDING:
                left += 1
                if not self._stopping:
                    self._decide(instance.id)
        self._group_left[plan.id] = left
        if not left:
            self._complete_group(plan.id)

    def _instance_done(self, task_id: str) -> None:
        self._group_left[task_id] -= 1
        if not self._group_left[task_id] and not self._stopping:
            self._complete_group(task_id)

    def _complete_group(self, task_id: str) -> None:
        """Every instance finished: the task succeeds with their outputs, or not."""
        count = self.state.tasks[task_id].instances or 0
        outcome, why = group_outcome(self.state.tasks, task_id, count)
        now = time.time()
        if outcome == SUCCEEDED:
            output = group_output(self.state.tasks, task_id, count)
            self._finish(task_id, TaskSucceeded(task_id=task_id, at=now, output=output))
        elif outcome == SKIPPED:
            self._finish(task_id, TaskSkipped(task_id=task_id, at=now, reason=why))
        else:
            self._finish(task_id, TaskFailed(task_id=task_id, at=now, error=why))
