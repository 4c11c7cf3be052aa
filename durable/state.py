"""The fold: events -> the state of a run. The one way to know what a run has done.

The live scheduler applies each event as it emits it; `durable resume`, `status`
and `runs` fold the journal's events. Both use `RunState.apply`, so there is no
second opinion. The fold never reads the clock: times come in the events.

Task states::

    pending -> running -> succeeded | failed | retrying | cancelled
    retrying -> running | cancelled
    pending -> skipped | upstream_failed
    pending -> expanded -> succeeded | failed | skipped      (a `foreach` task)
    pending | retrying -> succeeded                          (`task_reused`: the cache)

`task_expanded` creates a `foreach` task's instances (`fetch[0]`...), each a task
of its own, `pending`. An expanded task that did not succeed goes back to
`expanded`, not `pending`, on resume: it keeps its instances.

`run_resumed` starts a new session: every task that did not succeed or get skipped
goes back to `pending` (a task that was `running` when the process died runs again:
delivery is at-least-once). If the session before ended without a word (no
`run_finished`, no `run_interrupted`: its process died), each task that was
`running` then has one more *death* to its name; the engine stops starting a task
that has taken its process down too often (a poison task). An event that breaks these rules raises
`IllegalTransition`: a journal that says so is corrupt, or the engine has a bug.

Timing: a task's `elapsed` is the sum of its finished attempts, each from its
`task_started` to the event that ended it (succeeded, retrying, failed, cancelled),
or to the end of its session if the session ended first. A session ends with
`run_finished` or `run_interrupted`; a session whose process died ends at its last
event. The time a run spent with no process (between a death or an interrupt and
`run_resumed`), and a retry's delay, are never counted. The run's own `elapsed` sums
its sessions the same way.

`run_amended` (an edited workflow, `amend.py`) replaces the set of tasks with the
new file's: removed tasks go, new ones come in `pending`, and the tasks it names to
reset go back to `pending` (a `foreach` task without its instances).

`task_progress` and `task_log` are not transitions: they are accepted in any state
of a known task and change nothing but `last_event_at`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

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
from durable.refs import group_of, instance_id

PENDING = "pending"
RUNNING = "running"
RETRYING = "retrying"
SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"
UPSTREAM_FAILED = "upstream_failed"
CANCELLED = "cancelled"
#: A `foreach` task whose instances exist (`fanout.py`): it finishes with them.
EXPANDED = "expanded"

#: A run's status when it stopped on SIGINT/SIGTERM (succeeded/failed are shared
#: with tasks); `inspection` adds "running" for a run a live process drives, and
#: shows the in-flight tasks of an interrupted run as interrupted too.
INTERRUPTED = "interrupted"

#: States a resume keeps: their outputs are final.
KEPT = frozenset({SUCCEEDED, SKIPPED})
#: States in which a task is finished for the rest of this session.
TERMINAL = frozenset({SUCCEEDED, FAILED, SKIPPED, UPSTREAM_FAILED, CANCELLED})


class IllegalTransition(Exception):
    """An event that the state machine forbids. A bug or a corrupt journal, never user error."""


class TaskState(msgspec.Struct, gc=False):
    """One task's state. Not tracked by the cyclic GC (it holds no cycles), which keeps
    a fold over a million events free of GC passes."""

    state: str = PENDING
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    output: Any = None
    error: str | None = None
    reason: str | None = None
    #: Sessions whose process died while this task was running.
    deaths: int = 0
    #: Seconds spent in this task's finished attempts, over every session.
    elapsed: float = 0.0
    #: When the attempt now going on started; None when no attempt is open.
    attempt_started_at: float | None = None
    #: A `foreach` task's number of instances, once expanded, and the digest of
    #: their items (`fanout.digest`).
    instances: int | None = None
    digest: str | None = None
    #: The fingerprint of its latest attempt's work (`fingerprint.py`).
    fingerprint: str | None = None
    #: Its success came from the cache (`task_reused`), not from running it.
    reused: bool = False


class RunState(msgspec.Struct):
    """Per-task states plus the run-level facts. Build with `RunState.new(task_ids)`."""

    tasks: dict[str, TaskState]
    started_at: float | None = None
    finished_at: float | None = None
    status: str | None = None
    interrupted: bool = False
    sessions: int = 0
    #: The session now going on follows one whose process died.
    after_death: bool = False
    #: Seconds spent in the run's ended sessions (never the time with no process).
    elapsed: float = 0.0
    #: When the session now going on started; None once it has ended.
    session_started_at: float | None = None
    #: The time of the last event applied: where a session that died ends.
    last_event_at: float | None = None
    #: The workflow file the run reads (`resume --reload`), and its amendments: how
    #: many, and the latest spec (None: the run's own snapshot in `runs`).
    source: str | None = None
    amendments: int = 0
    spec: bytes | None = None
    #: Attempts of the instances of a `foreach` task that an amendment reset: its
    #: new instances of the same ids number their attempts on from there.
    retired: dict[str, int] = msgspec.field(default_factory=dict)
    #: How many tasks are in each state, kept up to date by `apply`, so that the
    #: counts cost nothing to read: the journal's summary takes them at every commit.
    tally: dict[str, int] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tally = dict(Counter(task.state for task in self.tasks.values()))

    @classmethod
    def new(cls, task_ids: Iterable[str]) -> RunState:
        return cls(tasks={task_id: TaskState() for task_id in task_ids})

    @classmethod
    def fold(cls, task_ids: Iterable[str], events: Iterable[Event]) -> RunState:
        state = cls.new(task_ids)
        for event in events:
            state.apply(event)
        return state

    def counts(self) -> dict[str, int]:
        return dict(self.tally)

    def outcome(self) -> str:
        """What the run's status is if it ended now: succeeded only if nothing is left undone."""
        if all(task.state in KEPT for task in self.tasks.values()):
            return SUCCEEDED
        return FAILED

    def apply(self, event: Event) -> None:
        """Fold one event in: its kind's rule (`_RULES`) checks the transition and makes it.

        A table of one rule per kind rather than a `match` of class patterns: the live
        engine applies two events per task, and the `match` tried its cases in turn,
        binding their fields, before it reached the one that applied (2.1-2.6 µs a
        task's `task_started` and `task_succeeded`; 1.7-1.8 µs by the table).
        """
        rule = _RULES.get(type(event))
        if rule is None:
            raise IllegalTransition(f"unknown event {event!r}")
        rule(self, event)
        self.last_event_at = event.at

    def _started(self, event: TaskStarted) -> None:
        self.started(event.task_id, event.attempt, event.at, event.fingerprint)

    def started(self, task_id: str, attempt: int, at: float, fingerprint: str | None) -> None:
        """`task_started`'s rule, by its fields: `apply` of a `TaskStarted` comes here,
        and so does the engine, which starts an attempt without making the event
        object when nobody watches the run (`Engine._emit_started`)."""
        task = self.tasks.get(task_id)  # `_task`, inlined: this is the hottest rule
        if task is None or task.state not in _STARTS:
            raise self._illegal(task_id, TaskStarted)
        self._move(task, RUNNING)
        task.attempts = attempt
        task.fingerprint = fingerprint
        if task.started_at is None:
            task.started_at = at
        task.error = None
        task.attempt_started_at = at
        self.last_event_at = at

    def _succeeded(self, event: TaskSucceeded) -> None:
        self.succeeded(event.task_id, event.at, event.output)

    def succeeded(self, task_id: str, at: float, output: Any) -> None:
        """`task_succeeded`'s rule, by its fields, as `started` (`Engine._succeed`);
        the task's count of attempts is its `task_started`'s."""
        task = self.tasks.get(task_id)  # `_task`, inlined, as in `started`
        if task is None or task.state not in _ENDS_RUNNING:
            raise self._illegal(task_id, TaskSucceeded)
        self._move(task, SUCCEEDED)
        task.output, task.finished_at = output, at
        if (opened := task.attempt_started_at) is not None:  # `_end_attempt`, inlined:
            task.elapsed += at - opened if at > opened else 0.0  # the hottest path
            task.attempt_started_at = None
        self.last_event_at = at

    def _reused(self, event: TaskReused) -> None:
        # A retry, too, may find its work done meanwhile by another task.
        task = self._task(event.task_id, TaskReused, _STARTS)
        self._move(task, SUCCEEDED)
        task.output, task.finished_at = event.output, event.at
        task.fingerprint, task.reused = event.fingerprint, True

    def _retrying(self, event: TaskRetrying) -> None:
        task = self._task(event.task_id, TaskRetrying, (RUNNING,))
        self._move(task, RETRYING)
        task.error = event.error
        _end_attempt(task, event.at)

    def _failed(self, event: TaskFailed) -> None:
        task = self._task(event.task_id, TaskFailed, (RUNNING, PENDING, EXPANDED))
        self._move(task, FAILED)
        task.error, task.finished_at = event.error, event.at
        _end_attempt(task, event.at)

    def _skipped(self, event: TaskSkipped) -> None:
        task = self._task(event.task_id, TaskSkipped, (PENDING, EXPANDED))
        self._move(task, SKIPPED)
        task.reason, task.finished_at = event.reason, event.at

    def _upstream_failed(self, event: TaskUpstreamFailed) -> None:
        task = self._task(event.task_id, TaskUpstreamFailed, (PENDING,))
        self._move(task, UPSTREAM_FAILED)
        task.finished_at = event.at

    def _cancelled(self, event: TaskCancelled) -> None:
        task = self._task(event.task_id, TaskCancelled, (RUNNING, RETRYING))
        self._move(task, CANCELLED)
        task.finished_at = event.at
        _end_attempt(task, event.at)

    def _expanded(self, event: TaskExpanded) -> None:
        # Only from pending, and an expanded task never goes back to pending: so never twice.
        task_id, count = event.task_id, event.count
        task = self._task(task_id, TaskExpanded, (PENDING,))
        self._move(task, EXPANDED)
        task.instances, task.digest = count, event.digest
        tasks = self.tasks
        for index in range(count):
            instance = instance_id(task_id, index)
            if instance in tasks:
                raise IllegalTransition(f"task '{task_id}': instance '{instance}' exists")
            tasks[instance] = TaskState(attempts=self.retired.pop(instance, 0))
        if count:
            self.tally[PENDING] = self.tally.get(PENDING, 0) + count

    def _run_started(self, event: RunStarted) -> None:
        if self.sessions:
            raise IllegalTransition("run_started twice")
        self.started_at, self.sessions = event.at, 1
        self.session_started_at = event.at
        self.source = event.source

    def _resumed(self, event: RunResumed) -> None:
        if not self.sessions:
            raise IllegalTransition("run_resumed before run_started")
        died = self.status is None and not self.interrupted
        if self.last_event_at is not None:  # a session that died ends at its last event
            self._end_session(self.last_event_at)
        self.sessions += 1
        self.status, self.finished_at, self.interrupted = None, None, False
        self.after_death = died
        self.session_started_at = event.at
        for task in self.tasks.values():
            if task.state not in KEPT:
                if died and task.state == RUNNING:
                    task.deaths += 1
                # An expanded task keeps its instances: it is never expanded twice.
                self._move(task, PENDING if task.instances is None else EXPANDED)
                task.finished_at, task.error = None, None

    def _finished(self, event: RunFinished) -> None:
        self.status, self.finished_at = event.status, event.at
        self._end_session(event.at)

    def _interrupted(self, event: RunInterrupted) -> None:
        self.interrupted, self.finished_at = True, event.at
        self._end_session(event.at)

    def _noted(self, event: TaskProgress | TaskLog) -> None:
        # Not transitions: legal in any state, they change none. They are committed
        # events all the same, so a session that died ends at the last of them
        # (`last_event_at`, which `apply` sets).
        if event.task_id not in self.tasks:
            raise IllegalTransition(f"{type(event).__name__} for unknown task '{event.task_id}'")

    def _amend(self, event: RunAmended) -> None:
        """The run goes on with an edited workflow: its tasks are the new file's, in
        its order (instances after them); `reset` ones start over, instances and all."""
        if self.session_started_at is None:
            raise IllegalTransition("run_amended outside a session")
        busy = [t for t, task in self.tasks.items() if task.state in (RUNNING, RETRYING)]
        if busy:
            raise IllegalTransition(f"run_amended while task '{busy[0]}' is in flight")
        old, reset = self.tasks, set(event.reset)
        tasks = {task_id: old.get(task_id) or TaskState() for task_id in event.tasks}
        for task_id, task in old.items():
            group = group_of(task_id)
            if task_id == group or group not in tasks:
                continue
            if group in reset:
                self.retired[task_id] = task.attempts
            else:
                tasks[task_id] = task  # an instance of a kept group
        for task_id in reset:
            task = tasks[task_id]
            group = group_of(task_id)
            if group != task_id:  # one instance again: its task waits for it, expanded
                owner = tasks[group]
                owner.state, owner.output, owner.error, owner.finished_at = (
                    EXPANDED,
                    None,
                    None,
                    None,
                )
                owner.reused = False
            else:
                task.instances, task.digest = None, None
            task.state, task.output, task.error, task.reason = PENDING, None, None, None
            task.finished_at, task.deaths, task.reused = None, 0, False
        self.tasks = tasks
        self.tally = dict(Counter(task.state for task in tasks.values()))
        self.amendments += 1
        self.spec, self.source = event.spec, event.source

    def _move(self, task: TaskState, state: str) -> None:
        tally = self.tally
        before = task.state
        if (left := tally[before] - 1) > 0:
            tally[before] = left
        else:  # no zero entries: a state with no task is absent, as in a fresh count
            del tally[before]
        tally[state] = tally.get(state, 0) + 1
        task.state = state

    def _end_session(self, at: float) -> None:
        """Stop the clocks: the session's, and those of the attempts still open in it."""
        if self.session_started_at is not None:
            self.elapsed += max(0.0, at - self.session_started_at)
            self.session_started_at = None
        for task in self.tasks.values():
            if task.attempt_started_at is not None:
                _end_attempt(task, at)

    def _task(self, task_id: str, kind: type[Event], allowed: tuple[str, ...]) -> TaskState:
        """The task an event of class `kind` may move now (`allowed` its states)."""
        task = self.tasks.get(task_id)
        if task is None or task.state not in allowed:
            raise self._illegal(task_id, kind)
        return task

    def _illegal(self, task_id: str, kind: type[Event]) -> IllegalTransition:
        """Why an event of class `kind` may not move the task now."""
        task = self.tasks.get(task_id)
        if task is None:
            return IllegalTransition(f"{kind.__name__} for unknown task '{task_id}'")
        return IllegalTransition(
            f"task '{task_id}': {kind.__name__} is illegal in state '{task.state}'"
        )


