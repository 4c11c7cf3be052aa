"""The cache across runs (`journal/cache.py`, `Engine._caches`/`_reuse`), through
`runner.arun`/`aresume` on a real SQLite journal.

Every test counts the calls the tools really got (`CALLS`) and reads the journal
back: which events a run wrote, and which entries the `cache` table holds. Every
entry must name a committed `task_succeeded` of the attempt whose `task_started`
carried the entry's fingerprint (`assert_entries_name_successes`).
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import time
import types
from pathlib import Path
from typing import Any

import pytest
from journal_reads import journal_events

from durable import engine as engine_module
from durable import spec
from durable.errors import DurableError, ValidationError
from durable.events import (
    RunInterrupted,
    RunResumed,
    RunStarted,
    TaskReused,
    TaskStarted,
    TaskSucceeded,
    encode_output,
    kind_of,
)
from durable.journal import cache as cache_index
from durable.prune import SqlitePruning
from durable.runner import Edit, RunResult, aresume, arun
from durable.state import FAILED, PENDING, SUCCEEDED, IllegalTransition, RunState
from durable.tools import REGISTRY

# -- tools (names unique to this file) ---------------------------------------------------

CALLS: collections.Counter[str] = collections.Counter()
#: Keys whose calls fail while they are in here (`cache_fail_while`).
FAILING: set[str] = set()


@pytest.fixture(autouse=True)
def _reset_tool_state():
    CALLS.clear()
    FAILING.clear()


async def cache_echo(key: str, value: Any = None) -> Any:
    CALLS[key] += 1
    return {"key": key, "value": value}


async def cache_other(key: str, value: Any = None) -> Any:
    CALLS[key] += 1
    return {"other": key, "value": value}


async def cache_side_effect(key: str) -> str:
    """A payment, say: never answered from the cache."""
    CALLS[key] += 1
    return f"charged {key}"


async def cache_flaky_once(key: str) -> str:
    """Fails on its first call for a key, succeeds on every later one."""
    CALLS[key] += 1
    if CALLS[key] == 1:
        raise RuntimeError(f"first call for {key} fails")
    return f"ok {key}"


async def cache_fail_while(key: str, value: Any = None) -> Any:
    CALLS[key] += 1
    if key in FAILING:
        raise RuntimeError(f"{key} is failing")
    return {"key": key, "value": value}


for _tool in (cache_echo, cache_other, cache_flaky_once, cache_fail_while):
    REGISTRY.add(_tool, name=_tool.__name__)
REGISTRY.add(cache_side_effect, name="cache_side_effect", cacheable=False)


# -- helpers ---------------------------------------------------------------------------


def workflow(tasks: list[dict[str, Any]], **fields: Any) -> spec.Workflow:
    return spec.from_data({"name": "cache-test", "tasks": tasks, **fields})


def run(
    wf: spec.Workflow,
    db: Path,
    params: dict[str, Any] | None = None,
    timeout: float = 30,
    **options: Any,
) -> RunResult:
    return asyncio.run(
        asyncio.wait_for(arun(wf, params, db=db, durability="off", **options), timeout)
    )


def resume(run_id: str, db: Path, **options: Any) -> RunResult:
    return asyncio.run(
        asyncio.wait_for(aresume(run_id, db=db, durability="off", **options), timeout=30)
    )


def kinds(events: list) -> list[tuple[str | None, str]]:
    return [(getattr(event, "task_id", None), kind_of(event)) for event in events]


def assert_fold_matches(result: RunResult, db: Path) -> list:
    """The fold of the journaled events is exactly the live state the run returned."""
    events = journal_events(db, result.run_id)
    folded = RunState.fold(result.tasks, events)
    assert folded.tasks == result.tasks
    assert folded.status == result.status
    return events


def entries(db: Path) -> list[tuple[Any, ...]]:
    """The cache's rows: (fingerprint, tool, run_id, task_id, attempt, seq, at)."""
    connection = sqlite3.connect(db)
    try:
        return connection.execute(
            "SELECT fingerprint, tool, run_id, task_id, attempt, seq, at FROM cache"
            " ORDER BY run_id, task_id"
        ).fetchall()
    finally:
        connection.close()


