"""durable/prune.py on SQLite, called directly: what is SQLite's own. A dry run writes
nothing to the file (not even a lock file); the deletion drops and re-creates the
append-only triggers inside one transaction, under the runs' lock files, so that no
other connection sees the journal without them (and restores everything when it
fails half-way, at any statement); SQLite's integrity check comes first; VACUUM
gives the space back; a run whose lock another process holds is refused.

What a prune does on either backend (which runs it selects, that it deletes whole
runs and nothing else, refusals, the cache) is `test_prune_contract.py`. The
journals are real ones, written by `durable.runner.arun`. The `durable prune`
command itself (its output, VACUUM beside a live driver) is `e2e/test_operator_cli.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from journal_tables import make_runs, rows_of, tables_with_run_id

from durable import prune
from durable.check import check_journal
from durable.errors import JournalError
from durable.journal import Journal
from durable.journal.schema import APPEND_ONLY_TRIGGERS
from durable.prune import Candidate, RunIsRunning, SqlitePruning
from durable.runlock import RunLock
from durable.spec import from_data

T = TypeVar("T")

# About 0.1 MB of outputs per run: enough for VACUUM to give pages back.
BULKY = from_data(
    {
        "name": "bulky",
        "tasks": [
            {
                "id": "big",
                "tool": "echo",
                "foreach": [0, 1, 2, 3, 4],
                "input": {"i": "${item}", "pad": "x" * 20_000},
            }
        ],
    }
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Four small finished runs, created in this order."""
    return make_runs(tmp_path / "j.db", ["r1", "r2", "r3", "r4"])


def done(coroutine: Coroutine[Any, Any, T]) -> T:
    """A `Pruning` method's result: SQLite's run at once, on a loop of their own."""
    return asyncio.run(coroutine)


def pruning(connection: Any, db: Path) -> SqlitePruning:
    """The prune's side of the journal, on `connection` (a `Spy`, or a real one)."""
    return SqlitePruning(cast(sqlite3.Connection, connection), db)


def query(db: Path, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db, isolation_level=None)) as connection:
        return connection.execute(sql, parameters).fetchall()


