"""Resume an edited workflow: what to keep, what to run again, and why.

`durable resume RUN --reload` compares the edited workflow with the run's own (its
snapshot, or its last amendment) and the run's state. A task is **kept** when it
had succeeded (or been skipped) and nothing it depends on changed:

- its tool is the same tool, and its `when`, `trigger` and `foreach` are unchanged;
- none of its upstream tasks runs again;
- the fingerprint of its work (`fingerprint.py`), recomputed from the new definition
  with its upstream outputs, equals the one its attempt recorded: so an input
  rewritten to the same value keeps it, and a tool whose code changed does not;
- for a `foreach` task, finished or not: its list renders to the same items (the
  expansion's digest), and every instance that succeeded passes the test above.

Everything else runs again, each with its reason; a task the new file no longer has
is removed from the run. The plan is journaled as a `run_amended` event: the run's
history gains the edit, and nothing is rewritten.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec

from durable.errors import DurableError
from durable.fanout import digest
from durable.fingerprint import fingerprint, tool_identity
from durable.graph import Plan, TaskPlan
from durable.refs import Scope, group_of, instance_id
from durable.spec import Task, Workflow
from durable.state import KEPT, SKIPPED, SUCCEEDED, RunState, TaskState


class Amendment(msgspec.Struct, frozen=True):
    """The plan of an edited resume."""

    kept: list[str]
    #: (task id, why it runs), in the new file's order.
    runs: list[tuple[str, str]]
    removed: list[str]
    #: Tasks that had finished and start over (`run_amended`'s `reset`).
    reset: list[str]

    @property
    def changes(self) -> bool:
        return bool(self.reset or self.removed or any(r == NEW for _, r in self.runs))


NEW = "new task"
NOT_DONE = "did not succeed"


class RenamedTask(DurableError):
    """A task that vanished while one with the same work appeared: a rename."""


def plan_amendment(
    state: RunState, old: Workflow, new: Plan, params: dict[str, Any], run_id: str
) -> Amendment:
    """Compare the run's workflow `old` and state with the edited workflow `new`."""
    before = {task.id: task for task in old.tasks}
    after = new.workflow.tasks
    _refuse_renames(before, after)
    outputs = {
        task_id: (task.output if task.state == SUCCEEDED else None)
        for task_id, task in state.tasks.items()
        if task.state in KEPT
    }
    scope = Scope(params, run_id, outputs)
    reasons: dict[str, str] = {}
    for level in new.levels:
        for task_id in level:
            why = _why(
                new.tasks[task_id],
                before.get(task_id),
                state.tasks.get(task_id),
                reasons,
                scope,
                state,
            )
            if why is not None:
                reasons[task_id] = why
    order = [task.id for task in after]
    runs = [(task_id, reasons[task_id]) for task_id in order if task_id in reasons]
    reset = [
        task_id
        for task_id, why in runs
        if why not in (NEW, NOT_DONE)
        and (state.tasks[task_id].state in KEPT or state.tasks[task_id].instances is not None)
    ]
    return Amendment(
        kept=[task_id for task_id in order if task_id not in reasons],
        runs=runs,
        removed=[task_id for task_id in before if task_id not in new.tasks],
        reset=reset,
    )


def _why(
    plan: TaskPlan,
    old: Task | None,
    task: TaskState | None,
    reasons: dict[str, str],
    scope: Scope,
    state: RunState,
) -> str | None:
    """Why the task runs in the amended run, or None if it is kept."""
    if old is None or task is None:
        return NEW
    spec = plan.spec
    changed = _changed(spec, old, plan, reasons)
    if changed is None and task.instances is not None:
        # A foreach task whose instances ran, finished or not: the ones that
        # succeeded are kept only if the list and each one's work are the same, or
        # the group's output would mix the old work with the new.
        changed = _group_changed(plan, old, task, scope, state)
    if task.state not in KEPT:
        return changed or NOT_DONE
    if changed is not None or task.state == SKIPPED or task.instances is not None:
        return changed  # skipped: its `when` and upstreams are unchanged, as it would be
    try:
        value = plan.template.render(scope)
    except (DurableError, IndexError, TypeError, KeyError):
        return "input changed"
    return _work_changed(plan, old, task.fingerprint, value)


