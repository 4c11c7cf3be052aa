"""What `durable prune` and `durable cache clear` do, on both backends: SQLite (a file)
and PostgreSQL (a DSN), through the one interface the commands use
(`durable.prune.open_pruning` -> `Pruning`).

Which runs a prune selects; that a dry run changes nothing; that a prune deletes whole
runs (every row of every table that names them) and nothing of another run, in one
transaction after which the append-only triggers refuse as before, also when it
failed half-way; that a run whose driver holds its lock (and, on PostgreSQL, one the
workers hold) is refused with nothing pruned; that no cache entry outlives its run.
On PostgreSQL, also: a prune killed half-way leaves the journal whole, and no other
session ever sees the triggers disabled. What is SQLite's own (lock files, VACUUM, the
statements of its transaction) is `test_prune.py`.

On PostgreSQL each test gets a database of its own; a missing server skips those
tests locally and fails them in CI (`tests/pg.py`).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pg
import pytest
from journal_tables import (
    append_only_refuses,
    execute,
    fail_deleting_summaries,
    fetch,
    make_runs,
    on_postgres,
    rows_of,
    tables_with_run_id,
)

from durable.check import check_journal
from durable.errors import DurableError, JournalError, RunNotFound
from durable.journal import Journal
from durable.prune import Candidate, Pruning, RunIsRunning, open_pruning
from durable.runner import arun
from durable.spec import from_data

# The same work with the cache across runs on (`durable run --cache`); and another tool's.
CACHED = from_data(
    {
        "name": "cached",
        "cache": True,
        "params": {"n": 1},
        "tasks": [{"id": "a", "tool": "echo", "input": {"n": "${params.n}"}}],
    }
)
NAP = from_data(
    {"name": "nap", "cache": True, "tasks": [{"id": "s", "tool": "sleep", "input": {"seconds": 0}}]}
)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty journal's target: a file's path, or a fresh database's DSN."""
    if request.param == "sqlite":
        yield str(tmp_path / "j.db")
    else:
        with pg.fresh_database() as dsn:
            yield dsn


@pytest.fixture
def journal(target: str) -> str:
    """Four small finished runs, created in this order."""
    return make_runs(target, ["r1", "r2", "r3", "r4"])


pg_database = pg.pg_database


def pruning_of(target: str, action: Any, *, readonly: bool = False) -> Any:
    """`await action(pruning)` on the journal opened to prune, then closed."""

    async def main() -> Any:
        pruning = await open_pruning(target, readonly=readonly)
        try:
            return await action(pruning)
        finally:
            await pruning.close()

    return asyncio.run(main())


def pruned(target: str, run_ids: Sequence[str]) -> list[Candidate]:
    """What `durable prune RUN_ID...` does, without the command."""

    async def prune(pruning: Pruning) -> list[Candidate]:
        deleted = await pruning.delete_runs(await pruning.by_id(run_ids))
        await pruning.reclaim()
        return deleted

    return pruning_of(target, prune)


def event_count(target: str, run_id: str) -> int:
    """A run's events: a `task_ran` row holds two."""
    count = "coalesce(sum(CASE kind WHEN 'task_ran' THEN 2 ELSE 1 END), 0)"
    return int(fetch(target, f"SELECT {count} FROM events WHERE run_id = '{run_id}'")[0][0])


def created(target: str) -> dict[str, float]:
    return dict(fetch(target, "SELECT run_id, created_at FROM runs"))


# -- selection ----------------------------------------------------------------------------


def test_by_id_takes_whole_ids_in_the_order_given_each_once(journal: str) -> None:
    async def select(pruning: Pruning) -> None:
        found = await pruning.by_id(["r3", "r1", "r3"])
        times = created(journal)
        assert found == [
            Candidate(run_id, "small", times[run_id], event_count(journal, run_id))
            for run_id in ("r3", "r1")
        ]
        assert all(candidate.events > 4 for candidate in found)
        # A prefix names nothing; one unknown id refuses the whole list.
        for ids in (["nope"], ["r"], ["r1", "nope", "r2"], [""]):
            with pytest.raises(RunNotFound) as raised:
                await pruning.by_id(ids)
            assert raised.value.run_id == next(i for i in ids if i not in ("r1", "r2"))
            assert str(raised.value).startswith(f"run '{raised.value.run_id}' not found in ")
        assert await pruning.by_id([]) == []

    pruning_of(journal, select, readonly=True)