def assert_entries_name_successes(db: Path) -> None:
    """Each entry names a committed `task_succeeded` of its run, task and attempt (or
    the `task_ran` row that holds it), and that attempt's `task_started` (in its own
    row or in that one) carried the entry's fingerprint."""
    connection = sqlite3.connect(db)
    try:
        for fingerprint, _, run_id, task_id, attempt, seq, _ in entries(db):
            row = connection.execute(
                "SELECT run_id, task_id, attempt, kind FROM events WHERE seq = ?", (seq,)
            ).fetchone()
            assert row[:3] == (run_id, task_id, attempt), (seq, row)
            assert row[3] in ("task_succeeded", "task_ran"), (seq, row)
            starts = connection.execute(
                "SELECT data FROM events WHERE run_id = ? AND task_id = ? AND attempt = ?"
                " AND kind IN ('task_started', 'task_ran')",
                (run_id, task_id, attempt),
            ).fetchall()
            assert len(starts) == 1
            started = journal_started(db, run_id, task_id, attempt)
            assert started.fingerprint == fingerprint
    finally:
        connection.close()


def journal_started(db: Path, run_id: str, task_id: str, attempt: int) -> TaskStarted:
    for event in journal_events(db, run_id):
        if isinstance(event, TaskStarted) and (event.task_id, event.attempt) == (task_id, attempt):
            return event
    raise AssertionError(f"no task_started for {run_id}/{task_id}/{attempt}")


def lookup(db: Path, fingerprint: str, newer_than: float | None = None):
    connection = sqlite3.connect(db)
    try:
        return cache_index.lookup(connection, fingerprint, newer_than)
    finally:
        connection.close()


def reused_events(db: Path, run_id: str) -> dict[str, TaskReused]:
    return {e.task_id: e for e in journal_events(db, run_id) if isinstance(e, TaskReused)}


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "journal.db"


#: a <- c, a <- d, b <- d; e stands alone.
DIAMOND = [
    {"id": "a", "tool": "cache_echo", "input": {"key": "a", "value": "${params.x}"}},
    {"id": "b", "tool": "cache_echo", "input": {"key": "b", "value": [1, 2.5, None]}},
    {"id": "c", "tool": "cache_echo", "input": {"key": "c", "value": "${a.output}"}},
    {
        "id": "d",
        "tool": "cache_echo",
        "input": {"key": "d", "value": {"a": "${a.output.value}", "b": "${b.output}"}},
    },
    {"id": "e", "tool": "cache_other", "input": {"key": "e"}},
]


# -- reuse -------------------------------------------------------------------------------


def test_a_second_run_with_cache_calls_no_tool_and_gives_equal_outputs(db):
    wf = workflow(DIAMOND, params={"x": 7})
    first = run(wf, db, cache=True)
    assert first.ok
    assert dict(CALLS) == {key: 1 for key in "abcde"}
    assert not any(task.reused for task in first.tasks.values())
    assert {row[3] for row in entries(db)} == set("abcde")
    assert_entries_name_successes(db)

    second = run(wf, db, cache=True)
    assert second.ok
    assert dict(CALLS) == {key: 1 for key in "abcde"}, "the second run called a tool"
    assert second.outputs == first.outputs
    assert all(task.reused and task.state == SUCCEEDED for task in second.tasks.values())

    events = assert_fold_matches(second, db)
    assert not any(isinstance(event, TaskStarted | TaskSucceeded) for event in events)
    reused = reused_events(db, second.run_id)
    assert set(reused) == set("abcde")
    for task_id, event in reused.items():
        assert (event.from_run, event.from_task, event.from_attempt) == (first.run_id, task_id, 1)
        assert event.output == first.outputs[task_id]
        assert event.fingerprint == journal_started(db, first.run_id, task_id, 1).fingerprint
    # a reuse is not a new success: nothing new is remembered
    assert {row[2] for row in entries(db)} == {first.run_id}


