"""Commands that read the journal: `runs`, `status`, `log`, `output` and `check`.

None of them writes: they open the journal read-only, so they work on a journal
they cannot write (a read-only folder) and never change one they inspect. Each
takes a run id whole or by a unique prefix (`inspection.resolve_run_id`). On a
terminal, `runs` and `status` draw tables with rich and `output` indents its JSON;
piped, they print plain fixed-width text that scripts can read.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from durable_cli.options import (
    complete_task_id,
    db_option,
    json_option,
    run_id_argument,
    runs_limit_option,
    runs_since_option,
    runs_status_option,
    runs_workflow_option,
    task_argument,
)

T = TypeVar("T")


def _with_journal(db: str | None, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run `action(journal)` on a read-only journal, on asyncio's own event loop.

    Not on uvloop: reading gains nothing from it, and once a uvloop loop has run
    in the process, a large write to a piped stdout stops after 64 KiB, silently
    (`durable status --json` of a 3,000-task run came out cut, exit 0).
    """
    import asyncio

    from durable.journal import Journal

    box: list[T] = []

    async def main() -> None:
        journal = await Journal.open(db, create=False, readonly=True)
        try:
            box.append(await action(journal))
        finally:
            await journal.close()

    # The result goes through `box`, as in `eventloop.run`: Python 3.11's Runner
    # formats the main task with `repr` on exit, result included.
    with asyncio.Runner() as runner:
        runner.run(main())
    return box[0]


def _echo_json(value: Any) -> None:
    import msgspec

    click.echo(msgspec.json.encode(value).decode())


def _on_terminal() -> bool:
    return sys.stdout.isatty()


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def _finished(created_at: float | None, finished_at: float | None) -> str:
    """The finish time; its time of day only, when the run finished the day it began."""
    finished = _when(finished_at)
    if finished_at and created_at and finished[:10] == _when(created_at)[:10]:
        return finished[11:]
    return finished


def _clock(at: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) if at else "-"


def _duration(seconds: float | None) -> str:
    """`0.42s`, `20.82s`, `4m05s`, `2h03m`, `3d04h`."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


_STATE_ORDER = [
    "succeeded",
    "skipped",
    "failed",
    "upstream_failed",
    "cancelled",
    "interrupted",
    "running",
    "retrying",
    "pending",
]
_STYLE = {
    "succeeded": "green",
    "skipped": "dim",
    "failed": "bold red",
    "upstream_failed": "red",
    "cancelled": "yellow",
    "interrupted": "bold yellow",
    "damaged": "bold magenta",
    "running": "cyan",
    "retrying": "cyan",
    "pending": "dim",
}


def _counts(counts: dict[str, int]) -> str:
    def rank(state: str) -> int:
        return _STATE_ORDER.index(state) if state in _STATE_ORDER else len(_STATE_ORDER)

    return ", ".join(f"{counts[state]} {state}" for state in sorted(counts, key=rank))


def _plain_table(headers: list[str], rows: list[list[str]], right: set[int]) -> None:
    """Fixed-width columns, each as wide as its widest cell; the last one unpadded."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row[:-1], widths, strict=False))
        ]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


