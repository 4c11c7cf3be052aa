"""The fleet's statements (`durable/fleet/tables.py`) as PostgreSQL reads them."""

from __future__ import annotations

import asyncio

import asyncpg
import pg

from durable.fleet.tables import STEP, WRITE
from durable.journal.postgres import PgJournal

pg_database = pg.pg_database


def parameter_types(dsn: str, *statements: str) -> list[list[str]]:
    """The types PostgreSQL infers for each statement's parameters."""

    async def prepare() -> list[list[str]]:
        journal = await PgJournal.open(dsn, create=True)  # the schema, `fleet_step` with it
        await journal.close()
        conn = await asyncpg.connect(dsn)
        try:
            return [
                [kind.name for kind in (await conn.prepare(statement)).get_parameters()]
                for statement in statements
            ]
        finally:
            await conn.close()

    return asyncio.run(prepare())


def test_the_fast_commit_takes_the_write_statements_parameters_first(pg_database: str) -> None:
    """`fleet_step` spells out the types of `WRITE`'s parameters a second time (a
    function's signature must); one changed without the other would fail every
    fast commit, and only the fleet's end-to-end tests would see it."""
    write, step = parameter_types(pg_database, WRITE, STEP)
    assert len(write) == 27
    assert step[: len(write)] == write
    assert step[len(write) :] == ["int4", "int4", "int8", "text[]", "int4[]", "text[]"]