def test_a_run_without_cache_neither_reuses_nor_remembers(db):
    wf = workflow(DIAMOND, params={"x": 1})
    plain = run(wf, db)
    assert plain.ok and entries(db) == []

    cached = run(wf, db, cache=True)  # nothing was remembered: everything runs
    assert dict(CALLS) == {key: 2 for key in "abcde"}
    assert not any(task.reused for task in cached.tasks.values())
    assert len(entries(db)) == 5

    again = run(wf, db)  # entries exist now, but this run does not use them
    assert dict(CALLS) == {key: 3 for key in "abcde"}
    assert reused_events(db, again.run_id) == {}
    assert again.outputs == plain.outputs == cached.outputs
    assert {row[2] for row in entries(db)} == {cached.run_id}


def test_equal_work_of_another_task_of_the_same_run_answers(db):
    wf = workflow(
        [
            {"id": "first", "tool": "cache_echo", "input": {"key": "same", "value": 1}},
            {
                "id": "later",
                "tool": "cache_echo",
                "input": {"key": "same", "value": 1},
                "dependencies": ["first"],
            },
        ]
    )
    result = run(wf, db, cache=True)
    assert result.ok and dict(CALLS) == {"same": 1}
    reused = reused_events(db, result.run_id)
    assert list(reused) == ["later"]
    assert (reused["later"].from_run, reused["later"].from_task) == (result.run_id, "first")
    assert result.outputs["later"] == result.outputs["first"]


def test_a_changed_input_is_a_miss_and_only_its_dependents_run_again(db):
    run(workflow(DIAMOND, params={"x": 1}), db, cache=True)
    CALLS.clear()
    second = run(workflow(DIAMOND, params={"x": 2}), db, cache=True)
    assert second.ok
    # a takes x; c and d take a's output; b and e do not depend on it
    assert set(CALLS) == {"a", "c", "d"}
    assert {t for t, task in second.tasks.items() if task.reused} == {"b", "e"}
    assert second.outputs["d"]["value"]["a"] == 2


# -- who caches --------------------------------------------------------------------------


def test_task_cache_false_overrides_the_workflow_and_the_run(db):
    tasks = [
        {"id": "kept", "tool": "cache_echo", "input": {"key": "kept"}},
        {"id": "fresh", "tool": "cache_echo", "input": {"key": "fresh"}, "cache": False},
    ]
    wf = workflow(tasks, cache=True)
    run(wf, db)
    assert [row[3] for row in entries(db)] == ["kept"], "a cache: false task was remembered"
    second = run(wf, db)  # the workflow's cache: true, no --cache
    third = run(wf, db, cache=True)  # --cache does not override the task either
    assert dict(CALLS) == {"kept": 1, "fresh": 3}
    for result in (second, third):
        assert result.tasks["kept"].reused and not result.tasks["fresh"].reused
    assert [row[3] for row in entries(db)] == ["kept"]


def test_task_cache_true_caches_that_task_alone(db):
    tasks = [
        {"id": "on", "tool": "cache_echo", "input": {"key": "on"}, "cache": True},
        {"id": "off", "tool": "cache_echo", "input": {"key": "off"}},
    ]
    run(workflow(tasks), db)
    result = run(workflow(tasks), db)
    assert dict(CALLS) == {"on": 1, "off": 2}
    assert result.tasks["on"].reused and not result.tasks["off"].reused


def test_an_uncacheable_tool_is_never_reused_nor_remembered(db):
    tasks = [
        {"id": "pay", "tool": "cache_side_effect", "input": {"key": "pay"}},
        {"id": "note", "tool": "cache_echo", "input": {"key": "note", "value": "${pay.output}"}},
    ]
    wf = workflow(tasks, cache=True)  # the workflow's cache: true is no error for it
    first = run(wf, db, cache=True)
    second = run(wf, db, cache=True)
    assert first.ok and second.ok
    assert dict(CALLS) == {"pay": 2, "note": 1}
    assert not second.tasks["pay"].reused and second.tasks["note"].reused
    assert [row[1] for row in entries(db)] == ["cache_echo"]


