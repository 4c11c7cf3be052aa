"""What `durable run` promises its user, seen from outside the process (issue 13).

Which event loop a run really ran on, what the process imported by the time it
exited, the lines it prints to a pipe, what it draws on a terminal, what it warns
about, and the `synchronous` pragma of the connection that writes its journal. Each
was once broken by a one-line change that the rest of the suite did not notice.

The tools these workflows call live in a `tools.py` written beside each workflow and
report from inside the `durable` process.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

TOOLS = """
import asyncio
import sqlite3
import sys

import durable

# Every sqlite3 connection this process opens, and which of them wrote events.
_connect = sqlite3.connect
_connections = []
_writers = set()


def _spy(*args, **kwargs):
    connection = _connect(*args, **kwargs)
    index = len(_connections)
    _connections.append(connection)

    def trace(sql):
        if " ".join(sql.split()).upper().startswith("INSERT INTO EVENTS"):
            _writers.add(index)

    connection.set_trace_callback(trace)
    return connection


sqlite3.connect = _spy


@durable.tool
async def which_loop() -> str:
    return type(asyncio.get_running_loop()).__module__


@durable.tool
async def networkx_loaded() -> bool:
    return "networkx" in sys.modules


@durable.tool
async def writer_synchronous() -> list:
    found = []
    for index in sorted(_writers):
        try:
            found.append(_connections[index].execute("PRAGMA synchronous").fetchone()[0])
        except sqlite3.ProgrammingError:
            found.append(None)
    return found
