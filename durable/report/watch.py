"""`durable watch`: the view of a run that another process drives, from the journal alone.

It reads and never writes: no lock is taken, nothing is appended. The journal's
events up to the session now going on are folded into the state that session
started from; that state and then the session's events go to the same reporter
`durable run` uses (the live view on a terminal, plain lines elsewhere), exactly as
the driver's own reporter got them. New events are then followed by `seq`
(`inspection.Follower`, every `FOLLOW_POLL` seconds) until the run ends, or until
nobody drives it any more (no `run_finished`, no `run_interrupted`, and its lock
is free: the driver died). Progress reports (`task_progress`) are journaled events,
so the live view shows them here too.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from durable import spec as spec_module
from durable.errors import DurableError, JournalDamaged
from durable.events import Event, RunFinished, RunInterrupted, RunResumed, RunStarted
from durable.inspection import FOLLOW_POLL, Follower
from durable.journal import Journal
from durable.report.lines import Reporter
from durable.state import INTERRUPTED, IllegalTransition, RunState


class Watched(NamedTuple):
    """How a watched run ended: `ending` is "finished" (then `status` is the run's),
    "interrupted", or "gone" (its driver died)."""

    run_id: str
    ending: str
    status: str


async def latest_run(journal: Journal) -> str:
    """The run created last: what `durable watch` follows when given no id."""
    latest = await journal.latest_run_id()
    if latest is None:
        raise DurableError(f"no runs yet in {journal.path}")
    return str(latest)


async def watch(
    journal: Journal,
    run_id: str,
    reporter: Reporter,
    db: str | None = None,
    poll: float = FOLLOW_POLL,
) -> Watched:
    """Show run `run_id` through `reporter` until it ends or its driver is gone.

    `db` is repeated in the commands the summary suggests. A journal whose events do
    not fold raises `JournalDamaged`, as `durable status` would.
    """
    from durable.runner import RunResult  # the engine's import chain, only when watching

    record = await journal.get_run(run_id)
    try:
        workflow = spec_module.decode(record.spec)
    except msgspec.DecodeError as exc:
        raise JournalDamaged(str(journal.path), run_id, f"its workflow: {exc}") from None
    events = await journal.events(run_id)
    opening = 0
    for index, (_, event) in enumerate(events):
        if isinstance(event, RunStarted | RunResumed):
            opening = index
    state = RunState.new(task.id for task in workflow.tasks)

    def fold(event: Event) -> None:
        try:
            state.apply(event)
        except IllegalTransition as exc:
            raise JournalDamaged(
                str(journal.path), run_id, f"its events are not a possible history: {exc}"
            ) from None

    def show(event: Event) -> None:
        fold(event)
        reporter.on_event(event)

    for _, event in events[:opening]:  # the sessions before: the state this one began from
        fold(event)
    resumed = bool(events) and isinstance(events[opening][1], RunResumed)
    reporter.on_start(run_id, workflow, state, resumed)
    for _, event in events[opening:]:
        show(event)
    last = events[-1][1] if events else None
    if isinstance(last, RunFinished):
        ending, status = "finished", last.status
    elif isinstance(last, RunInterrupted):
        ending, status = INTERRUPTED, INTERRUPTED
    else:
        follower = Follower(journal, run_id, poll)
        async for _, event in follower.events(events[-1][0] if events else 0):
            show(event)
        ending = follower.ending or "gone"
        status = follower.status if ending == "finished" else INTERRUPTED  # type: ignore[assignment]
    began = events[opening][1].at if events else record.created_at
    elapsed = max(0.0, (state.last_event_at or began) - began)
    reporter.finish(RunResult(run_id, workflow.name, status, state.tasks), elapsed, db)
    return Watched(run_id, ending, status)
