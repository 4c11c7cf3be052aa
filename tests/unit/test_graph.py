"""graph.py: validation, edges from references, levels and ready sets."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durable import graph
from durable.errors import ValidationError
from durable.refs import Scope
from durable.spec import Task, Workflow
from durable.tools import REGISTRY


def workflow(*tasks: Task, **fields: Any) -> Workflow:
    return Workflow(name="w", tasks=list(tasks), **fields)


def build(wf: Workflow, resolve: Any = REGISTRY.resolve) -> graph.Plan:
    return graph.build(wf, resolve, "w.yaml")


def problems(wf: Workflow, resolve: Any = REGISTRY.resolve) -> list[str]:
    with pytest.raises(ValidationError) as info:
        build(wf, resolve)
    error = info.value
    count = len(error.problems)
    assert error.message == f"w.yaml: {count} problem{'s' if count != 1 else ''} found"
    assert str(error) == "\n".join([error.message, *("  " + p for p in error.problems)])
    return error.problems


# --- random DAGs ---------------------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn, min_tasks: int = 1, max_tasks: int = 12) -> tuple[list[str], set, list]:
    """Task ids in file order, edges (dep, dependent), and the tasks.

    Edges only go from a lower to a higher index, so the graph is acyclic; the file
    order is shuffled so that it says nothing about the dependency order. Each edge
    is written as an explicit dependency, a reference in `input`, or one in `when`.
    """
    count = draw(st.integers(min_tasks, max_tasks))
    ids = [f"t{i}" for i in range(count)]
    edges: dict[tuple[str, str], str] = {}
    for j in range(count):
        for i in range(j):
            kind = draw(st.sampled_from([None, None, "dependency", "input", "when"]))
            if kind is not None:
                edges[(ids[i], ids[j])] = kind
    order = draw(st.permutations(ids))
    return list(order), set(edges), _tasks(order, edges)


def _tasks(order: list[str], edges: dict[tuple[str, str], str]) -> list[Task]:
    tasks = []
    for task_id in order:
        incoming = [(src, kind) for (src, dst), kind in edges.items() if dst == task_id]
        inputs = {src: f"${{{src}.output}}" for src, kind in incoming if kind == "input"}
        conditions = [f"${{{src}.output}} == null" for src, kind in incoming if kind == "when"]
        tasks.append(
            Task(
                id=task_id,
                tool="echo",
                input=inputs or None,
                dependencies=[src for src, kind in incoming if kind == "dependency"],
                when=" or ".join(conditions) or None,
            )
        )
    return tasks


CYCLE = re.compile(r"^cycle: (.+)$")


def cycles_in(found: list[str]) -> list[list[str]]:
    return [CYCLE.match(p).group(1).split(" -> ") for p in found if CYCLE.match(p)]


class TestRandomDags:
    @given(dags())
    @settings(max_examples=200, deadline=None)
    def test_levels(self, dag: tuple[list[str], set, list]) -> None:
        order, edges, tasks = dag
        plan = build(workflow(*tasks))
        assert list(plan.tasks) == order
        level_of = {tid: n for n, level in enumerate(plan.levels) for tid in level}
        # The levels partition the tasks, each level in file order, none empty.
        assert sorted(level_of) == sorted(order)
        assert sum(len(level) for level in plan.levels) == len(order)
        assert all(plan.levels)
        for level in plan.levels:
            assert level == sorted(level, key=order.index)
        # Every edge goes from an earlier level to a later one.
        for src, dst in edges:
            assert level_of[src] < level_of[dst]
            assert src in plan.tasks[dst].deps
            assert dst in plan.tasks[src].dependents
        # A task's level is one past its deepest dependency: the levels are tight.
        for tid, task in plan.tasks.items():
            assert task.level == level_of[tid]
            assert task.level == max((level_of[d] + 1 for d in task.deps), default=0)
        assert {d for t in plan.tasks.values() for d in t.deps} <= set(order)
        assert sum(len(t.deps) for t in plan.tasks.values()) == len(edges)
        assert set(plan.edges()) == edges

    @given(dags())
    @settings(max_examples=200, deadline=None)
    def test_ready_tasks(self, dag: tuple[list[str], set, list]) -> None:
        order, _, tasks = dag
        plan = build(workflow(*tasks))
        assert plan.ready_tasks(set()) == plan.levels[0]
        # Finishing every level before k makes exactly level k ready.
        finished: set[str] = set()
        for level in plan.levels:
            assert plan.ready_tasks(finished) == level
            finished |= set(level)
        assert plan.ready_tasks(finished) == []
        # With all but one finished, that one is ready and nothing else.
        for task_id in order:
            assert plan.ready_tasks(set(order) - {task_id}) == [task_id]

    @given(dags(min_tasks=2), st.data())
    @settings(max_examples=200, deadline=None)
    def test_back_edge_is_a_named_cycle(self, dag: tuple[list[str], set, list], data: Any) -> None:
        order, edges, _ = dag
        ids = sorted(order, key=lambda t: int(t[1:]))
        # Force a path through some tasks, then close it with one back edge.
        path = data.draw(
            st.lists(st.sampled_from(ids), min_size=2, unique=True).map(
                lambda p: sorted(p, key=ids.index)
            )
        )
        kinds = {edge: "dependency" for edge in edges}
        kinds.update({(a, b): "input" for a, b in itertools.pairwise(path)})
        back = (path[-1], path[0])
        kinds[back] = data.draw(st.sampled_from(["dependency", "input", "when"]))
        found = problems(workflow(*_tasks(order, kinds)))
        assert found == [p for p in found if p.startswith("cycle: ")]
        [cycle] = cycles_in(found)
        assert cycle[0] == cycle[-1]
        assert len(set(cycle[:-1])) == len(cycle) - 1
        steps = list(itertools.pairwise(cycle))
        assert all(step in kinds for step in steps)
        # A DAG plus one edge: every cycle runs through that edge.
        assert back in steps
        # It starts at its first task in file order.
        assert cycle[0] == min(cycle, key=order.index)

    @given(
        st.lists(st.sampled_from([f"n{i}" for i in range(10)]), min_size=2, unique=True), st.data()
    )
    @settings(max_examples=100, deadline=None)
    def test_ring_is_named_in_order(self, ring: list[str], data: Any) -> None:
        # Each task depends on the one before it; the first depends on the last.
        kinds = {(a, b): "dependency" for a, b in zip(ring, [*ring[1:], ring[0]], strict=True)}
        order = data.draw(st.permutations(ring))
        [message] = problems(workflow(*_tasks(order, kinds)))
        start = ring.index(min(ring, key=order.index))
        rotated = ring[start:] + ring[:start]
        assert message == "cycle: " + " -> ".join([*rotated, rotated[0]])


# --- edges ---------------------------------------------------------------------------


class TestEdges:
    def test_implicit_deps_from_input_and_when(self) -> None:
        plan = build(
            workflow(
                Task(id="a", tool="echo"),
                Task(id="b", tool="echo"),
                Task(id="c", tool="echo"),
                Task(
                    id="d",
                    tool="echo",
                    dependencies=["c"],
                    input={"x": ["${a.output.items[0]}"], "y": "n=${a.output}"},
                    when="${b.output.n} > 1",
                ),
            )
        )
        assert plan.tasks["d"].deps == ("c", "a", "b")
        assert plan.levels == [["a", "b", "c"], ["d"]]
        assert plan.tasks["a"].dependents == ["d"]
        assert set(plan.edges()) == {("a", "d"), ("b", "d"), ("c", "d")}

    def test_explicit_deps_order_without_data(self) -> None:
        plan = build(
            workflow(
                Task(id="first", tool="echo"),
                Task(id="second", tool="echo", dependencies=["first"]),
                Task(id="third", tool="echo", dependencies=["second", "first"]),
            )
        )
        assert plan.levels == [["first"], ["second"], ["third"]]
        assert plan.tasks["third"].deps == ("second", "first")
        assert plan.tasks["first"].dependents == ["second", "third"]

    def test_dependency_named_twice_is_one_edge(self) -> None:
        plan = build(
            workflow(
                Task(id="a", tool="echo"),
                Task(id="b", tool="echo", dependencies=["a", "a"], input="${a.output} ${a.output}"),
            )
        )
        assert plan.tasks["b"].deps == ("a",)
        assert plan.tasks["a"].dependents == ["b"]

    def test_params_and_run_id_are_not_edges(self) -> None:
        plan = build(
            workflow(
                Task(id="a", tool="echo", input={"q": "${params.q}", "r": "${run.id}"}),
                params={"q": 1},
            )
        )
        assert plan.tasks["a"].deps == ()
        assert [str(r) for r in plan.tasks["a"].template.refs] == ["${params.q}", "${run.id}"]

    def test_shell_string_references_are_edges(self) -> None:
        plan = build(
            workflow(
                Task(id="a", tool="echo"),
                Task(id="sh", tool="shell", input="echo ${a.output} 'two words'"),
            )
        )
        assert plan.tasks["sh"].deps == ("a",)
        scope = Scope(params={}, run_id="r", outputs={"a": "x; rm -rf /"})
        rendered = plan.tasks["sh"].template.render(scope)
        assert rendered == {"command": ["echo", "x; rm -rf /", "two words"]}

    def test_task_plan_fields(self) -> None:
        plan = build(
            workflow(Task(id="a", tool="echo", input={"k": 1}, when="1 < 2")),
        )
        task = plan.tasks["a"]
        assert task.id == "a"
        assert task.tool is not None and task.tool.name == "echo"
        assert task.template.is_constant
        assert task.when is not None and task.when.evaluate() is True
        assert task.level == 0

    def test_tool_checks_can_be_skipped(self) -> None:
        plan = build(workflow(Task(id="a", tool="not_here_anywhere")), resolve=None)
        assert plan.tasks["a"].tool is None

    def test_empty_workflow(self) -> None:
        plan = build(workflow())
        assert plan.levels == []
        assert plan.ready_tasks(set()) == []
        assert plan.summary() == "w: 0 tasks, 0 levels, max concurrency 16"


# --- validation ----------------------------------------------------------------------


class TestValidation:
    def test_several_problems_at_once(self) -> None:
        found = problems(
            workflow(
                Task(id="a", tool="ehco"),
                Task(id="a", tool="echo"),
                Task(id="b", tool="echo", dependencies=["nope", "b"], trigger="always"),
                Task(id="c", tool="echo", input="${ghost.output} ${params.p}", when="len(1)"),
                Task(id="d", tool="echo", input="${d.output}"),
                Task(id="e", tool="echo", input="${e.outputs}"),
                Task(id="x", tool="echo", dependencies=["y"]),
                Task(id="y", tool="echo", dependencies=["x"]),
                limits={"http": 1},
            ),
        )
        assert found == [
            "task 'a': duplicate id (used 2 times)",
            "task 'a': field 'tool': unknown tool 'ehco' (did you mean 'echo'?)",
            "task 'b': field 'trigger': unknown trigger 'always' "
            "(expected all_success, none_failed, all_done)",
            "task 'b': field 'dependencies': unknown task 'nope'",
            "task 'b': field 'dependencies': a task cannot depend on itself",
            "task 'c': field 'when': 'len(1)': function calls are not allowed",
            "task 'c': reference ${ghost.output}: unknown task 'ghost'",
            "task 'c': reference ${params.p}: unknown param 'p' (declare it under params)",
            "task 'd': reference ${d.output}: a task cannot reference its own output",
            "task 'e': field 'input': bad reference '${e.outputs}': "
            "a task reference reads 'e.output', not 'e.outputs'",
            "field 'limits': no task uses tool 'http'",
            "cycle: x -> y -> x",
        ]

    def test_earlier_problems_are_reported_first(self) -> None:
        found = graph.build(workflow(Task(id="a", tool="echo")), None, "w.yaml", [])
        assert found.tasks
        with pytest.raises(ValidationError) as info:
            graph.build(
                workflow(Task(id="a", tool="echo", dependencies=["z"])),
                None,
                "w.yaml",
                ["imports: cannot import 'm'"],
            )
        assert info.value.problems == [
            "imports: cannot import 'm'",
            "task 'a': field 'dependencies': unknown task 'z'",
        ]

    def test_unknown_tool_suggests(self) -> None:
        assert problems(workflow(Task(id="a", tool="shel"))) == [
            "task 'a': field 'tool': unknown tool 'shel' (did you mean 'shell'?)"
        ]

    def test_unknown_tool_without_suggestion(self) -> None:
        assert problems(workflow(Task(id="a", tool="qqqqqqqq"))) == [
            "task 'a': field 'tool': unknown tool 'qqqqqqqq'"
        ]

    def test_self_reference_in_when(self) -> None:
        assert problems(workflow(Task(id="a", tool="echo", when="${a.output} > 1"))) == [
            "task 'a': reference ${a.output}: a task cannot reference its own output"
        ]

    def test_unknown_reference_in_when(self) -> None:
        assert problems(workflow(Task(id="a", tool="echo", when="${b.output} > 1"))) == [
            "task 'a': reference ${b.output}: unknown task 'b'"
        ]

    def test_unclosed_reference(self) -> None:
        assert problems(workflow(Task(id="a", tool="echo", input={"q": "x ${params.q"}))) == [
            "task 'a': field 'input': bad reference in 'x ${params.q': '${' is never closed"
        ]

    def test_unclosed_quote_in_shell_command(self) -> None:
        assert problems(workflow(Task(id="a", tool="shell", input="echo 'hi"))) == [
            "task 'a': field 'input': tool 'shell' cannot take it: No closing quotation"
        ]

    def test_huge_power_in_when(self) -> None:
        [problem] = problems(workflow(Task(id="a", tool="echo", when="9**9**9")))
        assert problem.startswith("task 'a': field 'when': '9**9**9': exponent too large")

    @pytest.mark.parametrize("trigger", ["all_success", "none_failed", "all_done"])
    def test_valid_triggers(self, trigger: str) -> None:
        plan = build(workflow(Task(id="a", tool="echo", trigger=trigger)))
        assert plan.tasks["a"].spec.trigger == trigger

    def test_limits_for_used_tool(self) -> None:
        plan = build(workflow(Task(id="a", tool="echo"), limits={"echo": 1}))
        assert plan.workflow.limits == {"echo": 1}

    def test_three_cycle_named_in_order(self) -> None:
        found = problems(
            workflow(
                Task(id="start", tool="echo"),
                Task(id="x", tool="echo", dependencies=["start", "z"]),
                Task(id="y", tool="echo", input="${x.output}"),
                Task(id="z", tool="echo", when="${y.output}"),
            )
        )
        assert found == ["cycle: x -> y -> z -> x"]

    def test_two_separate_cycles(self) -> None:
        found = problems(
            workflow(
                Task(id="b", tool="echo", dependencies=["a"]),
                Task(id="a", tool="echo", dependencies=["b"]),
                Task(id="d", tool="echo", dependencies=["c"]),
                Task(id="c", tool="echo", dependencies=["d"]),
            )
        )
        assert found == ["cycle: b -> a -> b", "cycle: d -> c -> d"]


# --- rendering -----------------------------------------------------------------------


DIAMOND = workflow(
    Task(id="fetch", tool="echo"),
    Task(id="left", tool="echo", input="${fetch.output}"),
    Task(id="right", tool="echo", dependencies=["fetch"]),
    Task(id="join", tool="shell", input="echo ${left.output}", dependencies=["right"]),
    max_concurrency=4,
)
DIAMOND_EDGES = [("fetch", "left"), ("fetch", "right"), ("right", "join"), ("left", "join")]


class TestRendering:
    def test_text(self) -> None:
        assert graph.to_text(build(DIAMOND)) == (
            "w: 4 tasks, 3 levels, max concurrency 4\n"
            "level 0: fetch\n"
            "level 1: left, right\n"
            "level 2: join"
        )

    def test_dot_has_every_node_and_edge(self) -> None:
        dot = graph.to_dot(build(DIAMOND))
        assert dot.startswith('digraph "w" {')
        assert dot.endswith("}")
        assert '"join" [label="join\\nshell"];' in dot
        for src, dst in DIAMOND_EDGES:
            assert f'  "{src}" -> "{dst}";' in dot
        assert dot.count(" -> ") == len(DIAMOND_EDGES)

    def test_mermaid_has_every_node_and_edge(self) -> None:
        mermaid = graph.to_mermaid(build(DIAMOND))
        assert mermaid.splitlines()[0] == "flowchart LR"
        assert '  fetch["fetch: echo"]' in mermaid
        for src, dst in DIAMOND_EDGES:
            assert f"  {src} --> {dst}" in mermaid
        assert mermaid.count(" --> ") == len(DIAMOND_EDGES)

    @given(dags(max_tasks=8))
    @settings(max_examples=50, deadline=None)
    def test_exports_contain_every_edge(self, dag: tuple[list[str], set, list]) -> None:
        _, edges, tasks = dag
        plan = build(workflow(*tasks))
        dot, mermaid = graph.to_dot(plan), graph.to_mermaid(plan)
        for src, dst in edges:
            assert f'"{src}" -> "{dst}";' in dot
            assert f"{src} --> {dst}" in mermaid
        assert dot.count(" -> ") == mermaid.count(" --> ") == len(edges)

    def test_summary_singular(self) -> None:
        assert build(workflow(Task(id="a", tool="echo"))).summary() == (
            "w: 1 task, 1 level, max concurrency 16"
        )


class TestSourceLinesAndBrokenTasks:
    """`build` places problems in a YAML file, and knows tasks the decoder left out."""

    TEXT = b"""\