"""


def workflow_with(folder: Path, write, tool: str) -> Path:  # type: ignore[no-untyped-def]
    """A two-task workflow: `probe` (calling `tool`) runs after `first` has committed."""
    write(folder, "tools.py", TOOLS)
    return write(
        folder,
        "wf.yaml",
        "name: probe\n"
        "imports: [tools]\n"
        "tasks:\n"
        "  - {id: first, tool: echo, input: {n: 1}}\n"
        f"  - {{id: probe, tool: {tool}, dependencies: [first]}}\n",
    )


def output_of(durable, folder: Path, run_id: str, task: str):  # type: ignore[no-untyped-def]
    result = durable("output", run_id, task, "--db", "j.db", cwd=folder, check=0)
    return json.loads(result.stdout)


# -- the event loop ---------------------------------------------------------------------


def test_durable_loop_asyncio_runs_on_asyncios_own_loop(tmp_path, durable, write):
    wf = workflow_with(tmp_path, write, "which_loop")
    durable(
        "run", wf, "--db", "j.db", "--run-id", "r1",
        cwd=tmp_path, env={"DURABLE_LOOP": "asyncio"}, check=0,
    )  # fmt: skip
    assert output_of(durable, tmp_path, "r1", "probe").split(".")[0] == "asyncio"


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
def test_uvloop_is_the_default_where_installed(tmp_path, durable, write):
    wf = workflow_with(tmp_path, write, "which_loop")
    durable(
        "run",
        wf,
        "--db",
        "j.db",
        "--run-id",
        "r1",
        cwd=tmp_path,
        env={"DURABLE_LOOP": None},
        check=0,
    )
    assert output_of(durable, tmp_path, "r1", "probe") == "uvloop"


# -- start-up cost ----------------------------------------------------------------------


def test_a_valid_run_never_imports_networkx(tmp_path, durable, write):
    """networkx costs ~0.2 s to import: only a broken workflow's cycles need it."""
    wf = workflow_with(tmp_path, write, "networkx_loaded")
    result = durable(
        "run", wf, "--db", "j.db", "--run-id", "r1",
        cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"}, check=0,
    )  # fmt: skip
    assert output_of(durable, tmp_path, "r1", "probe") is False
    # -X importtime lists every module the process imported, until it exited.
    imported = [
        line.split("|")[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    ]
    assert "durable.engine" in imported, "no import times: the check would prove nothing"
    assert not [name for name in imported if name.split(".")[0] == "networkx"]


def test_a_cycle_is_named_with_networkx(tmp_path, durable, write):
    """The other side of the check above: the same probe does see networkx when it is used."""
    wf = write(
        tmp_path,
        "wf.yaml",
        "name: loop\ntasks:\n"
        "  - {id: a, tool: echo, dependencies: [b]}\n"
        "  - {id: b, tool: echo, dependencies: [a]}\n",
    )
    result = durable("validate", wf, cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"}, check=2)
    assert "cycle: a -> b -> a" in result.stderr or "cycle: b -> a -> b" in result.stderr
    assert re.search(r"^import time:.*\|\s+networkx$", result.stderr, re.M)


# -- what `durable run` prints ------------------------------------------------------------

TWO_TASKS = """\
name: two
tasks:
  - {id: first, tool: echo, input: {n: 1}}
  - {id: second, tool: echo, input: "${first.output.n}"}
"""


def test_a_pipe_gets_one_plain_line_per_transition(tmp_path, durable, write):
    wf = write(tmp_path, "wf.yaml", TWO_TASKS)
    result = durable("run", wf, "--db", "j.db", "--run-id", "pipe-1", cwd=tmp_path, check=0)
    lines = [re.sub(r"^\d\d:\d\d:\d\d ", "HH:MM:SS ", line) for line in result.stdout.splitlines()]
    lines[-1] = re.sub(r" in \d+\.\d+s:", " in Ns:", lines[-1])
    assert lines == [
        "run pipe-1 started: two (2 tasks)",
        "HH:MM:SS first started (attempt 1)",
        "HH:MM:SS first succeeded",
        "HH:MM:SS second started (attempt 1)",
        "HH:MM:SS second succeeded",
        "run pipe-1 succeeded in Ns: 2 succeeded",
    ]
    assert "\r" not in result.stdout and "\x1b" not in result.stdout
    assert result.stderr == ""


THREE_SLOW_TASKS = """\
name: three
max_concurrency: 1
tasks:
  - {id: one, tool: sleep, input: {seconds: 0.25}}
  - {id: two, tool: sleep, input: {seconds: 0.25}}
  - {id: three, tool: sleep, input: {seconds: 0.25}}
"""


def read_all(fd: int, process: subprocess.Popen[bytes], timeout: float = 60) -> bytes:
    """Everything written to a pty until the child exits and the pty drains."""
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every writer of the slave side has closed it
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif process.poll() is not None:
            break
    return b"".join(chunks)


def test_a_terminal_gets_a_live_view_redrawn_in_place(tmp_path, start, stop, write):
    wf = write(tmp_path, "wf.yaml", THREE_SLOW_TASKS)
    master, slave = os.openpty()
    # A terminal 100 columns wide, and no newline translation: every \r on the
    # master side was written by durable itself.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    attributes = termios.tcgetattr(slave)
    attributes[1] &= ~termios.OPOST
    termios.tcsetattr(slave, termios.TCSANOW, attributes)
    process = None
    try:
        process = start(
            "run", wf, "--db", "j.db", "--run-id", "tty-1",
            cwd=tmp_path, env={"TERM": "xterm-256color", "NO_COLOR": None, "COLUMNS": None},
            stdout=slave, text=False,
        )  # fmt: skip
        os.close(slave)
        slave = -1
        screen = read_all(master, process).decode(errors="replace")
        assert process.wait(timeout=30) == 0, screen + process.stderr.read().decode()
    finally:
        stop(process)
        os.close(master)
        if slave != -1:
            os.close(slave)
    # Redrawn in place: a carriage return that does not end a line, or cursor movement.
    assert re.search(r"\r(?!\n)|\x1b\[\d*[ABKGF]", screen), repr(screen)
    assert re.search(r"\b3/3\b", screen), repr(screen)
    assert "tty-1" in screen
    # Not the pipe's log: no line per transition.
    plain = re.compile(r"\d\d:\d\d:\d\d (one|two|three) (started|succeeded)")
    assert not plain.search(screen), repr(screen)


# -- warnings -------------------------------------------------------------------------------


def test_durability_off_warns_on_stderr(tmp_path, durable, write):
    wf = write(tmp_path, "wf.yaml", TWO_TASKS)
    result = durable("run", wf, "--db", "j.db", "--durability", "off", cwd=tmp_path, check=0)
    assert re.search(r"warning: .*--durability off.*tests and benchmarks only", result.stderr, re.S)
    assert "warning" not in result.stdout


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_safe_durability_does_not_warn(tmp_path, durable, write, durability):
    wf = write(tmp_path, "wf.yaml", TWO_TASKS)
    result = durable("run", wf, "--db", "j.db", "--durability", durability, cwd=tmp_path, check=0)
    assert "warning" not in result.stderr + result.stdout


# -- durability, through the command line ------------------------------------------------------


@pytest.mark.sqlite_only("reads PRAGMA synchronous of durable's SQLite connections")
@pytest.mark.parametrize(("durability", "synchronous"), [("normal", 1), ("full", 2), ("off", 0)])
def test_durability_flag_reaches_the_connection_that_writes(
    tmp_path, durable, write, durability, synchronous
):
    wf = workflow_with(tmp_path, write, "writer_synchronous")
    durable(
        "run", wf, "--db", "j.db", "--run-id", "r1", "--durability", durability,
        cwd=tmp_path, check=0,
    )  # fmt: skip
    assert set(output_of(durable, tmp_path, "r1", "probe")) == {synchronous}
