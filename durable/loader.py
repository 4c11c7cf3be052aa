"""From a workflow (a file, or one built in code) to a validated `Plan`.

The one place that does the I/O validation needs: reading the file and importing
the tool modules it names. Everything after that is `graph.build`, which is pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from durable import graph, spec, tools
from durable.allocation import bulk_allocation
from durable.errors import ValidationError
from durable.spec import Workflow


def plan_file(path: str | Path, check_tools: bool = True) -> tuple[graph.Plan, Path]:
    """Load, import and validate a workflow file; return its plan and its folder.

    Shape problems (a wrong type, an unknown key) and graph problems (an unknown
    tool, task or param) are reported together: the tasks that decoded are checked
    as a graph even when others did not.
    """
    with bulk_allocation():
        decoded = spec.read(path)
        base_dir = Path(path).resolve().parent
        if decoded.workflow is None:  # what decoded would only give false alarms
            raise ValidationError(str(path), decoded.problems)
        plan = plan_workflow(
            decoded.workflow,
            base_dir,
            str(path),
            check_tools,
            problems=decoded.problems,
            lines=decoded.lines,
            broken_ids=decoded.broken_ids,
        )
        return plan, base_dir


def plan_workflow(
    workflow: Workflow,
    base_dir: str | Path,
    source: str = "<workflow>",
    check_tools: bool = True,
    trusted: bool = False,
    *,
    problems: Iterable[str] = (),
    lines: spec.SourceLines | None = None,
    broken_ids: Iterable[str] = (),
) -> graph.Plan:
    """Import the workflow's modules and plan it.

    `trusted` is for a workflow validated before (a resume's snapshot): it skips
    the checks and compiles inputs lazily (`graph.build_trusted`). `problems`,
    `lines` and `broken_ids` come from decoding the file (`spec.read`).
    """
    with bulk_allocation():
        if trusted:
            problems = tools.import_modules(workflow.imports, base_dir)
            if problems:
                raise ValidationError(source, problems)
            return graph.build_trusted(workflow, tools.REGISTRY.resolve, source)
        found = list(problems)
        if check_tools:
            found.extend(tools.import_modules(workflow.imports, base_dir))
        else:
            tools.add_search_path(str(Path(base_dir).resolve()))
        resolver = tools.REGISTRY.resolve if check_tools else None
        return graph.build(workflow, resolver, source, found, lines=lines, broken_ids=broken_ids)
