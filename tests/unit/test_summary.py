"""A run's summary (`durable/summary.py`): the fold's answer, kept by the journal so
that `durable runs` reads no events. These tests check that it is the fold of the
events it covers, whatever the batches, and that a summary that is missing, stale,
damaged or ahead of the events is never believed."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from test_state import TASK_IDS, legal_histories

import durable
from durable import spec as spec_module
from durable.check import check_journal
from durable.errors import JournalDamaged
from durable.events import Event, RunFinished, RunResumed, RunStarted, TaskStarted, TaskSucceeded
from durable.inspection import RunLine, runs_document, select_runs, view_run
from durable.journal import Journal, RunRecord
from durable.journal.schema import SUMMARY_EVERY
from durable.spec import Task, Workflow
from durable.state import RunState
from durable.summary import RunSummary, shown_counts, summarize

WORKFLOW = Workflow(name="wf", tasks=[Task(id=task_id, tool="echo") for task_id in TASK_IDS])


def _record(run_id: str, created_at: float = 1.0) -> RunRecord:
    return RunRecord(run_id, "wf", spec_module.encode(WORKFLOW), "h", {}, "/", created_at)


async def _stored(journal: Journal, run_id: str) -> RunSummary | None:
    (newest,) = (await journal.query("SELECT max(seq) FROM events WHERE run_id = ?", (run_id,)))[0]
    return (await journal.read_summary(run_id, newest)).summary


# -- the fold's tally ---------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(legal_histories())
def test_the_kept_tally_is_a_fresh_count_after_any_history(history):
    events, _ = history
    state = RunState.fold(TASK_IDS, events)
    assert state.counts() == dict(Counter(task.state for task in state.tasks.values()))
    assert sum(state.counts().values()) == len(TASK_IDS)


# -- the writer keeps it equal to the fold -------------------------------------------


@settings(max_examples=60, deadline=None)
@given(legal_histories(), legal_histories(), st.data())
def test_the_summary_is_the_fold_of_the_committed_events_whatever_the_batches(
    tmp_path_factory, first, second, data
):
    """Two runs' events interleaved in batches of random sizes: after every commit,
    each run's summary is the fold of exactly the events committed so far."""
    path = tmp_path_factory.mktemp("summary") / "j.db"
    histories = {"one": first[0], "two": second[0]}
    order = data.draw(
        st.permutations([run for run, events in histories.items() for _ in events[1:]])
    )
    cuts = data.draw(st.sets(st.integers(1, max(1, len(order))), max_size=8))

    async def main() -> None:
        journal = await Journal.open(path, durability="off")
        journal.start()
        try:
            states = {run: RunState.new(TASK_IDS) for run in histories}
            left = {run: list(events) for run, events in histories.items()}
            for run in histories:
                opening = left[run].pop(0)
                await journal.create_run(_record(run), opening)
                states[run].apply(opening)
                journal.keep_summary(run, _source(states[run]))
            for position, run in enumerate(order, start=1):
                event = left[run].pop(0)
                states[run].apply(event)
                journal.append(run, event)
                if position in cuts:
                    await journal.flush()
                    await _all_agree(journal, states, current=False)
            await journal.flush()
            await _all_agree(journal, states, current=False)
            # Once the writer is idle, a summary left behind catches up.
            await asyncio.sleep(SUMMARY_EVERY * 3)
            if len(order):
                await _all_agree(journal, states, current=True)
        finally:
            await journal.close()

    asyncio.run(main())


def _source(state: RunState) -> Any:
    return lambda: summarize("wf", 1.0, state)


async def _all_agree(journal: Journal, states: dict[str, RunState], *, current: bool) -> None:
    """Each stored summary is the fold of the run's events up to the last it names;
    `current`: and that is the run's last event."""
    for run, state in states.items():
        events = await journal.events(run)
        assert RunState.fold(TASK_IDS, (event for _, event in events)) == state
        row = await journal.read_summary(run, events[-1][0])
        if row.summary is None:
            assert len(events) == 1  # `create_run` writes no summary
            continue
        assert row.last_seq is not None and row.behind == (row.last_seq < events[-1][0])
        covered = [event for seq, event in events if seq <= row.last_seq]
        assert row.summary == summarize("wf", 1.0, RunState.fold(TASK_IDS, covered)), run
        if current:
            assert not row.behind, run


