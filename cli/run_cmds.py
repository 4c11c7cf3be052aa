"""Commands that drive a run: `run` and `resume`."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import IO, Any

import click
from durable_cli.options import (
    cache_option,
    db_option,
    durability_option,
    fail_fast_option,
    jobs_option,
    json_option,
    max_deaths_option,
    no_live_option,
    quiet_option,
    run_id_argument,
)

workers_option = click.option(
    "--workers",
    is_flag=True,
    help="Hand the run to the workers sharing this PostgreSQL journal (`durable worker`) "
    "instead of running its tasks in this process; then follow it.",
)
detach_option = click.option(
    "--detach",
    is_flag=True,
    help="With --workers: print the run id and return at once; the workers go on.",
)


def _fleet(
    start: Callable[..., Coroutine[Any, Any, Any]], detach: bool, session: dict[str, Any]
) -> None:
    """`--workers`: hand the run over and follow it (`fleet_cmds`)."""
    from durable_cli.fleet_cmds import hand_over_and_follow

    from durable.errors import DurableError

    for flag, name in (("fail_fast", "--fail-fast"), ("cache", "--cache")):
        if session[flag]:
            raise DurableError(f"{name} is not supported with --workers yet")
    hand_over_and_follow(
        lambda: start(
            db=session["db"], max_concurrency=session["jobs"], max_deaths=session["max_deaths"]
        ),
        db=session["db"],
        detach=detach,
        as_json=session["as_json"],
        quiet=session["quiet"],
        no_live=session["no_live"],
    )


def _parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    """`-p KEY=VALUE`s, each value marked as text typed on a command line, which
    `runner.merge_params` reads as JSON where the param's default is not text."""
    from durable.errors import ParamError
    from durable.runner import CommandLineText

    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ParamError(f"bad -p '{pair}': expected KEY=VALUE")
        params[name] = CommandLineText(value)
    return params


