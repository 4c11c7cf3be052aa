"""foreach (`durable/fanout.py`): expansion, naming, item order and the trigger
semantics of mapped groups, first on the fold alone, then through the engine on a
real SQLite journal."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import pytest
from journal_reads import journal_events

from durable import spec
from durable.errors import ValidationError
from durable.events import (
    RunResumed,
    RunStarted,
    TaskExpanded,
    TaskFailed,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    kind_of,
)
from durable.fanout import DEFAULT_MAX_ITEMS, digest, group_outcome, group_output, instances
from durable.graph import build
from durable.runner import RunResult, aresume, arun
from durable.state import (
    EXPANDED,
    FAILED,
    PENDING,
    SKIPPED,
    SUCCEEDED,
    UPSTREAM_FAILED,
    IllegalTransition,
    RunState,
)
from durable.tools import REGISTRY

# -- the fold alone ------------------------------------------------------------------


def _expanded(count: int) -> RunState:
    state = RunState.new(["src", "fetch", "join"])
    state.apply(RunStarted(at=0.0))
    state.apply(TaskExpanded(task_id="fetch", at=1.0, count=count, digest="d"))
    return state


def _finish(state: RunState, instance: str, how: str, at: float = 2.0) -> None:
    if how == SKIPPED:
        state.apply(TaskSkipped(task_id=instance, at=at, reason="condition false"))
        return
    state.apply(TaskStarted(task_id=instance, attempt=1, at=at))
    if how == SUCCEEDED:
        state.apply(TaskSucceeded(task_id=instance, attempt=1, at=at, output={"i": instance}))
    else:
        state.apply(TaskFailed(task_id=instance, attempt=1, at=at, error=f"{instance} broke\nmore"))


def test_an_expansion_creates_its_instances_in_item_order_pending():
    state = _expanded(3)
    assert list(state.tasks) == ["src", "fetch", "join", "fetch[0]", "fetch[1]", "fetch[2]"]
    assert state.tasks["fetch"].state == EXPANDED
    assert (state.tasks["fetch"].instances, state.tasks["fetch"].digest) == (3, "d")
    assert all(state.tasks[i].state == PENDING for i in instances("fetch", 3))
    assert state.counts() == {PENDING: 5, EXPANDED: 1}


def test_a_task_is_never_expanded_twice():
    state = _expanded(2)
    with pytest.raises(IllegalTransition, match="illegal in state 'expanded'"):
        state.apply(TaskExpanded(task_id="fetch", at=3.0, count=2, digest="d"))
    state = _expanded(0)
    state.apply(RunResumed(at=5.0))  # an expanded task goes back to expanded, not pending
    with pytest.raises(IllegalTransition, match="illegal in state 'expanded'"):
        state.apply(TaskExpanded(task_id="fetch", at=6.0, count=0, digest="d"))


def test_an_instance_that_exists_cannot_be_created_again():
    state = RunState.new(["fetch", "fetch[0]"])
    state.apply(RunStarted(at=0.0))
    with pytest.raises(IllegalTransition, match="exists"):
        state.apply(TaskExpanded(task_id="fetch", at=1.0, count=1, digest="d"))


@pytest.mark.parametrize(
    ("outcomes", "expected", "output"),
    [
        ([], SUCCEEDED, []),
        ([SUCCEEDED, SUCCEEDED], SUCCEEDED, [{"i": "fetch[0]"}, {"i": "fetch[1]"}]),
        ([SUCCEEDED, SKIPPED], SUCCEEDED, [{"i": "fetch[0]"}, None]),
        ([SKIPPED, SKIPPED], SKIPPED, [None, None]),
        ([SUCCEEDED, FAILED, FAILED], FAILED, [{"i": "fetch[0]"}, None, None]),
        ([SKIPPED, FAILED], FAILED, [None, None]),
    ],
    ids=["empty", "all-succeeded", "one-skipped", "all-skipped", "two-failed", "skip-and-fail"],
)
def test_the_group_outcome_and_output(outcomes, expected, output):
    state = _expanded(len(outcomes))
    for index, how in reversed(list(enumerate(outcomes))):  # order of finishing is irrelevant
        _finish(state, f"fetch[{index}]", how)
    outcome, why = group_outcome(state.tasks, "fetch", len(outcomes))
    assert outcome == expected
    assert group_output(state.tasks, "fetch", len(outcomes)) == output
    if expected == FAILED:
        failed = outcomes.count(FAILED)
        first = outcomes.index(FAILED)
        assert why == (
            f"{failed} of {len(outcomes)} instances failed; first fetch[{first}]: fetch[{first}] broke"
        )
    if expected == SKIPPED:
        assert why == f"all {len(outcomes)} instances were skipped"


def test_a_group_ends_like_a_task_and_a_resume_keeps_its_instances():
    state = _expanded(3)
    _finish(state, "fetch[0]", SUCCEEDED)
    _finish(state, "fetch[1]", FAILED)
    state.apply(TaskStarted(task_id="fetch[2]", attempt=1, at=2.0))  # running when it died
    state.apply(RunResumed(at=9.0))
    assert state.tasks["fetch"].state == EXPANDED  # not pending: never expanded twice
    assert state.tasks["fetch"].deaths == 0  # the group was not running: its instance was
    assert state.tasks["fetch[2]"].deaths == 1
    assert [state.tasks[f"fetch[{i}]"].state for i in range(3)] == [SUCCEEDED, PENDING, PENDING]
    for index in (1, 2):
        _finish(state, f"fetch[{index}]", SUCCEEDED, at=10.0)
    state.apply(TaskSucceeded(task_id="fetch", at=11.0, output=[1, 2, 3]))
    assert state.tasks["fetch"].state == SUCCEEDED
    state.apply(RunResumed(at=20.0))
    assert state.tasks["fetch"].state == SUCCEEDED  # kept with its output
    assert state.tasks["fetch"].output == [1, 2, 3]


def test_a_failed_group_goes_back_to_expanded_on_resume():
    state = _expanded(1)
    _finish(state, "fetch[0]", FAILED)
    state.apply(TaskFailed(task_id="fetch", at=3.0, error="1 of 1 instances failed"))
    state.apply(RunResumed(at=4.0))
    assert (state.tasks["fetch"].state, state.tasks["fetch[0]"].state) == (EXPANDED, PENDING)


def test_the_digest_is_of_the_items_in_order():
    assert digest([1, "a", {"k": None}]) == digest([1, "a", {"k": None}])
    assert digest([1, 2]) != digest([2, 1])
    assert len(digest([])) == 8


# -- validation -------------------------------------------------------------------------


def _problems(tasks: list[dict[str, Any]], **fields: Any) -> list[str]:
    workflow = spec.from_data({"name": "v", "tasks": tasks, **fields})
    try:
        build(workflow, None)
    except ValidationError as exc:
        return list(exc.details) if exc.details else [exc.message]
    return []


def test_validation_names_the_task_and_field_of_each_problem():
    problems = _problems(
        [
            {"id": "a", "tool": "echo", "input": "${item}"},
            {"id": "b", "tool": "echo", "foreach": "x ${a.output}"},
            {"id": "c", "tool": "echo", "foreach": 3},
            {"id": "d", "tool": "echo", "input": "${a[2].output}", "max_items": 3},
            {"id": "g", "tool": "echo", "foreach": ["${item}", "${params.nope}"]},
            {"id": "h", "tool": "echo", "when": "${index} > 1"},
            {"id": "item", "tool": "echo"},
            {"id": "index", "tool": "echo"},  # allowed: `${index.output}` is its output
            {"id": "uses", "tool": "echo", "input": "${index.output}"},
        ]
    )
    assert problems == [
        "task 'a': field 'input': reference ${item}: only a task with foreach has an item",
        "task 'b': field 'foreach': expected a list or one reference to a list "
        "(like ${search.output.urls}), got the text 'x ${a.output}'",
        "task 'c': field 'foreach': expected a list or one reference to a list, got int",
        "task 'd': field 'max_items': only a task with foreach has items",
        "task 'd': reference ${a[2].output}: task 'a' has no foreach, so no instances",
        "task 'g': field 'foreach': ${item} is each item of the list, not part of it",
        # reported beside it: the first problem of a list hid the others
        "task 'g': reference ${params.nope}: unknown param 'nope' (declare it under params)",
        "task 'h': field 'when': reference ${index}: only a task with foreach has an index",
        "task 'item': field 'id': 'item' is reserved (${item...} is a foreach task's item)",
    ]


def test_a_foreach_whose_list_comes_from_downstream_is_a_cycle():
    problems = _problems(
        [
            {"id": "e", "tool": "echo", "foreach": "${f.output}"},
            {"id": "f", "tool": "echo", "input": "${e.output}"},
        ]
    )
    assert problems == [
        "cycle: e -> f -> e (task 'e': field 'foreach' takes its list from 'f', "
        "which is downstream of it)"
    ]


def test_references_to_instances_and_items_plan_as_dependencies_on_the_group():
    workflow = spec.from_data(
        {
            "name": "v",
            "tasks": [
                {"id": "src", "tool": "echo", "input": [1, 2]},
                {"id": "m", "tool": "echo", "foreach": "${src.output}", "input": "${item}"},
                {"id": "j", "tool": "echo", "input": ["${m[1].output}", "${m.output}"]},
            ],
        }
    )
    plan = build(workflow, None)
    assert plan.tasks["m"].deps == ("src",)
    assert plan.tasks["j"].deps == ("m",)


# -- through the engine -------------------------------------------------------------------

CALLS: collections.Counter[str] = collections.Counter()
BROKEN: set[Any] = set()


async def fan_work(x: Any) -> Any:
    """Counts its calls by item; fails for the items in BROKEN."""
    CALLS[repr(x)] += 1
    if x in BROKEN:
        raise ValueError(f"item {x!r} is broken")
    return {"x": x}


REGISTRY.add(fan_work, name="fan_work")


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    BROKEN.clear()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


def _run(tasks: list[dict[str, Any]], db: Path, **fields: Any) -> RunResult:
    workflow = spec.from_data({"name": "fan", "tasks": tasks, **fields})
    return asyncio.run(arun(workflow, db=db, durability="off"))


def _assert_fold_matches(result: RunResult, db: Path, static: list[str]) -> list[Any]:
    events = journal_events(db, result.run_id)
    assert RunState.fold(static, events).tasks == result.tasks
    return events


def test_a_mapped_task_runs_once_per_item_and_hands_on_the_list(db):
    tasks = [
        {"id": "src", "tool": "echo", "input": {"urls": ["u0", "u1", "u2"]}},
        {
            "id": "fetch",
            "tool": "fan_work",
            "foreach": "${src.output.urls}",
            "input": {"x": "${item}-${index}"},
        },
        {
            "id": "join",
            "tool": "echo",
            "input": {"all": "${fetch.output}", "one": "${fetch[1].output}"},
        },
    ]
    result = _run(tasks, db)
    assert result.status == SUCCEEDED
    expected = [{"x": "u0-0"}, {"x": "u1-1"}, {"x": "u2-2"}]
    assert result.outputs["fetch"] == expected
    assert result.outputs["join"] == {"all": expected, "one": {"x": "u1-1"}}
    assert CALLS == {"'u0-0'": 1, "'u1-1'": 1, "'u2-2'": 1}
    events = _assert_fold_matches(result, db, ["src", "fetch", "join"])
    # the expansion is committed before any instance starts
    expansion = next(i for i, e in enumerate(events) if isinstance(e, TaskExpanded))
    first_start = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, TaskStarted) and e.task_id.startswith("fetch[")
    )
    assert expansion < first_start
    assert [kind_of(e) for e in events if getattr(e, "task_id", None) == "fetch"] == [
        "task_expanded",
        "task_succeeded",
    ]


def test_each_instance_has_its_own_when_and_retries(db):
    BROKEN.add(2)
    tasks = [
        {
            "id": "m",
            "tool": "fan_work",
            "foreach": [0, 1, 2, 3],
            "input": {"x": "${item}"},
            "when": "${index} != 1",
            "retries": 2,
            "retry_delay": 0,
        },
        {"id": "after", "tool": "echo", "input": "${m.output}", "trigger": "all_done"},
        {"id": "strict", "tool": "echo", "input": "${m.output}"},
    ]
    result = _run(tasks, db)
    assert result.tasks["m[1]"].state == SKIPPED
    assert result.tasks["m[2]"].state == FAILED and result.tasks["m[2]"].attempts == 3
    assert CALLS["2"] == 3 and CALLS["0"] == 1
    assert result.tasks["m"].state == FAILED
    assert (
        result.tasks["m"].error
        == "1 of 4 instances failed; first m[2]: ValueError: item 2 is broken"
    )
    # all_done sees what succeeded, None elsewhere; all_success does not run
    assert result.outputs["after"] == [{"x": 0}, None, None, {"x": 3}]
    assert result.tasks["strict"].state == UPSTREAM_FAILED
    _assert_fold_matches(result, db, ["m", "after", "strict"])


@pytest.mark.parametrize(
    ("trigger", "expected"),
    [("all_success", SKIPPED), ("none_failed", SUCCEEDED), ("all_done", SUCCEEDED)],
)
def test_after_a_group_whose_instances_were_all_skipped(db, trigger, expected):
    tasks = [
        {
            "id": "m",
            "tool": "fan_work",
            "foreach": [1, 2],
            "input": {"x": "${item}"},
            "when": "false",
        },
        {"id": "next", "tool": "echo", "input": "${m.output}", "trigger": trigger},
    ]
    result = _run(tasks, db)
    assert result.tasks["m"].state == SKIPPED
    assert result.tasks["next"].state == expected
    if expected == SUCCEEDED:
        assert result.outputs["next"] in (None, [None, None])


def test_an_empty_list_expands_to_nothing_and_dependents_see_an_empty_list(db):
    tasks = [
        {"id": "src", "tool": "echo", "input": []},
        {"id": "m", "tool": "fan_work", "foreach": "${src.output}", "input": {"x": "${item}"}},
        {"id": "next", "tool": "echo", "input": {"got": "${m.output}"}},
    ]
    result = _run(tasks, db)
    assert result.status == SUCCEEDED
    assert result.outputs["m"] == [] and result.outputs["next"] == {"got": []}
    assert not CALLS
    assert [t for t in result.tasks if "[" in t] == []


@pytest.mark.parametrize(
    ("foreach", "max_items", "error"),
    [
        ("${src.output.n}", None, "foreach: expected a list, got int"),
        ("${src.output.missing}", None, "foreach: ${src.output.missing}: missing key 'missing'"),
        ("${src.output.list}", 2, "foreach: 3 items, more than max_items (2)"),
    ],
)
def test_a_list_that_is_not_one_fails_the_task_clearly(db, foreach, max_items, error):
    tasks = [
        {"id": "src", "tool": "echo", "input": {"n": 3, "list": [1, 2, 3]}},
        {"id": "m", "tool": "fan_work", "foreach": foreach, "input": {"x": "${item}"}},
    ]
    if max_items is not None:
        tasks[1]["max_items"] = max_items
    result = _run(tasks, db)
    assert result.tasks["m"].state == FAILED
    assert result.tasks["m"].error.startswith(error), result.tasks["m"].error
    assert not CALLS
    assert [t for t in result.tasks if "[" in t] == []


def test_the_default_cap_is_documented_and_enforced(db):
    """At run time for a list that a reference gives; at validation for one written out."""
    assert DEFAULT_MAX_ITEMS == 10_000
    items = list(range(10_001))
    tasks = [
        {"id": "src", "tool": "echo", "input": items},
        {"id": "m", "tool": "echo", "foreach": "${src.output}"},
    ]
    result = _run(tasks, db)
    assert result.tasks["m"].state == FAILED
    assert "more than max_items (10000)" in (result.tasks["m"].error or "")
    with pytest.raises(ValidationError, match=r"'foreach': 10001 items, more than max_items"):
        _run([{"id": "m", "tool": "echo", "foreach": items}], db)
    assert _run([{"id": "m", "tool": "echo", "foreach": items[:-1]}], db).status == SUCCEEDED


def test_instances_count_against_max_concurrency_and_tool_limits(db):
    tasks = [
        {
            "id": "m",
            "tool": "fan_slow",
            "foreach": list(range(12)),
            "input": {"x": "${item}"},
        }
    ]
    result = _run(tasks, db, max_concurrency=8, limits={"fan_slow": 3})
    assert result.status == SUCCEEDED
    assert PEAK["fan_slow"] == 3


PEAK: collections.Counter[str] = collections.Counter()
NOW: collections.Counter[str] = collections.Counter()


async def fan_slow(x: Any) -> Any:
    NOW["fan_slow"] += 1
    PEAK["fan_slow"] = max(PEAK["fan_slow"], NOW["fan_slow"])
    await asyncio.sleep(0.01)
    NOW["fan_slow"] -= 1
    return x


REGISTRY.add(fan_slow, name="fan_slow")


def test_a_resume_runs_only_the_instances_that_did_not_succeed_and_never_expands_again(db):
    BROKEN.update({1, 3})
    tasks = [
        {"id": "m", "tool": "fan_work", "foreach": [0, 1, 2, 3], "input": {"x": "${item}"}},
        {"id": "join", "tool": "echo", "input": "${m.output}"},
    ]
    first = _run(tasks, db)
    assert first.status == FAILED and first.tasks["join"].state == UPSTREAM_FAILED
    BROKEN.clear()
    CALLS.clear()
    second = asyncio.run(aresume(first.run_id, db=db, durability="off"))
    assert second.status == SUCCEEDED
    assert CALLS == {"1": 1, "3": 1}
    assert second.outputs["join"] == [{"x": 0}, {"x": 1}, {"x": 2}, {"x": 3}]
    events = _assert_fold_matches(second, db, ["m", "join"])
    assert sum(isinstance(e, TaskExpanded) for e in events) == 1


def test_a_python_built_workflow_can_map(db):
    workflow = spec.Workflow(
        name="code",
        tasks=[
            spec.Task(id="m", tool="fan_work", foreach=["a", "b"], input={"x": "${item}"}),
            spec.Task(id="j", tool="echo", input="${m[0].output}"),
        ],
    )
    result = asyncio.run(arun(workflow, db=db, durability="off"))
    assert result.outputs["j"] == {"x": "a"}
    assert result.outputs["m"] == [{"x": "a"}, {"x": "b"}]