def schema(db: Path) -> list[tuple[Any, ...]]:
    return query(db, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")


def everything(db: Path) -> dict[str, Any]:
    """The whole journal: every table's rows and the schema."""
    tables = [row[0] for row in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    dump: dict[str, Any] = {t: sorted(query(db, f"SELECT * FROM {t}"), key=repr) for t in tables}
    dump["sqlite_master"] = schema(db)
    return dump


def count(db: Path, table: str, run_id: str) -> int:
    return cast(int, query(db, f"SELECT count(*) FROM {table} WHERE run_id = ?", (run_id,))[0][0])


def trigger_names(connection: sqlite3.Connection) -> set[str]:
    rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    return {row[0] for row in rows}


def lock_is_free(db: Path, run_id: str) -> bool:
    lock = RunLock(db, run_id)
    try:
        lock.acquire()
    except Exception:
        return False
    lock.release()
    return True


def pruned(db: Path, run_ids: Sequence[str]) -> list[Candidate]:
    """What `durable prune RUN_ID...` does, without the command."""
    with closing(prune.connect(db)) as connection:
        journal = pruning(connection, db)
        deleted = done(journal.delete_runs(done(journal.by_id(run_ids))))
        done(journal.reclaim())
    return deleted


class Spy:
    """A connection that records its statements, and can run something or fail at one."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        *,
        on: Callable[[str, tuple[Any, ...]], None] | None = None,
        fail_at: str | None = None,
        error: BaseException | None = None,
        answer: dict[str, list[tuple[Any, ...]]] | None = None,
    ) -> None:
        self.connection = connection
        self.statements: list[str] = []
        self.on, self.fail_at, self.error, self.answer = on, fail_at, error, answer or {}

    @property
    def in_transaction(self) -> bool:
        return self.connection.in_transaction

    def execute(self, sql: str, parameters: tuple[Any, ...] = ()) -> Any:
        self.statements.append(sql)
        if self.on is not None:
            self.on(sql, parameters)
        if self.fail_at is not None and sql.startswith(self.fail_at):
            assert self.error is not None
            raise self.error
        if sql in self.answer:
            return _Rows(self.answer[sql])
        return self.connection.execute(sql, parameters)

    def ran(self, prefix: str) -> bool:
        return any(sql.startswith(prefix) for sql in self.statements)


class _Rows:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows


HOLD = """\
import sys
from pathlib import Path
from durable.runlock import RunLock

lock = RunLock(Path(sys.argv[1]), sys.argv[2])
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def driven_elsewhere(db: Path, run_id: str) -> Iterator[None]:
    """Another live process holds the run's lock, as a process driving it does."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db), run_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        assert process.stdout.readline() == "held\n"
        yield
    finally:
        process.stdin.close()
        process.wait(timeout=30)


# -- a dry run ----------------------------------------------------------------------------


def test_a_dry_run_writes_nothing(db: Path) -> None:
    """What `durable prune --dry-run` does: a read-only connection, the listing, and the
    check for live drivers, which takes no lock and makes no lock file."""
    locks = Path(f"{db}.locks")
    for lock_file in locks.iterdir():
        lock_file.unlink()
    wal = Path(f"{db}-wal")
    assert not wal.exists()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    size = db.stat().st_size

    with closing(prune.connect(db, readonly=True)) as connection:
        journal = pruning(connection, db)
        candidates = done(journal.by_id(["r2", "r4"])) + done(journal.created_before(math.inf))
        done(journal.refuse_running(candidates))
        assert done(journal.size()) == size
        for sql in ("DELETE FROM summaries", "INSERT INTO summaries VALUES ('x', 1, x'00', 1)"):
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                connection.execute(sql)

    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert not wal.exists() or wal.stat().st_size == 0
    assert list(locks.iterdir()) == []
    assert [row[0] for row in query(db, "SELECT run_id FROM runs ORDER BY rowid")] == [
        "r1", "r2", "r3", "r4",
    ]  # fmt: skip


def test_connect_refuses_what_is_not_a_journal_and_creates_nothing(tmp_path: Path) -> None:
    for readonly in (False, True):
        with pytest.raises(JournalError, match="no journal here"):
            prune.connect(tmp_path / "none.db", readonly=readonly)
        assert list(tmp_path.iterdir()) == []
    other = tmp_path / "notes.txt"
    other.write_text("not a journal\n" * 20)
    for readonly in (False, True):
        with pytest.raises(JournalError, match="not a SQLite database"):
            prune.connect(other, readonly=readonly)
    assert other.read_text() == "not a journal\n" * 20


# -- deleting -----------------------------------------------------------------------------


def test_a_prune_leaves_the_file_sound_its_schema_and_its_lock_files(db: Path) -> None:
    schema_before = schema(db)

    pruned(db, ["r4", "r2"])

    # The schema SQL (the triggers' too) is the very same; the file is sound.
    assert schema(db) == schema_before
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert query(db, "PRAGMA foreign_key_check") == []

    async def check() -> None:
        journal = await Journal.open(db, create=False, readonly=True)
        try:
            report = await check_journal(journal)
        finally:
            await journal.close()
        assert (report.runs, report.problems) == (2, [])

    asyncio.run(check())
    # Lock files stay, as they always do; the locks themselves are free.
    assert sorted(p.name for p in Path(f"{db}.locks").iterdir()) == ["r1", "r2", "r3", "r4"]
    assert all(lock_is_free(db, run_id) for run_id in ("r2", "r4"))


def test_the_triggers_are_back_after_a_prune_and_refuse_as_before(db: Path) -> None:
    pruned(db, ["r1"])
    before = everything(db)
    with closing(sqlite3.connect(db, isolation_level=None)) as connection:
        assert trigger_names(connection) == set(APPEND_ONLY_TRIGGERS)
        for sql in (
            "DELETE FROM events",
            "DELETE FROM events WHERE run_id = 'r2'",
            "UPDATE events SET at = at + 1 WHERE run_id = 'r3'",
            "DELETE FROM runs",
            "DELETE FROM runs WHERE run_id = 'r2'",
            "UPDATE runs SET workflow = 'x'",
            "INSERT OR REPLACE INTO runs SELECT * FROM runs WHERE run_id = 'r2'",
            "INSERT OR REPLACE INTO events SELECT * FROM events WHERE run_id = 'r2'",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                connection.execute(sql)
    assert everything(db) == before


def test_the_triggers_are_dropped_only_inside_the_transaction_under_the_locks(
    db: Path,
) -> None:
    """While the rows go, another connection still sees every trigger (nothing was
    committed without them), and the run's lock is held."""
    seen: list[tuple[str, str]] = []

    def look(sql: str, parameters: tuple[Any, ...]) -> None:
        if sql.startswith("DELETE FROM"):
            with closing(sqlite3.connect(db, isolation_level=None)) as other:
                assert trigger_names(other) == set(APPEND_ONLY_TRIGGERS), sql
            (run_id,) = parameters
            assert RunLock(db, run_id).is_held_elsewhere(), run_id
            seen.append((sql.split()[2], run_id))

    with closing(prune.connect(db)) as connection:
        spy = Spy(connection, on=look)
        candidates = done(pruning(connection, db).by_id(["r3", "r1"]))
        done(pruning(spy, db).delete_runs(candidates))
        assert not connection.in_transaction
        assert trigger_names(connection) == set(APPEND_ONLY_TRIGGERS)
    assert sorted(seen) == sorted(
        (table, run_id) for table in tables_with_run_id(db) for run_id in ("r3", "r1")
    )
    # One transaction, around all of it.
    assert spy.statements.count("BEGIN IMMEDIATE") == 1
    assert spy.statements.count("COMMIT") == 1
    begin, commit = spy.statements.index("BEGIN IMMEDIATE"), spy.statements.index("COMMIT")
    assert [sql for sql in spy.statements if sql.startswith(("DROP", "DELETE", "CREATE"))] == [
        sql for sql in spy.statements[begin:commit] if sql.startswith(("DROP", "DELETE", "CREATE"))
    ]
    assert all(lock_is_free(db, run_id) for run_id in ("r1", "r3"))


def test_reclaim_gives_the_space_back(tmp_path: Path) -> None:
    db = make_runs(tmp_path / "j.db", ["b1", "b2", "b3", "b4"], BULKY)
    before = prune.journal_size(db)
    assert before == db.stat().st_size  # a journal closed cleanly has no WAL
    kept = rows_of(db, but=("b1", "b2", "b3"))

    wal = Path(f"{db}-wal")
    with closing(prune.connect(db)) as connection:
        journal = pruning(connection, db)
        done(journal.delete_runs(done(journal.by_id(["b1", "b2", "b3"]))))
        # Committed to the WAL, not yet in the file: the size counts both.
        assert wal.stat().st_size > 0
        assert done(journal.size()) == db.stat().st_size + wal.stat().st_size
        done(journal.reclaim())
        # VACUUMed through the WAL, which was then checkpointed into the file and
        # truncated, with this connection still open.
        assert wal.stat().st_size == 0
        after = done(journal.size())
        assert after == db.stat().st_size
        assert after < before * 0.5, (before, after)

    assert rows_of(db, but=("b1", "b2", "b3")) == kept
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert prune.journal_size(tmp_path / "none.db") == 0


# -- failing half-way ---------------------------------------------------------------------


def _no_triggers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prune, "APPEND_ONLY_TRIGGERS", {})  # KeyError after the DELETEs


def _bad_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = dict(APPEND_ONLY_TRIGGERS, events_append_only_delete="CREATE TRIGGER oops")
    monkeypatch.setattr(prune, "APPEND_ONLY_TRIGGERS", broken)


@pytest.mark.parametrize(
    ("breaking", "fail_at", "error", "expected"),
    [
        (_no_triggers, None, None, KeyError),
        (_bad_trigger, None, None, JournalError),
        (None, "COMMIT", sqlite3.OperationalError("disk I/O error"), JournalError),
        (None, "COMMIT", KeyboardInterrupt(), KeyboardInterrupt),
        (None, "CREATE TRIGGER", RuntimeError("boom"), RuntimeError),
    ],
    ids=["no-trigger-sql", "bad-trigger-sql", "commit-fails", "interrupted-at-commit", "raises"],
)
def test_a_failure_after_the_deletes_rolls_everything_back(
    db: Path,
    monkeypatch: pytest.MonkeyPatch,
    breaking: Callable[[pytest.MonkeyPatch], None] | None,
    fail_at: str | None,
    error: BaseException | None,
    expected: type[BaseException],
) -> None:
    before = everything(db)
    with closing(prune.connect(db)) as connection:
        candidates = done(pruning(connection, db).by_id(["r1", "r3"]))
        if breaking is not None:
            breaking(monkeypatch)
        spy = Spy(connection, fail_at=fail_at, error=error)
        with pytest.raises(expected) as raised:
            done(pruning(spy, db).delete_runs(candidates))
        if expected is JournalError:
            assert "nothing was pruned" in str(raised.value)
        # It failed after the rows had gone, inside the transaction...
        assert spy.ran("DELETE FROM runs") and spy.ran("DROP TRIGGER")
        assert spy.statements[-1] == "ROLLBACK"
        assert not connection.in_transaction
        # ...and everything is back, the triggers first of all, for this connection too.
        assert trigger_names(connection) == set(APPEND_ONLY_TRIGGERS)
        for sql in ("DELETE FROM events WHERE run_id = 'r1'", "DELETE FROM runs"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                connection.execute(sql)
    assert everything(db) == before
    assert all(lock_is_free(db, run_id) for run_id in ("r1", "r3"))

    # Nothing was left half-done: the same prune, unbroken, goes through.
    monkeypatch.undo()
    assert [c.run_id for c in pruned(db, ["r1", "r3"])] == ["r1", "r3"]
    assert rows_of(db, ["r1", "r3"]) == {table: [] for table in tables_with_run_id(db)}


def test_a_damaged_file_is_not_pruned(db: Path) -> None:
    """SQLite's integrity check comes first: a damaged index could hide rows."""
    before = everything(db)
    with closing(prune.connect(db)) as connection:
        spy = Spy(connection, answer={"PRAGMA integrity_check": [("row 3 missing",)]})
        candidates = done(pruning(connection, db).by_id(["r2"]))
        with pytest.raises(JournalError, match=r"damaged.*nothing was pruned"):
            done(pruning(spy, db).delete_runs(candidates))
        assert spy.statements == ["PRAGMA integrity_check"]
    assert everything(db) == before
    assert lock_is_free(db, "r2")


# -- running runs -------------------------------------------------------------------------


def test_a_run_driven_by_a_live_process_is_refused_and_nothing_is_pruned(db: Path) -> None:
    before = everything(db)
    with driven_elsewhere(db, "r3"):
        with closing(prune.connect(db)) as connection:
            journal = pruning(connection, db)
            candidates = done(journal.by_id(["r1", "r3", "r4"]))
            # The dry run's check: no lock taken.
            with pytest.raises(RunIsRunning) as raised:
                done(journal.refuse_running(candidates))
            assert raised.value.run_id == "r3"
            assert "run 'r3' is running" in str(raised.value)
            done(journal.refuse_running([c for c in candidates if c.run_id != "r3"]))
            # The prune itself: refused at r3's lock, after r1's was taken.
            spy = Spy(connection)
            with pytest.raises(RunIsRunning) as raised:
                done(pruning(spy, db).delete_runs(candidates))
            assert raised.value.run_id == "r3"
            assert spy.statements == []
            assert not connection.in_transaction
        assert everything(db) == before
        # r1's lock was let go; r3's is still the other process's.
        assert lock_is_free(db, "r1") and lock_is_free(db, "r4")
        assert RunLock(db, "r3").is_held_elsewhere()

    # The driver gone, the same prune goes through.
    assert [c.run_id for c in pruned(db, ["r1", "r3", "r4"])] == ["r1", "r3", "r4"]
    assert [row[0] for row in query(db, "SELECT run_id FROM runs")] == ["r2"]
