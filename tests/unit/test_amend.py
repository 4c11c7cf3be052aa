"""Resuming an edited workflow (`durable/amend.py`), and the fold of `run_amended`:
what is kept, what runs again and why, on real runs of the engine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from durable import spec
from durable.amend import NEW, NOT_DONE, RenamedTask, plan_amendment
from durable.errors import SpecError
from durable.events import (
    RunAmended,
    RunResumed,
    RunStarted,
    TaskExpanded,
    TaskStarted,
    TaskSucceeded,
)
from durable.graph import build
from durable.runner import Edit, Hooks, aresume, arun
from durable.state import EXPANDED, PENDING, SUCCEEDED, IllegalTransition, RunState
from durable.tools import REGISTRY

CALLS: list[str] = []


def amend_add(x: int, y: int = 0) -> int:
    CALLS.append(f"add:{x}:{y}")
    return x + y


def amend_fail(x: int) -> int:
    raise ValueError(f"no {x}")


REGISTRY.add(amend_add, name="amend_add")
REGISTRY.add(amend_fail, name="amend_fail")


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


BASE = [
    {"id": "a", "tool": "amend_add", "input": {"x": 1}},
    {"id": "b", "tool": "amend_add", "input": {"x": "${a.output}", "y": 1}},
    {"id": "c", "tool": "echo", "input": "${b.output}"},
    {"id": "d", "tool": "echo", "input": 5},
    {"id": "s", "tool": "echo", "input": 1, "when": "false"},
]


def _workflow(tasks: list[dict[str, Any]]) -> spec.Workflow:
    return spec.from_data({"name": "amend", "tasks": tasks})


def _first_run(tmp_path: Path, tasks: list[dict[str, Any]] = BASE) -> tuple[Path, str]:
    db = tmp_path / "j.db"
    result = asyncio.run(arun(_workflow(tasks), db=db, durability="off"))
    return db, result.run_id


def _plan(
    tmp_path: Path,
    old: list[dict[str, Any]],
    new: list[dict[str, Any]],
    tamper: Any = None,
) -> Any:
    """The plan for `new` against a real run of `old` (its state, from the engine,
    changed by `tamper(state)` where given)."""
    db = tmp_path / "j.db"
    result = asyncio.run(arun(_workflow(old), db=db, durability="off"))
    state = RunState(tasks=result.tasks)
    if tamper is not None:
        tamper(state)
    return plan_amendment(state, _workflow(old), build(_workflow(new), REGISTRY.resolve), {}, "r")


def _edited(**changes: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**task, **changes.get(task["id"], {})} for task in BASE]


def test_nothing_changed_keeps_everything(tmp_path):
    plan = _plan(tmp_path, BASE, BASE)
    assert (plan.kept, plan.runs, plan.removed, plan.reset) == (
        ["a", "b", "c", "d", "s"],
        [],
        [],
        [],
    )


def test_an_input_rewritten_to_the_same_value_is_kept(tmp_path):
    # `${a.output}` rendered 1; the literal 1 is the same work
    plan = _plan(tmp_path, BASE, _edited(b={"input": {"y": 1, "x": 1}}))
    assert plan.runs == []


def test_a_changed_input_runs_with_everything_downstream(tmp_path):
    plan = _plan(tmp_path, BASE, _edited(b={"input": {"x": "${a.output}", "y": 2}}))
    assert plan.runs == [("b", "input changed"), ("c", "upstream 'b' runs again")]
    assert plan.reset == ["b", "c"]
    assert plan.kept == ["a", "d", "s"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"tool": "amend_add"}, "tool changed"),
        ({"when": "true"}, "when changed"),
        ({"trigger": "all_done"}, "trigger changed"),
    ],
)
def test_each_kind_of_change_is_named(tmp_path, change, reason):
    plan = _plan(tmp_path, BASE, _edited(d=change))
    assert plan.runs == [("d", reason)]


def test_a_skipped_task_is_kept_until_its_when_changes(tmp_path):
    assert _plan(tmp_path / "1", BASE, _edited(s={"input": 2})).runs == []
    assert _plan(tmp_path / "2", BASE, _edited(s={"when": "true"})).runs == [("s", "when changed")]


def test_new_removed_and_failed_tasks(tmp_path):
    old = [*BASE, {"id": "f", "tool": "amend_fail", "input": {"x": 1}}]
    new = [task for task in old if task["id"] != "d"] + [
        {"id": "n", "tool": "echo", "input": "${a.output}"}
    ]
    plan = _plan(tmp_path, old, new)
    assert plan.runs == [("f", NOT_DONE), ("n", NEW)]
    assert plan.removed == ["d"]
    assert plan.reset == []


def test_a_renamed_task_is_refused(tmp_path):
    new = [task if task["id"] != "d" else {**task, "id": "d2"} for task in BASE]
    with pytest.raises(RenamedTask, match="task 'd' was renamed to 'd2'"):
        _plan(tmp_path, BASE, new)


def test_a_foreach_task_is_kept_or_reset_with_its_instances(tmp_path):
    old = [{"id": "m", "tool": "amend_add", "foreach": [1, 2], "input": {"x": "${item}"}}]
    assert _plan(tmp_path / "1", old, old).runs == []
    changed = [{**old[0], "input": {"x": "${item}", "y": 1}}]
    plan = _plan(tmp_path / "2", old, changed)
    assert plan.runs == [("m", "input changed")] and plan.reset == ["m"]
    more = [{**old[0], "foreach": [1, 2, 3]}]
    assert _plan(tmp_path / "3", old, more).runs == [("m", "foreach changed")]


def test_every_instance_of_a_foreach_task_is_compared_not_only_the_first(tmp_path):
    """The first instance stood for all: one skipped (no fingerprint), or one whose
    item had not changed, let the others' changed work be kept."""
    old = [{"id": "m", "tool": "amend_add", "foreach": [1, 2, 3], "input": {"x": "${item}"}}]

    def other_work_at_1(state: RunState) -> None:  # as a tool whose code changed
        state.tasks["m[1]"].fingerprint = "0" * 32

    plan = _plan(tmp_path / "1", old, old, other_work_at_1)
    assert plan.runs == [("m", "tool code changed")] and plan.reset == ["m"]

    def other_list(state: RunState) -> None:  # as an upstream rerun alone
        state.tasks["m"].digest = "00000000"

    plan = _plan(tmp_path / "2", old, old, other_list)
    assert plan.runs == [("m", "its list changed")] and plan.reset == ["m"]