def test_created_before_takes_the_older_runs_oldest_first(target: str) -> None:
    # Ids in an order that is not the order of creation.
    make_runs(target, ["c-old", "a-mid", "b-new"])
    times = created(target)
    assert times["c-old"] < times["a-mid"] < times["b-new"]

    async def ids(pruning: Pruning, before: float) -> list[str]:
        found = await pruning.created_before(before)
        for candidate in found:
            assert candidate.created_at == times[candidate.run_id]
            assert candidate.events == event_count(target, candidate.run_id)
            assert candidate.workflow == "small"
        return [candidate.run_id for candidate in found]

    async def select(pruning: Pruning) -> None:
        assert await ids(pruning, 0.0) == []
        assert await ids(pruning, times["c-old"]) == []  # strictly before
        assert await ids(pruning, times["a-mid"]) == ["c-old"]
        assert await ids(pruning, math.nextafter(times["a-mid"], math.inf)) == ["c-old", "a-mid"]
        assert await ids(pruning, math.inf) == ["c-old", "a-mid", "b-new"]

    pruning_of(target, select, readonly=True)


def test_a_dry_run_changes_nothing(journal: str) -> None:
    """What `durable prune --dry-run` does: read-only, the listing, the check for
    drivers (no lock taken), the size."""
    before = rows_of(journal)

    async def dry(pruning: Pruning) -> None:
        candidates = await pruning.by_id(["r2", "r4"]) + await pruning.created_before(math.inf)
        await pruning.refuse_running(candidates)
        assert await pruning.size() > 0

    pruning_of(journal, dry, readonly=True)
    assert rows_of(journal) == before
    append_only_refuses(journal)


# -- deleting -----------------------------------------------------------------------------


def test_a_prune_deletes_whole_runs_and_nothing_else(journal: str) -> None:
    gone = ("r2", "r4")
    kept = rows_of(journal, but=gone)
    counts = {run_id: event_count(journal, run_id) for run_id in gone}
    assert all(rows_of(journal, ["r2"])[table] for table in ("runs", "events", "summaries"))

    done = pruned(journal, ["r4", "r2"])

    assert [(c.run_id, c.events) for c in done] == [("r4", counts["r4"]), ("r2", counts["r2"])]
    # No row of any table names a pruned run; every row of the others is as it was.
    assert rows_of(journal, gone) == {table: [] for table in tables_with_run_id(journal)}
    assert rows_of(journal, but=gone) == kept
    append_only_refuses(journal)

    async def check() -> None:
        reader = await Journal.open(journal, create=False, readonly=True)
        try:
            report = await check_journal(reader)
            assert [record.run_id for record in await reader.list_runs()] == ["r1", "r3"]
        finally:
            await reader.close()
        assert (report.runs, report.problems) == (2, [])

    asyncio.run(check())
    # A pruned run's id is free again.
    make_runs(journal, ["r2"])
    assert rows_of(journal, but=gone) == kept


def test_a_prune_reports_the_events_it_really_deleted(journal: str) -> None:
    """A resume may append between the listing and the lock: the count is the deletion's."""
    real = {run_id: event_count(journal, run_id) for run_id in ("r2", "r3")}

    async def prune(pruning: Pruning) -> list[Candidate]:
        stale = [c._replace(events=0) for c in await pruning.by_id(["r2", "r3"])]
        return await pruning.delete_runs(stale)

    done = pruning_of(journal, prune)
    assert [(c.run_id, c.events) for c in done] == [("r2", real["r2"]), ("r3", real["r3"])]


