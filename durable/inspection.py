"""Reading runs back out of the journal: `runs`, `status`, `log` and `output`.

A run's status is the fold's, with one fact the journal cannot hold: whether a live
process drives it. A run that has no `run_finished` and whose lock is free was
interrupted (or its process died); one whose lock is held is running. The tasks
that were in flight in an interrupted run (`running`, or `retrying` with a retry
that nobody will start) are shown as `interrupted`, never as `running`.

Durations are those of attempts and sessions (`state.py`), never the time a run
spent with no process. An open attempt of a live run counts up to now; one of a
run whose process died counts up to that session's last event.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import AsyncIterator, Collection, Iterable
from typing import Any, NamedTuple

import msgspec

from durable import fanout
from durable import spec as spec_module
from durable.errors import DurableError, JournalDamaged, RunNotFound
from durable.events import Event, RunFinished, RunInterrupted, kind_of
from durable.journal import Journal, RunRecord, SummaryRow
from durable.refs import split_instance
from durable.spec import Workflow
from durable.state import (
    CANCELLED,
    FAILED,
    INTERRUPTED,
    RETRYING,
    RUNNING,
    UPSTREAM_FAILED,
    IllegalTransition,
    RunState,
    TaskState,
)
from durable.summary import RunSummary, session_time, shown_counts, shown_state, summarize

#: The statuses `runs` can show: the fold's, "running" (a live driver) and "damaged".
RUN_STATUSES = ("running", "succeeded", "failed", "interrupted", "cancelled", "damaged")
#: Task states that need someone's attention: `status --failed` shows only these.
ATTENTION = frozenset({FAILED, UPSTREAM_FAILED, CANCELLED, INTERRUPTED})
# `status` lists what went wrong first (the cause before its consequences), then
# what is running, then everything else; within a group, by first start.
_RANK = {FAILED: 0, INTERRUPTED: 1, CANCELLED: 2, UPSTREAM_FAILED: 3, RUNNING: 4, RETRYING: 4}
#: How often `log --follow` looks for new events.
FOLLOW_POLL = 0.2


class AmbiguousRunId(DurableError):
    """A run id prefix that more than one run starts with."""

    SHOWN = 20

    def __init__(self, prefix: str, candidates: list[tuple[str, str, float]]) -> None:
        lines = [
            f"{run_id}  {workflow}  {_local(created_at)}"
            for run_id, workflow, created_at in candidates[: self.SHOWN]
        ]
        if len(candidates) > self.SHOWN:
            lines.append(f"and {len(candidates) - self.SHOWN} more")
        lines.append("give more of the id")
        super().__init__(
            f"run id '{prefix}' is ambiguous: {len(candidates)} runs start with it", lines
        )
        self.prefix = prefix
        self.candidates = [run_id for run_id, _, _ in candidates]


def _local(at: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(at)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


async def resolve_run_id(journal: Journal, text: str) -> str:
    """The run `text` names: its exact id, else the one run whose id starts with it.

    An exact id wins over a prefix (a run `ab` is `ab` even beside `abc`). A prefix
    that several runs share is `AmbiguousRunId`, one that none has `RunNotFound`.
    """
    if await journal.has_run(text):
        return text
    if text:
        rows = await journal.find_runs(text)
        if len(rows) == 1:
            return rows[0][0]
        if rows:
            raise AmbiguousRunId(text, rows)
    raise RunNotFound(text, str(journal.path))


class RunView(msgspec.Struct):
    record: RunRecord
    state: RunState
    status: str
    last_seq: int
    #: The clock when the run was read: where a live run's open clocks stop.
    observed_at: float = 0.0

    def clock_end(self) -> float | None:
        return clock_end(self.status, self.observed_at, self.state.last_event_at)

    def task_state(self, task: TaskState) -> str:
        """The state to show: in an interrupted run, in-flight tasks are `interrupted`."""
        return shown_state(task.state, self.status)

    def task_duration(self, task: TaskState) -> float | None:
        """Seconds in the task's attempts; None if it never started."""
        if task.started_at is None:
            return None
        elapsed = task.elapsed
        end = self.clock_end()
        if task.attempt_started_at is not None and end is not None:
            elapsed += max(0.0, end - task.attempt_started_at)
        return elapsed

    def duration(self) -> float | None:
        """Seconds in the run's sessions, never the time it had no process."""
        state = self.state
        return session_time(
            state.sessions, state.elapsed, state.session_started_at, self.clock_end()
        )

    def counts(self) -> dict[str, int]:
        return shown_counts(self.state.counts(), self.status)

    def ordered(self) -> list[tuple[str, TaskState]]:
        """Tasks as `status` lists them: failures, then running, then by first start."""
        position = {task_id: i for i, task_id in enumerate(self.state.tasks)}

        def key(item: tuple[str, TaskState]) -> tuple[int, float, int]:
            task_id, task = item
            started = task.started_at if task.started_at is not None else float("inf")
            return _RANK.get(self.task_state(task), 5), started, position[task_id]

        return sorted(self.state.tasks.items(), key=key)


