"""Options shared by several commands, defined once."""

from __future__ import annotations

import click

db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False),
    default=None,
    help="Journal file. [default: $DURABLE_DB or .durable/journal.db]",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
jobs_option = click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Run at most N tasks at once (overrides the workflow's max_concurrency).",
)
durability_option = click.option(
    "--durability",
    type=click.Choice(["normal", "full", "off"]),
    default="normal",
    show_default=True,
    help="normal: a commit survives the process dying; full: also power loss (fsync every "
    "commit); off: no syncs, for tests and benchmarks only.",
)
fail_fast_option = click.option(
    "--fail-fast", is_flag=True, help="Cancel everything at the first failed task."
)
max_deaths_option = click.option(
    "--max-deaths",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Fail a task, instead of starting it again, once the process has died this many "
    "times while it ran (a tool that exits or crashes the process).",
)
