"""Plain text: the reporter base, one line per transition, and the one-line summary.

This is what pipes, CI logs and `nohup` get, what `--no-live` gives on a terminal,
and (summary only) what `--quiet` prints. `durable log` uses `describe_event` too.
"""

from __future__ import annotations

import functools
import re
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from durable.errors import OutputClosed
from durable.events import (
    NOTES,
    Event,
    RunFinished,
    TaskExpanded,
    TaskLog,
    TaskProgress,
    TaskRetrying,
    TaskReused,
    kind_of,
)
from durable.spec import Workflow
from durable.state import FAILED, KEPT, RunState
from durable.streams import discard_rest

if TYPE_CHECKING:
    from durable.runner import RunResult


#: A terminal's escape sequences (CSI: colours, cursor moves, line erases; OSC:
#: titles, links), then any other control character but the line break.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|[\x00-\x09\x0b-\x1f\x7f]"
)


def first_line(text: str) -> str:
    """The first line of a message a tool wrote (a progress line, an error), fit to
    print as part of durable's own line: a program's colours and cursor moves
    (`\x1b[2K`) would erase or garble the live view's rows, so they are dropped,
    and a tab or other control character becomes a space."""
    line = text.split("\n", 1)[0]
    if not line.isprintable():
        line = _ESCAPES.sub(lambda m: "" if m.group().startswith("\x1b") else " ", line)
    return line.strip()


def progress_text(fraction: float | None, message: str) -> str:
    """`42% copying files`, `42%`, or the message alone when there is no fraction.
    Here, not in `model.py`, so that a run printing lines never imports the live
    view's model (its dataclasses cost a run's start about 1.5 ms)."""
    words = first_line(message)
    if fraction is None:
        return words
    percent = f"{int(fraction * 100)}%"
    return f"{percent} {words}" if words else percent


class Reporter:
    """Base reporter: prints nothing. Subclasses override what they show.

    The CLI calls `on_start` and `on_event` (through `runner.Hooks`, on the event
    loop's thread: `on_event` runs once per event, so it must stay cheap), then
    `finish` with the result, and `close` in any case, even after an error.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.run_id = ""
        self.state: RunState | None = None
        # Flushing every line costs more than the task it reports when output goes
        # to a file or a pipe; there, lines are buffered and flushed once a second.
        self.interactive = self.stream.isatty()
        self._flushed_at = 0.0
        #: Why the stream can no longer be written (its pipe's reader quit), once it
        #: cannot: from then on nothing is written.
        self.closed: str | None = None

    def on_start(self, run_id: str, workflow: Workflow, state: RunState, resumed: bool) -> None:
        self.run_id, self.state = run_id, state

    def on_event(self, event: Event) -> None:
        pass

    @property
    def watches(self) -> bool:
        """Whether `on_event` shows anything. The CLI gives the engine no `on_event`
        for a reporter that does not (`--quiet`), and the engine then journals an
        attempt's events without making their objects (`Engine._emit_started`)."""
        return type(self).on_event is not Reporter.on_event

    def finish(self, result: RunResult, elapsed: float, db: str | None = None) -> None:
        """Show how the run ended: the summary line, and each failed task on stderr."""
        reused = sum(task.reused for task in result.tasks.values())
        counts = RunState(result.tasks).counts()
        self.write(summary_line(result.run_id, result.status, counts, elapsed, reused))
        self.flush()
        for task_id, task in result.tasks.items():
            if task.state == FAILED:
                sys.stderr.write(f"  {task_id}: {task.error}\n")
        sys.stderr.flush()

    def close(self) -> None:
        """Give the terminal back; safe to call more than once, and after an error."""

    def flush_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self._flushed_at >= 1.0:
            self._flushed_at = now
            self.flush()

    def write(self, line: str) -> None:
        if self.closed is not None:
            return
        try:
            self.stream.write(line + "\n")
            if self.interactive:
                self.stream.flush()
        except OSError as exc:
            self._lost(exc)

    def flush(self) -> None:
        if self.closed is not None:
            return
        try:
            self.stream.flush()
        except OSError as exc:
            self._lost(exc)

    def _lost(self, exc: OSError) -> None:
        """The stream broke (`| head` quit reading): write nothing more, and raise
        `OutputClosed`, once. What the stream still buffers goes to /dev/null, so
        that closing it at exit cannot fail again."""
        self.closed = exc.strerror or str(exc)
        discard_rest(self.stream)
        raise OutputClosed(self.closed) from None


class QuietReporter(Reporter):
    """`--quiet`: nothing while the run goes on, only the final summary."""


def describe_start(run_id: str, workflow: Workflow, state: RunState, resumed: bool) -> str:
    total = len(state.tasks)
    if not resumed:
        return f"run {run_id} started: {workflow.name} ({total} tasks)"
    kept = sum(1 for task in state.tasks.values() if task.state in KEPT)
    return f"run {run_id} resumed: {workflow.name} ({kept} of {total} tasks kept, {total - kept} to run)"


@functools.lru_cache(maxsize=8)
def _clock(second: int) -> str:
    """HH:MM:SS, formatted once per second rather than once per line."""
    return time.strftime("%H:%M:%S", time.localtime(second))


def describe_event(event: Event) -> str:
    """One plain line for one transition."""
    clock = _clock(int(event.at))
    kind = kind_of(event)
    task_id = getattr(event, "task_id", None)
    if task_id is None:
        detail = f" {event.status}" if isinstance(event, RunFinished) else ""
        return f"{clock} run {kind.removeprefix('run_')}{detail}"
    if isinstance(event, TaskLog):  # continuation lines indented under the first
        return f"{clock} {task_id} {event.level.lower()}: " + event.message.replace("\n", "\n    ")
    if isinstance(event, TaskProgress):
        return f"{clock} {task_id} progress: {progress_text(event.fraction, event.message)}"
    line = f"{clock} {task_id} {kind.removeprefix('task_')}"
    attempt = getattr(event, "attempt", 0)
    if kind in ("task_started", "task_retrying", "task_failed") and attempt:
        line += f" (attempt {attempt})"
    for name in ("error", "reason"):
        value = getattr(event, name, None)
        if value:
            line += f": {value}"
    if isinstance(event, TaskRetrying):
        line += f"; retrying in {event.delay:g}s"
    elif isinstance(event, TaskExpanded):
        line += f" into {event.count} instance{'s' if event.count != 1 else ''}"
    elif isinstance(event, TaskReused):
        line += (
            f" from the cache (run {event.from_run}, task {event.from_task}, "
            f"attempt {event.from_attempt})"
        )
    return line


class PlainReporter(Reporter):
    """One line per transition: for logs, pipes and CI.

    Progress and log lines are not transitions and are not printed: progress is
    for the live view, log lines for `durable log` (`--json` has both).
    """

    def on_start(self, run_id: str, workflow: Workflow, state: RunState, resumed: bool) -> None:
        super().on_start(run_id, workflow, state, resumed)
        self.write(describe_start(run_id, workflow, state, resumed))

    def on_event(self, event: Event) -> None:
        if getattr(event, "task_id", None) is not None:
            if type(event) in NOTES:
                return
            self.write(describe_event(event))
            self.flush_now_and_then()
        else:
            self.flush()


def summary_line(
    run_id: str,
    status: str,
    counts: dict[str, Any],
    elapsed: float | None = None,
    reused: int = 0,
) -> str:
    parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    timing = f" in {elapsed:.2f}s" if elapsed is not None else ""
    cached = f" ({reused} from cache)" if reused else ""
    return f"run {run_id} {status}{timing}: {parts}{cached}"
