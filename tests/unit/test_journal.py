"""durable/journal/: schema, append-only history, refusing foreign files, group commit, run lock."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import msgspec
import pytest

from durable.errors import JournalError, RunExists, RunLocked, RunNotFound
from durable.events import (
    RunFinished,
    RunStarted,
    TaskFailed,
    TaskRetrying,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
)
from durable.journal import SCHEMA_VERSION, Journal, RunRecord
from durable.runlock import RunLock

REPO = Path(__file__).resolve().parents[2]


def record(run_id: str = "run-1", created_at: float = 1.0) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        workflow="wf",
        spec=b'{"name":"wf","tasks":[]}',
        spec_hash="abc",
        params={"n": 1, "tags": ["x"]},
        base_dir="/somewhere",
        created_at=created_at,
    )


async def create(journal: Journal, run: RunRecord) -> RunStarted:
    """Create a run as durable does: its row and its first event in one commit."""
    opening = RunStarted(at=run.created_at)
    await journal.create_run(run, opening)
    return opening


def sample_events(count: int) -> list:
    """`count` events of varied kinds (not a legal history: the journal does not care)."""
    makers = [
        lambda i: TaskStarted(task_id=f"t{i}", attempt=1, at=float(i)),
        lambda i: TaskSucceeded(
            task_id=f"t{i}", attempt=1, at=float(i), output={"i": i, "l": [i, None]}
        ),
        lambda i: TaskRetrying(task_id=f"t{i}", attempt=2, at=float(i), error=f"E{i}", delay=0.25),
        lambda i: TaskFailed(task_id=f"t{i}", attempt=3, at=float(i), error="boom"),
        lambda i: TaskSkipped(task_id=f"t{i}", at=float(i), reason="why"),
        lambda i: RunFinished(at=float(i), status="failed"),
    ]
    return [makers[i % len(makers)](i) for i in range(count)]


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file in the folder with its bytes: a refused file must leave all of it alone."""
    return {p.name: p.read_bytes() for p in sorted(path.parent.iterdir()) if p.is_file()}


async def open_journal(path: Path, **options) -> Journal:
    journal = await Journal.open(path, durability="off", **options)
    journal.start()
    return journal


# -- schema ------------------------------------------------------------------------


def test_schema_and_user_version(tmp_path):
    path = tmp_path / "sub" / "journal.db"

    async def main():
        journal = await open_journal(path)
        await journal.close()

    asyncio.run(main())
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        objects = {
            (kind, name)
            for kind, name in connection.execute(
                "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            )
        }
        assert objects == {
            ("table", "runs"),
            ("table", "events"),
            ("index", "events_by_run"),
            ("table", "summaries"),
            ("table", "cache"),
            ("table", "requests"),
            ("trigger", "runs_append_only_update"),
            ("trigger", "runs_append_only_delete"),
            ("trigger", "runs_append_only_replace"),
            ("trigger", "events_append_only_replace"),
            ("trigger", "events_append_only_update"),
            ("trigger", "events_append_only_delete"),
        }
        columns = [row[1] for row in connection.execute("PRAGMA table_info(events)")]
        assert columns == ["seq", "run_id", "task_id", "attempt", "kind", "at", "data", "crc"]
        columns = [row[1] for row in connection.execute("PRAGMA table_info(runs)")]
        assert columns[:2] == ["run_id", "workflow"]
        assert {"spec", "spec_hash", "params", "created_at", "cwd", "crc"} <= set(columns)
    finally:
        connection.close()


def test_reopening_a_journal_keeps_its_data(tmp_path):
    path = tmp_path / "journal.db"

    async def main():
        journal = await open_journal(path)
        await create(journal, record())
        await journal.close()
        journal = await open_journal(path, create=False)
        try:
            assert [run.run_id for run in await journal.list_runs()] == ["run-1"]
            assert await journal.events("run-1") == [(1, RunStarted(at=1.0))]
        finally:
            await journal.close()

    asyncio.run(main())


def test_an_empty_file_becomes_a_journal(tmp_path):
    path = tmp_path / "journal.db"
    path.touch()

    async def main():
        journal = await open_journal(path)
        await journal.close()

    asyncio.run(main())
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# -- append-only -------------------------------------------------------------------


@pytest.fixture
def filled_journal(tmp_path) -> Path:
    path = tmp_path / "journal.db"

    async def main():
        journal = await open_journal(path)
        await create(journal, record())
        for event in sample_events(3):
            journal.append("run-1", event)
        await journal.flush()
        await journal.close()

    asyncio.run(main())
    return path


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE events SET kind = 'task_succeeded' WHERE seq = 1",
        "UPDATE events SET data = NULL",
        "DELETE FROM events WHERE seq = 2",
        "DELETE FROM events",
        "UPDATE runs SET workflow = 'other'",
        "DELETE FROM runs",
    ],
)
def test_history_cannot_be_rewritten(filled_journal, sql):
    connection = sqlite3.connect(filled_journal)
    try:
        before_events = connection.execute("SELECT * FROM events ORDER BY seq").fetchall()
        before_runs = connection.execute("SELECT * FROM runs").fetchall()
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            connection.execute(sql)
        connection.commit()
        assert connection.execute("SELECT * FROM events ORDER BY seq").fetchall() == before_events
        assert connection.execute("SELECT * FROM runs").fetchall() == before_runs
        assert len(before_events) == 4
    finally:
        connection.close()


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT OR REPLACE INTO events (seq, run_id, task_id, attempt, kind, at, data)"
        " VALUES (1, 'run-1', 't0', 9, 'task_succeeded', 0.0, NULL)",
        "REPLACE INTO runs (run_id, workflow, spec, spec_hash, params, base_dir, created_at)"
        " VALUES ('run-1', 'forged', x'7b7d', 'h', x'7b7d', '/', 0.0)",
    ],
    ids=["events", "runs"],
)
def test_insert_or_replace_cannot_rewrite_history(filled_journal, sql):
    """`INSERT OR REPLACE` cannot rewrite an existing row of either table.

    REPLACE deletes the conflicting row without firing DELETE triggers (SQLite fires
    them only with `recursive_triggers` on), so the UPDATE/DELETE triggers alone would
    not see it: an INSERT trigger refuses an existing key.
    """
    connection = sqlite3.connect(filled_journal)
    try:
        before_events = connection.execute("SELECT * FROM events ORDER BY seq").fetchall()
        before_runs = connection.execute("SELECT * FROM runs").fetchall()
        try:
            connection.execute(sql)
            connection.commit()
        except sqlite3.DatabaseError as exc:
            assert "append-only" in str(exc)
        assert connection.execute("SELECT * FROM events ORDER BY seq").fetchall() == before_events
        assert connection.execute("SELECT * FROM runs").fetchall() == before_runs
    finally:
        connection.close()