name: w
tasks:
  - id: a
    tool: echo
    dependencies: [gone]
  - id: b
    tool: echo
    input: {x: "${ghost.output}", y: "${gone.output}"}
"""

    def test_problems_carry_lines(self) -> None:
        from durable.spec import SourceLines

        wf = workflow(
            Task(id="a", tool="echo", dependencies=["gone"]),
            Task(id="b", tool="echo", input={"x": "${ghost.output}", "y": "${gone.output}"}),
        )
        with pytest.raises(ValidationError) as info:
            graph.build(wf, REGISTRY.resolve, "w.yaml", lines=SourceLines(self.TEXT))
        assert info.value.problems == [
            "line 5: task 'a': field 'dependencies': unknown task 'gone'",
            "line 8: task 'b': reference ${ghost.output}: unknown task 'ghost'",
            "line 8: task 'b': reference ${gone.output}: unknown task 'gone'",
        ]

    def test_broken_ids_are_known_but_not_planned(self) -> None:
        wf = workflow(
            Task(id="a", tool="echo", dependencies=["gone"]),
            Task(id="b", tool="echo", input={"y": "${gone.output}"}),
        )
        plan = graph.build(wf, REGISTRY.resolve, "w.yaml", broken_ids=["gone"])
        assert plan.tasks["a"].deps == () and plan.tasks["b"].deps == ()
        assert plan.levels == [["a", "b"]]

    def test_broken_ids_count_as_duplicates(self) -> None:
        with pytest.raises(ValidationError) as info:
            graph.build(workflow(Task(id="a", tool="echo")), None, "w.yaml", broken_ids=["a"])
        assert info.value.problems == ["task 'a': duplicate id (used 2 times)"]
