"""`foreach`: one task over every item of a list, decided at run time.

A task with `foreach` expands, once its list's sources have committed, into one
*instance* per item: `fetch[0]`, `fetch[1]`... Each is a full task (attempts,
retries, timeout, `when`, output, journal events), whose input and `when` see
`${item}` and `${index}`. The expansion is an event (`task_expanded`, with the
number of items and a digest of them), committed before any instance starts: the
fold recreates the instances from it, so a resume runs the same instances and never
expands twice.

The task itself (the *group*) finishes when every instance has:

- `succeeded` if none failed, with the list of the instances' outputs in item order
  (None for a skipped instance) as its output; an empty list expands to no
  instance and succeeds at once with `[]`;
- `skipped` if there was at least one instance and every one was skipped;
- `failed` if any instance failed (or was cancelled), naming how many and the first.

Dependents then follow their trigger as for any task: `all_success` runs after a
group that succeeded, and is skipped after one that was skipped; `none_failed` runs
after either; `all_done` runs after any, and sees as `${fetch.output}` the list
with None in place of every instance that did not succeed.

Pure: no I/O.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from durable.errors import DurableError
from durable.refs import Scope, instance_id, is_one_reference
from durable.state import CANCELLED, FAILED, SKIPPED, SUCCEEDED, UPSTREAM_FAILED, TaskState

if TYPE_CHECKING:
    from durable.graph import TaskPlan

#: Instances a `foreach` task may expand into unless it sets `max_items`.
DEFAULT_MAX_ITEMS = 10_000

_encode = msgspec.msgpack.Encoder().encode


def foreach_problem(value: Any, max_items: int | None = None) -> str | None:
    """What is wrong with a `foreach` value as written, or None: it must be a list
    (of at most `max_items` items, as at run time), or a string that is exactly one
    reference (to a list)."""
    if isinstance(value, list):
        return items_problem(value, max_items)
    if isinstance(value, str) and is_one_reference(value):
        return None
    if isinstance(value, str):
        return (
            f"expected a list or one reference to a list (like ${{search.output.urls}}), "
            f"got the text {value!r}"
        )
    return f"expected a list or one reference to a list, got {type(value).__name__}"


def items_problem(items: Any, max_items: int | None) -> str | None:
    """What is wrong with the list a `foreach` rendered to (or is, as written), given
    the task's `max_items` (None: `DEFAULT_MAX_ITEMS`)."""
    if not isinstance(items, list):
        return f"expected a list, got {_kind(items)}"
    if max_items is None:
        max_items = DEFAULT_MAX_ITEMS
    if len(items) > max_items:
        return (
            f"{len(items)} items, more than max_items ({max_items}); "
            "raise max_items on the task to allow more"
        )
    return None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def digest(items: list[Any]) -> str:
    """A fingerprint of the items, journaled with the expansion: a resume that
    renders a different list (it should never) fails the task instead of running
    instances for items that were never expanded."""
    return f"{zlib.crc32(_encode(items)):08x}"


def instances(task_id: str, count: int) -> list[str]:
    return [instance_id(task_id, index) for index in range(count)]


def group_output(tasks: Mapping[str, TaskState], task_id: str, count: int) -> list[Any]:
    """The group's output: each instance's output in item order, None where it did
    not succeed."""
    found = []
    for instance in instances(task_id, count):
        task = tasks[instance]
        found.append(task.output if task.state == SUCCEEDED else None)
    return found


#: Instance states that make the group fail.
_FAILING = (FAILED, UPSTREAM_FAILED, CANCELLED)


def group_outcome(tasks: Mapping[str, TaskState], task_id: str, count: int) -> tuple[str, str]:
    """The group's state once every instance is finished, and the error or reason."""
    states = [tasks[instance].state for instance in instances(task_id, count)]
    failed = [i for i, state in enumerate(states) if state in _FAILING]
    if failed:
        first = instance_id(task_id, failed[0])
        error = (tasks[first].error or tasks[first].state).split("\n", 1)[0]
        return FAILED, f"{len(failed)} of {count} instances failed; first {first}: {error}"
    if states and all(state == SKIPPED for state in states):
        return SKIPPED, f"all {count} instances were skipped"
    return SUCCEEDED, ""


def render_items(plan: TaskPlan, scope: Scope) -> tuple[list[Any] | None, str | None]:
    """A `foreach` task's list rendered from committed outputs (`scope`): the items,
    or what is wrong with them (for its `task_failed`)."""
    assert plan.foreach is not None
    try:
        items = plan.foreach.render(scope)
    except DurableError as exc:
        return None, f"foreach: {exc.message}"
    problem = items_problem(items, plan.spec.max_items)
    return (None, f"foreach: {problem}") if problem else (items, None)
