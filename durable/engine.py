"""The scheduler: dispatch ready tasks as soon as their own dependencies have committed.

Dispatch is event-driven, not level by level: when a task's terminal event is
committed, each dependent's count of unfinished dependencies drops, and a
dependent whose count reaches zero is decided at once (run, skip, or
upstream-failed). A slow task holds up only what depends on it.

Concurrency is bounded by counters, not by parking thousands of coroutines on a
semaphore: at most `max_concurrency` attempts exist at once, and at most
`limits[tool]` of one tool; a ready task whose tool is saturated waits in that
tool's queue without blocking other tools.

The durability barrier: a task's output enters the `Scope` that dependents are
rendered from only in the commit callback of its `task_succeeded` event. Nothing
downstream can see an output that a crash could still take back.

Poison tasks: a tool that kills its process (`os._exit`, a segfault) would kill
every resume the same way. The fold counts, per task, the process deaths it was
running at; a task with `max_deaths` of them is failed instead of started again.
Two rules keep that count exact and fair:
- in a session that follows a death, a tool is called only once its
  `task_started` is committed, so the next death is charged to exactly the tasks
  that were running (elsewhere tasks start without waiting for that commit, so a
  poison task's first death may go unrecorded: it takes at most `max_deaths + 1`
  processes down);
- a *suspect*, a task one death short of the limit, runs alone: nothing else
  starts until its outcome is committed. Its last death is then surely its own, so
  a task that merely ran beside a poison task is never failed for it (unless
  `max_deaths` is 1: then every task running at the death is).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from durable.attempt import AttemptFailed, call_tool, render_input
from durable.decide import EXPAND, RUN, Ending, backoff, decide
from durable.errors import OutputClosed
from durable.events import (
    Event,
    RunFinished,
    RunInterrupted,
    TaskCancelled,
    TaskFailed,
    TaskRetrying,
    TaskReused,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    encode_fingerprint,
)
from durable.executors import Executors, TaskReports
from durable.expansion import Expansion
from durable.fanout import group_output
from durable.graph import Plan, TaskPlan
from durable.journal import Journal
from durable.journal.cache import CacheHit, caches, newer_than
from durable.refs import Scope
from durable.state import (
    EXPANDED,
    FAILED,
    INTERRUPTED,
    PENDING,
    SKIPPED,
    SUCCEEDED,
    TERMINAL,
    RunState,
)

#: The status of a run stopped by `durable cancel`: finished, and resumable.
RUN_CANCELLED = "cancelled"

#: How an attempt's task is made: on Python 3.12+, started eagerly, its first step
#: run at once (`asyncio.Task`'s `eager_start`). A tool that returns without waiting
#: then costs no turn of the loop, and its task is never in asyncio's set of live
#: tasks.
_EAGER: dict[str, bool] = {"eager_start": True} if sys.version_info >= (3, 12) else {}

#: Process deaths while a task ran after which it is failed rather than started again.
MAX_DEATHS = 3

EventSink = Callable[[Event], None]

#: What a terminal event hands on to its dependents, in `Engine._committed`: nothing
#: (`_NOTHING`), the output of a failed `foreach` group's instances that did
#: succeed (`_GROUP`, taken at the commit), or the value itself.
_NOTHING = object()
_GROUP = object()


def _handed_on(event: Event) -> Any:
    """The output a terminal event hands on, as `Engine._committed` takes it."""
    if isinstance(event, (TaskSucceeded, TaskReused)):
        return event.output
    if isinstance(event, TaskSkipped):
        return None
    if isinstance(event, TaskFailed):
        return _GROUP
    return _NOTHING


class Engine(Expansion):
    """Drives one session of one run. Create it, then `await engine.run()` once."""

    _loop: asyncio.AbstractEventLoop  # the running loop, from `run()` on

    def __init__(
        self,
        plan: Plan,
        journal: Journal,
        run_id: str,
        params: dict[str, Any],
        state: RunState,
        *,
        max_concurrency: int | None = None,
        fail_fast: bool = False,
        on_event: EventSink | None = None,
        executors: Executors | None = None,
        max_deaths: int = MAX_DEATHS,
        cache: bool = False,
    ) -> None:
        self.plan = plan
        #: `durable run --cache`: every task reuses earlier successes unless it says not.
        self.cache = cache or plan.workflow.cache
        # Whether any task may use the cache: in a run where none does, an attempt
        # asks nothing of it (`caches`, twice an attempt: about 1.5 % of a wide run).
        self._may_cache = self.cache or any(task.spec.cache for task in plan.tasks.values())
        #: Tasks answered from the cache in this session.
        self.reused = 0
        self.journal = journal
        self.run_id = run_id
        self.state = state
        self.max_concurrency = max_concurrency or plan.workflow.max_concurrency
        self.limits = plan.workflow.limits
        self.fail_fast = fail_fast
        self.max_deaths = max_deaths
        # A task this many deaths in runs alone (see the module docstring).
        self._suspect_at = max(1, max_deaths - 1)
        self._on_event = on_event
        self.executors = executors or Executors(self.max_concurrency)
        self.scope = Scope(params=params, run_id=run_id, outputs={})

        self._remaining: dict[str, int] = {}
        self._ready: deque[str] = deque()
        self._suspects: deque[str] = deque()
        self._alone: str | None = None  # a suspect running by itself
        self._parked: dict[str, deque[str]] = {}
        self._running = 0
        self._pumping = False
        self._running_by_tool: dict[str, int] = {}
        self._active: dict[str, asyncio.Task[None]] = {}
        self._backoff: dict[str, asyncio.TimerHandle] = {}
        self._tries: dict[str, int] = {}
        self._unfinished = 0
        self._stopping: str | None = None  # None, "interrupted" or "fail_fast"
        self._fatal: BaseException | None = None
        self._done = asyncio.Event()
        self._batch: asyncio.Future[None] | None = None
        self._batch_items: list[tuple[str, Any, bool]] = []
        # After a process death, attempts wait for their `task_started` commit (`_start`).
        self._starts: dict[str, asyncio.Future[None]] | None = None
        # foreach task -> its instances not yet finished in this session
        self._group_left: dict[str, int] = {}
        # Cache lookups in flight on a remote journal (`_look_up`).
        self._lookups: set[asyncio.Future[Any]] = set()
        journal.on_lost = self._crash
        journal.on_request = self._requested
        self.peak_running = 0

    # -- public --------------------------------------------------------------

    async def run(self) -> str:
        """Run until every task is finished or the run is stopped; return the run status."""
        # Kept: asking for it costs a system call per task on Python 3.11 (getpid).
        self._loop = asyncio.get_running_loop()
        self.reports = TaskReports(self.run_id, self.state, self.emit, self._loop).open()
        self._start()
        # Everything alive now (the plan, the state) lives until the end of the run:
        # moved out of the GC's generations, it is not walked by every full collection.
        gc.freeze()
        try:
            await self._done.wait()
        finally:
            gc.unfreeze()
            self.reports.close()
        self.executors.shutdown()
        if self._fatal is not None:
            raise self._fatal
        if self._stopping == INTERRUPTED:
            self.emit(RunInterrupted(at=time.time()))
            await self.journal.flush()
            return INTERRUPTED
        if self._stopping == RUN_CANCELLED:
            status = RUN_CANCELLED
        else:
            status = FAILED if self._stopping else self.state.outcome()
        self.emit(RunFinished(at=time.time(), status=status))
        await self.journal.flush()
        return status

    def interrupt(self) -> None:
        """Stop starting tasks, cancel the running ones; the run stays resumable."""
        self._stop(INTERRUPTED)

    def _requested(self, run_id: str, kind: str) -> None:
        """A request from another process (`durable cancel`): stop as an interrupt
        does, and end the run `cancelled`, resumable."""
        if run_id == self.run_id and kind == "cancel":
            self._stop(RUN_CANCELLED)

    def stats(self) -> dict[str, int]:
        """A snapshot: attempts running, tasks ready but waiting for a slot, tasks left."""
        waiting = len(self._ready) + sum(len(q) for q in self._parked.values())
        return {"running": self._running, "queued": waiting, "unfinished": self._unfinished}

    # -- start ---------------------------------------------------------------

    def _start(self) -> None:
        if self.state.after_death:
            self._starts = {}
        outputs = self.scope.outputs
        kept: set[str] = set()
        for task_id, task in self.state.tasks.items():
            if task.state == SUCCEEDED:
                outputs[task_id] = task.output  # type: ignore[index]
                kept.add(task_id)
            elif task.state == SKIPPED:
                outputs[task_id] = None  # type: ignore[index]
                kept.add(task_id)
        self._unfinished = len(self.state.tasks) - len(kept)
        if not self._unfinished:
            self._done.set()
            return
        remaining = self._remaining
        ready = []
        expanded = []
        for task_id, plan in self.plan.tasks.items():
            if task_id in kept:
                continue
            if self.state.tasks[task_id].state == EXPANDED:
                expanded.append(task_id)  # its instances go on, whatever its dependencies do
                continue
            count = len(plan.deps) - len(kept.intersection(plan.deps)) if plan.deps else 0
            remaining[task_id] = count
            if count == 0:
                ready.append(task_id)
        for task_id in expanded:
            self._reexpand(task_id)
        for task_id in ready:
            self._decide(task_id)
        self._pump()

    # -- deciding and dispatching -------------------------------------------

    def _decide(self, task_id: str) -> None:
        """All dependencies are finished: run the task, skip it, or mark it upstream-failed."""
        if self._stopping:
            return
        plan = self.plan.tasks[task_id]
        scope = self.scope if plan.index is None else self._scope(plan)  # `_scope`, inlined
        verdict = decide(plan, self.state.tasks, scope, time.time(), self.max_deaths)
        if verdict == RUN:
            self._enqueue(task_id)
        elif verdict == EXPAND:
            self._expand(plan)  # `when` is each instance's
        else:
            assert isinstance(verdict, Ending)
            if verdict.failure and self.fail_fast:
                self._stop("fail_fast")
            self._finish(task_id, verdict.event)

    def _enqueue(self, task_id: str) -> None:
        if self.state.tasks[task_id].deaths >= self._suspect_at:
            self._suspects.append(task_id)
        else:
            self._ready.append(task_id)

    def _pump(self) -> None:
        """Start ready tasks while there are free slots; suspects first, each alone.

        Not re-entered: an attempt that runs eagerly (`_EAGER`) and gives its slot
        back at once (a retry) calls it from inside it; the loop below goes on.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            self._fill()
        finally:
            self._pumping = False

    def _fill(self) -> None:
        if self._alone is not None or self._suspects:
            if self._running or self._stopping:
                return  # a suspect waits for an empty engine, and runs in one
            self._alone = None
            if self._suspects:
                task_id = self._suspects.popleft()
                self._alone = task_id
                self._occupy(task_id)
                return
        ready = self._ready
        while ready and self._running < self.max_concurrency and not self._stopping:
            self._occupy(ready.popleft())

    def _occupy(self, task_id: str) -> None:
        """Take a slot (and one of its tool's) and launch, or park it behind its tool."""
        if self.limits:
            tool = self.plan.tasks[task_id].spec.tool
            limit = self.limits.get(tool)
            if limit is not None:
                if self._running_by_tool.get(tool, 0) >= limit:
                    self._parked.setdefault(tool, deque()).append(task_id)
                    return
                self._running_by_tool[tool] = self._running_by_tool.get(tool, 0) + 1
        self._running += 1
        if self._running > self.peak_running:
            self.peak_running = self._running
        self._launch(task_id)

    def _launch(self, task_id: str) -> None:
        attempt = self.state.tasks[task_id].attempts + 1
        self._tries[task_id] = self._tries.get(task_id, 0) + 1
        plan = self.plan.tasks[task_id]
        # The input is rendered now, from committed outputs, so that `task_started`
        # can carry the fingerprint of the work (`fingerprint.py`).
        # `_scope`, inlined for a task that is no `foreach` instance: 1.7 % of a wide
        # run's instructions, with the same line in `_decide`.
        scope = self.scope if plan.index is None else self._scope(plan)
        value, mark = render_input(plan, scope)
        if mark is not None and self._may_cache and self._caches(plan):
            if self.journal.remote_cache:
                self._look_up(plan, attempt, value, mark)
                return
            hit = self.journal.cached(mark, self._newer_than(plan))
            if hit is not None and self._answers(plan, hit):
                self._reuse(plan, mark, hit)
                return
        self._start_attempt(plan, attempt, value, mark)

    def _start_attempt(self, plan: TaskPlan, attempt: int, value: Any, mark: str | None) -> None:
        task_id = plan.id
        started = self._emit_started(task_id, attempt, mark)
        if self._starts is not None:
            self._starts[task_id] = started
        # Eager where it can be (`_EAGER`): an attempt whose tool does not wait may be
        # over, its success queued beside its start, before the task is made.
        task = asyncio.Task(
            self._attempt(plan, attempt, value), loop=self._loop, name=task_id, **_EAGER
        )
        if not task.done():
            self._active[task_id] = task

    def _look_up(self, plan: TaskPlan, attempt: int, value: Any, mark: str) -> None:
        """Ask a remote journal's cache (a round trip) while the task holds its slot;
        it then is answered, or starts (`_looked_up`)."""
        lookup = asyncio.ensure_future(
            self.journal.cached_async(mark, self._newer_than(plan))  # type: ignore[attr-defined]
        )
        self._lookups.add(lookup)
        lookup.add_done_callback(partial(self._looked_up, plan, attempt, value, mark))

    def _looked_up(
        self, plan: TaskPlan, attempt: int, value: Any, mark: str, lookup: asyncio.Future[Any]
    ) -> None:
        self._lookups.discard(lookup)
        try:
            if self._stopping or lookup.cancelled():
                # Never started: it gives its slot back and stays pending, resumable.
                self._release(plan.id)
                self._check_stopped()
                return
            hit = lookup.result()
            if hit is not None and self._answers(plan, hit):
                self._reuse(plan, mark, hit)
            else:
                self._start_attempt(plan, attempt, value, mark)
            self._pump()
        except BaseException as exc:  # a bug, or the journal lost: must not hang the run
            self._crash(exc)

    def _caches(self, plan: TaskPlan) -> bool:
        return caches(plan, self.cache)

    def _answers(self, plan: TaskPlan, hit: CacheHit) -> bool:
        """Whether a cache entry may answer the task: any but the task's own earlier
        success in this run. A task of this run starts over only when it was asked
        to (`rerun`, `resume --reload`); answered from its own success, it would not
        run again. Asked of the journal's entry, so it holds after a crash too."""
        return hit.task_id != plan.id or hit.run_id != self.run_id

    def _newer_than(self, plan: TaskPlan) -> float | None:
        return newer_than(plan, self.plan.workflow, time.time())

    def _reuse(self, plan: TaskPlan, mark: str, hit: CacheHit) -> None:
        """Answer the task with the cache's committed success of the same work."""
        self.reused += 1
        reused = TaskReused(
            task_id=plan.id,
            at=time.time(),
            output=hit.output,
            fingerprint=mark,
            from_run=hit.run_id,
            from_task=hit.task_id,
            from_attempt=hit.attempt,
        )
        self._finish(plan.id, reused, holds_slot=True)

    def _release(self, task_id: str) -> None:
        """Free a task's slot now, and fill it."""
        self._running -= 1
        if self._running_by_tool:
            self._free_tool_slot(task_id)
        self._pump()

    def _free_tool_slot(self, task_id: str) -> None:
        tool = self.plan.tasks[task_id].spec.tool
        if tool in self._running_by_tool:
            self._running_by_tool[tool] -= 1
            parked = self._parked.get(tool)
            if parked:
                self._ready.appendleft(parked.popleft())

    # -- one attempt ----------------------------------------------------------

    async def _attempt(self, plan: TaskPlan, attempt: int, value: Any) -> None:
        """One attempt, start to outcome. Cleans up after itself: no done-callback per task.

        `value` is the rendered input, or the `AttemptFailed` that rendering it raised.
        """
        task_id = plan.id
        try:
            try:
                if self._starts is not None:
                    await asyncio.shield(self._starts.pop(task_id))
                if isinstance(value, AttemptFailed):
                    raise value
                output, data = await call_tool(
                    self.executors, plan, value, self.run_id, attempt, self.reports
                )
            except asyncio.CancelledError:
                self._cancelled(task_id, attempt)
                return
            except AttemptFailed as failure:
                self._failed(plan, attempt, failure.error, failure.retryable)
                return
            remember = None
            if self._may_cache:
                mark = self.state.tasks[task_id].fingerprint
                if mark and self._caches(plan):
                    remember = (mark, plan.spec.tool)
            self._succeed(task_id, attempt, output, data, remember)
        except Exception as exc:  # not a tool failure (those are handled above): a bug
            self._crash(exc)
        finally:
            self._active.pop(task_id, None)  # not there if it ended in its eager step
            if self._stopping:
                self._check_stopped()

    def _cancelled(self, task_id: str, attempt: int) -> None:
        self.emit(TaskCancelled(task_id=task_id, attempt=attempt, at=time.time()))
        self._release(task_id)
        self._settle(task_id)

    def _failed(self, plan: TaskPlan, attempt: int, error: str, retryable: bool) -> None:
        task_id = plan.id
        tries = self._tries[task_id]
        if retryable and tries <= plan.spec.retries and not self._stopping:
            delay = backoff(plan.spec.retry_delay, tries)
            self.emit(
                TaskRetrying(
                    task_id=task_id, attempt=attempt, at=time.time(), error=error, delay=delay
                )
            )
            self._backoff[task_id] = self._loop.call_later(delay, self._retry, task_id)
            self._release(task_id)  # no slot is held through the backoff
            return
        # --fail-fast stops dispatch before this slot can go to a queued task.
        if self.fail_fast:
            self._stop("fail_fast")
        failed = TaskFailed(task_id=task_id, attempt=attempt, at=time.time(), error=error)
        self._finish(task_id, failed, holds_slot=True)

    def _retry(self, task_id: str) -> None:
        del self._backoff[task_id]
        self._enqueue(task_id)
        self._pump()

    def _cancelled_early(self, task: asyncio.Task[None]) -> None:
        """A task cancelled before its first step never entered `_attempt`: record it here."""
        task_id = task.get_name()
        if task.cancelled() and self._active.pop(task_id, None) is not None:
            self._cancelled(task_id, self.state.tasks[task_id].attempts)
        self._check_stopped()

    # -- finishing -------------------------------------------------------------

    def _finish(self, task_id: str, event: Event, holds_slot: bool = False) -> None:
        """Record a terminal event; its dependents learn of it only once it is committed.

        An attempt keeps its concurrency slot until its outcome is committed, so
        that at any moment at most `max_concurrency` tasks have run without a
        committed outcome: that bounds what a crash can make run twice.
        """
        self._hold(self.emit(event), task_id, _handed_on(event), holds_slot)

    def _succeed(
        self,
        task_id: str,
        attempt: int,
        output: Any,
        data: bytes,
        remember: tuple[str, str] | None,
    ) -> None:
        """`_finish` of an attempt's `TaskSucceeded`, by its fields (as `_emit_started`):
        `data` is the output as the journal stores it, encoded once already, and
        `remember` the fingerprint and tool under which the cache keeps it."""
        at = time.time()
        self.state.succeeded(task_id, at, output)
        if self._on_event is not None:
            self.show(TaskSucceeded(task_id=task_id, attempt=attempt, at=at, output=output))
        batch = self.journal.append_succeeded(self.run_id, task_id, attempt, at, data, remember)
        self._hold(batch, task_id, output, True)

    def _hold(
        self, batch: asyncio.Future[None], task_id: str, output: Any, holds_slot: bool
    ) -> None:
        """Keep what the commit of `batch` releases: the task's slot if it `holds_slot`,
        its dependents, and `output`, which they see (`_handed_on`)."""
        if batch is not self._batch:
            # One listener per group commit, not per event; called in the writer's
            # step, so what the commit releases starts without a turn of the loop.
            self._batch, self._batch_items = batch, []
            self.journal.when_committed(partial(self._committed, self._batch_items))
        self._batch_items.append((task_id, output, holds_slot))

    def _committed(self, items: list[tuple[str, Any, bool]], error: BaseException | None) -> None:
        """A group commit landed: hand its outputs on and decide what it unblocked."""
        try:
            if error is not None:
                self._crash(error)
                return
            remaining = self._remaining
            tasks = self.plan.tasks
            states = self.state.tasks
            outputs = self.scope.outputs
            for task_id, output, holds_slot in items:
                if holds_slot:
                    self._running -= 1
                    if self._running_by_tool:  # only tools with a limit are counted
                        self._free_tool_slot(task_id)
                if output is not _NOTHING:
                    if output is _GROUP:
                        # `all_done` dependents of a failed group see what did succeed.
                        if n := self.state.tasks[task_id].instances:
                            outputs[task_id] = group_output(self.state.tasks, task_id, n)  # type: ignore[index]
                    else:
                        outputs[task_id] = output  # type: ignore[index]
                if states[task_id].state in TERMINAL:  # `_settle`, `_check_done` after the loop
                    self._unfinished -= 1
                plan = tasks[task_id]
                if plan.group is not None:
                    self._instance_done(plan.group)
                for dependent in plan.dependents:
                    if dependent not in remaining:
                        continue  # kept from an earlier session (e.g. an all_done cleanup)
                    remaining[dependent] -= 1
                    if remaining[dependent] == 0 and states[dependent].state == PENDING:
                        self._decide(dependent)
            self._check_done()
            self._pump()
        except BaseException as exc:  # a bug in a callback must not hang the run
            self._crash(exc)

    def _settle(self, task_id: str) -> None:
        if self.state.tasks[task_id].state in TERMINAL:
            self._unfinished -= 1
        self._check_done()

    def _check_done(self) -> None:
        """The run is over once no task is unfinished, or once stopped and idle."""
        if self._unfinished == 0:
            self._done.set()
        self._check_stopped()

    # -- stopping ----------------------------------------------------------------

    def _stop(self, why: str) -> None:
        if self._stopping:
            return
        self._stopping = why
        now = time.time()
        for task_id, handle in list(self._backoff.items()):
            handle.cancel()
            del self._backoff[task_id]
            self.emit(
                TaskCancelled(task_id=task_id, attempt=self.state.tasks[task_id].attempts, at=now)
            )
        current = asyncio.current_task()
        for task in list(self._active.values()):
            if task is not current:  # the attempt whose failure stops the run is not cancelled
                task.cancel()
                task.add_done_callback(self._cancelled_early)
        self._check_stopped()

    def _check_stopped(self) -> None:
        if self._stopping and not self._active and not self._backoff and not self._lookups:
            self._done.set()

    def _crash(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
        for task in list(self._active.values()):
            task.cancel()
        self._done.set()

    def replay(self, event: Event) -> None:
        """Apply and show an event that is already committed (a run's first, say)."""
        self.state.apply(event)
        if self._on_event is not None:
            self.show(event)

    def show(self, event: Event) -> None:
        """Hand an event to whoever watches the run. If what they write to is closed
        (`durable run ... | head`), the run stops as on Ctrl-C, on the loop's next
        turn: stopping now, inside `emit`, would queue its cancellations before
        the event being emitted."""
        try:
            self._on_event(event)  # type: ignore[misc]
        except OutputClosed:
            self._on_event = None
            asyncio.get_running_loop().call_soon(self.interrupt)

    def _emit_started(self, task_id: str, attempt: int, mark: str | None) -> asyncio.Future[None]:
        """`emit` of a `TaskStarted`, one per attempt, by its fields: the event object
        is made only for whoever watches the run. Measured (`bench/README.md`): 3-5 %
        of a wide run's speed is the object, the fold's lookup of its rule and the
        journal's reading of its fields."""
        at = time.time()
        self.state.started(task_id, attempt, at, mark)
        if self._on_event is not None:
            self.show(TaskStarted(task_id=task_id, attempt=attempt, at=at, fingerprint=mark))
        data = encode_fingerprint(mark)
        return self.journal.append_started(self.run_id, task_id, attempt, at, data)

    def emit(self, event: Event) -> asyncio.Future[None]:
        """Apply an event to the live state, show it, and queue it for the journal.
        Returns the commit future."""
        self.state.apply(event)
        if self._on_event is not None:
            self.show(event)
        return self.journal.append(self.run_id, event)
