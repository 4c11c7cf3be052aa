"""`durable worker`: a process that claims ready tasks of any fleet run, runs them, commits them.

One event loop, three loops on it and a connection each:
- **claim**: while slots are free, take work (`FleetStore.claim`) from the runs that
  have some; then wait for a NOTIFY on `durable_work`, a slot coming free, or the
  poll interval (NOTIFY is a hint: polling also finds leases that ran out and
  retries whose delay is over);
- **commit**: outcomes are committed in batches, one transaction per run, which
  also claims what they made ready while this worker has room (a chain goes on
  without a round trip through NOTIFY). A slot is held until its outcome is
  committed, as in the in-process engine: a kill re-runs at most this worker's slots;
- **renew**: every third of the lease, every lease this worker holds is extended in
  one UPDATE, with its heartbeat. An attempt missing from what comes back was
  claimed again (this worker was paused past its lease): its tool is cancelled and
  whatever it would have committed is refused by the fence anyway.

Connections that break (PostgreSQL restarting, a network cut) are opened again with
backoff, and the interrupted transaction is tried again: a commit tried twice is
refused the second time if the first landed (the fence), so nothing is doubled.

SIGTERM stops claiming and lets running attempts finish (for `grace` seconds, then
hands the rest back); SIGINT, or a second signal, hands back at once. Handing back
is journaled (`task_retrying`, not counted as a try), and the task is ready for
another worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from durable import tools
from durable.attempt import AttemptFailed, call_tool
from durable.decide import backoff
from durable.errors import DurableError
from durable.events import (
    Event,
    TaskFailed,
    TaskLog,
    TaskRetrying,
    TaskSucceeded,
)
from durable.executors import Executors, TaskReports
from durable.fleet.store import Claim, FleetStore, Outcome
from durable.fleet.tables import CHANNEL
from durable.fleet.workers import new_worker_id, register, renew, unregister
from durable.journal.postgres import PgJournal, connection_lost
from durable.journal.schema import SUMMARY_EVERY
from durable.state import RUNNING, TaskState
from durable.streams import discard_rest

#: Seconds between looks for work when no NOTIFY comes (leases that ran out, delays over).
POLL = 0.5
#: Longest wait between two attempts to reconnect.
MAX_BACKOFF = 5.0


class _Held:
    """The attempts this worker runs for one run, as `TaskReports` asks about them."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskState] = {}


class _Attempt:
    __slots__ = ("claim", "claimed_at", "lost", "task")

    def __init__(self, claim: Claim, claimed_at: float) -> None:
        self.claim = claim
        self.claimed_at = claimed_at
        self.lost = False
        self.task: asyncio.Task[None] | None = None


