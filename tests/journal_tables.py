"""A journal's tables read and written directly, on either backend, for the tests that
must show that a command touched exactly the rows it should (`durable prune`).

    from journal_tables import make_runs, rows_of, tables_with_run_id

    make_runs(target, ["r1", "r2"])    # finished runs of SMALL (or of a workflow given)
    rows_of(target)                    # table -> its rows, for every table with a run_id
    rows_of(target, ["r1"])            # only r1's rows; rows_of(target, but=["r1"]): the rest
    fetch(target, "SELECT ...")        # any query; `execute(target, statements...)`
    append_only_refuses(target)        # UPDATE and DELETE of runs and events fail

`target` is a SQLite file's path or a PostgreSQL DSN (`tests/pg.py`). The tables are
whatever the schema holds today (every table with a `run_id` column: on PostgreSQL,
the fleet's too), so a table added later is covered without changing a test. SQL is
written unqualified; on PostgreSQL the connection's search_path is schema `durable`.
Each call opens a connection of its own and closes it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pg

from durable.runner import arun
from durable.spec import Workflow, from_data

#: A small run that writes a row to each of the journal's tables a finished run has.
SMALL = from_data(
    {
        "name": "small",
        "params": {"n": 1},
        "tasks": [
            {"id": "a", "tool": "echo", "input": {"n": "${params.n}"}},
            {"id": "fan", "tool": "echo", "foreach": [1, 2], "input": {"i": "${item}"}},
            {"id": "b", "tool": "echo", "dependencies": ["a"], "input": "${a.output}"},
        ],
    }
)


def make_runs(
    target: str | Path, run_ids: Sequence[str], workflow: Workflow = SMALL, params: Any = None
) -> Any:
    """Run `workflow` once per id, each to success, in the journal; returns `target`."""
    for run_id in run_ids:
        result = asyncio.run(arun(workflow, params, db=target, run_id=run_id, durability="off"))
        assert result.status == "succeeded", result.status
    return target


def on_postgres(target: str | Path) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


def fetch(target: str | Path, sql: str) -> list[tuple[Any, ...]]:
    """The rows of one query (no parameters)."""
    if on_postgres(target):
        return pg.fetch(_in_schema(str(target)), sql)
    with closing(sqlite3.connect(target, isolation_level=None)) as connection:
        return connection.execute(sql).fetchall()


def execute(target: str | Path, *statements: str) -> None:
    """Run statements in order, each committed on its own."""
    if on_postgres(target):
        pg.execute(_in_schema(str(target)), *statements)
        return
    with closing(sqlite3.connect(target, isolation_level=None)) as connection:
        for statement in statements:
            connection.execute(statement)


def tables_with_run_id(target: str | Path) -> list[str]:
    """Every table that has a `run_id` column."""
    if on_postgres(target):
        rows = fetch(
            target,
            "SELECT table_name FROM information_schema.columns WHERE table_schema = 'durable'"
            " AND column_name = 'run_id' ORDER BY table_name",
        )
        return [row[0] for row in rows]
    names = [row[0] for row in fetch(target, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    return sorted(
        name
        for name in names
        if "run_id" in [column[1] for column in fetch(target, f"PRAGMA table_info({name})")]
    )


def rows_of(
    target: str | Path, run_ids: Sequence[str] | None = None, *, but: Sequence[str] = ()
) -> dict[str, list[tuple[Any, ...]]]:
    """table -> its rows as stored (in a fixed order), for every table with a run_id:
    the rows of `run_ids` (all if None), leaving out those of `but`."""
    found = {}
    for table in tables_with_run_id(target):
        column = _run_id_column(target, table)
        found[table] = sorted(
            (
                row
                for row in fetch(target, f"SELECT * FROM {table}")
                if (run_ids is None or row[column] in run_ids) and row[column] not in but
            ),
            key=repr,
        )
    return found


def append_only_refuses(target: str | Path) -> None:
    """Every UPDATE and DELETE of `runs` and `events` is refused, by the triggers (the
    journal must have a run: a row trigger refuses a row)."""
    for sql in (
        "UPDATE events SET at = at + 1",
        "DELETE FROM events",
        "UPDATE runs SET workflow = 'x'",
        "DELETE FROM runs",
    ):
        try:
            execute(target, sql)
        except Exception as exc:  # sqlite3's, asyncpg's
            assert "append-only" in str(exc), exc
        else:
            raise AssertionError(f"not refused: {sql}")


def fail_deleting_summaries(target: str | Path) -> None:
    """A trigger of the test's own (`boom`) that fails any DELETE of a summary, with
    "boom: summaries stay": a prune fails after it has set the append-only triggers
    aside and deleted the runs' events."""
    if on_postgres(target):
        execute(
            target,
            "CREATE FUNCTION boom() RETURNS trigger AS $$"
            " BEGIN RAISE EXCEPTION 'boom: summaries stay'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER boom BEFORE DELETE ON summaries FOR EACH ROW EXECUTE FUNCTION boom()",
        )
    else:
        execute(
            target,
            "CREATE TRIGGER boom BEFORE DELETE ON summaries"
            " BEGIN SELECT RAISE(ABORT, 'boom: summaries stay'); END",
        )


def _run_id_column(target: str | Path, table: str) -> int:
    if on_postgres(target):
        names = [
            row[0]
            for row in fetch(
                target,
                "SELECT column_name FROM information_schema.columns WHERE table_schema ="
                f" 'durable' AND table_name = '{table}' ORDER BY ordinal_position",
            )
        ]
    else:
        names = [column[1] for column in fetch(target, f"PRAGMA table_info({table})")]
    return names.index("run_id")


def _in_schema(dsn: str) -> str:
    """The DSN with `search_path=durable`, so unqualified names are the journal's."""
    return f"{dsn}{'&' if '?' in dsn else '?'}search_path=durable"  # asyncpg: a setting
