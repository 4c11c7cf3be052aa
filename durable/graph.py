"""The workflow as a DAG: validation, levels, and what dispatch needs, computed once.

Edges come from explicit `dependencies` and from every `${TASK.output}` reference in
a task's `input` or `when`. Validation collects every problem before it reports,
so a user fixes a file in one pass.

Levels (topological generations: a task's level is one more than its deepest
dependency's) come from Kahn's algorithm over plain dicts. networkx is imported only to
name every cycle of a broken file and for `Plan.to_networkx()`: it costs ~0.2 s of
start-up, a third of a one-task run, for nothing a valid run needs. The engine's
dispatch loop works on the plain tuples of `TaskPlan`.
"""

from __future__ import annotations

import graphlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from durable.errors import DurableError, ExpressionError, ReferenceSyntaxError, ValidationError
from durable.expr import Expression
from durable.expr import parse as parse_expression
from durable.fanout import foreach_problem
from durable.refs import ITEM_NAMES, Ref, Template, group_of, instance_id, referenced_tasks
from durable.spec import TRIGGERS, SourceLines, Task, Workflow
from durable.tools import ToolDef, arguments_problem

if TYPE_CHECKING:
    import networkx as nx

ToolResolver = Callable[[str], ToolDef]


class TaskPlan:
    """Everything dispatch needs about one task, with no graph library in sight.

    `template` and `when` may be compiled on first use: a resumed run of 100k tasks
    compiles only the inputs of the tasks it still has to run.
    """

    __slots__ = (
        "_foreach",
        "_template",
        "_when",
        "dependents",
        "deps",
        "group",
        "id",
        "index",
        "item",
        "level",
        "spec",
        "tool",
    )

    def __init__(
        self,
        spec: Task,
        tool: ToolDef | None,
        template: Template | None,
        when: Expression | None,
        deps: tuple[str, ...],
    ) -> None:
        self.spec = spec
        self.id = spec.id
        self.tool = tool
        self._template = template
        self._when = when
        self._foreach: Template | None = None
        self.deps = deps
        self.dependents: list[str] = []
        self.level = 0
        #: For an instance of a `foreach` task: that task, its item and position.
        self.group: str | None = None
        self.item: Any = None
        self.index: int | None = None

    def instance(self, index: int, item: Any) -> TaskPlan:
        """The plan of one instance of this `foreach` task: the same tool, input and
        `when` (compiled once, shared), its own id, item and position, no edges."""
        plan = TaskPlan(self.spec, self.tool, self.template, self.when, ())
        plan.id, plan.group, plan.item, plan.index = (
            instance_id(self.id, index),
            self.id,
            item,
            index,
        )
        return plan

    @property
    def foreach(self) -> Template | None:
        """A `foreach` task's list, compiled; None for any other task."""
        if self._foreach is None and self.spec.foreach is not None and self.group is None:
            self._foreach = Template(self.spec.foreach)
        return self._foreach

    @property
    def template(self) -> Template:
        if self._template is None:
            raw = self.spec.input
            self._template = Template(self.tool.template_source(raw) if self.tool else raw)
        return self._template

    @property
    def when(self) -> Expression | None:
        if self._when is None and self.spec.when is not None:
            self._when = parse_expression(self.spec.when)
        return self._when


class Plan:
    """A workflow's tasks as the scheduler runs them (`build`). A plain class, not a
    dataclass: `dataclasses` and its decorator cost every run's start 0.6 ms."""

    __slots__ = ("_levels", "tasks", "workflow")

    def __init__(
        self,
        workflow: Workflow,
        tasks: dict[str, TaskPlan],
        levels: list[list[str]] | None = None,
    ) -> None:
        self.workflow = workflow
        self.tasks = tasks
        self._levels = levels

    @property
    def levels(self) -> list[list[str]]:
        """Topological generations: the tasks of one level can run together."""
        if self._levels is None:
            self._levels = _levels(self.tasks)
        return self._levels

    def edges(self) -> list[tuple[str, str]]:
        """(dependency, dependent) pairs, explicit and from references."""
        return [(dep, task_id) for task_id, task in self.tasks.items() for dep in task.deps]

    def to_networkx(self) -> nx.DiGraph:
        """The DAG as a networkx graph, for analysis and export."""
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_nodes_from(self.tasks)
        graph.add_edges_from(self.edges())
        return graph

    def ready_tasks(self, finished: Iterable[str]) -> list[str]:
        """Tasks not yet finished whose dependencies have all finished, in file order."""
        done = set(finished)
        return [
            tid
            for tid, t in self.tasks.items()
            if tid not in done and all(d in done for d in t.deps)
        ]

    def summary(self) -> str:
        count = len(self.tasks)
        mapped = sum(task.spec.foreach is not None for task in self.tasks.values())
        return (
            f"{self.workflow.name}: {count} task{'s' if count != 1 else ''}"
            + (f" ({mapped} with foreach)" if mapped else "")
            + f", {len(self.levels)} level{'s' if len(self.levels) != 1 else ''}, "
            f"max concurrency {self.workflow.max_concurrency}"
        )