def test_cache_true_on_an_uncacheable_tool_fails_validation_naming_task_and_field(db):
    tasks = [
        {"id": "fine", "tool": "cache_echo", "input": {"key": "fine"}, "cache": True},
        {"id": "pay", "tool": "cache_side_effect", "input": {"key": "pay"}, "cache": True},
    ]
    with pytest.raises(ValidationError) as caught:
        run(workflow(tasks), db)
    message = str(caught.value)
    problems = [line for line in message.splitlines() if "task 'pay'" in line]
    assert len(problems) == 1, message
    assert "field 'cache'" in problems[0] and "cache_side_effect" in problems[0]
    assert "task 'fine'" not in message
    assert not db.exists(), "a workflow that failed validation touched the journal"
    assert dict(CALLS) == {}


# -- time to live ------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch):
    """The engine's clock, `offset` seconds ahead of the real one."""
    shift = types.SimpleNamespace(offset=0.0)
    fake = types.SimpleNamespace(time=lambda: time.time() + shift.offset)
    monkeypatch.setattr(engine_module, "time", fake)
    return shift


def test_an_entry_older_than_its_tasks_ttl_is_a_miss(db, clock):
    tasks = [
        {"id": "short", "tool": "cache_echo", "input": {"key": "short"}, "cache_ttl": 100},
        {"id": "long", "tool": "cache_echo", "input": {"key": "long"}, "cache_ttl": 1000},
        {"id": "forever", "tool": "cache_echo", "input": {"key": "forever"}},
    ]
    wf = workflow(tasks, cache=True)
    first = run(wf, db)
    assert dict(CALLS) == {"short": 1, "long": 1, "forever": 1}

    clock.offset = 50  # younger than both ttls
    young = run(wf, db)
    assert dict(CALLS) == {"short": 1, "long": 1, "forever": 1}
    assert all(task.reused for task in young.tasks.values())

    clock.offset = 500  # older than short's ttl only
    old = run(wf, db)
    assert dict(CALLS) == {"short": 2, "long": 1, "forever": 1}
    assert not old.tasks["short"].reused
    assert old.tasks["long"].reused and old.tasks["forever"].reused
    assert old.outputs == first.outputs
    # the miss ran the task, and its new success is the entry now (younger)
    assert [row[2] for row in entries(db) if row[3] == "short"] == [old.run_id]

    clock.offset = 560  # 60 s after the new entry: within the ttl again
    run(wf, db)
    assert CALLS["short"] == 2


def test_the_workflows_ttl_applies_unless_the_task_has_its_own(db, clock):
    tasks = [
        {"id": "inherits", "tool": "cache_echo", "input": {"key": "inherits"}},
        {"id": "own", "tool": "cache_echo", "input": {"key": "own"}, "cache_ttl": 10_000},
    ]
    wf = workflow(tasks, cache=True, cache_ttl=100)
    run(wf, db)
    clock.offset = 200
    later = run(wf, db)
    assert dict(CALLS) == {"inherits": 2, "own": 1}
    assert later.tasks["own"].reused and not later.tasks["inherits"].reused


def test_lookup_newer_than(db):
    result = run(workflow(DIAMOND, params={"x": 1}), db, cache=True)
    fingerprint, *_, at = next(row for row in entries(db) if row[3] == "a")
    hit = lookup(db, fingerprint, newer_than=at - 1)
    assert hit is not None
    assert (hit.run_id, hit.task_id, hit.attempt, hit.output) == (
        result.run_id,
        "a",
        1,
        result.outputs["a"],
    )
    assert lookup(db, fingerprint, newer_than=at) is not None  # "at or after"
    assert lookup(db, fingerprint, newer_than=at + 1) is None
    assert lookup(db, "0" * 32) is None


