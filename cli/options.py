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
quiet_option = click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print nothing while the run goes on, only the final summary.",
)
no_live_option = click.option(
    "--no-live",
    is_flag=True,
    help="On a terminal too, one plain line per transition instead of the live view.",
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

cache_option = click.option(
    "--cache",
    is_flag=True,
    help="Reuse the committed output of an earlier success of the same work (the same "
    "tool and rendered input) in this journal, instead of calling the tool.",
)


# -- reading commands: run ids, task ids, filters ---------------------------------


def _journal_for_completion(ctx: click.Context) -> str:
    from durable.journal import default_path

    return ctx.params.get("db") or default_path()


def _completion_rows(ctx: click.Context, sql: str, params: tuple[object, ...]) -> list[tuple]:
    """One read for shell completion: plain sqlite3, read-only, every error swallowed.

    Completion runs on each Tab press: it must be quick and must never print a
    traceback into the user's shell, so a missing or unreadable journal completes
    nothing.
    """
    import sqlite3
    from pathlib import Path
    from urllib.parse import quote

    from durable.journal.file import is_postgres

    target = _journal_for_completion(ctx)
    if is_postgres(target):
        return _pg_completion_rows(target, sql, params)
    try:
        path = Path(target).resolve()
        if not path.is_file():
            return []
        connection = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=0.5)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()
    except (sqlite3.Error, OSError, ValueError):
        return []


def _pg_completion_rows(dsn: str, sql: str, params: tuple[object, ...]) -> list[tuple]:
    """The same read on a PostgreSQL journal: one short connection (the tables found
    through its search_path, schema `durable`), a second at most, every error swallowed."""
    import asyncio
    import re

    try:
        import asyncpg
    except ImportError:
        return []
    numbers = iter(range(1, sql.count("?") + 1))
    query = re.sub(r"\?", lambda _: f"${next(numbers)}", sql)

    async def read() -> list[tuple]:
        conn = await asyncpg.connect(dsn, timeout=1, server_settings={"search_path": "durable"})
        try:
            return [tuple(row) for row in await conn.fetch(query, *params, timeout=1)]
        finally:
            await conn.close(timeout=1)

    try:
        return asyncio.run(asyncio.wait_for(read(), 2))
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return []


def complete_run_id(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """Run ids that start with what is typed, newest first, with their workflow."""
    from click.shell_completion import CompletionItem

    rows = _completion_rows(
        ctx,
        "SELECT run_id, workflow FROM runs WHERE substr(run_id, 1, ?) = ? "
        "ORDER BY created_at DESC LIMIT 200",
        (len(incomplete), incomplete),
    )
    return [CompletionItem(str(run_id), help=str(workflow)) for run_id, workflow in rows]


def complete_task_id(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """The task ids of the run already on the line (given whole or by a unique prefix)."""
    import json

    from click.shell_completion import CompletionItem

    run_id = ctx.params.get("run_id")
    if not run_id:
        return []
    rows = _completion_rows(
        ctx,
        "SELECT spec FROM runs WHERE run_id = ? OR substr(run_id, 1, ?) = ? LIMIT 2",
        (run_id, len(run_id), run_id),
    )
    if len(rows) != 1:
        return []
    try:
        tasks = json.loads(rows[0][0])["tasks"]
        ids = [task["id"] for task in tasks if isinstance(task, dict)]
    except (ValueError, KeyError, TypeError):
        return []
    return [CompletionItem(task_id) for task_id in ids if str(task_id).startswith(incomplete)]


def run_id_argument(required: bool = True):  # type: ignore[no-untyped-def]
    """RUN_ID: a run's id, or a unique prefix of it (as git takes commits)."""
    return click.argument("run_id", required=required, shell_complete=complete_run_id)


def task_argument(required: bool = False):  # type: ignore[no-untyped-def]
    return click.argument("task", required=required, shell_complete=complete_task_id)


class FiniteFloatRange(click.FloatRange):
    """A `click.FloatRange` that also refuses `nan` and `inf`, which `float()` reads.

    A range alone lets both through: `nan` compares false with every bound, and a
    range open above takes `inf`. Such a value is no amount of anything, and would
    only fail later, far from the option that brought it.
    """

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None):  # type: ignore[no-untyped-def]
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number.", param, ctx)
        return number


class Since(click.ParamType):
    """`--since`: an age (`90s`, `30m`, `2h`, `3d`, `1w`) or an ISO date or date-time
    (local time unless it names its zone); the result is a UNIX time."""

    name = "WHEN"
    _UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None):  # type: ignore[no-untyped-def]
        import re
        import time
        from datetime import datetime

        if isinstance(value, float):
            return value
        text = str(value).strip()
        age = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text)
        if age:
            return time.time() - float(age.group(1)) * self._UNITS[age.group(2)]
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"'{value}' is neither an age (30m, 2h, 3d, 1w) nor an ISO date "
                "(2026-11-28, 2026-11-28T14:30)",
                param,
                ctx,
            )
        try:
            return when.timestamp()
        except (ValueError, OverflowError, OSError):  # 0001-01-01 in a zone east of UTC
            self.fail(f"'{value}' is a date, but too far from 1970 to compare", param, ctx)


def _statuses(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> frozenset[str]:
    from durable.inspection import RUN_STATUSES

    chosen = {part.strip() for value in values for part in value.split(",") if part.strip()}
    unknown = sorted(chosen - set(RUN_STATUSES))
    if unknown:
        raise click.BadParameter(
            f"unknown status {', '.join(map(repr, unknown))}; choose from {', '.join(RUN_STATUSES)}",
            ctx,
            param,
        )
    return frozenset(chosen)


runs_status_option = click.option(
    "--status",
    "statuses",
    multiple=True,
    callback=_statuses,
    metavar="S[,S...]",
    help="Only runs in these statuses (repeatable, or a comma list): running, succeeded, "
    "failed, interrupted, damaged. A damaged run is always listed.",
)
runs_workflow_option = click.option(
    "--workflow", default=None, metavar="NAME", help="Only runs of this workflow (a glob: 'etl*')."
)
runs_since_option = click.option(
    "--since",
    type=Since(),
    default=None,
    help="Only runs created since then: an age (30m, 2h, 3d, 1w) or an ISO date (2026-11-28).",
)
runs_limit_option = click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Only the newest N runs (after the other filters); still listed oldest first.",
)
