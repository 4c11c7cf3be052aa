"""Process hygiene, end to end: a run leaves nothing behind and exits when it is done.

- A sync tool that times out is abandoned (Python cannot stop a thread); neither
  `durable run` nor a script calling `durable.run()` may wait for that thread.
- A run that used a `cpu_bound` tool and is stopped (Ctrl-C to the terminal's process
  group, or SIGKILL of the driver alone) leaves no process behind: no pool worker,
  no forkserver, no resource tracker, and nothing holds the caller's stdout open.
  Ctrl-C prints durable's own lines only, no worker's `KeyboardInterrupt` traceback.
- A script that calls `durable.run()` without an `if __name__ == "__main__":` guard
  is re-imported by the pool's processes; that second run is refused, with a
  message saying how to fix the script, instead of starting a duplicate run.

Every process a test starts carries a unique marker in its environment, which its
descendants (forkserver, workers, resource tracker) inherit; leftovers are found by
that marker in /proc, whoever they were reparented to. Moments are found by polling
the journal and files the tools write, never by sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc"),
]

MARK = "DURABLE_HYGIENE_MARK"

TOOLS = '''\
"""Tools for the hygiene tests: each says it began by creating a file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import durable


def _began(name: str) -> None:
    Path(os.environ["HYGIENE_DIR"], name).touch()


@durable.tool
def sleepy(seconds: float) -> str:
    _began("sleepy")
    time.sleep(seconds)
    return "late"


@durable.tool(cpu_bound=True)
def crunch(seconds: float) -> str:
    _began(f"crunch-{os.getpid()}")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(range(10_000))
    return "done"
