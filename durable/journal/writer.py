"""Opening a journal, and writing to it: group commit, checkpoints, and a watch on the file.

Writes go through one writer coroutine that does group commit: it takes every row
queued since its last commit, writes them with multi-row INSERTs in one
transaction, commits, then wakes the waiters of that batch. Under load, many events
share one commit; alone, an event pays for one commit of its own.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from durable.errors import JournalError, RunExists
from durable.events import Event
from durable.integrity import summary_crc
from durable.journal import cache
from durable.journal.cache import CacheHit
from durable.journal.common import EventQueue, chain_batch, first_rows
from durable.journal.file import (
    READ_ERRORS,
    FileAccess,
    check_file,
    describe,
    is_postgres,
    readable,
)
from durable.journal.reader import RUN_COLUMNS, JournalReader, RunRecord
from durable.journal.schema import (
    CHECKPOINT_EVERY,
    CHUNKS,
    INSERT_CHUNK,
    REMEMBER,
    SAVE_SUMMARY,
    SESSION_ENDS,
    SUMMARY_EVERY,
    WAL_LIMIT,
    checkpoint,
    configure,
    immediate,
    roll_back,
)
from durable.summary import RunSummary

DEFAULT_PATH = ".durable/journal.db"


def default_path() -> str:
    return os.environ.get("DURABLE_DB") or DEFAULT_PATH


def _insert(conn: sqlite3.Connection, values: list[Any], total: int) -> int:
    """Insert a batch's `total` rows (`values`, seven a row) by the fixed chunk
    statements, largest first; return the first row's seq. A batch of one of
    `CHUNKS`' sizes is one statement."""
    statement = INSERT_CHUNK.get(total)
    if statement is not None:  # one statement: a chain's every batch
        return conn.execute(statement, values).lastrowid - total + 1  # type: ignore[operator]
    start = 0
    for size in CHUNKS:
        statement = INSERT_CHUNK[size]
        while total - start >= size:
            cursor = conn.execute(statement, values[start * 7 : (start + size) * 7])
            start += size
    # Under the write lock rows get consecutive seqs, the last one this.
    return cursor.lastrowid - total + 1  # type: ignore[operator]


#: How often a running journal checks that its file is still the one it opened.
WATCH_EVERY = 0.5


