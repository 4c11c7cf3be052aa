"""Throughput of the real engine: `runner.arun` on a fresh journal per round.

The four shapes of `durable bench` (durable/benchmark.py) at 1k and 10k echo
tasks, an I/O-bound workload (tasks that sleep), and, in full mode only, a scale
check at 100k tasks in a subprocess of its own (for an honest peak RSS).

A round times one `arun` call: validating and planning the workflow, the run and
its last commit. The journal (schema included) is created beforehand, outside the
timed part. `extra_info` carries the engine's own figures for the median round:
`tasks_per_s` (the run alone, as `durable bench` counts it), commits, events per
commit.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from durable import eventloop, runner
from durable.benchmark import make_workflow
from durable.runner import RunResult
from durable.spec import Workflow

# Shape -> concurrency bound (-j). A chain has one runnable task at a time.
SHAPES = {"wide": 64, "chain": 16, "layered": 64, "diamond": 64}
# Full size -> (quick size, rounds in full mode).
SIZES = {1000: (200, 10), 10000: (1000, 3)}


def bench_runs(
    benchmark, kit, workflow: Workflow, tasks: int, rounds: int, durability: str = "normal"
) -> list[RunResult]:
    """Run `workflow` once per round on a fresh journal; check every round; fill extra_info."""
    results: list[RunResult] = []

    def setup():
        return (kit.new_journal(durability),), {}

    def target(db: Path) -> RunResult:
        result = eventloop.run(runner.arun(workflow, db=db, durability=durability))
        results.append(result)
        return result

    warmup = kit.warmup()
    benchmark.pedantic(
        target, setup=setup, rounds=kit.rounds(rounds), warmup_rounds=warmup, iterations=1
    )
    for result in results:
        kit.check(result, tasks)
    measured = results[warmup:] or results
    benchmark.extra_info.update(kit.run_stats(measured, tasks))
    benchmark.extra_info.update(concurrency=workflow.max_concurrency, durability=durability)
    return measured


@pytest.mark.parametrize("tasks", list(SIZES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_shape(benchmark, kit, shape: str, tasks: int) -> None:
    quick_size, rounds = SIZES[tasks]
    size = kit.size(tasks, quick_size)
    workflow = make_workflow(shape, size, SHAPES[shape])
    benchmark.extra_info["shape"] = shape
    bench_runs(benchmark, kit, workflow, size, rounds)


def test_io_workload(benchmark, kit) -> None:
    """200 tasks that each sleep 50 ms, 50 at a time: the floor is 4 x 50 ms = 0.2 s."""
    tasks, concurrency, sleep = kit.size(200, 50), 50, 0.05
    workflow = make_workflow("wide", tasks, concurrency, sleep=sleep)
    measured = bench_runs(benchmark, kit, workflow, tasks, rounds=5)
    floor = math.ceil(tasks / concurrency) * sleep
    run_seconds = kit.median(result.stats.run_seconds for result in measured)
    benchmark.extra_info.update(
        shape="wide",
        sleep=sleep,
        floor_seconds=floor,
        efficiency=round(floor / run_seconds, 3) if run_seconds else None,
    )


@pytest.mark.full_only
@pytest.mark.parametrize("shape", ["wide", "layered"])
def test_scale_100k(benchmark, durable_exe: str, shape: str) -> None:
    """100k tasks through `durable bench --json` in a subprocess: throughput and peak RSS.

    Linux carries a process's RSS high-water mark (`ru_maxrss`) over from its parent
    through fork and exec, so a child of this (large, by now) pytest process would
    report pytest's peak as its own. A small Python in between starts the benchmark
    from a fresh address space.
    """
    via_fresh_process = [
        sys.executable,
        "-c",
        "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))",
    ]
    command = [
        *via_fresh_process,
        durable_exe,
        "bench",
        "--tasks",
        "100000",
        "--shape",
        shape,
        "-j",
        "64",
        "--json",
    ]
    report: dict = {}

    def target() -> None:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        report.update(json.loads(done.stdout))

    benchmark.pedantic(target, rounds=1, iterations=1)
    assert report["tasks"] == 100000
    benchmark.extra_info.update(report)
