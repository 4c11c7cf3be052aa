"""Reading runs back out of the journal: `runs`, `status`, `log` and `output`.

A run's status is the fold's, with one fact the journal cannot hold: whether a live
process drives it. A run that has no `run_finished` and whose lock is free was
interrupted (or its process died); one whose lock is held is running.
"""

from __future__ import annotations

from typing import Any

import msgspec

from durable import spec as spec_module
from durable.errors import DurableError, JournalDamaged
from durable.journal import Journal, RunRecord
from durable.runlock import RunLock
from durable.spec import Workflow
from durable.state import INTERRUPTED, RUNNING, IllegalTransition, RunState


class RunView(msgspec.Struct):
    record: RunRecord
    state: RunState
    status: str
    last_seq: int


async def fold_run(journal: Journal, record: RunRecord) -> tuple[Workflow, RunState, int]:
    """A run's workflow and the fold of its events; `JournalDamaged` if they do not fold."""
    try:
        workflow = spec_module.decode(record.spec)
    except msgspec.DecodeError as exc:
        raise JournalDamaged(str(journal.path), record.run_id, f"its workflow: {exc}") from None
    events = await journal.events(record.run_id)
    try:
        state = RunState.fold((task.id for task in workflow.tasks), (event for _, event in events))
    except IllegalTransition as exc:
        raise JournalDamaged(
            str(journal.path), record.run_id, f"its events are not a possible history: {exc}"
        ) from None
    return workflow, state, events[-1][0] if events else 0


async def view_run(journal: Journal, record: RunRecord) -> RunView:
    _, state, last_seq = await fold_run(journal, record)
    if state.status is not None:
        status = state.status
    elif RunLock(journal.path, record.run_id).is_held_elsewhere():
        status = RUNNING
    else:
        status = INTERRUPTED
    return RunView(record, state, status, last_seq)


def runs_document(view: RunView) -> dict[str, Any]:
    """One entry of `durable runs --json`."""
    return {
        "run_id": view.record.run_id,
        "workflow": view.record.workflow,
        "status": view.status,
        "created_at": view.record.created_at,
        "finished_at": view.state.finished_at,
        "counts": view.state.counts(),
    }


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
        "counts": {},
        "error": error.message,
    }


def status_document(view: RunView) -> dict[str, Any]:
    """`durable status --json`."""
    return {
        "run_id": view.record.run_id,
        "workflow": view.record.workflow,
        "status": view.status,
        "tasks": {
            task_id: {
                "state": task.state,
                "attempts": task.attempts,
                "started_at": task.started_at,
                "finished_at": task.finished_at,
                "output": task.output,
                "error": task.error,
            }
            for task_id, task in view.state.tasks.items()
        },
    }
