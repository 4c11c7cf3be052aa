"""The fast plan used by resume must agree with the validating plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from durable import benchmark, graph, loader, spec, tools
from durable.refs import Template, referenced_tasks

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    "value",
    [
        "${a.output}",
        {"x": "${a.output.k[0]}", "y": ["${ b . output }", "text ${c.output['q']} more"]},
        "${params.p} and ${run.id}",
        "$${a.output} is escaped, ${b.output} is not",
        "$$${a.output} is a dollar then an escape",
        {"n": 3, "s": "no references at all"},
        '${x-y_z.output["key with spaces"]}',
        {"x": 'a "${b.output}": b', "y": "${c.output}", "$${k.output}": 1},
    ],
)
def test_scan_agrees_with_the_parser(value: object) -> None:
    parsed = [ref.name for ref in Template(value).refs if ref.kind == "task"]
    assert referenced_tasks(value) == parsed


@pytest.mark.parametrize("shape", benchmark.SHAPES)
def test_trusted_plan_has_the_same_graph(shape: str) -> None:
    workflow = benchmark.make_workflow(shape, 60)
    checked = graph.build(workflow, tools.REGISTRY.resolve)
    trusted = graph.build_trusted(workflow, tools.REGISTRY.resolve)
    assert {t: set(p.deps) for t, p in trusted.tasks.items()} == {
        t: set(p.deps) for t, p in checked.tasks.items()
    }
    assert trusted.levels == checked.levels
    for task_id, plan in trusted.tasks.items():
        assert plan.template.refs == checked.tasks[task_id].template.refs


@pytest.mark.parametrize("name", ["research", "branching"])
def test_trusted_plan_of_the_examples(name: str) -> None:
    path = EXAMPLES / name / "workflow.yaml"
    checked, folder = loader.plan_file(path)
    trusted = loader.plan_workflow(spec.load(path), folder, trusted=True)
    assert {t: set(p.deps) for t, p in trusted.tasks.items()} == {
        t: set(p.deps) for t, p in checked.tasks.items()
    }
    for task_id, plan in trusted.tasks.items():
        assert (plan.when.source if plan.when else None) == checked.tasks[task_id].spec.when


def test_a_key_in_a_run_journaled_before_keys_were_refused_is_no_dependency() -> None:
    """A run started before keys that hold `${` were refused: its resume plans it
    (a scan sees the key's text), and the key names no dependency."""
    workflow = spec.from_data(
        {
            "name": "old",
            "tasks": [
                {"id": "a", "tool": "echo", "input": {"${zz.output}": "${b.output}"}},
                {"id": "b", "tool": "echo"},
            ],
        }
    )
    trusted = graph.build_trusted(workflow, tools.REGISTRY.resolve)
    assert trusted.tasks["a"].deps == ("b",)
    assert trusted.tasks["b"].dependents == ["a"]
