"""The journal's contract, on both backends: SQLite (a file) and PostgreSQL (a DSN).

Every test here runs twice, once per backend, through the one interface the engine,
the runner and the commands use (`Journal.open` picks the backend from the target).
On PostgreSQL each test gets a database of its own; locally a missing server skips
those tests with the reason, and in CI (`CI` set) fails them (`tests/pg.py`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pg
import pytest

from durable import spec as spec_module
from durable.errors import JournalDamaged, JournalError, RunExists, RunLocked, RunNotFound
from durable.events import (
    RunFinished,
    RunStarted,
    TaskLog,
    TaskStarted,
    TaskSucceeded,
    encode_fingerprint,
    encode_output,
)
from durable.journal import Journal, RunRecord
from durable.spec import Task, Workflow
from durable.state import RunState
from durable.summary import summarize

WORKFLOW = Workflow(name="wf", tasks=[Task(id="a", tool="echo"), Task(id="b", tool="echo")])


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "journal.db")
        return
    pg.require_pg()
    with pg.fresh_database() as dsn:
        yield dsn


def _record(run_id: str, created_at: float = 1.0) -> RunRecord:
    return RunRecord(
        run_id, "wf", spec_module.encode(WORKFLOW), "h", {"n": 1}, "/b", created_at, "/c"
    )


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def _open(target: str, **options: Any) -> Journal:
    journal = await Journal.open(target, durability="off", **options)
    return journal


def _keep_summary(journal: Journal, run_id: str, at: float) -> RunState:
    """Have the journal keep the run's summary, as the engine does: from the fold of
    what is appended (`_append`), the run started at `at`."""
    state = RunState.new(["a", "b"])
    state.apply(RunStarted(at=at))
    journal.keep_summary(run_id, lambda: summarize("wf", at, state))
    return state


def _append(journal: Journal, state: RunState, run_id: str, *events: Any) -> None:
    """Fold each event, then queue it: the order the engine's `emit` keeps."""
    for event in events:
        state.apply(event)
        journal.append(run_id, event)


def test_a_run_and_its_events_come_back_as_written(target: str) -> None:
    async def main() -> None:
        journal = await _open(target)
        journal.start()
        try:
            await journal.create_run(_record("r1"), RunStarted(at=1.0))
            with pytest.raises(RunExists):
                await journal.create_run(_record("r1"), RunStarted(at=1.0))
            journal.append("r1", TaskStarted(task_id="a", attempt=1, at=2.0, fingerprint="f" * 32))
            journal.append(
                "r1", TaskSucceeded(task_id="a", attempt=1, at=3.0, output={"x": [1, 2.5]})
            )
            await journal.flush()
            events = await journal.events("r1")
            assert [event for _, event in events] == [
                RunStarted(at=1.0),
                TaskStarted(task_id="a", attempt=1, at=2.0, fingerprint="f" * 32),
                TaskSucceeded(task_id="a", attempt=1, at=3.0, output={"x": [1, 2.5]}),
            ]
            seqs = [seq for seq, _ in events]
            assert seqs == sorted(seqs)
            assert [e for _, e in await journal.events("r1", after=seqs[1])] == [events[2][1]]
            record = await journal.get_run("r1")
            assert msgspec.structs.replace(record, crc=None) == _record("r1")
            with pytest.raises(RunNotFound):
                await journal.get_run("nope")
        finally:
            await journal.close()

    _run(main())


