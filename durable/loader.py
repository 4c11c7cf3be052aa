"""From a workflow (a file, or one built in code) to a validated `Plan`.

The one place that does the I/O validation needs: reading the file and importing
the tool modules it names. Everything after that is `graph.build`, which is pure.
"""

from __future__ import annotations

from pathlib import Path

from durable import graph, spec, tools
from durable.allocation import bulk_allocation
from durable.errors import ValidationError
from durable.spec import Workflow


def plan_file(path: str | Path, check_tools: bool = True) -> tuple[graph.Plan, Path]:
    """Load, import and validate a workflow file; return its plan and its folder."""
    with bulk_allocation():
        workflow = spec.load(path)
        base_dir = Path(path).resolve().parent
        return plan_workflow(workflow, base_dir, str(path), check_tools), base_dir


def plan_workflow(
    workflow: Workflow,
    base_dir: str | Path,
    source: str = "<workflow>",
    check_tools: bool = True,
    trusted: bool = False,
) -> graph.Plan:
    """Import the workflow's modules and plan it.

    `trusted` is for a workflow validated before (a resume's snapshot): it skips
    the checks and compiles inputs lazily (`graph.build_trusted`).
    """
    with bulk_allocation():
        if trusted:
            problems = tools.import_modules(workflow.imports, base_dir)
            if problems:
                raise ValidationError(source, problems)
            return graph.build_trusted(workflow, tools.REGISTRY.resolve, source)
        problems = tools.import_modules(workflow.imports, base_dir) if check_tools else []
        if not check_tools:
            tools.add_search_path(str(Path(base_dir).resolve()))
        resolver = tools.REGISTRY.resolve if check_tools else None
        return graph.build(workflow, resolver, source, problems)