class Journal(JournalReader, EventQueue):
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
        super().__init__(path, reader, version)
        self._write_conn = writer
        self._access = access
        self._init_queue()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint: asyncio.Future[int] | None = None
        self._uncheckpointed = 0
        # A checkpoint's first pass ran beside the writer: its second runs before the
        # writer's next write (`_finish_checkpoint`), once the WAL is `_wal_limit`
        # long; `_wal_found` is how long the last first pass found it.
        self._second_pass = False
        self._wal_limit = WAL_LIMIT
        self._wal_found = 0
        # run id -> checksum of its last committed row: where its chain goes on.
        self._chain: dict[str, int] = {}
        # run id -> what its summary is now (`keep_summary`).
        self._summaries: dict[str, Callable[[], RunSummary]] = {}
        self._encode_summary = msgspec.msgpack.Encoder().encode
        # run id -> its last committed event; the runs whose summary is behind it;
        # and when (loop time) each run's summary may next be written.
        self._last_seq: dict[str, int] = {}
        self._behind: set[str] = set()
        self._summary_due: dict[str, float] = {}
        self._catch_up: asyncio.TimerHandle | None = None
        self._identity: tuple[int, int] | None = None
        self._watch: asyncio.TimerHandle | None = None

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        durability: str = "normal",
        readonly: bool = False,
    ) -> Journal:
        target = path or default_path()
        if is_postgres(target):  # the same contract on PostgreSQL (`postgres.py`)
            from durable.journal.postgres import PgJournal  # only where it is used

            return await PgJournal.open(  # type: ignore[return-value]
                str(target), create=create, durability=durability, readonly=readonly
            )
        resolved = Path(target)
        check_file(resolved, create and not readonly)
        writer = None
        reader: aiosqlite.Connection | None = None
        access = None
        try:
            if readonly:
                access = readable(resolved)
                reader = await aiosqlite.connect(access.uri, uri=True, isolation_level=None)
            else:
                if create:
                    resolved.parent.mkdir(parents=True, exist_ok=True)
                writer = sqlite3.connect(resolved, isolation_level=None, check_same_thread=False)
                configure(writer, durability)
                reader = await aiosqlite.connect(resolved, isolation_level=None)
            await reader.execute("PRAGMA busy_timeout=5000")
            version = (await (await reader.execute("PRAGMA user_version")).fetchone())[0]  # type: ignore[index]
        except READ_ERRORS as exc:
            if writer is not None:
                writer.close()
            if reader is not None:
                # Its worker thread is not a daemon: left open, it keeps the process alive.
                await reader.close()
            if access is not None:
                access.cleanup()
            raise JournalError(str(resolved), f"cannot open: {describe(exc, resolved)}") from None
        except OSError as exc:
            # A file where a folder should be: `mkdir` says "File exists", which it is not.
            blocking = next((p for p in resolved.parents if p.exists() and not p.is_dir()), None)
            why = f"{blocking} is not a folder" if blocking else exc.strerror or exc
            raise JournalError(str(resolved), f"cannot open: {why}") from None
        journal = cls(resolved, reader, writer, version, access)
        if writer is not None:
            stat = os.stat(resolved)
            journal._identity = (stat.st_dev, stat.st_ino)
        return journal

    # -- writing -------------------------------------------------------------

    def start(self) -> None:
        """Start the writer coroutine. Appends before this are queued, not lost."""
        if self._writer is None:
            loop = self._loop = asyncio.get_running_loop()
            self._writer = loop.create_task(self._write_loop(), name="journal-writer")
            if self._identity is not None:
                self._watch = loop.call_later(WATCH_EVERY, self._check_identity)

    async def create_run(self, record: RunRecord, opening: Event) -> None:
        """Create a run and commit its first event in one transaction.

        Apart, a crash between the two would leave a run with no history: one that
        no resume could open and whose id would be taken for good.
        """
        conn = self._writable
        columns, crc, kind, data, first = first_rows(record, opening)
        try:
            with immediate(conn):
                conn.execute(
                    f"INSERT INTO runs ({RUN_COLUMNS}, cwd, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*columns, crc),
                )
                conn.execute(
                    INSERT_CHUNK[1], (record.run_id, None, None, kind, opening.at, data, first)
                )
        except sqlite3.IntegrityError:
            raise RunExists(record.run_id) from None
        except sqlite3.Error as exc:
            raise JournalError(
                str(self.path), f"cannot write: {describe(exc, self.path)}"
            ) from None
        self._chain[record.run_id] = first
        self.commits += 1
        self.events_written += 1

    #: The cache is read on the loop's thread, in microseconds (`postgres.py`'s is not).
    remote_cache = False

    def cached(self, fingerprint: str, newer_than: float | None = None) -> CacheHit | None:
        """The committed success that answers `fingerprint`, if the cache has one."""
        return cache.lookup(self._writable, fingerprint, newer_than)

    def keep_summary(self, run_id: str, source: Callable[[], RunSummary]) -> None:
        """Rewrite the run's summary with every commit of its events, from `source`.

        `source` must answer for exactly the events appended so far: the engine's
        `RunState`, which applies each event as it appends it, does (`summary.py`).
        """
        self._summaries[run_id] = source

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        await self._let_released_start()
        while True:
            if self._batch is None:
                if self._behind and (self._closing or self._catch_up is None):
                    self._write_summaries()
                if self._closing:
                    return
                await self._wait_for_work()
                continue
            if self._second_pass:
                await self._finish_checkpoint(loop)
            rows, batch, remember, listeners, events = self._take()
            try:
                self._write(rows, remember)
            except sqlite3.Error as exc:
                # The engine's state now holds events that never committed: no
                # summary may be taken from it again (the runs are folded instead).
                self._summaries.clear()
                self._behind.clear()
                error = JournalError(str(self.path), f"cannot write: {describe(exc, self.path)}")
                self._settle(batch, listeners, error)
            else:
                self.events_written += events
                self._uncheckpointed += len(rows)
                if self._uncheckpointed >= CHECKPOINT_EVERY and self._checkpoint is None:
                    self._start_checkpoint(loop)
                self._settle(batch, listeners, None)
            await self._let_released_start()

    def _start_checkpoint(self, loop: asyncio.AbstractEventLoop) -> None:
        """Copy the WAL back into the database on a thread of its own.

        SQLite's automatic checkpoint would run inside whichever commit crosses the
        threshold, stalling the event loop for milliseconds (tens, seen here). A
        PASSIVE checkpoint from another connection runs beside the writer instead.
        """
        self._uncheckpointed = 0
        if self._checkpointer is None:
            self._checkpointer = ThreadPoolExecutor(1, "durable-checkpoint")
        self._checkpoint = loop.run_in_executor(self._checkpointer, checkpoint, self.path)
        self._checkpoint.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, future: asyncio.Future[int]) -> None:
        self._checkpoint = None
        if future.exception() is not None:
            return  # a failed checkpoint loses nothing; the next one retries
        found = future.result()
        if found < self._wal_found:
            self._wal_limit = WAL_LIMIT  # it started over since the last checkpoint
        self._wal_found = found
        if found >= self._wal_limit:
            self._second_pass = True
            # Should the WAL not start over (another process writes to the journal
            # too, or a reader keeps an old snapshot), wait for it to double before
            # making the writer wait again.
            self._wal_limit = 2 * found

    async def _finish_checkpoint(self, loop: asyncio.AbstractEventLoop) -> None:
        """The checkpoint's second pass, while the writer waits: it copies what the
        writer wrote during the first, so that the WAL is copied whole and the
        writer's next write starts it over.

        A PASSIVE checkpoint copies the WAL as it was when it began; the writer
        appends meanwhile. Without a pass it does not write beside, the WAL is never
        copied whole while a run is busy, and SQLite starts a WAL over only once it
        is: it grew by every commit of the run (195 MB for a chain of 20,000 tasks).
        Taken once the WAL is `WAL_LIMIT` long, not at every checkpoint: the writer's
        wait, about 1.6 ms at a WAL of a few MB, made a wide DAG 10 % slower at every
        one. At 64 MB it waits 2-26 ms, a few times a run (`bench/README.md`).
        """
        self._second_pass = False
        assert self._checkpointer is not None
        try:
            await loop.run_in_executor(self._checkpointer, checkpoint, self.path)
        except Exception:
            pass  # as for the first pass

    def _write(
        self, rows: list[tuple[Any, ...]], remember: Sequence[tuple[int, str, str]] = ()
    ) -> None:
        """One transaction for the whole batch: the group commit.

        Each row's checksum chains from its run's previous row; the chains advance
        only once the transaction has committed, so a failed batch leaves them
        where the file is.

        A batch that is one INSERT and nothing else (a chain's step, when no summary
        is due: its task's `task_ran` row) is written without BEGIN and COMMIT: one
        statement is atomic, its own transaction. The two statements around it cost
        a chain's commit 3-4 µs of its ~30 in SQLite.
        """
        conn = self._writable
        chain = self._chain
        try:
            values, heads, ends = chain_batch(rows, chain)
        except KeyError:  # a run not written by this process yet (a resume's first batch)
            for run_id in {row[0] for row in rows}.difference(chain):
                chain[run_id] = self._chain_head(run_id)  # as the file has it
            values, heads, ends = chain_batch(rows, chain)
        total = len(rows)
        due = self._summaries_to_write(rows, ends) if self._summaries else {}
        if total in INSERT_CHUNK and not remember and not any(due.values()):
            try:
                first_seq = _insert(conn, values, total)  # one statement: that size's
            except BaseException:
                roll_back(conn)
                raise
        else:
            with immediate(conn):
                first_seq = _insert(conn, values, total)
                for run_id, save in due.items():
                    if save:
                        self._save_summary(conn, run_id, first_seq + ends[run_id])
                for position, fingerprint, tool in remember:
                    run_id, task_id, attempt, _, at, _ = rows[position]
                    conn.execute(
                        REMEMBER,
                        (fingerprint, tool, run_id, task_id, attempt, first_seq + position, at),
                    )
        chain.update(heads)
        self.commits += 1
        if due:
            self._summaries_committed(due, ends, first_seq)

    def _summaries_to_write(
        self, rows: list[tuple[Any, ...]], ends: dict[str, int]
    ) -> dict[str, bool]:
        """Of the batch's runs that keep a summary, whether each one's is written in
        the batch's transaction (then it covers exactly what commits).

        A summary is written at most every `SUMMARY_EVERY` seconds per run, and always
        with the event that ends a session: rewriting it with every commit cost a
        chain of tasks 14 % of its speed (one more page per commit). A summary left
        behind is caught up once the writer is idle (`_write_summaries`).
        """
        loop = self._loop
        assert loop is not None  # the writer runs: it was started
        now = loop.time()
        due: dict[str, bool] = {}
        for run_id, position in ends.items():
            if run_id not in self._summaries:
                continue
            if rows[position][3] in SESSION_ENDS or now >= self._summary_due.get(run_id, 0.0):
                due[run_id] = True
                self._summary_due[run_id] = now + SUMMARY_EVERY
            else:
                due[run_id] = False  # committed, but its summary is behind
        return due

    def _save_summary(self, conn: sqlite3.Connection, run_id: str, last_seq: int) -> None:
        data = self._encode_summary(self._summaries[run_id]())
        conn.execute(SAVE_SUMMARY, (run_id, last_seq, data, summary_crc(run_id, last_seq, data)))

    def _summaries_committed(
        self, due: dict[str, bool], ends: dict[str, int], first_seq: int
    ) -> None:
        """A batch committed: each summarized run's last event, and whether its
        summary, written or not in that batch, is now behind it."""
        for run_id, saved in due.items():
            self._last_seq[run_id] = first_seq + ends[run_id]
            if saved:
                self._behind.discard(run_id)
            else:
                self._behind.add(run_id)
        if self._behind and self._catch_up is None and self._loop is not None:
            self._catch_up = self._loop.call_later(SUMMARY_EVERY, self._summaries_due)

    def _summaries_due(self) -> None:
        self._catch_up = None
        self._wakeup.set()

    def _write_summaries(self) -> None:
        """Bring the summaries left behind up to their runs' last committed event.

        Called only with nothing queued: each run's state is then the fold of exactly
        its committed events. A failure loses nothing (the runs are folded instead).
        """
        conn = self._writable
        behind, self._behind = self._behind, set()
        try:
            with immediate(conn):
                for run_id in behind:
                    self._save_summary(conn, run_id, self._last_seq[run_id])
        except sqlite3.Error:
            return

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
            self._check_requests()
            self._watch = asyncio.get_running_loop().call_later(WATCH_EVERY, self._check_identity)
            return
        self.lost = JournalError(
            str(self.path),
            "the journal file was deleted or replaced while this run was writing to it; "
            "the run is stopped, since nothing it did from here on could be kept",
        )
        if self.on_lost is not None:
            self.on_lost(self.lost)

    async def request(self, run_id: str, kind: str) -> None:
        """Leave a request for the process driving the run (`durable cancel`)."""
        try:
            with immediate(self._writable) as conn:
                conn.execute(
                    "INSERT INTO requests (run_id, kind, at) VALUES (?, ?, ?)",
                    (run_id, kind, time.time()),
                )
        except sqlite3.Error as exc:
            raise JournalError(
                str(self.path), f"cannot write: {describe(exc, self.path)}"
            ) from None

    def drop_requests(self, run_id: str) -> None:
        """Forget the requests left for a run before this process drove it: one its
        last driver never took (it died first) is not meant for this session."""
        try:
            self._writable.execute("DELETE FROM requests WHERE run_id = ?", (run_id,))
        except sqlite3.Error as exc:
            raise JournalError(
                str(self.path), f"cannot write: {describe(exc, self.path)}"
            ) from None

    def _check_requests(self) -> None:
        """Hand the requests other processes left for the runs this one drives
        (`durable cancel`) to `on_request`, once each: they are deleted as taken."""
        if self.on_request is None or not self._summaries:
            return
        conn = self._writable
        try:
            rows = conn.execute("SELECT rowid, run_id, kind FROM requests").fetchall()
            mine = [row for row in rows if row[1] in self._summaries]
            if mine:
                conn.executemany("DELETE FROM requests WHERE rowid = ?", [(r[0],) for r in mine])
        except sqlite3.Error:
            return  # busy, say: the next look, half a second on, takes them
        for _, run_id, kind in mine:
            self.on_request(run_id, kind)

    async def close(self) -> None:
        """Commit what is queued, stop the writer and close the connections."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._catch_up is not None:
            self._catch_up.cancel()
            self._catch_up = None
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
