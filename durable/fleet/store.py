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

import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import msgspec

from durable import graph, tools
from durable.advance import Advance, Steps
from durable.attempt import render_input
from durable.engine import MAX_DEATHS, RUN_CANCELLED
from durable.errors import DurableError, JournalDamaged, RunNotFound
from durable.events import (
    Event,
    RunFinished,
    RunResumed,
    TaskCancelled,
    TaskFailed,
    TaskRetrying,
    TaskStarted,
    encode_data,
    kind_of,
)
from durable.fleet.tables import CLAIMABLE_RUNS, FLEET_LOCK_SPACE, OPEN, RESERVE, STEP, WRITE
from durable.graph import Plan, TaskPlan
from durable.inspection import fold_run
from durable.integrity import ChainVerifier, summary_crc
from durable.journal.common import chain_batch, checked_row
from durable.journal.postgres import PgJournal, _lock_key
from durable.journal.reader import RunRecord
from durable.journal.schema import SUMMARY_EVERY
from durable.runner import params_of
from durable.spec import Workflow
from durable.state import RETRYING, RUNNING, IllegalTransition
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


class _Opened(NamedTuple):
    """What `FleetStore._open` read: the fence, claimable rows, counts, seqs."""

    #: task id -> (attempt, tool, 1 if counted in `running`: its lease is live)
    held: dict[str, tuple[int, str, int]]
    candidates: list[tuple[Any, ...]]
    running: dict[str, int]
    seqs: list[int]
    #: How many claimable rows were asked for (`candidates` may not be all of
    #: them if it holds that many), -1 if none, nor `running`.
    want: int = -1
    #: It read events other workers committed since this one last looked.
    moved: bool = False
    #: How many of the run's tasks other workers run (live leases).
    others: int = 0


class _Writes:
    """What one transaction writes (`FleetStore._write`), gathered as it decides."""

    def __init__(self, events: list[Event], data: dict[int, bytes], seqs: list[int]) -> None:
        self.events = events
        #: position in `events` -> its payload, encoded already (an output)
        self.data = data
        #: seqs reserved for the events
        self.seqs = seqs
        #: tasks this transaction made ready
        self.fresh: list[str] = []
        #: work rows to insert: (task id, attempt claimed by this worker, or 0: ready)
        self.new: list[tuple[str, int]] = []
        #: existing rows this worker claims: (task id, attempt, losses)
        self.claimed: list[tuple[str, int, int]] = []
        self.losses: dict[str, int] = {}
        #: rows to delete: outcomes that ended their task, and tasks a claim ended
        #: instead of running (failed: their worker was lost too often)
        self.ended: list[str] = []
        #: rows ready again: (task id, delay, 1 if it counts as one of its tries)
        self.retried: list[tuple[str, float, int]] = []
        self.notify = False


#: Seqs a worker keeps reserved for a quiet run's next commit (a chain's step
#: writes two events); more are reserved as they are used.
SPARE = 8
#: After this many fast commits of a run refused because it had moved on, its
#: commits take the long way only: each refusal costs a fold of the run.
MAX_MOVED = 3


class _Moved(Exception):
    """The run moved on since this worker's last transaction on it: a fast commit
    decided from what it knew would be wrong."""


def _want(free: int) -> int:
    """Claimable rows to read for `free` slots (-1: none, and no counts either)."""
    return free if free > 0 else -1


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
        self.tools = {plan.spec.tool for plan in advance.plan.tasks.values()} - set(missing)
        self.runnable = sorted(self.tools)
        #: When (monotonic) this worker next writes the run's summary with a commit,
        #: and whether its last commits left the summary behind (`FleetStore._write`).
        self.summary_due = 0.0
        self.summary_behind = False
        #: The run as this worker's last transaction on it left it, if that left
        #: nothing for others to do: what runs per tool, and seqs reserved after its
        #: last event. While nobody else writes to the run, its next commit can be
        #: decided from these and sent in one round trip (`FleetStore._commit_fast`).
        self.quiet = False
        self.running: dict[str, int] = {}
        self.spare: list[int] = []


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


