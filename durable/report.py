"""Reporters: how a run shows itself. Live on a terminal, plain lines otherwise, or JSON lines.

A reporter only formats; it never decides anything. When nobody watches (the
Python API, `durable bench`), there is no reporter and reporting costs nothing.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import IO, Any

import msgspec

from durable.events import Event, RunFinished, RunInterrupted, TaskRetrying, kind_of, to_dict
from durable.spec import Workflow
from durable.state import FAILED, KEPT, RUNNING, RunState


class Reporter:
    """Base reporter: prints nothing. Subclasses override what they show."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.run_id = ""
        self.state: RunState | None = None
        # Flushing every line costs more than the task it reports when output goes
        # to a file or a pipe; there, lines are buffered and flushed once a second.
        self.interactive = self.stream.isatty()
        self._flushed_at = 0.0

    def on_start(self, run_id: str, workflow: Workflow, state: RunState, resumed: bool) -> None:
        self.run_id, self.state = run_id, state

    def on_event(self, event: Event) -> None:
        pass

    def flush_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self._flushed_at >= 1.0:
            self._flushed_at = now
            self.stream.flush()

    def write(self, line: str) -> None:
        self.stream.write(line + "\n")
        if self.interactive:
            self.stream.flush()


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
    return line


class PlainReporter(Reporter):
    """One line per transition: for logs, pipes and CI."""

    def on_start(self, run_id: str, workflow: Workflow, state: RunState, resumed: bool) -> None:
        super().on_start(run_id, workflow, state, resumed)
        self.write(describe_start(run_id, workflow, state, resumed))

    def on_event(self, event: Event) -> None:
        if getattr(event, "task_id", None) is not None:
            self.write(describe_event(event))
            self.flush_now_and_then()
        else:
            self.stream.flush()


class JsonReporter(Reporter):
    """One JSON object per event on stdout; the run id is in every object."""

    _encoder = msgspec.json.Encoder()

    def on_event(self, event: Event) -> None:
        record = to_dict(event, self.run_id)
        try:
            line = self._encoder.encode(record).decode()
        except (TypeError, msgspec.EncodeError):
            record["output"] = repr(record.get("output"))
            line = self._encoder.encode(record).decode()
        self.write(line)
        if getattr(event, "task_id", None) is None:
            self.stream.flush()
        else:
            self.flush_now_and_then()


class LiveReporter(Reporter):
    """A status line redrawn in place (at most ten times a second), failures as lines above it."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(stream)
        self._last_draw = 0.0
        self._started = time.monotonic()

    def on_start(self, run_id: str, workflow: Workflow, state: RunState, resumed: bool) -> None:
        super().on_start(run_id, workflow, state, resumed)
        self.write(describe_start(run_id, workflow, state, resumed))

    def on_event(self, event: Event) -> None:
        kind = kind_of(event)
        if kind in ("task_failed", "task_retrying"):
            self.stream.write("\r\x1b[K")
            self.write(describe_event(event))
        final = isinstance(event, RunFinished | RunInterrupted)
        now = time.monotonic()
        if final or now - self._last_draw >= 0.1:
            self._last_draw = now
            self._draw(final)

    def _draw(self, final: bool) -> None:
        assert self.state is not None
        counts: dict[str, int] = {}
        for task in self.state.tasks.values():
            counts[task.state] = counts.get(task.state, 0) + 1
        total = len(self.state.tasks)
        done = sum(counts.get(s, 0) for s in KEPT)
        parts = [f"{done}/{total} done", f"{counts.get(RUNNING, 0)} running"]
        if counts.get(FAILED):
            parts.append(f"{counts[FAILED]} failed")
        elapsed = time.monotonic() - self._started
        self.stream.write(f"\r\x1b[K{self.run_id} {', '.join(parts)} [{elapsed:.1f}s]")
        if final:
            self.stream.write("\n")
        self.stream.flush()


def for_output(json: bool, stream: IO[str] | None = None) -> Reporter:
    stream = stream or sys.stdout
    if json:
        return JsonReporter(stream)
    if stream.isatty():
        return LiveReporter(stream)
    return PlainReporter(stream)


def summary_line(
    run_id: str, status: str, counts: dict[str, Any], elapsed: float | None = None
) -> str:
    parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    timing = f" in {elapsed:.2f}s" if elapsed is not None else ""
    return f"run {run_id} {status}{timing}: {parts}"
