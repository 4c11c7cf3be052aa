"""The fleet's transactions on PostgreSQL: hand a run over, claim work, commit outcomes, renew.

Every transaction that changes a fleet run first takes that run's transaction lock
(`pg_advisory_xact_lock`, in the fleet's own lock space), so one run's claims and
commits happen one after another, in any number of workers. Under the lock the
worker catches its copy of the run up with the events committed since it last
looked (checked against their checksum chain), and decides from that: the claim
counts what is running (rows with a live lease, nothing kept on the side) against
`max_concurrency` and the tool limits; the commit checks its fence, appends the
outcome, and decides the dependents with `advance.py`, the engine's own rules. So
the run needs no process of its own: it goes on as long as one worker lives.

The fence: a worker's outcome is accepted only while the task's work row is still
`running` under that worker's id at that attempt. Once a lease runs out, the next
claim takes the row (a new attempt, a new owner), and the late outcome matches
nothing: it is refused, in the same transaction that would have committed it.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec

from durable import graph, tools
from durable.advance import Advance, Steps
from durable.attempt import AttemptFailed
from durable.errors import DurableError, JournalDamaged
from durable.events import (
    Event,
    RunResumed,
    TaskFailed,
    TaskRetrying,
    TaskStarted,
    encode_data,
    kind_of,
)
from durable.fingerprint import fingerprint, tool_identity
from durable.fleet.tables import CHANNEL, FLEET_LOCK_SPACE
from durable.graph import Plan, TaskPlan
from durable.inspection import fold_run
from durable.integrity import ChainVerifier, summary_crc
from durable.journal.common import chain_batch, checked_row
from durable.journal.postgres import _INSERT_EVENTS, _SAVE_SUMMARY, PgJournal, _lock_key
from durable.journal.reader import RunRecord
from durable.runner import params_of
from durable.spec import Workflow
from durable.state import IllegalTransition
from durable.summary import summarize


class Claim(NamedTuple):
    """An attempt this worker now holds: the task, its rendered input (or the
    `AttemptFailed` rendering raised), and how many times it failed before."""

    run_id: str
    task_id: str
    attempt: int
    plan: TaskPlan
    value: Any
    tries: int


class Outcome(NamedTuple):
    """How an attempt ended, to commit: `events` are its log lines and then its
    ending (`task_succeeded`, `task_failed`, `task_retrying`, `task_cancelled`);
    `data` the ending's encoded payload when the worker has it already (an output)."""

    run_id: str
    task_id: str
    attempt: int
    events: list[Event]
    data: bytes | None = None
    #: A hand-back (the worker stops, or lost its lease): not one of the task's tries.
    handback: bool = False


class Committed(NamedTuple):
    """What a commit did: outcomes refused by the fence, and attempts claimed in the
    same transaction (the dependents it made ready, taken while this worker had room)."""

    fenced: list[Outcome]
    claims: list[Claim]


class _Taken(NamedTuple):
    claims: list[Claim]
    losses: dict[str, int]
    #: Tasks the claim ended (failed) instead, and the tasks that made ready.
    ended: list[str]
    ready: list[str]


class FleetRun:
    """What a worker keeps of one fleet run between transactions: its plan, the fold
    of its events up to `last_seq` (with the chain's head there), its limits, and
    which of its tools this worker can run."""

    def __init__(
        self,
        record: RunRecord,
        advance: Advance,
        last_seq: int,
        head: int | None,
        max_concurrency: int,
        missing: dict[str, str],
    ) -> None:
        self.record = record
        self.advance = advance
        self.last_seq = last_seq
        self.verifier = ChainVerifier(record.run_id, head)
        self.max_concurrency = max_concurrency
        self.limits = advance.plan.workflow.limits
        #: tool name -> why this worker cannot run it (not installed here, say).
        self.missing = missing
        self.runnable = sorted(
            {plan.spec.tool for plan in advance.plan.tasks.values()} - set(missing)
        )


def worker_plan(workflow: Workflow, base_dir: str, source: str) -> tuple[Plan, dict[str, str]]:
    """The run's plan as this worker can build it: its `imports:` are found where
    the run was submitted from if that path exists here, else on this worker's own
    `sys.path` (`--tools`, an installed package). A tool it cannot find is not an
    error: its tasks wait for a worker that has it. Returns the plan and what is missing."""
    problems = tools.import_modules(workflow.imports, base_dir) if workflow.imports else []
    missing: dict[str, str] = {}

    def resolve(name: str) -> Any:
        try:
            return tools.REGISTRY.resolve(name)
        except DurableError as exc:
            missing[name] = "; ".join([exc.message, *problems])
            return None

    return graph.build_trusted(workflow, resolve, source), missing


