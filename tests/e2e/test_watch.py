"""`durable watch` end to end: a run driven by one process, watched from another.

The driver's tools wait for a gate file that the test creates, so the test decides
when they finish; it waits on the journal or on the watcher's output, with
timeouts, and never sleeps to synchronise. The watcher prints plain lines on a
pipe (transitions only: progress is for the live view) and the live view on a
pseudo-terminal, where a tool's progress shows on its row. Also: `log --task`.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from test_live_view_cli import Terminal  # the pseudo-terminal the live view is tested on

TOOLS = """
import asyncio
import pathlib

import durable


@durable.tool
async def wait_for_gate(gate: str) -> str:
    while not pathlib.Path(gate).exists():
        await asyncio.sleep(0.01)
    return gate


@durable.tool
async def report_until_gate(gate: str) -> str:
    ctx = durable.current_context()
    ctx.log.info("waiting for %s", gate)
    chunks = 0
    while not pathlib.Path(gate).exists():
        chunks += 1
        ctx.progress(min(chunks / 1000, 1.0), f"chunk {chunks}")
        await asyncio.sleep(0.01)
    ctx.log.warning("gate open after some chunks")
    return gate
"""

WORKFLOW = """\
name: watched
max_concurrency: 4
imports: [tools]
tasks:
  - {id: first, tool: echo, input: 1}
  - {id: fetch, tool: wait_for_gate, dependencies: [first], input: {gate: open}}
  - {id: reporter, tool: report_until_gate, dependencies: [first], input: {gate: open}}
  - {id: last, tool: echo, dependencies: [fetch, reporter], input: 2}
