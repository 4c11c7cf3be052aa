"""The bare prototype: the floor that `durable bench` is compared with (issue 12).

The same design as durable with nothing else: an asyncio scheduler bounded by a
counter, one coroutine per task, a group-committed SQLite journal on the loop's
thread (WAL, synchronous NORMAL or FULL, the same `events` table, index and
append-only triggers as durable's), a task's slot held and its dependents released
only once its outcome has committed. No tools, no inputs rendered, no fold, no
checksums, no summaries, no CLI. What durable spends per task beyond this is the
price of everything it does that the prototype does not.

    python bench/prototype.py --shape chain -n 2000 [--durability full] [--repeat 5] [--joined]

`--joined` writes an attempt's start and success as one row when they are queued
for the same commit, as durable does (`task_ran`, `durable/events.py`): the
prototype of durable's design since then. Without it, two rows a task, the design
the issue's figures were measured on.

Prints the median tasks/s (and µs per task) of `--repeat` runs, each on a fresh
journal in a fresh temporary folder. Not collected by pytest (no `test_` prefix).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from durable.journal.schema import APPEND_ONLY_TRIGGERS, DURABILITY

TABLE = """CREATE TABLE events (seq INTEGER PRIMARY KEY, run_id TEXT NOT NULL, task_id TEXT,
    attempt INTEGER, kind TEXT NOT NULL, at REAL NOT NULL, data BLOB, crc INTEGER)"""
INDEX = "CREATE INDEX events_by_run ON events (run_id, seq)"
INSERT = "INSERT INTO events (run_id, task_id, attempt, kind, at, data, crc) VALUES (?,?,?,?,?,?,?)"


def dag(shape: str, n: int) -> list[list[int]]:
    """Each task's dependencies, in the shapes of `durable bench` (`benchmark.py`)."""
    if shape == "wide":
        return [[] for _ in range(n)]
    if shape == "chain":
        return [[i - 1] if i else [] for i in range(n)]
    width = max(1, round(math.sqrt(n)))  # layered
    deps: list[list[int]] = []
    for i in range(n):
        layer, slot = divmod(i, width)
        if layer == 0:
            deps.append([])
            continue
        base = (layer - 1) * width
        other = base + (slot + 1) % width
        deps.append(sorted({base + slot, other}))
    return deps


class Prototype:
    def __init__(
        self, deps: list[list[int]], conn: sqlite3.Connection, limit: int, joined: bool = False
    ) -> None:
        self.deps, self.conn, self.limit, self.joined = deps, conn, limit, joined
        self.open: dict[int, int] = {}  # task -> its start's place in `queue` (`joined`)
        self.dependents: list[list[int]] = [[] for _ in deps]
        for task, upstream in enumerate(deps):
            for dep in upstream:
                self.dependents[dep].append(task)
        self.remaining = [len(upstream) for upstream in deps]
        self.ready = [task for task, count in enumerate(self.remaining) if count == 0]
        self.running = 0
        self.active: dict[int, asyncio.Task[None]] = {}
        self.left = len(deps)
        self.queue: list[tuple[object, ...]] = []
        self.finished: list[int] = []  # outcomes in the batch being appended
        self.wake = asyncio.Event()
        self.done = asyncio.Event()

    def append(self, task: int, kind: str) -> None:
        if not self.queue:
            asyncio.get_running_loop().call_soon(self.wake.set)
        if self.joined:
            if kind == "task_started":
                self.open[task] = len(self.queue)
            elif (position := self.open.pop(task, None)) is not None:
                row = self.queue[position]
                self.queue[position] = (*row[:3], "task_ran", row[4], b"\x93\xc0\x00\x00", 0)
                return
        self.queue.append(("run", f"t{task}", 1, kind, time.time(), b"\x81\xa1n\x00", 0))

    def pump(self) -> None:
        loop = asyncio.get_running_loop()
        while self.ready and self.running < self.limit:
            task = self.ready.pop()
            self.running += 1
            self.active[task] = loop.create_task(self.attempt(task))
            self.append(task, "task_started")

    async def attempt(self, task: int) -> None:
        self.append(task, "task_succeeded")  # the tool: nothing
        self.finished.append(task)
        del self.active[task]

    async def writer(self) -> None:
        conn = self.conn
        while self.left:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            rows, self.queue = self.queue, []
            self.open.clear()
            finished, self.finished = self.finished, []
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT, rows)
            conn.execute("COMMIT")
            for task in finished:  # the durability barrier: released after the commit
                self.running -= 1
                self.left -= 1
                for dependent in self.dependents[task]:
                    self.remaining[dependent] -= 1
                    if self.remaining[dependent] == 0:
                        self.ready.append(dependent)
            self.pump()
            if self.queue:  # let the tasks just started take their first step
                await asyncio.sleep(0)

    async def run(self) -> float:
        started = time.perf_counter()
        self.pump()
        await self.writer()
        return time.perf_counter() - started


def measure(shape: str, n: int, limit: int, durability: str, joined: bool = False) -> float:
    with tempfile.TemporaryDirectory() as folder:
        conn = sqlite3.connect(Path(folder, "proto.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={DURABILITY[durability]}")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        for statement in (TABLE, INDEX, *APPEND_ONLY_TRIGGERS.values()):
            if "ON runs" not in statement:
                conn.execute(statement)
        try:
            import uvloop

            seconds = uvloop.run(Prototype(dag(shape, n), conn, limit, joined).run())
        except ImportError:
            seconds = asyncio.run(Prototype(dag(shape, n), conn, limit, joined).run())
        conn.close()
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("wide", "chain", "layered"), default="wide")
    parser.add_argument("-n", "--tasks", type=int, default=10_000)
    parser.add_argument("-j", "--jobs", type=int, default=64)
    parser.add_argument("--durability", choices=("normal", "full"), default="normal")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--joined", action="store_true", help="one row an attempt, as durable")
    args = parser.parse_args()
    rates = [
        measure(args.shape, args.tasks, args.jobs, args.durability, args.joined)
        for _ in range(args.repeat)
    ]
    median = statistics.median(rates)
    print(
        f"prototype{' --joined' if args.joined else ''} {args.shape} {args.tasks} -j {args.jobs} "
        f"{args.durability}: "
        f"{median:,.0f} tasks/s ({1e6 / median:.1f} µs/task; {min(rates):,.0f}-{max(rates):,.0f})"
    )


if __name__ == "__main__":
    main()