# -- forgetting --------------------------------------------------------------------------


def test_clear_by_tool_and_by_age(db):
    wf = workflow(DIAMOND, params={"x": 1})
    old = run(wf, db, cache=True)
    time.sleep(0.02)
    boundary = time.time()
    time.sleep(0.02)
    new = run(wf, db, {"x": 2}, cache=True)  # other work for a, c and d only
    by_run = collections.Counter(row[2] for row in entries(db))
    assert by_run == {old.run_id: 5, new.run_id: 3}

    connection = sqlite3.connect(db)
    try:
        assert cache_index.clear(connection, tool="cache_other") == 1  # e
        assert {row[1] for row in entries(db)} == {"cache_echo"}
        assert cache_index.clear(connection, older_than=boundary) == 4  # old's a, b, c, d
        assert {(row[2], row[3]) for row in entries(db)} == {
            (new.run_id, "a"),
            (new.run_id, "c"),
            (new.run_id, "d"),
        }
        assert cache_index.clear(connection, older_than=boundary, tool="cache_echo") == 0
        assert cache_index.count(connection) == 3
    finally:
        connection.close()

    CALLS.clear()
    again = run(wf, db, {"x": 2}, cache=True)
    assert set(CALLS) == {"b", "e"}, "only the forgotten entries run again"
    assert again.outputs == new.outputs

    connection = sqlite3.connect(db)
    try:
        assert cache_index.clear(connection) == 5
        assert cache_index.count(connection) == 0
    finally:
        connection.close()
    # the events the entries pointed to stay, as history
    assert journal_events(db, old.run_id) and journal_events(db, new.run_id)


# -- entries that must not answer --------------------------------------------------------


def copy_journal(source: Path, target: Path) -> None:
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def test_an_entry_whose_event_was_tampered_with_is_a_miss_not_a_wrong_output(db, tmp_path):
    wf = workflow(DIAMOND, params={"x": "genuine"})
    first = run(wf, db, cache=True)
    copy = tmp_path / "tampered.db"
    copy_journal(db, copy)
    fingerprint, _, _, _, _, seq, _ = next(row for row in entries(copy) if row[3] == "a")
    connection = sqlite3.connect(copy)
    try:
        connection.execute("DROP TRIGGER events_append_only_update")
        forged = encode_output({"key": "a", "value": "forged"})
        connection.execute("UPDATE events SET data = ? WHERE seq = ?", (forged, seq))
        connection.commit()
    finally:
        connection.close()

    assert lookup(copy, fingerprint) is None
    assert lookup(db, fingerprint) is not None  # the untouched journal still answers

    CALLS.clear()
    second = run(wf, copy, cache=True)
    assert second.ok
    assert dict(CALLS) == {"a": 1}, "only the tampered entry missed"
    assert second.outputs == first.outputs
    assert not second.tasks["a"].reused
    assert "forged" not in repr(second.outputs)


def test_an_entry_whose_run_was_pruned_is_a_miss(db):
    wf = workflow(DIAMOND, params={"x": 1})
    first = run(wf, db, cache=True)
    stale = entries(db)
    connection = sqlite3.connect(db)
    try:
        pruning = SqlitePruning(connection, db)
        asyncio.run(pruning.delete_runs(asyncio.run(pruning.by_id([first.run_id]))))
        assert cache_index.count(connection) == 0
        # an entry left behind (by an older prune, say) names events that are gone
        connection.executemany("INSERT INTO cache VALUES (?, ?, ?, ?, ?, ?, ?)", stale)
        connection.commit()
    finally:
        connection.close()
    for fingerprint, *_ in stale:
        assert lookup(db, fingerprint) is None

    CALLS.clear()
    second = run(wf, db, cache=True)
    assert second.ok and dict(CALLS) == {key: 1 for key in "abcde"}
    assert not any(task.reused for task in second.tasks.values())
    assert second.outputs == first.outputs
    assert {row[2] for row in entries(db)} == {second.run_id}
    assert_entries_name_successes(db)