def _rows(target: str, run_id: str) -> list[tuple[Any, ...]]:
    """A run's rows as the journal holds them: (kind, task id, attempt), by seq."""
    query = f"SELECT kind, task_id, attempt FROM events WHERE run_id = '{run_id}' ORDER BY seq"
    if target.startswith("postgresql://"):
        return [tuple(row) for row in pg.fetch(target, query.replace("events", "durable.events"))]
    connection = sqlite3.connect(target)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def test_a_start_and_its_success_queued_together_are_one_row_read_back_as_both(
    target: str,
) -> None:
    """`task_ran`: an attempt's `task_started` and `task_succeeded` in one commit are one
    row, and come back as the two events; a success whose start was committed before
    it is a row of its own."""
    output = {"x": [1, 2.5], "s": "text"}

    async def main() -> None:
        journal = await _open(target)
        journal.start()
        try:
            await journal.create_run(_record("r1"), RunStarted(at=1.0))
            started = journal.append_started("r1", "a", 1, 2.0, encode_fingerprint("f" * 32))
            joined = journal.append_succeeded("r1", "a", 1, 3.0, encode_output(output))
            assert joined is started  # the same commit
            journal.append_started("r1", "b", 1, 4.0, None)
            await journal.flush()
            journal.append_succeeded("r1", "b", 1, 5.0, encode_output(None))
            await journal.flush()
            events = await journal.events("r1")
            assert [event for _, event in events] == [
                RunStarted(at=1.0),
                TaskStarted(task_id="a", attempt=1, at=2.0, fingerprint="f" * 32),
                TaskSucceeded(task_id="a", attempt=1, at=3.0, output=output),
                TaskStarted(task_id="b", attempt=1, at=4.0, fingerprint=None),
                TaskSucceeded(task_id="b", attempt=1, at=5.0, output=None),
            ]
            seqs = [seq for seq, _ in events]
            assert seqs[1] == seqs[2] < seqs[3] < seqs[4]
            after = await journal.events("r1", after=seqs[2])
            assert [event for _, event in after] == [event for _, event in events[3:]]
            assert journal.events_written == 5
        finally:
            await journal.close()

    _run(main())
    assert _rows(target, "r1") == [
        ("run_started", None, None),
        ("task_ran", "a", 1),
        ("task_started", "b", 1),
        ("task_succeeded", "b", 1),
    ]


def test_a_start_stays_its_own_row_when_its_task_wrote_a_row_after_it(target: str) -> None:
    """A row of the task between its start and its success (a log line) keeps the
    three in order, apart; another task's row between does not stop a join, nor does
    a success of another run's task of the same id."""

    async def main() -> None:
        journal = await _open(target)
        journal.start()
        try:
            await journal.create_run(_record("r1"), RunStarted(at=1.0))
            await journal.create_run(_record("r2"), RunStarted(at=1.0))
            journal.append_started("r1", "a", 1, 2.0, None)
            journal.append_started("r1", "b", 1, 2.1, None)
            journal.append(
                "r1", TaskLog(task_id="a", attempt=1, at=2.2, level="INFO", message="hi")
            )
            journal.append_succeeded("r1", "a", 1, 2.3, encode_output(1))
            journal.append_succeeded("r1", "b", 1, 2.4, encode_output(2))
            journal.append_started("r1", "c", 1, 2.5, None)
            journal.append_succeeded("r2", "c", 1, 2.6, encode_output(3))
            journal.append_succeeded("r1", "c", 1, 2.7, encode_output(4))
            await journal.flush()
            events = [event for _, event in await journal.events("r1")]
            assert events[1:] == [
                TaskStarted(task_id="a", attempt=1, at=2.0),
                TaskStarted(task_id="b", attempt=1, at=2.1),
                TaskSucceeded(task_id="b", attempt=1, at=2.4, output=2),
                TaskLog(task_id="a", attempt=1, at=2.2, level="INFO", message="hi"),
                TaskSucceeded(task_id="a", attempt=1, at=2.3, output=1),
                TaskStarted(task_id="c", attempt=1, at=2.5),
                TaskSucceeded(task_id="c", attempt=1, at=2.7, output=4),
            ]
            state = RunState.new(["a", "b", "c"])
            for event in events:
                state.apply(event)  # a history the fold accepts
            assert {task.state for task in state.tasks.values()} == {"succeeded"}
        finally:
            await journal.close()

    _run(main())
    assert _rows(target, "r1")[1:] == [
        ("task_started", "a", 1),
        ("task_ran", "b", 1),
        ("task_log", "a", 1),
        ("task_succeeded", "a", 1),
        ("task_started", "c", 1),
        ("task_succeeded", "c", 1),
    ]


def test_a_changed_task_ran_row_is_damage(target: str) -> None:
    async def main() -> None:
        journal = await _open(target)
        journal.start()
        await journal.create_run(_record("r1"), RunStarted(at=1.0))
        journal.append_started("r1", "a", 1, 2.0, None)
        journal.append_succeeded("r1", "a", 1, 3.0, encode_output("fine"))
        await journal.flush()
        await journal.close()

    _run(main())
    assert _rows(target, "r1")[1:] == [("task_ran", "a", 1)]
    _tamper(target, "UPDATE events SET at = at + 1 WHERE kind = 'task_ran'")

    async def read() -> None:
        journal = await _open(target, create=False, readonly=True)
        try:
            with pytest.raises(JournalDamaged, match=r"\(task_ran of task 'a'\) does not match"):
                await journal.events("r1")
        finally:
            await journal.close()

    _run(read())