class DamagedRun(NamedTuple):
    """A run `runs` cannot read: its row (then an error in its place) or its events."""

    record: RunRecord | DurableError
    error: DurableError


async def fold_run(journal: Journal, record: RunRecord) -> tuple[Workflow, RunState, int]:
    """A run's workflow and the fold of its events; `JournalDamaged` if they do not
    fold, or if the run's summary covers events that are no longer there."""
    workflow, events = await _workflow_and_events(journal, record)
    try:
        state = RunState.fold((task.id for task in workflow.tasks), (event for _, event in events))
    except IllegalTransition as exc:
        raise _not_a_history(journal, record, exc) from None
    last_seq = events[-1][0] if events else 0
    if problem := (await journal.read_summary(record.run_id, last_seq)).problem:
        raise JournalDamaged(str(journal.path), record.run_id, problem)
    if state.spec is not None:  # an edited workflow (`amend.py`): the run goes on with it
        try:
            workflow = spec_module.decode(state.spec)
        except msgspec.DecodeError as exc:
            raise JournalDamaged(
                str(journal.path), record.run_id, f"its amended workflow: {exc}"
            ) from None
    return workflow, state, last_seq


async def _workflow_and_events(
    journal: Journal, record: RunRecord
) -> tuple[Workflow, list[tuple[int, Event]]]:
    try:
        workflow = spec_module.decode(record.spec)
    except msgspec.DecodeError as exc:
        raise JournalDamaged(str(journal.path), record.run_id, f"its workflow: {exc}") from None
    return workflow, await journal.events(record.run_id)


def _not_a_history(journal: Journal, record: RunRecord, exc: Exception) -> JournalDamaged:
    return JournalDamaged(
        str(journal.path), record.run_id, f"its events are not a possible history: {exc}"
    )


async def view_run(journal: Journal, record: RunRecord) -> RunView:
    _, state, last_seq = await fold_run(journal, record)
    status = await _status(journal, record.run_id, state.status)
    return RunView(record, state, status, last_seq, time.time())


async def _status(journal: Journal, run_id: str, status: str | None) -> str:
    """The fold's status, or, for a run that has none yet, whether a process drives it."""
    if status is not None:
        return status
    if await journal.is_driven(run_id):
        return RUNNING
    return INTERRUPTED


class RunLine(NamedTuple):
    """A run as `durable runs` shows it: its summary, and its status now."""

    run_id: str
    summary: RunSummary
    status: str
    #: The clock when the run was read: where a live run's open session stops.
    observed_at: float

    def duration(self) -> float | None:
        summary = self.summary
        return summary.duration(clock_end(self.status, self.observed_at, summary.last_event_at))


def clock_end(status: str, observed_at: float, last_event_at: float | None) -> float | None:
    """Where a run's open session's clocks stop: now for a live run, else its last event."""
    return observed_at if status == RUNNING else last_event_at


async def select_runs(
    journal: Journal,
    *,
    statuses: Collection[str] = (),
    workflow: str | None = None,
    since: float | None = None,
    limit: int | None = None,
) -> list[RunLine | DamagedRun]:
    """The runs `durable runs` lists, oldest first: with `limit`, the newest `limit`.

    `workflow` is a glob (`fnmatch`, case-sensitive) on the workflow's name; `since`
    a time the run was created at or after. A run is read from its summary
    (`summary.py`); one without a summary that covers its last event (a run whose
    process died just after a commit, a journal from an older durable, a damaged
    summary) is folded, newest first, only until `limit` is reached. A live run's
    summary is used even when it is a moment behind. A damaged run is listed
    whatever `statuses` asks (its status cannot be known), so damage is never hidden.
    """
    candidates: list[tuple[float, int, RunRecord | SummaryRow | DamagedRun]] = []
    for position, row in enumerate(await journal.list_summaries()):
        if row.summary is not None and (not row.behind or await journal.is_driven(row.run_id)):
            # A live run's summary may be a moment behind its last event: it is
            # shown as of then (at most `SUMMARY_EVERY` ago), not folded.
            candidates.append((row.summary.created_at, position, row))
            continue
        item: RunRecord | SummaryRow | DamagedRun
        try:
            item = await journal.get_run(row.run_id)
        except DurableError as exc:
            item = DamagedRun(exc, exc)
        if row.problem is not None and isinstance(item, RunRecord):
            item = DamagedRun(item, JournalDamaged(str(journal.path), row.run_id, row.problem))
        created_at = _created_at(item)
        candidates.append((float("-inf") if created_at is None else created_at, position, item))
    candidates.sort(key=lambda candidate: candidate[:2])
    chosen: list[RunLine | DamagedRun] = []
    for _, _, item in reversed(candidates):
        if limit is not None and len(chosen) >= limit:
            break
        name, created_at = _workflow(item), _created_at(item)
        if workflow is not None and name is not None and not fnmatch.fnmatchcase(name, workflow):
            continue
        if since is not None and created_at is not None and created_at < since:
            continue
        if isinstance(item, DamagedRun):
            chosen.append(item)  # one damaged run must not hide the others
            continue
        try:
            line = await _line(journal, item)
        except DurableError as exc:
            chosen.append(DamagedRun(item if isinstance(item, RunRecord) else exc, exc))
            continue
        if not statuses or line.status in statuses:
            chosen.append(line)
    chosen.reverse()
    return chosen