def _rich_table(headers: list[str], rows: list[list[str]], right: set[int], styled: int) -> None:
    """The same table drawn by rich; column `styled` holds a state, coloured by it."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for i, header in enumerate(headers):
        # Ids, states and numbers stay on one line; text wraps on a narrow terminal.
        whole = i == 0 or i == styled or i in right
        table.add_column(
            header,
            justify="right" if i in right else "left",
            no_wrap=whole,
            overflow="ellipsis" if whole else "fold",
        )
    for row in rows:
        cells: list[Any] = list(row)
        cells[styled] = Text(row[styled], style=_STYLE.get(row[styled], ""))
        table.add_row(*cells)
    Console().print(table)


def _table(headers: list[str], rows: list[list[str]], right: set[int], styled: int) -> None:
    if _on_terminal():
        _rich_table(headers, rows, right, styled)
    else:
        _plain_table(headers, rows, right)


@click.command()
@runs_status_option
@runs_workflow_option
@runs_since_option
@runs_limit_option
@db_option
@json_option
def runs(
    statuses: frozenset[str],
    workflow: str | None,
    since: float | None,
    limit: int | None,
    db: str | None,
    as_json: bool,
) -> None:
    """List runs, oldest first: id, workflow, status, created, finished, duration, tasks.

    The filters combine; --limit keeps the newest N of the runs that pass the
    others. A damaged run is always listed, as `damaged`, and makes `runs` exit 2.
    """
    from durable.inspection import DamagedRun, damaged_document, runs_document, select_runs

    selected = _with_journal(
        db,
        lambda journal: select_runs(
            journal, statuses=statuses, workflow=workflow, since=since, limit=limit
        ),
    )
    documents = []
    errors = []
    for item in selected:
        if isinstance(item, DamagedRun):
            errors.append(item.error)
            documents.append(damaged_document(item.record, item.error))
        else:
            documents.append(runs_document(item))
    if as_json:
        _echo_json(documents)
    elif not documents:
        filtered = statuses or workflow is not None or since is not None
        click.echo("no runs match" if filtered else "no runs yet")
    else:
        headers = ["RUN", "WORKFLOW", "STATUS", "CREATED", "FINISHED", "DURATION", "TASKS"]
        rows = [
            [
                str(doc["run_id"]),
                str(doc["workflow"]),
                doc["status"] + (" (amended)" if doc.get("amended") else ""),
                _when(doc["created_at"]),
                _finished(doc["created_at"], doc["finished_at"]),
                _duration(doc["duration"]),
                _counts(doc["counts"]),
            ]
            for doc in documents
        ]
        _table(headers, rows, right={5}, styled=2)
    if errors:
        first = errors[0]
        if len(errors) > 1:
            first.details = [*first.details, f"and {len(errors) - 1} more damaged run(s)"]
        raise first


@click.command()
@run_id_argument()
@task_argument()
@click.option(
    "--failed",
    "failed_only",
    is_flag=True,
    help="Only the tasks that need attention: failed, upstream_failed, cancelled, interrupted.",
)
@db_option
@json_option
def status(run_id: str, task: str | None, failed_only: bool, db: str | None, as_json: bool) -> None:
    """Show a run's tasks: state, attempts, start, duration, error; or one TASK's attempts.

    Tasks are listed failures first (failed, interrupted, cancelled,
    upstream_failed), then running ones, then the rest by when they started.
    Durations count a task's attempts only, never the time the run had no process.
    RUN_ID may be a unique prefix of the id.
    """
    from durable.errors import DurableError
    from durable.inspection import (
        attempts_document,
        resolve_run_id,
        status_document,
        task_attempts,
        task_document,
        view_run,
    )

    async def collect(journal: Any) -> tuple[Any, dict[str, Any]]:
        view = await view_run(journal, await journal.get_run(await resolve_run_id(journal, run_id)))
        if task is None:
            return view, status_document(view, failed_only=failed_only)
        if task not in view.state.tasks:
            raise DurableError(f"run '{view.record.run_id}' has no task '{task}'")
        document = status_document(view)
        del document["tasks"]
        document["task_id"] = task
        document["task"] = task_document(view, view.state.tasks[task])
        document["task"]["attempt_times"] = attempts_document(
            await task_attempts(journal, view, task)
        )
        return view, document

    view, document = _with_journal(db, collect)
    if as_json:
        _echo_json(document)
    elif task is not None:
        _show_task(document)
    else:
        _show_run(view, document, failed_only)


def _headline(document: dict[str, Any]) -> str:
    status = document["status"]
    took = _duration(document["duration"])
    when = "for" if status == "running" else "after"
    amended = document.get("amended")
    edits = f" (amended {amended} time{'s' if amended != 1 else ''})" if amended else ""
    return f"run {document['run_id']} ({document['workflow']}){edits}: {status} {when} {took}"


def _show_run(view: Any, document: dict[str, Any], failed_only: bool) -> None:
    click.echo(f"{_headline(document)}; {_counts(view.counts())}")
    if document["status"] == "interrupted":
        click.echo(f"resume it with `durable resume {document['run_id']}`")
    tasks = document["tasks"]
    ordered = [task_id for task_id, _ in view.ordered() if task_id in tasks]
    if not ordered:
        click.echo("no task needs attention" if failed_only else "no tasks")
        return
    headers = ["TASK", "STATE", "ATTEMPTS", "STARTED", "DURATION", "ERROR"]
    rows = [
        [
            task_id,
            tasks[task_id]["state"],
            _attempts(tasks[task_id]),
            _clock(tasks[task_id]["started_at"]),
            _duration(tasks[task_id]["duration"]),
            _first_line(tasks[task_id]["error"]),
        ]
        for task_id in ordered
    ]
    _table(headers, rows, right={2, 4}, styled=1)


def _attempts(task: dict[str, Any]) -> str:
    """The ATTEMPTS column: a `foreach` task has none of its own, but instances."""
    if "instances" in task:
        return f"{task['instances']} items"
    return str(task["attempts"])


def _show_task(document: dict[str, Any]) -> None:
    task = document["task"]
    attempts = task["attempts"]
    if "instances" in task:
        count = task["instances"]
        what = f"{count} instance{'s' if count != 1 else ''}" + (
            f" ({document['task_id']}[0] to [{count - 1}])" if count else ""
        )
    else:
        what = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    click.echo(
        f"task {document['task_id']} of run {document['run_id']} ({document['workflow']}): "
        f"{task['state']}, {what}, {_duration(task['duration'])}"
    )
    for attempt in task["attempt_times"]:
        click.echo(
            f"  attempt {attempt['attempt']}  {_when(attempt['started_at'])}  "
            f"{_duration(attempt['duration']):>8}  {attempt['outcome']}"
        )
    if task["error"]:
        click.echo("error:")
        for line in task["error"].rstrip().splitlines():
            click.echo(f"  {line}")


@click.command()
@run_id_argument()
@db_option
@json_option
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Print transitions as they are committed until the run ends; exit as `durable run` "
    "would (0 succeeded, 1 failed, 130 interrupted or no longer driven).",
)
@click.option(
    "--task",
    "-t",
    "task",
    default=None,
    metavar="TASK",
    shell_complete=complete_task_id,
    help="Only this task's events and the lines it logged (ctx.log).",
)
def log(run_id: str, db: str | None, as_json: bool, follow: bool, task: str | None) -> None:
    """Print a run's events, oldest first; with --follow, until the run ends.

    Transitions, and the lines tasks logged through `ctx.log`; `--json` also has
    their progress reports (`task_progress`). RUN_ID may be a unique prefix of the
    id. A followed run that nobody drives any more (its process died) is named as
    such on stderr, and `log` exits 130.
    """
    import msgspec

    from durable.events import TaskProgress, to_dict
    from durable.inspection import Follower, resolve_run_id
    from durable.report import describe_event

    encoder = msgspec.json.Encoder()

    def show(seq: int, event: Any, resolved: str) -> None:
        if task is not None and getattr(event, "task_id", None) != task:
            return
        if as_json:
            click.echo(encoder.encode(to_dict(event, resolved, seq)).decode())
        elif type(event) is not TaskProgress:
            click.echo(describe_event(event))

    async def main(journal: Any) -> tuple[str, Follower | None]:
        record = await journal.get_run(await resolve_run_id(journal, run_id))
        resolved = record.run_id
        if task is not None:
            from durable import spec as spec_module
            from durable.errors import DurableError
            from durable.inspection import fold_run, names_task

            # The file's ids answer at once; an instance, or a task an edited resume
            # added, needs the run's fold.
            if task not in {t.id for t in spec_module.decode(record.spec).tasks}:
                workflow, state, _ = await fold_run(journal, record)
                if not names_task(workflow, state, task):
                    raise DurableError(f"run '{resolved}' has no task '{task}'")
        if not follow:
            for seq, event in await journal.events(resolved):
                show(seq, event, resolved)
            return resolved, None
        follower = Follower(journal, resolved)
        async for seq, event in follower.events():
            show(seq, event, resolved)
        return resolved, follower

    resolved, follower = _with_journal(db, main)
    if follower is not None:
        exit_as_followed(resolved, follower.ending, follower.status)


def exit_as_followed(run_id: str, ending: str | None, status: str | None) -> None:
    """Exit as `durable run` would have, once a followed run ended (`log --follow`,
    `watch`): 0 succeeded, 1 failed, 130 interrupted or no longer driven."""
    if ending == "finished":
        if status != "succeeded":
            click.get_current_context().exit(1)
        return
    if ending == "gone":
        why = f"run {run_id} is no longer driven by any process (interrupted)"
    else:
        why = f"run {run_id} was interrupted"
    click.echo(f"{why}; resume it with `durable resume {run_id}`", err=True)
    click.get_current_context().exit(130)


@click.command()
@run_id_argument()
@task_argument()
@db_option
def output(run_id: str, task: str | None, db: str | None) -> None:
    """Print outputs as JSON: every succeeded task's, or one task's. Indented on a terminal.

    RUN_ID may be a unique prefix of the id.
    """
    import msgspec

    from durable.errors import DurableError
    from durable.inspection import resolve_run_id, view_run

    async def collect(journal: Any) -> Any:
        view = await view_run(journal, await journal.get_run(await resolve_run_id(journal, run_id)))
        resolved, tasks = view.record.run_id, view.state.tasks
        if task is None:
            return {tid: t.output for tid, t in tasks.items() if t.state == "succeeded"}
        if task not in tasks:
            raise DurableError(f"run '{resolved}' has no task '{task}'")
        if tasks[task].state != "succeeded":
            raise DurableError(
                f"task '{task}' of run '{resolved}' has no output "
                f"(it is {view.task_state(tasks[task])})"
            )
        return tasks[task].output

    encoded = msgspec.json.encode(_with_journal(db, collect))
    if _on_terminal():
        encoded = msgspec.json.format(encoded, indent=2)
    click.echo(encoded.decode())


@click.command()
@run_id_argument(required=False)
@db_option
def check(run_id: str | None, db: str | None) -> None:
    """Check the journal (or one run): SQLite's integrity check, every event's
    checksum, and a replay of every run's history. Says exactly what is damaged.

    Exits 0 when all is well, 2 when anything is damaged.
    """
    from durable.check import check_journal, raise_for
    from durable.inspection import resolve_run_id

    async def collect(journal: Any) -> None:
        resolved = await resolve_run_id(journal, run_id) if run_id else None
        report = await check_journal(journal, resolved)
        raise_for(report, journal)
        scope = f"run {resolved}" if resolved else f"{report.runs} run(s)"
        click.echo(f"{journal.path}: ok ({scope}, {report.events:,} events, checksums verified)")
        for legacy in report.unverified:
            click.echo(
                f"  run '{legacy}' was written before checksums: its events were not verified"
            )

    _with_journal(db, collect)


COMMANDS = [runs, status, log, output, check]