"""

#: What is journaled before the gate opens: run_started, then three task events.
BEFORE_GATE = 4


@pytest.fixture
def folder(tmp_path: Path, write) -> Path:  # type: ignore[no-untyped-def]
    write(tmp_path, "tools.py", TOOLS)
    write(tmp_path, "watched.yaml", WORKFLOW)
    return tmp_path


def start_driver(folder: Path, run_id: str, start, wait_for_events) -> Any:  # type: ignore[no-untyped-def]
    """A driver whose `fetch` and `reporter` run, blocked on the gate file."""
    db = folder / "j.db"
    driver = start("run", "watched.yaml", "--db", db, "--run-id", run_id, cwd=folder)
    wait_for_events(db, run_id, "task_started", 3, process=driver)
    return driver


def transitions(journal_kinds, db: Path, run_id: str) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [
        (task_id, kind)
        for task_id, kind in journal_kinds(db, run_id)
        if task_id is not None and kind not in ("task_progress", "task_log")
    ]


def test_a_watcher_on_a_pipe_sees_every_transition_and_exits_with_the_run(
    folder, start, stop, wait_for_events, journal_kinds, Lines
) -> None:
    db = folder / "j.db"
    driver = start_driver(folder, "watch-1", start, wait_for_events)
    watcher = None
    try:
        watcher = start("watch", "watch-", "--db", db, cwd=folder)  # by a prefix of the id
        lines = Lines(watcher.stdout)
        first = [lines.next() for _ in range(BEFORE_GATE)]
        assert first[0] == "run watch-1 started: watched (4 tasks)\n"
        assert watcher.poll() is None, "the watcher must wait for the run"
        (folder / "open").touch()
        watcher.wait(timeout=30)
        out = "".join(first) + lines.rest()
        err = watcher.stderr.read()
        driver.wait(timeout=30)
    finally:
        (folder / "open").touch()
        stop(driver)
        stop(watcher)
    assert (watcher.returncode, driver.returncode) == (0, 0), err
    printed = out.splitlines()
    assert printed[-1].startswith("run watch-1 succeeded in ")
    assert printed[-1].endswith(": 4 succeeded")
    shown = [tuple(line.split()[1:3]) for line in printed[1:-1]]
    journal = transitions(journal_kinds, db, "watch-1")
    assert shown == [(task_id, kind.removeprefix("task_")) for task_id, kind in journal]
    assert len(journal) == 8  # every task started and succeeded, each seen once
    assert any(kind == "task_progress" for _, kind in journal_kinds(db, "watch-1"))


def test_a_watcher_says_so_when_the_driver_is_killed(
    folder, start, stop, wait_for_events, Lines, durable
) -> None:
    db = folder / "j.db"
    driver = start_driver(folder, "gone-1", start, wait_for_events)
    watcher = None
    try:
        watcher = start("watch", "--db", db, cwd=folder)  # no id: the latest run
        lines = Lines(watcher.stdout)
        for _ in range(BEFORE_GATE):
            lines.next()
        os.killpg(driver.pid, signal.SIGKILL)
        killed = time.monotonic()
        watcher.wait(timeout=10)
        took = time.monotonic() - killed
        out = lines.rest()
        err = watcher.stderr.read()
    finally:
        stop(driver)
        stop(watcher)
    assert watcher.returncode == 130, err
    assert took < 3, f"the watcher took {took:.1f}s to notice"
    assert out.splitlines()[-1].startswith("run gone-1 interrupted in ")
    assert err.strip() == (
        "run gone-1 is no longer driven by any process (interrupted); "
        "resume it with `durable resume gone-1`"
    )
    # The watcher never wrote: the run ends as the driver left it.
    log = durable("log", "gone-1", "--db", db, cwd=folder, check=0).stdout.splitlines()
    assert not any("interrupted" in line or "finished" in line for line in log)


def test_a_watcher_on_a_terminal_shows_the_live_view_with_progress(
    folder, start, stop, wait_for_events
) -> None:
    db = folder / "j.db"
    driver = start_driver(folder, "live-1", start, wait_for_events)
    screen = None
    try:
        screen = Terminal(start, ["watch", "live-1", "--db", db], folder)
        screen.wait_for(r"run live-1 · watched · ")
        screen.wait_for(r"fetch\s+wait_for_gate\s+#1 ")
        screen.wait_for(r"reporter\s+report_until_gate\s+#1\s+\S+\s+\d+% chunk \d+")
        assert screen.process.poll() is None
        (folder / "open").touch()
        screen.wait_for(r"run live-1 succeeded in \S+ · 4/4 finished: 4 succeeded")
        code = screen.finish()
        driver.wait(timeout=30)
    finally:
        (folder / "open").touch()
        stop(driver)
        if screen is not None:
            screen.close(stop)
    assert code == 0, screen.screen
    assert "Traceback" not in screen.screen


def test_watching_a_finished_run_shows_it_and_exits_as_it_ended(folder, durable, write) -> None:
    (folder / "open").touch()
    db = folder / "j.db"
    durable("run", "watched.yaml", "--db", db, "--run-id", "done-1", cwd=folder, check=0)
    watched = durable("watch", "done-1", "--db", db, cwd=folder, check=0)
    assert watched.stdout.splitlines()[0] == "run done-1 started: watched (4 tasks)"
    assert watched.stdout.splitlines()[-1].startswith("run done-1 succeeded in ")

    write(
        folder,
        "failing.yaml",
        "name: failing\ntasks:\n  - {id: f, tool: shell, input: {command: [false]}}\n",
    )
    durable("run", "failing.yaml", "--db", db, "--run-id", "bad-1", cwd=folder, check=1)
    assert durable("watch", "--db", db, cwd=folder, check=1).stdout.startswith("run bad-1 started")

    missing = durable("watch", "nope", "--db", db, cwd=folder, check=2)
    assert "run not found" in missing.stderr or "not found" in missing.stderr


def test_log_task_shows_that_tasks_events_and_log_lines(folder, durable) -> None:
    (folder / "open").touch()
    db = folder / "j.db"
    durable("run", "watched.yaml", "--db", db, "--run-id", "log-1", cwd=folder, check=0)
    shown = durable("log", "log-1", "--db", db, "--task", "reporter", cwd=folder, check=0)
    words = [line.split(None, 2)[1:] for line in shown.stdout.splitlines()]
    assert words == [
        ["reporter", "started (attempt 1)"],
        ["reporter", "info: waiting for open"],
        ["reporter", "warning: gate open after some chunks"],
        ["reporter", "succeeded"],
    ]
    every = durable("log", "log-1", "--db", db, cwd=folder, check=0).stdout
    assert "reporter info: waiting for open" in every and "progress" not in every

    import json

    kinds = {
        json.loads(line)["kind"]
        for line in durable(
            "log", "log-1", "--db", db, "--task", "reporter", "--json", cwd=folder, check=0
        ).stdout.splitlines()
    }
    assert kinds <= {"task_started", "task_log", "task_progress", "task_succeeded"}
    assert {"task_log", "task_succeeded"} <= kinds

    unknown = durable("log", "log-1", "--db", db, "--task", "nope", cwd=folder, check=2)
    assert unknown.stderr.strip() == "error: run 'log-1' has no task 'nope'"