def session_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options `run` and `resume` share: how a session runs and shows itself."""
    for option in reversed(
        (
            db_option,
            jobs_option,
            json_option,
            quiet_option,
            no_live_option,
            fail_fast_option,
            durability_option,
            max_deaths_option,
            cache_option,
        )
    ):
        command = option(command)
    return command


def _refuse_detach_alone(workers: bool, detach: bool) -> None:
    """`--detach` leaves the run to the workers: without `--workers` it is refused,
    rather than taken as `--workers` (which a SQLite journal then refused, naming an
    option the command did not have)."""
    if detach and not workers:
        from durable.errors import DurableError

        raise DurableError("--detach leaves the run to the workers: give --workers too")


def _drive(
    start: Callable[..., Coroutine[Any, Any, Any]],
    *,
    db: str | None,
    jobs: int | None,
    as_json: bool,
    quiet: bool,
    no_live: bool,
    fail_fast: bool,
    durability: str,
    max_deaths: int,
    cache: bool,
) -> None:
    """Run or resume with the reporter the output calls for, then report and exit.

    `start(**session)` runs the session: `arun` or `aresume` with the first
    argument bound, and the session's options as keywords.
    """
    from durable import eventloop, report, runner

    if as_json and quiet:
        raise click.UsageError("--json and --quiet cannot be combined")

    if durability == "off":
        click.echo(
            "warning: --durability off: commits are not synced; a crash of the machine "
            "(not just of durable) can lose finished work. For tests and benchmarks only.",
            err=True,
        )

    reporter = report.for_output(as_json, quiet=quiet, live=not no_live)
    hooks = runner.Hooks(
        on_start=reporter.on_start,
        on_event=reporter.on_event if reporter.watches else None,
        on_plan=partial(_show_plan, as_json, sys.stdout),
        on_note=lambda line: click.echo(f"note: {line}", err=True),
    )
    started = time.monotonic()
    # With --json, stdout is the event stream alone: what a Python tool prints goes
    # to stderr. The reporter and the plan keep the stream they were given.
    tools_print = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    session = {
        "db": db,
        "max_concurrency": jobs,
        "fail_fast": fail_fast,
        "durability": durability,
        "max_deaths": max_deaths,
        "cache": cache,
    }
    try:
        with tools_print:
            result = eventloop.run(start(**session, handle_signals=True, hooks=hooks))
    finally:
        reporter.close()  # the terminal is given back whatever happened
    if result.dry_run:
        if not as_json:
            click.echo("dry run: nothing changed")
        return
    if result.already_finished:
        from durable_cli.fleet_cmds import nothing_to_resume

        nothing_to_resume(result.run_id, as_json)
        return
    _finish(result, reporter, time.monotonic() - started, db)


def _show_plan(as_json: bool, out: IO[str], run_id: str, amendment: Any) -> None:
    """An edited resume's plan, on `out`: what is kept, what runs and why, what is
    removed."""
    if as_json:
        document = {
            "kind": "plan",
            "run_id": run_id,
            "kept": amendment.kept,
            "runs": [{"task_id": task_id, "reason": why} for task_id, why in amendment.runs],
            "removed": amendment.removed,
        }
        import json  # only here: a plain run starts without it

        click.echo(json.dumps(document), file=out)
        return
    click.echo(
        f"plan for run {run_id}: {len(amendment.kept)} kept, {len(amendment.runs)} to run, "
        f"{len(amendment.removed)} removed",
        file=out,
    )
    for task_id, why in amendment.runs:
        click.echo(f"  run {task_id}: {why}", file=out)
    for task_id in amendment.removed:
        click.echo(f"  remove {task_id}", file=out)


def _finish(result, reporter, elapsed: float, db: str | None) -> None:  # type: ignore[no-untyped-def]
    from durable.errors import Interrupted, OutputClosed

    try:
        reporter.finish(result, elapsed, db)
    except OutputClosed:
        pass  # closed as the run ended: nothing was stopped for it
    if result.status == "interrupted":
        if reporter.closed is not None:
            click.echo(
                f"note: the output was closed ({reporter.closed}): the run stopped", err=True
            )
        raise Interrupted(result.run_id)
    if result.status != "succeeded":
        click.get_current_context().exit(1)


@click.command()
@click.argument("workflow", type=click.Path(dir_okay=False))
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a param (repeatable).",
)
@click.option("--run-id", default=None, help="Use this run id instead of a generated one.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Say what would run, in which order and how many at once (with --cache: which "
    "tasks the cache would answer); run nothing, write nothing.",
)
@workers_option
@detach_option
@session_options
def run(
    workflow: str,
    params: tuple[str, ...],
    run_id: str | None,
    dry_run: bool,
    workers: bool,
    detach: bool,
    **session: Any,
) -> None:
    """Run a workflow file. Prints the run id first; Ctrl-C stops it resumably.

    On a terminal a live view shows progress and the running tasks; elsewhere (a
    pipe, a file, CI) one plain line per transition.

    Exit codes: 0 succeeded, 1 finished with failed tasks, 2 bad input, 130 interrupted.
    """
    from durable import runner

    overrides = _parse_params(params)
    _refuse_detach_alone(workers, detach)
    if dry_run:
        _explain(workflow, overrides, run_id, session)
        return
    if workers:
        from durable.fleet.submit import submit

        async def handed(**options: Any) -> tuple[str, bool]:
            return (await submit(workflow, overrides, run_id=run_id, **options))[0], True

        _fleet(handed, detach, session)
        return
    _drive(lambda **options: runner.arun(workflow, overrides, run_id=run_id, **options), **session)


def _explain(
    workflow: str, overrides: dict[str, Any], run_id: str | None, session: dict[str, Any]
) -> None:
    """`run --dry-run`: the plan of the run, and what the cache would answer. What
    the run would refuse is refused here too: a bad run id, one the journal holds,
    a journal that is not durable's. Nothing is written (the journal is read, if
    there is one)."""
    from durable_cli.journal_cmds import _with_journal

    from durable import runner
    from durable.errors import JournalAbsent, RunExists
    from durable.explain import explain, render, to_dict
    from durable.loader import plan_file
    from durable.runlock import check_run_id

    plan, _ = plan_file(workflow)
    params = runner.merge_params(plan.workflow, overrides)
    if run_id is not None:
        check_run_id(run_id)

    async def taken(journal: Any) -> bool:  # opening it checks it is durable's
        return run_id is not None and await journal.has_run(run_id)

    try:
        exists = _with_journal(session["db"], taken)
    except JournalAbsent:  # no journal yet (no file, or a database durable never wrote)
        exists = False
    if exists:
        raise RunExists(str(run_id))
    cached = runner.cache_preview(plan, params, session["db"], session["cache"])
    explanation = explain(plan, max_concurrency=session["jobs"], cached=cached)
    if session["as_json"]:
        import json

        click.echo(json.dumps(to_dict(explanation)))
    else:
        click.echo(render(explanation))


@click.command()
@run_id_argument()
@click.option(
    "--reload",
    is_flag=True,
    help="Read the run's workflow file again and go on with it: what changed runs again.",
)
@click.option(
    "--workflow",
    "workflow_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Go on with this workflow file instead of the run's own (implies --reload).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="With --reload or --workflow: print the plan and change nothing.",
)
@workers_option
@detach_option
@session_options
def resume(
    run_id: str,
    reload: bool,
    workflow_file: str | None,
    dry_run: bool,
    workers: bool,
    detach: bool,
    **session: Any,
) -> None:
    """Continue an interrupted or failed run.

    Tasks whose success was committed are kept with their outputs and never run
    again; everything else (running when the process died, failed, cancelled, not
    started) runs. A run that already succeeded is left alone.

    With --reload (or --workflow FILE) the run goes on with its edited workflow: a
    plan says first which tasks are kept, which run again and why, and which are
    removed; a task is kept when its work (its tool and its input as rendered) and
    everything upstream of it are unchanged.
    """
    from durable import runner
    from durable.errors import DurableError

    if dry_run and not (reload or workflow_file):
        raise DurableError("--dry-run plans an edited resume: give --reload or --workflow")
    _refuse_detach_alone(workers, detach)
    if workers:
        if reload or workflow_file:
            raise DurableError("--reload and --workflow are not supported with --workers yet")
        from durable.fleet.submit import resubmit

        _fleet(lambda **options: resubmit(run_id, **options), detach, session)
        return
    edit = runner.Edit(workflow_file, dry_run) if reload or workflow_file else None
    _drive(lambda **options: runner.aresume(run_id, edit=edit, **options), **session)


@click.command()
@run_id_argument()
@click.argument("tasks", nargs=-1, required=True, metavar="TASK...")
@click.option("--downstream", is_flag=True, help="Run what depends on them again too.")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@session_options
def rerun(
    run_id: str, tasks: tuple[str, ...], downstream: bool, dry_run: bool, **session: Any
) -> None:
    """Run finished tasks of a run again, in the same run, keeping everything else.

    The tasks (an instance too: 'fetch[2]') start over; with --downstream, so does
    everything that depends on them. The plan is printed first (what did not
    succeed runs too, as on any resume); --dry-run stops there. The request is
    journaled (`run_amended`), and refused while another process drives the run.
    """
    from durable import runner

    edit = runner.Edit(rerun=list(tasks), downstream=downstream, dry_run=dry_run)
    _drive(lambda **options: runner.aresume(run_id, edit=edit, **options), **session)


COMMANDS = [run, resume, rerun]
