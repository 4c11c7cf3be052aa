"""`durable run` and `durable resume` on a pseudo-terminal: the live view (issue 8).

The workflows' tasks wait for a gate file that the test creates, so the test decides
when they finish: it reads the screen until it shows what it waits for, with a
timeout, and never sleeps to synchronise. The screen is the pty's byte stream with
the ANSI control sequences taken out; a line printed once (a failure, the summary)
appears once in it, while the live area appears once per frame.

Also: `--no-live` on a terminal and a pipe give plain lines, `--quiet` only the
summary, and `--json`'s opening object carries the workflow's name and size.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

TOOLS = """
import asyncio
import pathlib

import durable


@durable.tool
async def wait_for_gate(gate: str) -> str:
    # Finishes once the test creates the file (polled here, in the tool, not by the test).
    while not pathlib.Path(gate).exists():
        await asyncio.sleep(0.01)
    return gate


@durable.tool
async def fail_unless_gate(gate: str) -> str:
    if not pathlib.Path(gate).exists():
        raise RuntimeError("no gate yet\\nsecond line of the error")
    return gate
"""

CHATTY = """
import sys
import time

import durable


@durable.tool
def chatty(n: int) -> int:
    for i in range(n):
        print(f"chatty says line {i}")
        print(f"chatty warns {i}", file=sys.stderr)
        time.sleep(0.15)
    return n
"""

CHATTY_WORKFLOW = """\
name: chatty
imports: [chatty_tools]
tasks:
  - {id: talk, tool: chatty, input: {n: 4}}
  - {id: nap, tool: sleep, input: {seconds: 1}}
"""

GATES = """\
name: gates
max_concurrency: 8
imports: [tools]
tasks:
  - {id: fetch_pages, tool: wait_for_gate, input: {gate: open}}
  - {id: embed_corpus, tool: wait_for_gate, input: {gate: open}}
  - {id: search_web, tool: wait_for_gate, input: {gate: open}}
  - {id: broken, tool: fail_unless_gate, input: {gate: never}}
  - {id: report, tool: echo, dependencies: [fetch_pages, embed_corpus, search_web]}