def build(
    workflow: Workflow,
    resolve_tool: ToolResolver | None,
    source: str = "<workflow>",
    problems: Iterable[str] = (),
    *,
    lines: SourceLines | None = None,
    broken_ids: Iterable[str] = (),
) -> Plan:
    """Validate a workflow and plan it; raise `ValidationError` with every problem found.

    `resolve_tool` maps a tool name to its definition (raising `DurableError` for an
    unknown one); `None` skips tool checks, e.g. to draw the graph of a file whose
    tool modules are not importable here. `problems` found earlier (shape problems,
    imports that failed) are reported together with these. `lines` (a YAML file's)
    puts the line in front of each problem it can place. `broken_ids` are tasks the
    file has but that were left out for shape problems: they count as known, so that
    their dependents are not reported too, but they are not planned.
    """
    problems = list(problems)
    at = _Lines(lines)
    tasks: dict[str, TaskPlan] = {}
    seen = Counter(task.id for task in workflow.tasks)
    known = seen.copy()  # every count is positive: as `seen + Counter(broken_ids)`
    known.update(broken_ids)
    for task_id, count in known.items():
        if count > 1:
            problems.append(
                f"{at.duplicate(workflow, task_id)}task '{task_id}': "
                f"duplicate id (used {count} times)"
            )

    fanned = frozenset(task.id for task in workflow.tasks if task.foreach is not None)
    used_tools: set[str] = set()
    for position, task in enumerate(workflow.tasks):
        if task.id in tasks:
            continue
        tasks[task.id] = _plan_task(
            task, workflow, known, seen, fanned, resolve_tool, problems, at, position
        )
        used_tools.add(task.tool)

    if not workflow.name.isprintable():
        # Line breaks and other control characters would break every table and
        # line that shows the name (`runs`, `status`, the live view).
        problems.append(f"{at.field('name')}field 'name': must be one line of printable text")
    for name, limit in workflow.limits.items():
        if name not in used_tools:
            problems.append(f"{at.field('limits', name)}field 'limits': no task uses tool '{name}'")
        if limit < 1:
            problems.append(
                f"{at.field('limits', name)}field 'limits': tool '{name}': "
                f"limit must be at least 1, got {limit}"
            )

    for plan in tasks.values():
        for dep in plan.deps:
            tasks[dep].dependents.append(plan.id)
    try:
        levels = _levels(tasks)
    except graphlib.CycleError:
        problems.extend(
            at.cycle(workflow, cycle) + _foreach_in_cycle(cycle, tasks) for cycle in _cycles(tasks)
        )
        levels = []

    if problems:
        raise ValidationError(source, problems)
    return Plan(workflow, tasks, levels)


