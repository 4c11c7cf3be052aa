"""durable/prune.py, called directly: which runs a prune selects, that a dry run writes
nothing, that a prune deletes whole runs and nothing else, inside one transaction that
leaves the append-only triggers in place for everyone else (and restores everything
when it fails half-way), and that a run a live process drives is refused.

The journals are real ones, written by `durable.runner.arun`. The `durable prune`
command itself (its output, VACUUM beside a live driver) is `e2e/test_operator_cli.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, cast

import pytest

from durable import prune
from durable.check import check_journal
from durable.errors import JournalError, RunNotFound
from durable.journal import Journal
from durable.journal.schema import APPEND_ONLY_TRIGGERS
from durable.prune import Candidate, RunIsRunning
from durable.runlock import RunLock
from durable.runner import arun
from durable.spec import Workflow, from_data

SMALL = from_data(
    {
        "name": "small",
        "params": {"n": 1},
        "tasks": [
            {"id": "a", "tool": "echo", "input": {"n": "${params.n}"}},
            {"id": "fan", "tool": "echo", "foreach": [1, 2], "input": {"i": "${item}"}},
            {"id": "b", "tool": "echo", "dependencies": ["a"], "input": "${a.output}"},
        ],
    }
)
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
# The same work with the cache across runs on (`durable run --cache`).
CACHED = from_data(
    {
        "name": "cached",
        "cache": True,
        "params": {"n": 1},
        "tasks": [{"id": "a", "tool": "echo", "input": {"n": "${params.n}"}}],
    }
)


def make_journal(
    db: Path, run_ids: Sequence[str], workflow: Workflow = SMALL, params: Any = None
) -> Path:
    for run_id in run_ids:
        result = asyncio.run(arun(workflow, params, db=db, run_id=run_id, durability="off"))
        assert result.status == "succeeded"
    return db


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Four small finished runs, created in this order."""
    return make_journal(tmp_path / "j.db", ["r1", "r2", "r3", "r4"])


def query(db: Path, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db, isolation_level=None)) as connection:
        return connection.execute(sql, parameters).fetchall()


