"""Shared helpers for the end-to-end tests, which drive the real `durable` command.

Every e2e test uses these, and no test file defines its own copy. Each helper is a
session-scoped fixture that returns the function (conftest modules cannot be
imported by a stable name, so take them as fixture arguments:
`def test_x(durable, write, tmp_path): ...`); the function behind `durable` is
`run_durable`, the others have the fixture's name.

- `durable(*args, cwd, env=None, timeout=60, check=None, input=None)`: run the
  command to completion and return the `CompletedProcess` (text). It never raises on
  a non-zero exit unless asked: `check=N` asserts that the exit code is N and shows
  stdout and stderr when it is not. `cwd` is required, so that a command run without
  `--db` writes its `.durable/` into the test's own folder. `env` holds variables
  added to this process's environment (a value of None removes one). stdin is empty
  unless `input` is given.
- `start(*args, cwd, env=None, stdout=PIPE, stderr=PIPE, text=True)`: start the
  command in the background, in a session (and process group) of its own, so a
  signal meant for it never reaches pytest. `stop(process)` kills it and its group
  if it is still alive; call it in a `finally`.
- `write(folder, name, text) -> Path`: write a file (a workflow, a `tools.py`).
- `journal_rows(db, sql, params=())`: read the journal directly, read-only. The
  connection is a plain `mode=ro` one (never `immutable=1`, which would read the
  file under a live writer's feet), retried while SQLite says the file is busy or
  not yet created.
- `count_events(db, run_id=None, kind=None, task_id=None)`: committed events, 0
  while the journal does not exist yet. `journal_kinds(db, run_id)`: a run's events
  as (task_id, kind) pairs, in journal order.
- `wait_for_events(db, run_id, kind, count=1, *, task_id=None, process=None,
  timeout=30)`: poll the journal (not the clock) until it holds `count` events of
  `kind`; fail at once if `process` exits first. Returns the count it saw.
- `Lines(stream)`: a child's output line by line, each wait with a timeout.
- `no_traceback(result)`, `as_json(result)`, `json_lines(text)`: small readers of
  a finished command's output.

Every test collected here is marked `e2e`, whether or not its file says so. And one
autouse fixture, `no_leftover_processes`: on Linux the pytest process is made a
child subreaper (once, for the rest of the session), so that any process a test's
`durable` started and left behind is re-parented to pytest rather than to init.
After each test, a child of pytest that appeared during the test and is still
alive after 5 s is killed, and the test fails at teardown naming its command line;
dead ones are reaped. Elsewhere than Linux the check is skipped.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import pytest


def durable_command() -> list[str]:
    """The installed `durable` script beside this interpreter, else `python -m`."""
    script = Path(sys.executable).with_name("durable")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "durable_cli.main"]


DURABLE = durable_command()


def environment(env: Mapping[str, str | None] | None) -> dict[str, str] | None:
    """This process's environment with `env` applied; None (inherit) when `env` is."""
    if env is None:
        return None
    merged = dict(os.environ)
    for key, value in env.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def run_durable(
    *args: str | os.PathLike[str],
    cwd: str | os.PathLike[str],
    env: Mapping[str, str | None] | None = None,
    timeout: float = 60,
    check: int | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `durable ARGS...` to completion (see the module docstring)."""
    result = subprocess.run(
        [*DURABLE, *map(str, args)],
        cwd=cwd,
        env=environment(env),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check is not None:
        assert result.returncode == check, (
            f"durable {' '.join(map(str, args))} exited {result.returncode}, not {check}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


def start(
    *args: str | os.PathLike[str],
    cwd: str | os.PathLike[str],
    env: Mapping[str, str | None] | None = None,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
    text: bool = True,
) -> subprocess.Popen[Any]:
    """Start `durable ARGS...` in the background, in a session of its own."""
    return subprocess.Popen(
        [*DURABLE, *map(str, args)],
        cwd=cwd,
        env=environment(env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        text=text,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[Any] | None) -> None:
    """Kill a started command (and its process group) if it is still running; reap it."""
    if process is None:
        return
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def write(folder: Path, name: str, text: str) -> Path:
    """Write `text` to `folder/name` and return the path."""
    path = folder / name
    path.write_text(text)
    return path


def journal_rows(
    db: Path, sql: str, params: tuple[Any, ...] = (), *, timeout: float = 5.0
) -> list[tuple[Any, ...]]:
    """Run one query on the journal, read-only; retry SQLite's transient refusals.

    A writer in another process may hold a lock for a moment, or not have created
    the file, its schema or its WAL index yet: each is an OperationalError, retried
    for up to `timeout` seconds and raised after that.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=timeout)
            try:
                return connection.execute(sql, params).fetchall()
            finally:
                connection.close()
        except sqlite3.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def count_events(
    db: Path, run_id: str | None = None, kind: str | None = None, task_id: str | None = None
) -> int:
    """Committed events (of a run, of one kind, for one task); 0 while there is no journal."""
    if not db.exists():
        return 0
    sql = "SELECT count(*) FROM events WHERE 1"
    params: list[Any] = []
    for column, value in (("run_id", run_id), ("kind", kind), ("task_id", task_id)):
        if value is not None:
            sql += f" AND {column} = ?"
            params.append(value)
    try:
        return journal_rows(db, sql, tuple(params), timeout=0)[0][0]
    except sqlite3.OperationalError:  # the schema or the WAL index is not there yet
        return 0


