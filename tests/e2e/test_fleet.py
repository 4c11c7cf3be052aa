"""The fleet end to end: `durable worker` processes sharing runs through PostgreSQL.

Real processes throughout: workers are started with `start` (stopped at teardown
by the `fleet` fixture, whatever happens), runs handed over with `durable run
--workers`, and the tests read the database (`pg.fetch`) and the files the tools
write. Each test has a fresh database; leases are 1 s where they matter.

The tools (`fleettools.py`, written into the test's folder and imported by the
workflows' `imports:` or `--tools`) append one line per execution to
`executions.log` (`KEY PID`), so a test counts how many times a task's work ran;
`slow` also appends its start and end times to `intervals.log`, from which a test
reads how many ran at once. A tool's interval lies within its attempt's claim and
commit, so the peak measured is at most the true one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pg
import pytest

TOOLS = '''
"""Tools of the fleet tests (written by tests/e2e/test_fleet.py)."""

import asyncio
import os
import time

import durable

HERE = {here!r}


def _append(name, line):
    fd = os.open(os.path.join(HERE, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


def _runs_before(key):
    try:
        with open(os.path.join(HERE, "executions.log")) as f:
            return sum(1 for line in f if line.split()[0] == key)
    except FileNotFoundError:
        return 0


@durable.tool
async def step(key, seconds=0.0, first=None, fail_first=False, result=None):
    """Record this execution; the first one may sleep `first` s or fail."""
    before = _runs_before(key)
    _append("executions.log", f"{{key}} {{os.getpid()}}")
    if fail_first and before == 0:
        raise RuntimeError(f"{{key}} fails the first time")
    await asyncio.sleep(first if first is not None and before == 0 else seconds)
    return {{"key": key, "result": result}}


@durable.tool
async def held(key, until):
    """Record this execution; return once the test has written the file `until`."""
    _append("executions.log", f"{{key}} {{os.getpid()}}")
    while not os.path.exists(os.path.join(HERE, until)):
        await asyncio.sleep(0.02)
    return {{"key": key}}


@durable.tool
async def slow(key, seconds=0.4):
    """Record this execution and when it ran."""
    _append("executions.log", f"{{key}} {{os.getpid()}}")
    began = time.time()
    await asyncio.sleep(seconds)
    _append("intervals.log", f"{{began!r}} {{time.time()!r}} {{os.getpid()}}")
    return key
'''

LATE_TOOLS = """
import durable


@durable.tool
def late(x):
    return {"late": x}
