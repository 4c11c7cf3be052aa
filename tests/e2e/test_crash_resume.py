"""Crash and resume, end to end: SIGKILL the real `durable` command mid-run, resume it.

The workflow is generated: 202 tasks mixing a fan-out, a chain, diamonds and a final
join, all calling one tool from a `tools.py` written beside it. The tool appends its
task id to a side-effect file named by the `CRASH_LOG` environment variable when it
begins (and `ID returned` when it is done), so each process of a run (the first
`run`, each `resume`) writes its own file, and the test can tell which session ran
what.

Kill moments are found by watching the journal, never by sleeping: a read-only
SQLite connection polls the count of committed events for the run, and the process
is killed as soon as the count reaches its target. Whatever the journal holds after
the kill was committed before it.

What must hold after the resume (the at-least-once contract of the README's
"Guarantees"):

- the run succeeded, every task succeeded, and outputs equal an uninterrupted run's;
- a task whose `task_succeeded` was committed before a kill never runs again;
- per kill, at most `max_concurrency` tasks run a second time, even when the journal
  is slow to commit;
- no task runs twice within one process.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

CONCURRENCY = 8
FAN = 60
CHAIN = 40
DIAMONDS = 25
TASK_COUNT = 1 + FAN + CHAIN + 4 * DIAMONDS + 1
POLL_SECONDS = 0.002
DEADLINE_SECONDS = 60.0

TOOLS = '''\
"""The crash test's tool: a side effect, a short sleep, and a deterministic output."""

from __future__ import annotations

import os
import time
import zlib

import durable


