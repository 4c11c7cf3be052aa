"""A run's history as a timeline: attempts, sessions, concurrency and the critical path.

This is the model behind `durable timeline`; `timeline_html.py` draws it. Both are
pure: the events and the plan come in, nothing here reads the journal or the clock.

- An **attempt** is opened by `task_started` and closed by `task_succeeded`,
  `task_failed`, `task_retrying` or `task_cancelled`. One still open when its
  session ended without a word (the process died) or at `run_interrupted` ends at
  that session's last event and is *cut*; one still open in the last session of a
  run a live process drives is *running*.
- A **session** is one process driving the run: it begins at `run_started` or
  `run_resumed` and ends at its last event. The time between sessions is dead time
  (a resume may come a day later); the picture draws it as a marked gap, not to scale.
- **Running** counts attempts in progress, the same thing `max_concurrency` bounds (a
  task waiting out its `retry_delay` holds no slot). The bound drawn is the
  workflow's: a `-j` given to `run` or `resume` is not journaled.
- The **critical path** is the chain of dependencies that decided the wall time:
  from the task that finished last, back through the dependency that finished last
  before it started (the one that released it), to a task with none.
- Past `PACK_ABOVE` tasks, rows are concurrency slots instead of tasks (each attempt
  takes the lowest slot free when it starts), so 10,000 tasks fit in a screen.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from durable.events import (
    Event,
    RunFinished,
    RunInterrupted,
    RunResumed,
    RunStarted,
    TaskCancelled,
    TaskFailed,
    TaskRetrying,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    TaskUpstreamFailed,
)
from durable.graph import Plan

#: With more tasks than this, rows are concurrency slots rather than tasks.
PACK_ABOVE = 300

# How an attempt ended.
SUCCEEDED = "succeeded"
RETRIED = "retried"  # failed, and another attempt was scheduled
FAILED = "failed"
CANCELLED = "cancelled"
CUT = "cut"  # still running when its session ended (interrupted, or the process died)
RUNNING = "running"  # still running: a live process drives the run

# How a session ended.
FINISHED = "finished"
INTERRUPTED = "interrupted"
DIED = "died"
LIVE = "live"


@dataclass(slots=True)
class Attempt:
    task_id: str
    attempt: int
    session: int
    start: float
    end: float
    outcome: str = RUNNING
    error: str | None = None
    #: The backoff that followed a retried attempt, in seconds.
    delay: float | None = None
    row: int = 0
    critical: bool = False


@dataclass(slots=True)
class Mark:
    """A task that ended without an attempt: skipped, upstream failed, or failed before it
    could start (a `when` that raised, a task the process died under too often)."""

    task_id: str
    session: int
    at: float
    outcome: str
    reason: str | None = None
    row: int = 0


@dataclass(slots=True)
class Session:
    index: int
    start: float
    end: float
    ended: str = DIED
    #: The run's status if this session finished it.
    status: str | None = None


@dataclass(slots=True)
class Timeline:
    run_id: str
    workflow: str
    status: str
    max_concurrency: int
    sessions: list[Session]
    attempts: list[Attempt]
    marks: list[Mark]
    tools: dict[str, str]
    #: Row labels: task ids, or None per row when rows are concurrency slots.
    rows: list[str | None]
    packed: bool
    #: Task ids on the critical path, from the first to the one that finished last.
    critical: list[str]
    #: Per session, the steps of the running count: (time, attempts running from then).
    running: list[list[tuple[float, int]]]
    peak: int
    #: Each task's final state, as the events leave it.
    states: dict[str, str] = field(default_factory=dict)

    @property
    def start(self) -> float:
        return self.sessions[0].start if self.sessions else 0.0

    @property
    def end(self) -> float:
        return self.sessions[-1].end if self.sessions else 0.0

    @property
    def active_seconds(self) -> float:
        """Time some process drove the run: the wall time less the gaps between sessions."""
        return sum(session.end - session.start for session in self.sessions)


def build(
    run_id: str,
    events: Iterable[Event],
    plan: Plan,
    *,
    status: str,
    live: bool = False,
    pack_above: int = PACK_ABOVE,
) -> Timeline:
    """The timeline of a run from its events (journal order) and its plan.

    `status` is the run's status as `durable status` reports it; `live` says a process
    drives the run now, so that its open attempts are running rather than cut.
    """
    sessions: list[Session] = []
    attempts: list[Attempt] = []
    marks: list[Mark] = []
    states: dict[str, str] = {}
    open_: dict[str, Attempt] = {}
    #: Attempts cancelled in this session: by Ctrl-C if it ends interrupted, so cut.
    cancelled: list[Attempt] = []

    def close_open(outcome: str) -> None:
        for attempt in open_.values():
            attempt.end, attempt.outcome = max(attempt.start, sessions[-1].end), outcome
        open_.clear()

    for event in events:
        at = event.at
        match event:
            case RunStarted() | RunResumed():
                if sessions:
                    close_open(CUT)
                cancelled.clear()
                sessions.append(Session(len(sessions), at, at))
                for task_id, state in states.items():
                    if state not in ("succeeded", "skipped"):
                        states[task_id] = "pending"  # a resume runs it again, as the fold says
                continue
        if not sessions:  # a journal always opens with run_started; be lenient anyway
            sessions.append(Session(0, at, at))
        session = sessions[-1]
        session.end = max(session.end, at)
        match event:
            case TaskStarted(task_id=task_id, attempt=number):
                opened = Attempt(task_id, number, session.index, at, at)
                open_[task_id] = opened
                attempts.append(opened)
                states[task_id] = "running"
            case TaskSucceeded(task_id=task_id):
                _close(open_, task_id, at, SUCCEEDED)
                states[task_id] = "succeeded"
            case TaskRetrying(task_id=task_id, error=error, delay=delay):
                closed = _close(open_, task_id, at, RETRIED, error)
                if closed is not None:
                    closed.delay = delay
                states[task_id] = "retrying"
            case TaskFailed(task_id=task_id, error=error):
                if _close(open_, task_id, at, FAILED, error) is None:
                    marks.append(Mark(task_id, session.index, at, FAILED, error))
                states[task_id] = "failed"
            case TaskCancelled(task_id=task_id):
                if (closed := _close(open_, task_id, at, CANCELLED)) is not None:
                    cancelled.append(closed)
                states[task_id] = "cancelled"
            case TaskSkipped(task_id=task_id, reason=reason):
                marks.append(Mark(task_id, session.index, at, "skipped", reason))
                states[task_id] = "skipped"
            case TaskUpstreamFailed(task_id=task_id):
                marks.append(Mark(task_id, session.index, at, "upstream_failed"))
                states[task_id] = "upstream_failed"
            case RunFinished(status=finished_as):
                session.ended, session.status = FINISHED, finished_as
            case RunInterrupted():
                session.ended = INTERRUPTED
                close_open(CUT)
                for attempt in cancelled:  # Ctrl-C cancels what runs, then interrupts
                    attempt.outcome = CUT
    if sessions and open_:
        close_open(RUNNING if live else CUT)
    if not live:  # no process drives it: in flight is interrupted, as `status` says
        for task_id, state in states.items():
            if state in ("running", "retrying"):
                states[task_id] = "interrupted"
    if sessions and live and sessions[-1].ended == DIED:
        sessions[-1].ended = LIVE
    for task_id in plan.tasks:
        states.setdefault(task_id, "pending")

    order = list(plan.tasks)
    packed = len(order) > pack_above
    rows = _pack(attempts) if packed else _rows_by_task(order, attempts, marks)
    if packed:
        for mark in marks:
            mark.row = -1  # not drawn: a slot row has no place for a task that never ran
    critical = critical_path(plan, attempts, marks)
    on_path = set(critical)
    for attempt in attempts:
        attempt.critical = attempt.task_id in on_path
    by_session: list[list[Attempt]] = [[] for _ in sessions]
    for attempt in attempts:  # one pass, not one per session: a run may be resumed often
        by_session[attempt.session].append(attempt)
    running = [_running_steps(session_attempts) for session_attempts in by_session]
    peak = max((count for steps in running for _, count in steps), default=0)
    return Timeline(
        run_id=run_id,
        workflow=plan.workflow.name,
        status=status,
        max_concurrency=plan.workflow.max_concurrency,
        sessions=sessions,
        attempts=attempts,
        marks=marks,
        tools={task_id: task.spec.tool for task_id, task in plan.tasks.items()},
        rows=rows,
        packed=packed,
        critical=critical,
        running=running,
        peak=peak,
        states=states,
    )


def _close(
    open_: dict[str, Attempt], task_id: str, at: float, outcome: str, error: str | None = None
) -> Attempt | None:
    attempt = open_.pop(task_id, None)
    if attempt is not None:
        attempt.end, attempt.outcome, attempt.error = max(attempt.start, at), outcome, error
    return attempt


def _rows_by_task(
    order: Sequence[str], attempts: list[Attempt], marks: list[Mark]
) -> list[str | None]:
    """One row per task, in the order they first did something (then file order)."""
    first: dict[str, float] = {}
    for item in (*attempts, *marks):
        at = item.start if isinstance(item, Attempt) else item.at
        if item.task_id not in first or at < first[item.task_id]:
            first[item.task_id] = at
    position = {task_id: i for i, task_id in enumerate(order)}
    never = float("inf")
    ids = sorted(
        {*order, *first},
        key=lambda t: (first.get(t, never), position.get(t, len(position))),
    )
    row_of = {task_id: row for row, task_id in enumerate(ids)}
    for item in (*attempts, *marks):
        item.row = row_of[item.task_id]
    return list(ids)


def _pack(attempts: list[Attempt]) -> list[str | None]:
    """Rows as concurrency slots: each attempt takes the lowest slot free at its start.

    Interval partitioning by start time, so it uses exactly as many rows as attempts
    ever overlapped. Attempts of different sessions never overlap.
    """
    busy: list[tuple[float, int, int]] = []  # (end, session, row)
    free: list[int] = []
    rows = 0
    for attempt in sorted(attempts, key=lambda a: (a.session, a.start, a.end)):
        while busy and (busy[0][1], busy[0][0]) <= (attempt.session, attempt.start):
            heapq.heappush(free, heapq.heappop(busy)[2])
        if free:
            attempt.row = heapq.heappop(free)
        else:
            attempt.row, rows = rows, rows + 1
        heapq.heappush(busy, (attempt.end, attempt.session, attempt.row))
    return [None] * rows


def _running_steps(attempts: list[Attempt]) -> list[tuple[float, int]]:
    """The number of attempts running, as steps: (time, count from then on)."""
    changes: list[tuple[float, int]] = [(a.start, 1) for a in attempts]
    changes += [(a.end, -1) for a in attempts]
    # Ends before starts at the same instant: a slot handed over is not two running.
    changes.sort()
    steps: list[tuple[float, int]] = []
    count = 0
    for at, delta in changes:
        count += delta
        if steps and steps[-1][0] == at:
            steps[-1] = (at, count)
        else:
            steps.append((at, count))
    return steps


def critical_path(plan: Plan, attempts: Sequence[Attempt], marks: Sequence[Mark]) -> list[str]:
    """The chain of dependencies that decided the wall time, first task first.

    From the task whose last attempt ended last, step to the dependency that
    finished last no later than the task's final run began (the one that released
    it), until a task has no dependency that ran.
    """
    finished: dict[str, float] = {}
    for mark in marks:
        finished[mark.task_id] = max(finished.get(mark.task_id, mark.at), mark.at)
    final_start: dict[str, float] = {}
    last_session: dict[str, int] = {}
    for attempt in attempts:
        task_id = attempt.task_id
        finished[task_id] = max(finished.get(task_id, attempt.end), attempt.end)
        session = last_session.get(task_id, -1)
        if attempt.session > session:
            last_session[task_id], final_start[task_id] = attempt.session, attempt.start
        elif attempt.session == session:
            final_start[task_id] = min(final_start[task_id], attempt.start)
    if not final_start:
        return []
    current = max(final_start, key=lambda t: finished[t])
    path = [current]
    seen = {current}
    while True:
        task = plan.tasks.get(current)
        deps = [d for d in (task.deps if task else ()) if d in finished and d not in seen]
        if not deps:
            break
        began = final_start.get(current, finished[current])
        released = [d for d in deps if finished[d] <= began] or deps
        current = max(released, key=lambda d: finished[d])
        path.append(current)
        seen.add(current)
    path.reverse()
    return path
