"""graph._levels (Kahn's algorithm) against graphlib's order, and parse_ref's fast path
for dotted references against its general walk."""

from __future__ import annotations

import graphlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durable import graph
from durable.errors import ReferenceSyntaxError, ValidationError
from durable.refs import Scope, Template, parse_ref
from durable.spec import Task, Workflow
from durable.tools import REGISTRY


def reference_levels(deps: dict[str, tuple[str, ...]]) -> list[list[str]]:
    """What `_levels` computed before: graphlib's static order, then each task's depth."""
    level: dict[str, int] = {}
    for task_id in graphlib.TopologicalSorter(deps).static_order():
        level[task_id] = max((level[dep] + 1 for dep in deps[task_id]), default=0)
    levels: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for task_id in deps:
        levels[level[task_id]].append(task_id)
    return levels


def plans(deps: dict[str, tuple[str, ...]]) -> dict[str, graph.TaskPlan]:
    """Task plans with these edges, `dependents` filled in as `build` does."""
    tasks = {
        task_id: graph.TaskPlan(Task(id=task_id, tool="echo"), None, None, None, edges)
        for task_id, edges in deps.items()
    }
    for task_id, edges in deps.items():
        for dep in edges:
            tasks[dep].dependents.append(task_id)
    return tasks


@st.composite
def graphs(draw: st.DrawFn, acyclic: bool) -> dict[str, tuple[str, ...]]:
    count = draw(st.integers(0, 25))
    ids = [f"t{n}" for n in draw(st.permutations(range(count)))]
    deps: dict[str, tuple[str, ...]] = {}
    for position, task_id in enumerate(ids):
        pool = ids[:position] if acyclic else [i for i in ids if i != task_id]
        chosen = draw(st.lists(st.sampled_from(pool), unique=True, max_size=4)) if pool else []
        deps[task_id] = tuple(chosen)
    # file order is not topological order
    order = draw(st.permutations(ids))
    return {task_id: deps[task_id] for task_id in order}


@settings(max_examples=300, deadline=None)
@given(graphs(acyclic=True))
def test_levels_as_graphlib_on_a_dag(deps: dict[str, tuple[str, ...]]) -> None:
    tasks = plans(deps)
    levels = graph._levels(tasks)
    assert levels == reference_levels(deps)
    for number, level in enumerate(levels):
        assert all(tasks[task_id].level == number for task_id in level)
    assert graph._levels(tasks) == levels  # again: the levels are recomputed, not added to


@settings(max_examples=300, deadline=None)
@given(graphs(acyclic=False))
def test_levels_raise_exactly_when_graphlib_does(deps: dict[str, tuple[str, ...]]) -> None:
    try:
        expected = reference_levels(deps)
    except graphlib.CycleError:
        with pytest.raises(graphlib.CycleError):
            graph._levels(plans(deps))
    else:
        assert graph._levels(plans(deps)) == expected


def test_cycle_message_unchanged() -> None:
    wf = Workflow(
        name="w",
        tasks=[
            Task(id="a", tool="echo", dependencies=["c"]),
            Task(id="b", tool="echo", dependencies=["a"]),
            Task(id="c", tool="echo", dependencies=["b"]),
            Task(id="d", tool="echo"),
        ],
    )
    with pytest.raises(ValidationError) as info:
        graph.build(wf, REGISTRY.resolve, "w.yaml")
    assert info.value.problems == ["cycle: a -> b -> c -> a"]


_names = st.sampled_from(
    ["item", "index", "params", "run", "id", "output", "t1", "a-b", "_x", "n", "Output"]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_names, min_size=2, max_size=5))
def test_dotted_fast_path_agrees_with_the_general_walk(parts: list[str]) -> None:
    """`a.b.c` takes the fast path; `a .b .c` (the same reference) the general one."""
    dotted, spaced = ".".join(parts), " .".join(parts)

    def parsed(text: str) -> tuple[str, str, tuple[str | int, ...]] | str:
        try:
            ref = parse_ref(text)
        except ReferenceSyntaxError as exc:
            return "error: " + exc.message.replace(spaced, dotted)
        assert ref.text == text.strip()
        return ref.kind, ref.name, ref.path

    assert parsed(dotted) == parsed(spaced)


@pytest.mark.parametrize(
    "text",
    ["${t1.output.n}", " ${t1.output}", "${params.x}", "${item.a}", "${ run.id }", "$${t1.output}"],
)
def test_whole_reference_renders_as_before(text: str) -> None:
    scope = Scope({"x": [1]}, "r1", {"t1": {"n": 2}}, {"a": 3}, 0)
    template = Template(text)
    expected = {
        "${t1.output.n}": 2,
        " ${t1.output}": ' {"n":2}',
        "${params.x}": [1],
        "${item.a}": 3,
        "${ run.id }": "r1",
        "$${t1.output}": "${t1.output}",
    }[text]
    assert template.render(scope) == expected
    assert len(template.refs) == (0 if text.startswith("$$") else 1)
