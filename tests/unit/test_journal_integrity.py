"""durable/journal/: damage is found where it is read, old journals upgrade, and a
journal that cannot be written or opened in place is still read.

The corruption campaign (`tests/e2e/test_corruption_campaign.py`) flips bytes of a
real file; these tests make one precise change each, with the append-only triggers
dropped from a copy (as a disk fault would ignore them), and check the exact words.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from durable.errors import JournalDamaged, JournalError
from durable.events import RunStarted, TaskStarted, TaskSucceeded
from durable.journal import Journal, RunRecord
from durable.journal import file as journal_file
from durable.journal.schema import configure


def record(run_id: str) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        workflow="wf",
        spec=b'{"name":"wf","tasks":[{"id":"a","tool":"echo"}]}',
        spec_hash="h",
        params={"n": 1},
        base_dir="/b",
        created_at=1.0,
        cwd="/c",
    )


async def write_runs(path: Path, *run_ids: str) -> None:
    journal = await Journal.open(path, durability="off")
    journal.start()
    try:
        for run_id in run_ids:
            await journal.create_run(record(run_id), RunStarted(at=1.0))
            journal.append(run_id, TaskStarted(task_id="a", attempt=1, at=2.0))
            journal.append(run_id, TaskSucceeded(task_id="a", attempt=1, at=3.0, output=41))
            await journal.flush()  # each run's events in a row: r1 is seq 1-3, r2 4-6
    finally:
        await journal.close()


def tamper(path: Path, *statements: str) -> None:
    """Change rows as a fault would: below the triggers that refuse it to SQL."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        names = connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        for (name,) in names.fetchall():
            connection.execute(f"DROP TRIGGER {name}")
        for statement in statements:
            connection.execute(statement)
    finally:
        connection.close()


async def read(path: Path, run_id: str):
    journal = await Journal.open(path, create=False, readonly=True)
    try:
        return await journal.get_run(run_id), await journal.events(run_id)
    finally:
        await journal.close()


async def damage(path: Path, run_id: str) -> tuple[int, list[str]]:
    journal = await Journal.open(path, create=False, readonly=True)
    try:
        return await journal.damage(run_id)
    finally:
        await journal.close()


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    path = tmp_path / "j.db"
    asyncio.run(write_runs(path, "r1", "r2"))
    return path


def test_a_whole_journal_reads_back(journal_path):
    run, events = asyncio.run(read(journal_path, "r1"))
    assert run.crc is not None and run.params == {"n": 1} and run.cwd == "/c"
    assert [type(e).__name__ for _, e in events] == ["RunStarted", "TaskStarted", "TaskSucceeded"]
    assert asyncio.run(damage(journal_path, "r1")) == (3, [])


def test_a_changed_output_is_found_and_named(journal_path):
    tamper(
        journal_path,
        "UPDATE events SET data = x'28' WHERE run_id = 'r1' AND kind = 'task_succeeded'",
    )
    with pytest.raises(JournalDamaged) as caught:
        asyncio.run(read(journal_path, "r1"))
    assert caught.value.run_id == "r1"
    assert caught.value.message.endswith(
        "run 'r1' is damaged: event 3 (task_succeeded of task 'a') does not match its "
        "checksum, or an event before it is missing"
    )
    assert asyncio.run(damage(journal_path, "r1"))[1] == [
        "event 3 (task_succeeded of task 'a') does not match its checksum, or an event "
        "before it is missing"
    ]
    asyncio.run(read(journal_path, "r2"))  # the other run is untouched


def test_a_lost_event_breaks_the_chain_at_the_next_one(journal_path):
    tamper(journal_path, "DELETE FROM events WHERE seq = 2")
    count, problems = asyncio.run(damage(journal_path, "r1"))
    assert count == 2
    assert problems == [
        "event 3 (task_succeeded of task 'a') does not match its checksum, or an event "
        "before it is missing"
    ]


def test_a_run_whose_events_are_all_gone_is_damaged(journal_path):
    tamper(journal_path, "DELETE FROM events WHERE run_id = 'r2'")
    assert asyncio.run(damage(journal_path, "r2"))[1] == [
        "it has no events: its history is missing"
    ]


