"""What `durable run WORKFLOW --dry-run` says: what would run, in which order, how many
at once, and (with `--cache`) which tasks an earlier run would answer.

A dry run must answer from the plan alone (`graph.py`), before anything runs, so
that a user can see the cost of a workflow (its width, its longest chain, what its
limits hold back) without paying it. Hence this module: plan in, a Struct out,
then text or a dict for `--json`; the caller does the I/O and any cache lookup.

Levels are a picture of the order, not the schedule: the engine dispatches a task
as soon as its own dependencies have committed (`engine.py`), so levels overlap in
a real run. A level's "at once" is how many of its tasks could run together were it
alone: at most `max_concurrency`, and at most `limits[tool]` of one tool, the two
counters the engine keeps. It is an upper bound, too, where `when` may skip tasks.

A `foreach` task (`fanout.py`) runs once per item of its list. Over a literal list
the count is known now and counted; over a reference, it is known only when the
list's source has run, so it is shown as "one per item" and its level's "at once"
is the most the limits would allow. In the critical path (the longest chain of
dependencies, in tasks), a `foreach` task is one step: its instances run side by
side.

`cached` maps a task id (a `foreach` task's, for all its instances, or one
instance's, `fetch[2]`) to a short description of what would answer it ("run 3f9a
attempt 1"). Those tasks are shown as from the cache and counted out of the work:
out of the tasks to run, of "at once", and of the critical path.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from durable.fanout import DEFAULT_MAX_ITEMS
from durable.graph import Plan
from durable.refs import group_of, split_instance

#: Lines of `render` stay within this many columns (but for a very long single id).
WIDTH = 100
#: The widest a level's list of ids may get before it is cut ("and N more").
_IDS = 40
#: Cached tasks listed one a line; past this many, the rest are counted.
_CACHED_LINES = 10
#: Past this many levels, the first `_LEVELS - 5` and the last 5 are shown.
_LEVELS = 40


class Level(msgspec.Struct, frozen=True, kw_only=True):
    """One topological generation of the plan."""

    index: int
    #: Its task ids, in file order (a `foreach` task once, by its own id).
    tasks: list[str]
    #: How many tasks the level holds: `len(tasks)`.
    width: int
    #: The tasks it will run that are counted now: one per task, one per item of a
    #: `foreach` over a literal list; the cache's answers left out.
    runs: int
    #: Its `foreach` tasks whose count is known only at run time.
    per_item: list[str]
    #: The ids in `cached` that belong to this level.
    cached: list[str]
    #: How many of its tasks could run at once, were it alone (with `per_item`: at most).
    at_once: int
    #: What holds `at_once` below the work: ["max_concurrency"], or the tools whose
    #: limit does; empty when nothing does.
    bound_by: list[str]


class Foreach(msgspec.Struct, frozen=True, kw_only=True):
    """A `foreach` task: what its list is, and how much of it is known now."""

    id: str
    #: The reference its list comes from; None for a literal list.
    over: str | None
    #: The number of items, known for a literal list only.
    items: int | None
    #: The most items it may expand into (`fanout.DEFAULT_MAX_ITEMS` unless set).
    max_items: int
    #: How many of its instances the cache answers.
    cached: int = 0
    #: The cache answers the whole task: it will not run.
    from_cache: bool = False


class Explanation(msgspec.Struct, frozen=True, kw_only=True):
    """What a run of a plan would do, computed before any of it runs."""

    workflow: str
    #: The concurrency the run would have: the one given, else the workflow's.
    concurrency: int
    #: The workflow's own `max_concurrency`.
    workflow_concurrency: int
    #: The workflow's per-tool `limits`.
    limits: dict[str, int]
    #: How many tasks the workflow has (a `foreach` task counted once).
    tasks: int
    #: The tasks to run that are counted now (as `Level.runs`, over all levels).
    runs: int
    #: The `foreach` tasks to run whose count is known only at run time.
    per_item: list[str]
    levels: list[Level]
    #: The longest chain of dependencies among the tasks to run, first to last.
    critical_path: list[str]
    #: Every `foreach` task, in file order.
    foreach: list[Foreach]
    #: Tasks to run with a `when`: each may be skipped.
    when: list[str]
    #: Tasks to run that a skipped `when` task would skip in turn (`all_success`).
    after_when: list[str]
    #: Tasks to run with retries: id -> how many.
    retries: dict[str, int]
    #: Tasks to run with a timeout: id -> seconds.
    timeouts: dict[str, float]
    #: Task id -> what the cache would answer it with, in plan order.
    cached: dict[str, str]


def explain(
    plan: Plan,
    *,
    max_concurrency: int | None = None,
    cached: Mapping[str, str] | None = None,
) -> Explanation:
    """Explain what a run of `plan` would do; raise `ValueError` for a `max_concurrency`
    below 1 or a `cached` id that is neither a task of the plan nor an instance of one
    of its `foreach` tasks (over a literal list: one of its items)."""
    workflow = plan.workflow
    concurrency = workflow.max_concurrency if max_concurrency is None else max_concurrency
    if concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, got {concurrency}")
    position = {task_id: number for number, task_id in enumerate(plan.tasks)}
    answers = _cached(plan, cached or {}, position)
    whole = {task_id for task_id in answers if task_id in plan.tasks}  # answered entirely
    instances: dict[str, set[int]] = {}
    for task_id in answers:
        instance = None if task_id in plan.tasks else split_instance(task_id)
        if instance is not None:  # an instance's answer (`_cached` checked its id)
            instances.setdefault(instance[0], set()).add(instance[1])

    # Per task: the runs counted now, or None for a `foreach` over a reference.
    runs: dict[str, int | None] = {}
    foreach: list[Foreach] = []
    for task_id, task in plan.tasks.items():
        spec = task.spec
        if spec.foreach is None:
            runs[task_id] = 0 if task_id in whole else 1
            continue
        done = len(instances.get(task_id, ()))
        literal = isinstance(spec.foreach, list)
        count = len(spec.foreach) if literal else None
        if task_id in whole:
            runs[task_id] = 0
        else:
            runs[task_id] = None if count is None else count - done
        foreach.append(
            Foreach(
                id=task_id,
                over=None if literal else str(spec.foreach).strip(),
                items=count,
                max_items=DEFAULT_MAX_ITEMS if spec.max_items is None else spec.max_items,
                cached=done,
                from_cache=task_id in whole,
            )
        )

    answered: list[list[str]] = [[] for _ in plan.levels]
    for task_id in answers:
        answered[plan.tasks[group_of(task_id)].level].append(task_id)
    levels = []
    for number, level in enumerate(plan.levels):
        counts: dict[str, float] = {}
        for task_id in level:
            tool = plan.tasks[task_id].spec.tool
            count = runs[task_id]
            counts[tool] = counts.get(tool, 0) + (float("inf") if count is None else count)
        at_once, bound_by = _at_once(counts, workflow.limits, concurrency)
        levels.append(
            Level(
                index=number,
                tasks=list(level),
                width=len(level),
                runs=sum(runs[t] or 0 for t in level),
                per_item=[t for t in level if runs[t] is None],
                cached=answered[number],
                at_once=at_once,
                bound_by=bound_by,
            )
        )

    to_run = [t for t in plan.tasks if t not in whole]
    specs = {t: plan.tasks[t].spec for t in to_run}
    when = [t for t, spec in specs.items() if spec.when is not None]
    return Explanation(
        workflow=workflow.name,
        concurrency=concurrency,
        workflow_concurrency=workflow.max_concurrency,
        limits=dict(workflow.limits),
        tasks=len(plan.tasks),
        runs=sum(count or 0 for count in runs.values()),
        per_item=[t for t, count in runs.items() if count is None],
        levels=levels,
        critical_path=_critical_path(plan, whole, position),
        foreach=foreach,
        when=when,
        after_when=_after_when(plan, when, whole),
        retries={t: spec.retries for t, spec in specs.items() if spec.retries},
        timeouts={t: spec.timeout for t, spec in specs.items() if spec.timeout is not None},
        cached=answers,
    )


def _cached(plan: Plan, cached: Mapping[str, str], position: dict[str, int]) -> dict[str, str]:
    """The cache's answers checked and in plan order (a task, then its instances by
    index); an instance's answer is dropped when its whole task is answered."""
    keys: dict[str, tuple[int, int]] = {}
    for task_id in cached:
        if task_id in plan.tasks:
            keys[task_id] = (position[task_id], -1)
            continue
        instance = split_instance(task_id)
        group = plan.tasks.get(instance[0]) if instance else None
        if instance is None or group is None or group.spec.foreach is None:
            raise ValueError(f"cached: '{task_id}' is no task of the workflow")
        index = instance[1]
        items = group.spec.foreach
        if isinstance(items, list) and index >= len(items):
            raise ValueError(
                f"cached: '{task_id}': task '{group.id}' has {len(items)} items "
                f"(indexes 0 to {len(items) - 1})"
            )
        if group.id not in cached:
            keys[task_id] = (position[group.id], index)
    return {task_id: cached[task_id] for task_id in sorted(keys, key=keys.__getitem__)}


