"""The SQLite journal: schema, group-commit appends and reads. (The per-run lock is
`runlock.py`.)

One file holds every run. `runs` has a row per run (the spec snapshot, so a resume
needs nothing else); `events` is the append-only log that `state.py` folds. Triggers
make UPDATE and DELETE of either table fail: history is never rewritten.

Writes go through one writer coroutine that does group commit: it takes every row
queued since its last commit, writes them with multi-row INSERTs in one
transaction, commits, then wakes the waiters of that batch. Under load, many events
share one commit; alone, an event pays for one commit of its own.

Every row carries a checksum (`integrity.py`) verified whenever it is read, so a
damaged journal is reported, never read as a different history. A file that is not
SQLite, a SQLite file of another program, or a journal of a newer schema is refused
before anything is written to it (`journalfile.py`).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from durable.errors import JournalDamaged, JournalError, RunExists, RunNotFound
from durable.events import Event, encode_data, from_row, kind_of
from durable.integrity import ChainVerifier, event_crc, run_crc
from durable.journalfile import SCHEMA_VERSION, FileAccess, check_file, describe, readable

DEFAULT_PATH = ".durable/journal.db"

DURABILITY = {
    # In WAL mode a NORMAL commit survives the process dying (the OS has the pages)
    # but the last commits may roll back on power loss; FULL fsyncs every commit.
    "normal": "NORMAL",
    "full": "FULL",
    # No syncs at all: for tests and benchmarks only.
    "off": "OFF",
}

_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    workflow   TEXT NOT NULL,
    spec       BLOB NOT NULL,   -- JSON snapshot of the workflow as it was run
    spec_hash  TEXT NOT NULL,
    params     BLOB NOT NULL,   -- JSON of the effective params
    base_dir   TEXT NOT NULL,   -- where `imports:` are found on resume
    created_at REAL NOT NULL,
    cwd        TEXT,            -- where the run's tasks run, whoever resumes it
    crc        INTEGER          -- integrity.run_crc of the row
);
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY,
    run_id  TEXT NOT NULL,
    task_id TEXT,
    attempt INTEGER,
    kind    TEXT NOT NULL,
    at      REAL NOT NULL,
    data    BLOB,
    crc     INTEGER  -- integrity.event_crc, chained per run
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, seq);
CREATE TRIGGER IF NOT EXISTS runs_append_only_update BEFORE UPDATE ON runs
    BEGIN SELECT RAISE(ABORT, 'the durable journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS runs_append_only_delete BEFORE DELETE ON runs
    BEGIN SELECT RAISE(ABORT, 'the durable journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_append_only_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the durable journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_append_only_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the durable journal is append-only'); END;
-- INSERT OR REPLACE deletes the old row without firing DELETE triggers (unless
-- recursive_triggers is on), so an insert over an existing key is refused here.
CREATE TRIGGER IF NOT EXISTS runs_append_only_replace BEFORE INSERT ON runs
    WHEN EXISTS (SELECT 1 FROM runs WHERE run_id = NEW.run_id)
    BEGIN SELECT RAISE(ABORT, 'the durable journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_append_only_replace BEFORE INSERT ON events
    WHEN NEW.seq IS NOT NULL AND EXISTS (SELECT 1 FROM events WHERE seq = NEW.seq)
    BEGIN SELECT RAISE(ABORT, 'the durable journal is append-only'); END;
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

# Version 1 had no checksums and no working directory. Its rows keep NULL there
# and are read unchecked; everything written since carries checksums.
_MIGRATE_FROM_1 = (
    "ALTER TABLE runs ADD COLUMN cwd TEXT",
    "ALTER TABLE runs ADD COLUMN crc INTEGER",
    "ALTER TABLE events ADD COLUMN crc INTEGER",
    "PRAGMA user_version = 2",
)

_INSERT_EVENTS = "INSERT INTO events (run_id, task_id, attempt, kind, at, data, crc) VALUES "
# Multi-row INSERTs bind a batch in one call: about a third cheaper per row than
# `executemany`, which binds row by row from Python. Chunk sizes are fixed so that
# only these few statements are ever prepared (the sqlite3 module caches them).
_CHUNKS = (256, 32, 4, 1)
_INSERT_CHUNK = {
    size: _INSERT_EVENTS + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * size) for size in _CHUNKS
}


# Events between two checkpoints: about 1-2 MB of WAL for small outputs.
CHECKPOINT_EVERY = 2000


def _checkpoint(path: Path) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA busy_timeout=5000")
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        connection.close()


def _configure(connection: sqlite3.Connection, durability: str) -> None:
    """Pragmas, once per connection, and the schema if the file is new."""
    # WAL: readers (status, log --follow) never block the writer, and appends are
    # sequential writes to the log rather than page rewrites.
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={DURABILITY[durability]}")
    # Another process holding the write lock (a second run on the same journal)
    # makes us wait up to 5 s instead of failing at once.
    connection.execute("PRAGMA busy_timeout=5000")
    # Checkpoints run on a thread of their own (`Journal._start_checkpoint`).
    connection.execute("PRAGMA wal_autocheckpoint=0")
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        # Idempotent (IF NOT EXISTS) and in one IMMEDIATE transaction, so two
        # processes creating the same journal at once both end up with one schema.
        connection.executescript(_SCHEMA)
    elif version == 1:
        connection.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated it while we waited for the lock.
            if connection.execute("PRAGMA user_version").fetchone()[0] == 1:
                for statement in _MIGRATE_FROM_1:
                    connection.execute(statement)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise


_ENCODE: Any = object()


class RunRecord(msgspec.Struct, frozen=True):
    run_id: str
    workflow: str
    spec: bytes
    spec_hash: str
    params: dict[str, Any]
    base_dir: str
    created_at: float
    #: Where the run's tasks run; None for a run written before it was recorded.
    cwd: str | None = None
    #: The row's checksum as stored (None: written before checksums existed).
    crc: int | None = None


def default_path() -> str:
    return os.environ.get("DURABLE_DB") or DEFAULT_PATH


_RUN_COLUMNS = "run_id, workflow, spec, spec_hash, params, base_dir, created_at"
#: How often a running journal checks that its file is still the one it opened.
WATCH_EVERY = 0.5


class Journal:
    """An open journal. Use `await Journal.open(path)`, and `await journal.close()`.

    Reads go through aiosqlite, so that a long replay never blocks the event loop.
    Appends go through the writer coroutine, which commits on the loop thread with
    a stdlib connection of its own. That is a choice made by measurement
    (`bench/README.md`): a commit costs ~50 µs (WAL, synchronous=NORMAL) to ~0.5 ms
    (FULL, an fsync), while a hop to aiosqlite's thread and back costs ~100 µs and
    buys no overlap, because every task whose outcome is in the batch holds its
    concurrency slot until the commit lands. A chain of tasks (one commit per task,
    by the durability barrier) ran 1.7x faster this way, and a wide DAG 1.2x.
    Checkpoints, which can take tens of milliseconds, run on a thread of their own.

    A journal opened `readonly` has no writer and writes nothing, not even the
    schema: reading commands work on a journal in a folder they cannot write.
    """

    def __init__(
        self,
        path: Path,
        reader: aiosqlite.Connection,
        writer: sqlite3.Connection | None,
        version: int,
        access: FileAccess | None = None,
    ) -> None:
        self.path = path
        self._conn = reader
        self._write_conn = writer
        self._access = access
        self._columns = _RUN_COLUMNS + (", cwd, crc" if version >= 2 else ", NULL, NULL")
        self._event_crc = "crc" if version >= 2 else "NULL"
        self._queue: list[tuple[Any, ...]] = []
        self._batch: asyncio.Future[None] | None = None
        self._wakeup = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint: asyncio.Future[None] | None = None
        self._uncheckpointed = 0
        # run id -> checksum of its last committed row: where its chain goes on.
        self._chain: dict[str, int] = {}
        self._identity: tuple[int, int] | None = None
        self._watch: asyncio.TimerHandle | None = None
        #: Called once if the journal file is deleted or replaced under a run.
        self.on_lost: Callable[[JournalError], None] | None = None
        self.lost: JournalError | None = None
        self.commits = 0
        self.events_written = 0

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        durability: str = "normal",
        readonly: bool = False,
    ) -> Journal:
        resolved = Path(path or default_path())
        check_file(resolved, create and not readonly)
        writer = None
        access = None
        try:
            if readonly:
                access = readable(resolved)
                reader = await aiosqlite.connect(access.uri, uri=True, isolation_level=None)
            else:
                if create:
                    resolved.parent.mkdir(parents=True, exist_ok=True)
                writer = sqlite3.connect(resolved, isolation_level=None, check_same_thread=False)
                _configure(writer, durability)
                reader = await aiosqlite.connect(resolved, isolation_level=None)
            await reader.execute("PRAGMA busy_timeout=5000")
            version = (await (await reader.execute("PRAGMA user_version")).fetchone())[0]  # type: ignore[index]
        except sqlite3.Error as exc:
            if writer is not None:
                writer.close()
            if access is not None:
                access.cleanup()
            raise JournalError(str(resolved), f"cannot open: {describe(exc, resolved)}") from None
        except OSError as exc:
            raise JournalError(str(resolved), f"cannot open: {exc.strerror or exc}") from None
        journal = cls(resolved, reader, writer, version, access)
        if writer is not None:
            stat = os.stat(resolved)
            journal._identity = (stat.st_dev, stat.st_ino)
        return journal

    # -- writing -------------------------------------------------------------

    @property
    def _writable(self) -> sqlite3.Connection:
        if self._write_conn is None:
            raise JournalError(str(self.path), "opened read-only")
        return self._write_conn

    def start(self) -> None:
        """Start the writer coroutine. Appends before this are queued, not lost."""
        if self._writer is None:
            loop = asyncio.get_running_loop()
            self._writer = loop.create_task(self._write_loop(), name="journal-writer")
            if self._identity is not None:
                self._watch = loop.call_later(WATCH_EVERY, self._check_identity)

    async def create_run(self, record: RunRecord, opening: Event) -> None:
        """Create a run and commit its first event in one transaction.

        Apart, a crash between the two would leave a run with no history: one that
        no resume could open and whose id would be taken for good.
        """
        conn = self._writable
        params = msgspec.json.encode(record.params)
        crc = run_crc(
            record.run_id,
            record.workflow,
            record.spec,
            record.spec_hash,
            params,
            record.base_dir,
            record.created_at,
            record.cwd or "",
        )
        kind, data = kind_of(opening), encode_data(opening)
        first = event_crc(crc, record.run_id, None, None, kind, opening.at, data)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    f"INSERT INTO runs ({_RUN_COLUMNS}, cwd, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.run_id,
                        record.workflow,
                        record.spec,
                        record.spec_hash,
                        params,
                        record.base_dir,
                        record.created_at,
                        record.cwd,
                        crc,
                    ),
                )
                conn.execute(
                    _INSERT_CHUNK[1], (record.run_id, None, None, kind, opening.at, data, first)
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError:
            raise RunExists(record.run_id) from None
        except sqlite3.Error as exc:
            raise JournalError(
                str(self.path), f"cannot write: {describe(exc, self.path)}"
            ) from None
        self._chain[record.run_id] = first
        self.commits += 1
        self.events_written += 1

    def append(self, run_id: str, event: Event, data: Any = _ENCODE) -> asyncio.Future[None]:
        """Queue an event; the returned future resolves once it is committed.

        `data` may be passed pre-encoded (the engine encodes an output once, to
        check that it is serialisable). Appending never waits: only a caller that
        needs the durability barrier awaits the future.
        """
        if data is _ENCODE:
            data = encode_data(event)
        self._queue.append(
            (
                run_id,
                getattr(event, "task_id", None),
                getattr(event, "attempt", None),
                kind_of(event),
                event.at,
                data,
            )
        )
        if self._batch is None:
            loop = asyncio.get_running_loop()
            self._batch = loop.create_future()
            # Wake the writer on the next turn of the loop, not this one: the tasks
            # started in this turn take their first step in the next, and a tool
            # that finishes in it gets its events into the same commit.
            loop.call_soon(self._wakeup.set)
        return self._batch

    async def flush(self) -> None:
        """Wait until everything appended so far is committed (raising if a write failed).

        Only the queued batch can be pending: the writer commits a batch without
        yielding to the loop, so no batch is ever half-written when this runs.
        """
        if self._batch is not None:
            await asyncio.shield(self._batch)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._batch is None:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            rows, batch = self._queue, self._batch
            self._queue, self._batch = [], None
            try:
                self._write(rows)
            except sqlite3.Error as exc:
                error = JournalError(str(self.path), f"cannot write: {describe(exc, self.path)}")
                batch.set_exception(error)
                batch.exception()  # marked retrieved: the engine learns of it in its callback
            else:
                batch.set_result(None)
                self._uncheckpointed += len(rows)
                if self._uncheckpointed >= CHECKPOINT_EVERY and self._checkpoint is None:
                    self._start_checkpoint(loop)

    def _start_checkpoint(self, loop: asyncio.AbstractEventLoop) -> None:
        """Copy the WAL back into the database on a thread of its own.

        SQLite's automatic checkpoint would run inside whichever commit crosses the
        threshold, stalling the event loop for milliseconds (tens, seen here). A
        PASSIVE checkpoint from another connection runs beside the writer instead.
        """
        self._uncheckpointed = 0
        if self._checkpointer is None:
            self._checkpointer = ThreadPoolExecutor(1, "durable-checkpoint")
        self._checkpoint = loop.run_in_executor(self._checkpointer, _checkpoint, self.path)
        self._checkpoint.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, future: asyncio.Future[None]) -> None:
        self._checkpoint = None
        future.exception()  # a failed checkpoint loses nothing; the next one retries

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        """One transaction for the whole batch: the group commit.

        Each row's checksum chains from its run's previous row; the chains advance
        only once the transaction has committed, so a failed batch leaves them
        where the file is.
        """
        conn = self._writable
        chain = self._chain
        heads: dict[str, int] = {}
        values: list[Any] = []
        for run_id, task_id, attempt, kind, at, data in rows:
            previous = heads.get(run_id)
            if previous is None:
                previous = chain.get(run_id)
                if previous is None:
                    previous = self._chain_head(run_id)
            crc = event_crc(previous, run_id, task_id, attempt, kind, at, data)
            heads[run_id] = crc
            values += (run_id, task_id, attempt, kind, at, data, crc)
        conn.execute("BEGIN IMMEDIATE")
        try:
            start, total = 0, len(rows)
            for size in _CHUNKS:
                statement = _INSERT_CHUNK[size]
                while total - start >= size:
                    conn.execute(statement, values[start * 7 : (start + size) * 7])
                    start += size
            conn.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back after some errors (a full disk): a
            # second ROLLBACK would hide the real cause behind its own error.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        chain.update(heads)
        self.commits += 1
        self.events_written += len(rows)

    def _chain_head(self, run_id: str) -> int:
        """The checksum a run's next event chains from, as the file has it."""
        conn = self._writable
        row = conn.execute(
            "SELECT crc FROM events WHERE run_id = ? ORDER BY seq DESC LIMIT 1", (run_id,)
        ).fetchone()
        if row is None:
            row = conn.execute("SELECT crc FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return (row[0] if row is not None else None) or 0

    def _check_identity(self) -> None:
        """Stop the run if its journal file was deleted or replaced under it.

        SQLite would go on writing to the unlinked file, and the run would end
        "succeeded" with every result gone with it.
        """
        self._watch = None
        try:
            stat = os.stat(self.path)
            same = (stat.st_dev, stat.st_ino) == self._identity
        except OSError:
            same = False
        if same:
            self._watch = asyncio.get_running_loop().call_later(WATCH_EVERY, self._check_identity)
            return
        self.lost = JournalError(
            str(self.path),
            "the journal file was deleted or replaced while this run was writing to it; "
            "the run is stopped, since nothing it did from here on could be kept",
        )
        if self.on_lost is not None:
            self.on_lost(self.lost)

    async def close(self) -> None:
        """Commit what is queued, stop the writer and close the connections."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._queue:
            self.start()
        if self._writer is not None:
            self._closing = True
            self._wakeup.set()
            await asyncio.shield(self._writer)
        if self._checkpoint is not None:
            await asyncio.wait([self._checkpoint])
        if self._checkpointer is not None:
            self._checkpointer.shutdown()
        if self._write_conn is not None:
            self._write_conn.close()
        await self._conn.close()
        if self._access is not None:
            self._access.cleanup()

    # -- reading -------------------------------------------------------------

    async def query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[Any]:
        """Run one read; SQLite's errors become a `JournalError` that says what happened."""
        try:
            cursor = await self._conn.execute(sql, parameters)
            return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise JournalError(str(self.path), f"cannot read: {describe(exc, self.path)}") from None

    async def get_run(self, run_id: str) -> RunRecord:
        """The run's record; raises `JournalDamaged` if its row fails its checksum."""
        rows = await self.query(f"SELECT {self._columns} FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise RunNotFound(run_id, str(self.path))
        return self._record(rows[0])

    async def list_runs(self) -> list[RunRecord | JournalDamaged]:
        """Every run, oldest first; a run whose row is damaged comes as its error."""
        rows = await self.query(f"SELECT {self._columns} FROM runs ORDER BY created_at, rowid")
        found: list[RunRecord | JournalDamaged] = []
        for row in rows:
            try:
                found.append(self._record(row))
            except JournalDamaged as exc:
                found.append(exc)
        return found

    def _record(self, row: tuple[Any, ...]) -> RunRecord:
        run_id, workflow, spec, spec_hash, params, base_dir, created_at, cwd, crc = row
        run_id = str(run_id)
        try:
            if crc is not None and crc != run_crc(
                run_id, workflow, spec, spec_hash, params, base_dir, created_at, cwd or ""
            ):
                raise ValueError("its row does not match its checksum")
            return RunRecord(
                run_id,
                workflow,
                spec,
                spec_hash,
                msgspec.json.decode(params),
                base_dir,
                created_at,
                cwd,
                crc,
            )
        except (ValueError, TypeError, AttributeError, msgspec.DecodeError) as exc:
            raise JournalDamaged(str(self.path), run_id, str(exc)) from None

    async def read_events(
        self, run_id: str, after: int = 0
    ) -> AsyncIterator[list[tuple[int, Event]]]:
        """Yield a run's events as chunks of `(seq, event)`, oldest first, each checked
        against its checksum; a damaged one raises `JournalDamaged`.

        Chunks, not single events: an async generator step per event cost more than
        reading the row (1.7 s against 0.8 s for 200k events).
        """
        async for chunk in self._checked(run_id, after):
            events = []
            for seq, event, problem in chunk:
                if problem is not None:
                    raise JournalDamaged(str(self.path), run_id, problem)
                events.append((seq, event))
            yield events

    async def damage(self, run_id: str) -> tuple[int, list[str]]:
        """Every problem with a run's events (not just the first), and how many it has."""
        count, problems = 0, []
        async for chunk in self._checked(run_id, 0):
            count += len(chunk)
            problems += [problem for _, _, problem in chunk if problem is not None]
        return count, problems

    async def _checked(
        self, run_id: str, after: int
    ) -> AsyncIterator[list[tuple[int, Event | None, str | None]]]:
        """A run's rows as `(seq, event, problem)`: the event, or what is wrong with it."""
        check = ChainVerifier(run_id, await self._chain_start(run_id, after)).check
        try:
            cursor = await self._conn.execute(
                "SELECT seq, run_id, kind, task_id, attempt, at, data, "
                f"{self._event_crc} FROM events WHERE run_id = ? AND seq > ? ORDER BY seq",
                (run_id, after),
            )
            while rows := await cursor.fetchmany(20_000):
                chunk: list[tuple[int, Event | None, str | None]] = []
                for seq, row_run, kind, task_id, attempt, at, data, crc in rows:
                    problem = check(seq, row_run, task_id, attempt, kind, at, data, crc)
                    if problem is not None:
                        chunk.append((seq, None, problem))
                        continue
                    try:
                        chunk.append((seq, from_row(kind, task_id, attempt, at, data), None))
                    except (KeyError, TypeError, ValueError, msgspec.DecodeError) as exc:
                        chunk.append((seq, None, f"event {seq} ({kind}) cannot be read: {exc}"))
                yield chunk
        except sqlite3.Error as exc:
            raise JournalError(str(self.path), f"cannot read: {describe(exc, self.path)}") from None

    async def _chain_start(self, run_id: str, after: int) -> int | None:
        """What the run's events after `after` chain from (None: a run without checksums)."""
        if after == 0:
            sql, key = f"SELECT {self._event_crc} FROM runs WHERE run_id = ?", run_id
        else:
            sql, key = f"SELECT {self._event_crc} FROM events WHERE seq = ?", after
        rows = await self.query(sql, (key,))
        return rows[0][0] if rows else None

    async def events(self, run_id: str, after: int = 0) -> list[tuple[int, Event]]:
        found: list[tuple[int, Event]] = []
        async for chunk in self.read_events(run_id, after):
            found.extend(chunk)
        return found

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows, SQLite's errors untouched. For tests."""
        cursor = await self._conn.execute(sql, tuple(parameters))
        return list(await cursor.fetchall())