def schema(db: Path) -> list[tuple[Any, ...]]:
    return query(db, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")


def tables_with_run_id(db: Path) -> list[str]:
    """Every table that has a `run_id` column: whatever the schema holds today."""
    names = [row[0] for row in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    return [
        name
        for name in names
        if "run_id" in [column[1] for column in query(db, f"PRAGMA table_info({name})")]
    ]


def rows_of(db: Path, run_ids: Sequence[str] | None = None, *, but: Sequence[str] = ()) -> Any:
    """Every row of every table that has a run_id, as stored: of `run_ids` (all if None),
    leaving out those of `but`."""
    found = {}
    for table in tables_with_run_id(db):
        rows = query(db, f"SELECT * FROM {table}")
        found[table] = sorted(
            (
                row
                for row in rows
                if (run_ids is None or row_run_id(db, table, row) in run_ids)
                and row_run_id(db, table, row) not in but
            ),
            key=repr,
        )
    return found


def row_run_id(db: Path, table: str, row: tuple[Any, ...]) -> str:
    columns = [column[1] for column in query(db, f"PRAGMA table_info({table})")]
    return cast(str, row[columns.index("run_id")])


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
        done = prune.delete_runs(connection, db, prune.by_id(connection, db, run_ids))
        prune.reclaim(connection, db)
    return done


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


# -- selection ----------------------------------------------------------------------------


def test_by_id_takes_whole_ids_in_the_order_given_each_once(db: Path) -> None:
    with closing(prune.connect(db, readonly=True)) as connection:
        found = prune.by_id(connection, db, ["r3", "r1", "r3"])
        assert [candidate.run_id for candidate in found] == ["r3", "r1"]
        for candidate in found:
            ((workflow, created_at),) = query(
                db, "SELECT workflow, created_at FROM runs WHERE run_id = ?", (candidate.run_id,)
            )
            assert candidate == Candidate(
                candidate.run_id, workflow, created_at, count(db, "events", candidate.run_id)
            )
            assert workflow == "small" and candidate.events > 4

        # A prefix names nothing; one unknown id refuses the whole list.
        for ids in (["nope"], ["r"], ["r1", "nope", "r2"], [""]):
            with pytest.raises(RunNotFound) as raised:
                prune.by_id(connection, db, ids)
            assert raised.value.run_id == next(i for i in ids if i not in ("r1", "r2"))
        assert prune.by_id(connection, db, []) == []


def test_created_before_takes_the_older_runs_oldest_first(tmp_path: Path) -> None:
    # Ids in an order that is not the order of creation.
    db = make_journal(tmp_path / "j.db", ["c-old", "a-mid", "b-new"])
    created = dict(query(db, "SELECT run_id, created_at FROM runs"))
    assert created["c-old"] < created["a-mid"] < created["b-new"]

    def ids(before: float) -> list[str]:
        with closing(prune.connect(db, readonly=True)) as connection:
            found = prune.created_before(connection, db, before)
        for candidate in found:
            assert candidate.created_at == created[candidate.run_id]
            assert candidate.events == count(db, "events", candidate.run_id)
            assert candidate.workflow == "small"
        return [candidate.run_id for candidate in found]

    assert ids(0.0) == []
    assert ids(created["c-old"]) == []  # strictly before
    assert ids(created["a-mid"]) == ["c-old"]
    assert ids(math.nextafter(created["a-mid"], math.inf)) == ["c-old", "a-mid"]
    assert ids(math.inf) == ["c-old", "a-mid", "b-new"]


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
        candidates = prune.by_id(connection, db, ["r2", "r4"]) + prune.created_before(
            connection, db, math.inf
        )
        prune.refuse_running(db, candidates)
        assert prune.journal_size(db) == size
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


def test_a_prune_deletes_whole_runs_and_nothing_else(db: Path) -> None:
    gone = ("r2", "r4")
    kept = rows_of(db, but=gone)
    schema_before = schema(db)
    counts = {run_id: count(db, "events", run_id) for run_id in gone}
    assert all(count(db, "summaries", run_id) == 1 for run_id in ("r1", "r2", "r3", "r4"))

    done = pruned(db, ["r4", "r2"])

    assert [(c.run_id, c.events) for c in done] == [("r4", counts["r4"]), ("r2", counts["r2"])]
    for table in tables_with_run_id(db):
        for run_id in gone:
            assert count(db, table, run_id) == 0, (table, run_id)
    # Every row of the other runs, their summaries included, is as it was, byte for
    # byte; and the schema SQL (the triggers' too) is the very same.
    assert rows_of(db, but=gone) == kept
    assert [count(db, "summaries", run_id) for run_id in ("r1", "r3")] == [1, 1]
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
    assert all(lock_is_free(db, run_id) for run_id in gone)


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
        candidates = prune.by_id(connection, db, ["r3", "r1"])
        prune.delete_runs(cast(sqlite3.Connection, spy), db, candidates)
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


def test_a_prune_reports_the_events_it_really_deleted(db: Path) -> None:
    """A resume may append between the listing and the lock: the count is the deletion's."""
    with closing(prune.connect(db)) as connection:
        stale = [c._replace(events=0) for c in prune.by_id(connection, db, ["r2", "r3"])]
        real = {run_id: count(db, "events", run_id) for run_id in ("r2", "r3")}
        done = prune.delete_runs(connection, db, stale)
    assert [(c.run_id, c.events) for c in done] == [("r2", real["r2"]), ("r3", real["r3"])]


def test_reclaim_gives_the_space_back(tmp_path: Path) -> None:
    db = make_journal(tmp_path / "j.db", ["b1", "b2", "b3", "b4"], BULKY)
    before = prune.journal_size(db)
    assert before == db.stat().st_size  # a journal closed cleanly has no WAL
    kept = rows_of(db, but=("b1", "b2", "b3"))

    wal = Path(f"{db}-wal")
    with closing(prune.connect(db)) as connection:
        prune.delete_runs(connection, db, prune.by_id(connection, db, ["b1", "b2", "b3"]))
        # Committed to the WAL, not yet in the file: the size counts both.
        assert wal.stat().st_size > 0
        assert prune.journal_size(db) == db.stat().st_size + wal.stat().st_size
        prune.reclaim(connection, db)
        # VACUUMed through the WAL, which was then checkpointed into the file and
        # truncated, with this connection still open.
        assert wal.stat().st_size == 0
        after = prune.journal_size(db)
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
        candidates = prune.by_id(connection, db, ["r1", "r3"])
        if breaking is not None:
            breaking(monkeypatch)
        spy = Spy(connection, fail_at=fail_at, error=error)
        with pytest.raises(expected) as raised:
            prune.delete_runs(cast(sqlite3.Connection, spy), db, candidates)
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
        candidates = prune.by_id(connection, db, ["r2"])
        with pytest.raises(JournalError, match=r"damaged.*nothing was pruned"):
            prune.delete_runs(cast(sqlite3.Connection, spy), db, candidates)
        assert spy.statements == ["PRAGMA integrity_check"]
    assert everything(db) == before
    assert lock_is_free(db, "r2")


# -- running runs -------------------------------------------------------------------------


def test_a_run_driven_by_a_live_process_is_refused_and_nothing_is_pruned(db: Path) -> None:
    before = everything(db)
    with driven_elsewhere(db, "r3"):
        with closing(prune.connect(db)) as connection:
            candidates = prune.by_id(connection, db, ["r1", "r3", "r4"])
            # The dry run's check: no lock taken.
            with pytest.raises(RunIsRunning) as raised:
                prune.refuse_running(db, candidates)
            assert raised.value.run_id == "r3"
            assert "run 'r3' is running" in str(raised.value)
            prune.refuse_running(db, [c for c in candidates if c.run_id != "r3"])
            # The prune itself: refused at r3's lock, after r1's was taken.
            spy = Spy(connection)
            with pytest.raises(RunIsRunning) as raised:
                prune.delete_runs(cast(sqlite3.Connection, spy), db, candidates)
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


def test_a_run_locked_in_this_process_is_refused_too(db: Path) -> None:
    """`durable run` in a thread of this process holds its lock the same way."""
    before = everything(db)
    with RunLock(db, "r2"), closing(prune.connect(db)) as connection:
        candidates = prune.by_id(connection, db, ["r2"])
        with pytest.raises(RunIsRunning):
            prune.refuse_running(db, candidates)
        with pytest.raises(RunIsRunning):
            prune.delete_runs(connection, db, candidates)
    assert everything(db) == before


# -- what a pruned run leaves behind ------------------------------------------------------


def test_no_row_anywhere_names_a_pruned_run(tmp_path: Path) -> None:
    """Not even a cache entry: a pruned run's seqs are free again (`events.seq` is a
    plain INTEGER PRIMARY KEY), so an entry left behind would name whatever event a
    later run writes there, and answer its fingerprint with that event's output."""
    db = make_journal(tmp_path / "j.db", ["keep"], CACHED, {"n": 0})
    make_journal(db, ["gone"], CACHED, {"n": 1})
    assert "cache" in tables_with_run_id(db) and count(db, "cache", "gone") == 1
    kept = rows_of(db, but=("gone",))

    pruned(db, ["gone"])

    assert rows_of(db, but=("gone",)) == kept
    assert rows_of(db, ["gone"]) == {table: [] for table in tables_with_run_id(db)}

    # The id, and the seqs, used again by other work; then the pruned run's work asked
    # for again: it must run, not be answered with the other work's output.
    make_journal(db, ["gone"], CACHED, {"n": 2})
    again = asyncio.run(arun(CACHED, {"n": 1}, db=db, run_id="again", durability="off"))
    assert again.outputs == {"a": {"n": 1}}
