"""`durable watch`: the live view of a run that another process drives (`report/watch.py`)."""

from __future__ import annotations

from typing import Any

import click
from durable_cli.options import db_option, no_live_option, run_id_argument


@click.command()
@run_id_argument(required=False)
@db_option
@no_live_option
def watch(run_id: str | None, db: str | None, no_live: bool) -> None:
    """Show a run that another process drives, as `durable run` shows it; the latest run
    without RUN_ID.

    The live view on a terminal (progress included), one plain line per transition
    elsewhere. It only reads the journal, a few times a second. It exits when the
    run ends, as `durable run` would: 0 succeeded, 1 failed, 130 interrupted or no
    longer driven by any process (its driver died). RUN_ID may be a unique prefix.
    """
    from durable_cli.journal_cmds import _with_journal, exit_as_followed

    from durable import report
    from durable.inspection import resolve_run_id
    from durable.report.watch import Watched, latest_run
    from durable.report.watch import watch as follow

    reporter = report.for_output(live=not no_live)
    watching: list[str] = []

    async def main(journal: Any) -> Watched:
        resolved = await resolve_run_id(journal, run_id) if run_id else await latest_run(journal)
        watching.append(resolved)
        return await follow(journal, resolved, reporter, db)

    try:
        watched = _with_journal(db, main)
    except KeyboardInterrupt:
        reporter.close()
        what = f"run {watching[0]}" if watching else "the run"
        click.echo(f"stopped watching {what}; the run itself is not affected", err=True)
        click.get_current_context().exit(130)
    finally:
        reporter.close()
    exit_as_followed(watched.run_id, watched.ending, watched.status)


COMMANDS = [watch]
