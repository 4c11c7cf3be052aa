"""The fleet's store (`durable/fleet/store.py`) driven directly, against a real
PostgreSQL: what a worker keeps of the runs between its transactions."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pg

from durable.events import TaskSucceeded
from durable.fleet.store import FleetStore, Outcome
from durable.fleet.submit import submit
from durable.journal.postgres import PgJournal
from durable.spec import Task, Workflow

pg_database = pg.pg_database

#: `b` waits for `a`: one worker can commit `a` and leave `b` to another.
TWO_STEPS = Workflow(
    name="two-steps",
    tasks=[
        Task(id="a", tool="echo", input=1),
        Task(id="b", tool="echo", input="${a.output}"),
    ],
)


async def worker_store(dsn: str) -> FleetStore:
    journal = await PgJournal.open(dsn, create=True)
    return FleetStore(journal, journal._writable, str(uuid.uuid4()), lease=30.0)


async def claim_and_succeed(store: FleetStore, run_id: str, task_id: str, free: int) -> None:
    """Claim `task_id` and commit its success, claiming at most `free` tasks with it."""
    (claim,) = await store.claim(run_id, 1)
    assert claim.task_id == task_id
    ending = TaskSucceeded(task_id=task_id, attempt=claim.attempt, at=time.time(), output=1)
    committed = await store.commit([Outcome(run_id, task_id, claim.attempt, [ending])], free)
    assert not committed.fenced and not committed.claims


def test_a_worker_drops_its_copy_of_a_run_another_worker_ended(pg_database: str) -> None:
    """Worker A commits `a`; B takes `b`, which ends the run. A's next look for work
    drops what it kept of the run (its plan and state): before, a worker kept every
    run it had worked on and not itself ended, for as long as it lived."""

    async def scenario() -> tuple[Any, ...]:
        run_id, _ = await submit(TWO_STEPS, None, db=pg_database)
        first, second = await worker_store(pg_database), await worker_store(pg_database)
        try:
            await claim_and_succeed(first, run_id, "a", free=0)
            kept_while_live = run_id in first.runs
            looked_while_live = await first.claimable_runs()
            await claim_and_succeed(second, run_id, "b", free=0)
            ended_by_second = run_id not in second.runs
            looked_after = await first.claimable_runs()
            return (
                run_id,
                kept_while_live,
                looked_while_live,
                ended_by_second,
                looked_after,
                first.runs,
            )
        finally:
            await first.journal.close()
            await second.journal.close()

    run_id, kept_while_live, looked_while_live, ended_by_second, looked_after, runs = asyncio.run(
        scenario()
    )
    assert kept_while_live
    assert looked_while_live == [run_id]  # `b` was ready
    assert ended_by_second
    assert looked_after == []
    assert runs == {}
