"""The live view's model: what the screen shows, kept current event by event.

Pure: it never reads a clock or touches a terminal; times come in the events, and
`now` comes from the caller. That is what the unit tests check, without a terminal.

Two costs are kept apart. `apply` runs once per event on the event loop's thread (a
100,000-task run emits over 200,000), so it does O(1) work: it counts, and keeps the
running attempts in a dict whose insertion order is their start order. `view` runs
on the drawing timer, at most ten times a second, and costs O(rows shown), never
O(tasks): the longest-running attempts are the first ones in that dict.

Throughput is counted in slots of `SLOT` seconds; the rate is the completions of
the last `WINDOW` seconds (or of the session so far, if shorter) divided by that
span. The ETA is the tasks left divided by that rate, shown once the session has run
`ETA_AFTER` seconds and something has finished in the window: before that, a rate
measured over a fraction of a second says little.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from durable.events import (
    Event,
    RunAmended,
    RunFinished,
    RunInterrupted,
    RunResumed,
    RunStarted,
    TaskCancelled,
    TaskExpanded,
    TaskFailed,
    TaskLog,
    TaskProgress,
    TaskRetrying,
    TaskReused,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    TaskUpstreamFailed,
)
from durable.report.lines import first_line, progress_text
from durable.state import (
    CANCELLED,
    FAILED,
    INTERRUPTED,
    KEPT,
    RETRYING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    UPSTREAM_FAILED,
    RunState,
)

SLOWEST = 3
FAILURES = 5
SLOT = 0.25
WINDOW = 5.0
MIN_SPAN = 1.0
ETA_AFTER = 2.0

#: Finished states, in the order the counts are shown.
FINISHED = (SUCCEEDED, FAILED, SKIPPED, UPSTREAM_FAILED, CANCELLED)
WAITING = "waiting"


@dataclass(slots=True)
class Row:
    """One running attempt as the view shows it."""

    task_id: str
    tool: str
    attempt: int
    seconds: float
    progress: str | None = None


@dataclass(slots=True)
class Notice:
    """A failure or a retry: printed once, above the live area, so it stays in the
    scrollback. `retry_in` is None for a failure that is final."""

    task_id: str
    attempt: int
    error: str
    retry_in: float | None = None


@dataclass(slots=True)
class View:
    """One frame: everything the drawing needs, and nothing it must compute."""

    run_id: str
    workflow: str
    elapsed: float
    rate: float | None
    eta: float | None
    total: int
    finished: int
    #: (state, count) in display order; finished states only when not zero, then
    #: retrying (when not zero), running and waiting (always).
    counts: list[tuple[str, int]]
    rows: list[Row] = field(default_factory=list)
    more: int = 0
    status: str | None = None


def _ignore(event: Event) -> None:
    pass


class LiveModel:
    """A run's progress for the live view.

    Made from the state a session starts from (before its `run_started` or
    `run_resumed`), then fed every event of the session, in order, with `apply` or
    `apply_all`; it never reads the state again, so it may lag behind it.
    """

    def __init__(
        self, run_id: str, workflow: str, tools: Mapping[str, str], state: RunState
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.tools = tools
        self.total = len(state.tasks)
        self.counts: dict[str, int] = dict.fromkeys(FINISHED, 0)
        self.running: dict[str, tuple[int, float]] = {}  # task id -> (attempt, started at)
        self.retrying: set[str] = set()
        #: The latest progress message of a running attempt (`ctx.progress`), if any.
        self.progress: dict[str, str] = {}
        self.notices: list[Notice] = []
        #: For the summary: the slowest successful attempts (seconds, task id), longest
        #: first, and the first failures, kept as they happen so that the end costs
        #: nothing however many tasks the run has.
        self.slowest: list[tuple[float, str]] = []
        self.failures: list[Notice] = []
        self.started: float | None = None
        self.status: str | None = None
        #: Tasks answered from the cache in this session (`task_reused`).
        self.reused = 0
        self._slots: deque[list[int]] = deque(maxlen=int(WINDOW / SLOT) + 2)
        self._count(state)
        #: The handler of each kind of event (`apply_all` does the two commonest inline).
        self.handlers: dict[type, Callable[[Any], None]] = {
            TaskStarted: self._started,
            TaskSucceeded: self._succeeded,
            TaskRetrying: self._retrying,
            TaskFailed: self._failed,
            TaskSkipped: self._finished,
            TaskUpstreamFailed: self._finished,
            TaskCancelled: self._cancelled,
            RunStarted: self._session,
            RunResumed: self._session,
            RunFinished: self._run_finished,
            RunInterrupted: self._run_interrupted,
            TaskProgress: self._progressed,
            TaskLog: _ignore,  # kept for `durable log`, not shown live
            TaskExpanded: self._expanded,
            TaskReused: self._reused,
            # The model starts from the state an amendment leaves (`runner._drive`).
            RunAmended: _ignore,
        }

    # -- per event: O(1) ------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Take one event into account (after `RunState.apply` has seen it)."""
        self.handlers[type(event)](event)

    def apply_all(self, events: Iterable[Event]) -> None:
        """`apply` each event in turn: the same result, in about half the time.

        The two commonest kinds, which make up nearly all of a large run, are handled
        inline, without a call each; the others go through `handlers`.
        """
        running, retrying, counts, slots = self.running, self.retrying, self.counts, self._slots
        handlers = self.handlers
        slow_enough = self._slow_enough()
        for event in events:
            kind = type(event)
            if kind is TaskStarted:
                if retrying:
                    retrying.discard(event.task_id)
                running[event.task_id] = (event.attempt, event.at)
            elif kind is TaskSucceeded:
                attempt = running.pop(event.task_id, None)
                if attempt is not None and event.at - attempt[1] > slow_enough:
                    self._slow(event.task_id, event.at - attempt[1])
                    slow_enough = self._slow_enough()
                if self.progress:
                    self.progress.pop(event.task_id, None)
                counts[SUCCEEDED] += 1
                slot = int(event.at / SLOT)
                if slots and slots[-1][0] == slot:
                    slots[-1][1] += 1
                else:
                    slots.append([slot, 1])
            else:
                handlers[kind](event)
                # A new session starts its counts, and its slowest attempts, afresh.
                counts, slow_enough = self.counts, self._slow_enough()

    def set_progress(self, task_id: str, message: str | None) -> None:
        """A running attempt's own latest word (`ctx.progress`); None clears it."""
        if message is None:
            self.progress.pop(task_id, None)
        elif task_id in self.running:
            self.progress[task_id] = message

    def _progressed(self, event: TaskProgress) -> None:
        self.set_progress(event.task_id, progress_text(event.fraction, event.message))

    def take_notices(self) -> list[Notice]:
        notices, self.notices = self.notices, []
        return notices

    def _started(self, event: TaskStarted) -> None:
        if self.retrying:
            self.retrying.discard(event.task_id)
        self.running[event.task_id] = (event.attempt, event.at)

    def _ended(self, task_id: str) -> None:
        self.running.pop(task_id, None)
        if self.progress:
            self.progress.pop(task_id, None)

    def _completed(self, state: str, at: float) -> None:
        self.counts[state] += 1
        slot = int(at / SLOT)
        slots = self._slots
        if slots and slots[-1][0] == slot:
            slots[-1][1] += 1
        else:
            slots.append([slot, 1])

    def _succeeded(self, event: TaskSucceeded) -> None:
        # The commonest event, so `_ended` and `_completed` are written out here.
        task_id = event.task_id
        attempt = self.running.pop(task_id, None)
        if attempt is not None and event.at - attempt[1] > self._slow_enough():
            self._slow(task_id, event.at - attempt[1])
        if self.progress:
            self.progress.pop(task_id, None)
        self.counts[SUCCEEDED] += 1
        slot = int(event.at / SLOT)
        slots = self._slots
        if slots and slots[-1][0] == slot:
            slots[-1][1] += 1
        else:
            slots.append([slot, 1])

    def _retrying(self, event: TaskRetrying) -> None:
        self._ended(event.task_id)
        self.retrying.add(event.task_id)
        self.notices.append(
            Notice(event.task_id, event.attempt, first_line(event.error), event.delay)
        )

    def _failed(self, event: TaskFailed) -> None:
        self._ended(event.task_id)
        self._completed(FAILED, event.at)
        notice = Notice(event.task_id, event.attempt, first_line(event.error))
        self.notices.append(notice)
        if len(self.failures) < FAILURES:
            self.failures.append(notice)

    def _reused(self, event: TaskReused) -> None:
        """A success from the cache: it counts as one, and as reused."""
        self.reused += 1
        self._completed(SUCCEEDED, event.at)

    def _expanded(self, event: TaskExpanded) -> None:
        self.total += event.count  # its instances are tasks of the run from now on

    def _slow_enough(self) -> float:
        """How long an attempt must have taken to join `slowest`."""
        return self.slowest[-1][0] if len(self.slowest) == SLOWEST else 0.0

    def _slow(self, task_id: str, seconds: float) -> None:
        self.slowest.append((seconds, task_id))
        self.slowest.sort(reverse=True)
        del self.slowest[SLOWEST:]

    def _finished(self, event: TaskSkipped | TaskUpstreamFailed) -> None:
        self._completed(SKIPPED if type(event) is TaskSkipped else UPSTREAM_FAILED, event.at)

    def _cancelled(self, event: TaskCancelled) -> None:
        self._ended(event.task_id)
        self.retrying.discard(event.task_id)
        self._completed(CANCELLED, event.at)

    def _session(self, event: RunStarted | RunResumed) -> None:
        """A session begins: the fold sends every task it does not keep back to pending.

        The counts come from the model's own, not from the state: the live reporter
        applies events in batches, when the state has already moved past them.
        """
        self.started = event.at
        self.status = None
        self.counts = {state: n if state in KEPT else 0 for state, n in self.counts.items()}
        self.running.clear()
        self.retrying.clear()
        self.progress.clear()
        self.slowest.clear()
        self.failures.clear()
        self._slots.clear()

    def _run_finished(self, event: RunFinished) -> None:
        self.status = event.status

    def _run_interrupted(self, event: RunInterrupted) -> None:
        self.status = INTERRUPTED

    def _count(self, state: RunState) -> None:
        """Counts from the state the model starts from: O(tasks), once."""
        for task_id, task in state.tasks.items():
            if task.state in self.counts:
                self.counts[task.state] += 1
            elif task.state == RUNNING:
                self.running[task_id] = (task.attempts, task.started_at or 0.0)
            elif task.state == RETRYING:
                self.retrying.add(task_id)

    # -- per frame: O(rows) -----------------------------------------------------------

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    def rate(self, now: float) -> float | None:
        """Tasks finished per second over the last `WINDOW` seconds; None until measurable."""
        if self.started is None:
            return None
        span = min(WINDOW, now - self.started)
        if span < MIN_SPAN:
            return None
        first = int((now - span) / SLOT)
        return sum(count for slot, count in self._slots if slot >= first) / span

    def eta(self, now: float, rate: float | None) -> float | None:
        """Seconds left at the current rate; None while that says nothing."""
        left = self.total - self.finished
        if not left or not rate or self.started is None or now - self.started < ETA_AFTER:
            return None
        return left / rate

    def tool_of(self, task_id: str) -> str:
        tool = self.tools.get(task_id)
        if tool is None:  # an instance `T[i]` of a foreach task is not in the file
            tool = self.tools.get(task_id.partition("[")[0], "?")
        return tool

    def view(self, now: float, room: int) -> View:
        """The frame to draw at `now`, with at most `room` lines for running attempts.

        When more attempts run than fit, the last line says "+N more" instead.
        """
        finished = self.finished
        running = len(self.running)
        counts = [(state, n) for state, n in self.counts.items() if n]
        if self.retrying:
            counts.append((RETRYING, len(self.retrying)))
        waiting = self.total - finished - running - len(self.retrying)
        counts += [(RUNNING, running), (WAITING, waiting)]
        room = max(room, 1)
        shown = running if running <= room else room - 1
        rows = [
            Row(task_id, self.tool_of(task_id), attempt, max(0.0, now - at),
                self.progress.get(task_id))
            for task_id, (attempt, at) in islice(self.running.items(), shown)
        ]  # fmt: skip
        rate = self.rate(now)
        return View(
            run_id=self.run_id,
            workflow=self.workflow,
            elapsed=max(0.0, now - self.started) if self.started is not None else 0.0,
            rate=rate,
            eta=self.eta(now, rate),
            total=self.total,
            finished=finished,
            counts=counts,
            rows=rows,
            more=running - shown,
            status=self.status,
        )