def test_many_appends_share_commits_and_keep_their_order(target: str) -> None:
    async def main() -> None:
        journal = await _open(target)
        journal.start()
        try:
            await journal.create_run(_record("r1"), RunStarted(at=1.0))
            futures = [
                journal.append("r1", TaskStarted(task_id="a", attempt=i, at=float(i)))
                for i in range(1, 501)
            ]
            await asyncio.gather(*futures)
            assert journal.commits < 100  # 500 events, grouped
            attempts = [event.attempt for _, event in (await journal.events("r1"))[1:]]
            assert attempts == list(range(1, 501))
        finally:
            await journal.close()

    _run(main())


def test_runs_are_listed_found_by_prefix_and_summarized(target: str) -> None:
    async def main() -> None:
        journal = await _open(target)
        journal.start()
        try:
            for run_id, at in (("abc1", 1.0), ("abd2", 2.0), ("x", 3.0)):
                await journal.create_run(_record(run_id, at), RunStarted(at=at))
            assert [r.run_id for r in await journal.list_runs()] == ["abc1", "abd2", "x"]
            assert await journal.has_run("x") and not await journal.has_run("ab")
            assert [row[0] for row in await journal.find_runs("ab")] == ["abc1", "abd2"]
            state = _keep_summary(journal, "x", 3.0)
            _append(
                journal,
                state,
                "x",
                TaskStarted(task_id="a", attempt=1, at=4.0),
                TaskSucceeded(task_id="a", attempt=1, at=5.0, output=1),
                RunFinished(at=6.0, status="failed"),
            )
            await journal.flush()
            rows = {row.run_id: row for row in await journal.list_summaries()}
            assert rows["x"].summary == summarize("wf", 3.0, state) and not rows["x"].behind
            assert rows["abc1"].summary is None  # no session wrote one
        finally:
            await journal.close()

    _run(main())


def test_one_process_drives_a_run_and_others_can_tell(target: str) -> None:
    async def main() -> None:
        journal = await _open(target)
        other = await _open(target, create=False)
        try:
            await journal.create_run(_record("r1"), RunStarted(at=1.0))
            assert not await other.is_driven("r1")
            async with journal.lock("r1"):
                assert await other.is_driven("r1")
                with pytest.raises(RunLocked):
                    async with other.lock("r1"):
                        pass
            assert not await other.is_driven("r1")
            async with other.lock("r1"):
                pass
        finally:
            await other.close()
            await journal.close()

    _run(main())


def test_a_driver_in_another_database_does_not_drive_this_run() -> None:
    """Advisory locks belong to one database, but `pg_locks` lists the whole server's:
    a run of the same id driven in another database is not driven here."""

    async def main() -> None:
        with pg.fresh_database() as elsewhere, pg.fresh_database() as this:
            there = await _open(elsewhere)
            here = await _open(this)
            try:
                await there.create_run(_record("r1"), RunStarted(at=1.0))
                await here.create_run(_record("r1"), RunStarted(at=1.0))
                async with there.lock("r1"):
                    assert not await here.is_driven("r1")
                    async with here.lock("r1"):  # the locks themselves were always apart
                        assert await here.is_driven("r1")
            finally:
                await here.close()
                await there.close()

    _run(main())


def _tamper(target: str, sql: str) -> None:
    """Change a row behind durable's back, the append-only triggers set aside."""
    if target.startswith("postgresql://"):
        pg.execute(
            target,
            "ALTER TABLE durable.events DISABLE TRIGGER events_append_only",
            sql.replace("events", "durable.events"),
            "ALTER TABLE durable.events ENABLE TRIGGER events_append_only",
        )
        return
    connection = sqlite3.connect(target)
    connection.execute("DROP TRIGGER events_append_only_update")
    connection.execute(sql)
    connection.commit()
    connection.close()


def test_history_cannot_be_rewritten_and_damage_is_named(target: str) -> None:
    async def main() -> None:
        journal = await _open(target)
        journal.start()
        await journal.create_run(_record("r1"), RunStarted(at=1.0))
        journal.append("r1", TaskSucceeded(task_id="a", attempt=1, at=2.0, output="fine"))
        await journal.flush()
        await journal.close()

    _run(main())
    with pytest.raises(Exception, match="append-only"):
        if target.startswith("postgresql://"):
            pg.execute(target, "UPDATE durable.events SET at = 9")
        else:
            connection = sqlite3.connect(target)
            try:
                connection.execute("UPDATE events SET at = 9")
            finally:
                connection.close()
    _tamper(target, "UPDATE events SET at = at + 1 WHERE kind = 'task_succeeded'")

    async def read() -> None:
        journal = await _open(target, create=False, readonly=True)
        try:
            with pytest.raises(JournalDamaged, match="does not match its checksum"):
                await journal.events("r1")
        finally:
            await journal.close()

    _run(read())