class _Lines:
    """ "line N: " prefixes for problems, when the file is YAML; found only for problems."""

    __slots__ = ("_positions", "lines")

    def __init__(self, lines: SourceLines | None) -> None:
        self.lines = lines
        self._positions: dict[str, list[int]] | None = None

    def _positions_of(self, workflow: Workflow, task_id: str) -> list[int]:
        """Where the tasks with this id are in the file: indexed once, not searched
        per problem (a file may have thousands of duplicates or cycles)."""
        if self._positions is None:
            self._positions = {}
            for i, task in enumerate(workflow.tasks):
                self._positions.setdefault(task.id, []).append(i)
        return self._positions.get(task_id, [])

    @staticmethod
    def _prefix(line: int | None) -> str:
        return f"line {line}: " if line else ""

    def task(self, position: int, field: str | None = None, needle: str | None = None) -> str:
        """For the task at `position`: the line of its field, or of the text holding `needle`."""
        return self._prefix(self.lines.task(position, field, needle)) if self.lines else ""

    def field(self, *parts: str) -> str:
        return self._prefix(self.lines.line(parts)) if self.lines is not None else ""

    def duplicate(self, workflow: Workflow, task_id: str) -> str:
        """The line of the second task with this id."""
        if self.lines is None:
            return ""
        positions = self._positions_of(workflow, task_id)
        return self.task(positions[1], "id") if len(positions) > 1 else ""

    def cycle(self, workflow: Workflow, problem: str) -> str:
        """A cycle, placed at its first task ("cycle: a -> b -> a")."""
        if self.lines is None:
            return problem
        first = problem.removeprefix("cycle: ").split(" -> ", 1)[0]
        return self.task(self._positions_of(workflow, first)[0]) + problem


def build_trusted(
    workflow: Workflow, resolve_tool: ToolResolver, source: str = "<workflow>"
) -> Plan:
    """Plan a workflow that was validated when its run started, as `resume` does.

    Only the tools are resolved (an import may have changed since); references are
    found by a scan rather than parsed, inputs are compiled on first use, and levels
    on first request. This is what lets a resume of 100k tasks dispatch within
    seconds.
    """
    problems: list[str] = []
    tasks: dict[str, TaskPlan] = {}
    for task in workflow.tasks:
        try:
            tool = resolve_tool(task.tool)
        except DurableError as exc:
            problems.append(f"task '{task.id}': field 'tool': {exc.message}")
            continue
        deps = dict.fromkeys(task.dependencies)
        deps.update(dict.fromkeys(referenced_tasks(task.input)))
        if task.when is not None:
            deps.update(dict.fromkeys(referenced_tasks(task.when)))
        if task.foreach is not None:
            deps.update(dict.fromkeys(referenced_tasks(task.foreach)))
        deps.pop(task.id, None)
        tasks[task.id] = TaskPlan(task, tool, None, None, tuple(deps))
    if problems:
        raise ValidationError(source, problems)
    for plan in tasks.values():
        for dep in plan.deps:
            try:
                tasks[dep].dependents.append(plan.id)
            except KeyError:
                # Validated, a reference names a declared task: this name came from
                # a mapping's key (literal text), in a run started before keys that
                # hold `${` were refused. It is no dependency.
                plan.deps = tuple(d for d in plan.deps if d in tasks)
    return Plan(workflow, tasks)


def _levels(tasks: dict[str, TaskPlan]) -> list[list[str]]:
    """Topological generations, each in file order; raises `graphlib.CycleError`.

    Kahn's algorithm over `dependents` (which `build` and `build_trusted` fill in
    first): a task is placed once its last dependency is, one level below the
    deepest. A cycle leaves tasks unplaced, and `_cycles` names it. graphlib's
    `TopologicalSorter` gave the same levels in about three times the time.
    """
    waiting: dict[str, int] = {}
    ready: list[str] = []
    for task_id, task in tasks.items():
        task.level = 0
        if task.deps:
            waiting[task_id] = len(task.deps)
        else:
            ready.append(task_id)
    for done in ready:  # grows as tasks become ready
        task = tasks[done]
        level = task.level + 1
        for task_id in task.dependents:
            other = tasks[task_id]
            if other.level < level:
                other.level = level
            left = waiting[task_id] - 1
            waiting[task_id] = left
            if not left:
                ready.append(task_id)
    if len(ready) < len(tasks):
        raise graphlib.CycleError("the workflow has a cycle")
    levels: list[list[str]] = [
        [] for _ in range(max((t.level for t in tasks.values()), default=-1) + 1)
    ]
    for task_id, task in tasks.items():
        levels[task.level].append(task_id)
    return levels