def test_a_failed_commit_leaves_no_entry(db):
    wf = workflow([{"id": "a", "tool": "cache_echo", "input": {"key": "a"}}], cache=True)
    run(workflow([{"id": "warm", "tool": "cache_echo", "input": {"key": "warm"}}]), db)
    connection = sqlite3.connect(db)
    try:
        # fails the transaction after the batch's events were inserted
        connection.execute(
            "CREATE TRIGGER planted AFTER INSERT ON cache"
            " BEGIN SELECT RAISE(ABORT, 'planted failure'); END"
        )
        connection.commit()
    finally:
        connection.close()

    with pytest.raises(DurableError, match="planted failure"):
        run(wf, db, run_id="broken")
    assert CALLS["a"] == 1
    assert entries(db) == []
    kinds_written = kinds(journal_events(db, "broken"))
    assert ("a", "task_succeeded") not in kinds_written, "the success outlived its commit"

    connection = sqlite3.connect(db)
    try:
        connection.execute("DROP TRIGGER planted")
        connection.commit()
    finally:
        connection.close()
    resumed = resume("broken", db, cache=True)
    assert resumed.ok and CALLS["a"] == 2  # nothing was committed, so nothing answers
    assert not resumed.tasks["a"].reused
    assert [row[3] for row in entries(db)] == ["a"]
    assert_entries_name_successes(db)


def test_every_entry_names_a_committed_success_after_retries_and_failures(db):
    tasks = [
        {"id": "flaky", "tool": "cache_flaky_once", "input": {"key": "f"}, "retries": 2},
        {"id": "broken", "tool": "cache_fail_while", "input": {"key": "broken"}},
        {"id": "fine", "tool": "cache_fail_while", "input": {"key": "fine"}},
    ]
    FAILING.add("broken")
    wf = workflow(
        [{**task, "retry_delay": 0} if "retries" in task else task for task in tasks],
        cache=True,
    )
    result = run(wf, db)
    assert result.tasks["flaky"].state == SUCCEEDED and result.tasks["broken"].state == FAILED
    assert {(row[3], row[4]) for row in entries(db)} == {("flaky", 2), ("fine", 1)}
    assert_entries_name_successes(db)


# -- the fold and resumes ----------------------------------------------------------------


def reused_event(task_id: str = "a", **fields: Any) -> TaskReused:
    values = {
        "task_id": task_id,
        "at": 10.0,
        "output": {"n": 1},
        "fingerprint": "f" * 32,
        "from_run": "r0",
        "from_task": "x",
        "from_attempt": 2,
    }
    return TaskReused(**{**values, **fields})


def test_the_fold_takes_task_reused_from_pending_to_succeeded():
    state = RunState.new(["a", "b"])
    state.apply(RunStarted(at=1.0))
    state.apply(reused_event())
    task = state.tasks["a"]
    assert task.state == SUCCEEDED and task.reused
    assert task.output == {"n": 1}
    assert task.fingerprint == "f" * 32
    assert task.finished_at == 10.0
    assert task.attempts == 0
    assert state.tasks["b"].state == PENDING and not state.tasks["b"].reused
    assert state.counts() == {SUCCEEDED: 1, PENDING: 1}

    with pytest.raises(IllegalTransition):
        state.apply(reused_event())  # already succeeded
    state.apply(TaskStarted(task_id="b", attempt=1, at=11.0))
    with pytest.raises(IllegalTransition):
        state.apply(reused_event("b"))  # running

    # a new session keeps it, reused
    state.apply(RunInterrupted(at=12.0))
    state.apply(RunResumed(at=13.0))
    assert state.tasks["a"].state == SUCCEEDED and state.tasks["a"].reused
    assert state.tasks["a"].output == {"n": 1}
    assert state.tasks["b"].state == PENDING