def test_a_prune_that_fails_half_way_prunes_nothing_and_leaves_the_triggers_on(
    journal: str,
) -> None:
    fail_deleting_summaries(journal)
    before = rows_of(journal)
    with pytest.raises(JournalError) as raised:
        pruned(journal, ["r1", "r3"])
    assert "boom: summaries stay" in str(raised.value)
    assert str(raised.value).endswith("; nothing was pruned")
    assert rows_of(journal) == before
    append_only_refuses(journal)

    # Nothing was left half-done: the same prune, unbroken, goes through.
    execute(journal, "DROP TRIGGER boom" + (" ON summaries" if on_postgres(journal) else ""))
    assert [c.run_id for c in pruned(journal, ["r1", "r3"])] == ["r1", "r3"]
    assert rows_of(journal, ["r1", "r3"]) == {table: [] for table in tables_with_run_id(journal)}
    append_only_refuses(journal)


# -- running runs -------------------------------------------------------------------------


def test_a_run_whose_driver_holds_its_lock_is_refused_and_nothing_is_pruned(
    journal: str,
) -> None:
    """A driver in this process holds the run's lock as one in another does (SQLite:
    the lock file's; PostgreSQL: the advisory lock, on a connection of its own)."""
    before = rows_of(journal)

    async def main() -> None:
        driver = await Journal.open(journal, create=False)
        try:
            async with driver.lock("r3"):
                for readonly in (True, False):
                    pruning = await open_pruning(journal, readonly=readonly)
                    try:
                        candidates = await pruning.by_id(["r1", "r3", "r4"])
                        with pytest.raises(RunIsRunning) as raised:
                            if readonly:  # the dry run's check, which takes no lock
                                await pruning.refuse_running(candidates)
                            else:
                                await pruning.delete_runs(candidates)
                        assert str(raised.value) == (
                            "run 'r3' is running (a live process drives it): nothing was pruned"
                        )
                        await pruning.refuse_running([c for c in candidates if c.run_id != "r3"])
                    finally:
                        await pruning.close()
        finally:
            await driver.close()

    asyncio.run(main())
    assert rows_of(journal) == before
    # The driver gone, the same prune goes through: the refused one let go of its locks.
    assert [c.run_id for c in pruned(journal, ["r1", "r3", "r4"])] == ["r1", "r3", "r4"]
    assert sorted(created(journal)) == ["r2"]


# -- what a pruned run leaves behind ------------------------------------------------------


def test_no_row_anywhere_names_a_pruned_run_not_even_a_cache_entry(target: str) -> None:
    """On SQLite a pruned run's seqs are free again (`events.seq` is a plain INTEGER
    PRIMARY KEY), so an entry left behind would name whatever event a later run writes
    there; on either backend it would name an event that is gone."""
    make_runs(target, ["keep"], CACHED, {"n": 0})
    make_runs(target, ["gone"], CACHED, {"n": 1})
    assert fetch(target, "SELECT count(*) FROM cache WHERE run_id = 'gone'") == [(1,)]
    kept = rows_of(target, but=("gone",))

    pruned(target, ["gone"])

    assert rows_of(target, but=("gone",)) == kept
    assert rows_of(target, ["gone"]) == {table: [] for table in tables_with_run_id(target)}
    # The id, and (on SQLite) the seqs, used again by other work; then the pruned
    # run's work asked for again: it must run, not be answered with other work's output.
    make_runs(target, ["gone"], CACHED, {"n": 2})
    again = asyncio.run(arun(CACHED, {"n": 1}, db=target, run_id="again", durability="off"))
    assert again.outputs == {"a": {"n": 1}}
    assert not again.tasks["a"].reused


