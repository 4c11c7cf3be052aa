"""`foreach` against the same tasks written out: `runner.arun` on a fresh journal per round.

Three workflows of N no-op `echo` tasks at `-j 64` (N = 10,000; quick mode 1,000):

- `static`: N tasks written out, `t0`, `t1`, ... each with input `{"n": i}`;
- `foreach`: one task `t` with `foreach: [0, 1, ..., N-1]` (a literal list) and input
  `{"n": "${item}"}`, which expands at run time into `t[0]`...`t[N-1]`;
- `foreach_upstream`: the same, with the list coming from an upstream task's output
  (`make` echoes the list; `t` has `foreach: "${make.output}"`).

A round times one `arun` call (validation, planning, the run, its last commit); the
journal is created beforehand, outside the timed part, as in test_throughput.py.
`extra_info["tasks_per_s"]` counts the run alone, from `run_started` to a committed
`run_finished` (as `durable bench` does): N over the run's seconds, for every
variant, so the foreach variants are counted on their N instances (their group task
and `make` come on top). This is the stricter comparison: a `foreach` expands (builds
its N instances' plans) inside the run, where the static workflow planned its N tasks
before it.

Guard (both modes; bench/README.md, "Guards"): a `foreach` of N items runs at no
less than 80 % of the same N tasks written out (quick mode, at 1,000 tasks: 70 %, the
expansion's own commit, which every instance waits for, weighing ten times as much).
Measured as a ratio of two throughputs taken on the same machine moments apart:
rounds of the variants alternate, in a rotating order, each round gives the ratio of
its variant to its static, and the median of those ratios counts. (It was each
variant's best round over static's best: the machine's speed swings within seconds,
and one static round in a fast moment that no foreach round met failed the guard,
in quick mode, about one run in ten.) A ratio under the bound is measured again,
the rounds pooled, up to five times in all, before the guard fails.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from durable import eventloop, runner
from durable.refs import instance_id
from durable.runner import RunResult
from durable.spec import Task, Workflow
from durable.state import SUCCEEDED

CONCURRENCY = 64
# Full size -> quick size.
TASKS, QUICK_TASKS = 10_000, 1_000
# Rounds per benchmark in full mode (quick mode: one).
ROUNDS = 5
# The guard: foreach tasks/s over static tasks/s, at least (issue: "no less than 80 %").
MIN_RATIO, QUICK_MIN_RATIO = 0.8, 0.7
# Rounds of each variant per measurement of the guard, full and quick; measurements
# at most (a ratio under its bound is measured again, the rounds pooled).
GUARD_ROUNDS, QUICK_GUARD_ROUNDS = 5, 3
GUARD_MEASUREMENTS = 5
README = "a foreach of 10,000 no-op items runs at >= 80 % of the same tasks written out"


def static_workflow(tasks: int) -> Workflow:
    return Workflow(
        name="static",
        max_concurrency=CONCURRENCY,
        tasks=[Task(id=f"t{i}", tool="echo", input={"n": i}) for i in range(tasks)],
    )


def foreach_workflow(tasks: int) -> Workflow:
    return Workflow(
        name="foreach",
        max_concurrency=CONCURRENCY,
        tasks=[
            Task(
                id="t",
                tool="echo",
                foreach=list(range(tasks)),
                max_items=tasks,
                input={"n": "${item}"},
            )
        ],
    )


def foreach_upstream_workflow(tasks: int) -> Workflow:
    return Workflow(
        name="foreach_upstream",
        max_concurrency=CONCURRENCY,
        tasks=[
            Task(id="make", tool="echo", input=list(range(tasks))),
            Task(
                id="t",
                tool="echo",
                foreach="${make.output}",
                max_items=tasks,
                input={"n": "${item}"},
            ),
        ],
    )


# Variant -> (its workflow of N tasks, the tasks its result holds besides the N).
VARIANTS = {
    "static": (static_workflow, 0),
    "foreach": (foreach_workflow, 1),  # the group `t`
    "foreach_upstream": (foreach_upstream_workflow, 2),  # `make` and the group `t`
}


def check(kit, variant: str, result: RunResult, tasks: int) -> None:
    """The run and all its tasks succeeded; a foreach ran exactly N instances, in order."""
    kit.check(result, tasks + VARIANTS[variant][1])
    if variant == "static":
        return
    instances = [key for key in result.tasks if key.startswith("t[")]
    succeeded = [key for key in instances if result.tasks[key].state == SUCCEEDED]
    assert len(instances) == tasks, f"{variant}: {len(instances)} instances, expected {tasks}"
    assert len(succeeded) == tasks, f"{variant}: {len(succeeded)} of {tasks} instances succeeded"
    assert set(instances) == {instance_id("t", i) for i in range(tasks)}
    group = result.tasks["t"]
    assert group.state == SUCCEEDED
    assert group.output == [{"n": i} for i in range(tasks)], f"{variant}: the group's output"


def tasks_per_s(result: RunResult, tasks: int) -> float:
    return tasks / result.stats.run_seconds if result.stats.run_seconds else 0.0


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_foreach_throughput(benchmark, kit, variant: str) -> None:
    tasks = kit.size(TASKS, QUICK_TASKS)
    workflow = VARIANTS[variant][0](tasks)
    results: list[RunResult] = []

    def setup():
        return (kit.new_journal(),), {}

    def target(db) -> RunResult:
        result = eventloop.run(runner.arun(workflow, db=db, durability="normal"))
        results.append(result)
        return result

    warmup = kit.warmup()
    benchmark.pedantic(
        target, setup=setup, rounds=kit.rounds(ROUNDS), warmup_rounds=warmup, iterations=1
    )
    for result in results:
        check(kit, variant, result, tasks)
    measured = results[warmup:] or results
    benchmark.extra_info.update(kit.run_stats(measured, tasks))
    rates = [tasks_per_s(result, tasks) for result in measured]
    benchmark.extra_info.update(
        variant=variant,
        concurrency=CONCURRENCY,
        durability="normal",
        tasks_per_s_min=round(min(rates), 1),
        tasks_per_s_max=round(max(rates), 1),
    )


def test_foreach_against_static(kit) -> None:
    """Guard: foreach tasks/s >= 80 % of static tasks/s (quick mode: 70 % at 1,000 tasks).

    Rounds of the three variants alternate (the order rotating each round) on fresh
    journals; the median of the rounds' ratios counts. Both the literal list and the
    list from an upstream task are held to the bound.
    """
    tasks = kit.size(TASKS, QUICK_TASKS)
    bound = QUICK_MIN_RATIO if kit.quick else MIN_RATIO
    rounds = QUICK_GUARD_ROUNDS if kit.quick else GUARD_ROUNDS
    workflows = {variant: make(tasks) for variant, (make, _) in VARIANTS.items()}
    order = list(VARIANTS)
    rates: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    walls: dict[str, list[float]] = {variant: [] for variant in VARIANTS}

    def measure() -> None:
        for _ in range(rounds):
            shift = len(rates["static"]) % len(order)  # rounds so far: rotate the order
            for variant in order[shift:] + order[:shift]:
                db = kit.new_journal()
                started = time.perf_counter()
                result = eventloop.run(runner.arun(workflows[variant], db=db, durability="normal"))
                walls[variant].append(time.perf_counter() - started)
                check(kit, variant, result, tasks)
                rates[variant].append(tasks_per_s(result, tasks))

    def ratio(variant: str) -> float:
        """The median of the rounds' own ratios: each round's variant over its static."""
        return kit.median([r / s for r, s in zip(rates[variant], rates["static"], strict=True)])

    measurements = 0
    while measurements < GUARD_MEASUREMENTS and (
        measurements == 0 or min(ratio("foreach"), ratio("foreach_upstream")) < bound
    ):
        measure()
        measurements += 1

    summary = _summary(kit, rates, walls)
    print(f"\nforeach against static, {tasks} echo tasks, -j {CONCURRENCY}:\n{summary}")
    for variant in ("foreach", "foreach_upstream"):
        kit.guard(
            f"{variant} x {tasks} at -j {CONCURRENCY}: tasks/s over static tasks/s (the median "
            f"of {len(rates[variant])} alternating rounds' ratios; medians "
            f"{kit.median(rates[variant]):,.0f} against {kit.median(rates['static']):,.0f})",
            ratio(variant),
            at_least=bound,
            readme=README,
        )


def _summary(kit, rates: dict[str, list[float]], walls: dict[str, list[float]]) -> str:
    lines: list[str] = []
    static_best, static_median = max(rates["static"]), kit.median(rates["static"])
    static_wall = kit.median(walls["static"])
    for variant, found in rates.items():
        row: dict[str, Any] = {
            "best": f"{max(found):,.0f}",
            "median": f"{kit.median(found):,.0f}",
            "range": f"{min(found):,.0f}-{max(found):,.0f}",
            "rounds": len(found),
            "ratio best/median": f"{max(found) / static_best:.3f} / "
            f"{kit.median(found) / static_median:.3f}",
            "arun wall median": f"{kit.median(walls[variant]) * 1000:.0f} ms "
            f"({static_wall / kit.median(walls[variant]):.2f}x static's speed)",
        }
        lines.append(f"  {variant:17} " + ", ".join(f"{k} {v}" for k, v in row.items()))
    return "\n".join(lines)
