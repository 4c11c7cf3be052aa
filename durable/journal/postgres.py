"""The journal on PostgreSQL: the SQLite journal's contract, for runs shared by machines.

Selected by a `postgresql://` (or `postgres://`) DSN for `--db`/`DURABLE_DB`. The
same tables (runs, an append-only event log, summaries, the cache, requests), in a
schema of their own, `durable`, so the journal can live in a database other programs
use too; the same checksums and chains (`integrity.py`), the same fold. What differs:

- **Append-only** is enforced by triggers that raise on UPDATE, DELETE and TRUNCATE of
  `runs` and `events`, as SQLite's triggers do.
- **Schema version** lives in `durable.schema_version`; a newer one is refused, and
  so is a `durable` schema without it (another program's).
- **Group commit**: one writer coroutine per journal; each batch is one transaction
  inserting every queued event with one statement (`unnest` of column arrays).
  `durability normal` sets `synchronous_commit = off` for the writer: a commit
  survives the client dying at once, and the server dying within a fraction of a
  second may lose the last commits (they run again: at-least-once), as SQLite's
  NORMAL does on power loss; `full` keeps PostgreSQL's default, a flush per commit.
- **Who drives a run** is a session-level advisory lock held on a connection of its
  own, released by the server when that connection ends, however the process died.

The driver is asyncpg, chosen by measurement (`bench/README.md`, "PostgreSQL
driver"). `prune`, the one sanctioned deletion of whole runs, sets the append-only
triggers aside inside its own transaction only (`pg_prune.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec

from durable.errors import (
    DurableError,
    JournalAbsent,
    JournalDamaged,
    JournalError,
    RunExists,
    RunLocked,
    RunNotFound,
)
from durable.events import Event
from durable.fleet.tables import FLEET_SCHEMA
from durable.integrity import ChainVerifier, summary_crc
from durable.journal.cache import LOOKUP, CacheHit, judge
from durable.journal.common import EventQueue, EventReading, chain_batch, checked_row, first_rows
from durable.journal.reader import (
    RunRecord,
    SummaryRow,
    run_record,
    run_records,
    seen_from,
    summary_row,
)
from durable.journal.schema import SESSION_ENDS, SUMMARY_EVERY
from durable.summary import RunSummary

#: 4: `task_ran` rows (`events.RAN`), which an older durable must refuse to read.
SCHEMA_VERSION = 4
_HAS_SCHEMA = "SELECT to_regclass('durable.schema_version') IS NOT NULL"
#: table -> the row trigger that refuses its UPDATE and DELETE. `durable prune`
#: disables them inside its own transaction, and enables them before it commits.
APPEND_ONLY_TRIGGERS = {"runs": "runs_append_only", "events": "events_append_only"}
_SCHEMA = [
    "CREATE SCHEMA IF NOT EXISTS durable",
    "CREATE TABLE IF NOT EXISTS durable.schema_version (version integer NOT NULL)",
    """CREATE TABLE IF NOT EXISTS durable.runs (
        run_id text PRIMARY KEY, workflow text NOT NULL, spec bytea NOT NULL,
        spec_hash text NOT NULL, params bytea NOT NULL, base_dir text NOT NULL,
        created_at double precision NOT NULL, cwd text, crc bigint)""",
    """CREATE TABLE IF NOT EXISTS durable.events (
        seq bigserial PRIMARY KEY, run_id text NOT NULL, task_id text, attempt integer,
        kind text NOT NULL, at double precision NOT NULL, data bytea, crc bigint)""",
    "CREATE INDEX IF NOT EXISTS events_by_run ON durable.events (run_id, seq)",
    """CREATE TABLE IF NOT EXISTS durable.summaries (
        run_id text PRIMARY KEY, last_seq bigint NOT NULL, data bytea NOT NULL,
        crc bigint NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS durable.cache (
        fingerprint text PRIMARY KEY, tool text NOT NULL, run_id text NOT NULL,
        task_id text NOT NULL, attempt integer NOT NULL, seq bigint NOT NULL,
        at double precision NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS durable.requests (
        run_id text NOT NULL, kind text NOT NULL, at double precision NOT NULL)""",
    """CREATE OR REPLACE FUNCTION durable.append_only() RETURNS trigger AS $$
        BEGIN RAISE EXCEPTION 'the durable journal is append-only'; END $$ LANGUAGE plpgsql""",
    *(
        f"""CREATE OR REPLACE TRIGGER {trigger}
        BEFORE UPDATE OR DELETE ON durable.{table}
        FOR EACH ROW EXECUTE FUNCTION durable.append_only()"""
        for table, trigger in APPEND_ONLY_TRIGGERS.items()
    ),
    *(
        f"""CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON durable.{table}
        FOR EACH STATEMENT EXECUTE FUNCTION durable.append_only()"""
        for table in APPEND_ONLY_TRIGGERS
    ),
    *FLEET_SCHEMA,  # schema 2: the workers' tables; 3: `fleet_step` (`fleet/tables.py`)
]

_INSERT_EVENTS = """INSERT INTO durable.events (run_id, task_id, attempt, kind, at, data, crc)
    SELECT * FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[],
                         $5::double precision[], $6::bytea[], $7::bigint[])
    RETURNING seq"""
_SAVE_SUMMARY = """INSERT INTO durable.summaries (run_id, last_seq, data, crc)
    VALUES ($1, $2, $3, $4) ON CONFLICT (run_id) DO UPDATE
    SET last_seq = excluded.last_seq, data = excluded.data, crc = excluded.crc"""
_REMEMBER = """INSERT INTO durable.cache VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (fingerprint) DO UPDATE SET tool = excluded.tool, run_id = excluded.run_id,
    task_id = excluded.task_id, attempt = excluded.attempt, seq = excluded.seq, at = excluded.at"""
_RUN_COLUMNS = "run_id, workflow, spec, spec_hash, params, base_dir, created_at, cwd, crc"
_LOOKUP = (
    LOOKUP.replace("?", "$1")
    .replace("FROM cache", "FROM durable.cache")
    .replace("JOIN events", "JOIN durable.events")
    .replace("FROM events", "FROM durable.events")
    .replace("FROM runs", "FROM durable.runs")
)
#: The namespace of durable's advisory locks (the other key is the run id's hash).
_LOCK_SPACE = 0x6475


def _lock_key(run_id: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(run_id.encode(), digest_size=4).digest(), "big", signed=True
    )


def _driver() -> Any:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - a dependency, but name it if it is missing
        raise DurableError(
            "a postgresql:// journal needs asyncpg: pip install 'durable[postgres]'"
        ) from None
    return asyncpg


#: How long a read keeps trying to reconnect before it gives up (`_Reads`).
RECONNECT_FOR = 30.0


def connection_lost(exc: BaseException, conn: Any = None) -> bool:
    """Whether `exc` means the connection is gone (the server restarted, the network
    broke, the backend was terminated). asyncpg may report a statement sent just
    before it noticed as some other error, with the connection closed."""
    asyncpg = _driver()
    if isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.InterfaceError
        | asyncpg.PostgresConnectionError
        | asyncpg.AdminShutdownError
        | asyncpg.CannotConnectNowError,
    ):
        return True
    if isinstance(exc, JournalError) and "cannot connect" in str(exc):
        return True
    return conn is not None and conn.is_closed()


class _Reads:
    """The journal's reading connection. A read that fails because the connection
    broke is tried again on a new one, with backoff, for up to `RECONNECT_FOR`
    seconds (reads are idempotent): `durable watch`, a `run --workers` following
    its run, and a worker folding a run ride out a PostgreSQL restart. Anything else
    (a transaction, `execute`) goes to the connection as it is."""

    def __init__(self, journal: PgJournal, conn: Any) -> None:
        self._journal = journal
        self.conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    async def fetch(self, *args: Any) -> Any:
        return await self._read("fetch", args)

    async def fetchrow(self, *args: Any) -> Any:
        return await self._read("fetchrow", args)

    async def fetchval(self, *args: Any) -> Any:
        return await self._read("fetchval", args)

    async def _read(self, method: str, args: tuple[Any, ...]) -> Any:
        deadline = asyncio.get_running_loop().time() + RECONNECT_FOR
        delay = 0.1
        while True:
            try:
                if self.conn.is_closed():
                    self.conn = await self._journal._connect()
                return await getattr(self.conn, method)(*args)
            except Exception as exc:
                if not connection_lost(exc, self.conn):
                    raise
                if asyncio.get_running_loop().time() > deadline:
                    raise JournalError(
                        self._journal.path, f"lost the database: {_reason(exc)}"
                    ) from None
                if not self.conn.is_closed():
                    self.conn.terminate()
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)


class PgRunLock:
    """Who drives a run: an advisory lock held on a connection of its own, which the
    server releases when that connection ends (the process died, the network broke)."""

    def __init__(self, journal: PgJournal, run_id: str) -> None:
        self.journal, self.run_id = journal, run_id
        self._conn: Any = None

    async def __aenter__(self) -> PgRunLock:
        conn = await self.journal._connect()
        got = await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, $2)", _LOCK_SPACE, _lock_key(self.run_id)
        )
        if not got:
            await conn.close()
            raise RunLocked(self.run_id)
        self._conn = conn
        held = await self.journal.fleet_work(self.run_id)
        if held:
            await self.__aexit__()
            raise RunLocked(
                self.run_id,
                f"the workers of this database have {held} of its tasks ready or running "
                f"(`durable workers`); it cannot also run in a process of its own",
            )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


class PgJournal(EventReading, EventQueue):
    """An open PostgreSQL journal. `await PgJournal.open(dsn)`, `await journal.close()`."""

    def __init__(self, dsn: str, conn: Any, writer: Any | None) -> None:
        self.path = _shown(dsn)  # what messages name the journal by: no password
        self.dsn = dsn
        self._conn = conn  # reads
        self._write_conn = writer
        self._init_queue()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._chain: dict[str, int] = {}
        self._summaries: dict[str, Callable[[], RunSummary]] = {}
        self._summary_due: dict[str, float] = {}
        #: Runs whose summary the rate limit skipped, and their last committed seq.
        self._behind: dict[str, int] = {}
        self._encode_summary = msgspec.msgpack.Encoder().encode
        self._watch: asyncio.Task[None] | None = None
        # A run whose leftover requests the watch deletes first (`drop_requests`).
        self._dropped: str | None = None
        self._lookup_conn: Any = None
        self._lookup_lock = asyncio.Lock()
        # The writer's connection serves the group commit and the watch for requests:
        # an asyncpg connection runs one statement at a time.
        self._write_lock = asyncio.Lock()
        #: The journal has the fleet's tables (schema 2; one opened read-only may not).
        self._fleet = False

    # -- opening -------------------------------------------------------------

    @classmethod
    async def open(
        cls, dsn: str, *, create: bool = True, durability: str = "normal", readonly: bool = False
    ) -> PgJournal:
        journal = cls(dsn, None, None)
        journal._conn = _Reads(journal, await journal._connect())
        try:
            await journal._check_schema(create and not readonly, upgrade=not readonly)
            journal._fleet = bool(
                await journal._conn.fetchval("SELECT to_regclass('durable.work') IS NOT NULL")
            )
            if not readonly:
                journal._write_conn = await journal._connect()
                if durability != "full":
                    await journal._write_conn.execute("SET synchronous_commit = off")
        except BaseException:
            await journal.close()
            raise
        return journal

    async def _connect(self) -> Any:
        asyncpg = _driver()
        try:
            return await asyncpg.connect(self.dsn, timeout=10)
        except (TimeoutError, OSError, asyncpg.PostgresError, ValueError) as exc:
            raise JournalError(_shown(self.dsn), f"cannot connect: {_reason(exc)}") from None

    async def _check_schema(self, create: bool, upgrade: bool) -> None:
        """Refuse a newer schema or another program's; create the journal's if
        `create`, and upgrade an older one if `upgrade` (opened to write: what it
        writes may be what only this schema allows, such as `task_ran` rows). A
        journal being created by another process right now is waited for (its DDL
        is one transaction, under an advisory lock), not mistaken for another
        program's half-made schema."""
        if await self._schema_ready(upgrade, settled=False):
            return
        conn = self._conn
        # A session lock, taken outside any transaction: the checks after it then run
        # in transactions begun after the creator's commit, whose catalog caches see
        # it (one begun before would still see no `schema_version`).
        await conn.execute("SELECT pg_advisory_lock($1, 0)", _LOCK_SPACE)
        try:
            if await self._schema_ready(upgrade, settled=True):  # made meanwhile
                return
            if not create and not await conn.fetchval(_HAS_SCHEMA):
                raise JournalAbsent(_shown(self.dsn), "no durable journal in this database yet")
            async with conn.transaction():
                for statement in _SCHEMA:
                    await conn.execute(statement)
                # Older schemas gain the tables they lack (each statement is idempotent).
                await conn.execute("DELETE FROM durable.schema_version")
                await conn.execute("INSERT INTO durable.schema_version VALUES ($1)", SCHEMA_VERSION)
        finally:
            if not conn.is_closed():  # a closed one has let go of it already
                await conn.execute("SELECT pg_advisory_unlock($1, 0)", _LOCK_SPACE)

    async def _schema_ready(self, upgrade: bool, settled: bool) -> bool:
        """Whether the journal's schema is there and usable as it is (an older one
        is, unless to `upgrade`). `settled`: read under the creation lock, so what
        looks half-made is another program's."""
        conn = self._conn
        if await conn.fetchval(_HAS_SCHEMA):
            version = await conn.fetchval("SELECT max(version) FROM durable.schema_version")
            if version is not None and version > SCHEMA_VERSION:
                raise JournalError(
                    _shown(self.dsn),
                    f"journal schema version {version} is newer than this durable "
                    f"understands ({SCHEMA_VERSION}); upgrade durable",
                )
            return version == SCHEMA_VERSION or (version is not None and not upgrade)
        foreign = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'durable'")
        if foreign and settled:
            raise JournalError(
                _shown(self.dsn),
                "its schema 'durable' belongs to another program (it has no schema_version)",
            )
        return False

    # -- runs and their locks --------------------------------------------------

    def lock(self, run_id: str) -> PgRunLock:
        return PgRunLock(self, run_id)

    async def is_driven(self, run_id: str) -> bool:
        """A live session holds the run's advisory lock (`pg_locks` of other backends),
        or the run is the fleet's and has work left (`fleet/`): workers drive it, and
        whichever is alive or comes next takes it on. An advisory lock belongs to its
        database, but `pg_locks` lists the server's: a run of the same id driven in
        another database is not this one."""
        if await self._conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2"
            " AND pid <> pg_backend_pid()",
            _LOCK_SPACE,
            _lock_key(run_id) & 0xFFFFFFFF,
        ):
            return True
        return await self.fleet_work(run_id) > 0

    async def fleet_work(self, run_id: str) -> int:
        """How many of the run's tasks the fleet holds (ready or running): 0 for a
        run no worker has anything to do for."""
        if not self._fleet:
            return 0
        return int(
            await self._conn.fetchval("SELECT count(*) FROM durable.work WHERE run_id = $1", run_id)
        )

    async def has_run(self, run_id: str) -> bool:
        return bool(
            await self._conn.fetchval("SELECT 1 FROM durable.runs WHERE run_id = $1", run_id)
        )

    async def find_runs(self, prefix: str) -> list[tuple[str, str, float]]:
        rows = await self._conn.fetch(
            "SELECT run_id, workflow, created_at FROM durable.runs"
            " WHERE left(run_id, $1) = $2 ORDER BY created_at, run_id",
            len(prefix),
            prefix,
        )
        return [(row[0], row[1], row[2]) for row in rows]

    async def create_run(
        self,
        record: RunRecord,
        opening: Event,
        then: Callable[[Any, int], Awaitable[None]] | None = None,
    ) -> None:
        """The run's row and its first event, in one transaction (as in SQLite).

        `then(connection, checksum of the first event)` is awaited inside that
        transaction: the fleet hands the run to its workers in it (`fleet/submit.py`)."""
        columns, crc, kind, data, first = first_rows(record, opening)
        asyncpg = _driver()
        conn = self._writable
        try:
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO durable.runs ({_RUN_COLUMNS})"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    *columns,
                    crc,
                )
                await conn.execute(
                    "INSERT INTO durable.events (run_id, task_id, attempt, kind, at, data, crc)"
                    " VALUES ($1, NULL, NULL, $2, $3, $4, $5)",
                    record.run_id,
                    kind,
                    opening.at,
                    data,
                    first,
                )
                if then is not None:
                    await then(conn, first)
        except asyncpg.UniqueViolationError:
            raise RunExists(record.run_id) from None
        except (asyncpg.PostgresError, OSError) as exc:
            raise JournalError(_shown(self.dsn), f"cannot write: {_reason(exc)}") from None
        self._chain[record.run_id] = first
        self.commits += 1
        self.events_written += 1

    async def get_run(self, run_id: str) -> RunRecord:
        row = await self._conn.fetchrow(
            f"SELECT {_RUN_COLUMNS} FROM durable.runs WHERE run_id = $1", run_id
        )
        if row is None:
            raise RunNotFound(run_id, _shown(self.dsn))
        return run_record(self.path, row)

    async def latest_run_id(self) -> str | None:
        """The run created last (`durable watch` without an id); a tie in `created_at`
        goes to the run whose first event came later, as SQLite's rowid decides it."""
        return await self._conn.fetchval(
            "SELECT r.run_id FROM durable.runs r ORDER BY r.created_at DESC,"
            " (SELECT min(seq) FROM durable.events e WHERE e.run_id = r.run_id) DESC NULLS LAST"
            " LIMIT 1"
        )

    async def list_runs(self) -> list[RunRecord | JournalDamaged]:
        rows = await self._conn.fetch(
            f"SELECT {_RUN_COLUMNS} FROM durable.runs ORDER BY created_at, run_id"
        )
        return run_records(self.path, rows)

    # -- summaries -----------------------------------------------------------

    async def list_summaries(self) -> list[SummaryRow]:
        rows = await self._conn.fetch(
            "SELECT r.run_id, s.last_seq, s.data, s.crc,"
            " (SELECT max(seq) FROM durable.events e WHERE e.run_id = r.run_id)"
            " FROM durable.runs r LEFT JOIN durable.summaries s ON s.run_id = r.run_id"
            " ORDER BY r.created_at, r.run_id"
        )
        return [summary_row(row[0], row[1], row[2], row[3], row[4]) for row in rows]

    async def read_summary(self, run_id: str, last_seq: int) -> SummaryRow:
        row = await self._conn.fetchrow(
            "SELECT last_seq, data, crc,"
            " (SELECT max(seq) FROM durable.events WHERE run_id = $1)"
            " FROM durable.summaries WHERE run_id = $1",
            run_id,
        )
        if row is None:
            return SummaryRow(run_id, None)
        return seen_from(summary_row(run_id, row[0], row[1], row[2], row[3]), last_seq)

    def keep_summary(self, run_id: str, source: Callable[[], RunSummary]) -> None:
        self._summaries[run_id] = source

    # -- events ----------------------------------------------------------------

    async def _checked(
        self, run_id: str, after: int
    ) -> AsyncIterator[list[tuple[int, Event | None, str | None]]]:
        if after == 0:
            head = await self._conn.fetchval(
                "SELECT crc FROM durable.runs WHERE run_id = $1", run_id
            )
        else:
            head = await self._conn.fetchval("SELECT crc FROM durable.events WHERE seq = $1", after)
        check = ChainVerifier(run_id, head).check
        empty = after == 0
        while True:
            rows = await self._conn.fetch(
                "SELECT seq, run_id, kind, task_id, attempt, at, data, crc FROM durable.events"
                " WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT 20000",
                run_id,
                after,
            )
            if not rows:
                break
            chunk = [event for row in rows for event in checked_row(check, *row)]
            empty = False
            after = rows[-1][0]
            yield chunk
        if empty and head is not None:
            yield [(0, None, "it has no events: its history is missing")]

    # -- writing ---------------------------------------------------------------

    def start(self) -> None:
        if self._writer is None:
            loop = self._loop = asyncio.get_running_loop()
            self._writer = loop.create_task(self._write_loop(), name="journal-writer")
            if self._summaries or self.on_request is not None:
                self._watch = loop.create_task(self._watch_requests(), name="journal-watch")

    async def _write_loop(self) -> None:
        asyncpg = _driver()
        await self._let_released_start()
        while True:
            if self._batch is None:
                if self._behind:
                    # Summaries left behind by the rate limit are caught up once the
                    # writer has been idle for `SUMMARY_EVERY`, as on SQLite.
                    if not self._closing:
                        try:
                            await asyncio.wait_for(self._wait_for_work(), SUMMARY_EVERY)
                        except TimeoutError:
                            pass
                    if self._batch is None:
                        await self._write_summaries()
                    continue
                if self._closing:
                    return
                await self._wait_for_work()
                continue
            rows, batch, remember, listeners, events = self._take()
            summaries = self._due_summaries(rows)
            try:
                async with self._write_lock:
                    await self._write(rows, remember, summaries)
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
                self._summaries.clear()  # the state holds what did not commit
                error = JournalError(_shown(self.dsn), f"cannot write: {_reason(exc)}")
                self._settle(batch, listeners, error)
            else:
                self.events_written += events
                self._settle(batch, listeners, None)
            await self._let_released_start()

    def _due_summaries(self, rows: list[tuple[Any, ...]]) -> dict[str, bytes]:
        """The summaries due with this batch, encoded now, as it is taken: the engine
        folds each event as it appends it, so a source answers for exactly the events
        appended so far. Taken after an await (the writer's round trips), it would
        count events of the next batch too, and a crash before that one commits would
        leave a summary ahead of the journal."""
        if not self._summaries:
            return {}
        now = asyncio.get_running_loop().time()
        ends = {row[0]: position for position, row in enumerate(rows)}
        due: dict[str, bytes] = {}
        for run_id, position in ends.items():
            source = self._summaries.get(run_id)
            if source is None:
                continue
            if rows[position][3] in SESSION_ENDS or now >= self._summary_due.get(run_id, 0.0):
                due[run_id] = self._encode_summary(source())
                self._summary_due[run_id] = now + SUMMARY_EVERY
        return due

    async def _write(
        self,
        rows: list[tuple[Any, ...]],
        remember: Sequence[tuple[int, str, str]],
        summaries: dict[str, bytes],
    ) -> None:
        """One transaction for the batch: every event in one INSERT, then the
        summaries that are due (`_due_summaries`) and the cache entries, as the
        SQLite writer does."""
        conn = self._writable
        for run_id in {row[0] for row in rows}.difference(self._chain):
            self._chain[run_id] = await self._chain_head(run_id)  # as the database has it
        values, heads, ends = chain_batch(rows, self._chain)
        columns = [values[column::7] for column in range(7)]  # the INSERT takes arrays
        async with conn.transaction():
            seqs = [row[0] for row in await conn.fetch(_INSERT_EVENTS, *columns)]
            for run_id, data in summaries.items():
                last = seqs[ends[run_id]]
                await conn.execute(
                    _SAVE_SUMMARY, run_id, last, data, summary_crc(run_id, last, data)
                )
            for position, fingerprint, tool in remember:
                run_id, task_id, attempt, _, at, _ = rows[position]
                await conn.execute(
                    _REMEMBER, fingerprint, tool, run_id, task_id, attempt, seqs[position], at
                )
        self._chain.update(heads)
        for run_id, position in ends.items():
            if run_id in summaries:
                self._behind.pop(run_id, None)
            elif run_id in self._summaries:
                self._behind[run_id] = seqs[position]
        self.commits += 1

    async def _write_summaries(self) -> None:
        """Bring the summaries left behind up to their runs' last committed event.
        Called only with nothing queued: each run's state is then the fold of exactly
        its committed events. A failure loses nothing (the runs are folded instead)."""
        behind, self._behind = self._behind, {}
        # Encoded before the first await, as `_due_summaries` does: the engine may
        # append (and fold) more events while the lock or BEGIN is awaited.
        summaries = {
            run_id: (last, self._encode_summary(source()))
            for run_id, last in behind.items()
            if (source := self._summaries.get(run_id)) is not None
        }
        asyncpg = _driver()
        conn = self._writable
        try:
            async with self._write_lock, conn.transaction():
                for run_id, (last, data) in summaries.items():
                    await conn.execute(
                        _SAVE_SUMMARY, run_id, last, data, summary_crc(run_id, last, data)
                    )
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
            pass

    async def _chain_head(self, run_id: str) -> int:
        conn = self._writable
        crc = await conn.fetchval(
            "SELECT crc FROM durable.events WHERE run_id = $1 ORDER BY seq DESC LIMIT 1", run_id
        )
        if crc is None:
            crc = await conn.fetchval("SELECT crc FROM durable.runs WHERE run_id = $1", run_id)
        return crc or 0

    # -- checks ---------------------------------------------------------------

    async def page_problems(self) -> list[str]:
        """What the database's own check finds: PostgreSQL checks its pages as it reads."""
        return []

    async def orphan_events(self) -> list[tuple[str, int]]:
        rows = await self._conn.fetch(
            "SELECT run_id, count(*) FROM durable.events"
            " WHERE run_id NOT IN (SELECT run_id FROM durable.runs) GROUP BY run_id"
        )
        return [(row[0], row[1]) for row in rows]

    # -- the cache and requests ------------------------------------------------

    #: A cache lookup is a round trip to the server: the engine awaits it off the
    #: turn of the loop that launches the task (`Engine._look_up`).
    remote_cache = True

    async def cached_async(
        self, fingerprint: str, newer_than: float | None = None
    ) -> CacheHit | None:
        """The committed success that answers `fingerprint`, checked as on SQLite
        (`journal/cache.py`); one query, on a connection of its own, one at a time."""
        async with self._lookup_lock:
            if self._lookup_conn is None:
                self._lookup_conn = await self._connect()
            row = await self._lookup_conn.fetchrow(_LOOKUP, fingerprint)
        return None if row is None else judge(tuple(row), newer_than)

    async def request(self, run_id: str, kind: str) -> None:
        """Leave a request for the process driving the run (`durable cancel`)."""
        asyncpg = _driver()
        try:
            async with self._write_lock:
                await self._writable.execute(
                    "INSERT INTO durable.requests VALUES ($1, $2, extract(epoch from now()))",
                    run_id,
                    kind,
                )
        except (asyncpg.PostgresError, OSError) as exc:
            raise JournalError(self.path, f"cannot write: {_reason(exc)}") from None

    def drop_requests(self, run_id: str) -> None:
        self._dropped = run_id  # taken by the watch's first look (`_watch_requests`)

    async def _watch_requests(self) -> None:
        """Requests left for the runs this process drives (`durable cancel`), every
        half second, as the SQLite journal looks for them."""
        conn = self._writable
        if self._dropped is not None:
            async with self._write_lock:
                await conn.execute("DELETE FROM durable.requests WHERE run_id = $1", self._dropped)
        while not self._closing:
            await asyncio.sleep(0.5)
            if self.on_request is None or not self._summaries:
                continue
            try:
                async with self._write_lock:
                    rows = await conn.fetch(
                        "DELETE FROM durable.requests WHERE run_id = ANY($1::text[])"
                        " RETURNING run_id, kind",
                        list(self._summaries),
                    )
            except Exception:  # a broken connection: the next look retries
                continue
            for run_id, kind in rows:
                self.on_request(run_id, kind)

    async def close(self) -> None:
        if self._queue:
            self.start()
        if self._writer is not None:
            self._closing = True
            self._wakeup.set()
            await asyncio.shield(self._writer)
        if self._watch is not None:
            self._closing = True
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        for conn in (self._write_conn, self._conn, self._lookup_conn):
            if conn is not None:
                await conn.close()


def _shown(dsn: str) -> str:
    """The DSN without its password, for messages."""
    head, at, tail = dsn.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return dsn
    scheme, _, user = head.partition("//")
    return f"{scheme}//{user.split(':', 1)[0]}:***@{tail}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text
