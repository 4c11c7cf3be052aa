"""Handing a run to the workers: `durable run --workers` and `durable resume --workers`.

The submitter validates the workflow, then creates the run and makes its first
decisions (its ready tasks become work rows) in one transaction: from then on the
run needs no process of its own. `durable run --workers` then follows the run
from the journal, as `durable watch` does; killing it changes nothing for the run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from durable.advance import Advance
from durable.engine import MAX_DEATHS
from durable.errors import DurableError
from durable.fleet.store import FleetStore
from durable.graph import Plan
from durable.inspection import fold_run, resolve_run_id
from durable.journal.file import is_postgres
from durable.journal.postgres import PgJournal
from durable.loader import plan_file, plan_workflow
from durable.runlock import check_run_id
from durable.runner import merge_params, new_run, new_run_id
from durable.spec import Workflow
from durable.state import SUCCEEDED, RunState


def needs_postgres(db: str | None, what: str = "--workers") -> str:
    """The fleet's journal: a `postgresql://` DSN, from `--db` or `DURABLE_DB`.
    `what` names the option or command that needs it, in the refusal."""
    target = db or os.environ.get("DURABLE_DB")
    if not is_postgres(target):
        raise DurableError(
            f"{what} needs a PostgreSQL journal that the workers share: give "
            "--db postgresql://... (or set DURABLE_DB)"
        )
    return target  # type: ignore[return-value]


async def submit(
    workflow: str | os.PathLike[str] | Workflow,
    params: Mapping[str, Any] | None,
    *,
    db: str | None,
    run_id: str | None = None,
    max_concurrency: int | None = None,
    max_deaths: int = MAX_DEATHS,
) -> tuple[str, list[str]]:
    """Create the run and hand it to the workers; return its id and the ready tasks.

    `workflow` is a file, or a workflow built in code (`durable bench`), whose
    `imports:` are then found from the current directory."""
    dsn = needs_postgres(db)
    if isinstance(workflow, Workflow):
        folder = Path.cwd()
        plan = plan_workflow(workflow, folder, source=f"workflow '{workflow.name}'")
        source = None
    else:
        plan, folder = plan_file(workflow)
        source = str(Path(workflow).resolve())
    journal = await PgJournal.open(dsn, create=True)
    try:
        return await submit_plan(
            journal,
            plan,
            folder,
            params,
            source=source,
            run_id=run_id,
            max_concurrency=max_concurrency,
            max_deaths=max_deaths,
        )
    finally:
        await journal.close()


async def submit_plan(
    journal: PgJournal,
    plan: Plan,
    folder: Path,
    params: Mapping[str, Any] | None,
    *,
    source: str | None = None,
    run_id: str | None = None,
    max_concurrency: int | None = None,
    max_deaths: int = MAX_DEATHS,
) -> tuple[str, list[str]]:
    """`submit` on an open journal, of a validated plan."""
    effective = merge_params(plan.workflow, params)
    run_id = check_run_id(run_id) if run_id is not None else new_run_id()
    record, opening = new_run(plan, folder, effective, run_id, source)
    state = RunState.new(plan.tasks)
    state.apply(opening)
    advance = Advance(plan, state, effective, run_id, max_deaths)
    limit = max_concurrency or plan.workflow.max_concurrency
    ready: list[str] = []

    async def hand_over(conn: Any, head: int) -> None:
        store = FleetStore(journal, conn, "", 0.0)
        steps = await store.start_new(record, advance, head, limit, max_deaths)
        ready.extend(steps.ready)

    await journal.create_run(record, opening, then=hand_over)
    return run_id, ready


async def resubmit(
    run_id: str,
    *,
    db: str | None,
    max_concurrency: int | None = None,
    max_deaths: int = MAX_DEATHS,
) -> tuple[str, bool]:
    """Give a stopped run back to the workers (`durable resume --workers`): what did
    not succeed runs again. Returns its id, and False if it had already succeeded."""
    dsn = needs_postgres(db)
    journal = await PgJournal.open(dsn, create=False)
    try:
        run_id = await resolve_run_id(journal, run_id)  # type: ignore[arg-type]
        if held := await journal.fleet_work(run_id):
            raise DurableError(
                f"run '{run_id}' is with the workers already ({held} of its tasks ready or "
                f"running): nothing to resume; `durable watch {run_id}` follows it"
            )
        async with journal.lock(run_id):  # no process of its own drives it, nor the fleet
            record = await journal.get_run(run_id)
            workflow, state, _ = await fold_run(journal, record)  # type: ignore[arg-type]
            if state.status == SUCCEEDED:
                return run_id, False
            store = FleetStore(journal, journal._writable, "", 0.0)
            limit = max_concurrency or workflow.max_concurrency
            await store.hand_over(run_id, limit, max_deaths)
        return run_id, True
    finally:
        await journal.close()