'''


def workflow(folder: Path, tasks: str) -> Path:
    (folder / "tools.py").write_text(TOOLS)
    path = folder / "workflow.yaml"
    path.write_text(f"name: hygiene\nimports: [tools]\ntasks:\n{textwrap.indent(tasks, '  ')}")
    return path


def env(folder: Path, marker: str) -> dict[str, str]:
    """What the tools need, and the marker every process of the test inherits."""
    return {MARK: marker, "HYGIENE_DIR": str(folder)}


def marked_processes(marker: str) -> list[str]:
    """Live processes (not zombies) whose environment holds the marker, as `pid cmdline`."""
    needle = f"{MARK}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found.append(f"{entry.name} {cmdline}")
    return found


def assert_nothing_left(marker: str, seconds: float = 10.0) -> None:
    """The forkserver and the resource tracker exit when their pipes close: give them time."""
    deadline = time.monotonic() + seconds
    left = marked_processes(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = marked_processes(marker)
    assert left == [], f"processes left behind: {left}"


@pytest.fixture
def marker() -> Iterator[str]:
    """A marker for the test's processes; whatever still carries it at teardown is killed."""
    value = uuid.uuid4().hex
    yield value
    for line in marked_processes(value):  # only after a failure: do not leak into later tests
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{condition} still false after {seconds}s"
        time.sleep(0.01)


def began(folder: Path, prefix: str) -> bool:
    return any(path.name.startswith(prefix) for path in folder.iterdir())


def no_traceback_nor_interrupt(text: str) -> None:
    """Neither durable nor a pool process printed a traceback (a worker's would name KeyboardInterrupt)."""
    assert "Traceback" not in text, text
    assert "KeyboardInterrupt" not in text, text


# -- item 4: an abandoned sync tool does not keep the process alive ----------------------


def test_durable_run_exits_right_after_a_sync_tool_times_out(
    tmp_path: Path, marker: str, durable: Any
) -> None:
    path = workflow(tmp_path, "- {id: stuck, tool: sleepy, input: {seconds: 60}, timeout: 1}\n")
    started = time.monotonic()
    done = durable(
        "run",
        path,
        "--db",
        tmp_path / "journal.db",
        cwd=tmp_path,
        env=env(tmp_path, marker),
        timeout=30,
    )
    assert time.monotonic() - started < 10, "waited for the abandoned thread"
    assert done.returncode == 1, done.stderr
    assert " failed in " in done.stdout
    assert "stuck: timed out after 1s" in done.stderr
    no_traceback_nor_interrupt(done.stdout + done.stderr)
    assert_nothing_left(marker)


def test_ctrl_c_exits_130_while_a_sync_tool_runs(
    tmp_path: Path, marker: str, start: Any, stop: Any, count_events: Any
) -> None:
    path = workflow(tmp_path, "- {id: stuck, tool: sleepy, input: {seconds: 60}}\n")
    db = tmp_path / "journal.db"
    process = start("run", path, "--db", db, cwd=tmp_path, env=env(tmp_path, marker))
    try:
        wait_for(lambda: count_events(db, kind="task_started") == 1 and began(tmp_path, "sleepy"))
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        stop(process)
    assert process.returncode == 130, err
    assert err.startswith("error: run '"), err
    assert "interrupted" in err
    no_traceback_nor_interrupt(out + err)
    assert_nothing_left(marker)


API_SCRIPT = """\
import sys

import durable

if __name__ == "__main__":
    result = durable.run(sys.argv[1], db=sys.argv[2])
    print(result.status, result.tasks["stuck"].error, flush=True)
"""


def test_a_script_exits_right_after_a_sync_tool_times_out(
    tmp_path: Path, marker: str, journal_target: Any
) -> None:
    path = workflow(tmp_path, "- {id: stuck, tool: sleepy, input: {seconds: 60}, timeout: 1}\n")
    script = tmp_path / "script.py"
    script.write_text(API_SCRIPT)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, script, path, journal_target(tmp_path / "journal.db")],
        env={**os.environ, **env(tmp_path, marker)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert time.monotonic() - started < 10, "waited for the abandoned thread"
    assert done.returncode == 0, done.stderr
    assert done.stdout == "failed timed out after 1s\n"
    no_traceback_nor_interrupt(done.stderr)
    assert_nothing_left(marker)


# -- item 5: an interrupted or killed run leaves no process behind ------------------------

# A long CPU-bound task, a finished one (its worker now waits for work) and a sync one.
CPU_TASKS = """\
- {id: crunch, tool: crunch, input: {seconds: 60}}
- {id: quick, tool: crunch, input: {seconds: 0.01}}
- {id: wait, tool: sleepy, input: {seconds: 60}}
"""


def cpu_tasks_under_way(count_events: Any, db: Path, folder: Path) -> bool:
    return (
        count_events(db, kind="task_started", task_id="crunch") == 1
        and count_events(db, kind="task_succeeded", task_id="quick") == 1
        and began(folder, "sleepy")
        and began(folder, "crunch-")
    )


def test_ctrl_c_after_a_cpu_bound_tool_leaves_nothing_behind(
    tmp_path: Path, marker: str, start: Any, stop: Any, count_events: Any
) -> None:
    path = workflow(tmp_path, CPU_TASKS)
    db = tmp_path / "journal.db"
    process = start("run", path, "--db", db, cwd=tmp_path, env=env(tmp_path, marker))
    try:
        wait_for(lambda: cpu_tasks_under_way(count_events, db, tmp_path))
        started = time.monotonic()
        # As a terminal does: SIGINT to the whole process group, pool workers included.
        os.killpg(process.pid, signal.SIGINT)
        # communicate() reads to EOF: a leaked child holding stdout would hang it.
        out, err = process.communicate(timeout=20)
    finally:
        stop(process)
    assert time.monotonic() - started < 10
    assert process.returncode == 130, err
    no_traceback_nor_interrupt(out + err)
    assert err.splitlines()[0].startswith("error: run '"), err
    assert_nothing_left(marker)


def test_pool_processes_exit_when_the_driver_is_killed(
    tmp_path: Path, marker: str, start: Any, stop: Any, count_events: Any
) -> None:
    path = workflow(tmp_path, CPU_TASKS)
    db = tmp_path / "journal.db"
    with (tmp_path / "out.txt").open("w") as out, (tmp_path / "err.txt").open("w") as err:
        # Files, not pipes: reading a pipe a leaked process holds would hang the test.
        process = start(
            "run", path, "--db", db, cwd=tmp_path, env=env(tmp_path, marker), stdout=out, stderr=err
        )
    try:
        wait_for(lambda: cpu_tasks_under_way(count_events, db, tmp_path))
        assert len(marked_processes(marker)) >= 4  # driver, forkserver, workers, tracker
        os.kill(process.pid, signal.SIGKILL)  # the driver only: its pool must notice on its own
        process.wait(timeout=10)
        assert_nothing_left(marker, seconds=10)
    finally:
        stop(process)


# -- item 6: a script without the __main__ guard is not run twice ------------------------

UNGUARDED = """\
import sys

import durable

result = durable.run(sys.argv[1], db=sys.argv[2])
print(result.status, flush=True)
print(result.tasks["crunch"].error, flush=True)
"""


def test_a_script_without_the_main_guard_does_not_start_a_second_run(
    tmp_path: Path, marker: str, journal_rows: Any, journal_target: Any
) -> None:
    path = workflow(tmp_path, "- {id: crunch, tool: crunch, input: {seconds: 0.1}}\n")
    db = tmp_path / "journal.db"
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    done = subprocess.run(
        [sys.executable, script, path, journal_target(db)],
        env={**os.environ, **env(tmp_path, marker)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert journal_rows(db, "SELECT count(*) FROM runs") == [(1,)], done.stdout + done.stderr
    no_traceback_nor_interrupt(done.stderr)
    # The refusal, printed once by the process that imported the script, says what to do.
    assert done.stderr.count('if __name__ == "__main__":') == 1, done.stderr
    status, error = done.stdout.splitlines()
    assert status == "failed"
    assert "worker process" in error
    assert "__main__" in error
    assert_nothing_left(marker)
