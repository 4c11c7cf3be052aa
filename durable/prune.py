"""Pruning: deleting whole finished runs from the journal, and reclaiming their space.

The journal is append-only (triggers refuse UPDATE and DELETE of `runs` and `events`),
because a run's state is the fold of its events: remove or change one and the
fold tells a different story, which is worse than no story. That argument is about
the events of a run someone may still read or resume. A run removed *whole* (its
`runs` row, every one of its events, its summary, its cache entries and any
request left for it) leaves no history behind to be misread: the other runs'
chains, summaries and folds never refer to it. Its cache entries must go with it:
on SQLite the seqs of the newest events are reused once they are deleted, and an
entry left behind would name another run's event. So whole runs may go, and only
here, where it is done under these conditions, on either backend:

- the run is not driven by anyone: its run lock is taken for the deletion, so a
  live run is refused and no `resume` can start while its rows go;
- one transaction per prune, in which the append-only triggers are set aside, the
  rows deleted and the triggers restored before the commit, so no other connection
  ever sees the journal without them, and a failure anywhere (a crash included)
  rolls everything back.

What the backends share is here: which runs a prune selects (`CANDIDATES`,
`in_order`), what it refuses (`RunIsRunning`, and an id no run has), and the
interface the commands use, `Pruning`, opened for a path or a DSN by
`open_pruning`. How each deletes is its own: SQLite's is `SqlitePruning` below,
PostgreSQL's `journal/pg_prune.py`. On SQLite, the two DELETE triggers are dropped
and re-created from the very statements the schema made them with
(`APPEND_ONLY_TRIGGERS`), the run lock is its lock file (`RunLock`), SQLite's
integrity check passes first (a damaged index could hide some of a run's events
from the deletion and leave them behind, belonging to no run), and VACUUM gives
the space back to the file system afterwards.

Nothing else in durable deletes a row of history (`durable cache clear` deletes
cache entries, which are an index, not history: `Pruning.clear_cache`). Pruning an
interrupted run gives up its resume for good. Lock files (`<journal>.locks/RUN_ID`)
stay, as they always do.
"""

from __future__ import annotations

import os
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from durable.errors import DurableError, JournalError, RunNotFound
from durable.journal import cache as cache_index
from durable.journal.file import check_file, describe, is_postgres
from durable.journal.schema import APPEND_ONLY_TRIGGERS, configure, immediate
from durable.runlock import RunLock

#: The triggers a deletion must get past; re-created from `APPEND_ONLY_TRIGGERS`.
DELETE_TRIGGERS = ("runs_append_only_delete", "events_append_only_delete")
#: The tables a run's rows are in, in the order a prune deletes them (its `runs`
#: row last); a backend may have more (PostgreSQL's fleet tables).
RUN_TABLES = ("events", "summaries", "cache", "requests", "runs")
#: How many events rows hold (SQL, both backends): a `task_ran` row holds two.
EVENTS_IN_ROWS = "coalesce(sum(CASE kind WHEN 'task_ran' THEN 2 ELSE 1 END), 0)"
#: A run as a prune lists it: id, workflow, creation time and how many events it
#: has (SQLite's spelling; PostgreSQL's names the schema, `pg_prune.py`).
CANDIDATES = f"""SELECT r.run_id, r.workflow, r.created_at,
        (SELECT {EVENTS_IN_ROWS} FROM events e WHERE e.run_id = r.run_id)
    FROM runs r"""
#: Why a run that a prune refuses is running, when a process drives it.
DRIVEN = "a live process drives it"


class RunIsRunning(DurableError):
    """A run that a live process drives (or, on PostgreSQL, that the workers hold):
    pruning it would pull its history from under it."""

    def __init__(self, run_id: str, why: str = DRIVEN) -> None:
        super().__init__(f"run '{run_id}' is running ({why}): nothing was pruned")
        self.run_id = run_id


class Candidate(NamedTuple):
    """A run that a prune would delete, and how many events go with it."""

    run_id: str
    workflow: str
    created_at: float
    events: int


def candidates(rows: Iterable[Sequence[object]]) -> list[Candidate]:
    """`CANDIDATES`' rows as candidates."""
    return [
        Candidate(str(run_id), str(workflow), float(at), int(count))  # type: ignore[arg-type]
        for run_id, workflow, at, count in rows
    ]