def _group_changed(
    plan: TaskPlan, old: Task, task: TaskState, scope: Scope, state: RunState
) -> str | None:
    """Why a foreach task's instances that succeeded cannot be kept: its list renders
    to other items (`fanout.digest`), or the work of one of them changed."""
    try:
        items = plan.foreach.render(scope) if plan.foreach is not None else []
    except (DurableError, IndexError, TypeError, KeyError):
        # Its list cannot be rendered now (an upstream that failed, say): a run that
        # did not finish runs it again as any resume would; a kept one cannot be kept.
        return None if task.state not in KEPT else "input changed"
    if not isinstance(items, list) or (len(items), digest(items)) != (task.instances, task.digest):
        return "its list changed"
    for index, item in enumerate(items):
        instance = state.tasks.get(instance_id(plan.id, index))
        if instance is None or instance.state != SUCCEEDED:
            continue  # nothing of it is kept: it runs (or is skipped) anew
        try:
            value = plan.template.render(scope.bind(item, index))
        except (DurableError, IndexError, TypeError, KeyError):
            return "input changed"
        why = _work_changed(plan, old, instance.fingerprint, value)
        if why is not None:
            return why
    return None


def _work_changed(plan: TaskPlan, old: Task, recorded: str | None, value: Any) -> str | None:
    """Why work that succeeded with fingerprint `recorded` is not the work `value`
    asks of the task's tool now, or None when it is the same."""
    if recorded is None:  # written before fingerprints: only the file can tell
        return "input changed" if plan.spec.input != old.input else None
    assert plan.tool is not None
    if fingerprint(tool_identity(plan.tool), value) == recorded:
        return None
    return "input changed" if plan.spec.input != old.input else "tool code changed"


def _changed(spec: Task, old: Task, plan: TaskPlan, reasons: dict[str, str]) -> str | None:
    """What changed in the task's definition or upstream, if anything."""
    if spec.tool != old.tool:
        return "tool changed"
    # An upstream that merely failed before runs again as on any resume; what
    # depends on it is kept or not as a plain resume would have it.
    upstream = next((dep for dep in plan.deps if reasons.get(dep, NOT_DONE) != NOT_DONE), None)
    if upstream is not None:
        return f"upstream '{upstream}' runs again"
    if spec.when != old.when:
        return "when changed"
    if spec.trigger != old.trigger:
        return "trigger changed"
    if spec.foreach != old.foreach or spec.max_items != old.max_items:
        return "foreach changed"
    return None


def _refuse_renames(before: dict[str, Task], after: list[Task]) -> None:
    """A task that disappears while another with the same work appears was renamed:
    its history cannot follow it to the new id, so say so rather than run it again."""
    new_ids = {task.id for task in after}
    appeared = {_work(task): task.id for task in after if task.id not in before}
    for task_id, task in before.items():
        if task_id not in new_ids and (renamed := appeared.get(_work(task))) is not None:
            raise RenamedTask(
                f"task '{task_id}' was renamed to '{renamed}': a run's tasks keep their ids "
                f"(rename it back to go on with this run, or start a new run)"
            )


def _work(task: Task) -> bytes:
    return msgspec.msgpack.encode((task.tool, task.input, task.when, task.foreach), order="sorted")


RERUN = "asked to run again"


def plan_rerun(state: RunState, plan: Plan, task_ids: list[str], downstream: bool) -> Amendment:
    """`durable rerun`: the named tasks run again (an instance `fetch[2]` alone,
    its task waiting for it), and with `downstream` everything that depends on them."""
    unknown = [task_id for task_id in task_ids if task_id not in state.tasks]
    if unknown:
        raise DurableError(f"the run has no task {', '.join(repr(t) for t in unknown)}")
    reasons = dict.fromkeys(task_ids, RERUN)
    if downstream:
        queue = [group_of(task_id) for task_id in task_ids]
        while queue:
            current = queue.pop()
            for dependent in plan.tasks[current].dependents:
                if dependent not in reasons:
                    reasons[dependent] = f"upstream '{current}' runs again"
                    queue.append(dependent)
    # Each task followed by its instances; a task that starts over expands anew.
    instances: dict[str, list[str]] = {}
    for task_id in state.tasks:
        if (group := group_of(task_id)) != task_id:
            instances.setdefault(group, []).append(task_id)
    order = [t for task_id in plan.tasks for t in (task_id, *instances.get(task_id, ()))]
    for task_id in order:
        group = group_of(task_id)
        if group != task_id and group in reasons and task_id not in reasons:
            reasons[task_id] = f"its task '{group}' runs again"
        elif task_id not in reasons and state.tasks[task_id].state not in KEPT:
            reasons[task_id] = NOT_DONE  # as any resume runs it: the plan says so
    runs = [(task_id, reasons[task_id]) for task_id in order if task_id in reasons]
    return Amendment(
        kept=[task_id for task_id in order if task_id not in reasons],
        runs=runs,
        removed=[],
        reset=[
            task_id
            for task_id, why in runs
            if why != NOT_DONE
            and (group_of(task_id) == task_id or group_of(task_id) not in reasons)
        ],
    )