class FleetStore:
    """One worker's (or submitter's) view of the fleet tables, over one connection
    for its transactions. `journal` reads runs and their events on its own."""

    def __init__(self, journal: PgJournal, conn: Any, worker_id: str, lease: float) -> None:
        self.journal = journal
        self.conn = conn
        self.worker_id = worker_id
        self.lease = lease
        self.runs: dict[str, FleetRun] = {}
        #: Transactions begun, for the worker's last word.
        self.transactions = 0
        #: End a transaction that claimed with `COMMIT; BEGIN` (a worker's store).
        self.chained = bool(worker_id)
        #: The connection is in a transaction begun by the last COMMIT.
        self.begun = False
        #: End this transaction with `COMMIT; BEGIN` (it claimed, and its run is
        #: not quiet: a quiet run's next commit needs no transaction begun).
        self._chain = False
        #: Commits sent in one round trip (`_commit_fast`), those it had to redo the
        #: long way because their run had moved on, and how many of a run's it did.
        self.fast = 0
        self.redone = 0
        self._moved: dict[str, int] = {}
        self._encode_summary = msgspec.msgpack.Encoder().encode

    # -- runs ----------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(self, run_id: str) -> AsyncIterator[None]:
        """A transaction on the run (its lock is taken by `_open`, its first
        statement). Whatever fails inside it, this worker's copy of the run is dropped.

        A transaction that claimed tasks ends with `COMMIT; BEGIN` in one round
        trip: their outcomes will want the next one soon (a chain's next step). A
        bare BEGIN holds no snapshot and no lock in READ COMMITTED, so the
        connection waiting in it holds nothing back."""
        conn = self.conn
        self.transactions += 1
        if not self.begun:
            await conn.execute("BEGIN")
        self.begun = False
        self._chain = False
        try:
            yield
        except BaseException:
            await self._abandon(run_id)
            raise
        try:
            if self._chain and self.chained:
                await conn.execute("COMMIT; BEGIN")
                self.begun = True
            else:
                await conn.execute("COMMIT")
        except BaseException:
            self.forget(run_id)
            raise

    async def _abandon(self, run_id: str, rollback: bool = True) -> None:
        """A transaction on the run failed: drop this worker's copy of the run (it
        may hold what never happened) and roll back what the server still holds."""
        self.forget(run_id)
        if rollback and not self.conn.is_closed():
            try:
                await self.conn.execute("ROLLBACK")
            except Exception:  # the connection broke: the server rolls back itself
                pass

    async def _open(
        self, run_id: str, held: Sequence[str] = (), want: int = -1, reserve: int = 0
    ) -> tuple[FleetRun, _Opened]:
        """Take the run's lock and read, in one round trip (`durable.fleet_open`), all
        a transaction decides from: the events since this worker last looked (folded
        into its copy, checked against their chain), which of `held` it still holds
        (the fence), up to `want` claimable rows and what runs per tool (`want` < 0:
        no claims), and `reserve` seqs. A run seen for the first time is folded from
        the journal, under the lock."""
        run = self.runs.get(run_id)
        if run is None:
            await self._call_open(run_id, -1, (), [], -1, 0)  # the lock only
            run = self.runs[run_id] = await self._load(run_id)
        if want >= 0 and not run.runnable:
            want = -1
        elif want > 0 and run.limits:
            want = want * 4 + 64  # some may be of a tool at its limit
        after = run.last_seq
        rows = await self._call_open(run_id, after, held, run.runnable, want, reserve)
        opened = _Opened({}, [], {}, [], want)
        check = run.verifier.check
        path = str(self.journal.path)
        others = 0
        for row in rows:
            part = row[0]
            if part == "e":
                for seq, event, problem in checked_row(check, row[1], run_id, *row[2:8]):
                    if problem is not None:
                        raise JournalDamaged(path, run_id, problem)
                    try:
                        run.advance.apply(event)  # type: ignore[arg-type]
                    except IllegalTransition as exc:
                        raise JournalDamaged(
                            path, run_id, f"its events are not a possible history: {exc}"
                        ) from None
                    run.last_seq = seq
            elif part == "s":
                opened.seqs.append(row[1])
            elif part == "f":
                opened.held[row[3]] = (row[4], row[8], row[10])
            elif part == "c":
                opened.candidates.append(
                    (row[3], row[8], row[9], row[4], row[10], row[11], row[12])
                )
            else:
                opened.running[row[8]] = row[1]
                others += row[1] - row[10]
        moved = run.last_seq != after
        if moved:  # others wrote to it: what this worker noted of the run is behind
            run.quiet, run.spare = False, []
        return run, opened._replace(moved=moved, others=others)

    async def _call_open(
        self,
        run_id: str,
        after: int,
        held: Sequence[str],
        tools: Sequence[str],
        want: int,
        reserve: int,
    ) -> list[Any]:
        me = uuid.UUID(self.worker_id) if self.worker_id else None
        return await self.conn.fetch(
            OPEN,
            FLEET_LOCK_SPACE,
            _lock_key(run_id),
            run_id,
            after,
            me,
            list(held),
            list(tools),
            want,
            reserve,
        )

    async def _load(self, run_id: str) -> FleetRun:
        """Fold the run from the journal (under its lock: nobody appends meanwhile)."""
        record = await self.journal.get_run(run_id)
        workflow, state, last_seq = await fold_run(self.journal, record)  # type: ignore[arg-type]
        settings = await self.conn.fetchrow(
            "SELECT max_concurrency, max_deaths FROM durable.fleet_runs WHERE run_id = $1", run_id
        )
        if settings is None:  # it ended (or was cancelled): nothing to claim, all fenced
            settings = (0, MAX_DEATHS)
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

    def forget(self, run_id: str | None = None) -> None:
        """Drop what this worker keeps of a run (of every run): after a transaction
        that did not commit, its copy may hold what never happened."""
        if run_id is None:
            self.runs.clear()
        else:
            self.runs.pop(run_id, None)

    def _ended(self, run_id: str) -> None:
        """The run ended: drop all this worker keeps of it, its count of refused fast
        commits too (`forget` keeps that: it outlives a failed transaction)."""
        self.forget(run_id)
        self._moved.pop(run_id, None)

    async def _reserve(self, count: int) -> list[int]:
        rows = await self.conn.fetch(RESERVE, count)
        return [row[0] for row in rows]

    async def _write(self, run: FleetRun, plan: _Writes, summary_now: bool = False) -> None:
        """Everything a transaction changes, in one statement: the events (at seqs
        reserved under the run's lock, so a run's seqs follow its commits), its
        summary, new work rows, claims of existing ones, rows a claim ended, NOTIFY,
        and, for a quiet run, the seqs of its next commit (`FleetRun.spare`).

        A worker writes a run's summary with its commits at most every
        `SUMMARY_EVERY` seconds, and always with the run's end, as the SQLite
        journal does (writing it every time cost a chain about 3 %); one it left
        behind is caught up once the worker is idle (`catch_up`). Meanwhile the
        run is live (the fleet holds its work), so `runs` takes its summary for
        what it is: a moment behind."""
        events = plan.events
        if not events and not plan.new and not plan.claimed and not plan.ended and not summary_now:
            return
        seqs = plan.seqs
        if len(seqs) < len(events):
            seqs = seqs + await self._reserve(len(events) - len(seqs))
        spare = SPARE if run.quiet else 0
        arguments, done = self._arguments(run, plan, seqs, spare, summary_now)
        row = await self.conn.fetchrow(WRITE, *arguments)
        done()
        run.spare = sorted(row[1]) if spare else []

    def _arguments(
        self, run: FleetRun, plan: _Writes, seqs: list[int], spare: int, summary_now: bool
    ) -> tuple[list[Any], Callable[[], None]]:
        """`WRITE`'s arguments for `plan`'s events at `seqs`, and what to note in
        `run` once they are committed."""
        events = plan.events
        run_id = run.record.run_id
        data = plan.data
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
        last = seqs[len(events) - 1] if events else run.last_seq
        finished = any(isinstance(event, RunFinished) for event in events)
        now = time.monotonic()
        if summary_now or finished or not self.chained or now >= run.summary_due:
            record = run.record
            summary = self._encode_summary(
                summarize(record.workflow, record.created_at, run.advance.state)
            )
            summarized, run.summary_behind = last, False
            run.summary_due = now + SUMMARY_EVERY
        else:  # not written: the statement skips it (`WRITE`, a last seq of 0)
            summary, summarized = b"", 0
            run.summary_behind = run.summary_behind or bool(events)
        tasks = run.advance.plan.tasks

        def done() -> None:
            if events:
                run.verifier.previous = heads[run_id]
                run.last_seq = last

        return [
            seqs[: len(events)],
            *columns,
            run_id,
            summarized,
            summary,
            summary_crc(run_id, summarized, summary),
            uuid.UUID(self.worker_id) if self.worker_id else None,
            self.lease,
            [task_id for task_id, _ in plan.new],
            [tasks[task_id].spec.tool for task_id, _ in plan.new],
            [attempt for _, attempt in plan.new],
            [claim[0] for claim in plan.claimed],
            [claim[1] for claim in plan.claimed],
            [claim[2] for claim in plan.claimed],
            plan.ended,
            plan.notify,
            [task_id for task_id, _, _ in plan.retried],
            [delay for _, delay, _ in plan.retried],
            [counted for _, _, counted in plan.retried],
            finished,
            spare,
        ], done

    def behind(self) -> list[str]:
        """The runs whose summary this worker's commits left behind."""
        return [run_id for run_id, run in self.runs.items() if run.summary_behind]

    async def catch_up(self, run_id: str) -> None:
        """Write a run's summary as of its last event, in a transaction of its own
        (under the run's lock, after catching up with the other workers' events)."""
        run = self.runs.get(run_id)
        if run is None or not run.summary_behind:
            return
        async with self._transaction(run_id):
            run, _ = await self._open(run_id)
            await self._write(run, _Writes([], {}, []), summary_now=True)
        if run.advance.state.status is not None:  # it ended meanwhile
            self._ended(run_id)

    # -- handing a run to the fleet -----------------------------------------------

    async def hand_over(self, run_id: str, max_concurrency: int, max_deaths: int) -> Steps:
        """Give a run that stopped back to the fleet (`durable resume --workers`):
        `run_resumed`, its limits and its first decisions, in one transaction. The
        caller holds the run's driver lock, so no process of its own drives it."""
        async with self._transaction(run_id):
            await self._settle(run_id, max_concurrency, max_deaths)
            self.forget(run_id)
            run, _ = await self._open(run_id)
            opening = RunResumed(at=time.time())
            run.advance.state.apply(opening)
            steps = await self._start_in(run, [opening])
        self.forget(run_id)
        return steps

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
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock($1, $2)", FLEET_LOCK_SPACE, _lock_key(record.run_id)
        )
        await self._settle(record.run_id, max_concurrency, max_deaths)
        run = FleetRun(record, advance, 0, head, max_concurrency, {})
        return await self._start_in(run, [])

    async def _settle(self, run_id: str, max_concurrency: int, max_deaths: int) -> None:
        await self.conn.execute(
            "INSERT INTO durable.fleet_runs VALUES ($1, $2, $3, extract(epoch from clock_timestamp()))"
            " ON CONFLICT (run_id) DO UPDATE SET max_concurrency = excluded.max_concurrency,"
            " max_deaths = excluded.max_deaths",
            run_id,
            max_concurrency,
            max_deaths,
        )

    async def _start_in(self, run: FleetRun, events: list[Event]) -> Steps:
        steps = run.advance.start(time.time())
        events += steps.events
        writes = _Writes(events, {}, [])
        writes.new += [(task_id, 0) for task_id in steps.ready]
        writes.notify = True
        await self._write(run, writes)
        return Steps(events, steps.ready)

    async def cancel(self, run_id: str) -> None:
        """`durable cancel` of a fleet run, in one transaction: its work rows go (a
        late outcome of a running attempt is then refused, and its worker stops it at
        its next renewal), its running and waiting tasks are journaled cancelled,
        and the run ends `cancelled`: `durable resume --workers` goes on with it."""
        async with self._transaction(run_id):
            run, _ = await self._open(run_id)
            await self.conn.execute("DELETE FROM durable.work WHERE run_id = $1", run_id)
            now = time.time()
            state = run.advance.state
            events: list[Event] = [
                TaskCancelled(task_id=task_id, attempt=task.attempts, at=now)
                for task_id, task in state.tasks.items()
                if task.state in (RUNNING, RETRYING)
            ]
            events.append(RunFinished(at=now, status=RUN_CANCELLED))
            for event in events:
                state.apply(event)
            await self._write(run, _Writes(events, {}, []))
        self.forget(run_id)

    # -- claiming and committing ---------------------------------------------------

    async def claimable_runs(self) -> list[str]:
        """Runs with work this worker could take now, oldest work first: of the runs
        it knows, only work of the tools it can run, below their limits
        (`CLAIMABLE_RUNS`). Its copies of runs that ended are dropped here: a commit
        of this worker's drops a run it ends, but not one that another worker's
        commit, or a cancel, ended (each copy holds the run's plan and state)."""
        runs: list[str] = []
        tools: list[str | None] = []
        caps: list[int | None] = []
        for run_id, run in self.runs.items():
            for tool in run.runnable or [None]:
                runs.append(run_id)
                tools.append(tool)
                caps.append(run.limits.get(tool) if tool else None)
        rows = await self.conn.fetch(CLAIMABLE_RUNS, runs, tools, caps)
        claimable: list[tuple[int, str]] = []
        for run_id, oldest in rows:
            if oldest is None:
                self._ended(run_id)
            else:
                claimable.append((oldest, run_id))
        return [run_id for _, run_id in sorted(claimable)]

    async def claim(self, run_id: str, free: int) -> list[Claim]:
        """Take up to `free` of the run's claimable tasks, within its limits (none of a
        run that ended meanwhile: it has no work rows left, and no limits)."""
        async with self._transaction(run_id):
            run, opened = await self._open(run_id, (), _want(free), free)
            return await self._claim_in(run, free, _Writes([], {}, opened.seqs), opened)

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
            room = free - len(claims)
            run = self.runs.get(run_id)
            taken = None
            if run is not None and run.quiet and self._moved.get(run_id, 0) < MAX_MOVED:
                taken = await self._commit_fast(run, group, room)
            if taken is None:
                try:
                    async with self._transaction(run_id):
                        run, opened = await self._open(
                            run_id,
                            [outcome.task_id for outcome in group],
                            _want(room),
                            2 * len(group),  # a nextval costs: more, if needed, in `_write`
                        )
                        writes = self._settle_outcomes(run, group, fenced, opened)
                        taken = await self._claim_in(run, room, writes, opened)
                except RunNotFound:
                    # Cancelled, then pruned, while this worker ran its tasks (a copy
                    # of an ended run is dropped): nothing is left to commit them to.
                    fenced += group
                    continue
            claims += taken
            if run.advance.state.status is not None:
                self._ended(run_id)
        return Committed(fenced, claims)

    def _settle_outcomes(
        self, run: FleetRun, group: list[Outcome], fenced: list[Outcome], opened: _Opened
    ) -> _Writes:
        """The fence: an outcome counts only if its row is still running under this
        worker at its attempt (`opened.held`). Then its events, what they decide,
        and what becomes of the rows."""
        held = opened.held
        advance = run.advance
        writes = _Writes([], {}, opened.seqs)
        events = writes.events
        endings: list[tuple[Event, bytes | None]] = []
        running = opened.running
        for outcome in group:
            row = held.get(outcome.task_id)
            if row is None or row[0] != outcome.attempt:
                fenced.append(outcome)
                continue
            _, tool, counted = row
            if counted and tool in running:
                running[tool] -= 1  # its row stops running in this transaction
            *notes, ending = outcome.events
            for note in notes:
                advance.apply(note)
                events.append(note)
            if isinstance(ending, TaskRetrying):
                advance.apply(ending)
                events.append(ending)
                counted = 0 if outcome.handback else 1
                writes.retried.append((outcome.task_id, ending.delay, counted))
                writes.notify = True
            else:
                endings.append((ending, outcome.data))
                writes.ended.append(outcome.task_id)
        for ending, payload in endings:
            if payload is not None:
                writes.data[len(events)] = payload
            events.append(ending)
        steps = advance.step([ending for ending, _ in endings], time.time())
        events += steps.events
        writes.fresh = steps.ready
        return writes

    async def _claim_in(
        self, run: FleetRun, free: int, writes: _Writes, opened: _Opened
    ) -> list[Claim]:
        """Claim within the open transaction, then write it all (`_write`)."""
        claims = self._decide_claims(run, free, writes, opened)
        await self._write(run, writes)
        return claims

    def _decide_claims(
        self, run: FleetRun, free: int, writes: _Writes, opened: _Opened
    ) -> list[Claim]:
        """What the transaction claims: the claimable rows first, in queue order, then
        what it made ready itself (`writes.fresh`), claimed before it is even queued
        while this worker has room (a chain goes on here). Notes whether that leaves
        the run quiet (`FleetRun.quiet`): this transaction saw no other worker's
        events, no other worker runs any of its tasks, and it leaves nothing
        claimable, so the next commit may go fast (and is not refused, unless the
        run is cancelled or a retry's delay ends meanwhile)."""
        candidates = opened.candidates
        listed = len(candidates)
        running = opened.running
        tasks = run.advance.plan.tasks
        fresh = set(writes.fresh)
        candidates += [
            (task_id, tasks[task_id].spec.tool, "new", 0, 0, 0, None)
            for task_id in writes.fresh
            if tasks[task_id].spec.tool in run.tools
        ]
        budget = min(free, run.max_concurrency - sum(running.values()))
        claims = self._take(run, candidates, budget, running, writes) if budget > 0 else []
        claimed_new = {claim.task_id: claim.attempt for claim in claims if claim.task_id in fresh}
        writes.new = [(task_id, claimed_new.get(task_id, 0)) for task_id in writes.fresh]
        writes.claimed = [
            (claim.task_id, claim.attempt, writes.losses.get(claim.task_id, 0))
            for claim in claims
            if claim.task_id not in fresh
        ]
        if len(claimed_new) < len(fresh):
            writes.notify = True  # others hear of work only if this worker left some
        run.quiet = (
            opened.want > listed  # the counts were read, and every claimable row
            and len(claims) == len(candidates)
            and not writes.notify
            and not opened.moved
            and not opened.others
            and run.advance.state.status is None
        )
        run.running = running
        self._chain = bool(claims) and not run.quiet
        return claims

    async def _commit_fast(
        self, run: FleetRun, group: list[Outcome], free: int
    ) -> list[Claim] | None:
        """Commit a quiet run's outcomes in one round trip (`STEP`), decided from
        what this worker's last transaction on the run left (`FleetRun.quiet`): the
        same decisions as the long way, which reads all of that again under the
        lock. The statement checks under the lock that the run has not moved on
        since (no event after the last this worker wrote, its attempts still held,
        nothing claimable) and writes nothing if it has: then this worker's copy of
        the run is dropped and None returned (the caller takes the long way).
        Events beyond the seqs reserved for them take a transaction that checks
        the same (`_commit_checked`)."""
        run_id = run.record.run_id
        tasks = run.advance.plan.tasks
        held: dict[str, tuple[int, str, int]] = {}
        for outcome in group:
            plan = tasks.get(outcome.task_id)
            if plan is None or outcome.task_id in held:
                return None
            held[outcome.task_id] = (outcome.attempt, plan.spec.tool, 1)
        after = run.last_seq
        opened = _Opened(held, [], dict(run.running), [], 1)
        begun = False
        try:
            writes = self._settle_outcomes(run, group, [], opened)
            claims = self._decide_claims(run, free, writes, opened)
            count = len(writes.events)
            if count > len(run.spare):
                await self._commit_checked(run, writes, after, held)
            else:
                seqs, rest = run.spare[:count], run.spare[count:]
                spare = max(0, SPARE - len(rest)) if run.quiet else 0
                arguments, done = self._arguments(run, writes, seqs, spare, False)
                arguments += [
                    FLEET_LOCK_SPACE,
                    _lock_key(run_id),
                    after,
                    list(held),
                    [attempt for attempt, _, _ in held.values()],
                    run.runnable,
                ]
                begun, self.begun = self.begun, False
                self.transactions += 1
                reserved = await self.conn.fetchval(STEP, *arguments)
                if begun:  # in the transaction its last COMMIT began: it ends here
                    await self.conn.execute("COMMIT")
                if reserved is None:
                    raise _Moved
                done()
                run.spare = rest + sorted(reserved) if run.quiet else []
                self.fast += 1
        except _Moved:
            self.forget(run_id)
            self._moved[run_id] = self._moved.get(run_id, 0) + 1
            self.redone += 1
            return None
        except BaseException:
            await self._abandon(run_id, rollback=begun)
            raise
        return claims

    async def _commit_checked(
        self, run: FleetRun, writes: _Writes, after: int, held: dict[str, tuple[int, str, int]]
    ) -> None:
        """A fast commit's writes in a transaction of their own, with the seqs they
        need, after the same checks as `STEP` (`fleet_open` reads what they need);
        raises `_Moved` if the run moved on."""
        run_id = run.record.run_id
        async with self._transaction(run_id):
            rows = await self._call_open(
                run_id, after, list(held), run.runnable, 1, len(writes.events)
            )
            kept = 0
            for row in rows:
                part = row[0]
                if part == "s":
                    writes.seqs.append(row[1])
                elif part == "f" and row[4] == held[row[3]][0] and row[10]:
                    kept += 1
                elif part in ("e", "c"):
                    raise _Moved
            if kept < len(held):
                raise _Moved
            await self._write(run, writes)

    def _take(
        self,
        run: FleetRun,
        rows: Sequence[Any],
        budget: int,
        running: dict[str, int],
        writes: _Writes,
    ) -> list[Claim]:
        """Turn claimable rows into claims, in queue order, within the budget and the
        tool limits. A row whose lease ran out is first journaled as lost
        (`task_retrying`), or failed, if its attempts have lost their worker
        `max_deaths` times (a tool that kills its worker)."""
        advance = run.advance
        states, tasks = advance.state.tasks, advance.plan.tasks
        events = writes.events
        claims: list[Claim] = []
        now = time.time()
        for task_id, tool, state, attempt, tries, losses, owner in rows:
            if len(claims) >= budget:
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
                    writes.ended.append(task_id)
                    writes.fresh += steps.ready  # queued, not claimed: the loop is past them
                    writes.notify = True
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
            value, mark = render_input(plan, advance.scope_of(plan))
            started = TaskStarted(task_id=task_id, attempt=number, at=now, fingerprint=mark)
            advance.apply(started)
            events.append(started)
            running[tool] = running.get(tool, 0) + 1
            writes.losses[task_id] = losses
            claims.append(Claim(run.record.run_id, task_id, number, plan, value, tries))
        return claims
