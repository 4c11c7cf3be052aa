"""`durable bench`: measure the real engine on a temporary journal, against a bare baseline.

What is measured: the run itself, from `run_started` to a committed `run_finished`,
through the same `runner.arun` a user calls; planning (decode, validation, the
graph) is timed apart as `plan_ms`, because it is paid once per run and not per
task. The baseline runs the same DAG in the same process with nothing durable
about it (an asyncio task per node, a semaphore, the same tool and the same input
substitution), so `ratio` says what the journal costs.

Shapes (N tasks, `echo` unless `--sleep`):

- wide: N independent tasks.
- chain: task i takes task i-1's output.
- layered: about sqrt(N) layers of sqrt(N) tasks; each takes one output of the
  layer before and also waits for a second task there.
- diamond: fan-out/fan-in stages: a source, 8 parallel tasks, a sink, repeated.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from durable import eventloop, graph, runner
from durable.loader import plan_workflow
from durable.refs import Scope
from durable.spec import Workflow, from_data

SHAPES = ("wide", "chain", "layered", "diamond")


def make_workflow(shape: str, tasks: int, concurrency: int = 16, sleep: float = 0.0) -> Workflow:
    """A benchmark workflow of `tasks` tasks in the given shape."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}")
    specs: list[dict[str, Any]] = []

    def add(task_id: str, upstream: str | None = None, wait_for: list[str] | None = None) -> None:
        value: Any = f"${{{upstream}.output.n}}" if upstream else 0
        if sleep:
            task: dict[str, Any] = {
                "id": task_id,
                "tool": "sleep",
                "input": {"seconds": sleep, "result": {"n": value}},
            }
        else:
            task = {"id": task_id, "tool": "echo", "input": {"n": value}}
        if wait_for:
            task["dependencies"] = wait_for
        specs.append(task)

    if shape == "wide":
        for i in range(tasks):
            add(f"t{i}")
    elif shape == "chain":
        for i in range(tasks):
            add(f"t{i}", f"t{i - 1}" if i else None)
    elif shape == "layered":
        width = max(1, round(math.sqrt(tasks)))
        for i in range(tasks):
            layer, slot = divmod(i, width)
            if layer == 0:
                add(f"t{i}")
            else:
                base = (layer - 1) * width
                other = base + (slot + 1) % width
                add(f"t{i}", f"t{base + slot}", [f"t{other}"] if other != base + slot else None)
    else:  # diamond
        previous: str | None = None
        i = 0
        while i < tasks:
            source = f"t{i}"
            add(source, previous)
            i += 1
            middle = []
            for _ in range(min(8, tasks - i - 1)):
                add(f"t{i}", source)
                middle.append(f"t{i}")
                i += 1
            if i < tasks:
                add(f"t{i}", middle[0] if middle else source, middle[1:] or None)
                previous = f"t{i}"
                i += 1
    return from_data({"name": f"bench-{shape}", "max_concurrency": concurrency, "tasks": specs})


class Result(msgspec.Struct):
    shape: str
    loop: str
    tasks: int
    concurrency: int
    durability: str
    sleep: float
    plan_ms: float
    seconds: float
    tasks_per_s: float
    us_per_task: float
    baseline_tasks_per_s: float
    ratio: float
    commits: int
    events: int
    events_per_commit: float
    journal_bytes_per_task: float
    peak_rss_mb: float


class Summary(msgspec.Struct):
    """Several repeats of one benchmark: the median run, and the spread."""

    median: Result
    runs: int
    tasks_per_s_min: float
    tasks_per_s_max: float


def peak_rss_mb() -> float:
    """This process's peak resident memory.

    `VmHWM` where Linux has it: `ru_maxrss` survives `exec`, so a `durable bench`
    started by a big process would report its parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _baseline(plan: graph.Plan, concurrency: int) -> float:
    """The same DAG with no journal: an asyncio task per node, a semaphore, the same tool."""
    gate = asyncio.Semaphore(concurrency)
    finished = {task_id: asyncio.Event() for task_id in plan.tasks}
    scope = Scope(params={}, run_id="baseline", outputs={})

    async def one(task: graph.TaskPlan) -> None:
        for dep in task.deps:
            await finished[dep].wait()
        async with gate:
            assert task.tool is not None
            value = task.template.render(scope)
            scope.outputs[task.id] = await task.tool.fn(**value)  # type: ignore[index]
        finished[task.id].set()

    started = time.perf_counter()
    await asyncio.gather(*(one(task) for task in plan.tasks.values()))
    return time.perf_counter() - started


async def measure(
    shape: str,
    tasks: int,
    concurrency: int = 16,
    durability: str = "normal",
    sleep: float = 0.0,
    folder: str | None = None,
    db: str | None = None,
) -> Result:
    """Run one benchmark: durable on a fresh journal (or on `db`, a PostgreSQL
    journal, where the run is added to what is there), then the baseline."""
    workflow = make_workflow(shape, tasks, concurrency, sleep)
    started = time.perf_counter()
    plan_workflow(workflow, os.getcwd())
    plan_ms = (time.perf_counter() - started) * 1000
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        target: str | Path = db if db is not None else Path(tmp, "bench.db")
        result = await runner.arun(workflow, db=target, durability=durability)
        stats = result.stats
        seconds = stats.run_seconds
        if result.status != "succeeded":
            raise RuntimeError(f"benchmark run {result.run_id} ended {result.status}")
        # A database's size is not the run's: reported as 0 there.
        size = sum(p.stat().st_size for p in Path(tmp).glob("bench.db*") if p.is_file())
    rss_mb = peak_rss_mb()
    # Planned afresh: keeping the first plan alive through the run would add its
    # memory to the durable run's peak RSS.
    baseline = await _baseline(plan_workflow(workflow, os.getcwd()), concurrency)
    commits = max(stats.commits, 1)
    return Result(
        shape=shape,
        loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        tasks=tasks,
        concurrency=concurrency,
        durability=durability,
        sleep=sleep,
        plan_ms=round(plan_ms, 1),
        seconds=round(seconds, 4),
        tasks_per_s=round(tasks / seconds, 1),
        us_per_task=round(seconds / tasks * 1e6, 2),
        baseline_tasks_per_s=round(tasks / baseline, 1),
        ratio=round(baseline / seconds, 3),
        commits=stats.commits,
        events=stats.events,
        events_per_commit=round(stats.events / commits, 1),
        journal_bytes_per_task=round(size / tasks, 1),
        peak_rss_mb=round(rss_mb, 1),
    )


def run_repeated(
    shape: str,
    tasks: int,
    concurrency: int = 16,
    durability: str = "normal",
    sleep: float = 0.0,
    repeat: int = 1,
    db: str | None = None,
) -> Summary:
    results = [
        eventloop.run(measure(shape, tasks, concurrency, durability, sleep, db=db))
        for _ in range(repeat)
    ]
    ordered = sorted(results, key=lambda r: r.tasks_per_s)
    return Summary(
        median=ordered[len(ordered) // 2],
        runs=repeat,
        tasks_per_s_min=ordered[0].tasks_per_s,
        tasks_per_s_max=ordered[-1].tasks_per_s,
    )