def journal_kinds(db: Path, run_id: str) -> list[tuple[str | None, str]]:
    """A run's events as (task_id, kind), in journal order."""
    return [
        (task_id, kind)
        for task_id, kind in journal_rows(
            db, "SELECT task_id, kind FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
        )
    ]


def wait_for_events(
    db: Path,
    run_id: str,
    kind: str,
    count: int = 1,
    *,
    task_id: str | None = None,
    process: subprocess.Popen[Any] | None = None,
    timeout: float = 30,
    poll: float = 0.002,
) -> int:
    """Return as soon as the journal holds `count` committed events of `kind`.

    With `process`, fail as soon as it exits before that (showing its stderr, if
    piped); a process that is still running at the deadline is killed.
    """
    deadline = time.monotonic() + timeout
    what = f"{count} {kind} event(s) for run {run_id}" + (f", task {task_id}" if task_id else "")
    while (seen := count_events(db, run_id, kind, task_id)) < count:
        if process is not None and process.poll() is not None:
            stderr = process.stderr.read() if process.stderr else ""
            pytest.fail(f"durable exited ({process.returncode}) before {what}: {stderr}")
        if time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"no {what} within {timeout}s")
        time.sleep(poll)
    return seen


class Lines:
    """A child's output, line by line, read by a thread so that every wait can time out.

    (Selecting on the pipe and then calling `readline` is not enough: the text
    wrapper may buffer several lines at once, and the next select never wakes.)
    """

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._queue.put(line)
        except (OSError, ValueError):  # closed under us by `stop`, after a failure
            pass
        self._queue.put(None)

    def next(self, timeout: float = 30) -> str:
        """The next line; fails if none comes within `timeout` or the output ended."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s") from None
        assert line is not None, "the output ended"
        return line

    def rest(self, timeout: float = 30) -> str:
        """Everything until the stream closes."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"output still open after {timeout}s"
        lines = []
        while (line := self._queue.get_nowait()) is not None:
            lines.append(line)
        return "".join(lines)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    """A traceback means a user error reached durable as a bug."""
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a command printed; it must have exited 0."""
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def json_lines(text: str) -> list[dict[str, Any]]:
    """One JSON object per non-blank line (`--json` event streams)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is an e2e test (`-m "not e2e"` skips them all)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


# -- the same helpers as fixtures ------------------------------------------------


@pytest.fixture(scope="session", name="durable")
def durable_fixture() -> Any:
    return run_durable


@pytest.fixture(scope="session", name="start")
def start_fixture() -> Any:
    return start


@pytest.fixture(scope="session", name="stop")
def stop_fixture() -> Any:
    return stop


@pytest.fixture(scope="session", name="write")
def write_fixture() -> Any:
    return write


@pytest.fixture(scope="session", name="journal_rows")
def journal_rows_fixture() -> Any:
    return journal_rows


@pytest.fixture(scope="session", name="count_events")
def count_events_fixture() -> Any:
    return count_events


@pytest.fixture(scope="session", name="journal_kinds")
def journal_kinds_fixture() -> Any:
    return journal_kinds


@pytest.fixture(scope="session", name="wait_for_events")
def wait_for_events_fixture() -> Any:
    return wait_for_events


@pytest.fixture(scope="session", name="Lines")
def lines_fixture() -> Any:
    return Lines


@pytest.fixture(scope="session", name="no_traceback")
def no_traceback_fixture() -> Any:
    return no_traceback


@pytest.fixture(scope="session", name="as_json")
def as_json_fixture() -> Any:
    return as_json


@pytest.fixture(scope="session", name="json_lines")
def json_lines_fixture() -> Any:
    return json_lines


# -- process hygiene --------------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36
LEFTOVER_GRACE_SECONDS = 5.0


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def children() -> dict[int, tuple[str, str]]:
    """This process's child processes: pid -> (state letter, command line).

    Threads are not listed in /proc (only in /proc/PID/task), so the threads pytest
    and the tests run are never mistaken for processes.
    """
    me = os.getpid()
    found: dict[int, tuple[str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) != me:
                continue
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue  # gone meanwhile
        command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        found[int(entry)] = (state, command or stat.split("(", 1)[1].rsplit(")", 1)[0])
    return found


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@pytest.fixture(scope="session")
def subreaper() -> bool:
    return become_subreaper()


@pytest.fixture(autouse=True)
def no_leftover_processes(subreaper: bool) -> Iterator[None]:
    """After each test, no process the test started (or its `durable` did) is alive.

    Only processes that appeared during the test count: a process pool that unit
    tests left in the pytest process earlier in the session is not this test's.
    Dead children (zombies) are reaped, not reported.
    """
    if not subreaper:
        yield
        return
    before = set(children())
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while True:
        alive = {}
        for pid, (state, command) in children().items():
            if pid in before:
                continue
            if state in ("Z", "X"):
                reap(pid)
            else:
                alive[pid] = command
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    if not alive:
        return
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in alive:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    listing = "\n".join(f"  {pid}: {command}" for pid, command in sorted(alive.items()))
    pytest.fail(f"processes left running after the test (now killed):\n{listing}")