def in_order(run_ids: Sequence[str], found: Iterable[Candidate], where: str) -> list[Candidate]:
    """The runs named by `run_ids` (whole ids, each once), in the order given, from
    those `found`. A prefix is not enough here, as it is for the reading commands:
    what is named is deleted. The first id that no run has is `RunNotFound`."""
    by_id = {candidate.run_id: candidate for candidate in found}
    for run_id in run_ids:
        if run_id not in by_id:
            raise RunNotFound(run_id, where)
    return [by_id[run_id] for run_id in run_ids]


class Pruning(ABC):
    """A journal opened to delete from: whole runs (`durable prune`) and cache entries
    (`durable cache clear`). `open_pruning` opens one, read-only for a dry run.

    The methods are coroutines for PostgreSQL's sake; SQLite's run at once (the
    command has nothing else to do meanwhile). `where` names the journal in messages,
    `size_of` says what `size` measures."""

    where: str
    size_of = "the journal"

    async def by_id(self, run_ids: Iterable[str]) -> list[Candidate]:
        """The runs named by their whole ids, in the order given (each once); an id
        that no run has is `RunNotFound`."""
        wanted = list(dict.fromkeys(run_ids))
        return in_order(wanted, await self._find(wanted), self.where) if wanted else []

    @abstractmethod
    async def _find(self, run_ids: Sequence[str]) -> list[Candidate]:
        """Those of `run_ids` that are runs, in any order."""

    @abstractmethod
    async def created_before(self, before: float) -> list[Candidate]:
        """Every run created before `before` (a UNIX time), oldest first."""

    async def refuse_running(self, candidates: Sequence[Candidate]) -> None:
        """Raise `RunIsRunning` for the first candidate that is running. Takes no lock
        (a dry run's check; the deletion takes the locks)."""
        for candidate in candidates:
            why = await self.running(candidate.run_id)
            if why is not None:
                raise RunIsRunning(candidate.run_id, why)

    @abstractmethod
    async def running(self, run_id: str) -> str | None:
        """Why the run is running now (who drives it), or None if it is not."""

    @abstractmethod
    async def delete_runs(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """Delete the candidates' rows in one transaction, holding each run's lock.

        Returns the candidates with the number of events really deleted (a resume may
        have appended some between the listing and the lock). A run that is running
        is `RunIsRunning`, and then nothing is deleted."""

    @abstractmethod
    async def reclaim(self) -> None:
        """After a deletion has committed: make the space it freed usable again."""

    @abstractmethod
    async def size(self) -> int:
        """Bytes the journal takes (what `size_of` says)."""

    @abstractmethod
    async def clear_cache(self, older_than: float | None = None, tool: str | None = None) -> int:
        """Forget cache entries (all; or committed before `older_than`; or of one
        tool); how many. The events they name stay, as history."""

    @abstractmethod
    async def cache_count(self) -> int:
        """How many cache entries there are."""

    @abstractmethod
    async def close(self) -> None: ...


async def open_pruning(db: str | os.PathLike[str] | None, *, readonly: bool = False) -> Pruning:
    """The journal `db` names (a path, or a `postgresql://` DSN; the default path if
    None), opened to prune; `readonly` for a dry run, which writes nothing."""
    from durable.journal.writer import default_path

    target = db or default_path()
    if is_postgres(target):
        from durable.journal.pg_prune import PgPruning  # only where it is used

        return await PgPruning.open(str(target), readonly=readonly)
    path = Path(target)
    return SqlitePruning(connect(path, readonly=readonly), path)


# -- SQLite ---------------------------------------------------------------------------


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """The journal at `path`, refused if it is not one; `readonly` for a dry run.

    Written, every commit of a prune is synced (`durability full`): it is rare, and
    a pruned run coming back after a power loss would surprise. Read-only, nothing
    is written, not even an upgrade of an older journal's schema.
    """
    check_file(path, create=False)
    connection = None
    try:
        if readonly:
            uri = f"{path.resolve().as_uri()}?mode=ro"
            connection = sqlite3.connect(uri, uri=True, isolation_level=None)
            connection.execute("PRAGMA busy_timeout=5000")  # as `configure` waits
        else:
            connection = sqlite3.connect(path, isolation_level=None)
            configure(connection, "full")
    except sqlite3.Error as exc:
        if connection is not None:
            connection.close()
        raise JournalError(str(path), f"cannot open: {describe(exc, path)}") from None
    return connection


def journal_size(path: Path) -> int:
    """Bytes the journal takes: its file and its write-ahead log."""
    total = 0
    for part in (path, Path(f"{path}-wal")):
        try:
            total += os.stat(part).st_size
        except FileNotFoundError:
            pass
    return total


class SqlitePruning(Pruning):
    """Pruning a SQLite journal, on a connection of its own (`connect`)."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.connection = connection
        self.path = path
        self.where = str(path)

    async def _find(self, run_ids: Sequence[str]) -> list[Candidate]:
        found = []
        for run_id in run_ids:
            found += self._read(f"{CANDIDATES} WHERE r.run_id = ?", (run_id,))
        return candidates(found)

    async def created_before(self, before: float) -> list[Candidate]:
        rows = self._read(
            f"{CANDIDATES} WHERE r.created_at < ? ORDER BY r.created_at, r.rowid", (before,)
        )
        return candidates(rows)

    async def running(self, run_id: str) -> str | None:
        return DRIVEN if RunLock(self.path, run_id).is_held_elsewhere() else None

    async def delete_runs(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        locks: list[RunLock] = []
        try:
            for candidate in candidates:
                lock = RunLock(self.path, candidate.run_id)
                try:
                    lock.acquire()
                except DurableError:
                    raise RunIsRunning(candidate.run_id) from None
                locks.append(lock)
            return self._delete(candidates)
        finally:
            for lock in locks:
                lock.release()

    def _delete(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        connection, path = self.connection, self.path
        if self._read("PRAGMA integrity_check") != [("ok",)]:
            raise JournalError(
                str(path),
                "the journal file is damaged (SQLite's integrity check failed): nothing was "
                "pruned; `durable check` says more",
            )
        deleted = []
        try:
            with immediate(connection):
                for name in DELETE_TRIGGERS:
                    connection.execute(f"DROP TRIGGER IF EXISTS {name}")
                for candidate in candidates:
                    key = (candidate.run_id,)
                    events = connection.execute(
                        f"SELECT {EVENTS_IN_ROWS} FROM events WHERE run_id = ?", key
                    ).fetchone()[0]
                    for table in RUN_TABLES:
                        connection.execute(f"DELETE FROM {table} WHERE run_id = ?", key)
                    deleted.append(candidate._replace(events=events))
                for name in DELETE_TRIGGERS:
                    connection.execute(APPEND_ONLY_TRIGGERS[name])
        except sqlite3.Error as exc:
            raise JournalError(
                str(path), f"cannot prune: {describe(exc, path)}; nothing was pruned"
            ) from None
        return deleted

    async def reclaim(self) -> None:
        """Give the freed pages back to the file system: VACUUM, then empty the WAL.

        In WAL mode VACUUM writes the new file through the log; the checkpoint is
        what moves it into (and shrinks) the journal file itself. Run after the
        deletion has committed: VACUUM cannot run inside a transaction, and a
        failure here loses nothing but space.
        """
        try:
            self.connection.execute("VACUUM")
            self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise JournalError(
                str(self.path),
                "the runs were pruned, but their space was not reclaimed: "
                f"{describe(exc, self.path)}",
            ) from None

    async def size(self) -> int:
        return journal_size(self.path)

    async def clear_cache(self, older_than: float | None = None, tool: str | None = None) -> int:
        try:
            return cache_index.clear(self.connection, older_than=older_than, tool=tool)
        except sqlite3.Error as exc:
            raise JournalError(
                str(self.path), f"cannot clear the cache: {describe(exc, self.path)}"
            ) from None

    async def cache_count(self) -> int:
        try:
            return cache_index.count(self.connection)
        except sqlite3.Error as exc:
            raise JournalError(str(self.path), f"cannot read: {describe(exc, self.path)}") from None

    async def close(self) -> None:
        self.connection.close()

    def _read(self, sql: str, parameters: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            return self.connection.execute(sql, parameters).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(str(self.path), f"cannot read: {describe(exc, self.path)}") from None
