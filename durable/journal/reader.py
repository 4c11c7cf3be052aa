"""Reading the journal: runs and events, each row checked against its checksum.

A damaged run raises `JournalDamaged` (or, in `damage`, lists every problem);
the other runs in the file read as usual. SQLite's errors become a `JournalError`
that names the real cause (`file.describe`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite
import msgspec

from durable.errors import JournalDamaged, JournalError, RunNotFound
from durable.events import Event
from durable.integrity import ChainVerifier, run_crc, summary_crc
from durable.journal.common import EventReading, checked_row
from durable.journal.file import READ_ERRORS, describe
from durable.runlock import RunLock
from durable.summary import RunSummary

RUN_COLUMNS = "run_id, workflow, spec, spec_hash, params, base_dir, created_at"


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


class SummaryRow(NamedTuple):
    """A run as `durable runs` lists it: its summary, if one can be trusted."""

    run_id: str
    #: The summary as stored, or None if there is none or it is damaged.
    summary: RunSummary | None
    #: What the summary says is wrong with the run's events, if anything.
    problem: str | None = None
    #: The summary row itself fails its checksum (the fold answers; `check` says so).
    damaged: bool = False
    #: The run has events after the summary's last: true of a live run between two
    #: summaries (`SUMMARY_EVERY`), of one whose process died just after a commit,
    #: and of one written by an older durable.
    behind: bool = False
    #: The run's last event that the summary covers.
    last_seq: int | None = None


class JournalReader(EventReading):
    """The reading half of a `Journal`: what every command that inspects runs uses."""

    def __init__(self, path: Path, reader: aiosqlite.Connection, version: int) -> None:
        self.path = path
        self._conn = reader
        self._columns = RUN_COLUMNS + (", cwd, crc" if version >= 2 else ", NULL, NULL")
        self._event_crc = "crc" if version >= 2 else "NULL"
        self._has_summaries = version >= 3
        #: Whether the events_by_run index has as many entries as the table has rows.
        self._index_whole: bool | None = None

    async def query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[Any]:
        """Run one read; SQLite's errors become a `JournalError` that says what happened."""
        try:
            cursor = await self._conn.execute(sql, parameters)
            return list(await cursor.fetchall())
        except READ_ERRORS as exc:
            raise JournalError(str(self.path), f"cannot read: {describe(exc, self.path)}") from None

    def lock(self, run_id: str) -> RunLock:
        """The run's lock: `async with journal.lock(run_id)` while driving it."""
        return RunLock(self.path, run_id)

    async def is_driven(self, run_id: str) -> bool:
        """Whether a live process drives the run now (holds its lock)."""
        return RunLock(self.path, run_id).is_held_elsewhere()

    async def latest_run_id(self) -> str | None:
        """The run created last (`durable watch` without an id), None if there is none."""
        rows = await self.query(
            "SELECT run_id FROM runs ORDER BY created_at DESC, rowid DESC LIMIT 1"
        )
        return str(rows[0][0]) if rows else None

    async def fleet_work(self, run_id: str) -> int:
        """Tasks of the run that workers hold: none, on SQLite (the fleet needs PostgreSQL)."""
        return 0

    async def has_run(self, run_id: str) -> bool:
        return bool(await self.query("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)))

    async def find_runs(self, prefix: str) -> list[tuple[str, str, float]]:
        """(run id, workflow, created at) of the runs whose id starts with `prefix`."""
        rows = await self.query(
            "SELECT run_id, workflow, created_at FROM runs WHERE substr(run_id, 1, ?) = ? "
            "ORDER BY created_at, rowid",
            (len(prefix), prefix),
        )
        return [(str(run_id), str(workflow), created_at) for run_id, workflow, created_at in rows]

    async def page_problems(self) -> list[str]:
        """SQLite's own integrity check of the file's pages and indexes: its problems."""
        rows = await self.query("PRAGMA integrity_check")
        return [f"SQLite: {row[0]}" for row in rows if row[0] != "ok"]

    async def orphan_events(self) -> list[tuple[str, int]]:
        """(run id, count) of events whose run has no row."""
        rows = await self.query(
            "SELECT run_id, count(*) FROM events"
            " WHERE run_id NOT IN (SELECT run_id FROM runs) GROUP BY run_id"
        )
        return [(str(run_id), count) for run_id, count in rows]

    async def get_run(self, run_id: str) -> RunRecord:
        """The run's record; raises `JournalDamaged` if its row fails its checksum."""
        rows = await self.query(f"SELECT {self._columns} FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise RunNotFound(run_id, str(self.path))
        return run_record(str(self.path), rows[0])

    async def list_runs(self) -> list[RunRecord | JournalDamaged]:
        """Every run, oldest first; a run whose row is damaged comes as its error."""
        rows = await self.query(f"SELECT {self._columns} FROM runs ORDER BY created_at, rowid")
        return run_records(str(self.path), rows)

    async def list_summaries(self) -> list[SummaryRow]:
        """Every run with its summary, in the order their rows were written.

        One index lookup per run finds its last event, to tell a summary that covers
        it from one that is `behind`. No run row's spec and no event is read: this
        is what keeps `durable runs` instant.
        """
        if not self._has_summaries:
            rows = await self.query(
                "SELECT run_id, NULL, NULL, NULL, NULL FROM runs ORDER BY rowid"
            )
        else:
            rows = await self.query(
                "SELECT r.run_id, s.last_seq, s.data, s.crc,"
                " (SELECT max(seq) FROM events e WHERE e.run_id = r.run_id)"
                " FROM runs r LEFT JOIN summaries s ON s.run_id = r.run_id ORDER BY r.rowid"
            )
        return [summary_row(str(row[0]), *row[1:]) for row in rows]

    async def read_summary(self, run_id: str, last_seq: int) -> SummaryRow:
        """The run's summary, judged against its events as read up to `last_seq`
        (`seen_from`). Its last event is looked up in the summary's own statement."""
        rows = []
        if self._has_summaries:
            rows = await self.query(
                "SELECT last_seq, data, crc, (SELECT max(seq) FROM events WHERE run_id = ?)"
                " FROM summaries WHERE run_id = ?",
                (run_id, run_id),
            )
        if not rows:
            return SummaryRow(run_id, None)
        return seen_from(summary_row(run_id, *rows[0]), last_seq)

    async def _checked(
        self, run_id: str, after: int
    ) -> AsyncIterator[list[tuple[int, Event | None, str | None]]]:
        """A run's rows as `(seq, event, problem)`: the event, or what is wrong with it."""
        head = await self._chain_start(run_id, after)
        check = ChainVerifier(run_id, head).check
        empty = after == 0 and head is not None
        count = 0
        try:
            cursor = await self._conn.execute(
                "SELECT seq, run_id, kind, task_id, attempt, at, data, "
                f"{self._event_crc} FROM events WHERE run_id = ? AND seq > ? ORDER BY seq",
                (run_id, after),
            )
            while rows := await cursor.fetchmany(20_000):
                chunk = [event for row in rows for event in checked_row(check, *row[:8])]
                empty = False
                count += len(rows)
                yield chunk
            if empty:
                # A run's row and its first event are committed together (`create_run`):
                # a checksummed run with no events lost them (a damaged index, say).
                yield [(0, None, "it has no events: its history is missing")]
            elif after == 0 and (problem := await self._index_successor(run_id, count)):
                yield [(0, None, problem)]
        except READ_ERRORS as exc:
            raise JournalError(str(self.path), f"cannot read: {describe(exc, self.path)}") from None

    async def _index_successor(self, run_id: str, count: int) -> str | None:
        """What is wrong with the index entry that follows a run's `count` entries.

        The run's events are found through the `events_by_run` index, and a chain
        cannot see the loss of a run's last events: an index entry whose run id was
        damaged (or that sorts out of place) ends the run's scan early, silently. The
        entry right after the run's, walked to from the same place, must name a later
        run, and the row it points to must belong to that run. And entries lost from
        the index (a damaged page) show as fewer entries than the table has rows:
        counted once per journal opened, which reads every page of the table once.
        """
        if self._index_whole is None:
            # One statement, one snapshot: a writer appending meanwhile changes both.
            ((rows_, entries),) = await self.query(
                "SELECT (SELECT count(*) FROM events NOT INDEXED),"
                " (SELECT count(*) FROM events INDEXED BY events_by_run)"
            )
            self._index_whole = rows_ == entries
        if not self._index_whole:
            return "the index of the journal's events is damaged: some of its events may be missing"
        rows = await self.query(
            "SELECT CAST(run_id AS BLOB), seq, typeof(run_id) FROM events INDEXED BY events_by_run"
            " WHERE run_id >= ? ORDER BY run_id, seq LIMIT 1 OFFSET ?",
            (run_id, count),
        )
        if not rows:
            return None
        key, seq, kind = bytes(rows[0][0]), rows[0][1], rows[0][2]
        if kind != "text":
            return "the index of its events is damaged: some of its events may be missing"
        if key == run_id.encode():
            return None  # appended since the run's events were read
        found = await self.query("SELECT CAST(run_id AS BLOB) FROM events WHERE seq = ?", (seq,))
        if key > run_id.encode() and found and bytes(found[0][0]) == key:
            return None
        return "the index of its events is damaged: some of its events may be missing"

    async def _chain_start(self, run_id: str, after: int) -> int | None:
        """What the run's events after `after` chain from (None: a run without checksums)."""
        if after == 0:
            sql, key = f"SELECT {self._event_crc} FROM runs WHERE run_id = ?", run_id
        else:
            sql, key = f"SELECT {self._event_crc} FROM events WHERE seq = ?", after
        rows = await self.query(sql, (key,))
        return rows[0][0] if rows else None

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows, SQLite's errors untouched. For tests."""
        cursor = await self._conn.execute(sql, tuple(parameters))
        return list(await cursor.fetchall())


def summary_row(
    run_id: str, last_seq: int | None, data: Any, crc: int | None, newest: int | None
) -> SummaryRow:
    """Judge a stored summary against the run's last event (`newest`)."""
    if last_seq is None or crc is None or data is None:
        return SummaryRow(run_id, None)
    data = data.encode() if isinstance(data, str) else bytes(data)
    if crc != summary_crc(run_id, last_seq, data):
        return SummaryRow(run_id, None, damaged=True)  # the fold will answer
    if newest is None or newest < last_seq:
        # Written with the events it covers: those events existed, and are gone.
        return SummaryRow(
            run_id,
            None,
            f"its events end at {newest or 0}, but it had events up to {last_seq}: "
            "its last events are missing",
        )
    try:
        summary = msgspec.msgpack.decode(data, type=RunSummary)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return SummaryRow(run_id, None, damaged=True)
    return SummaryRow(run_id, summary, behind=newest > last_seq, last_seq=last_seq)


def seen_from(row: SummaryRow, last_seq: int) -> SummaryRow:
    """A summary, judged in the snapshot it was read in, set against the run's events
    as read earlier up to `last_seq`.

    A live run's process (another `durable`, a fleet worker) may commit events and a
    summary between the two reads. That summary is ahead of the events read: not
    damage (`summary_row` saw its events in its own snapshot), and not the fold of
    what was read, so it is left out (`summary` None) rather than compared.
    """
    if row.summary is None or row.last_seq is None:
        return row
    if row.last_seq > last_seq:
        return row._replace(summary=None, behind=False)
    return row._replace(behind=last_seq > row.last_seq)


def run_record(journal: str, row: Sequence[Any]) -> RunRecord:
    """A run's row as a record, checked against its checksum (`JournalDamaged` if not:
    `journal` names the journal in that message). Both backends' rows come here."""
    run_id, workflow, spec, spec_hash, params, base_dir, created_at, cwd, crc = row
    run_id = str(run_id)
    # A damaged record header can turn a BLOB into TEXT: same bytes, same checksum.
    spec, params = (v.encode() if isinstance(v, str) else v for v in (spec, params))
    try:
        if crc is not None and crc != run_crc(
            run_id, workflow, spec, spec_hash, params, base_dir, created_at, cwd
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
        raise JournalDamaged(journal, run_id, str(exc)) from None


def run_records(journal: str, rows: Iterable[Sequence[Any]]) -> list[RunRecord | JournalDamaged]:
    """Every run's record; a run whose row is damaged comes as its error, so that
    one damaged run does not hide the others."""
    found: list[RunRecord | JournalDamaged] = []
    for row in rows:
        try:
            found.append(run_record(journal, row))
        except JournalDamaged as exc:
            found.append(exc)
    return found
