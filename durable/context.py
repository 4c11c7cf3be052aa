"""What a tool call knows about itself, and what it reports while it runs.

Each call sees a `TaskContext` through `durable.current_context()`. Its
`idempotency_key` is derived from the run id and task id only, so it is the same
for every attempt and every resume of a task: a tool that passes it to an external
API (as an `Idempotency-Key` header, a unique constraint, a file name) makes its
side effect happen once even though the call itself may run more than once.

`ctx.progress` and `ctx.log` reach the journal through `TaskReports`: progress at
most every `PROGRESS_EVERY` seconds per task, log lines within the limits below.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from durable.events import Event, TaskLog, TaskProgress
from durable.state import RUNNING, RunState


class TaskContext(msgspec.Struct, frozen=True):
    """What a tool call may know about itself, and how it reports on itself.

    `progress` and `log` work in async and sync tools (from any thread), while the
    attempt runs; after its outcome, and in `cpu_bound` tools (another process, with
    no way to the journal), `progress` does nothing and `log`'s records only go
    where that process's own `logging` sends them (nowhere, by default).
    """

    run_id: str
    task_id: str
    attempt: int
    idempotency_key: str

    def progress(self, fraction: float | None = None, message: str = "") -> None:
        """Say how far the attempt is: `fraction` in [0, 1] (clamped) or None, and a message.

        Cheap enough for a tight loop: only the latest word is kept, and it is
        journaled (as `task_progress`, seen by the live view and `durable watch`) at
        most every `PROGRESS_EVERY` seconds per task. The last word before the
        outcome is dropped if not yet sent: the outcome supersedes it.
        """
        reports = _reports.get(self.run_id)
        if reports is not None:
            reports.progress(self.task_id, self.attempt, fraction, message)

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records are journaled (`task_log`) for this attempt.

        `durable log RUN_ID --task T` shows them. It is an adapter of the
        `durable.task` logger (level INFO unless you set it, so `debug` is dropped),
        and the records propagate to your own `logging` handlers as well. At most
        `LOG_LINES` lines and `LOG_CHARS` characters are kept per attempt, each line
        cut at `LOG_LINE_CHARS`; a last line says how many more were dropped.
        """
        return logging.LoggerAdapter(_task_logger, {"durable_task": self})


def idempotency_key(run_id: str, task_id: str) -> str:
    """`RUN:TASK`: unique per task of a run, the same for all its attempts and resumes.

    Run ids are hex and task ids are `[A-Za-z0-9_-]`, so the key fits the charset
    and length limits of the usual idempotency headers.
    """
    return f"{run_id}:{task_id}"


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "durable_task", default=None
)


def current_context() -> TaskContext:
    """The context of the tool call in progress. Raises outside of one."""
    context = _current.get()
    if context is None:
        raise RuntimeError("durable.current_context() called outside of a tool call")
    return context


# -- progress and log lines: from a tool's thread to the journal ------------------------

#: Seconds between two `task_progress` events of one task, at least.
PROGRESS_EVERY = 0.5
#: A progress message is cut to this many characters.
PROGRESS_CHARS = 200
#: Per attempt: at most this many `task_log` lines, this many characters in all,
#: and this many characters a line.
LOG_LINES = 1000
LOG_CHARS = 256 * 1024
LOG_LINE_CHARS = 4096
#: Log lines waiting for the loop thread, at most (an async tool that logs in a loop
#: without yielding would otherwise queue them all); the rest are counted, dropped.
QUEUED_LINES = 2 * LOG_LINES

#: The reports of the runs this process drives, by run id (one engine per run).
_reports: dict[str, TaskReports] = {}