def _created_at(item: RunRecord | SummaryRow | DamagedRun) -> float | None:
    if isinstance(item, SummaryRow):
        return item.summary.created_at if item.summary is not None else None
    record = item.record if isinstance(item, DamagedRun) else item
    return record.created_at if isinstance(record, RunRecord) else None


def _workflow(item: RunRecord | SummaryRow | DamagedRun) -> str | None:
    if isinstance(item, SummaryRow):
        return item.summary.workflow if item.summary is not None else None
    record = item.record if isinstance(item, DamagedRun) else item
    return record.workflow if isinstance(record, RunRecord) else None


async def _line(journal: Journal, item: RunRecord | SummaryRow) -> RunLine:
    if isinstance(item, SummaryRow):
        summary = item.summary
        assert summary is not None
    else:
        _, state, _ = await fold_run(journal, item)
        summary = summarize(item.workflow, item.created_at, state)
    status = await _status(journal, item.run_id, summary.status)
    return RunLine(item.run_id, summary, status, time.time())


def runs_document(line: RunLine) -> dict[str, Any]:
    """One entry of `durable runs --json`."""
    return {
        "run_id": line.run_id,
        "workflow": line.summary.workflow,
        "status": line.status,
        "created_at": line.summary.created_at,
        "finished_at": line.summary.finished_at,
        "duration": _seconds(line.duration()),
        "counts": shown_counts(line.summary.counts, line.status),
    } | ({"amended": line.summary.amendments} if line.summary.amendments else {})


def damaged_document(record: RunRecord | DurableError, error: DurableError) -> dict[str, Any]:
    """The entry of `durable runs --json` for a run that cannot be read."""
    if isinstance(record, RunRecord):
        run_id, workflow, created_at = record.run_id, record.workflow, record.created_at
    else:
        run_id, workflow, created_at = getattr(record, "run_id", "?"), "?", None
    return {
        "run_id": run_id,
        "workflow": workflow,
        "status": "damaged",
        "created_at": created_at,
        "finished_at": None,
        "duration": None,
        "counts": {},
        "error": error.message,
    }


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def task_document(view: RunView, task: TaskState) -> dict[str, Any]:
    """A task in `status --json`; a `foreach` task also says how many instances it has."""
    document = {
        "state": view.task_state(task),
        "attempts": task.attempts,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "duration": _seconds(view.task_duration(task)),
        "output": task.output,
        "error": task.error,
    }
    if task.instances is not None:
        document["instances"] = task.instances
    return document


def status_document(view: RunView, *, failed_only: bool = False) -> dict[str, Any]:
    """`durable status --json`: tasks in workflow order; `failed_only`: those in `ATTENTION`."""
    tasks = {}
    for task_id, task in view.state.tasks.items():
        document = task_document(view, task)
        if not failed_only or document["state"] in ATTENTION:
            tasks[task_id] = document
    document = {
        "run_id": view.record.run_id,
        "workflow": view.record.workflow,
        "status": view.status,
        "duration": _seconds(view.duration()),
        "tasks": tasks,
    }
    if view.state.amendments:
        document["amended"] = view.state.amendments
    return document


def export_document(view: RunView) -> dict[str, Any]:
    """`durable export`: the run and every task's final state and output, for programs.

    The tasks of `status --json`, in workflow order, each `foreach` task followed by
    its instances (`fetch[0]`, `fetch[1]`...), which the fold lists last.
    """
    tasks = view.state.tasks
    documents: dict[str, Any] = {}
    for task_id, task in tasks.items():
        if task_id in documents:
            continue  # an instance, already placed after its task
        documents[task_id] = task_document(view, task)
        for instance in fanout.instances(task_id, task.instances or 0):
            documents[instance] = task_document(view, tasks[instance])
    record = view.record
    return {
        "run_id": record.run_id,
        "workflow": record.workflow,
        "status": view.status,
        "created_at": record.created_at,
        "finished_at": view.state.finished_at,
        "duration": _seconds(view.duration()),
        "params": record.params,
        "tasks": documents,
    }