class Worker:
    """Create it, then `await worker.run()`; `stop(hand_back)` ends it."""

    def __init__(
        self,
        dsn: str,
        slots: int,
        *,
        lease: float = 10.0,
        durability: str = "normal",
        grace: float = 30.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.slots = slots
        self.lease = lease
        self.durability = durability
        self.grace = grace
        self.worker_id = new_worker_id()
        self._log = log or _log_to_stderr
        self._active: dict[tuple[str, str, int], _Attempt] = {}
        self._outcomes: list[Outcome] = []
        self._have_outcomes = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = False
        self._handing_back = False
        self._db = asyncio.Lock()
        self._held: dict[str, _Held] = {}
        self._reports: dict[str, TaskReports] = {}
        self._notes: dict[tuple[str, str, int], list[Event]] = {}
        self._journal: PgJournal | None = None
        self._store: FleetStore | None = None
        self._beat: Any = None
        self._listen: Any = None
        self.executors = Executors(slots)
        self.committed = 0
        self.refused = 0
        self._names: list[str] = []
        #: A NOTIFY came since the claim loop last looked: there may be work.
        self._maybe_work = True
        #: Runs this worker cannot work on (damaged, say), and why: said once, skipped.
        self._skipped: dict[str, str] = {}

    def say(self, message: str) -> None:
        self._log(f"worker {self.worker_id[:8]}: {message}")

    # -- lifecycle -------------------------------------------------------------

    async def run(self) -> None:
        await self._connect()
        assert self._journal is not None
        self._beat = await self._journal._connect()
        self._listen = await self._listening(self._journal)
        names = self._names = sorted(tools.REGISTRY.names())
        await register(self._beat, self.worker_id, self.slots, names, self.lease)
        self.say(
            f"started on {socket.gethostname()} (pid {os.getpid()}): {self.slots} slots, "
            f"lease {self.lease:g}s, tools: {', '.join(names)}"
        )
        loop = asyncio.get_running_loop()
        for signum, hand_back in ((signal.SIGTERM, False), (signal.SIGINT, True)):
            loop.add_signal_handler(signum, self.stop, hand_back)
        loops = [
            loop.create_task(self._claim_loop(), name="claim"),
            loop.create_task(self._commit_loop(), name="commit"),
            loop.create_task(self._renew_loop(), name="renew"),
        ]
        try:
            waiting = set(loops)
            while loops[1] in waiting:  # until the commit loop has committed the last outcome
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            self.executors.shutdown()
            try:
                await unregister(self._beat, self.worker_id)
            except Exception:  # the database is gone: the heartbeat simply stops
                pass
            await self._close()
        store = self._store
        transactions, fast, redone = (
            (store.transactions, store.fast, store.redone) if store else (0, 0, 0)
        )
        self.say(
            f"stopped: {self.committed} outcomes committed, {self.refused} refused, "
            f"{transactions} transactions; {fast} commits in one round trip, {redone} "
            f"redone the long way (their run had moved on)"
        )

    def stop(self, hand_back: bool = False) -> None:
        """Stop claiming; running attempts finish (within `grace`), or are handed
        back now (`hand_back`, or a second call)."""
        if self._stopping:
            hand_back = True
        if not self._stopping:
            self.say(
                "stopping: handing its tasks back"
                if hand_back
                else f"stopping: letting {len(self._active)} running tasks finish "
                f"(at most {self.grace:g}s; Ctrl-C hands them back now)"
            )
        self._stopping = True
        self._wake.set()
        self._have_outcomes.set()
        if hand_back and not self._handing_back:
            self._hand_back()
        elif not hand_back:
            asyncio.get_running_loop().call_later(self.grace, self._hand_back)

    def _hand_back(self) -> None:
        self._handing_back = True
        for attempt in list(self._active.values()):
            if attempt.task is not None and not attempt.task.done():
                attempt.task.cancel()
        self._have_outcomes.set()

    def _done(self) -> bool:
        return self._stopping and not self._active and not self._outcomes

    # -- connections ---------------------------------------------------------------

    async def _connect(self) -> None:
        # Its writing connection (synchronous_commit as `durability` says) is the
        # store's: claims and commits, one transaction at a time.
        journal = await PgJournal.open(self.dsn, create=True, durability=self.durability)
        conn = journal._writable
        # The fleet's statements reach rows by key and index, whatever their values:
        # planned once, not at every execution (re-planning its one write statement
        # cost a chain's step more than executing it).
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        self._journal = journal
        if self._store is None:
            self._store = FleetStore(journal, conn, self.worker_id, self.lease)
        else:
            self._store.journal, self._store.conn = journal, conn
            self._store.begun = False
            self._store.forget()

    async def _close(self, everything: bool = True) -> None:
        """Close the store's connection and the journal (and, with `everything`, the
        renewal and LISTEN connections, which the renew loop otherwise keeps)."""
        extra = (self._beat, self._listen) if everything else ()
        for conn in (self._store.conn if self._store else None, *extra):
            if conn is not None and not conn.is_closed():
                conn.terminate()
        if self._journal is not None:
            try:
                await self._journal.close()
            except Exception:
                pass

    async def _reconnect(self, exc: BaseException) -> None:
        """The database went away: connect again, with backoff, until it answers."""
        self.say(f"lost the database ({_reason(exc)}); reconnecting")
        await self._close(everything=False)
        delay = 0.1
        while True:
            try:
                await self._connect()
                assert self._store is not None
                await register(
                    self._store.conn, self.worker_id, self.slots, self._names, self.lease
                )
            except Exception as again:  # whatever a half-open or restarting server says
                if isinstance(again, DurableError) and not connection_lost(again):
                    raise  # not the connection: a schema of a newer durable, say
                await self._close(everything=False)
                await asyncio.sleep(delay)
                delay = min(MAX_BACKOFF, delay * 2)
                continue
            self.say("reconnected")
            return

    async def _with_db(self, operation: Callable[[FleetStore], Any]) -> Any:
        """Run a store operation under the connection lock, reconnecting and trying
        again as long as the connection is what failed."""
        while True:
            async with self._db:
                try:
                    assert self._store is not None
                    return await operation(self._store)
                except Exception as exc:
                    if not connection_lost(exc, self._store.conn):  # type: ignore[union-attr]
                        raise
                    self._store.forget()  # type: ignore[union-attr]
                    await self._reconnect(exc)

    def _notified(self, *_: Any) -> None:
        self._maybe_work = True
        self._wake.set()

    # -- claiming ----------------------------------------------------------------

    def _free(self) -> int:
        return self.slots - len(self._active)

    async def _claim_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            got = 0
            if self._free() > 0:
                self._maybe_work = False  # a NOTIFY during the look sets it again
                runs = await self._with_db(lambda store: store.claimable_runs())
                for run_id in runs:
                    if self._free() <= 0 or self._stopping:
                        break
                    if run_id in self._skipped:
                        continue
                    try:
                        claims = await self._with_db(
                            lambda store, run_id=run_id: store.claim(run_id, self._free())
                        )
                    except DurableError as exc:  # this run only (damaged, say): not the others
                        self._skipped[run_id] = exc.message
                        self.say(f"run {run_id} is left alone: {exc.message}")
                        continue
                    self._start(claims)
                    got += len(claims)
            if got and self._free() > 0:
                continue  # there may be more: look again at once
            try:
                await asyncio.wait_for(self._wake.wait(), POLL)
            except TimeoutError:
                pass

    def _start(self, claims: list[Claim]) -> None:
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        for claim in claims:
            key = (claim.run_id, claim.task_id, claim.attempt)
            attempt = _Attempt(claim, now)
            self._active[key] = attempt
            held = self._held.setdefault(claim.run_id, _Held())
            held.tasks[claim.task_id] = TaskState(state=RUNNING, attempts=claim.attempt)
            attempt.task = loop.create_task(self._attempt(attempt), name=claim.task_id)

    # -- one attempt -----------------------------------------------------------------

    def _reports_for(self, run_id: str) -> TaskReports:
        reports = self._reports.get(run_id)
        if reports is None:
            reports = TaskReports(
                run_id,
                self._held[run_id],  # type: ignore[arg-type]
                partial(self._noted, run_id),
                asyncio.get_running_loop(),
            ).open()
            self._reports[run_id] = reports
        return reports

    def _noted(self, run_id: str, event: Event) -> None:
        """A run's reports hand over a log line: kept with its attempt, committed with
        its outcome. (Progress is only worth its moment: not kept.)"""
        if isinstance(event, TaskLog):
            key = (run_id, event.task_id, event.attempt)
            if key in self._active:
                self._notes.setdefault(key, []).append(event)

    async def _attempt(self, attempt: _Attempt) -> None:
        claim = attempt.claim
        key = (claim.run_id, claim.task_id, claim.attempt)
        plan = claim.plan
        reports = self._reports_for(claim.run_id)
        ending: Event
        data = None
        handback = False
        try:
            if isinstance(claim.value, AttemptFailed):
                raise claim.value
            output, data = await call_tool(
                self.executors, plan, claim.value, claim.run_id, claim.attempt, reports
            )
            ending = TaskSucceeded(
                task_id=claim.task_id, attempt=claim.attempt, at=time.time(), output=output
            )
        except AttemptFailed as failure:
            ending = self._failure(claim, failure)
        except asyncio.CancelledError:
            if attempt.lost:
                self._drop(key)
                return
            handback = True
            ending = TaskRetrying(
                task_id=claim.task_id,
                attempt=claim.attempt,
                at=time.time(),
                error=f"handed back by worker {self.worker_id[:8]}, which is stopping",
                delay=0.0,
            )
        events = [*self._notes.pop(key, []), ending]
        self._outcomes.append(Outcome(*key, events, data, handback))  # type: ignore[arg-type]
        self._have_outcomes.set()

    def _failure(self, claim: Claim, failure: AttemptFailed) -> Event:
        spec = claim.plan.spec
        now = time.time()
        if failure.retryable and claim.tries < spec.retries and not self._stopping:
            delay = backoff(spec.retry_delay, claim.tries + 1)
            return TaskRetrying(
                task_id=claim.task_id,
                attempt=claim.attempt,
                at=now,
                error=failure.error,
                delay=delay,
            )
        return TaskFailed(task_id=claim.task_id, attempt=claim.attempt, at=now, error=failure.error)

    def _drop(self, key: tuple[str, str, int], wake: bool = True) -> None:
        """Forget an attempt (committed, refused, or lost): its slot comes free."""
        self._active.pop(key, None)
        self._notes.pop(key, None)
        held = self._held.get(key[0])
        if held is not None:
            task = held.tasks.get(key[1])
            if task is not None and task.attempts == key[2]:
                del held.tasks[key[1]]
            if not held.tasks:  # nothing of the run runs here: forget its reports
                del self._held[key[0]]
                reports = self._reports.pop(key[0], None)
                if reports is not None:
                    reports.close()
        if wake:
            self._wake.set()

    # -- committing ----------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            if not self._outcomes:
                behind = self._store.behind() if self._store is not None else []
                if self._done():
                    await self._catch_up(behind, retry=False)
                    return
                self._have_outcomes.clear()
                try:
                    await asyncio.wait_for(
                        self._have_outcomes.wait(), SUMMARY_EVERY if behind else None
                    )
                except TimeoutError:
                    await self._catch_up(behind)  # idle: the summaries go out now
                continue
            outcomes, self._outcomes = self._outcomes, []
            free = self._free() + len(outcomes)
            if self._stopping:
                free = 0
            committed = await self._with_db(partial(_commit, outcomes=outcomes, free=free))
            refused = {(o.run_id, o.task_id, o.attempt) for o in committed.fenced}
            for outcome in outcomes:
                key = (outcome.run_id, outcome.task_id, outcome.attempt)
                self._drop(key, wake=False)
                if key in refused:
                    self.refused += 1
                    self.say(
                        f"late outcome refused: run {outcome.run_id} task {outcome.task_id} "
                        f"attempt {outcome.attempt} (the run was cancelled, or the task's "
                        f"lease ran out and another worker took it over)"
                    )
                else:
                    self.committed += 1
            self._start(committed.claims)
            # The commit claimed what its run had; other runs' work, announced while
            # this worker was full, is looked for now that it has room.
            if self._free() > 0 and self._maybe_work:
                self._wake.set()

    async def _catch_up(self, run_ids: list[str], retry: bool = True) -> None:
        """Write the summaries this worker's commits left behind (`FleetStore._write`).
        Stopping, it tries once and does not wait for a database that went away:
        the next worker to commit for the run writes its summary."""
        for run_id in run_ids:
            try:
                if retry:
                    await self._with_db(lambda store, run_id=run_id: store.catch_up(run_id))
                elif self._store is not None:
                    async with self._db:
                        await self._store.catch_up(run_id)
            except DurableError as exc:  # that run only (damaged, say): the next commit retries
                self.say(f"run {run_id}: its summary was not written: {exc.message}")
            except Exception as exc:
                if retry or not connection_lost(exc):
                    raise

    # -- renewing ----------------------------------------------------------------------

    async def _listening(self, journal: PgJournal) -> Any:
        """A new connection that LISTENs for work. If it is cut while the LISTEN is
        sent, asyncpg may say so as another error (InternalClientError) before it
        sees the connection closed: it is closed here, so that it counts as lost,
        and the next renewal opens another."""
        conn = await journal._connect()
        try:
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _renew_loop(self) -> None:
        """Renew every third of the lease, on a connection of its own (opened again
        here if it broke, and the LISTEN one too), so a busy or reconnecting store
        never delays a renewal."""
        every = self.lease / 3
        while True:
            await asyncio.sleep(every)
            since = time.monotonic()
            try:
                journal = self._journal
                assert journal is not None
                if self._beat is None or self._beat.is_closed():
                    self._beat = await journal._connect()
                if self._listen is None or self._listen.is_closed():
                    self._listen = await self._listening(journal)
                held = await renew(self._beat, self.worker_id, self.lease)
            except Exception as exc:
                if not (connection_lost(exc, self._beat) or connection_lost(exc, self._listen)):
                    raise
                continue  # the next renewal tries again
            for key, attempt in list(self._active.items()):
                if key in held or attempt.claimed_at >= since or attempt.lost:
                    continue
                if attempt.task is not None and not attempt.task.done():
                    attempt.lost = True
                    attempt.task.cancel()
                    self.refused += 1
                    self.say(
                        f"lease lost: run {key[0]} task {key[1]} attempt {key[2]} is no longer "
                        f"this worker's (another took it over, or the run was cancelled); "
                        f"stopping it here, its outcome would be refused"
                    )


async def _commit(store: FleetStore, outcomes: list[Outcome], free: int) -> Any:
    return await store.commit(outcomes, free)


def _log_to_stderr(line: str) -> None:
    """A worker's log line. If stderr's reader has gone (a log shipper died), the
    log goes silent for good and the worker goes on: its work is in the journal,
    and SIGTERM must still stop it cleanly."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        discard_rest(sys.stderr)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