def test_runs_driven_to_every_outcome_have_summaries_equal_to_their_fold(tmp_path: Path):
    """Through the real engine: success, failure with retries, skips, upstream
    failures, a resume that fixes nothing, and a resume of a finished run."""
    db = tmp_path / "j.db"
    (tmp_path / "ok.yaml").write_text(
        "name: ok\ntasks:\n"
        "  - {id: a, tool: echo, input: 1}\n"
        "  - {id: b, tool: echo, input: '${a.output}'}\n"
        "  - {id: c, tool: echo, input: 2, when: 'false'}\n"
    )
    (tmp_path / "bad.yaml").write_text(
        "name: bad\ntasks:\n"
        "  - {id: a, tool: echo, input: 1}\n"
        "  - {id: boom, tool: shell, input: {command: [sh, -c, 'exit 3']},"
        " retries: 2, retry_delay: 0, dependencies: [a]}\n"
        "  - {id: after, tool: echo, input: 1, dependencies: [boom]}\n"
    )
    ok = durable.run(tmp_path / "ok.yaml", db=db, durability="off")
    bad = durable.run(tmp_path / "bad.yaml", db=db, durability="off")
    again = durable.resume(bad.run_id, db=db, durability="off")
    finished = durable.resume(ok.run_id, db=db, durability="off")
    assert (ok.status, bad.status, again.status) == ("succeeded", "failed", "failed")
    assert finished.already_finished

    async def main() -> None:
        journal = await Journal.open(db, create=False, readonly=True)
        try:
            for run_id in (ok.run_id, bad.run_id):
                record = await journal.get_run(run_id)
                view = await view_run(journal, record)
                stored = await _stored(journal, run_id)
                assert stored == summarize(record.workflow, record.created_at, view.state)
            assert (await check_journal(journal)).problems == []
            lines = await select_runs(journal)
            assert [type(line) for line in lines] == [RunLine, RunLine]
            bad_line = lines[1]
            assert isinstance(bad_line, RunLine)
            assert bad_line.summary.sessions == 2
            assert bad_line.summary.counts == {"succeeded": 1, "failed": 1, "upstream_failed": 1}
        finally:
            await journal.close()

    asyncio.run(main())


# -- a summary is believed only when it covers exactly the run's events -----------------


def _two_runs(db: Path) -> tuple[str, str]:
    (db.parent / "wf.yaml").write_text(
        "name: two\ntasks:\n  - {id: a, tool: echo, input: 1}\n  - {id: b, tool: echo, input: 2}\n"
    )
    first = durable.run(db.parent / "wf.yaml", db=db, durability="off")
    second = durable.run(db.parent / "wf.yaml", db=db, durability="off")
    return first.run_id, second.run_id


async def _listed(db: Path) -> list[Any]:
    journal = await Journal.open(db, create=False, readonly=True)
    try:
        found = await select_runs(journal)
        return [
            runs_document(item) if isinstance(item, RunLine) else ("damaged", item.error.message)
            for item in found
        ]
    finally:
        await journal.close()


async def _problems(db: Path) -> list[str]:
    journal = await Journal.open(db, create=False, readonly=True)
    try:
        return (await check_journal(journal)).problems
    finally:
        await journal.close()


def _folded_listing(db: Path) -> list[Any]:
    """What `runs` says with no summaries at all: every run folded."""
    copy = db.parent / "nosummaries.db"
    source = sqlite3.connect(db)
    source.execute(f"VACUUM INTO '{copy}'")
    source.close()
    connection = sqlite3.connect(copy)
    connection.execute("DROP TABLE summaries")
    connection.execute("PRAGMA user_version = 2")
    connection.commit()
    connection.close()
    return asyncio.run(_listed(copy))


def test_runs_from_summaries_equal_runs_from_the_fold(tmp_path: Path):
    db = tmp_path / "j.db"
    _two_runs(db)
    listed = asyncio.run(_listed(db))
    assert listed == _folded_listing(db)
    assert [doc["counts"] for doc in listed] == [{"succeeded": 2}, {"succeeded": 2}]


def test_a_damaged_summary_is_not_believed_and_check_says_so(tmp_path: Path):
    db = tmp_path / "j.db"
    first, _ = _two_runs(db)
    before = asyncio.run(_listed(db))
    connection = sqlite3.connect(db)
    # A summary that lies (more succeeded tasks) but keeps its old checksum.
    (data,) = connection.execute("SELECT data FROM summaries WHERE run_id = ?", (first,)).fetchone()
    lie = msgspec.structs.replace(
        msgspec.msgpack.decode(data, type=RunSummary), counts={"succeeded": 99}
    )
    connection.execute(
        "UPDATE summaries SET data = ? WHERE run_id = ?", (msgspec.msgpack.encode(lie), first)
    )
    connection.commit()
    connection.close()
    assert asyncio.run(_listed(db)) == before  # folded instead: the same answer
    assert asyncio.run(_problems(db)) == [
        f"run '{first}': its summary does not match its checksum "
        "(`durable runs` folds its events instead)"
    ]


def test_a_stale_summary_is_not_believed(tmp_path: Path):
    """Events appended without a summary (as by a writer that keeps none): folded."""
    db = tmp_path / "j.db"
    first, _ = _two_runs(db)

    async def append_failure() -> None:
        journal = await Journal.open(db, create=False, durability="off")
        journal.start()
        try:
            # a history that goes on: a second session, which ends otherwise
            journal.append(first, RunResumed(at=10.0))
            journal.append(first, RunFinished(status="failed", at=11.0))
            await journal.flush()
        finally:
            await journal.close()

    asyncio.run(append_failure())
    listed = asyncio.run(_listed(db))
    assert listed[0]["status"] == "failed"
    assert listed[0]["counts"] == {"succeeded": 2}
    # The second session's second counts: the stale summary says the first session's
    # duration alone (two echo tasks: under 0.5 ms on a fast machine, rounded to 0.0).
    assert listed[0]["duration"] >= 1.0
    assert listed == _folded_listing(db)
    assert asyncio.run(_problems(db)) == []