def test_a_read_only_journal_writes_nothing(target: str) -> None:
    async def main() -> None:
        journal = await _open(target)
        await journal.create_run(_record("r1"), RunStarted(at=1.0))
        await journal.close()
        reader = await _open(target, create=False, readonly=True)
        try:
            with pytest.raises(JournalError, match="read-only"):
                await reader.create_run(_record("r2"), RunStarted(at=1.0))
            assert [r.run_id for r in await reader.list_runs()] == ["r1"]
        finally:
            await reader.close()

    _run(main())


def test_a_newer_schema_is_refused(target: str) -> None:
    async def create() -> None:
        await (await _open(target)).close()

    _run(create())
    _set_schema_version(target, 999)
    with pytest.raises(JournalError, match="newer"):
        _run(_open(target))


def _set_schema_version(target: str, version: int) -> None:
    """Mark the journal as of `version`, behind durable's back."""
    if target.startswith("postgresql://"):
        pg.execute(
            target,
            "DELETE FROM durable.schema_version",
            f"INSERT INTO durable.schema_version VALUES ({version})",
        )
        return
    connection = sqlite3.connect(target)
    connection.execute(f"PRAGMA user_version = {version}")
    connection.commit()
    connection.close()


def _schema_version(target: str) -> int:
    if target.startswith("postgresql://"):
        return int(pg.fetch(target, "SELECT max(version) FROM durable.schema_version")[0][0])
    connection = sqlite3.connect(target)
    try:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])
    finally:
        connection.close()


def test_a_schema_3_journal_is_read_as_it_is_and_upgraded_when_written(target: str) -> None:
    """Schema 3 had no `task_ran` rows and the same tables: read-only it stays 3; the
    first writer makes it 4, which an older durable refuses as newer."""

    async def create() -> None:
        journal = await _open(target)
        journal.start()
        await journal.create_run(_record("r1"), RunStarted(at=1.0))
        journal.append("r1", TaskStarted(task_id="a", attempt=1, at=2.0))
        journal.append("r1", TaskSucceeded(task_id="a", attempt=1, at=3.0, output=1))
        await journal.close()

    _run(create())
    _set_schema_version(target, 3)
    assert _rows(target, "r1")[1:] == [("task_started", "a", 1), ("task_succeeded", "a", 1)]

    async def read() -> list[Any]:
        journal = await _open(target, create=False, readonly=True)
        try:
            return [event for _, event in await journal.events("r1")]
        finally:
            await journal.close()

    assert len(_run(read())) == 3
    assert _schema_version(target) == 3

    async def write() -> None:
        journal = await _open(target, create=False)
        journal.start()
        journal.append_started("r1", "b", 1, 4.0, None)
        journal.append_succeeded("r1", "b", 1, 5.0, encode_output(2))
        await journal.close()

    _run(write())
    assert _schema_version(target) == 4
    assert _rows(target, "r1")[-1] == ("task_ran", "b", 1)
    assert len(_run(read())) == 5


def test_the_cache_answers_a_second_run_on_either_backend(target: str) -> None:
    """Through the engine: a second cached run reuses every task, from the first run;
    on PostgreSQL the lookups are awaited off the loop's turn (`Engine._look_up`)."""
    from durable.runner import arun

    workflow = Workflow(
        name="cached",
        tasks=[
            Task(id="a", tool="echo", input={"n": 1}),
            Task(id="b", tool="echo", input={"from": "${a.output}"}),
            Task(id="m", tool="echo", foreach=[1, 2, 3], input="${item}"),
        ],
    )
    first = _run(arun(workflow, db=target, durability="off", cache=True))
    second = _run(arun(workflow, db=target, durability="off", cache=True))
    assert first.status == second.status == "succeeded"
    assert not any(task.reused for task in first.tasks.values())
    assert {t for t, task in second.tasks.items() if task.reused} == {
        "a",
        "b",
        "m[0]",
        "m[1]",
        "m[2]",
    }
    assert second.outputs == first.outputs