def new_worker_id() -> str:
    return str(uuid.uuid4())


class FleetStore:
    """One worker's (or submitter's) view of the fleet tables, over one connection
    for its transactions. `journal` reads runs and their events on its own."""

    def __init__(self, journal: PgJournal, conn: Any, worker_id: str, lease: float) -> None:
        self.journal = journal
        self.conn = conn
        self.worker_id = worker_id
        self.lease = lease
        self.runs: dict[str, FleetRun] = {}
        self._encode_summary = msgspec.msgpack.Encoder().encode

    # -- runs ----------------------------------------------------------------

    async def _lock(self, run_id: str) -> None:
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock($1, $2)", FLEET_LOCK_SPACE, _lock_key(run_id)
        )

    async def _load(self, run_id: str) -> FleetRun:
        """Fold the run from the journal (under its lock: nobody appends meanwhile)."""
        record = await self.journal.get_run(run_id)
        workflow, state, last_seq = await fold_run(self.journal, record)  # type: ignore[arg-type]
        settings = await self.conn.fetchrow(
            "SELECT max_concurrency, max_deaths FROM durable.fleet_runs WHERE run_id = $1", run_id
        )
        if settings is None:
            raise DurableError(f"run '{run_id}' was not handed to the workers")
        plan, missing = worker_plan(workflow, record.base_dir, f"run '{run_id}'")
        if last_seq:
            head = await self.conn.fetchval(
                "SELECT crc FROM durable.events WHERE seq = $1", last_seq
            )
        else:
            head = await self.conn.fetchval(
                "SELECT crc FROM durable.runs WHERE run_id = $1", run_id
            )
        advance = Advance(plan, state, params_of(record, workflow), run_id, settings[1])
        return FleetRun(record, advance, last_seq, head, settings[0], missing)

    async def _current(self, run_id: str) -> FleetRun:
        """The run as committed now: loaded once, then caught up with what others appended."""
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = await self._load(run_id)
            return run
        rows = await self.conn.fetch(
            "SELECT seq, run_id, kind, task_id, attempt, at, data, crc FROM durable.events"
            " WHERE run_id = $1 AND seq > $2 ORDER BY seq",
            run_id,
            run.last_seq,
        )
        check = run.verifier.check
        path = str(self.journal.path)
        for row in rows:
            seq, event, problem = checked_row(check, *row)
            if problem is not None:
                raise JournalDamaged(path, run_id, problem)
            try:
                run.advance.apply(event)  # type: ignore[arg-type]
            except IllegalTransition as exc:
                raise JournalDamaged(
                    path, run_id, f"its events are not a possible history: {exc}"
                ) from None
            run.last_seq = seq
        return run

    def forget(self, run_id: str | None = None) -> None:
        """Drop what this worker keeps of a run (of every run): after a transaction
        that did not commit, its copy may hold what never happened."""
        if run_id is None:
            self.runs.clear()
        else:
            self.runs.pop(run_id, None)

    async def _append(self, run: FleetRun, events: Sequence[Event], data: dict[int, bytes]) -> None:
        """Append events to the run (chained from its head), and its summary."""
        if not events:
            return
        run_id = run.record.run_id
        rows = [
            (
                run_id,
                getattr(event, "task_id", None),
                getattr(event, "attempt", None),
                kind_of(event),
                event.at,
                data[index] if index in data else encode_data(event),
            )
            for index, event in enumerate(events)
        ]
        values, heads, _ = chain_batch(rows, {run_id: run.verifier.previous})
        columns = [values[column::7] for column in range(7)]
        seqs = [row[0] for row in await self.conn.fetch(_INSERT_EVENTS, *columns)]
        run.verifier.previous = heads[run_id]
        run.last_seq = seqs[-1]
        record = run.record
        summary = self._encode_summary(
            summarize(record.workflow, record.created_at, run.advance.state)
        )
        last = seqs[-1]
        await self.conn.execute(
            _SAVE_SUMMARY, run_id, last, summary, summary_crc(run_id, last, summary)
        )

    async def _queue(self, run: FleetRun, ready: Sequence[str]) -> None:
        if ready:
            tasks = run.advance.plan.tasks
            await self.conn.execute(
                "INSERT INTO durable.work (run_id, task_id, tool, state)"
                " SELECT $1, t, u, 'ready' FROM unnest($2::text[], $3::text[]) AS x(t, u)",
                run.record.run_id,
                list(ready),
                [tasks[task_id].spec.tool for task_id in ready],
            )

    # -- handing a run to the fleet -----------------------------------------------

    async def hand_over(self, run_id: str, max_concurrency: int, max_deaths: int) -> Steps:
        """Give a run that stopped back to the fleet (`durable resume --workers`):
        `run_resumed`, its limits and its first decisions, in one transaction. The
        caller holds the run's driver lock, so no process of its own drives it."""
        async with self.conn.transaction():
            await self._lock(run_id)
            await self._settle(run_id, max_concurrency, max_deaths)
            self.forget(run_id)
            try:
                run = await self._current(run_id)
                opening = RunResumed(at=time.time())
                run.advance.state.apply(opening)
                return await self._start_in(run, [opening])
            finally:
                self.forget(run_id)

    async def start_new(
        self,
        record: RunRecord,
        advance: Advance,
        head: int,
        max_concurrency: int,
        max_deaths: int,
    ) -> Steps:
        """A new run's first decisions, inside the transaction that creates it
        (`PgJournal.create_run`'s `then`): a run is never left with neither a
        driver nor work."""
        await self._lock(record.run_id)
        await self._settle(record.run_id, max_concurrency, max_deaths)
        run = FleetRun(record, advance, 0, head, max_concurrency, {})
        return await self._start_in(run, [])

    async def _settle(self, run_id: str, max_concurrency: int, max_deaths: int) -> None:
        await self.conn.execute(
            "INSERT INTO durable.fleet_runs VALUES ($1, $2, $3, extract(epoch from now()))"
            " ON CONFLICT (run_id) DO UPDATE SET max_concurrency = excluded.max_concurrency,"
            " max_deaths = excluded.max_deaths",
            run_id,
            max_concurrency,
            max_deaths,
        )

    async def _start_in(self, run: FleetRun, events: list[Event]) -> Steps:
        steps = run.advance.start(time.time())
        events += steps.events
        await self._append(run, events, {})
        await self._queue(run, steps.ready)
        await self.conn.execute("SELECT pg_notify($1, $2)", CHANNEL, run.record.run_id)
        return Steps(events, steps.ready)

    # -- claiming -----------------------------------------------------------------

    async def claimable_runs(self) -> list[str]:
        """Runs with work a worker could take now, oldest work first."""
        rows = await self.conn.fetch(
            "SELECT run_id FROM durable.work WHERE (state = 'ready' AND not_before <= now())"
            " OR (state = 'running' AND lease_until < now())"
            " GROUP BY run_id ORDER BY min(queued) LIMIT 16"
        )
        return [row[0] for row in rows]

    async def claim(self, run_id: str, free: int) -> list[Claim]:
        """Take up to `free` of the run's claimable tasks, within its limits."""
        try:
            async with self.conn.transaction():
                await self._lock(run_id)
                if not await self.conn.fetchval(
                    "SELECT 1 FROM durable.fleet_runs WHERE run_id = $1", run_id
                ):
                    return []
                run = await self._current(run_id)
                return await self._claim_in(run, free, [], {})
        except BaseException:
            self.forget(run_id)
            raise

    async def _claim_in(
        self, run: FleetRun, free: int, events: list[Event], data: dict[int, bytes]
    ) -> list[Claim]:
        """Claim within the open transaction; then append `events` (the caller's, and
        the claims' own) and queue what they made ready."""
        run_id = run.record.run_id
        claims: list[Claim] = []
        taken = _Taken([], {}, [], [])
        if free > 0 and run.runnable:
            running = {
                row[0]: row[1]
                for row in await self.conn.fetch(
                    "SELECT tool, count(*) FROM durable.work WHERE run_id = $1"
                    " AND state = 'running' AND lease_until >= now() GROUP BY tool",
                    run_id,
                )
            }
            budget = min(free, run.max_concurrency - sum(running.values()))
            if budget > 0:
                rows = await self.conn.fetch(
                    "SELECT task_id, tool, state, attempt, tries, losses, owner FROM durable.work"
                    " WHERE run_id = $1 AND tool = ANY($2::text[])"
                    " AND ((state = 'ready' AND not_before <= now())"
                    " OR (state = 'running' AND lease_until < now()))"
                    " ORDER BY queued LIMIT $3",
                    run_id,
                    run.runnable,
                    budget if not run.limits else budget * 4 + 64,
                )
                taken = self._take(run, rows, budget, running, events)
                claims = taken.claims
        await self._append(run, events, data)
        if taken.ended:
            await self.conn.execute(
                "DELETE FROM durable.work WHERE run_id = $1 AND task_id = ANY($2::text[])",
                run_id,
                taken.ended,
            )
        await self._queue(run, taken.ready)
        if claims:
            await self.conn.execute(
                "UPDATE durable.work w SET state = 'running', owner = $2, attempt = u.a,"
                " losses = u.l, lease_until = now() + $3 * interval '1 second'"
                " FROM unnest($4::text[], $5::integer[], $6::integer[]) AS u(t, a, l)"
                " WHERE w.run_id = $1 AND w.task_id = u.t",
                run_id,
                uuid.UUID(self.worker_id),
                self.lease,
                [claim.task_id for claim in claims],
                [claim.attempt for claim in claims],
                [taken.losses.get(claim.task_id, 0) for claim in claims],
            )
        return claims

    def _take(
        self,
        run: FleetRun,
        rows: Sequence[Any],
        budget: int,
        running: dict[str, int],
        events: list[Event],
    ) -> _Taken:
        """Turn claimable rows into claims, in queue order, within the budget and the
        tool limits. A row whose lease ran out is first journaled as lost
        (`task_retrying`), or failed, if its attempts have lost their worker
        `max_deaths` times (a tool that kills its worker)."""
        advance = run.advance
        states, tasks = advance.state.tasks, advance.plan.tasks
        taken = _Taken([], {}, [], [])
        now = time.time()
        for task_id, tool, state, attempt, tries, losses, owner in rows:
            if len(taken.claims) >= budget:
                break
            limit = run.limits.get(tool)
            if limit is not None and running.get(tool, 0) >= limit:
                continue
            if state == "running":  # its lease ran out: its worker died, or is paused
                losses += 1
                if losses >= advance.max_deaths:
                    error = (
                        f"its worker was lost {losses} times while it ran, so it is not "
                        f"started again (a tool that kills its worker?)"
                    )
                    failed = TaskFailed(task_id=task_id, attempt=attempt, at=now, error=error)
                    steps = advance.step([failed], now)
                    events += [failed, *steps.events]
                    taken.ended.append(task_id)
                    taken.ready += steps.ready
                    continue
                lost = TaskRetrying(
                    task_id=task_id,
                    attempt=attempt,
                    at=now,
                    error=f"lease lost: worker {owner} stopped renewing it; running it again",
                    delay=0.0,
                )
                advance.apply(lost)
                events.append(lost)
            plan = tasks[task_id]
            number = states[task_id].attempts + 1
            value: Any
            mark = None
            try:
                value = plan.template.render(advance.scope_of(plan))
            except DurableError as exc:
                value = AttemptFailed(f"input: {exc.message}", retryable=False)
            else:
                try:
                    mark = fingerprint(tool_identity(plan.tool), value)  # type: ignore[arg-type]
                except (TypeError, ValueError, msgspec.EncodeError):
                    pass
            started = TaskStarted(task_id=task_id, attempt=number, at=now, fingerprint=mark)
            advance.apply(started)
            events.append(started)
            running[tool] = running.get(tool, 0) + 1
            taken.losses[task_id] = losses
            taken.claims.append(Claim(run.record.run_id, task_id, number, plan, value, tries))
        return taken

    # -- committing ---------------------------------------------------------------

    async def commit(self, outcomes: Sequence[Outcome], free: int) -> Committed:
        """Commit this worker's outcomes, one transaction per run: the fence, the
        events, what they decide (`advance.py`), and then, while this worker has
        `free` slots, claims of what they made ready."""
        fenced: list[Outcome] = []
        claims: list[Claim] = []
        by_run: dict[str, list[Outcome]] = {}
        for outcome in outcomes:
            by_run.setdefault(outcome.run_id, []).append(outcome)
        for run_id, group in by_run.items():
            try:
                async with self.conn.transaction():
                    await self._lock(run_id)
                    run = await self._current(run_id)
                    refused = await self._commit_in(run, group, free - len(claims), claims)
                    fenced += refused
            except BaseException:
                self.forget(run_id)
                raise
        return Committed(fenced, claims)

    async def _commit_in(
        self, run: FleetRun, group: list[Outcome], free: int, claims: list[Claim]
    ) -> list[Outcome]:
        run_id = run.record.run_id
        held = {
            row[0]: row[1]
            for row in await self.conn.fetch(
                "SELECT task_id, attempt FROM durable.work WHERE run_id = $1 AND owner = $2"
                " AND state = 'running' AND task_id = ANY($3::text[])",
                run_id,
                uuid.UUID(self.worker_id),
                [outcome.task_id for outcome in group],
            )
        }
        advance = run.advance
        events: list[Event] = []
        data: dict[int, bytes] = {}
        endings: list[Event] = []
        done: list[str] = []
        retried: list[tuple[str, float, int]] = []
        fenced: list[Outcome] = []
        for outcome in group:
            if held.get(outcome.task_id) != outcome.attempt:
                fenced.append(outcome)
                continue
            *notes, ending = outcome.events
            for note in notes:
                advance.apply(note)
                events.append(note)
            if isinstance(ending, TaskRetrying):
                advance.apply(ending)
                events.append(ending)
                retried.append((outcome.task_id, ending.delay, 0 if outcome.handback else 1))
            else:
                endings.append((ending, outcome.data))  # type: ignore[arg-type]
                done.append(outcome.task_id)
        for ending, payload in endings:  # type: ignore[misc]
            if payload is not None:
                data[len(events)] = payload
            events.append(ending)
        steps = advance.step([ending for ending, _ in endings], time.time())  # type: ignore[misc]
        events += steps.events
        if done:
            await self.conn.execute(
                "DELETE FROM durable.work WHERE run_id = $1 AND task_id = ANY($2::text[])",
                run_id,
                done,
            )
        if retried:
            await self.conn.execute(
                "UPDATE durable.work w SET state = 'ready', owner = NULL, lease_until = NULL,"
                " not_before = now() + u.d * interval '1 second', tries = w.tries + u.n"
                " FROM unnest($2::text[], $3::double precision[], $4::integer[]) AS u(t, d, n)"
                " WHERE w.run_id = $1 AND w.task_id = u.t",
                run_id,
                [task_id for task_id, _, _ in retried],
                [delay for _, delay, _ in retried],
                [counted for _, _, counted in retried],
            )
        await self._queue(run, steps.ready)
        claims += await self._claim_in(run, free, events, data)
        if steps.ready or retried:
            await self.conn.execute("SELECT pg_notify($1, $2)", CHANNEL, run_id)
        return fenced