def test_cache_clear_forgets_by_tool_and_by_age_and_keeps_the_history(target: str) -> None:
    make_runs(target, ["old"], CACHED, {"n": 1})
    time.sleep(0.02)
    boundary = time.time()
    time.sleep(0.02)
    make_runs(target, ["new"], CACHED, {"n": 2})
    make_runs(target, ["nap"], NAP)
    entries = "SELECT run_id, tool FROM cache ORDER BY run_id"
    assert fetch(target, entries) == [("nap", "sleep"), ("new", "echo"), ("old", "echo")]
    events = {run_id: event_count(target, run_id) for run_id in ("old", "new", "nap")}

    async def clear(pruning: Pruning) -> None:
        assert await pruning.clear_cache(tool="nothing") == 0
        assert await pruning.clear_cache(older_than=boundary, tool="sleep") == 0
        assert await pruning.clear_cache(older_than=boundary) == 1  # old's
        assert await pruning.cache_count() == 2
        assert await pruning.clear_cache(tool="sleep") == 1
        assert await pruning.cache_count() == 1
        assert await pruning.clear_cache() == 1
        assert await pruning.cache_count() == 0

    pruning_of(target, clear)
    # The events the entries pointed to stay, as history.
    assert {run_id: event_count(target, run_id) for run_id in events} == events
    append_only_refuses(target)


# -- PostgreSQL's own ---------------------------------------------------------------------


def test_a_run_the_workers_hold_is_refused(pg_database: str) -> None:
    """A fleet run with work rows (ready or running) is the workers', whether or not a
    worker is alive: refused, by the dry run's check and by the prune."""
    make_runs(pg_database, ["r1", "r2"])
    execute(
        pg_database,
        "INSERT INTO work (run_id, task_id, tool, state) VALUES"
        " ('r2', 'a', 'echo', 'ready'), ('r2', 'b', 'echo', 'ready')",
        "INSERT INTO fleet_runs VALUES ('r2', 4, 3, 1.0)",
    )
    before = rows_of(pg_database)
    held = "run 'r2' is running (the workers hold 2 of its tasks, ready or running)"

    async def refuse(pruning: Pruning) -> None:
        candidates = await pruning.by_id(["r1", "r2"])
        for check in (pruning.refuse_running, pruning.delete_runs):
            with pytest.raises(RunIsRunning, match=rf"^{re.escape(held)}: nothing was pruned$"):
                await check(candidates)

    pruning_of(pg_database, refuse)
    assert rows_of(pg_database) == before

    # Its work gone (cancelled, say), it may go: its rows in the fleet's tables too.
    execute(pg_database, "DELETE FROM work")
    assert [c.run_id for c in pruned(pg_database, ["r1", "r2"])] == ["r1", "r2"]
    assert rows_of(pg_database, ["r2"]) == {t: [] for t in tables_with_run_id(pg_database)}
    assert "fleet_runs" in tables_with_run_id(pg_database)