def _plan_task(
    task: Task,
    workflow: Workflow,
    known: Counter[str],
    planned: Counter[str],
    fanned: frozenset[str],
    resolve_tool: ToolResolver | None,
    problems: list[str],
    lines: _Lines,
    position: int,
) -> TaskPlan:
    """Check one task and plan it. `known` ids exist in the file; only `planned` ones get
    edges; `fanned` ones have a `foreach` (their instances may be referenced)."""
    where = f"task '{task.id}'"
    tool: ToolDef | None = None
    if resolve_tool is not None:
        try:
            tool = resolve_tool(task.tool)
        except DurableError as exc:
            problems.append(
                f"{lines.task(position, 'tool')}{where}: field 'tool': {exc.message}"
                + "".join(f" ({d})" for d in exc.details)
            )

    refused: str | None = None
    try:
        source = tool.template_source(task.input) if tool else task.input
        template = Template(source)
        refused = arguments_problem(tool, source) if tool else None
    except ReferenceSyntaxError as exc:
        problems.append(
            f"{lines.task(position, 'input', '${')}{where}: field 'input': {exc.message}"
        )
        template = Template(None)
    except ValueError as exc:  # a tool's `prepare` refused the input, e.g. shell's unclosed quote
        refused = str(exc)
        template = Template(None)
    if refused is not None:  # the arguments the call would pass, or what `prepare` said
        problems.append(
            f"{lines.task(position, 'input')}{where}: field 'input': "
            f"tool '{task.tool}' cannot take it: {refused}"
        )
    refs = [(ref, "input") for ref in template.refs]

    when = None
    if task.when is not None:
        try:
            when = parse_expression(task.when)
            refs.extend((ref, "when") for ref in when.refs)
        except ExpressionError as exc:
            problems.append(f"{lines.task(position, 'when')}{where}: field 'when': {exc.message}")

    if task.foreach is not None:
        problem = foreach_problem(task.foreach, task.max_items)
        if problem is None:
            try:
                foreach_refs = Template(task.foreach).refs
            except ReferenceSyntaxError as exc:
                problem = exc.message
            else:
                for ref in foreach_refs:  # every one: the others' problems are reported too
                    if ref.kind not in ITEM_NAMES:
                        refs.append((ref, "foreach"))
                    elif problem is None:
                        problem = f"{ref} is each item of the list, not part of it"
        if problem is not None:
            problems.append(f"{lines.task(position, 'foreach')}{where}: field 'foreach': {problem}")
    else:
        if task.max_items is not None:
            problems.append(
                f"{lines.task(position, 'max_items')}{where}: field 'max_items': "
                "only a task with foreach has items"
            )
        for ref, field in refs:
            if ref.kind in ITEM_NAMES:
                problems.append(
                    f"{lines.task(position, field, str(ref))}{where}: field '{field}': "
                    f"reference {ref}: only a task with foreach has an {ref.kind}"
                )
    if task.id == "item":
        problems.append(
            f"{lines.task(position, 'id')}{where}: field 'id': 'item' is reserved "
            "(${item...} is a foreach task's item)"
        )

    if task.cache and tool is not None and not tool.cacheable:
        problems.append(
            f"{lines.task(position, 'cache')}{where}: field 'cache': tool '{task.tool}' "
            "says its output must not be reused (cacheable=False)"
        )

    if task.trigger not in TRIGGERS:
        problems.append(
            f"{lines.task(position, 'trigger')}{where}: field 'trigger': "
            f"unknown trigger '{task.trigger}' (expected {', '.join(TRIGGERS)})"
        )

    deps: dict[str, None] = {}
    for dep in task.dependencies:
        if dep == task.id:
            problems.append(
                f"{lines.task(position, 'dependencies', dep)}{where}: field 'dependencies': "
                "a task cannot depend on itself"
            )
        elif dep not in known:
            problems.append(
                f"{lines.task(position, 'dependencies', dep)}{where}: field 'dependencies': "
                f"unknown task '{dep}'"
            )
        elif dep in planned:
            deps[dep] = None
    for ref, field in refs:
        problem = _check_ref(ref, task, workflow, known, fanned)
        if problem:
            problems.append(f"{lines.task(position, field, str(ref))}{problem}")
        name = group_of(ref.name)
        if ref.kind == "task" and name in planned and name != task.id:
            deps[name] = None
    return TaskPlan(spec=task, tool=tool, template=template, when=when, deps=tuple(deps))