def test_an_event_moved_to_another_run_breaks_both_chains(journal_path):
    tamper(journal_path, "UPDATE events SET run_id = 'r2' WHERE seq = 2")
    assert asyncio.run(damage(journal_path, "r1"))[1] != []
    assert any("event 2" in problem for problem in asyncio.run(damage(journal_path, "r2"))[1])


def test_a_changed_run_row_is_damaged_and_the_others_are_listed(journal_path):
    tamper(journal_path, "UPDATE runs SET params = '{\"n\":2}' WHERE run_id = 'r1'")
    with pytest.raises(
        JournalDamaged, match="run 'r1' is damaged: its row does not match its checksum"
    ):
        asyncio.run(read(journal_path, "r1"))

    async def listing():
        journal = await Journal.open(journal_path, create=False, readonly=True)
        try:
            return await journal.list_runs()
        finally:
            await journal.close()

    first, second = asyncio.run(listing())
    assert isinstance(first, JournalDamaged) and first.run_id == "r1"
    assert isinstance(second, RunRecord) and second.run_id == "r2"


def test_a_failed_commit_names_the_journal_and_the_cause(tmp_path):
    path = tmp_path / "j.db"

    async def main():
        journal = await Journal.open(path, durability="off")
        journal.start()
        try:
            await journal.create_run(record("r"), RunStarted(at=1.0))
            journal._write_conn.execute("PRAGMA query_only=1")  # every write now fails
            future = journal.append("r", TaskStarted(task_id="a", attempt=1, at=2.0))
            with pytest.raises(JournalError) as caught:
                await future
            journal._write_conn.execute("PRAGMA query_only=0")
            return caught.value
        finally:
            await journal.close()

    error = asyncio.run(main())
    assert error.message.startswith(f"{path}: cannot write: ")
    assert "readonly" in error.message or "read-only" in error.message


def test_a_refused_one_statement_batch_writes_none_of_its_rows(tmp_path):
    """A batch that is one INSERT commits without BEGIN, as its own transaction
    (`Journal._write`). Refused at its second row, it leaves neither row, no
    transaction open, and the checksum chain where the file is: the next batch
    chains from the last row that did commit, and the run reads back verified."""
    path = tmp_path / "j.db"

    async def main() -> tuple[JournalError, bool, list[tuple[str | None, str]]]:
        journal = await Journal.open(path, durability="off")
        journal.start()
        try:
            await journal.create_run(record("r"), RunStarted(at=1.0))
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.task_id = 'b'"
                " BEGIN SELECT RAISE(ABORT, 'no b'); END"
            )
            journal.append("r", TaskStarted(task_id="a", attempt=1, at=2.0))
            refused = journal.append("r", TaskStarted(task_id="b", attempt=1, at=2.0))
            with pytest.raises(JournalError) as caught:
                await refused
            left_open = journal._write_conn.in_transaction
            blocker.execute("DROP TRIGGER refuse")
            blocker.close()
            journal.append("r", TaskStarted(task_id="c", attempt=1, at=3.0))
            journal.append("r", TaskSucceeded(task_id="c", attempt=1, at=3.5, output=1))
            await journal.flush()
            events = await journal.events("r")  # each row checked against its chain
            return (
                caught.value,
                left_open,
                [(getattr(e, "task_id", None), type(e).__name__) for _, e in events],
            )
        finally:
            await journal.close()

    error, left_open, events = asyncio.run(main())
    assert "no b" in error.message
    assert left_open is False
    assert events == [(None, "RunStarted"), ("c", "TaskStarted"), ("c", "TaskSucceeded")]
    assert asyncio.run(damage(path, "r")) == (3, [])


def test_the_writer_connection_is_set_up_as_documented(tmp_path):
    connection = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
    configure(connection, "normal")
    pragma = {
        name: connection.execute(f"PRAGMA {name}").fetchone()[0]
        for name in (
            "journal_mode",
            "synchronous",
            "busy_timeout",
            "wal_autocheckpoint",
            "user_version",
        )
    }
    connection.close()
    assert pragma == {
        "journal_mode": "wal",
        "synchronous": 1,  # NORMAL
        "busy_timeout": 5000,
        "wal_autocheckpoint": 0,
        "user_version": 4,
    }


# -- journals written before checksums ------------------------------------------------

