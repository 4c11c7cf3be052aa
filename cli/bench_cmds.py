"""`durable bench`: throughput of the real engine on a temporary journal."""

from __future__ import annotations

import click
from durable_cli.options import durability_option, json_option


@click.command()
@click.option(
    "--tasks",
    "-n",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Number of tasks.",
)
@click.option(
    "--shape",
    type=click.Choice(["wide", "chain", "layered", "diamond"]),
    default="wide",
    show_default=True,
    help="Shape of the DAG.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Concurrency bound.",
)
@durability_option
@click.option(
    "--sleep",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Each task sleeps this many seconds instead of echoing (I/O-bound mode).",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run it this many times; report the median run and the min-max spread.",
)
@json_option
@click.option(
    "--db",
    default=None,
    metavar="postgresql://...",
    help="Measure on this PostgreSQL journal (its runs stay there) instead of a "
    "temporary SQLite file.",
)
def bench(
    tasks: int,
    shape: str,
    jobs: int,
    durability: str,
    sleep: float,
    repeat: int,
    as_json: bool,
    db: str | None,
) -> None:
    """Measure throughput: tasks/s, µs per task, commits, journal size, RSS, and a no-journal baseline."""
    import msgspec

    from durable.benchmark import run_repeated
    from durable.errors import DurableError
    from durable.journal.file import is_postgres

    if db is not None and not is_postgres(db):
        raise DurableError(
            f"--db {db}: bench measures a PostgreSQL journal (postgresql://...) "
            "or, without --db, a temporary SQLite file"
        )
    summary = run_repeated(shape, tasks, jobs, durability, sleep, repeat, db=db)
    result = summary.median
    if as_json:
        document = msgspec.structs.asdict(result)
        if repeat > 1:
            document.update(
                runs=repeat,
                tasks_per_s_min=summary.tasks_per_s_min,
                tasks_per_s_max=summary.tasks_per_s_max,
            )
        click.echo(msgspec.json.encode(document).decode())
        return
    mode = f"sleep {sleep:g}s" if sleep else "echo"
    click.echo(
        f"{shape} x {tasks} ({mode}), -j {jobs}, durability {durability}, loop {result.loop}"
    )
    spread = (
        f" (min {summary.tasks_per_s_min:,.0f}, max {summary.tasks_per_s_max:,.0f}, {repeat} runs)"
        if repeat > 1
        else ""
    )
    click.echo(f"  throughput     {result.tasks_per_s:>12,.0f} tasks/s{spread}")
    click.echo(f"  per task       {result.us_per_task:>12,.1f} µs")
    click.echo(
        f"  run time       {result.seconds:>12.3f} s   (plan {result.plan_ms:.0f} ms, not included)"
    )
    click.echo(
        f"  baseline       {result.baseline_tasks_per_s:>12,.0f} tasks/s  (no journal; durable is "
        f"{result.ratio:.2f}x its speed)"
    )
    click.echo(
        f"  commits        {result.commits:>12,}     ({result.events_per_commit:.1f} events per commit)"
    )
    click.echo(f"  journal        {result.journal_bytes_per_task:>12,.0f} bytes per task")
    click.echo(f"  peak RSS       {result.peak_rss_mb:>12,.1f} MB")


COMMANDS = [bench]
