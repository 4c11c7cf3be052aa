"""Pruning: deleting whole finished runs from the journal, and reclaiming their space.

The journal is append-only (`journal/schema.py`: triggers refuse UPDATE and DELETE),
because a run's state is the fold of its events: remove or change one and the
fold tells a different story, which is worse than no story. That argument is about
the events of a run someone may still read or resume. A run removed *whole* (its
`runs` row, every one of its events, its summary, its cache entries and any
request left for it) leaves no history behind to be misread: the other runs'
chains, summaries and folds never refer to it. Its cache entries must go with it:
the seqs of the newest events are reused once they are deleted, and an entry left
behind would name another run's event. So whole
runs may go, and only here, where it is done under these conditions:

- the run is not driven by anyone: its `RunLock` is taken for the deletion, so a
  live run is refused and no `resume` can start while its rows go;
- one transaction per prune: the two DELETE triggers are dropped, the rows
  deleted, and the triggers re-created from the very statements the schema made
  them with (`APPEND_ONLY_TRIGGERS`) before the commit, so no other connection ever
  sees the journal without them, and a failure anywhere rolls everything back;
- SQLite's integrity check passes first: a damaged index could hide some of a
  run's events from the deletion and leave them behind, belonging to no run.

Nothing else in durable deletes a row of history (`durable cache clear` deletes
cache entries, which are an index, not history). Pruning an interrupted run gives up its
resume for good. Lock files (`<journal>.locks/RUN_ID`) stay, as they always do.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from durable.errors import DurableError, JournalError, RunNotFound
from durable.journal.file import check_file, describe
from durable.journal.schema import APPEND_ONLY_TRIGGERS, configure, immediate
from durable.runlock import RunLock

#: The triggers a deletion must get past; re-created from `APPEND_ONLY_TRIGGERS`.
DELETE_TRIGGERS = ("runs_append_only_delete", "events_append_only_delete")


class RunIsRunning(DurableError):
    """A run that a live process drives: pruning it would pull its history from under it."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run '{run_id}' is running (a live process drives it): nothing was pruned"
        )
        self.run_id = run_id


class Candidate(NamedTuple):
    """A run that a prune would delete, and how many events go with it."""

    run_id: str
    workflow: str
    created_at: float
    events: int


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


def created_before(connection: sqlite3.Connection, path: Path, before: float) -> list[Candidate]:
    """Every run created before `before` (a UNIX time), oldest first."""
    rows = _read(
        connection,
        path,
        "SELECT run_id, workflow, created_at FROM runs WHERE created_at < ?"
        " ORDER BY created_at, rowid",
        (before,),
    )
    return [_candidate(connection, path, *row) for row in rows]


def by_id(connection: sqlite3.Connection, path: Path, run_ids: Iterable[str]) -> list[Candidate]:
    """The runs named by their whole ids, in the order given (each once).

    A prefix is not enough here, as it is for the reading commands: what is named is
    deleted. An id that no run has is `RunNotFound`.
    """
    found = []
    for run_id in dict.fromkeys(run_ids):
        rows = _read(
            connection,
            path,
            "SELECT run_id, workflow, created_at FROM runs WHERE run_id = ?",
            (run_id,),
        )
        if not rows:
            raise RunNotFound(run_id, str(path))
        found.append(_candidate(connection, path, *rows[0]))
    return found


def _candidate(
    connection: sqlite3.Connection, path: Path, run_id: object, workflow: object, at: object
) -> Candidate:
    (count,) = _read(connection, path, "SELECT count(*) FROM events WHERE run_id = ?", (run_id,))[0]
    return Candidate(str(run_id), str(workflow), float(at), int(count))  # type: ignore[arg-type]


def refuse_running(path: Path, candidates: Sequence[Candidate]) -> None:
    """Raise `RunIsRunning` for the first candidate a live process drives. Takes no lock."""
    for candidate in candidates:
        if RunLock(path, candidate.run_id).is_held_elsewhere():
            raise RunIsRunning(candidate.run_id)


def delete_runs(
    connection: sqlite3.Connection, path: Path, candidates: Sequence[Candidate]
) -> list[Candidate]:
    """Delete the candidates' rows in one transaction, holding each run's lock.

    Returns the candidates with the number of events really deleted (a resume may
    have appended some between the listing and the lock). A run whose lock another
    process holds is `RunIsRunning`, and then nothing is deleted.
    """
    locks: list[RunLock] = []
    try:
        for candidate in candidates:
            lock = RunLock(path, candidate.run_id)
            try:
                lock.acquire()
            except DurableError:
                raise RunIsRunning(candidate.run_id) from None
            locks.append(lock)
        return _delete(connection, path, candidates)
    finally:
        for lock in locks:
            lock.release()


def _delete(
    connection: sqlite3.Connection, path: Path, candidates: Sequence[Candidate]
) -> list[Candidate]:
    if _read(connection, path, "PRAGMA integrity_check") != [("ok",)]:
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
                events = connection.execute("DELETE FROM events WHERE run_id = ?", key).rowcount
                connection.execute("DELETE FROM summaries WHERE run_id = ?", key)
                connection.execute("DELETE FROM cache WHERE run_id = ?", key)
                connection.execute("DELETE FROM requests WHERE run_id = ?", key)
                connection.execute("DELETE FROM runs WHERE run_id = ?", key)
                deleted.append(candidate._replace(events=events))
            for name in DELETE_TRIGGERS:
                connection.execute(APPEND_ONLY_TRIGGERS[name])
    except sqlite3.Error as exc:
        raise JournalError(
            str(path), f"cannot prune: {describe(exc, path)}; nothing was pruned"
        ) from None
    return deleted


def reclaim(connection: sqlite3.Connection, path: Path) -> None:
    """Give the freed pages back to the file system: VACUUM, then empty the WAL.

    In WAL mode VACUUM writes the new file through the log; the checkpoint is what
    moves it into (and shrinks) the journal file itself. Run after the deletion has
    committed: VACUUM cannot run inside a transaction, and a failure here loses
    nothing but space.
    """
    try:
        connection.execute("VACUUM")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise JournalError(
            str(path),
            f"the runs were pruned, but their space was not reclaimed: {describe(exc, path)}",
        ) from None


def journal_size(path: Path) -> int:
    """Bytes the journal takes: its file and its write-ahead log."""
    total = 0
    for part in (path, Path(f"{path}-wal")):
        try:
            total += os.stat(part).st_size
        except FileNotFoundError:
            pass
    return total


def _read(
    connection: sqlite3.Connection, path: Path, sql: str, parameters: tuple[object, ...] = ()
) -> list[tuple[object, ...]]:
    try:
        return connection.execute(sql, parameters).fetchall()
    except sqlite3.Error as exc:
        raise JournalError(str(path), f"cannot read: {describe(exc, path)}") from None
