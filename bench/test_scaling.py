"""Shapes whose cost once grew with the square of their size, now linear.

- `Advance` (the fleet's rules) of a join after 20k tasks, each ended in its own
  step: each ending asked again whether every dependency of the join had
  finished, from the first: 17 s here, now 0.3 s.
- `durable timeline` of a 20k-task chain (build and render): the critical path's
  connectors gathered each task's attempts by scanning them all: 9.5 s, now 0.6 s.
- `durable validate` of a YAML file of 16k tasks: 4k two-task cycles, and 4k ids
  each used twice. Each cycle scanned every edge, and each problem every task for
  its line: 12 s, now 0.9 s.

The behaviour each must keep is pinned in tests/unit/test_large_shapes.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from durable import graph, spec, timeline_html
from durable.advance import Advance
from durable.benchmark import make_workflow
from durable.errors import ValidationError
from durable.events import Event, RunFinished, RunStarted, TaskStarted, TaskSucceeded
from durable.loader import plan_file, plan_workflow
from durable.state import RunState
from durable.timeline import build

T0 = 1_700_000_000.0


def test_advance_join(benchmark: Any, kit: Any) -> None:
    """Start a run of `count` tasks and a join, and end them one commit each."""
    count = kit.size(20000, 2000)
    tasks: list[dict[str, Any]] = [
        {"id": f"t{i}", "tool": "echo", "input": i} for i in range(count)
    ]
    tasks.append({"id": "join", "tool": "echo", "dependencies": [t["id"] for t in tasks]})
    workflow = spec.from_data({"name": "join", "tasks": tasks})

    def setup() -> tuple[tuple[Advance], dict[str, Any]]:
        plan = plan_workflow(workflow, ".")
        state = RunState.fold(plan.tasks, [RunStarted(at=0.0)])
        return (Advance(plan, state, {}, "r", max_deaths=3),), {}

    def drive(advance: Advance) -> list[str]:
        ready = advance.start(1.0).ready
        for task_id in ready:
            advance.apply(TaskStarted(task_id=task_id, attempt=1, at=2.0))
        last: list[str] = []
        for task_id in ready:
            ending = TaskSucceeded(task_id=task_id, attempt=1, at=3.0, output=1)
            last = advance.step([ending], 3.0).ready
        return last

    last = benchmark.pedantic(
        drive, setup=setup, rounds=kit.rounds(3), warmup_rounds=kit.warmup(), iterations=1
    )
    assert last == ["join"]
    benchmark.extra_info.update(tasks=count + 1, quick=kit.quick)


def test_timeline_chain(benchmark: Any, kit: Any) -> None:
    """Build and render the timeline of a chain: its whole length is the critical path."""
    count = kit.size(20000, 2000)
    workflow = make_workflow("chain", count)  # t0 <- t1 <- ...: each takes the last's output
    plan = graph.build_trusted(workflow, lambda _: None)  # type: ignore[arg-type,return-value]
    events: list[Event] = [RunStarted(at=T0)]
    for i in range(count):
        events.append(TaskStarted(task_id=f"t{i}", attempt=1, at=T0 + i))
        events.append(TaskSucceeded(task_id=f"t{i}", attempt=1, at=T0 + i + 1))
    events.append(RunFinished(at=T0 + count, status="succeeded"))

    def draw() -> str:
        return timeline_html.render(build("r", events, plan, status="succeeded"))

    page = benchmark.pedantic(draw, rounds=kit.rounds(3), warmup_rounds=kit.warmup(), iterations=1)
    assert page.count('<rect class="bar succeeded crit" data-i=') == count
    benchmark.extra_info.update(tasks=count, quick=kit.quick)


def test_validate_many_problems(benchmark: Any, kit: Any, tmp_path: Path) -> None:
    """Validate a YAML file whose every task is in a two-task cycle, every id twice."""
    count = kit.size(8000, 800)
    lines = ["name: broken", "tasks:"]
    for i in range(count):
        lines += [f"  - id: t{i // 2}", "    tool: echo", f"  - id: c{i}", "    tool: echo"]
        lines.append(f"    dependencies: [c{i ^ 1}]")
    path = tmp_path / "broken.yaml"
    path.write_text("\n".join(lines) + "\n")

    def validate() -> list[str]:
        with pytest.raises(ValidationError) as caught:
            plan_file(path)
        return caught.value.problems

    problems = benchmark.pedantic(
        validate, rounds=kit.rounds(3), warmup_rounds=kit.warmup(), iterations=1
    )
    assert sum("duplicate id" in problem for problem in problems) == count // 2
    assert sum("cycle: " in problem for problem in problems) == count // 2
    benchmark.extra_info.update(tasks=2 * count, quick=kit.quick)
