"""`durable bench`: throughput of the real engine on a temporary journal."""

from __future__ import annotations

import click
from durable_cli.options import FiniteFloatRange, durability_option, json_option


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
    type=FiniteFloatRange(min=0),
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
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="With --db: start this many `durable worker` processes and hand the run to them "
    "(-j is then each run's max_concurrency across them all).",
)
@click.option(
    "--worker-slots",
    type=click.IntRange(min=1),
    default=None,
    help="With --workers: slots per worker [default: -j].",
)
@click.option(
    "--latency",
    is_flag=True,
    help="With --workers: measure claim-to-start latency on an idle fleet instead "
    "(50 one-task runs, one at a time).",
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
    workers: int | None,
    worker_slots: int | None,
    latency: bool,
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
    if workers is not None or latency:
        _bench_fleet(
            db,
            shape,
            tasks,
            workers or 1,
            worker_slots or jobs,
            jobs,
            sleep,
            durability,
            repeat,
            latency,
            as_json,
        )
        return
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


def _bench_fleet(
    db: str | None,
    shape: str,
    tasks: int,
    workers: int,
    slots: int,
    jobs: int,
    sleep: float,
    durability: str,
    repeat: int,
    latency: bool,
    as_json: bool,
) -> None:
    """`durable bench --workers N` (`durable/fleet/bench.py`)."""
    import asyncio
    import json

    from durable.errors import DurableError
    from durable.fleet import bench as fleet_bench

    if db is None:
        raise DurableError("--workers measures the fleet: give --db postgresql://...")
    if durability == "off":
        raise DurableError(
            "--durability off is for the SQLite journal; workers take normal or full"
        )
    if latency:
        found = asyncio.run(fleet_bench.measure_latency(db, workers))
        if as_json:
            click.echo(json.dumps(fleet_bench.to_dict(found)))
        else:
            click.echo(
                f"claim-to-start latency, idle fleet of {workers}: median {found.median_ms:.1f} ms, "
                f"p95 {found.p95_ms:.1f} ms, max {found.max_ms:.1f} ms ({found.samples} runs)"
            )
        return
    results = sorted(
        (
            asyncio.run(
                fleet_bench.measure_fleet(db, shape, tasks, workers, slots, jobs, sleep, durability)
            )
            for _ in range(repeat)
        ),
        key=lambda result: result.tasks_per_s,
    )
    median = results[len(results) // 2]
    if as_json:
        document = fleet_bench.to_dict(median)
        if repeat > 1:
            document.update(
                runs=repeat,
                tasks_per_s_min=results[0].tasks_per_s,
                tasks_per_s_max=results[-1].tasks_per_s,
            )
        click.echo(json.dumps(document))
        return
    mode = f"sleep {sleep:g}s" if sleep else "echo"
    click.echo(
        f"{shape} x {tasks} ({mode}), {workers} workers x {slots} slots, max_concurrency {jobs}"
    )
    click.echo(f"  throughput     {median.tasks_per_s:>12,.0f} tasks/s")
    click.echo(f"  run time       {median.seconds:>12.3f} s")
    click.echo(
        f"  round trip     {median.round_trip_ms:>12.3f} ms (SELECT 1; a chain step is three and a commit)"
    )


COMMANDS = [bench]
