"""`durable bench --workers N`: the fleet's throughput, and how soon an idle fleet starts a task.

Worker processes are started (`durable worker`, one process each, as a user runs
them), the benchmark run is handed to them (`fleet/submit.py`) and the clock stops
at its committed `run_finished`. Throughput counts from just before the hand-over
to that event's time; the median round trip of a `SELECT 1` just before is reported
beside it, the unit a chain's steps are made of. Latency: on an idle fleet, one-task
runs are handed over one after another; the time from the hand-over's commit to the
task's `task_started` (both clocks of this machine) is the claim-to-start latency,
NOTIFY included.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec

from durable.benchmark import make_workflow
from durable.errors import DurableError
from durable.fleet.submit import submit, submit_plan
from durable.fleet.workers import live_workers
from durable.journal.postgres import PgJournal
from durable.loader import plan_workflow
from durable.spec import from_data


class FleetResult(msgspec.Struct):
    shape: str
    tasks: int
    workers: int
    slots: int
    concurrency: int
    sleep: float
    seconds: float
    tasks_per_s: float
    #: The median `SELECT 1` round trip from the benchmark's process before the run: a
    #: chain step is three of them and a commit, so this says how much a chain can do
    #: on this machine (0.13-0.22 ms on loopback here, on a busy day).
    round_trip_ms: float


class Latency(msgspec.Struct):
    workers: int
    samples: int
    median_ms: float
    p95_ms: float
    max_ms: float


@asynccontextmanager
async def fleet(
    dsn: str, workers: int, slots: int, durability: str = "normal"
) -> AsyncIterator[None]:
    """`workers` worker processes on `dsn`, registered before this yields, stopped after."""
    command = [sys.executable, "-m", "durable_cli.main", "worker", "--db", dsn]
    journal = await PgJournal.open(dsn, create=True)  # before any worker: none is left behind
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes += [
            subprocess.Popen(
                [*command, "-j", str(slots), "--durability", durability],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            for _ in range(workers)
        ]
        deadline = time.monotonic() + 30
        mine = {process.pid for process in processes}
        while len([w for w in await live_workers(journal._conn) if w.pid in mine]) < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise DurableError(f"the {workers} benchmark workers did not all start")
            await asyncio.sleep(0.05)
        yield
    finally:
        await journal.close()
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


#: The run's last seq, and its `run_finished` if it came after `$2`: polling reads only
#: the events since the last look, not the whole run each time (which, 50 times a
#: second, cost PostgreSQL 4 % of a chain's time and grew with the run).
FINISHED_SINCE = """WITH m AS (SELECT max(seq) AS top FROM durable.events WHERE run_id = $1)
    SELECT m.top, e.at, e.data FROM m LEFT JOIN durable.events e ON e.run_id = $1
        AND e.seq > $2 AND e.seq <= m.top AND e.kind = 'run_finished'"""


async def _finished_at(journal: PgJournal, run_id: str, timeout: float) -> tuple[float, str]:
    """When the run's `run_finished` was written, and its status (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    after = 0
    while True:
        top, at, data = await journal._conn.fetchrow(FINISHED_SINCE, run_id, after)
        if data is not None:
            return at, msgspec.msgpack.decode(data)["status"]
        after = top or after
        if time.monotonic() > deadline:
            raise DurableError(f"benchmark run {run_id} did not finish within {timeout:g}s")
        await asyncio.sleep(0.02)


async def measure_fleet(
    dsn: str,
    shape: str,
    tasks: int,
    workers: int,
    slots: int,
    concurrency: int,
    sleep: float = 0.0,
    durability: str = "normal",
) -> FleetResult:
    """One run of `tasks` tasks in `shape` by `workers` processes of `slots` each."""
    workflow = make_workflow(shape, tasks, concurrency, sleep)
    async with fleet(dsn, workers, slots, durability):
        journal = await PgJournal.open(dsn, create=True)
        try:
            # Each round starts from a clean queue table, whatever autovacuum does
            # (or does not: it may be off) after the rounds before.
            await journal._writable.execute("VACUUM durable.work")
            round_trip = await _round_trip_ms(journal)
            started = time.time()
            run_id, _ = await submit(workflow, None, db=dsn)
            ended, status = await _finished_at(journal, run_id, 600)
        finally:
            await journal.close()
    if status != "succeeded":
        raise DurableError(f"benchmark run {run_id} ended {status}")
    seconds = ended - started
    return FleetResult(
        shape,
        tasks,
        workers,
        slots,
        concurrency,
        sleep,
        round(seconds, 4),
        round(tasks / seconds, 1),
        round_trip,
    )


async def _round_trip_ms(journal: PgJournal, samples: int = 101) -> float:
    """The median time of a `SELECT 1` on the journal's connection, in ms."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        await journal._conn.fetchval("SELECT 1")
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 3)


async def measure_latency(dsn: str, workers: int = 1, samples: int = 50) -> Latency:
    """Claim-to-start latency on an idle fleet: one-task runs, one at a time."""
    workflow = from_data({"name": "latency", "tasks": [{"id": "t", "tool": "echo", "input": 1}]})
    found: list[float] = []
    async with fleet(dsn, workers, 4):
        journal = await PgJournal.open(dsn, create=True)
        try:
            plan = plan_workflow(workflow, os.getcwd())
            for _ in range(samples):
                await asyncio.sleep(0.1)  # idle: every worker waits for a NOTIFY
                run_id, _ = await submit_plan(journal, plan, Path.cwd(), None)
                committed = time.time()
                await _finished_at(journal, run_id, 30)
                started = await journal._conn.fetchval(
                    "SELECT at FROM durable.events WHERE run_id = $1 AND kind = 'task_started'",
                    run_id,
                )
                found.append(max(0.0, started - committed) * 1000)
        finally:
            await journal.close()
    found.sort()
    return Latency(
        workers,
        samples,
        round(statistics.median(found), 2),
        round(found[int(len(found) * 0.95) - 1], 2),
        round(found[-1], 2),
    )


def to_dict(result: Any) -> dict[str, Any]:
    return msgspec.structs.asdict(result)