class TaskReports:
    """What a run's running attempts say about themselves, carried to the journal.

    `ctx.progress` and `ctx.log` may be called from any thread, any number of times:
    they only note what was said (a dict item, a deque item) and, once per batch,
    wake the loop with `call_soon_threadsafe`. On the loop thread, `_pump` turns the
    notes into events through the engine's `emit` (so they are applied, shown and
    appended like any event, and share its group commits): every log line within
    the limits, and per task the latest progress once `PROGRESS_EVERY` has passed
    since its last one. A tool that reports 10,000 times a second thus costs the
    journal two rows a second.

    A note is kept only while its attempt runs (the task is `running` at that
    attempt in the engine's state): a timed-out sync tool, still running in its
    abandoned thread, says nothing more. `settle` is called by the engine when an
    attempt's call returns, before its outcome is emitted: its log lines go out
    first, its unsent progress is dropped. One instance per engine, registered by
    run id while the engine runs (`open`, `close`).
    """

    def __init__(
        self,
        run_id: str,
        state: RunState,
        emit: Callable[[Event], object],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.run_id = run_id
        self._state = state
        self._emit = emit
        self._loop = loop
        self._progress: dict[str, tuple[int, float | None, str]] = {}
        self._lines: deque[tuple[str, int, str, str]] = deque()
        self._sent: dict[str, float] = {}  # task id -> when its last progress went out
        self._kept: dict[str, list[int]] = {}  # task id -> [attempt, lines, chars, dropped]
        self._overflow: dict[tuple[str, int], int] = {}  # lines dropped before the queue
        self._armed = False
        self._closed = False

    def open(self) -> TaskReports:
        _reports[self.run_id] = self
        return self

    def close(self) -> None:
        self._closed = True
        if _reports.get(self.run_id) is self:
            del _reports[self.run_id]

    # -- any thread ------------------------------------------------------------

    def progress(self, task_id: str, attempt: int, fraction: Any, message: Any) -> None:
        if fraction is not None:
            fraction = float(fraction)  # a tool passing a non-number hears of it here
            if not 0.0 <= fraction <= 1.0:  # NaN too
                fraction = None if fraction != fraction else min(1.0, max(0.0, fraction))
        if type(message) is not str:
            message = str(message)
        self._progress[task_id] = (attempt, fraction, message)
        if not self._armed:
            self._arm()

    def line(self, task_id: str, attempt: int, level: str, message: str) -> None:
        if len(self._lines) >= QUEUED_LINES:
            key = (task_id, attempt)
            self._overflow[key] = self._overflow.get(key, 0) + 1
            return
        self._lines.append((task_id, attempt, level, message))
        if not self._armed:
            self._arm()

    def _arm(self) -> None:
        if self._closed:
            return
        self._armed = True
        try:
            self._loop.call_soon_threadsafe(self._pump)
        except RuntimeError:  # the loop is closed: the run is over
            pass

    # -- the loop thread ---------------------------------------------------------

    def _current(self, task_id: str, attempt: int) -> bool:
        task = self._state.tasks.get(task_id)
        return task is not None and task.state == RUNNING and task.attempts == attempt

    def _pump(self) -> None:
        self._armed = False
        if self._closed:
            return
        if self._lines:
            self._write_lines()
        if not self._progress:
            return
        now = time.monotonic()
        wait: float | None = None
        for task_id in list(self._progress):
            note = self._progress.pop(task_id, None)
            if note is None:
                continue
            attempt, fraction, message = note
            if not self._current(task_id, attempt):
                continue
            due = self._sent.get(task_id, 0.0) + PROGRESS_EVERY
            if due > now:
                self._progress.setdefault(task_id, note)  # a newer note from a thread wins
                wait = due - now if wait is None else min(wait, due - now)
                continue
            self._sent[task_id] = now
            if len(message) > PROGRESS_CHARS:
                message = message[: PROGRESS_CHARS - 1] + "…"
            self._emit(
                TaskProgress(
                    task_id=task_id,
                    attempt=attempt,
                    at=time.time(),
                    fraction=fraction,
                    message=message,
                )
            )
        if wait is not None and not self._armed:
            self._armed = True
            self._loop.call_later(wait, self._pump)

    def _write_lines(self) -> None:
        lines, kept = self._lines, self._kept
        while lines:
            task_id, attempt, level, message = lines.popleft()
            if not self._current(task_id, attempt):
                continue
            count = kept.get(task_id)
            if count is None or count[0] != attempt:
                count = kept[task_id] = [attempt, 0, 0, 0]
            if len(message) > LOG_LINE_CHARS:
                message = message[: LOG_LINE_CHARS - 1] + "…"
            if count[1] >= LOG_LINES or count[2] + len(message) > LOG_CHARS:
                count[3] += 1
                continue
            count[1] += 1
            count[2] += len(message)
            self._emit(
                TaskLog(
                    task_id=task_id, attempt=attempt, at=time.time(), level=level, message=message
                )
            )

    def settle(self, task_id: str, attempt: int) -> None:
        """An attempt's call is over: journal its log lines, drop its unsent progress."""
        if self._lines:
            self._write_lines()
        if self._progress:
            self._progress.pop(task_id, None)
        if self._sent:
            self._sent.pop(task_id, None)
        dropped = 0
        if self._kept and (count := self._kept.pop(task_id, None)) is not None:
            dropped = count[3]
        if self._overflow:
            dropped += self._overflow.pop((task_id, attempt), 0)
        if dropped:
            self._emit(
                TaskLog(
                    task_id=task_id,
                    attempt=attempt,
                    at=time.time(),
                    level="WARNING",
                    message=f"{dropped:,} more log line(s) of this attempt were dropped: at most "
                    f"{LOG_LINES:,} lines and {LOG_CHARS // 1024} KiB are kept per attempt",
                )
            )


class _JournalHandler(logging.Handler):
    """Hands `ctx.log`'s records to the reports of the run that drives the task."""

    def emit(self, record: logging.LogRecord) -> None:
        context = getattr(record, "durable_task", None)
        if context is None:
            return
        reports = _reports.get(context.run_id)
        if reports is None:  # a worker process, or after the run
            return
        try:
            message = self.format(record)
        except Exception:
            self.handleError(record)
            return
        reports.line(context.task_id, context.attempt, record.levelname, message)


_task_logger = logging.getLogger("durable.task")
if _task_logger.level == logging.NOTSET:
    _task_logger.setLevel(logging.INFO)
_task_logger.addHandler(_JournalHandler())
