"""What both journals (SQLite and PostgreSQL) do the same way, written once.

- `EventReading`: a run's events read back in chunks, each row checked
  (`integrity.py`), from a backend's `_checked` rows: `read_events`, `events`,
  `damage`; and `checked_row`, the check of one row.
- `EventQueue`: appending events for the group commit: the queue, the future a
  batch's appenders wait on, the wake-up of the backend's writer coroutine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from durable.errors import JournalDamaged, JournalError
from durable.events import (
    RAN,
    STARTED,
    SUCCEEDED,
    Event,
    encode_data,
    encode_ran,
    from_ran_row,
    from_row,
    kind_of,
)
from durable.integrity import event_crc, run_crc

if TYPE_CHECKING:
    from durable.journal.reader import RunRecord

#: An event as `_checked` yields it: its row's seq, and the event or what is wrong
#: with the row.
Checked = tuple[int, "Event | None", "str | None"]


def checked_row(
    check: Callable[..., str | None],
    seq: int,
    run_id: str,
    kind: str,
    task_id: str | None,
    attempt: int | None,
    at: float,
    data: bytes | None,
    crc: int | None,
) -> tuple[Checked, ...]:
    """One row against its checksum (`ChainVerifier.check`), then decoded: its
    event, or the two of a `task_ran` row, which share its seq."""
    problem = check(seq, run_id, task_id, attempt, kind, at, data, crc)
    if problem is not None:
        return ((seq, None, problem),)
    try:
        if kind == RAN:
            started, succeeded = from_ran_row(task_id, attempt or 0, at, data)  # type: ignore[arg-type]
            return ((seq, started, None), (seq, succeeded, None))
        return ((seq, from_row(kind, task_id, attempt, at, data), None),)
    except (KeyError, TypeError, ValueError, msgspec.DecodeError) as exc:
        return ((seq, None, f"event {seq} ({kind}) cannot be read: {exc}"),)


def chain_batch(
    rows: Sequence[tuple[Any, ...]], chain: Mapping[str, int]
) -> tuple[list[Any], dict[str, int], dict[str, int]]:
    """A batch's rows with their checksums, flattened row after row for a multi-row
    INSERT (seven columns a row), each chained from its run's previous row.

    `chain` holds every run's last committed checksum; a run it does not hold raises
    KeyError. The writers read those from the journal: PostgreSQL's before the
    batch, SQLite's on that error (a set of the batch's runs per commit cost a
    chain of tasks more than the rare retry). Returns the values, each run's new head
    (to become the chain once the batch has committed, not before: a failed batch
    leaves the chain where the journal is), and each run's last position in the batch.
    """
    heads: dict[str, int] = {}
    ends: dict[str, int] = {}
    values: list[Any] = []
    for position, (run_id, task_id, attempt, kind, at, data) in enumerate(rows):
        previous = heads.get(run_id)
        if previous is None:
            previous = chain[run_id]
        crc = event_crc(previous, run_id, task_id, attempt, kind, at, data)
        heads[run_id] = crc
        ends[run_id] = position
        values += (run_id, task_id, attempt, kind, at, data, crc)
    return values, heads, ends


class FirstRows(NamedTuple):
    """A new run's row and its first event as both journals write them, with their
    checksums: the event's chains from the run's (`create_run`)."""

    columns: tuple[Any, ...]  # run_id, workflow, spec, spec_hash, params, base_dir, created_at, cwd
    crc: int
    kind: str
    data: bytes | None
    first: int


def first_rows(record: RunRecord, opening: Event) -> FirstRows:
    columns = (
        record.run_id,
        record.workflow,
        record.spec,
        record.spec_hash,
        msgspec.json.encode(record.params),
        record.base_dir,
        record.created_at,
        record.cwd,
    )
    crc = run_crc(*columns)
    kind, data = kind_of(opening), encode_data(opening)
    first = event_crc(crc, record.run_id, None, None, kind, opening.at, data)
    return FirstRows(columns, crc, kind, data, first)


class EventReading:
    """`read_events`, `events` and `damage` from a backend's `_checked` rows."""

    path: Any

    def _checked(self, run_id: str, after: int) -> AsyncIterator[list[Checked]]:
        raise NotImplementedError

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
            yield events  # type: ignore[misc]

    async def events(self, run_id: str, after: int = 0) -> list[tuple[int, Event]]:
        found: list[tuple[int, Event]] = []
        async for chunk in self.read_events(run_id, after):
            found.extend(chunk)
        return found

    async def damage(self, run_id: str) -> tuple[int, list[str]]:
        """Every problem with a run's events (not just the first), and how many it has."""
        count, problems = 0, []
        async for chunk in self._checked(run_id, 0):
            count += len(chunk)
            problems += [problem for _, _, problem in chunk if problem is not None]
        return count, problems


