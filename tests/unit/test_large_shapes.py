"""Shapes that once cost time quadratic in their size, and what must still hold of them.

Each of these was a scan of every task (or attempt, or edge) per task: a join
after thousands of tasks in `advance.py`, the critical path of a long chain in
`timeline_html.py`, many duplicate ids or cycles in a YAML file in `graph.py`.
These tests pin the behaviour the faster code must keep; `bench/test_scaling.py`
times them.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest

from durable import graph, spec, timeline_html
from durable.advance import Advance
from durable.benchmark import make_workflow
from durable.errors import ValidationError
from durable.events import (
    Event,
    RunFinished,
    RunResumed,
    RunStarted,
    TaskFailed,
    TaskRetrying,
    TaskStarted,
    TaskSucceeded,
)
from durable.loader import plan_file, plan_workflow
from durable.state import RunState
from durable.timeline import build

T0 = 1_700_000_000.0


# -- advance.py: a join after many tasks ------------------------------------------------


def _joined(count: int, trigger: str) -> tuple[Advance, list[str]]:
    tasks: list[dict[str, Any]] = [
        {"id": f"t{i}", "tool": "echo", "input": i} for i in range(count)
    ]
    tasks.append(
        {"id": "join", "tool": "echo", "dependencies": [t["id"] for t in tasks], "trigger": trigger}
    )
    plan = plan_workflow(spec.from_data({"name": "join", "tasks": tasks}), Path("."))
    state = RunState.fold(plan.tasks, [RunStarted(at=0.0)])
    advance = Advance(plan, state, {}, "r", max_deaths=3)
    ready = advance.start(1.0).ready
    for task_id in ready:
        advance.apply(TaskStarted(task_id=task_id, attempt=1, at=2.0))
    return advance, ready


def _ends(advance: Advance, task_id: str, fail: bool = False) -> list[str]:
    attempt = advance.state.tasks[task_id].attempts
    if fail:
        event: Event = TaskFailed(task_id=task_id, attempt=attempt, at=3.0, error="boom")
    else:
        event = TaskSucceeded(task_id=task_id, attempt=attempt, at=3.0, output=1)
    return advance.step([event], 3.0).ready


def test_a_join_is_ready_once_when_its_last_dependency_ends_in_any_order() -> None:
    advance, ready = _joined(300, "all_success")
    assert len(ready) == 300
    order = list(ready)
    random.Random(7).shuffle(order)
    made_ready = [(task_id, _ends(advance, task_id)) for task_id in order]
    assert made_ready[:-1] == [(task_id, []) for task_id in order[:-1]]
    assert made_ready[-1] == (order[-1], ["join"])


def test_a_join_waits_again_for_a_dependency_a_resume_runs_again() -> None:
    """An `all_done` join sees a failed dependency as finished, until a resume makes
    it pending again: then the join waits for its new end."""
    advance, _ = _joined(5, "all_done")
    assert _ends(advance, "t0", fail=True) == []
    assert _ends(advance, "t1") == []
    advance.apply(RunResumed(at=4.0))
    again = advance.start(5.0).ready  # the failed one and those cut off; the join waits
    assert again == ["t0", "t2", "t3", "t4"]
    for task_id in again:
        attempt = advance.state.tasks[task_id].attempts + 1
        advance.apply(TaskStarted(task_id=task_id, attempt=attempt, at=6.0))
    for task_id in ("t2", "t3", "t4"):
        assert _ends(advance, task_id) == []
    assert _ends(advance, "t0") == ["join"]


# -- timeline_html.py: the critical path's connectors ------------------------------------


def _chain_timeline(count: int) -> Any:
    """A chain in which every third task is retried once: two attempts on the path."""
    workflow = make_workflow("chain", count)  # t0 <- t1 <- ...: each takes the last's output
    plan = graph.build_trusted(workflow, lambda _: None)  # type: ignore[arg-type,return-value]
    events: list[Event] = [RunStarted(at=T0)]
    at = T0
    for i in range(count):
        task_id = f"t{i}"
        events.append(TaskStarted(task_id=task_id, attempt=1, at=at))
        attempt = 1
        if i % 3 == 1:
            events.append(TaskRetrying(task_id=task_id, attempt=1, at=at + 1, error="x", delay=1))
            at, attempt = at + 2, 2
            events.append(TaskStarted(task_id=task_id, attempt=2, at=at))
        at += 1
        events.append(TaskSucceeded(task_id=task_id, attempt=attempt, at=at))
    events.append(RunFinished(at=at, status="succeeded"))
    return build("r", events, plan, status="succeeded")


def _connectors(page: str) -> list[tuple[str, str]]:
    """Each critical-path connector's start and end x (`M x0,y0 H.. V.. H x1`)."""
    group = re.search(r'<g class="critpath">(.*?)</g>', page, re.S)
    assert group is not None
    return re.findall(r'<path d="M([\d.]+),[\d.]+ H[\d.]+ V[\d.]+ H([\d.]+)"/>', group.group(1))


@pytest.mark.parametrize("count", [3, 600])
def test_connectors_go_from_a_tasks_last_attempt_to_the_first_it_released(count: int) -> None:
    """Each task starts as the one before ends, so each connector is vertical: from a
    retried task's second attempt (not its first, a second earlier), and into its
    first (not its second)."""
    drawn = _chain_timeline(count)
    assert drawn.critical == [f"t{i}" for i in range(count)]
    connectors = _connectors(timeline_html.render(drawn))
    assert len(connectors) == count - 1
    assert all(x0 == x1 for x0, x1 in connectors), connectors


# -- graph.py: many duplicates and cycles in a YAML file ----------------------------------


def _yaml(tasks: list[tuple[str, list[str]]]) -> str:
    lines = ["name: many", "tasks:"]
    for task_id, deps in tasks:
        lines += [f"  - id: {task_id}", "    tool: echo"]
        if deps:
            lines.append(f"    dependencies: [{', '.join(deps)}]")
    return "\n".join(lines) + "\n"


def test_every_duplicate_and_every_cycle_names_its_own_line(tmp_path: Path) -> None:
    tasks: list[tuple[str, list[str]]] = []
    for i in range(50):
        tasks.append((f"d{i}", []))
    for i in range(50):
        tasks.append((f"d{i}", []))  # the second of each: where its problem points
    for i in range(0, 100, 2):
        tasks.append((f"c{i}", [f"c{i + 1}"]))
        tasks.append((f"c{i + 1}", [f"c{i}"]))
    path = tmp_path / "many.yaml"
    path.write_text(_yaml(tasks))
    with pytest.raises(ValidationError) as caught:
        plan_file(path)
    line_of = {}  # each task's first and second `- id:` line
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if text.startswith("  - id: "):
            line_of.setdefault(text.removeprefix("  - id: "), []).append(number)
    duplicates = [
        f"line {line_of[f'd{i}'][1]}: task 'd{i}': duplicate id (used 2 times)" for i in range(50)
    ]
    cycles = sorted(
        f"line {line_of[f'c{i}'][0]}: cycle: c{i} -> c{i + 1} -> c{i}" for i in range(0, 100, 2)
    )
    problems = caught.value.problems
    assert problems[:50] == duplicates
    assert sorted(problems[50:]) == cycles