def _at_once(
    counts: dict[str, float], limits: Mapping[str, int], concurrency: int
) -> tuple[int, list[str]]:
    """How many of a level's tasks (`counts` by tool, inf when unknown) could run at
    once, and what holds that number below the work."""
    allowed: float = 0
    tools = []
    for tool, count in counts.items():
        limit = limits.get(tool)
        if limit is not None and limit < count:
            tools.append(tool)
            allowed += limit
        else:
            allowed += count
    if allowed > concurrency:
        return concurrency, ["max_concurrency"]
    return int(allowed), tools


def _critical_path(plan: Plan, whole: set[str], position: dict[str, int]) -> list[str]:
    """The longest chain of dependencies, counting the tasks to run; among equals, the
    one that ends first in the file, reached through the dependencies first in it."""
    length: dict[str, int] = {}
    before: dict[str, str | None] = {}
    for level in plan.levels:
        for task_id in level:
            deps = plan.tasks[task_id].deps
            best = min(deps, key=lambda d: (-length[d], position[d]), default=None)
            before[task_id] = best
            length[task_id] = (0 if best is None else length[best]) + (task_id not in whole)
    if not length or not max(length.values()):
        return []
    end: str | None = min(length, key=lambda t: (-length[t], position[t]))
    path = []
    while end is not None:
        if end not in whole:
            path.append(end)
        end = before[end]
    return path[::-1]