class EventQueue:
    """Appending for the group commit: the writer coroutine of a backend takes the
    whole queue at once (`_take`) and commits it in one transaction."""

    path: Any
    _write_conn: Any

    @property
    def _writable(self) -> Any:
        """The writing connection; a journal opened read-only has none."""
        if self._write_conn is None:
            raise JournalError(str(self.path), "opened read-only")
        return self._write_conn

    def _init_queue(self) -> None:
        #: Called once if the journal is lost under a run (its file deleted, say).
        self.on_lost: Callable[[JournalError], None] | None = None
        #: Called with (run id, kind) for a request another process left for a run
        #: this one drives (`durable cancel`), looked for every half second.
        self.on_request: Callable[[str, str], None] | None = None
        self.lost: JournalError | None = None
        self.commits = 0
        self.events_written = 0
        self._queue: list[tuple[Any, ...]] = []
        # (position in `_queue`, fingerprint, tool): successes the cache remembers.
        self._remember: list[tuple[int, str, str]] = []
        # task id -> the position in `_queue` of its `task_started`, while that is
        # the task's last row there: its success may join it (`append_succeeded`).
        self._open: dict[str, int] = {}
        # Rows in `_queue` that hold two events (`task_ran`).
        self._joined = 0
        self._batch: asyncio.Future[None] | None = None
        # Called, in the writer's own step, once the batch being appended commits.
        self._listeners: list[Callable[[BaseException | None], None]] = []
        self._wakeup = asyncio.Event()
        # The writer waits for `_wakeup` (and is woken when a batch begins).
        self._idle = True
        # The loop the writer runs on, once started: asking for the running loop
        # costs a system call on Python 3.11 (getpid), and appends are per event.
        self._loop: asyncio.AbstractEventLoop | None = None

    def append(self, run_id: str, event: Event) -> asyncio.Future[None]:
        """Queue an event; the returned future resolves once it is committed.

        Appending never waits: only a caller that needs the durability barrier
        awaits the future.
        """
        task_id = getattr(event, "task_id", None)
        attempt = getattr(event, "attempt", None)
        if task_id is not None and self._open:
            self._open.pop(task_id, None)  # a row after its start: the two stay apart
        return self.append_row(
            run_id, task_id, attempt, kind_of(event), event.at, encode_data(event)
        )

    def append_started(
        self, run_id: str, task_id: str, attempt: int, at: float, data: bytes | None
    ) -> asyncio.Future[None]:
        """`append` of a `task_started`, by its row (the engine makes no event object
        when nobody watches the run); `data` is `encode_fingerprint`'s."""
        self._open[task_id] = len(self._queue)
        return self.append_row(run_id, task_id, attempt, STARTED, at, data)

    def append_succeeded(
        self,
        run_id: str,
        task_id: str,
        attempt: int,
        at: float,
        data: bytes,
        remember: tuple[str, str] | None = None,
    ) -> asyncio.Future[None]:
        """`append` of a `task_succeeded`, by its row: `data` is the output, encoded
        already (the engine checks that it is serialisable). `remember` (a fingerprint
        and a tool) puts it in the cache, in the same commit.

        If the attempt's `task_started` is still queued, and is the task's last row
        there, the two become one `task_ran` row in its place (`events.RAN`): they
        commit together either way, so no reader can tell, and a commit inserts one
        row an attempt instead of two. Other tasks' rows queued between the two then
        follow both in the journal, though they came before the success: all of
        them are one commit, and each task's own rows keep their order.
        """
        position = self._open.pop(task_id, None)
        if position is not None:
            row = self._queue[position]
            if row[0] == run_id and row[2] == attempt:  # its own start, not another run's
                ran = encode_ran(row[5], at, data)
                self._queue[position] = (run_id, task_id, attempt, RAN, row[4], ran)
                if remember is not None:
                    self._remember.append((position, *remember))
                self._joined += 1
                return self._batch  # type: ignore[return-value]
        return self.append_row(run_id, task_id, attempt, SUCCEEDED, at, data, remember)

    def append_row(
        self,
        run_id: str,
        task_id: str | None,
        attempt: int | None,
        kind: str,
        at: float,
        data: bytes | None,
        remember: tuple[str, str] | None = None,
    ) -> asyncio.Future[None]:
        """`append`, given the event's row: its columns, and its `data` encoded.
        `remember`: see `append_succeeded`."""
        if remember is not None:
            self._remember.append((len(self._queue), *remember))
        self._queue.append((run_id, task_id, attempt, kind, at, data))
        if self._batch is None:
            loop = self._loop or asyncio.get_running_loop()
            self._batch = loop.create_future()
            if self._idle:
                # Wake the writer on the next turn of the loop, not this one: the
                # tasks started in this turn take their first step in the next, and
                # a tool that finishes in it gets its events into the same commit.
                loop.call_soon(self._wakeup.set)
        return self._batch

    def when_committed(self, listener: Callable[[BaseException | None], None]) -> None:
        """Call `listener` once the batch being appended now has committed (with
        None) or failed (with the error), in the writer's step, before anything
        else runs: what the commit releases (a chain's next task) starts at once,
        not a turn or two of the loop later as a future's callback would. The
        batch's future still resolves for those who await it."""
        self._listeners.append(listener)

    def _settle(
        self,
        batch: asyncio.Future[None],
        listeners: list[Callable[[BaseException | None], None]],
        error: BaseException | None,
    ) -> None:
        """A batch committed (or failed): tell its listeners, then resolve its future."""
        if error is None:
            batch.set_result(None)
        else:
            batch.set_exception(error)
            batch.exception()  # marked retrieved: listeners hear of it
        for listener in listeners:
            try:
                listener(error)
            except Exception as exc:  # a listener's bug must not stop the writer
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "a commit listener failed", "exception": exc}
                )

    async def _wait_for_work(self) -> None:
        """The writer's wait for the next batch, woken by `append`."""
        self._wakeup.clear()
        self._idle = True
        try:
            await self._wakeup.wait()
        finally:
            self._idle = False

    async def _let_released_start(self) -> None:
        """Before taking a batch appended while the writer did not wait for one (at
        its start: a run's first tasks; after a commit whose listeners appended it: a
        chain's next `task_started`): let the tasks started with it take their first
        step, so that an outcome ready in it joins the same commit (and its start's
        row, `append_succeeded`)."""
        if self._batch is not None:
            await asyncio.sleep(0)

    async def flush(self) -> None:
        """Wait until everything appended so far is committed (raising if a write failed)."""
        if self._batch is not None:
            await asyncio.shield(self._batch)

    def _take(
        self,
    ) -> tuple[
        list[tuple[Any, ...]],
        asyncio.Future[None],
        list[tuple[int, str, str]],
        list[Callable[[BaseException | None], None]],
        int,
    ]:
        """Everything queued, for one commit, and how many events its rows hold (two
        in a `task_ran` row); appends from now on make a new batch."""
        assert self._batch is not None
        events = len(self._queue) + self._joined
        taken = self._queue, self._batch, self._remember, self._listeners, events
        self._queue, self._batch, self._remember, self._listeners = [], None, [], []
        self._open = {}
        self._joined = 0
        return taken