"""

MANY = "name: many\nmax_concurrency: 20\nimports: [tools]\ntasks:\n" + "".join(
    f"  - {{id: task_{i:02d}, tool: wait_for_gate, input: {{gate: open}}}}\n" for i in range(12)
)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def plain(raw: bytes) -> str:
    return ANSI.sub("", raw.decode(errors="replace"))


class Terminal:
    """`durable ARGS...` with stdout and stderr on a pseudo-terminal of the given size."""

    def __init__(self, start, args: list[Any], cwd: Path, rows: int = 24, columns: int = 100):  # type: ignore[no-untyped-def]
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.raw = b""
        try:
            self.process: subprocess.Popen[bytes] = start(
                *args, cwd=cwd, stdout=slave, stderr=slave, text=False,
                env={"TERM": "xterm-256color", "NO_COLOR": None, "COLUMNS": None, "LINES": None},
            )  # fmt: skip
        finally:
            os.close(slave)

    def _read(self, timeout: float) -> bool:
        """Read what is there (waiting up to `timeout`); False once the pty is closed."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed its side
            return False
        self.raw += chunk
        return bool(chunk)

    @property
    def screen(self) -> str:
        return plain(self.raw)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """Read until the screen (since the start) matches `pattern`."""
        deadline = time.monotonic() + timeout
        while (found := re.search(pattern, self.screen)) is None:
            assert time.monotonic() < deadline, f"no {pattern!r} on the screen:\n{self.screen}"
            assert self._read(0.05) or re.search(pattern, self.screen), (
                f"durable ended without showing {pattern!r}:\n{self.screen}"
            )
        return found

    def finish(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self._read(0.05) and time.monotonic() < deadline:
            pass
        return self.process.wait(timeout=max(1, deadline - time.monotonic()))

    def close(self, stop) -> None:  # type: ignore[no-untyped-def]
        stop(self.process)
        os.close(self.master)


@pytest.fixture
def terminal(start, stop):  # type: ignore[no-untyped-def]
    opened: list[Terminal] = []

    def open_terminal(*args: Any, cwd: Path, rows: int = 24, columns: int = 100) -> Terminal:
        opened.append(Terminal(start, list(args), cwd, rows, columns))
        return opened[-1]

    yield open_terminal
    for each in opened:
        each.close(stop)


def test_live_view_shows_running_tasks_on_a_timer_then_failures_and_the_summary(
    tmp_path, write, terminal, journal_target
):
    write(tmp_path, "tools.py", TOOLS)
    wf = write(tmp_path, "wf.yaml", GATES)
    term = terminal("run", wf, "--db", "j.db", "--run-id", "live-1", cwd=tmp_path)
    term.wait_for(r"^run live-1 started: gates \(5 tasks\)")
    # The three blocked tasks, each with its tool and attempt, under the counts.
    term.wait_for(r"3 running · 1 waiting")
    for task_id in ("fetch_pages", "embed_corpus", "search_web"):
        term.wait_for(rf"\n  {task_id} +wait_for_gate +#1 ")
    # The failure as a line of its own, first line of the error only.
    term.wait_for(r"✗ broken failed \(attempt 1\): RuntimeError: no gate yet\n")
    # Nothing finishes while the gate is shut, yet the clock moves: frames come on a timer.
    clock = r"run live-1 · gates · (\d+\.\d)s"
    first = term.wait_for(clock).group(1)
    term.wait_for(rf"run live-1 · gates · (?!{re.escape(first)}s)\d+\.\ds")
    assert "second line of the error" not in term.screen

    (tmp_path / "open").touch()
    assert term.finish() == 1, term.screen
    screen = term.screen
    # Printed once each: the failure stays in the scrollback, and the summary ends it.
    assert screen.count("✗ broken failed (attempt 1)") == 1
    summary = screen[screen.index("run live-1 failed in") :]
    db = re.escape(journal_target("j.db", tmp_path))  # j.db, or its database's DSN
    assert re.match(
        r"run live-1 failed in \d+\.\ds · 5/5 finished: 4 succeeded, 1 failed\n"
        r"(  slowest: .*\n)?"
        r"  failed: broken \(attempt 1\): RuntimeError: no gate yet\n"
        rf"  resume:  durable resume live-1 --db {db}\n"
        rf"  inspect: durable status live-1 --db {db}\n",
        summary,
    ), summary
    # Not the pipe's log.
    assert not re.search(r"\d\d:\d\d:\d\d \w+ (started|succeeded)", screen)


def test_the_running_list_is_cut_to_the_terminal_height(tmp_path, write, terminal):
    write(tmp_path, "tools.py", TOOLS)
    wf = write(tmp_path, "wf.yaml", MANY)
    term = terminal("run", wf, "--db", "j.db", "--run-id", "many-1", cwd=tmp_path, rows=10)
    term.wait_for(r"12 running · 0 waiting")
    # 10 rows: header, bar, counts, one spare; 6 left: 5 tasks and "+7 more".
    term.wait_for(r"\n  task_04 [^\n]*\n  \+7 more")
    assert not re.search(r"\n  task_05 ", term.screen)
    (tmp_path / "open").touch()
    assert term.finish() == 0, term.screen
    assert "run many-1 succeeded in" in term.screen


def test_resume_on_a_terminal_shows_what_it_kept(tmp_path, write, durable, terminal):
    write(tmp_path, "tools.py", TOOLS)
    wf = write(tmp_path, "wf.yaml", GATES)
    (tmp_path / "open").touch()
    durable("run", wf, "--db", "j.db", "--run-id", "res-1", cwd=tmp_path, check=1)
    (tmp_path / "never").touch()
    term = terminal("resume", "res-1", "--db", "j.db", cwd=tmp_path)
    assert term.finish() == 0, term.screen
    assert "run res-1 resumed: gates (4 of 5 tasks kept, 1 to run)" in term.screen
    assert "run res-1 succeeded in" in term.screen
    assert "durable resume" not in term.screen.split("succeeded in", 1)[1]


def test_no_live_on_a_terminal_prints_plain_lines(tmp_path, write, terminal):
    write(tmp_path, "tools.py", TOOLS)
    wf = write(tmp_path, "wf.yaml", GATES)
    (tmp_path / "open").touch()
    term = terminal("run", wf, "--db", "j.db", "--run-id", "plain-1", "--no-live", cwd=tmp_path)
    assert term.finish() == 1, term.screen
    assert "\x1b[1A" not in term.raw.decode(errors="replace")  # nothing redrawn in place
    assert re.search(r"^\d\d:\d\d:\d\d fetch_pages started \(attempt 1\)$", term.screen, re.M)
    assert re.search(r"^run plain-1 failed in \d+\.\d\ds: ", term.screen, re.M)


def test_a_pipe_gets_plain_lines_and_quiet_only_the_summary(tmp_path, write, durable):
    write(tmp_path, "tools.py", TOOLS)
    wf = write(tmp_path, "wf.yaml", GATES)
    (tmp_path / "open").touch()
    piped = durable("run", wf, "--db", "j.db", "--run-id", "pipe-1", cwd=tmp_path, check=1)
    assert "\x1b" not in piped.stdout
    assert re.search(r"^\d\d:\d\d:\d\d broken failed \(attempt 1\): ", piped.stdout, re.M)
    quiet = durable("run", wf, "--db", "j.db", "--run-id", "quiet-1", "-q", cwd=tmp_path, check=1)
    assert re.fullmatch(
        r"run quiet-1 failed in \d+\.\d\ds: 1 failed, 4 succeeded\n", quiet.stdout
    ), quiet.stdout
    assert quiet.stderr.startswith("  broken: RuntimeError: no gate yet")


def test_json_opening_carries_workflow_and_size_and_refuses_quiet(
    tmp_path, write, durable, json_lines
):
    write(tmp_path, "tools.py", TOOLS)
    wf = write(tmp_path, "wf.yaml", GATES)
    (tmp_path / "open").touch()
    ran = durable("run", wf, "--db", "j.db", "--run-id", "j-1", "--json", cwd=tmp_path, check=1)
    opening = json_lines(ran.stdout)[0]
    assert opening["kind"] == "run_started"
    assert (opening["workflow"], opening["tasks"], opening["kept"]) == ("gates", 5, 0)
    (tmp_path / "never").touch()
    resumed = durable("resume", "j-1", "--db", "j.db", "--json", cwd=tmp_path, check=0)
    opening = json_lines(resumed.stdout)[0]
    assert opening["kind"] == "run_resumed"
    assert (opening["workflow"], opening["tasks"], opening["kept"]) == ("gates", 5, 4)
    both = durable("run", wf, "--db", "j.db", "--json", "--quiet", cwd=tmp_path, check=2)
    assert both.stderr.splitlines()[0] == "error: --json and --quiet cannot be combined"


def test_what_a_tool_prints_is_shown_above_the_live_area(tmp_path, write, terminal):
    """A Python tool's `print`: it pushed the live area down, leaving a stale header
    per line, and was then drawn over; now each line is printed once, above it."""
    write(tmp_path, "chatty_tools.py", CHATTY)
    wf = write(tmp_path, "wf.yaml", CHATTY_WORKFLOW)
    term = terminal("run", wf, "--db", "j.db", "--run-id", "talk-1", cwd=tmp_path)
    assert term.finish() == 0, term.screen
    screen = term.screen
    for i in range(4):
        assert screen.count(f"chatty says line {i}\n") == 1, screen
        assert screen.count(f"chatty warns {i}\n") == 1, screen
        # Each at the start of a line the live area was erased from: before, it was
        # glued to the end of the area's last row ("#1  0.3schatty says line 1").
        for text in (f"chatty says line {i}", f"chatty warns {i}"):
            before = term.raw[: term.raw.index(text.encode())]
            assert before.endswith((b"\n", b"\x1b[2K")), before[-80:]
    assert "run talk-1 succeeded in" in screen


def test_json_keeps_stdout_for_events_when_a_tool_prints(tmp_path, write, durable, json_lines):
    """With --json, a tool's `print` went into the stream of events and broke its
    parsing; it goes to stderr."""
    write(tmp_path, "chatty_tools.py", CHATTY)
    wf = write(tmp_path, "wf.yaml", CHATTY_WORKFLOW)
    result = durable("run", wf, "--db", "j.db", "--json", cwd=tmp_path, check=0)
    events = json_lines(result.stdout)
    assert events[-1]["kind"] == "run_finished" and events[-1]["status"] == "succeeded"
    assert "chatty says line 3" in result.stderr and "chatty warns 3" in result.stderr