def test_a_foreach_task_that_failed_keeps_no_old_work_beside_new(tmp_path):
    """Its instances that succeeded ran the old input: an edited input runs them all
    again, not only the one that failed, or its output would mix the two."""
    old = [{"id": "m", "tool": "amend_add", "foreach": [1, "two", 3], "input": {"x": "${item}"}}]
    assert _plan(tmp_path / "1", old, old).runs == [("m", NOT_DONE)]  # as any resume
    changed = [{**old[0], "input": {"x": "${item}", "y": 1}}]
    plan = _plan(tmp_path / "2", old, changed)
    assert plan.runs == [("m", "input changed")] and plan.reset == ["m"]


# -- the fold of run_amended ------------------------------------------------------------


def test_the_fold_replaces_the_tasks_and_resets_what_it_names():
    state = RunState.new(["a", "b", "gone"])
    state.apply(RunStarted(at=0.0, source="/w.yaml"))
    for task_id in ("a", "b", "gone"):
        state.apply(TaskStarted(task_id=task_id, attempt=1, at=1.0, fingerprint="f"))
        state.apply(TaskSucceeded(task_id=task_id, attempt=1, at=1.5, output=task_id))
    state.apply(RunResumed(at=2.0))
    state.apply(
        RunAmended(at=2.1, spec=b"{}", tasks=["b", "new", "a"], reset=["b"], source="/v.yaml")
    )
    assert list(state.tasks) == ["b", "new", "a"]
    assert (state.tasks["b"].state, state.tasks["b"].output, state.tasks["b"].attempts) == (
        PENDING,
        None,
        1,
    )
    assert state.tasks["a"].state == SUCCEEDED and state.tasks["new"].state == PENDING
    assert state.counts() == {PENDING: 2, SUCCEEDED: 1}
    assert (state.amendments, state.spec, state.source) == (1, b"{}", "/v.yaml")


def test_an_amendment_needs_an_open_session_and_nothing_in_flight():
    state = RunState.new(["a"])
    state.apply(RunStarted(at=0.0))
    state.apply(TaskStarted(task_id="a", attempt=1, at=1.0))
    with pytest.raises(IllegalTransition, match="in flight"):
        state.apply(RunAmended(at=2.0, spec=b"{}", tasks=["a"], reset=[]))


def test_a_reset_foreach_task_loses_its_instances():
    state = RunState.new(["m"])
    state.apply(RunStarted(at=0.0))
    state.apply(TaskExpanded(task_id="m", at=1.0, count=2, digest="d"))
    state.apply(RunResumed(at=2.0))
    assert state.tasks["m"].state == EXPANDED
    state.apply(RunAmended(at=3.0, spec=b"{}", tasks=["m"], reset=["m"]))
    assert list(state.tasks) == ["m"] and state.tasks["m"].instances is None