def test_task_reused_round_trips_through_the_journal(db):
    run(workflow(DIAMOND, params={"x": [1, {"k": 2.0}]}), db, cache=True)
    second = run(workflow(DIAMOND, params={"x": [1, {"k": 2.0}]}), db, cache=True)
    events = assert_fold_matches(second, db)
    assert [kind for _, kind in kinds(events)].count("task_reused") == 5


def test_a_resume_keeps_the_tasks_that_were_reused(db):
    base = [
        {"id": "a", "tool": "cache_echo", "input": {"key": "a", "value": 1}},
        {"id": "b", "tool": "cache_echo", "input": {"key": "b", "value": "${a.output}"}},
    ]
    run(workflow(base), db, cache=True)
    tail = {"id": "z", "tool": "cache_fail_while", "input": {"key": "z", "value": "${b.output}"}}
    FAILING.add("z")
    failed = run(workflow([*base, tail]), db, cache=True)
    assert failed.status == FAILED
    assert failed.tasks["a"].reused and failed.tasks["b"].reused
    assert dict(CALLS) == {"a": 1, "b": 1, "z": 1}

    failed_too = run(workflow([*base, tail]), db, cache=True)
    assert failed_too.status == FAILED and dict(CALLS) == {"a": 1, "b": 1, "z": 2}

    FAILING.clear()
    for stopped, options in ((failed, {}), (failed_too, {"cache": True})):
        CALLS.clear()
        resumed = resume(stopped.run_id, db, **options)
        assert resumed.ok
        assert dict(CALLS) == {"z": 1}, "a resume ran a task that was reused"
        assert resumed.tasks["a"].reused and resumed.tasks["b"].reused
        assert resumed.outputs["a"] == stopped.outputs["a"]
        assert resumed.outputs["z"]["value"] == stopped.outputs["b"]
        events = assert_fold_matches(resumed, db)
        session = kinds(events)[
            max(i for i, e in enumerate(events) if kind_of(e) == "run_resumed") :
        ]
        assert all(task_id == "z" for task_id, _ in session if task_id is not None), session


def test_a_retry_whose_work_was_cached_meanwhile_finishes(db):
    """The first attempt of `a` fails; during its backoff `b`, the same work, succeeds
    and is remembered; `a`'s retry is then launched while `a` is `retrying`. Whether
    the retry runs or is answered from the cache, the run must finish."""
    wf = workflow(
        [
            {
                "id": "a",
                "tool": "cache_flaky_once",
                "input": {"key": "k"},
                "retries": 1,
                "retry_delay": 0.3,
            },
            {"id": "b", "tool": "cache_flaky_once", "input": {"key": "k"}},
        ],
        max_concurrency=1,
        cache=True,
    )
    result = run(wf, db, timeout=5)
    assert result.ok, result.tasks
    assert result.outputs == {"a": "ok k", "b": "ok k"}
    assert_fold_matches(result, db)


def test_a_rerun_runs_the_task_though_its_own_success_is_cached(db):
    """`rerun` asks for the work again: the task's own earlier success in this run
    must not answer it. Another run's equal work still may (that is the cache)."""
    wf = workflow(
        [
            {"id": "a", "tool": "cache_echo", "input": {"key": "a"}},
            {"id": "b", "tool": "cache_echo", "input": {"key": "b", "value": "${a.output}"}},
        ],
        cache=True,
    )
    first = run(wf, db)
    assert first.ok and dict(CALLS) == {"a": 1, "b": 1}
    again = resume(first.run_id, db, edit=Edit(rerun=["a"]))
    assert again.ok and dict(CALLS) == {"a": 2, "b": 1}
    assert reused_events(db, first.run_id) == {}
    assert_entries_name_successes(db)

    second = run(wf, db)  # a new run: the first run's successes answer it
    assert dict(CALLS) == {"a": 2, "b": 1}
    assert set(reused_events(db, second.run_id)) == {"a", "b"}
