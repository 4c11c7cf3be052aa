"""The SQLite journal: schema, group-commit appends and reads. (The per-run lock is
`runlock.py`.)

One file holds every run. `runs` has a row per run (the spec snapshot, so a resume
needs nothing else); `events` is the append-only log that `state.py` folds. Triggers
make UPDATE and DELETE of either table fail: history is never rewritten.

Writes go through one writer coroutine that does group commit: it takes every row
queued since its last commit, writes them with multi-row INSERTs in one
transaction, commits, then wakes the waiters of that batch. Under load, many events
share one commit; alone, an event pays for one commit of its own.

A file that is not SQLite, a SQLite file of another program, or a journal of a newer
schema is refused before anything is written to it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from durable.errors import JournalError, RunExists, RunNotFound
from durable.events import Event, encode_data, from_row, kind_of

SCHEMA_VERSION = 1
DEFAULT_PATH = ".durable/journal.db"
SQLITE_MAGIC = b"SQLite format 3\x00"

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
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY,
    run_id  TEXT NOT NULL,
    task_id TEXT,
    attempt INTEGER,
    kind    TEXT NOT NULL,
    at      REAL NOT NULL,
    data    BLOB
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

_INSERT_EVENTS = "INSERT INTO events (run_id, task_id, attempt, kind, at, data) VALUES "
# Multi-row INSERTs bind a batch in one call: about a third cheaper per row than
# `executemany`, which binds row by row from Python. Chunk sizes are fixed so that
# only these few statements are ever prepared (the sqlite3 module caches them).
_CHUNKS = (256, 32, 4, 1)
_INSERT_CHUNK = {
    size: _INSERT_EVENTS + ", ".join(["(?, ?, ?, ?, ?, ?)"] * size) for size in _CHUNKS
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
    if connection.execute("PRAGMA user_version").fetchone()[0] == 0:
        # Idempotent (IF NOT EXISTS) and in one IMMEDIATE transaction, so two
        # processes creating the same journal at once both end up with one schema.
        connection.executescript(_SCHEMA)


_ENCODE: Any = object()


class RunRecord(msgspec.Struct, frozen=True):
    run_id: str
    workflow: str
    spec: bytes
    spec_hash: str
    params: dict[str, Any]
    base_dir: str
    created_at: float


def default_path() -> str:
    return os.environ.get("DURABLE_DB") or DEFAULT_PATH


def check_file(path: Path, create: bool) -> None:
    """Refuse what is not a durable journal, without writing a byte to it.

    Uses the stdlib driver: this runs once, before the async connection exists.
    """
    if not path.exists() or path.stat().st_size == 0:
        if not create:
            raise JournalError(str(path), "no journal here (run a workflow first, or pass --db)")
        return
    if path.is_dir():
        raise JournalError(str(path), "is a directory, not a journal file")
    with path.open("rb") as handle:
        if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise JournalError(str(path), "not a SQLite database (refusing to touch it)")
    try:
        # immutable: no locks, no -wal/-shm files created beside a file we may refuse.
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                row[0]
                for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise JournalError(str(path), f"cannot read the journal: {exc}") from None
    if version > SCHEMA_VERSION:
        raise JournalError(
            str(path),
            f"journal schema version {version} is newer than this durable understands "
            f"({SCHEMA_VERSION}); upgrade durable",
        )
    if version == 0 and tables:
        raise JournalError(str(path), "a SQLite database of another program, not a durable journal")


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
    """

    def __init__(
        self, path: Path, reader: aiosqlite.Connection, writer: sqlite3.Connection
    ) -> None:
        self.path = path
        self._conn = reader
        self._write_conn = writer
        self._queue: list[tuple[Any, ...]] = []
        self._batch: asyncio.Future[None] | None = None
        self._wakeup = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint: asyncio.Future[None] | None = None
        self._uncheckpointed = 0
        self.commits = 0
        self.events_written = 0

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        durability: str = "normal",
    ) -> Journal:
        resolved = Path(path or default_path())
        check_file(resolved, create)
        if create:
            resolved.parent.mkdir(parents=True, exist_ok=True)
        try:
            writer = sqlite3.connect(resolved, isolation_level=None, check_same_thread=False)
            _configure(writer, durability)
            reader = await aiosqlite.connect(resolved, isolation_level=None)
        except sqlite3.Error as exc:
            raise JournalError(str(resolved), f"cannot open: {exc}") from None
        await reader.execute("PRAGMA busy_timeout=5000")
        return cls(resolved, reader, writer)

    # -- writing -------------------------------------------------------------

    def start(self) -> None:
        """Start the writer coroutine. Appends before this are queued, not lost."""
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._write_loop(), name="journal-writer"
            )

    async def create_run(self, record: RunRecord) -> None:
        try:
            self._write_conn.execute(
                "INSERT INTO runs (run_id, workflow, spec, spec_hash, params, base_dir, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.run_id,
                    record.workflow,
                    record.spec,
                    record.spec_hash,
                    msgspec.json.encode(record.params),
                    record.base_dir,
                    record.created_at,
                ),
            )
        except sqlite3.IntegrityError:
            raise RunExists(record.run_id) from None
        except sqlite3.Error as exc:
            raise JournalError(str(self.path), f"cannot write: {exc}") from None

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
                batch.set_exception(JournalError(str(self.path), f"cannot write: {exc}"))
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
        """One transaction for the whole batch: the group commit."""
        conn = self._write_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            start, total = 0, len(rows)
            for size in _CHUNKS:
                statement = _INSERT_CHUNK[size]
                while total - start >= size:
                    conn.execute(
                        statement, [value for row in rows[start : start + size] for value in row]
                    )
                    start += size
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.commits += 1
        self.events_written += len(rows)

    async def close(self) -> None:
        """Commit what is queued, stop the writer and close the connections."""
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
        self._write_conn.close()
        await self._conn.close()

    # -- reading -------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord:
        cursor = await self._conn.execute(
            "SELECT run_id, workflow, spec, spec_hash, params, base_dir, created_at FROM runs WHERE run_id = ?",
            (run_id,),
        )
        row = await cursor.fetchone()
        if row is None:
            raise RunNotFound(run_id, str(self.path))
        return _record(row)

    async def list_runs(self) -> list[RunRecord]:
        cursor = await self._conn.execute(
            "SELECT run_id, workflow, spec, spec_hash, params, base_dir, created_at FROM runs ORDER BY created_at, rowid"
        )
        return [_record(row) for row in await cursor.fetchall()]

    async def read_events(
        self, run_id: str, after: int = 0
    ) -> AsyncIterator[list[tuple[int, Event]]]:
        """Yield a run's events as chunks of `(seq, event)`, oldest first.

        Chunks, not single events: an async generator step per event cost more than
        reading the row (1.7 s against 0.8 s for 200k events).
        """
        cursor = await self._conn.execute(
            "SELECT seq, kind, task_id, attempt, at, data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq",
            (run_id, after),
        )
        while rows := await cursor.fetchmany(20_000):
            yield [
                (seq, from_row(kind, task_id, attempt, at, data))
                for seq, kind, task_id, attempt, at, data in rows
            ]

    async def events(self, run_id: str, after: int = 0) -> list[tuple[int, Event]]:
        found: list[tuple[int, Event]] = []
        async for chunk in self.read_events(run_id, after):
            found.extend(chunk)
        return found

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows. For tests and diagnostics."""
        cursor = await self._conn.execute(sql, tuple(parameters))
        return list(await cursor.fetchall())


def _record(row: tuple[Any, ...]) -> RunRecord:
    run_id, workflow, spec, spec_hash, params, base_dir, created_at = row
    return RunRecord(
        run_id, workflow, spec, spec_hash, msgspec.json.decode(params), base_dir, created_at
    )
