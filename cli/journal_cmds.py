"""Commands that read the journal: `runs`, `status`, `log`, `output` and `check`.

None of them writes: they open the journal read-only, so they work on a journal
they cannot write (a read-only folder) and never change one they inspect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from durable_cli.options import db_option, json_option

T = TypeVar("T")


def _with_journal(db: str | None, action: Callable[[Any], Awaitable[T]]) -> T:
    from durable.journal import Journal

    async def main() -> T:
        journal = await Journal.open(db, create=False, readonly=True)
        try:
            return await action(journal)
        finally:
            await journal.close()

    from durable import eventloop

    return eventloop.run(main())


def _echo_json(value: Any) -> None:
    import msgspec

    click.echo(msgspec.json.encode(value).decode())


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


@click.command()
@db_option
@json_option
def runs(db: str | None, as_json: bool) -> None:
    """List every run in the journal, oldest first: id, workflow, status, counts, times."""
    from durable.errors import DurableError
    from durable.inspection import damaged_document, runs_document, view_run

    errors: list[DurableError] = []

    async def collect(journal: Any) -> list[dict[str, Any]]:
        documents = []
        for record in await journal.list_runs():
            try:
                if isinstance(record, DurableError):
                    raise record
                documents.append(runs_document(await view_run(journal, record)))
            except DurableError as exc:  # one damaged run must not hide the others
                errors.append(exc)
                documents.append(damaged_document(record, exc))
        return documents

    documents = _with_journal(db, collect)
    if as_json:
        _echo_json(documents)
    elif not documents:
        click.echo("no runs yet")
    else:
        click.echo(f"{'RUN':<12} {'WORKFLOW':<20} {'STATUS':<12} {'CREATED':<19}  COUNTS")
        for doc in documents:
            counts = ", ".join(f"{n} {state}" for state, n in sorted(doc["counts"].items()))
            click.echo(
                f"{doc['run_id']:<12} {doc['workflow']:<20} {doc['status']:<12} {_when(doc['created_at'])}  {counts}"
            )
    if errors:
        first = errors[0]
        if len(errors) > 1:
            first.details = [*first.details, f"and {len(errors) - 1} more damaged run(s)"]
        raise first


@click.command()
@click.argument("run_id")
@db_option
@json_option
def status(run_id: str, db: str | None, as_json: bool) -> None:
    """Show a run's status and, per task: state, attempts, duration, error."""
    from durable.inspection import status_document, view_run

    async def collect(journal: Any) -> dict[str, Any]:
        return status_document(await view_run(journal, await journal.get_run(run_id)))

    document = _with_journal(db, collect)
    if as_json:
        _echo_json(document)
        return
    click.echo(f"run {document['run_id']} ({document['workflow']}): {document['status']}")
    width = max((len(task_id) for task_id in document["tasks"]), default=4)
    for task_id, task in document["tasks"].items():
        duration = ""
        if task["started_at"] and task["finished_at"]:
            duration = f"{task['finished_at'] - task['started_at']:.2f}s"
        line = f"  {task_id:<{width}}  {task['state']:<15} attempts={task['attempts']:<3} {duration:>8}"
        if task["error"]:
            line += f"  {task['error']}"
        click.echo(line.rstrip())


@click.command()
@click.argument("run_id")
@db_option
@json_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the run ends.")
def log(run_id: str, db: str | None, as_json: bool, follow: bool) -> None:
    """Print a run's events, oldest first."""
    import msgspec

    from durable.events import RunFinished, RunInterrupted, to_dict
    from durable.inspection import view_run
    from durable.report import describe_event

    encoder = msgspec.json.Encoder()

    async def show(journal: Any) -> None:
        record = await journal.get_run(run_id)
        after = 0
        while True:
            ended = False
            for seq, event in await journal.events(run_id, after):
                after = seq
                if as_json:
                    click.echo(encoder.encode(to_dict(event, run_id, seq)).decode())
                else:
                    click.echo(describe_event(event))
                ended = isinstance(event, RunFinished | RunInterrupted)
            if not follow or ended:
                return
            view = await view_run(journal, record)
            if view.status != "running" and view.last_seq <= after:
                return
            await asyncio.sleep(0.2)

    _with_journal(db, show)


@click.command()
@click.argument("run_id")
@click.argument("task", required=False)
@db_option
def output(run_id: str, task: str | None, db: str | None) -> None:
    """Print outputs as JSON: every succeeded task's, or one task's."""
    from durable.errors import DurableError
    from durable.inspection import view_run

    async def collect(journal: Any) -> Any:
        view = await view_run(journal, await journal.get_run(run_id))
        tasks = view.state.tasks
        if task is None:
            return {tid: t.output for tid, t in tasks.items() if t.state == "succeeded"}
        if task not in tasks:
            raise DurableError(f"run '{run_id}' has no task '{task}'")
        if tasks[task].state != "succeeded":
            raise DurableError(
                f"task '{task}' of run '{run_id}' has no output (it is {tasks[task].state})"
            )
        return tasks[task].output

    _echo_json(_with_journal(db, collect))


@click.command()
@click.argument("run_id", required=False)
@db_option
def check(run_id: str | None, db: str | None) -> None:
    """Check the journal (or one run): SQLite's integrity check, every event's
    checksum, and a replay of every run's history. Says exactly what is damaged.

    Exits 0 when all is well, 2 when anything is damaged.
    """
    from durable.check import check_journal, raise_for

    async def collect(journal: Any) -> None:
        report = await check_journal(journal, run_id)
        raise_for(report, journal)
        scope = f"run {run_id}" if run_id else f"{report.runs} run(s)"
        click.echo(f"{journal.path}: ok ({scope}, {report.events:,} events, checksums verified)")
        for legacy in report.unverified:
            click.echo(
                f"  run '{legacy}' was written before checksums: its events were not verified"
            )

    _with_journal(db, collect)


COMMANDS = [runs, status, log, output, check]