def test_update_is_refused_through_the_journal_too(filled_journal):
    async def main():
        journal = await open_journal(filled_journal, create=False)
        try:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                await journal.execute("UPDATE events SET at = 0")
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                await journal.execute("DELETE FROM runs WHERE run_id = ?", ["run-1"])
            assert len(await journal.events("run-1")) == 4
        finally:
            await journal.close()

    asyncio.run(main())


# -- refusing what is not ours -----------------------------------------------------


def _refused(path: Path, match: str, **options) -> None:
    before = snapshot(path)
    mtime = path.stat().st_mtime_ns

    async def main():
        with pytest.raises(JournalError, match=match) as info:
            await Journal.open(path, **options)
        return info.value

    error = asyncio.run(main())
    assert str(path) in error.message
    assert snapshot(path) == before, "a refused file (or its folder) was modified"
    assert path.stat().st_mtime_ns == mtime
    assert not Path(f"{path}-wal").exists()
    assert not Path(f"{path}-shm").exists()
    assert not Path(f"{path}-journal").exists()
    assert not Path(f"{path}.locks").exists()


@pytest.mark.parametrize("create", [True, False])
def test_a_file_that_is_not_sqlite_is_left_untouched(tmp_path, create):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database\n" * 200 + bytes(range(256)))
    _refused(path, "not a SQLite database", create=create)


def test_a_file_with_a_truncated_sqlite_header_is_refused(tmp_path):
    path = tmp_path / "journal.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 10)
    _refused(path, "journal")


@pytest.mark.parametrize("create", [True, False])
def test_another_programs_sqlite_database_is_left_untouched(tmp_path, create):
    path = tmp_path / "app.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    connection.execute("INSERT INTO notes (body) VALUES ('keep me')")
    connection.commit()
    connection.close()
    _refused(path, "another program", create=create)
    assert sqlite3.connect(path).execute("SELECT body FROM notes").fetchall() == [("keep me",)]


@pytest.mark.parametrize("user_version", [0, 999], ids=["foreign", "newer"])
def test_a_refused_wal_mode_database_gets_no_side_files(tmp_path, user_version):
    """Refusing a WAL-mode SQLite file leaves nothing beside it: no `-wal`, no `-shm`.

    A plain `mode=ro` connection to a WAL database creates both and, being read-only,
    cannot remove them; `check_file` reads the version from the header (offset 60)
    and looks for foreign tables without side files.
    """
    path = tmp_path / "app.db"
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE notes (body TEXT)")
    connection.execute(f"PRAGMA user_version = {user_version}")
    connection.commit()
    connection.close()
    assert [p.name for p in tmp_path.iterdir()] == ["app.db"]
    _refused(path, "another program" if user_version == 0 else "newer")