def test_a_summary_covers_exactly_the_events_of_its_commit(target: str) -> None:
    """The engine appends (and folds) events while a batch is being written; the
    summary saved with that batch must be the fold of its events, not of later ones
    (else a crash before the next commit leaves a summary ahead of the journal)."""

    async def main() -> None:
        journal = await _open(target)
        journal.start()
        try:
            await journal.create_run(_record("x"), RunStarted(at=1.0))
            state = _keep_summary(journal, "x", 1.0)
            _append(journal, state, "x", TaskStarted(task_id="a", attempt=1, at=2.0))
            for _ in range(3):  # the writer, woken on the next turn, takes the batch
                await asyncio.sleep(0)
            _append(journal, state, "x", TaskStarted(task_id="b", attempt=1, at=3.0))
            await journal.flush()
            (row,) = [row for row in await journal.list_summaries() if row.run_id == "x"]
            assert row.summary is not None and row.last_seq is not None
            fold = RunState.new(["a", "b"])
            for seq, event in await journal.events("x"):
                if seq <= row.last_seq:
                    fold.apply(event)
            assert row.summary == summarize("wf", 1.0, fold)
        finally:
            await journal.close()

    _run(main())


def test_a_summary_committed_after_the_events_were_read_is_not_damage(target: str) -> None:
    """`durable status` reads a live run's events, then its summary: the process that
    runs it may commit more events and a summary in between. That summary names
    events the reader has not seen, which exist: the run is not damaged, and the
    summary is not compared with the fold of what was read. (A fleet's test of a
    killed submitter met this as "its last events are missing".)"""

    async def main() -> None:
        writer = await _open(target)
        writer.start()
        reader = await Journal.open(target, create=False, readonly=True)
        try:
            await writer.create_run(_record("x"), RunStarted(at=1.0))
            state = _keep_summary(writer, "x", 1.0)
            _append(writer, state, "x", TaskStarted(task_id="a", attempt=1, at=2.0))
            await writer.flush()
            seen = (await reader.events("x"))[-1][0]
            _append(
                writer,
                state,
                "x",
                TaskSucceeded(task_id="a", attempt=1, at=3.0, output=1),
                RunFinished(status="failed", at=4.0),  # ends the session: a summary is due
            )
            await writer.flush()

            row = await reader.read_summary("x", seen)
            assert row.problem is None and not row.damaged
            assert row.summary is None  # ahead of what was read: not its fold
            assert row.last_seq is not None and row.last_seq > seen

            newest = (await reader.events("x"))[-1][0]
            row = await reader.read_summary("x", newest)
            assert row.problem is None and not row.behind
            assert row.summary == summarize("wf", 1.0, state)
            older = await reader.read_summary("x", newest + 5)  # read past it: behind
            assert older.behind and older.summary == row.summary
        finally:
            await reader.close()
            await writer.close()

    _run(main())


def test_a_summary_caught_up_later_covers_exactly_the_events_it_names() -> None:
    """PostgreSQL's catch-up of a summary the rate limit left behind (`_write_summaries`)
    encodes it before awaiting its lock and its BEGIN: events appended meanwhile belong
    to the next commit, not to the summary saved with the last one. (SQLite's writer
    awaits nothing there.)"""
    pg.require_pg()
    with pg.fresh_database() as dsn:
        _catch_up_covers_its_events(dsn)


def _catch_up_covers_its_events(target: str) -> None:
    async def main() -> None:
        journal = await _open(target)
        journal.start()
        phase = ["before"]
        encoded: list[tuple[str, Any]] = []
        encode = journal._encode_summary
        journal._encode_summary = lambda summary: (
            encoded.append((phase[0], summary)) or encode(summary)
        )
        try:
            await journal.create_run(_record("x"), RunStarted(at=1.0))
            state = _keep_summary(journal, "x", 1.0)
            journal._summary_due["x"] = float("inf")  # every summary left to the catch-up
            _append(journal, state, "x", TaskStarted(task_id="a", attempt=1, at=2.0))
            await journal.flush()
            expected = summarize("wf", 1.0, state)
            async with journal._write_lock:  # the catch-up, once the writer idles, waits here
                phase[0] = "locked"
                await asyncio.sleep(0.5)
                phase[0] = "appended"
                _append(
                    journal, state, "x", TaskSucceeded(task_id="a", attempt=1, at=3.0, output=1)
                )
            await journal.flush()
            assert [summary for when, summary in encoded if when == "locked"] == [expected]
        finally:
            await journal.close()

    _run(main())
