"""How `durable` ends: without the interpreter's teardown (`durable_cli.main._Leave`),
and without skipping what a process owes before it exits.

A tool's `atexit` callback still runs, a thread it started that is not a daemon
still finishes, what either prints last reaches a pipe (standard output to a pipe
is flushed only when its buffer fills, or at the exit), and each exit code is the
command's; an object still alive at the exit is not finalized (the teardown is
skipped). A callback registered before `main` (coverage's, a `sitecustomize`'s)
makes `main` leave the exit to Python.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

TOOLS = '''\
import atexit
import os
import threading
import time
from pathlib import Path

import durable


class Finalized:
    """Alive until the exit: a normal teardown finalizes it, the fast exit does not.
    (`os.mkdir` is bound now: by the time a teardown clears this module, its globals
    may be gone.)"""

    def __del__(self, mkdir=os.mkdir) -> None:
        mkdir("finalized")


KEPT = Finalized()


@durable.tool
def leave_marks(folder: str) -> str:
    """Asks for work at the process's exit: a callback, and a thread to wait for;
    both print, unflushed, after durable's last line."""

    def at_exit() -> None:
        Path(folder, "atexit.txt").write_text("called")
        print("the callback's last words")

    def late() -> None:
        time.sleep(0.3)
        Path(folder, "thread.txt").write_text("finished")
        print("the thread's last words")

    atexit.register(at_exit)

    threading.Thread(target=late, daemon=False).start()
    return "marked"
'''

#: Standard output to a pipe buffered, as Python has it unless told otherwise.
BUFFERED = {"PYTHONUNBUFFERED": None}

WORKFLOW = """\
name: exit
imports: [tools]
tasks:
  - id: mark
    tool: leave_marks
    input: {folder: "."}
"""


@pytest.fixture
def exit_folder(tmp_path: Path) -> Path:
    """`tmp_path` with the tool module and the workflow that runs it."""
    (tmp_path / "tools.py").write_text(TOOLS)
    (tmp_path / "exit.yaml").write_text(WORKFLOW)
    return tmp_path


def test_a_tools_exit_callback_and_thread_still_run(durable: Any, exit_folder: Path) -> None:
    tmp_path = exit_folder
    ran = durable(
        "run",
        "exit.yaml",
        "--db",
        tmp_path / "j.db",
        "--no-live",
        cwd=tmp_path,
        env=BUFFERED,
        check=0,
    )
    assert (tmp_path / "atexit.txt").read_text() == "called"
    assert (tmp_path / "thread.txt").read_text() == "finished"
    assert ran.stdout.splitlines()[-2:] == ["the thread's last words", "the callback's last words"]
    # The teardown was skipped (what makes the exit fast): nothing finalized the object.
    assert not (tmp_path / "finalized").exists()


def test_every_line_reaches_a_pipe_and_exit_codes_hold(
    durable: Any, json_lines: Any, no_traceback: Any, tmp_path: Path
) -> None:
    """2,000 events of `--json` (far more than a pipe's buffer) arrive whole, then the
    failed run's exit code 1, and a missing run's 2 with its message."""
    tasks = (
        "".join(f"  - {{id: t{i}, tool: echo, input: {{i: {i}}}}}\n" for i in range(999))
        + '  - {id: bad, tool: shell, input: {command: ["false"]}}\n'
    )
    workflow = tmp_path / "many.yaml"
    workflow.write_text(f"name: many\ntasks:\n{tasks}")
    db = tmp_path / "j.db"
    ran = durable("run", workflow, "--db", db, "--json", cwd=tmp_path, env=BUFFERED, check=1)
    events = json_lines(ran.stdout)
    assert sum(e["kind"] == "task_succeeded" for e in events) == 999
    assert events[-1]["kind"] == "run_finished", events[-1]
    no_traceback(ran)
    missing = durable("status", "nope", "--db", db, cwd=tmp_path, check=2)
    assert missing.stderr.startswith("error: run 'nope' not found"), missing.stderr
    no_traceback(missing)
    listed = durable("runs", "--db", db, "--json", cwd=tmp_path, check=0)
    assert [run["status"] for run in json.loads(listed.stdout)] == ["failed"]


def test_a_callback_registered_before_main_still_runs(exit_folder: Path) -> None:
    """Coverage of subprocesses, or a `sitecustomize`, registers its callback before
    `main` runs: `main` then leaves the exit to Python, which calls it (and the
    teardown finalizes what is still alive)."""
    code = (
        "import atexit, sys\n"
        "atexit.register(print, 'registered before main')\n"
        "sys.argv = ['durable', 'run', 'exit.yaml', '--db', 'j.db', '--no-live']\n"
        "from durable_cli.main import main\n"
        "main()\n"
    )
    tmp_path = exit_folder
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "registered before main", done.stdout
    assert (tmp_path / "finalized").is_dir()