@pytest.mark.parametrize("with_tables", [True, False])
def test_a_newer_schema_is_left_untouched(tmp_path, with_tables):
    path = tmp_path / "journal.db"
    connection = sqlite3.connect(path)
    if with_tables:
        connection.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, future TEXT)")
    connection.execute("PRAGMA user_version = 999")
    connection.commit()
    connection.close()
    _refused(path, "newer")


def test_a_directory_is_refused(tmp_path):
    path = tmp_path / "adir"
    path.mkdir()
    (path / "inside").write_text("x")

    async def main():
        with pytest.raises(JournalError):
            await Journal.open(path)

    asyncio.run(main())
    assert [p.name for p in path.iterdir()] == ["inside"]


@pytest.mark.parametrize("where", ["missing.db", "no/such/folder/journal.db"])
def test_create_false_on_a_missing_path_creates_nothing(tmp_path, where):
    path = tmp_path / where

    async def main():
        with pytest.raises(JournalError, match="no journal here"):
            await Journal.open(path, create=False)

    asyncio.run(main())
    assert list(tmp_path.iterdir()) == []


# -- writing and reading -----------------------------------------------------------


def test_group_commit_of_a_burst(tmp_path):
    """1000 appends without awaiting: all committed by one flush, in far fewer commits."""
    events = sample_events(1000)

    async def main():
        journal = await open_journal(tmp_path / "journal.db")
        try:
            opening = await create(journal, record())
            futures = [journal.append("run-1", event) for event in events]
            await journal.flush()
            assert all(future.done() and future.exception() is None for future in futures)
            assert journal.events_written == 1001  # the run's first event came with its row
            assert journal.commits <= 6, journal.commits
            return opening, await journal.events("run-1")
        finally:
            await journal.close()

    opening, read = asyncio.run(main())
    assert [event for _, event in read] == [opening, *events]
    assert [seq for seq, _ in read] == list(range(1, 1002))


def _wal_lengths(
    path: Path, monkeypatch: pytest.MonkeyPatch, limit: int, reader: bool = False
) -> tuple[list[int], int]:
    """Commit 3,000 events one at a time, as a chain of tasks does (each awaited),
    checkpointing every 200 events: the WAL's length each checkpoint found, and how
    often the writer waited for a second pass. `reader`: another connection keeps
    the snapshot it took after the first event all along."""
    from durable.journal import writer

    found: list[int] = []
    waits: list[int] = []
    real, finish = writer.checkpoint, writer.Journal._finish_checkpoint

    def spy(path: Path) -> int:
        found.append(real(path))
        return found[-1]

    async def counted(journal: Journal, loop: asyncio.AbstractEventLoop) -> None:
        waits.append(len(found))
        await finish(journal, loop)

    monkeypatch.setattr(writer, "checkpoint", spy)
    monkeypatch.setattr(writer.Journal, "_finish_checkpoint", counted)
    monkeypatch.setattr(writer, "CHECKPOINT_EVERY", 200)
    monkeypatch.setattr(writer, "WAL_LIMIT", limit)

    async def main() -> None:
        journal = await open_journal(path)
        snapshot = sqlite3.connect(path, isolation_level=None) if reader else None
        try:
            await create(journal, record())
            if snapshot is not None:
                snapshot.execute("BEGIN")
                snapshot.execute("SELECT count(*) FROM events").fetchone()
            for event in sample_events(3000):
                await journal.append("run-1", event)
        finally:
            if snapshot is not None:
                snapshot.close()
            await journal.close()

    asyncio.run(main())
    return found, len(waits)