def _check_ref(
    ref: Ref, task: Task, workflow: Workflow, known: Counter[str], fanned: frozenset[str]
) -> str | None:
    where = f"task '{task.id}'"
    if ref.kind == "param" and ref.name not in workflow.params:
        return f"{where}: reference {ref}: unknown param '{ref.name}' (declare it under params)"
    if ref.kind == "task":
        name = group_of(ref.name)
        if name == task.id:
            return f"{where}: reference {ref}: a task cannot reference its own output"
        if name not in known:
            return f"{where}: reference {ref}: unknown task '{name}'"
        if name != ref.name and name not in fanned:
            return f"{where}: reference {ref}: task '{name}' has no foreach, so no instances"
    return None


def _cycles(tasks: dict[str, TaskPlan]) -> list[str]:
    """One cycle per strongly connected component, starting at its first task in file order.

    The component is copied in file order rather than viewed with `graph.subgraph`,
    whose iteration follows set (hash) order and would name a different cycle, or the
    same one from a different start, on each run.
    """
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(tasks)
    graph.add_edges_from((dep, task_id) for task_id, task in tasks.items() for dep in task.deps)
    order = {task_id: number for number, task_id in enumerate(graph)}
    problems = []
    for component in nx.strongly_connected_components(graph):
        if len(component) < 2:
            continue
        sub = nx.DiGraph()
        nodes = sorted(component, key=order.__getitem__)
        sub.add_nodes_from(nodes)
        # In `graph.edges` order, from the component's own nodes: not every edge per component.
        sub.add_edges_from((u, v) for u in nodes for v in graph.succ[u] if v in component)
        path = [edge[0] for edge in nx.find_cycle(sub, source=next(iter(sub)))]
        start = min(range(len(path)), key=lambda i: order[path[i]])
        path = path[start:] + path[:start]
        problems.append("cycle: " + " -> ".join([*path, path[0]]))
    return sorted(problems)


def _shown(task_id: str, task: TaskPlan) -> str:
    """A task as the graph names it: a `foreach` task is one node, marked `[*]`."""
    return f"{task_id}[*]" if task.spec.foreach is not None else task_id


def _foreach_in_cycle(cycle: str, tasks: dict[str, TaskPlan]) -> str:
    """Say so when a cycle goes through a `foreach` list: its source is downstream of it."""
    path = cycle.removeprefix("cycle: ").split(" -> ")
    for dep, task_id in itertools.pairwise(path):
        foreach = tasks[task_id].spec.foreach
        if foreach is not None and dep in referenced_tasks(foreach):
            return (
                f" (task '{task_id}': field 'foreach' takes its list from '{dep}', "
                "which is downstream of it)"
            )
    return ""


def to_dot(plan: Plan) -> str:
    lines = [f'digraph "{plan.workflow.name}" {{', "  rankdir=LR;"]
    for task_id, task in plan.tasks.items():
        if task.spec.foreach is not None:  # one node for all its instances: a stack
            label = f"{task_id}[*]\\n{task.spec.tool} (foreach)"
            lines.append(f'  "{task_id}" [label="{label}", shape=box3d];')
            continue
        lines.append(f'  "{task_id}" [label="{task_id}\\n{task.spec.tool}"];')
    for src, dst in plan.edges():
        lines.append(f'  "{src}" -> "{dst}";')
    lines.append("}")
    return "\n".join(lines)


def to_mermaid(plan: Plan) -> str:
    lines = ["flowchart LR"]
    for task_id, task in plan.tasks.items():
        if task.spec.foreach is not None:  # one node for all its instances
            lines.append(f'  {task_id}[["{task_id}[*]: {task.spec.tool} (foreach)"]]')
            continue
        lines.append(f'  {task_id}["{task_id}: {task.spec.tool}"]')
    for src, dst in plan.edges():
        lines.append(f"  {src} --> {dst}")
    return "\n".join(lines)


def to_text(plan: Plan) -> str:
    lines = [plan.summary()]
    for number, level in enumerate(plan.levels):
        lines.append(f"level {number}: {', '.join(_shown(t, plan.tasks[t]) for t in level)}")
    if any(task.spec.foreach is not None for task in plan.tasks.values()):
        lines.append("[*]: a task with foreach, run once per item of its list")
    return "\n".join(lines)