# -- through aresume ----------------------------------------------------------------------


def test_an_edited_resume_runs_exactly_the_plan_and_journals_it(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    path = folder / "wf.json"
    path.write_bytes(spec.encode(_workflow(BASE)))
    db = tmp_path / "j.db"
    first = asyncio.run(arun(path, db=db, durability="off"))
    assert first.status == SUCCEEDED
    path.write_bytes(spec.encode(_workflow(_edited(b={"input": {"x": "${a.output}", "y": 5}}))))
    plans: list[Any] = []
    hooks = Hooks(on_plan=lambda run_id, plan: plans.append(plan))

    dry = asyncio.run(
        aresume(first.run_id, db=db, durability="off", hooks=hooks, edit=Edit(dry_run=True))
    )
    assert dry.dry_run and plans[0].runs == [
        ("b", "input changed"),
        ("c", "upstream 'b' runs again"),
    ]
    CALLS.clear()
    done = asyncio.run(aresume(first.run_id, db=db, durability="off", hooks=hooks, edit=Edit()))
    assert done.status == SUCCEEDED
    assert CALLS == ["add:1:5"]  # b alone of the amend_add tasks
    assert done.outputs["c"] == 6
    # a plain resume later works on the amended workflow, and has nothing to do
    again = asyncio.run(aresume(first.run_id, db=db, durability="off"))
    assert again.already_finished


def test_a_run_built_in_code_needs_a_workflow_file(tmp_path):
    db, run_id = _first_run(tmp_path)
    with pytest.raises(Exception, match="built in code"):
        asyncio.run(aresume(run_id, db=db, durability="off", edit=Edit()))
    other = tmp_path / "other.json"
    other.write_bytes(spec.encode(_workflow(BASE)))
    result = asyncio.run(aresume(run_id, db=db, durability="off", edit=Edit(path=str(other))))
    assert result.already_finished  # nothing changed


def test_a_renamed_task_is_refused_naming_the_file(tmp_path):
    db, run_id = _first_run(tmp_path)
    other = tmp_path / "renamed.json"
    renamed = [task if task["id"] != "d" else {**task, "id": "d2"} for task in BASE]
    other.write_bytes(spec.encode(_workflow(renamed)))
    with pytest.raises(SpecError, match=r"renamed\.json.*task 'd' was renamed to 'd2'"):
        asyncio.run(aresume(run_id, db=db, durability="off", edit=Edit(path=str(other))))


def test_rerun_of_a_foreach_task_expands_it_anew_numbering_attempts_on(tmp_path):
    db, run_id = _first_run(
        tmp_path, [{"id": "m", "tool": "amend_add", "foreach": [1, 2], "input": {"x": "${item}"}}]
    )
    plans: list[Any] = []
    hooks = Hooks(on_plan=lambda run, plan: plans.append(plan))
    CALLS.clear()
    result = asyncio.run(
        aresume(run_id, db=db, durability="off", hooks=hooks, edit=Edit(rerun=["m"]))
    )
    assert plans[0].runs == [
        ("m", "asked to run again"),
        ("m[0]", "its task 'm' runs again"),
        ("m[1]", "its task 'm' runs again"),
    ]
    assert plans[0].reset == ["m"] and plans[0].kept == []
    assert sorted(CALLS) == ["add:1:0", "add:2:0"]
    assert [result.tasks[f"m[{i}]"].attempts for i in range(2)] == [2, 2]
    assert result.outputs["m"] == [1, 2]


def test_a_rerun_plan_names_what_did_not_succeed_too(tmp_path):
    """A rerun is a resume: a task that had failed runs as well, and its plan says so
    (it printed "1 kept" for a run that then kept none)."""
    old = [*BASE, {"id": "f", "tool": "amend_fail", "input": {"x": 1}}]
    db, run_id = _first_run(tmp_path, old)
    plans: list[Any] = []
    hooks = Hooks(on_plan=lambda run, plan: plans.append(plan))
    asyncio.run(
        aresume(run_id, db=db, durability="off", hooks=hooks, edit=Edit(rerun=["d"], dry_run=True))
    )
    assert plans[0].runs == [("d", "asked to run again"), ("f", NOT_DONE)]
    assert plans[0].reset == ["d"] and plans[0].kept == ["a", "b", "c", "s"]