def test_events_lost_after_the_summary_make_the_run_damaged(tmp_path: Path):
    """The loss of a run's last events, which no checksum chain can see: the summary
    was committed with them and names the last one."""
    db = tmp_path / "j.db"
    first, second = _two_runs(db)
    connection = sqlite3.connect(db)
    connection.execute("DROP TRIGGER events_append_only_delete")
    connection.execute(
        "DELETE FROM events WHERE seq = (SELECT max(seq) FROM events WHERE run_id = ?)", (first,)
    )
    connection.commit()
    connection.close()

    listed = asyncio.run(_listed(db))
    assert listed[0][0] == "damaged" and "its last events are missing" in listed[0][1]
    assert listed[1]["run_id"] == second

    async def status() -> None:
        journal = await Journal.open(db, create=False, readonly=True)
        try:
            try:
                await view_run(journal, await journal.get_run(first))
            except JournalDamaged as exc:
                assert "its last events are missing" in exc.message
            else:
                raise AssertionError("a run that lost its last events was read as whole")
        finally:
            await journal.close()

    asyncio.run(status())
    problems = asyncio.run(_problems(db))
    assert len(problems) == 1 and "its last events are missing" in problems[0]


def test_the_listing_reads_no_event_and_no_spec(tmp_path: Path):
    """`runs` on summaries: one statement, which reads no event and no spec."""
    db = tmp_path / "j.db"
    _two_runs(db)

    async def listed_with_reads_counted() -> tuple[list[Any], list[str]]:
        journal = await Journal.open(db, create=False, readonly=True)
        statements: list[str] = []
        original = journal.query

        async def query(sql: str, parameters: tuple[Any, ...] = ()) -> list[Any]:
            statements.append(sql)
            return await original(sql, parameters)

        journal.query = query  # type: ignore[method-assign]
        try:
            found = await select_runs(journal)
            return [runs_document(item) for item in found if isinstance(item, RunLine)], statements
        finally:
            await journal.close()

    documents, statements = asyncio.run(listed_with_reads_counted())
    assert len(documents) == 2
    assert len(statements) == 1, statements
    assert "spec" not in statements[0] and "data FROM events" not in statements[0]


def test_shown_counts_merge_in_flight_tasks_of_an_interrupted_run():
    counts = {"running": 2, "retrying": 1, "succeeded": 3}
    assert shown_counts(counts, "interrupted") == {"interrupted": 3, "succeeded": 3}
    assert shown_counts(counts, "running") == counts


def test_a_summary_is_written_in_the_transaction_of_its_events(tmp_path: Path):
    """A failed commit leaves neither the events nor the summary; and no summary is
    taken from the engine's state after it (that state holds what did not commit)."""
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = await Journal.open(path, durability="off")
        journal.start()
        state = RunState.new(TASK_IDS)
        opening: Event = RunStarted(at=1.0)
        await journal.create_run(_record("r"), opening)
        state.apply(opening)
        journal.keep_summary("r", _source(state))
        started = TaskStarted(task_id=TASK_IDS[0], attempt=1, at=2.0)
        state.apply(started)
        journal.append("r", started)
        await journal.flush()
        assert (await _stored(journal, "r")) == summarize("wf", 1.0, state)
        # A second commit at once: its summary is left behind, to catch up later.
        succeeded = TaskSucceeded(task_id=TASK_IDS[0], attempt=1, at=2.5, output=1)
        state.apply(succeeded)
        journal.append("r", succeeded)
        await journal.flush()
        blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
        blocker.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        blocker.close()
        before = await _stored(journal, "r")
        finished = RunFinished(status="failed", at=3.0)
        state.apply(finished)
        try:
            journal.append("r", finished)
            await journal.flush()
        except Exception as exc:  # the trigger's refusal, as a JournalError
            assert "no" in str(exc)
        else:
            raise AssertionError("the refused commit went through")
        assert await _stored(journal, "r") == before
        # The state now holds an event that never committed: closing must not
        # catch the summary up from it.
        await journal.close()
        journal = await Journal.open(path, create=False, readonly=True)
        try:
            events = await journal.events("r")
            row = await journal.read_summary("r", events[-1][0])
            covered = [event for seq, event in events if seq <= (row.last_seq or 0)]
            assert row.summary == summarize("wf", 1.0, RunState.fold(TASK_IDS, covered))
            assert [type(event) for _, event in events][-1] is TaskSucceeded
        finally:
            await journal.close()

    asyncio.run(main())