"""


# -- helpers -----------------------------------------------------------------------------


class Worker:
    """A started `durable worker`, its stderr going to a file."""

    def __init__(self, process: subprocess.Popen[Any], log: Path) -> None:
        self.process = process
        self.log = log
        self.pid = process.pid

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_log(self, predicate: Callable[[str], bool], what: str, timeout: float = 20) -> str:
        wait_until(lambda: predicate(self.text()), timeout, f"{what}; log:\n{self.text()}")
        return self.text()

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 10) -> int:
        return self.process.wait(timeout=timeout)


class Fleet:
    """Starts workers on one database; `close()` (the fixture's teardown) stops them all."""

    def __init__(self, start: Any, stop: Any, folder: Path) -> None:
        self._start, self._stop, self.folder = start, stop, folder
        self.workers: list[Worker] = []

    def start(self, dsn: str, *args: str, cwd: Path | None = None, lease: float = 1.0) -> Worker:
        """Start a worker (not waiting for it: see `ready`). Several started at once
        on a fresh database all make its journal: one does, the others wait for it."""
        log = self.folder / f"worker{len(self.workers)}.log"
        handle = log.open("w")
        try:
            process = self._start(
                "worker",
                "--db",
                dsn,
                "--lease",
                str(lease),
                *args,
                cwd=cwd or self.folder,
                stdout=subprocess.DEVNULL,
                stderr=handle,
            )
        finally:
            handle.close()
        worker = Worker(process, log)
        self.workers.append(worker)
        return worker

    def ready(self, *workers: Worker) -> None:
        """Wait until each worker has registered (its `started on` line)."""
        for worker in workers:
            worker.wait_log(
                lambda text, worker=worker: (
                    "started on" in text or worker.process.poll() is not None
                ),
                "the worker started",
            )
            assert worker.process.poll() is None, f"the worker exited: {worker.text()}"

    def worker(self, dsn: str, *args: str, **options: Any) -> Worker:
        worker = self.start(dsn, *args, **options)
        self.ready(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:  # still ours: a stopped one is woken first
                os.kill(worker.pid, signal.SIGCONT)
            self._stop(worker.process)


@pytest.fixture
def fleet(tmp_path: Path, start: Any, stop: Any) -> Iterator[Fleet]:
    workers = Fleet(start, stop, tmp_path)
    try:
        yield workers
    finally:
        workers.close()


@pytest.fixture
def folder(tmp_path: Path, write: Any) -> Path:
    """The test's folder, with `fleettools.py` in it."""
    write(tmp_path, "fleettools.py", TOOLS.format(here=str(tmp_path)))
    return tmp_path


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


def events(dsn: str, run_id: str, task_id: str | None = None) -> list[tuple[Any, ...]]:
    """(task_id, attempt, kind, data decoded) of a run (one task's), in journal order."""
    where = f"run_id = '{run_id}'" + (f" AND task_id = '{task_id}'" if task_id else "")
    rows = pg.fetch(
        dsn,
        f"SELECT task_id, attempt, kind, data FROM durable.events WHERE {where} ORDER BY seq",
    )
    return [(t, a, k, _decode(d)) for t, a, k, d in rows]


def _decode(data: bytes | None) -> Any:
    return msgspec.msgpack.decode(data) if data else None


def count(dsn: str, run_id: str, kind: str, task_id: str | None = None) -> int:
    where = f"run_id = '{run_id}' AND kind = '{kind}'"
    if task_id is not None:
        where += f" AND task_id = '{task_id}'"
    return pg.fetch(dsn, f"SELECT count(*) FROM durable.events WHERE {where}")[0][0]


def wait_events(dsn: str, run_id: str, kind: str, n: int = 1, task_id: str | None = None) -> None:
    wait_until(
        lambda: count(dsn, run_id, kind, task_id) >= n,
        30,
        f"{n} {kind} event(s) of run {run_id}" + (f" task {task_id}" if task_id else ""),
    )


def work_rows(dsn: str, run_id: str) -> dict[str, str]:
    return dict(pg.fetch(dsn, f"SELECT task_id, state FROM durable.work WHERE run_id = '{run_id}'"))


def status(durable: Any, dsn: str, run_id: str, cwd: Path) -> dict[str, Any]:
    return json.loads(durable("status", run_id, "--db", dsn, "--json", cwd=cwd, check=0).stdout)


def wait_status(
    durable: Any, dsn: str, run_id: str, cwd: Path, wanted: str, timeout: float = 30
) -> dict[str, Any]:
    return wait_until(
        lambda: (found := status(durable, dsn, run_id, cwd))["status"] == wanted and found,
        timeout,
        f"run {run_id} {wanted}",
    )


def executions(folder: Path) -> list[tuple[str, int]]:
    """(key, pid) of every execution of a tool, in order."""
    path = folder / "executions.log"
    if not path.exists():
        return []
    return [
        (key, int(pid)) for key, pid in (line.split() for line in path.read_text().splitlines())
    ]


def wait_executed(folder: Path, key: str, worker: Worker) -> None:
    """Wait until `worker` has begun the tool call of `key` (its line in executions.log)."""
    wait_until(
        lambda: (key, worker.pid) in executions(folder), 20, f"{key} running in {worker.pid}"
    )


def wait_running(dsn: str, run_id: str, folder: Path, task_id: str, worker: Worker) -> None:
    """Wait until `worker` has claimed `task_id` (its `task_started` committed) and
    begun its tool call."""
    wait_events(dsn, run_id, "task_started", task_id=task_id)
    wait_executed(folder, task_id, worker)


def runs_of(folder: Path) -> Counter[str]:
    return Counter(key for key, _ in executions(folder))


def peak(folder: Path, pid: int | None = None) -> int:
    """The most `slow` calls (of one worker) that overlapped in time (an end before a
    start at a tie)."""
    edges = []
    for line in (folder / "intervals.log").read_text().splitlines():
        began, ended, by = line.split()
        if pid is None or int(by) == pid:
            edges += [(float(began), 1), (float(ended), -1)]
    running = top = 0
    for _, step in sorted(edges):
        running += step
        top = max(top, running)
    return top


@contextmanager
def late_tools_then_elsewhere(tmp_path: Path, write: Any) -> Iterator[tuple[Path, Path]]:
    """Two machines' folders: `submitted`, where runs are submitted with
    `late_tools.py` beside them, and `elsewhere`, where that module is moved on
    leaving the block: from then on the tool is only on "another machine"."""
    submitted, elsewhere = tmp_path / "submitted", tmp_path / "elsewhere"
    submitted.mkdir()
    elsewhere.mkdir()
    write(submitted, "late_tools.py", LATE_TOOLS)
    yield submitted, elsewhere
    (submitted / "late_tools.py").rename(elsewhere / "late_tools.py")


def submit(durable: Any, workflow: Path, dsn: str, cwd: Path, *args: str) -> str:
    """`durable run --workers --detach`: the run id."""
    result = durable("run", workflow, "--db", dsn, "--workers", "--detach", *args, cwd=cwd, check=0)
    return result.stdout.strip()


# -- the tests ---------------------------------------------------------------------------


FAN = """
name: fan
imports: [fleettools]
tasks:
  - {id: root, tool: step, input: {key: root, result: {items: [1, 2, 3, 4, 5, 6, 7, 8]}}}
  - id: fan
    tool: step
    foreach: "${root.output.result.items}"
    input: {key: "fan-${item}", seconds: 0.2, result: "${item}"}
  - {id: left, tool: step, input: {key: left, seconds: 0.2, result: "${root.output.result.items[0]}"}}
  - {id: right, tool: echo, input: {r: "${root.output}"}}
  - id: join
    tool: step
    input: {key: join, result: {fan: "${fan.output}", left: "${left.output}", r: "${right.output}"}}
"""


def test_a_fan_out_run_by_two_workers_equals_the_same_run_in_process(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, write: Any
) -> None:
    workflow = write(folder, "fan.yaml", FAN)
    first, second = fleet.start(dsn, "-j", "2"), fleet.start(dsn, "-j", "2")
    fleet.ready(first, second)
    run = durable("run", workflow, "--db", dsn, "--workers", "--no-live", cwd=folder, check=0)
    run_id = run.stdout.split()[1]
    assert run.stdout.startswith(f"run {run_id} started")
    assert f"run {run_id} succeeded" in run.stdout
    fleet_outputs = json.loads(durable("output", run_id, "--db", dsn, cwd=folder, check=0).stdout)
    # each task's work ran once, and the fan-out (8 tasks, 2 slots a worker) needed both
    assert set(runs_of(folder).values()) == {1} and len(runs_of(folder)) == 11
    assert {pid for _, pid in executions(folder)} == {first.pid, second.pid}
    assert work_rows(dsn, run_id) == {}

    (folder / "executions.log").unlink()
    local = folder / "local.db"
    durable("run", workflow, "--db", local, "--run-id", "local", "--no-live", cwd=folder, check=0)
    local_outputs = json.loads(
        durable("output", "local", "--db", local, cwd=folder, check=0).stdout
    )
    assert fleet_outputs == local_outputs
    assert fleet_outputs["join"]["result"]["fan"] == [
        {"key": f"fan-{i}", "result": i} for i in range(1, 9)
    ]


@pytest.mark.parametrize(
    ("head", "tasks", "slots", "expected"),
    [
        ("max_concurrency: 16", 60, 20, 16),  # any one worker could run more than 16
        ("max_concurrency: 16", 60, 6, 16),  # 16 at once takes all three workers
        ("limits: {slow: 3}", 15, 20, 3),
        ("limits: {slow: 3}", 15, 2, 3),  # 3 at once takes two workers
    ],
    ids=["max_concurrency", "max_concurrency_spread", "tool_limit", "tool_limit_spread"],
)
def test_limits_hold_across_all_workers_together(
    folder: Path,
    dsn: str,
    durable: Any,
    fleet: Fleet,
    write: Any,
    head: str,
    tasks: int,
    slots: int,
    expected: int,
) -> None:
    lines = "\n".join(f"  - {{id: t{i}, tool: slow, input: {{key: t{i}}}}}" for i in range(tasks))
    workflow = write(
        folder, "wide.yaml", f"name: wide\nimports: [fleettools]\n{head}\ntasks:\n{lines}\n"
    )
    # the default lease (10 s): a busy machine must not make a lease run out here
    workers = [fleet.start(dsn, "-j", str(slots), lease=10.0) for _ in range(3)]
    fleet.ready(*workers)
    run = durable("run", workflow, "--db", dsn, "--workers", "--no-live", cwd=folder, check=0)
    assert "succeeded" in run.stdout
    assert runs_of(folder) == Counter({f"t{i}": 1 for i in range(tasks)})
    assert peak(folder) == expected
    for worker in workers:
        assert peak(folder, worker.pid) <= slots
    if slots * 2 < expected:
        assert {pid for _, pid in executions(folder)} == {w.pid for w in workers}


FENCED = """
name: fenced
imports: [fleettools]
tasks:
  - {id: t, tool: step, input: {key: t, first: 3, seconds: 0.2}}
  - {id: after, tool: step, input: {key: after, result: "${t.output}"}}
"""


def test_a_paused_worker_loses_its_task_and_its_late_outcome_is_refused(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, write: Any
) -> None:
    workflow = write(folder, "fenced.yaml", FENCED)
    paused = fleet.worker(dsn)
    run_id = submit(durable, workflow, dsn, folder)
    wait_running(dsn, run_id, folder, "t", paused)
    paused.signal(signal.SIGSTOP)
    taker = fleet.worker(dsn)
    wait_events(dsn, run_id, "run_finished")
    paused.signal(signal.SIGCONT)
    log = paused.wait_log(
        lambda text: f"run {run_id} task t attempt 1" in text, "the paused worker noticed"
    )
    assert (
        f"late outcome refused: run {run_id} task t attempt 1" in log
        or f"lease lost: run {run_id} task t attempt 1 " in log
    ), log
    paused.signal(signal.SIGTERM)
    assert paused.wait() == 0
    assert "stopped: 0 outcomes committed, 1 refused" in paused.text()

    assert [(a, k) for _, a, k, _ in events(dsn, run_id, "t")] == [
        (1, "task_started"),
        (1, "task_retrying"),
        (2, "task_started"),
        (2, "task_succeeded"),
    ]
    retrying = events(dsn, run_id, "t")[1][3]
    assert "lease lost" in json.dumps(retrying), retrying
    assert executions(folder)[:2] == [("t", paused.pid), ("t", taker.pid)]
    assert runs_of(folder) == Counter({"t": 2, "after": 1})
    assert wait_status(durable, dsn, run_id, folder, "succeeded")["tasks"]["t"]["attempts"] == 2


CHAIN = """
name: chain
imports: [fleettools]
tasks:
  - {id: t, tool: step, input: {key: t, seconds: 1}}
  - {id: u, tool: step, input: {key: u, result: "${t.output}"}}
"""


def test_sigterm_lets_the_running_task_finish_and_claims_nothing_more(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, write: Any
) -> None:
    workflow = write(folder, "chain.yaml", CHAIN)
    first = fleet.worker(dsn, "--grace", "10")
    run_id = submit(durable, workflow, dsn, folder)
    wait_running(dsn, run_id, folder, "t", first)
    began = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    assert time.monotonic() - began < 5
    log = first.text()
    assert "stopping: letting 1 running tasks finish" in log, log
    assert "stopped: 1 outcomes committed, 0 refused" in log, log
    assert [(a, k) for _, a, k, _ in events(dsn, run_id, "t")] == [
        (1, "task_started"),
        (1, "task_succeeded"),
    ]
    # it claimed nothing after the signal: `u`, made ready by its commit, waits
    assert work_rows(dsn, run_id) == {"u": "ready"}
    second = fleet.worker(dsn)
    wait_status(durable, dsn, run_id, folder, "succeeded")
    assert executions(folder) == [("t", first.pid), ("u", second.pid)]


HANDED = """
name: handed
imports: [fleettools]
tasks:
  - {id: t, tool: step, input: {key: t, first: 60, seconds: 0.2}}
"""


def test_sigint_hands_the_running_task_back_at_once(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, write: Any
) -> None:
    workflow = write(folder, "handed.yaml", HANDED)
    first = fleet.worker(dsn, "--grace", "30")
    run_id = submit(durable, workflow, dsn, folder)
    wait_running(dsn, run_id, folder, "t", first)
    began = time.monotonic()
    first.signal(signal.SIGINT)
    code = first.wait(timeout=10)
    assert time.monotonic() - began < 5  # not the 60 s the task would take
    assert code == 0, first.text()
    assert "stopped: 1 outcomes committed, 0 refused" in first.text(), first.text()
    history = events(dsn, run_id, "t")
    assert [(a, k) for _, a, k, _ in history] == [(1, "task_started"), (1, "task_retrying")]
    assert f"handed back by worker {first.text().split()[1][:8]}" in json.dumps(history[1][3])
    assert work_rows(dsn, run_id) == {"t": "ready"}
    second = fleet.worker(dsn)
    after = wait_status(durable, dsn, run_id, folder, "succeeded")
    assert after["tasks"]["t"]["attempts"] == 2  # the hand-back was no try: retries is 0
    assert executions(folder) == [("t", first.pid), ("t", second.pid)]


KILLED = """
name: killed
imports: [fleettools]
tasks:
  - {id: q0, tool: step, input: {key: q0}}
  - {id: q1, tool: step, input: {key: q1}}
  - {id: q2, tool: step, input: {key: q2}}
  - {id: s, tool: step, input: {key: s, first: 60, seconds: 0.2}}
  - {id: z, tool: step, input: {key: z, result: ["${q0.output}", "${q1.output}", "${s.output}"]}}
"""


def test_a_killed_workers_task_runs_again_elsewhere_and_committed_ones_never(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, write: Any, stop: Any
) -> None:
    workflow = write(folder, "killed.yaml", KILLED)
    first = fleet.worker(dsn)
    run_id = submit(durable, workflow, dsn, folder)
    wait_events(dsn, run_id, "task_succeeded", 3)
    wait_running(dsn, run_id, folder, "s", first)
    stop(first.process)  # SIGKILL
    second = fleet.worker(dsn)
    final = wait_status(durable, dsn, run_id, folder, "succeeded")
    assert runs_of(folder) == Counter({"q0": 1, "q1": 1, "q2": 1, "s": 2, "z": 1})
    assert [key for key, pid in executions(folder) if pid == second.pid] == ["s", "z"]
    assert final["tasks"]["s"]["attempts"] == 2
    assert all(final["tasks"][t]["attempts"] == 1 for t in ("q0", "q1", "q2", "z"))
    kinds = Counter((t, k) for t, _, k, _ in events(dsn, run_id))
    assert all(kinds[(t, "task_succeeded")] == 1 for t in ("q0", "q1", "q2", "s", "z"))
    lost = [d for t, _, k, d in events(dsn, run_id, "s") if k == "task_retrying"]
    assert len(lost) == 1 and "lease lost" in json.dumps(lost[0])
    assert work_rows(dsn, run_id) == {}


SLOW_CHAIN = """
name: slow_chain
imports: [fleettools]
tasks:
  - {id: a, tool: step, input: {key: a, seconds: 1}}
  - {id: b, tool: step, input: {key: b, seconds: 0.4, result: "${a.output}"}}
  - {id: c, tool: step, input: {key: c, seconds: 0.4, result: "${b.output}"}}
"""


def follow_slow_chain(
    folder: Path, dsn: str, fleet: Fleet, write: Any, start: Any
) -> subprocess.Popen[Any]:
    """A worker, and `durable run --workers` handing it SLOW_CHAIN and following it."""
    workflow = write(folder, "slow_chain.yaml", SLOW_CHAIN)
    fleet.worker(dsn)
    return start("run", workflow, "--db", dsn, "--workers", "--no-live", cwd=folder)


def assert_the_workers_finished_it(durable: Any, dsn: str, run_id: str, folder: Path) -> None:
    """The run succeeds without its submitter, each task of SLOW_CHAIN run once."""
    final = wait_status(durable, dsn, run_id, folder, "succeeded")
    assert {t: s["state"] for t, s in final["tasks"].items()} == dict.fromkeys("abc", "succeeded")
    assert runs_of(folder) == Counter("abc")


def test_the_run_goes_on_when_its_submitter_is_killed(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, write: Any, start: Any, stop: Any
) -> None:
    from conftest import Lines

    submitter = follow_slow_chain(folder, dsn, fleet, write, start)
    try:
        first = Lines(submitter.stdout).next(timeout=20)
        assert first.startswith("run ") and " started" in first, first
        os.killpg(submitter.pid, signal.SIGKILL)
        assert submitter.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop(submitter)
    run_id = first.split()[1]
    assert count(dsn, run_id, "run_finished") == 0  # it was killed mid-run
    assert_the_workers_finished_it(durable, dsn, run_id, folder)


def test_a_submitter_whose_output_closes_stops_following_and_the_run_goes_on(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, write: Any, start: Any, stop: Any
) -> None:
    """`durable run --workers | head -1`: the run is the workers', not the follower's."""
    from conftest import read_first_line_and_quit

    submitter = follow_slow_chain(folder, dsn, fleet, write, start)
    try:
        first, code, stderr = read_first_line_and_quit(submitter, timeout=30)
    finally:
        stop(submitter)
    assert code == 1, stderr
    assert first.startswith("run ") and " started" in first, first
    run_id = first.split()[1]
    assert stderr.startswith(
        f"note: the output was closed (Broken pipe): stopped following run {run_id}; "
        f"the workers go on with it"
    ), stderr
    assert "Traceback" not in stderr, stderr
    assert_the_workers_finished_it(durable, dsn, run_id, folder)


def test_workers_lists_the_live_workers(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, stop: Any
) -> None:
    first = fleet.start(dsn, "-j", "3", "--tools", "fleettools")
    second = fleet.start(dsn, "-j", "5")
    fleet.ready(first, second)

    def listed() -> list[dict[str, Any]]:
        return json.loads(durable("workers", "--db", dsn, "--json", cwd=folder, check=0).stdout)

    rows = {row["pid"]: row for row in listed()}
    assert set(rows) == {first.pid, second.pid}
    assert (rows[first.pid]["slots"], rows[second.pid]["slots"]) == (3, 5)
    assert {"step", "slow", "echo"} <= set(rows[first.pid]["tools"])
    assert "step" not in rows[second.pid]["tools"]
    assert all(row["held"] == 0 and row["heartbeat_age"] < 5 for row in rows.values())
    text = durable("workers", "--db", dsn, cwd=folder, check=0).stdout
    assert text.splitlines()[0].split()[-1] == "TOOLS"
    line = {pid: next(x for x in text.splitlines() if f" {pid} " in x) for pid in rows}
    assert "step" in line[first.pid] and "step" not in line[second.pid]  # the table's tools
    assert "echo" in line[second.pid]

    first.signal(signal.SIGTERM)  # a worker that stops says so
    assert first.wait() == 0
    assert [row["pid"] for row in listed()] == [second.pid]
    stop(second.process)  # one killed is gone once its heartbeat is older than its lease
    wait_until(lambda: listed() == [], 10, "the killed worker is no longer listed")
    assert durable("workers", "--db", dsn, cwd=folder, check=0).stdout == "no live workers\n"


@pytest.mark.sqlite_only("a SQLite journal for --workers is refused (postgres mode rewrites it)")
def test_run_workers_on_a_sqlite_journal_is_refused(
    folder: Path, durable: Any, write: Any, no_traceback: Any
) -> None:
    workflow = write(folder, "chain.yaml", CHAIN)
    on_sqlite = durable("run", workflow, "--workers", "--db", folder / "x.db", cwd=folder)
    no_traceback(on_sqlite)
    assert on_sqlite.returncode == 2
    assert len(on_sqlite.stderr.splitlines()) == 1 and "PostgreSQL" in on_sqlite.stderr
    assert not (folder / "x.db").exists()


def test_a_worker_refuses_bad_input_in_one_line(
    folder: Path, dsn: str, durable: Any, no_traceback: Any
) -> None:
    nowhere = "postgresql://postgres@127.0.0.1:1/x"
    unreachable = durable("worker", "--db", nowhere, cwd=folder, timeout=30)
    no_traceback(unreachable)
    assert unreachable.returncode == 2
    lines = unreachable.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {nowhere}: cannot connect"), lines

    unknown = durable("worker", "--db", dsn, "--tools", "no_such_module", cwd=folder)
    no_traceback(unknown)
    assert unknown.returncode == 2
    assert len(unknown.stderr.splitlines()) == 1 and "no_such_module" in unknown.stderr


LATE = """
name: late
imports: [late_tools]
tasks:
  - {id: a, tool: echo, input: 1}
  - {id: b, tool: late, input: {x: "${a.output}"}}
  - {id: c, tool: echo, input: "${b.output}"}
"""


def test_a_task_waits_for_a_worker_that_has_its_tool(
    tmp_path: Path, dsn: str, durable: Any, fleet: Fleet, write: Any
) -> None:
    with late_tools_then_elsewhere(tmp_path, write) as (submitted, elsewhere):
        workflow = write(submitted, "late.yaml", LATE)
        run_id = submit(durable, workflow, dsn, submitted)
    without = fleet.worker(dsn)
    wait_events(dsn, run_id, "task_succeeded", task_id="a")
    time.sleep(1.5)  # time for a few polls: nobody takes `b`
    assert work_rows(dsn, run_id) == {"b": "ready"}
    shown = status(durable, dsn, run_id, tmp_path)
    assert shown["tasks"]["b"]["state"] == "pending", shown
    assert count(dsn, run_id, "task_started", "b") == 0
    assert without.process.poll() is None
    fleet.worker(dsn, "--tools", "late_tools", cwd=elsewhere)
    final = wait_status(durable, dsn, run_id, tmp_path, "succeeded")
    assert final["tasks"]["c"]["output"] == {"late": 1}


def test_a_worker_without_a_runs_tool_loads_the_run_once_and_then_leaves_it_alone(
    tmp_path: Path, dsn: str, durable: Any, fleet: Fleet, write: Any
) -> None:
    """Its looks for work (every 0.5 s) list only runs with work of its tools: it
    does not take the run's lock and fold it at every look to claim nothing."""
    tasks = "".join(f"  - {{id: t{i}, tool: late, input: {{x: {i}}}}}\n" for i in range(3))
    with late_tools_then_elsewhere(tmp_path, write) as (submitted, elsewhere):
        workflow = write(
            submitted, "late.yaml", f"name: late\nimports: [late_tools]\ntasks:\n{tasks}"
        )
        run_id = submit(durable, workflow, dsn, submitted)
    without = fleet.worker(dsn)
    time.sleep(2.5)  # five looks
    assert work_rows(dsn, run_id) == {"t0": "ready", "t1": "ready", "t2": "ready"}
    # one transaction: the look that found the run new to it, and learnt its tools
    assert stop_and_count(without)["transactions"] == 1
    fleet.worker(dsn, "--tools", "late_tools", cwd=elsewhere)
    final = wait_status(durable, dsn, run_id, tmp_path, "succeeded")
    assert final["tasks"]["t2"]["output"] == {"late": 2}


AT_ITS_LIMIT = """
name: limited
imports: [fleettools]
{limit}
tasks:
  - {{id: a, tool: held, input: {{key: a, until: go}}}}
  - {{id: b, tool: held, input: {{key: b, until: go}}}}
  - {{id: c, tool: held, input: {{key: c, until: go}}}}
"""


@pytest.mark.parametrize("limit", ["max_concurrency: 1", "limits: {held: 1}"])
def test_a_worker_leaves_alone_a_run_at_its_limit(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, write: Any, limit: str
) -> None:
    """Three ready tasks, and a limit of one at a time (the run's, or its tool's):
    while one runs, another worker with free slots does not take the run's lock at
    every look (every 0.5 s here) to claim nothing. It knows the tool's limit once
    it has loaded the run, which its first look does."""
    workflow = write(folder, "limited.yaml", AT_ITS_LIMIT.format(limit=limit))
    first = fleet.worker(dsn, lease=60)
    run_id = submit(durable, workflow, dsn, folder)
    wait_running(dsn, run_id, folder, "a", first)
    second = fleet.worker(dsn, lease=60)
    time.sleep(2.5)  # five looks
    assert work_rows(dsn, run_id) == {"a": "running", "b": "ready", "c": "ready"}
    loads = 0 if limit.startswith("max_concurrency") else 1
    assert stop_and_count(second)["transactions"] == loads
    (folder / "go").touch()
    wait_status(durable, dsn, run_id, folder, "succeeded")
    assert runs_of(folder) == Counter({"a": 1, "b": 1, "c": 1})


def stop_and_count(worker: Worker) -> dict[str, int]:
    """Stop `worker` (SIGTERM); the counts of its last line (`stopped: ... transactions; ...`)."""
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    line = worker.text().strip().splitlines()[-1]
    found = re.search(
        r"stopped: (\d+) outcomes committed, (\d+) refused, (\d+) transactions; "
        r"(\d+) commits in one round trip, (\d+) redone the long way",
        line,
    )
    assert found, line
    names = ("committed", "refused", "transactions", "fast", "moved")
    return dict(zip(names, map(int, found.groups()), strict=True))


QUIET = "name: quiet\nimports: [fleettools]\ntasks:\n  - {id: t0, tool: step, input: {key: t0}}\n"
QUIET += "".join(
    f'  - {{id: t{i}, tool: step, input: {{key: t{i}, result: "${{t{i - 1}.output.key}}"}}}}\n'
    for i in range(1, 12)
)


def test_a_quiet_chain_commits_each_step_in_one_round_trip(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, write: Any
) -> None:
    """Alone on a run, a worker decides each commit from what it knows and sends it
    in one statement (`FleetStore._commit_fast`): every outcome of the chain, the
    last with the run's end and its summary. The journal is what the long way writes."""
    workflow = write(folder, "quiet.yaml", QUIET)
    worker = fleet.worker(dsn, lease=10)  # no renewal late on a loaded machine
    run_id = submit(durable, workflow, dsn, folder)
    final = wait_status(durable, dsn, run_id, folder, "succeeded")
    counts = stop_and_count(worker)
    assert counts["committed"] == counts["fast"] == 12, counts
    assert counts["refused"] == counts["moved"] == 0, counts

    assert [(t, a, k) for t, a, k, _ in events(dsn, run_id) if t] == [
        (f"t{i}", 1, kind) for i in range(12) for kind in ("task_started", "task_succeeded")
    ]
    assert final["tasks"]["t11"]["output"] == {"key": "t11", "result": "t10"}
    assert runs_of(folder) == Counter(f"t{i}" for i in range(12))
    # the summary was written with the run's end, at its last event
    ((last_seq, top),) = pg.fetch(
        dsn,
        "SELECT s.last_seq, (SELECT max(seq) FROM durable.events e WHERE e.run_id = s.run_id)"
        f" FROM durable.summaries s WHERE s.run_id = '{run_id}'",
    )
    assert last_seq == top
    assert work_rows(dsn, run_id) == {}
    durable("check", run_id, "--db", dsn, cwd=folder, check=0)  # checksums, a replay


MOVED = """
name: moved
imports: [fleettools]
tasks:
  - {id: t, tool: held, input: {key: t, until: go}}
  - {id: u, tool: step, input: {key: u, result: "${t.output}"}}
"""

#: A run that fills the worker's other slot (`test_a_fast_commit_of_a_run_...`).
FILLER = """
name: filler
imports: [fleettools]
tasks:
  - {id: x, tool: held, input: {key: x, until: go-x}}
"""


def test_a_fast_commit_of_a_run_cancelled_meanwhile_writes_nothing_and_is_refused(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, write: Any
) -> None:
    """The worker claims `t`, alone on the run: its next commit may go in one
    statement. `durable cancel` ends the run while `t` runs. The fast commit of
    `t` finds the cancel's events after its own and writes nothing; the long way
    folds the run again, and its fence refuses the outcome (the cancel took the
    row).

    Nothing else may notice the cancel first. The lease is long, so that the
    worker's renewal does not stop `t` before it ends. And the worker's other slot
    is taken by a second run's task before the cancel: a worker with a free slot
    looks for work every 0.5 s, and a look drops its copy of a run that ended (the
    commit of `t` would then go the long way at once, and this test would pass or
    fail by the clock, as it once did)."""
    workflow = write(folder, "moved.yaml", MOVED)
    worker = fleet.worker(dsn, "-j", "2", lease=60)
    run_id = submit(durable, workflow, dsn, folder)
    wait_running(dsn, run_id, folder, "t", worker)
    filler = submit(durable, write(folder, "filler.yaml", FILLER), dsn, folder)
    wait_running(dsn, filler, folder, "x", worker)
    durable("cancel", run_id, "--db", dsn, cwd=folder, check=0)
    (folder / "go").touch()
    worker.wait_log(lambda text: "late outcome refused" in text, "the outcome refused")
    (folder / "go-x").touch()
    wait_status(durable, dsn, filler, folder, "succeeded")
    counts = stop_and_count(worker)
    assert counts == {
        "committed": 1,  # the filler's `x`
        "refused": 1,
        "transactions": counts["transactions"],
        "fast": 0,
        "moved": 1,
    }, counts

    assert [(t, a, k) for t, a, k, _ in events(dsn, run_id) if t] == [
        ("t", 1, "task_started"),
        ("t", 1, "task_cancelled"),
    ]
    assert status(durable, dsn, run_id, folder)["status"] == "cancelled"
    assert runs_of(folder) == Counter({"t": 1, "x": 1})
    assert work_rows(dsn, run_id) == {}
    durable("check", run_id, "--db", dsn, cwd=folder, check=0)  # checksums, a replay


def test_a_run_pruned_while_a_worker_ran_its_task_does_not_stop_the_worker(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, write: Any
) -> None:
    """`durable cancel`, then `durable prune`, while the worker still runs one of the
    run's tasks. Its outcome has no run to go to: it is refused, and the worker
    goes on. The worker exited (exit 2, "run not found") and left its other runs
    stranded, their tasks to be run again by another worker."""
    worker = fleet.worker(dsn, "-j", "2", lease=60)
    run_id = submit(durable, write(folder, "moved.yaml", MOVED), dsn, folder)
    wait_running(dsn, run_id, folder, "t", worker)
    durable("cancel", run_id, "--db", dsn, cwd=folder, check=0)
    # A worker with a free slot looks for work every 0.5 s, and drops its copy of a
    # run that ended: the outcome of `t` then has to load the run again.
    time.sleep(1.5)
    durable("prune", run_id, "--db", dsn, cwd=folder, check=0)
    (folder / "go").touch()
    worker.wait_log(lambda text: "late outcome refused" in text, "the outcome refused")
    assert worker.process.poll() is None, worker.text()
    after = submit(durable, write(folder, "quiet.yaml", QUIET), dsn, folder)
    wait_status(durable, dsn, after, folder, "succeeded")
    assert stop_and_count(worker)["refused"] == 1
    assert runs_of(folder)["t"] == 1


RETRIED = """
name: retried
imports: [fleettools, flaky_tools]
tasks:
  - {id: r, tool: flaky, input: {key: r, until: go-r}, retries: 1, retry_delay: 3}
  - {id: c, tool: held, input: {key: c, until: go-c}}
  - {id: d, tool: held, input: {key: d, until: go-d}, dependencies: [c]}
  - {id: e, tool: held, input: {key: e, until: go-e}, dependencies: [d]}
"""

FLAKY_TOOLS = """
import asyncio
import os

import durable


@durable.tool
async def flaky(key, until):
    # once the file `until` is there: fail the first time, then succeed
    while not os.path.exists(os.path.join({here!r}, until)):
        await asyncio.sleep(0.02)
    marker = os.path.join({here!r}, key + ".failed")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError(key + " fails the first time")
    return {{"key": key}}
"""


def test_a_fast_commit_of_a_run_that_moved_on_is_committed_the_long_way(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, write: Any
) -> None:
    """Worker B alone has `flaky`: `r` fails once A holds `c`, and waits 3 s for
    its retry. Meanwhile A commits `d` with nothing of the run running elsewhere
    and nothing claimable for it: the run is quiet, A's next commit may go fast.
    B claims `r` again once its delay ends. A's fast commit of `e` finds B's event
    after its own and writes nothing; A folds the run again and commits `e` the
    long way, accepted."""
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir()
    workflow = write(folder, "retried.yaml", RETRIED)
    write(folder, "flaky_tools.py", FLAKY_TOOLS.format(here=str(folder)))
    run_id = submit(durable, workflow, dsn, folder)
    (folder / "flaky_tools.py").rename(elsewhere / "flaky_tools.py")  # B's machine only
    other = fleet.worker(dsn, "--tools", "flaky_tools", "-j", "1", cwd=elsewhere, lease=60)
    wait_events(dsn, run_id, "task_started", task_id="r")
    # one slot: while it holds a task, A does not look for work, so no transaction
    # of its own folds B's events before its fast commit does
    alone = fleet.worker(dsn, "-j", "1", lease=60)
    wait_running(dsn, run_id, folder, "c", alone)
    (folder / "go-r").touch()
    wait_events(dsn, run_id, "task_retrying", task_id="r")
    (folder / "go-c").touch()
    wait_running(dsn, run_id, folder, "d", alone)
    (folder / "go-d").touch()
    wait_running(dsn, run_id, folder, "e", alone)
    assert count(dsn, run_id, "task_started", "r") == 1  # its delay is not over yet
    wait_events(dsn, run_id, "task_started", n=2, task_id="r")
    (folder / "go-e").touch()
    final = wait_status(durable, dsn, run_id, folder, "succeeded")
    counts = stop_and_count(alone)
    assert (counts["committed"], counts["refused"], counts["moved"]) == (3, 0, 1), counts
    stop_and_count(other)

    assert {t: s["attempts"] for t, s in final["tasks"].items()} == {"r": 2, "c": 1, "d": 1, "e": 1}
    assert final["tasks"]["e"]["output"] == {"key": "e"}
    assert executions(folder) == [("c", alone.pid), ("d", alone.pid), ("e", alone.pid)]
    assert [k for _, _, k, _ in events(dsn, run_id, "e")] == ["task_started", "task_succeeded"]
    durable("check", run_id, "--db", dsn, cwd=folder, check=0)  # checksums, a replay


def test_a_worker_whose_log_reader_has_gone_goes_on_and_stops_on_sigterm(
    folder: Path, dsn: str, durable: Any, start: Any, stop: Any, write: Any
) -> None:
    """`durable worker ... 2>&1 | shipper`, and the shipper dies: the worker's log
    goes silent, its work goes on, and SIGTERM still stops it cleanly (its
    "stopping" line used to raise in the signal handler, and the worker never stopped)."""
    workflow = write(folder, "quiet.yaml", QUIET)
    worker = start("worker", "--db", dsn, "--lease", "10", cwd=folder, stdout=subprocess.DEVNULL)
    try:
        assert "started on" in worker.stderr.readline()
        worker.stderr.close()  # the reader has gone
        run_id = submit(durable, workflow, dsn, folder)
        final = wait_status(durable, dsn, run_id, folder, "succeeded")
        assert final["tasks"]["t11"]["output"] == {"key": "t11", "result": "t10"}
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    finally:
        stop(worker)


FLAKY = """
name: flaky
imports: [fleettools]
tasks:
  - {id: a, tool: step, input: {key: a}}
  - {id: b, tool: step, input: {key: b, fail_first: true, result: "${a.output}"}}
  - {id: c, tool: step, input: {key: c, result: "${b.output}"}}
  - {id: d, tool: step, input: {key: d, seconds: 0.3}}
"""


def test_resume_workers_runs_again_only_what_did_not_succeed(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, write: Any
) -> None:
    workflow = write(folder, "flaky.yaml", FLAKY)
    fleet.worker(dsn)
    failed = durable("run", workflow, "--db", dsn, "--workers", "--no-live", cwd=folder, check=1)
    run_id = failed.stdout.split()[1]
    before = status(durable, dsn, run_id, folder)
    assert before["status"] == "failed"
    assert before["tasks"]["b"]["state"] == "failed"
    assert "fails the first time" in before["tasks"]["b"]["error"]
    assert before["tasks"]["c"]["state"] != "succeeded"
    assert runs_of(folder) == Counter("abd")

    durable("resume", run_id, "--db", dsn, "--workers", "--no-live", cwd=folder, check=0)
    after = status(durable, dsn, run_id, folder)
    assert after["status"] == "succeeded"
    assert runs_of(folder) == Counter({"a": 1, "b": 2, "c": 1, "d": 1})
    assert {t: s["attempts"] for t, s in after["tasks"].items()} == {"a": 1, "b": 2, "c": 1, "d": 1}
    assert after["tasks"]["c"]["output"]["result"]["result"]["key"] == "a"
    again = durable("resume", run_id, "--db", dsn, "--workers", "--no-live", cwd=folder, check=0)
    assert "already succeeded" in again.stdout
    assert runs_of(folder) == Counter({"a": 1, "b": 2, "c": 1, "d": 1})


def test_a_backlog_for_a_missing_tool_does_not_starve_other_runs(
    tmp_path: Path, dsn: str, durable: Any, fleet: Fleet, write: Any
) -> None:
    tasks = "\n".join(f"  - {{id: t{i}, tool: late, input: {{x: {i}}}}}" for i in range(300))
    with late_tools_then_elsewhere(tmp_path, write) as (submitted, _):
        big = write(submitted, "big.yaml", f"name: big\nimports: [late_tools]\ntasks:\n{tasks}\n")
        small = write(
            submitted, "small.yaml", "name: small\ntasks:\n  - {id: e, tool: echo, input: 1}\n"
        )
        submit(durable, big, dsn, submitted)  # 300 ready tasks that no worker can run yet
        run_id = submit(durable, small, dsn, submitted)
    fleet.worker(dsn)  # it has echo: the small run is its to finish
    wait_status(durable, dsn, run_id, tmp_path, "succeeded", timeout=5)


def test_a_runs_summary_catches_up_once_its_worker_is_idle(
    folder: Path, dsn: str, durable: Any, fleet: Fleet, write: Any
) -> None:
    """A worker writes a run's summary with its commits at most every 50 ms. Here
    `mid`'s commit (200 ms after the last) writes it; `quick`'s, a moment later,
    does not: it is left behind. Once the worker is idle (`long` runs for seconds),
    the summary is brought up to the run's last event, so `durable runs` shows what
    runs now, not what ran 50 ms before."""
    from durable.summary import RunSummary

    workflow = write(
        folder,
        "catch_up.yaml",
        """
name: catch-up
imports: [fleettools]
tasks:
  - {id: mid, tool: step, input: {key: mid, seconds: 0.2}}
  - {id: quick, tool: echo, input: {n: 1}, dependencies: [mid]}
  - {id: long, tool: step, input: {key: long, seconds: 4}, dependencies: [quick]}
""",
    )
    worker = fleet.worker(dsn)
    run_id = submit(durable, workflow, dsn, folder)
    wait_executed(folder, "long", worker)

    def summary_current() -> RunSummary | None:
        rows = pg.fetch(
            dsn,
            "SELECT s.last_seq, s.data, (SELECT max(seq) FROM durable.events e"
            f" WHERE e.run_id = s.run_id) FROM durable.summaries s WHERE s.run_id = '{run_id}'",
        )
        if not rows or rows[0][0] != rows[0][2]:
            return None
        return msgspec.msgpack.decode(rows[0][1], type=RunSummary)

    summary = wait_until(summary_current, 1.5, "the summary caught up with the run")
    assert summary.counts == {"succeeded": 2, "running": 1}
    listed = json.loads(durable("runs", "--db", dsn, "--json", cwd=folder).stdout)
    assert [run["status"] for run in listed if run["run_id"] == run_id] == ["running"]
