"""Commands of the fleet (`durable/fleet/`): `worker` and `workers`; and the part of
`run --workers` / `resume --workers` that hands a run over and follows it."""

from __future__ import annotations

import json
from typing import Any

import click
from durable_cli.options import FiniteFloatRange, db_option, json_option


@click.command()
@db_option
@click.option(
    "-j",
    "--jobs",
    "slots",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Run at most N tasks at once in this worker (each run's max_concurrency and "
    "limits hold across all workers too).",
)
@click.option(
    "--tools",
    "modules",
    multiple=True,
    metavar="MODULE",
    help="Import this module (repeatable; found in the current directory or installed), "
    "so that the tools it registers can run here.",
)
@click.option(
    "--lease",
    type=FiniteFloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds a claimed task stays this worker's without a renewal (renewed every "
    "third of it); a worker silent longer loses its tasks to the others.",
)
@click.option(
    "--grace",
    type=FiniteFloatRange(min=0),
    default=30.0,
    show_default=True,
    help="On SIGTERM, seconds to let running tasks finish before handing them back.",
)
@click.option(
    "--durability",
    type=click.Choice(["normal", "full"]),
    default="normal",
    show_default=True,
    help="normal: a commit survives this worker dying; full: also the server's machine "
    "losing power (PostgreSQL's synchronous_commit).",
)
def worker(
    db: str | None,
    slots: int,
    modules: tuple[str, ...],
    lease: float,
    grace: float,
    durability: str,
) -> None:
    """Run tasks of the runs handed to the workers (`durable run --workers`) until stopped.

    Any number of workers, on any machines, may share one PostgreSQL journal: each
    claims ready tasks, runs them with its own installed tools, and commits their
    outcomes. SIGTERM lets running tasks finish (see --grace), then exits; SIGINT
    (Ctrl-C) hands them back to the other workers at once.
    """
    import importlib
    import os

    from durable import eventloop, tools
    from durable.errors import DurableError
    from durable.fleet.submit import needs_postgres
    from durable.fleet.worker import Worker

    dsn = needs_postgres(db, "durable worker").strip()
    tools.add_search_path(os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # an import can fail in any way: name it, no traceback
            raise DurableError(
                f"--tools {module}: cannot import it: {type(exc).__name__}: {exc}"
            ) from None
    eventloop.run(Worker(dsn, slots, lease=lease, grace=grace, durability=durability).run())


@click.command()
@db_option
@json_option
def workers(db: str | None, as_json: bool) -> None:
    """List the live workers: host, pid, slots, tasks held, last heartbeat, tools."""
    from durable_cli.journal_cmds import _with_journal

    from durable.fleet.submit import needs_postgres
    from durable.fleet.workers import live_workers

    needs_postgres(db, "durable workers")

    async def read(journal: Any) -> Any:
        return await live_workers(journal._conn)

    rows = _with_journal(db, read)
    if as_json:
        import msgspec

        click.echo(json.dumps(msgspec.to_builtins(rows)))
        return
    if not rows:
        click.echo("no live workers")
        return
    click.echo(
        f"{'WORKER':<10} {'HOST':<20} {'PID':>7} {'SLOTS':>5} {'HELD':>5} {'HEARTBEAT':>10}  TOOLS"
    )
    for row in rows:
        click.echo(
            f"{row.worker_id[:8]:<10} {row.host[:20]:<20} {row.pid:>7} {row.slots:>5} "
            f"{row.held:>5} {row.heartbeat_age:>9.1f}s  {', '.join(row.tools)}"
        )


def nothing_to_resume(run_id: str, as_json: bool) -> None:
    """Said of a run that had succeeded (here or by `run_cmds.resume`); with --json
    on stderr, as a note, so that stdout holds only the event stream (none here)."""
    message = f"run {run_id} already succeeded; nothing to resume"
    click.echo(f"note: {message}" if as_json else message, err=as_json)


def hand_over_and_follow(
    start: Any, *, db: str | None, detach: bool, as_json: bool, quiet: bool, no_live: bool
) -> None:
    """Hand the run over (`start()` returns its id and whether anything is to run),
    then, unless `detach`, follow it as `durable watch` does and exit as it ends."""
    import asyncio

    from durable_cli.journal_cmds import _with_journal, exit_as_followed

    from durable import report
    from durable.report.watch import watch

    run_id, handed = asyncio.run(start())
    if not handed:
        nothing_to_resume(run_id, as_json)
        return
    if detach:
        click.echo(json.dumps({"run_id": run_id}) if as_json else run_id)
        if not as_json:
            click.echo(f"handed to the workers; follow it with `durable watch {run_id}`", err=True)
        return
    from durable.errors import OutputClosed

    reporter = report.for_output(as_json, quiet=quiet, live=not no_live)
    stopped = (
        f"stopped following run {run_id}; the workers go on with it "
        f"(`durable watch {run_id}`, `durable cancel {run_id}`)"
    )
    try:
        watched = _with_journal(db, lambda journal: watch(journal, run_id, reporter, db))
    except KeyboardInterrupt:
        reporter.close()
        click.echo(stopped, err=True)
        click.get_current_context().exit(130)
    except OutputClosed as exc:  # `| head` quit reading: the run is not ours to stop
        click.echo(f"note: the output was closed ({exc.reason}): {stopped}", err=True)
        click.get_current_context().exit(exc.exit_code)
    finally:
        reporter.close()
    exit_as_followed(watched.run_id, watched.ending, watched.status)


COMMANDS = [worker, workers]