#: What a task's success ends: an attempt, or (`foreach`) its instances.
_ENDS_RUNNING = (RUNNING, EXPANDED)


def _end_attempt(task: TaskState, at: float) -> None:
    if task.attempt_started_at is not None:
        # Clamped: two sessions may run on machines whose clocks disagree.
        task.elapsed += max(0.0, at - task.attempt_started_at)
        task.attempt_started_at = None


#: Where an attempt may start from; and where the cache may answer a task.
_STARTS = (PENDING, RETRYING)

#: Each kind of event's rule in the fold (`RunState.apply`).
_RULES: dict[type[Event], Callable[[RunState, Any], None]] = {
    TaskStarted: RunState._started,
    TaskSucceeded: RunState._succeeded,
    TaskReused: RunState._reused,
    TaskRetrying: RunState._retrying,
    TaskFailed: RunState._failed,
    TaskSkipped: RunState._skipped,
    TaskUpstreamFailed: RunState._upstream_failed,
    TaskCancelled: RunState._cancelled,
    TaskExpanded: RunState._expanded,
    TaskProgress: RunState._noted,
    TaskLog: RunState._noted,
    RunStarted: RunState._run_started,
    RunResumed: RunState._resumed,
    RunAmended: RunState._amend,
    RunFinished: RunState._finished,
    RunInterrupted: RunState._interrupted,
}