def _after_when(plan: Plan, when: list[str], whole: set[str]) -> list[str]:
    """The tasks to run that a skipped `when` task would skip too: an `all_success`
    task is skipped after a skipped dependency, and so on down. The walk goes through
    the cache's tasks, whose answer is asked only of a task that is to run."""
    may_skip = {t for t, task in plan.tasks.items() if task.spec.when is not None}
    after = set()
    for level in plan.levels:
        for task_id in level:
            task = plan.tasks[task_id]
            if task_id in may_skip or task.spec.trigger != "all_success":
                continue
            if any(dep in may_skip for dep in task.deps):
                may_skip.add(task_id)
                if task_id not in whole:
                    after.add(task_id)
    return [t for t in plan.tasks if t in after]


# -- text and JSON ------------------------------------------------------------------


def to_dict(explanation: Explanation) -> dict[str, Any]:
    """The explanation as plain data, for `--json`: its fields, with the levels and
    `foreach` tasks as lists of objects."""
    data: dict[str, Any] = msgspec.to_builtins(explanation)
    return data


def render(explanation: Explanation) -> str:
    """The explanation for a person: a line of totals, a line per level, then the
    critical path, what varies at run time (`foreach`, `when`), retries, timeouts and
    the cache's answers. Long lists are cut to fit the line ("and N more"), and past
    `_LEVELS` levels the middle ones are left out: `to_dict` has them all."""
    e = explanation
    mapped = {f.id for f in e.foreach}

    def shown(task_id: str) -> str:
        return f"{task_id}[*]" if task_id in mapped else task_id

    limits = "".join(f", {tool}: {limit} at once" for tool, limit in e.limits.items())
    override = (
        f" (the workflow says {e.workflow_concurrency})"
        if e.concurrency != e.workflow_concurrency
        else ""
    )
    lines = [
        f"{e.workflow}: {_count(e.tasks, 'task')} in {_count(len(e.levels), 'level')}, "
        f"at most {e.concurrency} at once{override}{limits}",
        "to run: " + _work(e.runs, [shown(t) for t in e.per_item], len(e.cached)),
    ]

    shown_levels: list[Level | None] = list(e.levels)
    if len(e.levels) > _LEVELS:  # `None`: where the levels left out would be
        shown_levels = [*e.levels[: _LEVELS - 5], None, *e.levels[-5:]]
    label = len(f"level {len(e.levels) - 1}:")
    ids = [_fit([shown(t) for t in level.tasks], _IDS) if level else "" for level in shown_levels]
    column = max(map(len, ids), default=0)
    for level, names in zip(shown_levels, ids, strict=True):
        if level is None:
            lines.append(f"... and {len(e.levels) - _LEVELS} more levels")
            continue
        if level.per_item and not level.runs and len(level.per_item) == level.width:
            work = "one task per item" + (
                f"; {len(level.cached)} from cache" if level.cached else ""
            )
        else:
            work = _work(level.runs, [shown(t) for t in level.per_item], len(level.cached))
        if level.per_item:
            work += f", up to {level.at_once} at once{_bound(level.bound_by)}"
        elif level.at_once < level.runs:
            work += f", {level.at_once} at once{_bound(level.bound_by)}"
        lines.append(f"{f'level {level.index}:':<{label}} {names:<{column}}  {work}".rstrip())

    if e.critical_path:
        size = f" ({_count(len(e.critical_path), 'task')})"
        head = "critical path: "
        path = [shown(t) for t in e.critical_path]
        room = WIDTH - len(head) - len(size)
        text = " -> ".join(path)
        if len(text) > room:  # the first tasks, and the last
            room -= len(path[-1]) + len(" -> ")
            text = _fit(path[:-1], room, " -> ", "... ({} more)") + " -> " + path[-1]
        lines.append(head + text + size)
    else:
        lines.append("critical path: none (nothing to run)")

    for f in e.foreach:
        if f.from_cache:
            continue
        if f.items is None:
            over = f.over if f.over is not None and len(f.over) <= _IDS else "a reference"
            text = f"over {over}: count known at run time (max_items {f.max_items})"
        else:  # validation refused a list written out longer than max_items
            text = f"over a list of {_count(f.items, 'item')}"
        if f.cached:
            text += f"; {f.cached} from cache"
        lines.append(f"foreach: {f.id}[*] {text}")

    for head, items in (
        ("may be skipped (when): ", [shown(t) for t in e.when]),
        ("  and so may what needs them: ", [shown(t) for t in e.after_when]),
        ("retries: ", [f"{shown(t)} ({n})" for t, n in e.retries.items()]),
        ("timeouts: ", [f"{shown(t)} ({s:g} s)" for t, s in e.timeouts.items()]),
    ):
        if items:
            lines.append(head + _fit(items, WIDTH - len(head)))

    if e.cached:
        lines.append("from cache, not run:")
        answers = list(e.cached.items())
        lines.extend(_clip(f"  {shown(t)}: {what}") for t, what in answers[:_CACHED_LINES])
        if len(answers) > _CACHED_LINES:
            lines.append(f"  and {len(answers) - _CACHED_LINES} more")
    lines.append("nothing runs: this was a dry run")
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _work(runs: int, per_item: list[str], cached: int) -> str:
    """ "3 tasks + one per item of search[*]; 1 from cache" """
    parts = []
    if runs:
        parts.append(_count(runs, "task"))
    if per_item:
        parts.append("one per item of " + _fit(per_item, _IDS))
    text = " + ".join(parts) or "nothing to run"
    return text + (f"; {cached} from cache" if cached else "")


def _bound(bound_by: list[str]) -> str:
    if not bound_by:
        return ""
    if bound_by == ["max_concurrency"]:
        return " (max_concurrency)"
    return f" ({', '.join(bound_by)} limit{'s' if len(bound_by) > 1 else ''})"


def _fit(items: list[str], room: int, sep: str = ", ", rest: str = "and {} more") -> str:
    """`items` joined by `sep`, as many as fit in `room` columns, then `rest` with
    the number left out (the first item is always shown, however long)."""
    text = sep.join(items)
    if len(text) <= room:
        return text
    shown: list[str] = []
    length = 0
    for number, item in enumerate(items):
        more = len(sep + rest.format(len(items) - number - 1))
        add = len(item) + (len(sep) if shown else 0)
        if shown and length + add + more > room:
            break
        shown.append(item)
        length += add
    return sep.join(shown) + sep + rest.format(len(items) - len(shown))


def _clip(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 3] + "..."