@durable.tool
def step(id: str, parts: list[int] | None = None) -> dict:
    fd = os.open(os.environ["CRASH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{id}\\n".encode())
        time.sleep(0.02)
        parts = parts or []
        total = (zlib.crc32(id.encode()) + 31 * sum(parts)) % 1_000_000_007
        os.write(fd, f"{id} returned\\n".encode())
    finally:
        os.close(fd)
    return {"id": id, "sum": total, "n": len(parts)}
'''


def workflow_document() -> dict[str, Any]:
    """The 202-task workflow: fan-out, chain, diamonds, and a join over all three."""

    def task(task_id: str, *upstream: str) -> dict[str, Any]:
        parts = [f"${{{up}.output.sum}}" for up in upstream]
        return {"id": task_id, "tool": "step", "input": {"id": task_id, "parts": parts}}

    tasks = [task("root")]
    fan = [f"fan_{i:03d}" for i in range(FAN)]
    tasks += [task(name, "root") for name in fan]
    chain = [f"chain_{i:03d}" for i in range(CHAIN)]
    tasks += [task(chain[0])]
    tasks += [task(chain[i], chain[i - 1]) for i in range(1, CHAIN)]
    joins = []
    for i in range(DIAMONDS):
        a, b, c, d = (f"diamond_{i:02d}_{side}" for side in "abcd")
        tasks += [task(a, fan[i]), task(b, a), task(c, a), task(d, b, c)]
        joins.append(d)
    tasks.append(task("join", fan[-1], chain[-1], *joins))
    assert len(tasks) == TASK_COUNT
    return {
        "name": "crash_resume",
        "max_concurrency": CONCURRENCY,
        "imports": ["tools"],
        "tasks": tasks,
    }


# -- driving the command ----------------------------------------------------------


def session_env(log: Path) -> dict[str, str]:
    return {"CRASH_LOG": str(log)}


@pytest.fixture(scope="session")
def at_once(start: Callable[..., subprocess.Popen[str]], stop: Callable[..., None]) -> AtOnce:
    """Run durable commands at the same moment (they only read); each must exit 0.

    Returns their stdout. Starting them together is deliberate: right after a
    SIGKILL, several readers opening the journal at once is what users do.
    """

    def run(*commands: list[str], cwd: Path, env: dict[str, str] | None = None) -> list[str]:
        processes = [start(*args, cwd=cwd, env=env) for args in commands]
        try:
            outputs = []
            for args, process in zip(commands, processes, strict=True):
                stdout, stderr = process.communicate(timeout=60)
                assert process.returncode == 0, f"durable {' '.join(args)}: {stdout}{stderr}"
                outputs.append(stdout)
            return outputs
        finally:
            for process in processes:
                stop(process)

    return run


AtOnce = Callable[..., list[str]]


def kill(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    if process.stderr:
        process.stderr.close()


def committed_successes(journal_rows: Callable[..., list[Any]], db: Path, run_id: str) -> set[str]:
    rows = journal_rows(
        db,
        "SELECT task_id FROM events WHERE run_id = ? AND kind IN ('task_succeeded', 'task_ran')",
        (run_id,),
    )
    return {task_id for (task_id,) in rows}


class Session:
    """What one process ran, from its side-effect file: tool calls begun, and returned."""

    def __init__(self, log: Path) -> None:
        lines = log.read_text().splitlines() if log.exists() else []
        self.ran = Counter(line for line in lines if " " not in line)
        self.returned = {line.split()[0] for line in lines if line.endswith(" returned")}


def assert_interrupted(at_once: AtOnce, run_id: str, db: Path, cwd: Path) -> None:
    """Right after a kill, readers started together see an interrupted run, and the
    journal checks whole (`durable check` exits 0: `at_once` requires it)."""
    runs, status, _ = at_once(
        ["runs", "--db", str(db), "--json"],
        ["status", run_id, "--db", str(db), "--json"],
        ["check", "--db", str(db)],
        cwd=cwd,
    )
    statuses = {doc["run_id"]: doc["status"] for doc in json.loads(runs)}
    assert statuses[run_id] == "interrupted"
    assert json.loads(status)["status"] == "interrupted"


def resume_to_end(
    at_once: AtOnce, run_id: str, db: Path, cwd: Path, log: Path, *options: str
) -> None:
    at_once(["resume", run_id, "--db", str(db), *options], cwd=cwd, env=session_env(log))


def assert_final(
    at_once: AtOnce, run_id: str, db: Path, cwd: Path, reference: dict[str, Any]
) -> None:
    status, output, _ = at_once(
        ["status", run_id, "--db", str(db), "--json"],
        ["output", run_id, "--db", str(db)],
        ["check", run_id, "--db", str(db)],
        cwd=cwd,
    )
    document = json.loads(status)
    assert document["status"] == "succeeded"
    assert len(document["tasks"]) == TASK_COUNT
    assert {task["state"] for task in document["tasks"].values()} == {"succeeded"}
    assert json.loads(output) == reference


def assert_sessions(sessions: list[Session], committed: list[set[str]]) -> None:
    """`sessions[k]`: what process k ran; `committed[k]`: successes committed when it ended.

    A task committed by the end of session k never runs in a later session; what ran
    in session k without committing runs again later, and there are at most
    `CONCURRENCY` such tasks: one per slot.
    """
    everything = sum((session.ran for session in sessions), Counter())
    assert len(committed[-1]) == TASK_COUNT
    assert set(everything) == committed[-1]
    for k, session in enumerate(sessions):
        doubled = sorted(task for task, n in session.ran.items() if n > 1)
        assert not doubled, f"session {k} ran tasks twice: {doubled}"
    for k in range(len(sessions) - 1):
        assert committed[k] <= set(sum((s.ran for s in sessions[: k + 1]), Counter()))
        later = set(sum((s.ran for s in sessions[k + 1 :]), Counter()))
        rerun = later & committed[k]
        assert not rerun, f"committed before kill {k}, yet ran again: {sorted(rerun)}"
        lost = set(sessions[k].ran) - committed[k]
        assert lost <= later, f"ran in session {k}, never committed nor run again"
        returned = sorted(lost & sessions[k].returned)
        assert len(lost) <= CONCURRENCY, (
            f"kill {k}: {len(lost)} tasks ran without a committed success (> {CONCURRENCY}); "
            f"{len(returned)} of them had returned, their success not yet committed: {returned}"
        )
    assert all(everything[task] == 1 for task in committed[0])
    twice = [task for task, n in everything.items() if n > 1]
    assert len(twice) <= CONCURRENCY * (len(sessions) - 1)


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("crash_workflow")
    (folder / "tools.py").write_text(TOOLS)
    path = folder / "workflow.yaml"
    path.write_text(yaml.safe_dump(workflow_document(), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def reference(
    at_once: AtOnce, workflow: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Outputs of the same workflow run once without interruption."""
    folder = tmp_path_factory.mktemp("crash_reference")
    db, log = folder / "journal.db", folder / "log-0"
    run = ["run", str(workflow), "--db", str(db), "--run-id", "reference"]
    at_once(run, cwd=folder, env=session_env(log))
    session = Session(log)
    assert len(session.ran) == TASK_COUNT and set(session.ran.values()) == {1}
    (output,) = at_once(["output", "reference", "--db", str(db)], cwd=folder)
    outputs = json.loads(output)
    assert len(outputs) == TASK_COUNT
    assert outputs["join"]["n"] == 2 + DIAMONDS
    return outputs


# -- tests ------------------------------------------------------------------------

LATE = math.ceil(0.95 * TASK_COUNT)


def kill_moments() -> list[Any]:
    moments = [
        pytest.param("task_started", 1, id="early-first-start"),
        pytest.param("task_succeeded", 1, id="early-first-success"),
        pytest.param("task_succeeded", LATE, id="late-95pct"),
    ]
    for seed in (1, 2, 3):
        target = random.Random(seed).randint(2, LATE - 1)
        moments.append(pytest.param("task_succeeded", target, id=f"seed{seed}-at{target}"))
    return moments


@pytest.fixture
def launch(start: Callable[..., subprocess.Popen[str]], stop: Callable[..., None]) -> Iterator[Any]:
    """Start `durable ARGS` as one session of a run, its side effects logged to `log`."""
    started: list[subprocess.Popen[str]] = []

    def launch_session(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[str]:
        process = start(*args, cwd=cwd, env=session_env(log), stdout=subprocess.DEVNULL)
        started.append(process)
        return process

    yield launch_session
    for process in started:
        stop(process)


@pytest.fixture
def kill_when(wait_for_events: Callable[..., int]) -> Callable[..., None]:
    """SIGKILL the process as soon as the journal holds `target` events of `kind`."""

    def kill_at(
        process: subprocess.Popen[str], db: Path, run_id: str, kind: str, target: int
    ) -> None:
        wait_for_events(
            db, run_id, kind, target, process=process, timeout=DEADLINE_SECONDS, poll=POLL_SECONDS
        )
        kill(process)

    return kill_at


# `--quiet`: nobody watches the run, and the engine journals an attempt's events by
# their fields (`Engine._emit_started`, `Engine._succeed`) rather than as objects.
@pytest.mark.parametrize("output", [[], ["--quiet"]], ids=["lines", "quiet"])
@pytest.mark.parametrize(("kind", "target"), kill_moments())
def test_kill_then_resume(
    launch: Any,
    kill_when: Callable[..., None],
    at_once: AtOnce,
    journal_rows: Callable[..., list[Any]],
    kind: str,
    target: int,
    output: list[str],
    workflow: Path,
    reference: dict[str, Any],
    tmp_path: Path,
) -> None:
    db, run_id = tmp_path / "journal.db", "crash"
    logs = [tmp_path / "log-0", tmp_path / "log-1"]

    args = ["run", str(workflow), "--db", str(db), "--run-id", run_id, *output]
    process = launch(args, tmp_path, logs[0])
    kill_when(process, db, run_id, kind, target)
    before = committed_successes(journal_rows, db, run_id)
    if kind == "task_succeeded":
        assert len(before) >= target
    assert len(before) < TASK_COUNT
    assert_interrupted(at_once, run_id, db, tmp_path)

    resume_to_end(at_once, run_id, db, tmp_path, logs[1], *output)
    assert_final(at_once, run_id, db, tmp_path, reference)
    after = committed_successes(journal_rows, db, run_id)
    assert_sessions([Session(log) for log in logs], [before, after])


@pytest.mark.parametrize("seed", [7])
def test_kill_a_resume_then_resume_again(
    launch: Any,
    kill_when: Callable[..., None],
    at_once: AtOnce,
    journal_rows: Callable[..., list[Any]],
    seed: int,
    workflow: Path,
    reference: dict[str, Any],
    tmp_path: Path,
) -> None:
    db, run_id = tmp_path / "journal.db", "crash-twice"
    logs = [tmp_path / f"log-{k}" for k in range(3)]
    rng = random.Random(seed)

    process = launch(["run", str(workflow), "--db", str(db), "--run-id", run_id], tmp_path, logs[0])
    kill_when(process, db, run_id, "task_succeeded", rng.randint(20, TASK_COUNT // 3))
    first = committed_successes(journal_rows, db, run_id)
    assert_interrupted(at_once, run_id, db, tmp_path)

    process = launch(["resume", run_id, "--db", str(db)], tmp_path, logs[1])
    target = len(first) + max(1, (LATE - len(first)) * rng.randint(3, 7) // 10)
    kill_when(process, db, run_id, "task_succeeded", target)
    second = committed_successes(journal_rows, db, run_id)
    assert first < second
    assert len(second) < TASK_COUNT
    assert_interrupted(at_once, run_id, db, tmp_path)

    resume_to_end(at_once, run_id, db, tmp_path, logs[2])
    assert_final(at_once, run_id, db, tmp_path, reference)
    third = committed_successes(journal_rows, db, run_id)
    assert_sessions([Session(log) for log in logs], [first, second, third])


@pytest.mark.sqlite_only("stalls the commits with SQLite's write lock (BEGIN IMMEDIATE)")
def test_kill_while_commits_stall(
    launch: Any,
    wait_for_events: Callable[..., int],
    at_once: AtOnce,
    journal_rows: Callable[..., list[Any]],
    workflow: Path,
    reference: dict[str, Any],
    tmp_path: Path,
) -> None:
    """A slow journal (another writer, a slow disk) must not widen what a crash loses.

    Another connection holds the journal's write lock, so durable's commits wait.
    Tools keep returning meanwhile; if their slots were freed before their success
    is committed, new tasks would start and the work at risk would grow past
    `max_concurrency`. The test waits on the side-effect file for that to happen
    (or for a second, about fifty tool calls' time, to prove it does not), then kills.
    """
    db, run_id = tmp_path / "journal.db", "stall"
    logs = [tmp_path / "log-0", tmp_path / "log-1"]

    process = launch(["run", str(workflow), "--db", str(db), "--run-id", run_id], tmp_path, logs[0])
    # root and chain_000 are the only tasks without dependencies: after both commit,
    # sixty fan-out tasks are ready at once.
    wait_for_events(db, run_id, "task_succeeded", 2, process=process, timeout=DEADLINE_SECONDS)
    blocker = sqlite3.connect(db, isolation_level=None, timeout=5)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        before = committed_successes(journal_rows, db, run_id)
        deadline = time.monotonic() + 1.0  # well within durable's 5 s busy timeout
        while time.monotonic() < deadline:
            if len(set(Session(logs[0]).ran) - before) > CONCURRENCY:
                break
            time.sleep(POLL_SECONDS)
        kill(process)
    finally:
        blocker.rollback()
        blocker.close()
    assert committed_successes(journal_rows, db, run_id) == before
    assert_interrupted(at_once, run_id, db, tmp_path)

    resume_to_end(at_once, run_id, db, tmp_path, logs[1])
    assert_final(at_once, run_id, db, tmp_path, reference)
    after = committed_successes(journal_rows, db, run_id)
    assert_sessions([Session(log) for log in logs], [before, after])
