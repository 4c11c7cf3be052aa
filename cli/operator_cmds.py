"""Operator commands: `export` (a run as one JSON document) and `prune` (delete finished runs).

`export` only reads, as `status` does: the journal is opened read-only. `prune` is
the one command that removes history; the journal side of it, and why it may, is
`durable/prune.py` (one interface, `Pruning`, for SQLite and PostgreSQL alike).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from durable_cli.options import Since, complete_run_id, db_option, run_id_argument

if TYPE_CHECKING:
    from durable.prune import Candidate


@click.command()
@run_id_argument()
@click.option(
    "-o",
    "--output",
    "output_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    metavar="FILE",
    help="Write the document to FILE instead of stdout (a regular file is replaced "
    "atomically: a temporary file renamed over it).",
)
@db_option
def export(run_id: str, output_path: str | None, db: str | None) -> None:
    """Export a run as one JSON document: its status, params, and every task's final
    state, attempts, output, error and times (foreach instances included).

    Tasks come in workflow order. RUN_ID may be a unique prefix of the id. Only
    reads the journal; a damaged run is refused and nothing is written.
    """
    import msgspec
    from durable_cli.journal_cmds import _with_journal
    from durable_cli.output_file import write_output

    from durable.inspection import export_document, resolve_run_id, view_run

    async def collect(journal: Any) -> dict[str, Any]:
        record = await journal.get_run(await resolve_run_id(journal, run_id))
        return export_document(await view_run(journal, record))

    document = _with_journal(db, collect)
    encoded = msgspec.json.encode(document) + b"\n"
    if output_path is None or output_path == "-":
        click.echo(encoded.decode(), nl=False)
        return
    path = Path(output_path)
    write_output(path, encoded)
    tasks = len(document["tasks"])
    click.echo(f"wrote {path} ({tasks} task{'s' if tasks != 1 else ''})")


def _older_than(what: str) -> Any:
    """`--older-than AGE`, as `prune` and `cache clear` take it."""
    return click.option(
        "--older-than",
        "before",
        type=Since(),
        default=None,
        metavar="AGE",
        help=f"{what} before now minus AGE (30m, 2h, 3d, 1w), or before an ISO date (2026-11-28).",
    )


@click.command()
@click.argument("run_ids", nargs=-1, metavar="[RUN_ID]...", shell_complete=complete_run_id)
@_older_than("Prune the runs created")
@db_option
@click.option("--dry-run", is_flag=True, help="List what would be pruned; change nothing.")
def prune(run_ids: tuple[str, ...], before: float | None, db: str | None, dry_run: bool) -> None:
    """Delete finished runs (their row, events and summary) and reclaim the space.

    Give whole run ids, or --older-than AGE. A run that a live process drives (or,
    on PostgreSQL, that the workers hold) is refused, and so is an id that no run
    has: then nothing is pruned. A pruned interrupted run can no longer be resumed.
    The other runs are never touched.
    """
    import asyncio

    if bool(run_ids) == (before is not None):
        raise click.UsageError("give either RUN_ID... or --older-than AGE")
    # asyncio's own loop, not uvloop's: see `journal_cmds._with_journal` (a long list
    # of pruned runs is a large write to stdout).
    asyncio.run(_prune(db, run_ids, before, dry_run))


async def _prune(
    db: str | None, run_ids: tuple[str, ...], before: float | None, dry_run: bool
) -> None:
    from durable.prune import open_pruning

    pruning = await open_pruning(db, readonly=dry_run)
    try:
        if before is not None:
            candidates = await pruning.created_before(before)
        else:
            candidates = await pruning.by_id(run_ids)
        size = await pruning.size()
        if dry_run:
            await pruning.refuse_running(candidates)
            for candidate in candidates:
                click.echo(f"would prune {_describe(candidate)}")
            click.echo(
                f"would prune {_count(candidates)}; {pruning.size_of} is {_megabytes(size)}; "
                "nothing was changed"
            )
            return
        pruned = await pruning.delete_runs(candidates) if candidates else []
        for candidate in pruned:
            click.echo(f"pruned {_describe(candidate)}")
        if pruned:
            await pruning.reclaim()
        after = await pruning.size()
    finally:
        await pruning.close()
    click.echo(
        f"pruned {_count(pruned)}; {pruning.size_of} went from {_megabytes(size)} "
        f"to {_megabytes(after)}"
    )


def _describe(candidate: Candidate) -> str:
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(candidate.created_at))
    events = candidate.events
    return (
        f"{candidate.run_id} ({candidate.workflow}, created {created}, "
        f"{events} event{'s' if events != 1 else ''})"
    )


def _count(candidates: list[Candidate]) -> str:
    runs, events = len(candidates), sum(candidate.events for candidate in candidates)
    return f"{runs} run{'s' if runs != 1 else ''} ({events} event{'s' if events != 1 else ''})"


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.2f} MB"


COMMANDS = [export, prune]


@click.group()
def cache() -> None:
    """The cache across runs (`durable run --cache`): what it holds, forgetting it."""


@cache.command()
@_older_than("Forget only the entries committed")
@click.option("--tool", default=None, help="Forget only the entries of this tool.")
@db_option
def clear(before: float | None, tool: str | None, db: str | None) -> None:
    """Forget cache entries (all of them, unless --older-than or --tool).

    Only the cache's index is cleared: the runs whose successes it pointed to keep
    their events and outputs, as history. A task the cache no longer answers runs.
    """
    import asyncio

    asyncio.run(_clear(db, before, tool))


async def _clear(db: str | None, before: float | None, tool: str | None) -> None:
    from durable.prune import open_pruning

    pruning = await open_pruning(db)
    try:
        forgotten = await pruning.clear_cache(older_than=before, tool=tool)
        left = await pruning.cache_count()
    finally:
        await pruning.close()
    click.echo(f"forgot {forgotten} cache entr{'y' if forgotten == 1 else 'ies'}; {left} left")


#: How long `durable cancel` waits for the driver to stop (it looks every 0.5 s).
CANCEL_WAIT = 10.0


@click.command()
@run_id_argument()
@db_option
def cancel(run_id: str, db: str | None) -> None:
    """Stop a run that another process is driving, cleanly and resumably.

    The driver sees the request within a second, cancels its running tasks and
    journals the run as `cancelled`; `durable resume` goes on with it later.
    """
    from durable import eventloop

    eventloop.run(_cancel(db, run_id))


async def _cancel(db: str | None, run_id: str) -> None:
    """Leave the request, then wait for the driver to act on it and stop."""
    import asyncio

    from durable.errors import DurableError
    from durable.inspection import resolve_run_id, view_run
    from durable.journal import Journal

    journal = await Journal.open(db, create=False)
    try:
        run_id = await resolve_run_id(journal, run_id)
        if not await journal.is_driven(run_id):
            raise DurableError(f"run '{run_id}' is not running: no process drives it to cancel")
        if await journal.fleet_work(run_id):  # the workers' run: cancelled in one transaction
            from durable.fleet.store import FleetStore

            await FleetStore(journal, journal._writable, "", 0.0).cancel(run_id)
        else:
            await journal.request(run_id, "cancel")
        deadline = time.monotonic() + CANCEL_WAIT
        while await journal.is_driven(run_id):
            if time.monotonic() > deadline:
                raise DurableError(
                    f"asked run '{run_id}' to stop, but its process has not stopped within "
                    f"{CANCEL_WAIT:g}s (a task that ignores cancellation?); it will when it can"
                )
            await asyncio.sleep(0.1)
        view = await view_run(journal, await journal.get_run(run_id))
    finally:
        await journal.close()
    if view.status != "cancelled":  # its process ended before it took the request
        raise DurableError(
            f"run '{run_id}' stopped before it took the request: it is {view.status}"
        )
    click.echo(f"run {run_id} cancelled; `durable resume {run_id}` goes on with it")