def test_a_busy_journal_starts_its_wal_over(tmp_path, monkeypatch):
    """A checkpoint beside a writer that never stops copies the WAL as it was when
    it began, never whole, and SQLite starts a WAL over only once it is copied whole:
    without more, the WAL grows by every commit of the run. Past `WAL_LIMIT`, a
    second pass with the writer waiting copies the rest, and the WAL starts over."""
    mb = 2**20
    # The limit, plus what the writer adds between two checkpoints and during a
    # first pass (about 2 MB each here).
    bound = 8 * mb
    grown, waits = _wal_lengths(tmp_path / "grown.db", monkeypatch, limit=1 << 60)
    assert len(grown) >= 10 and waits == 0
    # About 1.7 MB more at each checkpoint, to 25 MB. A first pass that the writer
    # happens not to outrun (a loaded machine) may copy it whole once and start it
    # over, so only the bound is asserted, not the 25 MB.
    assert max(grown) > bound, [round(n / mb, 1) for n in grown]

    bounded, waits = _wal_lengths(tmp_path / "bounded.db", monkeypatch, limit=mb // 4)
    assert len(bounded) >= 10 and waits >= 3
    assert max(bounded) < bound, [round(n / mb, 1) for n in bounded]
    assert any(later < earlier for earlier, later in pairwise(bounded))


def test_a_wal_that_cannot_start_over_makes_the_writer_wait_ever_more_rarely(tmp_path, monkeypatch):
    """A reader that keeps an old snapshot (or another process writing) keeps the WAL
    from starting over, second pass or not. The writer then waits again only once
    the WAL has doubled: a few times in all, not at every checkpoint."""
    found, waits = _wal_lengths(tmp_path / "held.db", monkeypatch, limit=2**20 // 4, reader=True)
    over = [n for n in found if n >= 2**20 // 4]
    assert max(found) > 16 * 2**20 and len(over) >= 10  # it never started over
    assert 1 <= waits <= 8, (waits, len(over))  # 256 KB doubled to 24 MB: 7 at most


def test_group_commit_under_concurrent_writers(tmp_path):
    """Writers that each wait for their own commit share commits with each other."""

    async def writer(journal: Journal, number: int) -> None:
        for step in range(10):
            await journal.append(
                "run-1", TaskStarted(task_id=f"w{number}", attempt=step, at=float(step))
            )

    async def main():
        journal = await open_journal(tmp_path / "journal.db")
        try:
            await asyncio.gather(*(writer(journal, n) for n in range(100)))
            assert journal.events_written == 1000
            assert journal.commits < 100, journal.commits
            read = await journal.events("run-1")
        finally:
            await journal.close()
        assert len(read) == 1000
        for n in range(100):
            mine = [e.attempt for _, e in read if e.task_id == f"w{n}"]
            assert mine == list(range(10))  # each writer's events in its order

    asyncio.run(main())


def test_a_lone_append_resolves_when_committed(tmp_path):
    path = tmp_path / "journal.db"

    async def main():
        journal = await open_journal(path)
        try:
            await journal.append("run-1", RunStarted(at=1.0))
            # visible to another connection at once: it is committed, not just queued
            other = sqlite3.connect(path)
            try:
                assert other.execute("SELECT kind FROM events").fetchall() == [("run_started",)]
            finally:
                other.close()
            assert journal.commits == 1
        finally:
            await journal.close()

    asyncio.run(main())


def test_appends_before_start_are_queued(tmp_path):
    async def main():
        journal = await Journal.open(tmp_path / "journal.db", durability="off")
        try:
            future = journal.append("run-1", RunStarted(at=1.0))
            await asyncio.sleep(0.01)
            assert not future.done()
            journal.start()
            await future
            assert len(await journal.events("run-1")) == 1
        finally:
            await journal.close()

    asyncio.run(main())


def test_flush_waits_for_a_batch_already_being_written(tmp_path):
    """`flush()` waits for the batch the writer is committing, not only the queued one:
    when it returns, everything appended so far is committed."""
    path = tmp_path / "journal.db"

    async def main():
        journal = await open_journal(path)
        try:
            future = journal.append("run-1", RunStarted(at=1.0))
            await asyncio.sleep(0)  # the writer takes the batch and starts writing it
            await journal.flush()
            assert future.done(), "flush returned before the appended event was committed"
            assert journal.events_written == 1
        finally:
            await journal.close()

    asyncio.run(main())


def test_close_commits_what_is_queued_even_without_a_writer(tmp_path):
    """Appends made before `start()` are committed by `close()`, not dropped
    (`start()`: "appends before this are queued, not lost")."""
    path = tmp_path / "journal.db"

    async def main():
        journal = await Journal.open(path, durability="off")
        future = journal.append("run-1", RunStarted(at=1.0))
        await journal.close()
        assert future.done()

    asyncio.run(main())
    assert sqlite3.connect(path).execute("SELECT count(*) FROM events").fetchone()[0] == 1


CLOSE_RIGHT_AFTER_APPEND = """
import asyncio, sys
from durable.journal import Journal
from durable.events import RunStarted

async def main():
    journal = await Journal.open(sys.argv[1], durability="off")
    journal.start()
    await asyncio.sleep(0.05)            # the writer is idle, waiting for work
    journal.append("run-1", RunStarted(at=1.0))
    await journal.close()                # must commit it and return
    print("closed", journal.events_written)

asyncio.run(main())
"""


def test_close_right_after_an_append_does_not_hang(tmp_path):
    """`append()` then `close()` in the same step commits the event and returns.

    The writer wakes once for both (they set the same Event); it must see `_closing`
    after writing the batch rather than wait again. A run that crashes while tasks are
    being cancelled does exactly this in `arun`'s `finally: await journal.close()`.
    """
    path = tmp_path / "journal.db"
    try:
        done = subprocess.run(
            [sys.executable, "-c", CLOSE_RIGHT_AFTER_APPEND, str(path)],
            capture_output=True,
            text=True,
            timeout=60,  # a hang is forever; a loaded machine may take seconds to start Python
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("Journal.close() hung after an append it had not yet written")
    assert done.stdout.strip() == "closed 1", done.stderr


def test_events_read_back_equal_events_written_and_after(tmp_path):
    events = sample_events(30)

    async def main():
        journal = await open_journal(tmp_path / "journal.db")
        try:
            opening = await create(journal, record("a"))
            await create(journal, record("b", created_at=0.5))
            for event in events:
                journal.append("a", event)
                journal.append("b", RunStarted(at=event.at))
            await journal.flush()
            read_a = await journal.events("a")
            assert [e for _, e in read_a] == [opening, *events]
            tail = await journal.events("a", after=read_a[20][0])
            assert [e for _, e in tail] == events[20:]
            assert len(await journal.events("b")) == 31
            assert await journal.events("nobody") == []
            streamed = [item async for chunk in journal.read_events("a") for item in chunk]
            assert streamed == read_a
        finally:
            await journal.close()

    asyncio.run(main())


def test_runs_table(tmp_path):
    async def main():
        journal = await open_journal(tmp_path / "journal.db")
        try:
            await create(journal, record("late", created_at=5.0))
            await create(journal, record("early", created_at=1.0))
            with pytest.raises(RunExists):
                await create(journal, record("late"))
            got = await journal.get_run("early")
            assert got.crc is not None
            assert msgspec.structs.replace(got, crc=None) == record("early", created_at=1.0)
            assert got.params == {"n": 1, "tags": ["x"]}
            assert [run.run_id for run in await journal.list_runs()] == ["early", "late"]
            with pytest.raises(RunNotFound, match="'ghost'"):
                await journal.get_run("ghost")
        finally:
            await journal.close()

    asyncio.run(main())


# -- the run lock ------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from durable.runlock import RunLock
lock = RunLock(Path(sys.argv[1]), sys.argv[2])
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def _start_holder(journal_path: Path, run_id: str) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(journal_path), run_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    line = holder.stdout.readline()
    if line.strip() != "held":
        holder.kill()
        pytest.fail(f"lock holder did not start: {holder.stderr.read()}")
    return holder


def test_run_lock_is_exclusive_across_processes_and_released_by_death(tmp_path):
    journal_path = tmp_path / "journal.db"
    lock = RunLock(journal_path, "run-1")
    assert not lock.is_held_elsewhere()
    assert not lock.path.exists(), "is_held_elsewhere must not create the lock file"

    holder = _start_holder(journal_path, "run-1")
    try:
        assert lock.is_held_elsewhere()
        with pytest.raises(RunLocked, match="run-1"):
            lock.acquire()
        # another run's lock is independent
        with RunLock(journal_path, "run-2") as other:
            assert other.path.parent == lock.path.parent
        holder.send_signal(signal.SIGKILL)  # no chance to clean up: the OS releases flock
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert holder.returncode == -signal.SIGKILL

    assert not lock.is_held_elsewhere()
    lock.acquire()
    try:
        assert lock.path == Path(f"{journal_path}.locks") / "run-1"
        # and now a second process cannot take it from us
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                HOLDER.replace("time.sleep(60)", ""),
                str(journal_path),
                "run-1",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
        assert probe.returncode != 0
        assert "RunLocked" in probe.stderr
    finally:
        lock.release()
    assert not lock.is_held_elsewhere()
    lock.release()  # releasing twice is harmless


def test_run_lock_in_one_process(tmp_path):
    first = RunLock(tmp_path / "journal.db", "r")
    second = RunLock(tmp_path / "journal.db", "r")
    with first, pytest.raises(RunLocked):
        second.acquire()
    with second:
        pass
    start = time.monotonic()
    with first:
        pass
    assert time.monotonic() - start < 1  # never blocks


def test_lock_file_is_left_in_place(tmp_path):
    lock = RunLock(tmp_path / "journal.db", "r")
    with lock:
        pass
    assert lock.path.exists()
    assert os.path.getsize(lock.path) == 0