# -- workers: who is alive, and their leases ----------------------------------------


async def register(
    conn: Any, worker_id: str, slots: int, tool_names: list[str], lease: float
) -> None:
    """Record this worker process (a new id per start: never a dead one's), and
    forget workers silent for an hour."""
    await conn.execute("DELETE FROM durable.workers WHERE heartbeat_at < now() - interval '1 hour'")
    await conn.execute(
        "INSERT INTO durable.workers VALUES ($1, $2, $3, $4, $5, now(), now(), $6)",
        uuid.UUID(worker_id),
        socket.gethostname(),
        os.getpid(),
        slots,
        tool_names,
        lease,
    )


async def renew(conn: Any, worker_id: str, lease: float) -> set[tuple[str, str, int]]:
    """Extend every lease this worker holds, and its heartbeat; return the attempts
    it still holds (one missing was claimed again: the worker must drop it)."""
    me = uuid.UUID(worker_id)
    rows = await conn.fetch(
        "UPDATE durable.work SET lease_until = now() + $2 * interval '1 second'"
        " WHERE owner = $1 AND state = 'running' RETURNING run_id, task_id, attempt",
        me,
        lease,
    )
    await conn.execute("UPDATE durable.workers SET heartbeat_at = now() WHERE worker_id = $1", me)
    return {(row[0], row[1], row[2]) for row in rows}


async def unregister(conn: Any, worker_id: str) -> None:
    await conn.execute("DELETE FROM durable.workers WHERE worker_id = $1", uuid.UUID(worker_id))


class WorkerRow(msgspec.Struct):
    """A live worker as `durable workers` lists it."""

    worker_id: str
    host: str
    pid: int
    slots: int
    held: int
    heartbeat_age: float
    started_at: float
    tools: list[str]


async def live_workers(conn: Any) -> list[WorkerRow]:
    """Workers whose last heartbeat is within their lease: alive, as far as anyone can tell."""
    rows = await conn.fetch(
        "SELECT w.worker_id, w.host, w.pid, w.slots,"
        " (SELECT count(*) FROM durable.work k WHERE k.owner = w.worker_id"
        "  AND k.state = 'running'),"
        " extract(epoch from now() - w.heartbeat_at), extract(epoch from w.started_at), w.tools"
        " FROM durable.workers w WHERE w.heartbeat_at >= now() - w.lease * interval '1 second'"
        " ORDER BY w.started_at"
    )
    return [
        WorkerRow(str(r[0]), r[1], r[2], r[3], r[4], float(r[5]), float(r[6]), list(r[7]))
        for r in rows
    ]