def test_a_prune_of_more_runs_than_it_may_lock_is_refused_before_it_locks_any(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from durable.journal.pg_prune import PgPruning

    async def budget(self: PgPruning, conn: Any) -> int:
        return 2

    make_runs(pg_database, ["r1", "r2", "r3"])
    before = rows_of(pg_database)
    monkeypatch.setattr(PgPruning, "_lock_budget", budget)
    with pytest.raises(DurableError) as raised:
        pruned(pg_database, ["r1", "r2", "r3"])
    assert str(raised.value) == (
        f"{pg_database}: 3 runs are more than one prune may lock at once here (2: half of "
        "PostgreSQL's lock table, max_locks_per_transaction x max_connections); prune fewer "
        "at a time (an earlier --older-than): nothing was pruned"
    )
    assert rows_of(pg_database) == before
    assert [c.run_id for c in pruned(pg_database, ["r1", "r2"])] == ["r1", "r2"]


#: Prunes r1 in a process of its own (killed by the test while it waits for a lock).
PRUNE = """\
import asyncio, sys
from durable.prune import open_pruning

async def main():
    pruning = await open_pruning(sys.argv[1])
    await pruning.delete_runs(await pruning.by_id(["r1"]))

asyncio.run(main())
"""


def test_a_prune_killed_half_way_leaves_the_journal_whole(pg_database: str) -> None:
    """The prune has disabled `runs`' trigger and waits for `events` (the test holds a
    lock on it); meanwhile every other session sees both triggers on. Its process is
    killed there: the server rolls the transaction back, triggers and all."""
    make_runs(pg_database, ["r1", "r2"])
    before = rows_of(pg_database)
    enabled = "SELECT tgname, tgenabled::text FROM pg_trigger WHERE tgname LIKE '%append_only'"
    on = sorted(fetch(pg_database, enabled))
    assert on == [("events_append_only", "O"), ("runs_append_only", "O")]

    async def main() -> None:
        import asyncpg

        # The blocker holds its lock in a transaction; the watcher looks from outside
        # any (a transaction sees one snapshot of pg_stat_activity).
        blocker = await asyncpg.connect(pg_database)
        watcher = await asyncpg.connect(pg_database)
        process = None
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE durable.events IN ROW EXCLUSIVE MODE")
                process = subprocess.Popen(
                    [sys.executable, "-c", PRUNE, pg_database], start_new_session=True
                )
                deadline = time.monotonic() + 30
                while not await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'ALTER TABLE durable.events DISABLE%'"
                ):
                    assert process.poll() is None, "the prune ended before it waited"
                    assert time.monotonic() < deadline, "the prune never reached `events`"
                    await asyncio.sleep(0.02)
                # Half-way: `runs`' trigger is disabled in the prune's transaction only.
                assert sorted(await watcher.fetch(enabled)) == on
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
            # The lock let go, the server finds the client gone and rolls back.
            deadline = time.monotonic() + 30
            while await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'ALTER TABLE durable.%'"
            ):
                assert time.monotonic() < deadline, "the killed prune's session lives on"
                await asyncio.sleep(0.02)
        finally:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
            await blocker.close()
            await watcher.close()

    asyncio.run(main())
    assert sorted(fetch(pg_database, enabled)) == on
    assert rows_of(pg_database) == before
    append_only_refuses(pg_database)
    assert [c.run_id for c in pruned(pg_database, ["r1"])] == ["r1"]


def test_the_size_is_the_journal_tables_in_the_database(pg_database: str) -> None:
    make_runs(pg_database, ["r1"])
    total = fetch(
        pg_database,
        "SELECT sum(pg_total_relation_size(format('%I.%I', schemaname, tablename)))::bigint"
        " FROM pg_tables WHERE schemaname = 'durable'",
    )[0][0]

    async def size(pruning: Pruning) -> int:
        assert pruning.size_of == "the journal (its tables in PostgreSQL)"
        return await pruning.size()

    assert pruning_of(pg_database, size, readonly=True) == total > 0


def test_a_role_that_does_not_own_the_tables_cannot_prune(pg_database: str) -> None:
    """Setting the triggers aside is the tables' owner's to do: a role that may only
    read and write the journal is refused by PostgreSQL, in one line, and nothing is
    pruned. (The role is the server's, not the database's: dropped at the end.)"""
    make_runs(pg_database, ["r1", "r2"])
    role = f"durable_writer_{uuid.uuid4().hex[:8]}"
    execute(
        pg_database,
        f"CREATE ROLE {role} LOGIN",
        f"GRANT USAGE ON SCHEMA durable TO {role}",
        f"GRANT ALL ON ALL TABLES IN SCHEMA durable TO {role}",
        f"GRANT ALL ON ALL SEQUENCES IN SCHEMA durable TO {role}",
    )
    try:
        before = rows_of(pg_database)
        parts = urlsplit(pg_database)
        as_writer = urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))
        with pytest.raises(JournalError) as raised:
            pruned(as_writer, ["r1"])
        assert str(raised.value) == (
            f"{as_writer}: cannot prune: must be owner of table runs; nothing was pruned"
        )
        assert rows_of(pg_database) == before
        append_only_refuses(pg_database)
    finally:
        execute(pg_database, f"DROP OWNED BY {role}", f"DROP ROLE {role}")