V1 = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, spec BLOB NOT NULL,
    spec_hash TEXT NOT NULL, params BLOB NOT NULL, base_dir TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE events (seq INTEGER PRIMARY KEY, run_id TEXT NOT NULL, task_id TEXT, attempt INTEGER,
    kind TEXT NOT NULL, at REAL NOT NULL, data BLOB);
CREATE INDEX events_by_run ON events (run_id, seq);
INSERT INTO runs VALUES ('old', 'wf', '{"name":"wf","tasks":[{"id":"a","tool":"echo"}]}', 'h', '{}', '/b', 1.0);
INSERT INTO events (run_id, task_id, attempt, kind, at, data) VALUES ('old', NULL, NULL, 'run_started', 1.0, NULL);
INSERT INTO events (run_id, task_id, attempt, kind, at, data) VALUES ('old', 'a', 1, 'task_started', 2.0, NULL);
PRAGMA user_version = 1;
"""


def test_a_schema_1_journal_is_read_unchecked_and_upgraded_when_written(tmp_path):
    path = tmp_path / "j.db"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.executescript(V1)
    connection.close()

    run, events = asyncio.run(read(path, "old"))  # read-only: nothing changes
    assert run.crc is None and run.cwd is None and len(events) == 2
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 1

    async def append_one():
        journal = await Journal.open(path, create=False, durability="off")
        journal.start()
        try:
            journal.append("old", TaskSucceeded(task_id="a", attempt=1, at=3.0, output=1))
            await journal.flush()
        finally:
            await journal.close()

    asyncio.run(append_one())
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 4
    count, problems = asyncio.run(damage(path, "old"))
    assert (count, problems) == (3, [])
    crcs = [row[0] for row in sqlite3.connect(path).execute("SELECT crc FROM events ORDER BY seq")]
    assert crcs[:2] == [None, None] and crcs[2] is not None


# -- reading where the journal cannot be written ----------------------------------------


def test_describe_names_a_full_disk_damage_and_permissions(tmp_path):
    def error(name: str, text: str) -> sqlite3.OperationalError:
        exc = sqlite3.OperationalError(text)
        exc.sqlite_errorname = name
        return exc

    assert journal_file.describe(error("SQLITE_FULL", "database or disk is full")).startswith(
        "no space left on the device, or the file is too large"
    )
    assert journal_file.describe(error("SQLITE_CORRUPT", "malformed")).startswith(
        "the journal file is damaged (malformed); `durable check` says more"
    )
    assert "check the permissions of the file and its folder" in journal_file.describe(
        error("SQLITE_READONLY", "attempt to write a readonly database")
    )
    assert journal_file.describe(error("SQLITE_BUSY", "database is locked")) == "database is locked"
    assert journal_file.describe(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")).startswith(
        "the journal file is damaged (its schema cannot be read)"
    )


@pytest.fixture
def unwritable_folder(monkeypatch):
    """SQLite answers as it does where `-shm` cannot be created (root ignores modes,
    so the refusal is simulated at the one probe that would meet it)."""
    real_connect = sqlite3.connect

    def connect(target, *args, **kwargs):
        if (
            isinstance(target, str)
            and target.endswith("?mode=ro")
            and "durable-read-" not in target
        ):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real_connect(target, *args, **kwargs)

    monkeypatch.setattr(journal_file.sqlite3, "connect", connect)


def test_without_a_wal_a_read_only_folder_reads_the_file_as_it_is(journal_path, unwritable_folder):
    access = journal_file.readable(journal_path)
    try:
        assert access.uri.endswith("?mode=ro&immutable=1") and access.copy_dir is None
    finally:
        access.cleanup()


def test_with_a_wal_a_read_only_folder_reads_a_private_copy(tmp_path, unwritable_folder):
    path = tmp_path / "j.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("PRAGMA wal_autocheckpoint=0")
    holder.execute("CREATE TABLE t (x)")
    holder.execute("INSERT INTO t VALUES (7)")  # only in the WAL while holder stays open
    access = journal_file.readable(path)
    try:
        assert access.copy_dir is not None and "durable-read-" in access.uri
        copy = sqlite3.connect(access.uri, uri=True)
        assert copy.execute("SELECT x FROM t").fetchall() == [(7,)]
        copy.close()
    finally:
        folder = access.copy_dir
        access.cleanup()
        holder.close()
    assert folder is not None and not Path(folder).exists()
