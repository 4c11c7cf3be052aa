"""`durable validate` and `durable graph` on the shipped examples, through the real command.

Each command runs from an unrelated working directory, which proves that a
workflow's `imports:` are found next to the workflow file, not next to the caller.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RESEARCH = EXAMPLES / "research" / "workflow.yaml"
BRANCHING = EXAMPLES / "branching" / "workflow.yaml"

SUMMARIES = {
    RESEARCH: "research: 3 tasks, 2 levels, max concurrency 8",
    BRANCHING: "branching: 5 tasks, 4 levels, max concurrency 4",
}
LEVELS = {
    RESEARCH: ["level 0: task_1, task_2", "level 1: task_3"],
    BRANCHING: ["level 0: measure", "level 1: big, small", "level 2: report", "level 3: cleanup"],
}
EDGES = {
    RESEARCH: [("task_1", "task_3"), ("task_2", "task_3")],
    BRANCHING: [
        ("measure", "big"),
        ("measure", "small"),
        ("big", "report"),
        ("small", "report"),
        ("report", "cleanup"),
    ],
}
EXAMPLE_FILES = [pytest.param(RESEARCH, id="research"), pytest.param(BRANCHING, id="branching")]


@pytest.mark.parametrize("workflow", EXAMPLE_FILES)
def test_validate_prints_the_summary(durable, tmp_path: Path, workflow: Path) -> None:
    result = durable("validate", str(workflow), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SUMMARIES[workflow] + "\n"
    assert result.stderr == ""


@pytest.mark.parametrize("workflow", EXAMPLE_FILES)
def test_graph_text_groups_independent_tasks_on_one_level(
    durable, tmp_path: Path, workflow: Path
) -> None:
    result = durable("graph", str(workflow), "--format", "text", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [SUMMARIES[workflow], *LEVELS[workflow]]


@pytest.mark.parametrize("workflow", EXAMPLE_FILES)
def test_graph_dot_has_every_edge(durable, tmp_path: Path, workflow: Path) -> None:
    result = durable("graph", str(workflow), "--format", "dot", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("digraph ") and lines[-1] == "}"
    edges = [line.strip() for line in lines if "->" in line]
    assert sorted(edges) == sorted(f'"{src}" -> "{dst}";' for src, dst in EDGES[workflow])


@pytest.mark.parametrize("workflow", EXAMPLE_FILES)
def test_graph_mermaid_has_every_edge(durable, tmp_path: Path, workflow: Path) -> None:
    result = durable("graph", str(workflow), "--format", "mermaid", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "flowchart LR"
    edges = [line.strip() for line in lines if "-->" in line]
    assert sorted(edges) == sorted(f"{src} --> {dst}" for src, dst in EDGES[workflow])


def test_relative_path_from_the_repository_root(durable) -> None:
    """The documented command line, `durable validate examples/...`, from the repo root."""
    root = EXAMPLES.parent
    result = durable("validate", "examples/research/workflow.yaml", cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SUMMARIES[RESEARCH] + "\n"


def test_a_broken_copy_fails_validation_naming_the_problem(durable, tmp_path: Path) -> None:
    """The examples validate because they are right, not because validate accepts anything."""
    text = RESEARCH.read_text().replace("${task_2.output.value} > 40", "${task_9.output} > 40")
    (tmp_path / "tools.py").write_text((RESEARCH.parent / "tools.py").read_text())
    (tmp_path / "corpus").mkdir()
    broken = tmp_path / "workflow.yaml"
    broken.write_text(text)
    result = durable("validate", str(broken), cwd=tmp_path)
    assert result.returncode == 2
    assert "task 'task_3'" in result.stderr and "unknown task 'task_9'" in result.stderr
