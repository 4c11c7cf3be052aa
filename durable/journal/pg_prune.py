"""Pruning a PostgreSQL journal: `durable prune` and `durable cache clear` on a DSN.

The rules are `durable/prune.py`'s, and so are the selection, the refusals and the
messages; this is how PostgreSQL keeps them.

**The append-only triggers are set aside for one transaction only.** The prune is
one transaction: it takes the runs' locks, runs `ALTER TABLE ... DISABLE TRIGGER`
on the row triggers of `runs` and `events` (`APPEND_ONLY_TRIGGERS`), deletes the
runs' rows from every table that has them, and runs `ENABLE TRIGGER` before it
commits. DDL is transactional in PostgreSQL: the disabled triggers are a change to
the catalog that only this transaction sees; every other session reads the
committed catalog, in which they are on, before, during and after the prune. A
failure anywhere, or the prune's process dying, or its connection breaking, rolls
back the transaction, the triggers' change with the deletions. The TRUNCATE
triggers are never touched. What was not chosen, and why:
`session_replication_role = replica` (or a setting of durable's own that the
trigger would read) is a setting a client sets for itself: the guarantee would
then hold only for clients that do not ask it not to.

Two costs follow. `ALTER TABLE` needs the tables' owner: a role that may only
write to the journal cannot prune it (it gets PostgreSQL's refusal, and nothing is
pruned). And `DISABLE TRIGGER` takes a SHARE ROW EXCLUSIVE lock on `runs` and
`events` until the commit: reading goes on, but every writer of the journal (a
live run's commits, the workers') waits for the prune's deletions to commit. That
is acceptable for an operator's command, run now and then; the writers wait, they
do not fail. The locks are taken in the order writers take them (`runs`, then
`events`, as `PgJournal.create_run` does), so a prune and a new run do not deadlock.

**Who is running.** A run's driver holds its advisory lock for as long as it lives
(`PgRunLock`); the prune takes the same lock as a transaction lock
(`pg_try_advisory_xact_lock`): it fails while a driver lives, and while the prune
holds it no `resume` (`--workers` too) can start. A run that the workers hold
(`durable.work` has rows of it, ready or running) is refused too. That read needs no
lock of the fleet's: rows are added to a run that has none only with its driver
lock held (`resume --workers`) or in the transaction that creates it, and a
worker's transaction that is taking a run's last rows away has not committed, so
the prune still sees them, and refuses. A dry run asks the same questions without
taking a lock (`PgJournal.is_driven`, `fleet_work`). The locks live in the server's
lock table, which every session shares: one prune locks at most half of it
(`max_locks_per_transaction` x `max_connections` / 2, 3,200 runs by default), and
refuses more, before it has taken any, rather than fail other sessions' statements.

**Sizes.** What `size` reports is the space the journal's tables take in the
database: `pg_total_relation_size` (rows, indexes, TOAST) of every table of schema
`durable`. After the deletion has committed, a plain `VACUUM` of the tables it
deleted from marks their space free for the journal's next rows and gives the
empty pages at the tables' ends back to the file system; it blocks neither reads
nor writes. Not `VACUUM FULL`, which would give all of it back: it rewrites each
table under an ACCESS EXCLUSIVE lock, stopping every run, reader and worker of the
journal for as long as copying the events takes, and needs room for the copy. So,
unlike a SQLite file, the size may hardly shrink: PostgreSQL keeps the space, and
the journal grows again only once its next rows have filled it. (A table's first
VACUUM also makes its free-space and visibility maps, a few pages each: a small new
journal may even grow a little.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from durable.errors import DurableError, JournalError
from durable.journal.cache import forgetting
from durable.journal.postgres import (
    _LOCK_SPACE,
    APPEND_ONLY_TRIGGERS,
    PgJournal,
    _driver,
    _lock_key,
    _reason,
    connection_lost,
)
from durable.prune import (
    CANDIDATES,
    DRIVEN,
    EVENTS_IN_ROWS,
    RUN_TABLES,
    Candidate,
    Pruning,
    RunIsRunning,
    candidates,
)

_CANDIDATES = CANDIDATES.replace("FROM events", "FROM durable.events").replace(
    "FROM runs", "FROM durable.runs"
)
#: The fleet's tables that hold a run's rows (`fleet/tables.py`), in schema 2.
FLEET_TABLES = ("work", "fleet_runs")
#: Each run id's lock in `$1`'s space, tried in order: whether it was taken.
_TRY_LOCKS = """SELECT pg_try_advisory_xact_lock($1, k)
    FROM unnest($2::integer[]) WITH ORDINALITY AS t (k, i) ORDER BY i"""
_DELETE_EVENTS = f"""WITH gone AS (
        DELETE FROM durable.events WHERE run_id = ANY($1::text[]) RETURNING run_id, kind)
    SELECT run_id, {EVENTS_IN_ROWS} FROM gone GROUP BY run_id"""
_SIZE = """SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
    WHERE c.relnamespace = 'durable'::regnamespace AND c.relkind IN ('r', 'p')"""


def _fleet_holds(held: int) -> str:
    return f"the workers hold {held} of its tasks, ready or running"


class PgPruning(Pruning):
    """Pruning a PostgreSQL journal, through a `PgJournal` opened for it."""

    size_of = "the journal (its tables in PostgreSQL)"

    def __init__(self, journal: PgJournal) -> None:
        self.journal = journal
        self.where = journal.path
        # Tables with rows of a run; the fleet's only in a journal that has them.
        self.tables = RUN_TABLES + (FLEET_TABLES if journal._fleet else ())

    @classmethod
    async def open(cls, dsn: str, *, readonly: bool = False) -> PgPruning:
        # `full`: the prune's commit is flushed before it is reported, as on SQLite.
        journal = await PgJournal.open(dsn, create=False, durability="full", readonly=readonly)
        return cls(journal)

    async def _find(self, run_ids: Sequence[str]) -> list[Candidate]:
        return candidates(
            await self._read(f"{_CANDIDATES} WHERE r.run_id = ANY($1::text[])", list(run_ids))
        )

    async def created_before(self, before: float) -> list[Candidate]:
        # Ties in `created_at` in the order the runs were written, as SQLite's rowid.
        rows = await self._read(
            f"{_CANDIDATES} WHERE r.created_at < $1 ORDER BY r.created_at,"
            " (SELECT min(seq) FROM durable.events e WHERE e.run_id = r.run_id) NULLS LAST,"
            " r.run_id",
            before,
        )
        return candidates(rows)

    async def running(self, run_id: str) -> str | None:
        try:
            held = await self.journal.fleet_work(run_id)
            if held:
                return _fleet_holds(held)
            return DRIVEN if await self.journal.is_driven(run_id) else None
        except _driver().PostgresError as exc:
            raise JournalError(self.where, f"cannot read: {_reason(exc)}") from None

    async def delete_runs(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        asyncpg = _driver()
        conn = self.journal._writable
        run_ids = [candidate.run_id for candidate in candidates]
        try:
            async with conn.transaction():
                await self._lock(conn, run_ids)
                for table, trigger in APPEND_ONLY_TRIGGERS.items():  # runs, then events
                    await conn.execute(f"ALTER TABLE durable.{table} DISABLE TRIGGER {trigger}")
                events = dict(await conn.fetch(_DELETE_EVENTS, run_ids))
                for table in self.tables:
                    if table != "events":
                        await conn.execute(
                            f"DELETE FROM durable.{table} WHERE run_id = ANY($1::text[])", run_ids
                        )
                for table, trigger in APPEND_ONLY_TRIGGERS.items():
                    await conn.execute(f"ALTER TABLE durable.{table} ENABLE TRIGGER {trigger}")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            if connection_lost(exc, conn):
                raise JournalError(
                    self.where,
                    f"lost the database while pruning ({_reason(exc)}): the prune committed "
                    "whole or not at all; `durable runs` shows which",
                ) from None
            raise JournalError(
                self.where, f"cannot prune: {_reason(exc)}; nothing was pruned"
            ) from None
        return [c._replace(events=int(events.get(c.run_id, 0))) for c in candidates]

    async def _lock(self, conn: Any, run_ids: list[str]) -> None:
        """Take every run's lock for this transaction, or refuse the first that is
        running: its driver holds its lock, or the workers hold it."""
        budget = await self._lock_budget(conn)
        if len(run_ids) > budget:
            raise DurableError(
                f"{self.where}: {len(run_ids)} runs are more than one prune may lock at once "
                f"here ({budget}: half of PostgreSQL's lock table, max_locks_per_transaction "
                "x max_connections); prune fewer at a time (an earlier --older-than): "
                "nothing was pruned"
            )
        keys = [_lock_key(run_id) for run_id in run_ids]
        locked = [row[0] for row in await conn.fetch(_TRY_LOCKS, _LOCK_SPACE, keys)]
        held: dict[str, int] = {}
        if self.journal._fleet:
            held = dict(
                await conn.fetch(
                    "SELECT run_id, count(*) FROM durable.work WHERE run_id = ANY($1::text[])"
                    " GROUP BY run_id",
                    run_ids,
                )
            )
        for run_id, free in zip(run_ids, locked, strict=True):
            if not free:
                raise RunIsRunning(run_id)
            if held.get(run_id):
                raise RunIsRunning(run_id, _fleet_holds(held[run_id]))

    async def _lock_budget(self, conn: Any) -> int:
        """How many runs one prune may lock: half the server's lock table, which every
        session shares (a prune that filled it would fail others' statements)."""
        return int(
            await conn.fetchval(
                "SELECT current_setting('max_locks_per_transaction')::integer"
                " * current_setting('max_connections')::integer / 2"
            )
        )

    async def reclaim(self) -> None:
        """A plain VACUUM of the tables the prune deleted from (not FULL: see above)."""
        asyncpg = _driver()
        tables = ", ".join(f"durable.{table}" for table in self.tables)
        try:
            await self.journal._writable.execute(f"VACUUM {tables}")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise JournalError(
                self.where,
                f"the runs were pruned, but their space was not reclaimed: {_reason(exc)}",
            ) from None

    async def size(self) -> int:
        return int((await self._read(_SIZE))[0][0])

    async def clear_cache(self, older_than: float | None = None, tool: str | None = None) -> int:
        asyncpg = _driver()
        where, parameters = forgetting(older_than, tool, "$")
        try:
            return int(
                await self.journal._writable.fetchval(
                    f"WITH gone AS (DELETE FROM durable.cache{where} RETURNING 1)"
                    " SELECT count(*) FROM gone",
                    *parameters,
                )
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise JournalError(self.where, f"cannot clear the cache: {_reason(exc)}") from None

    async def cache_count(self) -> int:
        return int((await self._read("SELECT count(*) FROM durable.cache"))[0][0])

    async def close(self) -> None:
        await self.journal.close()

    async def _read(self, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self.journal._conn.fetch(sql, *args))
        except _driver().PostgresError as exc:
            raise JournalError(self.where, f"cannot read: {_reason(exc)}") from None
