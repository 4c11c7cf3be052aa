"""The fleet (`durable worker`) on the real PostgreSQL: throughput, scaling, claim latency.

Each benchmark starts its worker processes (`durable/fleet/bench.py`: one
`durable worker` process each, as a user runs them) on a fresh database, hands a
run to them and stops the clock at its committed `run_finished`. Figures and the
commands behind them: bench/README.md, "Workers".

- `wide`: N no-op tasks (10,000; quick 1,000) by 4 workers of 64 slots,
  `max_concurrency` 256; and `chain`, 2,000 (quick 300) tasks, each taking the
  previous one's output. Reported in `extra_info`; no raw time is asserted.
- `io`: 2,000 tasks of 100 ms (quick mode too) by 4 workers x 50 slots: the ideal is
  2,000 x 0.1 s / 200 slots = 1.0 s. Guard: ideal / measured ≥ 0.5 (the README
  claims ≤ 1.5 s, a ratio of 0.67; 2x margin on what the ratio loses).
- `io_scaling` (full only): the same with 1, 2 and 4 workers: the time falls nearly
  in proportion. Guard: t(1) / t(4) ≥ 2.5 (ideal 4).
- `latency`: 50 one-task runs handed to an idle fleet one at a time (quick 15):
  median claim-to-start time. Guard: median ≤ 100 ms (the README claims < 20 ms;
  a lost NOTIFY falls back on the 500 ms poll, which this catches).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import pg

from durable.fleet.bench import measure_fleet, measure_latency


def _fleet(dsn: str, **options: Any) -> Any:
    return asyncio.run(measure_fleet(dsn, **options))


@pytest.mark.parametrize(
    ("shape", "full", "quick"), [("wide", 10_000, 1_000), ("chain", 2_000, 300)]
)
def test_fleet_throughput(benchmark: Any, kit: Any, shape: str, full: int, quick: int) -> None:
    tasks = kit.size(full, quick)
    with pg.fresh_database() as dsn:
        result = benchmark.pedantic(
            _fleet,
            kwargs={
                "dsn": dsn,
                "shape": shape,
                "tasks": tasks,
                "workers": 4,
                "slots": 64,
                "concurrency": 256,
            },
            rounds=kit.rounds(3),
            iterations=1,
        )
    benchmark.extra_info["tasks_per_s"] = result.tasks_per_s
    assert result.tasks == tasks


def test_fleet_io(benchmark: Any, kit: Any) -> None:
    tasks = 2_000
    with pg.fresh_database() as dsn:
        result = benchmark.pedantic(
            _fleet,
            kwargs={
                "dsn": dsn,
                "shape": "wide",
                "tasks": tasks,
                "workers": 4,
                "slots": 50,
                "concurrency": 200,
                "sleep": 0.1,
            },
            rounds=kit.rounds(3),
            iterations=1,
        )
    ideal = tasks * 0.1 / 200
    benchmark.extra_info.update(seconds=result.seconds, ideal=ideal)
    kit.guard(
        "io-bound fleet, ideal / measured",
        ideal / result.seconds,
        at_least=0.5,
        readme="2,000 tasks of 100 ms by 4 workers x 50 slots in <= 1.5 s (ideal 1.0 s)",
    )


@pytest.mark.full_only
def test_fleet_io_scaling() -> None:
    seconds = {}
    with pg.fresh_database() as dsn:
        for workers in (1, 2, 4):
            result = _fleet(
                dsn,
                shape="wide",
                tasks=2_000,
                workers=workers,
                slots=50,
                concurrency=200,
                sleep=0.1,
            )
            seconds[workers] = result.seconds
    print(f"io scaling, seconds by workers: {seconds}")
    assert seconds[1] / seconds[4] >= 2.5, f"no scaling with workers: {seconds}"


def test_claim_latency(kit: Any) -> None:
    with pg.fresh_database() as dsn:
        found = asyncio.run(measure_latency(dsn, workers=2, samples=kit.size(50, 15)))
    print(f"claim-to-start latency: {found}")
    kit.guard(
        "claim-to-start latency on an idle fleet, median ms",
        found.median_ms,
        at_most=100,
        readme="median under 20 ms",
    )