class Attempt(NamedTuple):
    """One attempt of a task: when it ran, for how long, and how it ended.

    `outcome` is the task state the attempt ended in (`succeeded`, `retrying`,
    `failed`, `cancelled`), `interrupted` when its session was interrupted or its
    process died under it, or, for the attempt still open, the task's shown state.
    """

    attempt: int
    started_at: float
    ended_at: float | None
    duration: float
    outcome: str


def attempts_of(
    task_ids: Iterable[str], events: Iterable[Event], task_id: str, view: RunView
) -> list[Attempt]:
    """Every attempt of one task, replayed through the fold so the times are its own.
    An instance of a `foreach` task (`fetch[3]`) joins the fold with its expansion."""
    state = RunState.new(task_ids)
    task = state.tasks.get(task_id)
    found: list[Attempt] = []
    for event in events:
        if task is None:
            state.apply(event)
            task = state.tasks.get(task_id)
            continue
        opened, elapsed, number = task.attempt_started_at, task.elapsed, task.attempts
        state.apply(event)
        if opened is not None and task.attempt_started_at is None:
            duration = task.elapsed - elapsed
            if getattr(event, "task_id", None) == task_id:
                outcome = kind_of(event).removeprefix("task_")
            else:  # its session ended under it: interrupted, or its process died
                outcome = INTERRUPTED
            found.append(Attempt(number, opened, opened + duration, duration, outcome))
    if task is not None and task.attempt_started_at is not None:
        end = view.clock_end()
        duration = max(0.0, end - task.attempt_started_at) if end is not None else 0.0
        found.append(
            Attempt(task.attempts, task.attempt_started_at, None, duration, view.task_state(task))
        )
    return found


def names_task(workflow: Workflow, state: RunState, task_id: str) -> bool:
    """Whether a run has a task of this id, or will have once its `foreach` task
    expands (`fetch[3]`, for `durable log --follow` of a run that has not got there).
    `state` is the run's fold over `workflow`'s tasks (`fold_run`): it has all of
    them, and the instances expanded so far."""
    if task_id in state.tasks:
        return True
    instance = split_instance(task_id)
    if instance is None:
        return False
    group = instance[0]
    if not any(task.id == group and task.foreach is not None for task in workflow.tasks):
        return False
    return state.tasks[group].instances is None  # once expanded, all its instances are there


async def task_attempts(journal: Journal, view: RunView, task_id: str) -> list[Attempt]:
    workflow, events = await _workflow_and_events(journal, view.record)
    try:
        return attempts_of(
            (task.id for task in workflow.tasks), (e for _, e in events), task_id, view
        )
    except IllegalTransition as exc:
        raise _not_a_history(journal, view.record, exc) from None


def attempts_document(attempts: list[Attempt]) -> list[dict[str, Any]]:
    return [{**attempt._asdict(), "duration": _seconds(attempt.duration)} for attempt in attempts]


class Follower:
    """A run's events as they are committed, until the run ends or nobody drives it.

    After the loop, `ending` says how: "finished" (with `status`), "interrupted" (a
    `run_interrupted`), or "gone": the run has neither and its lock is free, so the
    process that drove it died. The lock is checked only when no new event came, and
    the events are read once more after finding it free, since a driver commits its
    last events before its death frees the lock.
    """

    def __init__(self, journal: Journal, run_id: str, poll: float = FOLLOW_POLL) -> None:
        self.journal = journal
        self.run_id = run_id
        self.poll = poll
        self.ending: str | None = None
        self.status: str | None = None

    async def events(self, after: int = 0) -> AsyncIterator[tuple[int, Event]]:
        while True:
            batch = await self.journal.events(self.run_id, after)
            if not batch:
                if await self.journal.is_driven(self.run_id):
                    await asyncio.sleep(self.poll)
                    continue
                batch = await self.journal.events(self.run_id, after)
                if not batch:
                    self.ending = "gone"
                    return
            for seq, event in batch:
                after = seq
                yield seq, event
            last = batch[-1][1]
            if isinstance(last, RunFinished):
                self.ending, self.status = "finished", last.status
                return
            if isinstance(last, RunInterrupted):
                self.ending = INTERRUPTED
                return
            await asyncio.sleep(self.poll)
