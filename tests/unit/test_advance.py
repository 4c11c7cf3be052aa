"""advance.py: the fleet's rules, a run moved on by its committed outcomes.

First each rule on its own, through `Advance` alone: a plan, a fold, the outcomes a
worker would commit, and the events and ready tasks that come back. Then a property:
on random DAGs (triggers, `when`, failures, `foreach`), driving a run with
`Advance` (outcomes committed in a random order, in random batches, by workers that
sometimes take the run up from its journal) ends every task exactly as the
in-process `Engine` ends it on a real SQLite journal.

The regressions at the end are bugs these tests found in `Advance`: a task made
ready twice, a group ended twice on resume, and a failed group's partial output
lost by a worker that loads the run.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import durable
from durable import spec
from durable.advance import Advance, Steps
from durable.attempt import describe
from durable.decide import poison_error
from durable.errors import DurableError
from durable.events import (
    Event,
    RunFinished,
    RunResumed,
    RunStarted,
    TaskExpanded,
    TaskFailed,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    TaskUpstreamFailed,
    decode_output,
    encode_output,
)
from durable.executors import call_args
from durable.fanout import digest
from durable.graph import Plan
from durable.journal import Journal, RunRecord
from durable.loader import plan_workflow
from durable.runner import RunResult, aresume, arun
from durable.spec import TRIGGERS
from durable.state import (
    EXPANDED,
    FAILED,
    PENDING,
    SKIPPED,
    SUCCEEDED,
    UPSTREAM_FAILED,
    RunState,
)

HERE = Path(__file__).parent
RUN_ID = "advance-test"


# -- the tool (a name unique to this file) ------------------------------------------------


def _mix(value: Any) -> int:
    """Every int in a value, summed: how a task's output depends on its upstreams'."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return sum(_mix(x) for x in value.values())
    if isinstance(value, list):
        return sum(_mix(x) for x in value)
    return 0


@durable.tool(name="adv_work")
def adv_work(
    v: Any = 0,
    up: Any = None,
    fail: bool = False,
    fail_mod: int = 0,
    index: int | None = None,
    fail_index: int | None = None,
    **rendered_only: Any,  # keys some tests render (`i`, `all`) but never call it with
) -> Any:
    """Deterministic: fails when told to (`fail`, `v` a multiple of `fail_mod`, or
    `index` equal to `fail_index`), else returns `v`, a small number `n` mixed from
    its upstreams, and a list of 0-3 items (what a `foreach` downstream expands over)."""
    if (
        fail
        or (fail_mod and _mix(v) % fail_mod == 0)
        or (index is not None and index == fail_index)
    ):
        raise ValueError(f"v={v!r} fails")
    n = (_mix(v) * 7 + _mix(up)) % 5
    return {"v": v, "n": n, "items": [n + k for k in range(1 + n % 3)] if n else []}


# -- driving Advance by hand -------------------------------------------------------------


def make_plan(tasks: list[dict[str, Any]]) -> Plan:
    workflow = spec.from_data({"name": "advance", "tasks": tasks}, source="<advance test>")
    return plan_workflow(workflow, HERE)


class Driver:
    """One run driven by `Advance`, and its journal: every event a worker would have
    committed (the starts and outcomes it hands in, and what the steps return)."""

    def __init__(self, tasks: list[dict[str, Any]], max_deaths: int = 3) -> None:
        self.tasks = tasks
        self.max_deaths = max_deaths
        self.journal: list[Event] = [RunStarted(at=0.0)]
        self.clock = itertools.count(1)
        self.load()

    def load(self) -> None:
        """Build the run afresh from its journal, as a worker that takes it up does
        (`FleetStore._load`: a new plan, the fold, a new `Advance`)."""
        self.plan = make_plan(self.tasks)
        self.state = RunState.fold(self.plan.tasks, self.journal)
        self.adv = Advance(self.plan, self.state, {}, RUN_ID, max_deaths=self.max_deaths)

    def now(self) -> float:
        return float(next(self.clock))

    def _took(self, steps: Steps) -> Steps:
        self.journal += steps.events
        return steps

    def start(self) -> Steps:
        return self._took(self.adv.start(self.now()))

    def started(self, *task_ids: str) -> None:
        for task_id in task_ids:
            attempt = self.state.tasks[task_id].attempts + 1
            event = TaskStarted(task_id=task_id, attempt=attempt, at=self.now())
            self.adv.apply(event)
            self.journal.append(event)

    def resumed(self) -> None:
        """The process driving the run died; a new session takes it up."""
        self.journal.append(RunResumed(at=self.now()))
        self.load()

    def step(self, endings: Iterable[Event]) -> Steps:
        endings = list(endings)
        self.journal += endings
        return self._took(self.adv.step(endings, self.now()))

    def succeeded(self, task_id: str, output: Any) -> TaskSucceeded:
        attempt = self.state.tasks[task_id].attempts
        return TaskSucceeded(task_id=task_id, attempt=attempt, at=self.now(), output=output)

    def failed(self, task_id: str, error: str = "ValueError: boom") -> TaskFailed:
        attempt = self.state.tasks[task_id].attempts
        return TaskFailed(task_id=task_id, attempt=attempt, at=self.now(), error=error)

    def run(self, task_id: str, output: Any = None, error: str | None = None) -> Steps:
        """Start a task and commit its outcome: it fails with `error`, if given."""
        self.started(task_id)
        ending = self.failed(task_id, error) if error else self.succeeded(task_id, output)
        return self.step([ending])

    def states(self) -> dict[str, str]:
        return {task_id: task.state for task_id, task in self.state.tasks.items()}

    def render(self, task_id: str) -> Any:
        plan = self.plan.tasks[task_id]
        return plan.template.render(self.adv.scope_of(plan))


def kinds(events: Iterable[Event]) -> list[tuple[str, str | None]]:
    return [(type(e).__name__, getattr(e, "task_id", None)) for e in events]


def task(task_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": task_id, "tool": "adv_work", "input": {"v": 1}, **fields}


# -- start ----------------------------------------------------------------------------------


def test_start_readies_the_roots_and_nothing_else():
    drive = Driver([task("a"), task("b"), task("c", dependencies=["a", "b"])])
    assert drive.start() == Steps([], ["a", "b"])
    assert drive.states() == {"a": PENDING, "b": PENDING, "c": PENDING}
    drive.run("a", {"n": 1})
    assert drive.states()["c"] == PENDING  # b has not finished
    assert drive.run("b", {"n": 2}) == Steps([], ["c"])


# -- triggers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "expected"),
    [("all_success", UPSTREAM_FAILED), ("none_failed", UPSTREAM_FAILED), ("all_done", PENDING)],
)
def test_a_failed_upstream_blocks_all_success_and_none_failed_but_not_all_done(trigger, expected):
    drive = Driver(
        [
            task("a"),
            task("b", dependencies=["a"], trigger=trigger),
            task("c", dependencies=["b"]),  # all_success, after b
        ]
    )
    drive.start()
    steps = drive.run("a", error="ValueError: a broke")
    if expected == UPSTREAM_FAILED:
        # transitively, in the same step: c after b
        assert kinds(steps.events) == [
            ("TaskUpstreamFailed", "b"),
            ("TaskUpstreamFailed", "c"),
            ("RunFinished", None),
        ]
        assert steps.events[-1].status == FAILED
        assert steps.ready == []
        assert drive.states() == {"a": FAILED, "b": UPSTREAM_FAILED, "c": UPSTREAM_FAILED}
    else:
        assert steps == Steps([], ["b"])
        assert drive.states()["b"] == PENDING  # ready: a worker starts it


@pytest.mark.parametrize(
    ("trigger", "ready"),
    [("all_success", False), ("none_failed", True), ("all_done", True)],
)
def test_a_skipped_upstream_skips_all_success_but_not_none_failed(trigger, ready):
    drive = Driver([task("a", when="false"), task("b", dependencies=["a"], trigger=trigger)])
    steps = drive.start()
    if ready:
        assert steps.events[0] == TaskSkipped(task_id="a", at=1.0, reason="condition false: false")
        assert "b" in steps.ready
    else:
        assert steps.ready == []
        assert steps.events[1] == TaskSkipped(task_id="b", at=1.0, reason="upstream 'a' skipped")
        assert isinstance(steps.events[-1], RunFinished)


def test_an_upstream_failed_upstream_blocks_like_a_failed_one():
    drive = Driver(
        [
            task("a"),
            task("b", dependencies=["a"]),
            task("c", dependencies=["b"], trigger="none_failed"),
            task("d", dependencies=["b"], trigger="all_done"),
        ]
    )
    drive.start()
    steps = drive.run("a", error="ValueError: a broke")
    assert kinds(steps.events) == [("TaskUpstreamFailed", "b"), ("TaskUpstreamFailed", "c")]
    assert steps.ready == ["d"]


# -- when ---------------------------------------------------------------------------------------


def test_when_false_skips_with_the_condition_as_reason_and_true_runs():
    drive = Driver(
        [
            task("a"),
            task("low", when="${a.output.n} > 5"),
            task("high", when="${a.output.n} <= 5"),
        ]
    )
    drive.start()
    steps = drive.run("a", {"n": 3})
    assert steps.events == [
        TaskSkipped(
            task_id="low", at=steps.events[0].at, reason="condition false: ${a.output.n} > 5"
        )
    ]
    assert steps.ready == ["high"]


def test_a_when_that_raises_fails_the_task():
    drive = Driver(
        [task("a"), task("b", when="${a.output.missing} > 1"), task("c", dependencies=["b"])]
    )
    drive.start()
    steps = drive.run("a", {"n": 3})
    assert kinds(steps.events) == [
        ("TaskFailed", "b"),
        ("TaskUpstreamFailed", "c"),
        ("RunFinished", None),
    ]
    error = drive.state.tasks["b"].error
    assert error == "when: ${a.output.missing}: missing key 'missing' (keys: n)"
    assert steps.events[-1].status == FAILED


def test_a_when_reading_a_failed_upstream_fails_its_all_done_task():
    # the failed upstream has no committed output: reading it is an error of the `when`
    drive = Driver([task("a"), task("b", when="${a.output.n} > 1", trigger="all_done")])
    drive.start()
    steps = drive.run("a", error="ValueError: a broke")
    assert drive.state.tasks["b"].state == FAILED
    assert drive.state.tasks["b"].error == "when: ${a.output.n}: task 'a' has no committed output"
    assert kinds(steps.events)[-1] == ("RunFinished", None)


# -- foreach ------------------------------------------------------------------------------------


def _fanned(when: str | None = None, trigger: str = "all_success") -> Driver:
    mapped = task("m", foreach="${src.output.items}", input={"v": "${item}", "i": "${index}"})
    if when is not None:
        mapped["when"] = when
    return Driver(
        [
            task("src"),
            mapped,
            task("join", input={"all": "${m.output}"}, trigger=trigger),
        ]
    )


def test_foreach_expands_readies_its_instances_and_ends_with_outputs_in_item_order():
    drive = _fanned()
    drive.start()
    items = ["x", "y", "z"]
    steps = drive.run("src", {"items": items})
    assert steps.events == [
        TaskExpanded(task_id="m", at=steps.events[0].at, count=3, digest=digest(items))
    ]
    assert steps.ready == ["m[0]", "m[1]", "m[2]"]
    assert drive.states()["m"] == EXPANDED
    assert [drive.render(f"m[{i}]") for i in range(3)] == [
        {"v": "x", "i": 0},
        {"v": "y", "i": 1},
        {"v": "z", "i": 2},
    ]
    drive.started("m[0]", "m[1]", "m[2]")
    # finished out of order, the last two in one commit
    assert drive.step([drive.succeeded("m[2]", "Z")]) == Steps([], [])
    steps = drive.step([drive.succeeded("m[0]", "X"), drive.succeeded("m[1]", "Y")])
    assert kinds(steps.events) == [("TaskSucceeded", "m")]
    assert steps.events[0].output == ["X", "Y", "Z"]
    assert steps.ready == ["join"]
    assert drive.render("join") == {"all": ["X", "Y", "Z"]}


def test_foreach_over_an_empty_list_succeeds_at_once_with_an_empty_list():
    drive = _fanned()
    drive.start()
    steps = drive.run("src", {"items": []})
    assert kinds(steps.events) == [("TaskExpanded", "m"), ("TaskSucceeded", "m")]
    assert (steps.events[0].count, steps.events[1].output) == (0, [])
    assert steps.ready == ["join"]
    assert drive.render("join") == {"all": []}
    assert [t for t in drive.state.tasks if "[" in t] == []


@pytest.mark.parametrize(
    ("trigger", "join"),
    [("all_success", SKIPPED), ("none_failed", PENDING), ("all_done", PENDING)],
)
def test_foreach_whose_instances_are_all_skipped_is_skipped(trigger, join):
    drive = _fanned(when="${index} > 5", trigger=trigger)
    drive.start()
    steps = drive.run("src", {"items": [1, 2]})
    assert kinds(steps.events)[:4] == [
        ("TaskExpanded", "m"),
        ("TaskSkipped", "m[0]"),
        ("TaskSkipped", "m[1]"),
        ("TaskSkipped", "m"),
    ]
    assert steps.events[1].reason == "condition false: ${index} > 5"
    assert steps.events[3].reason == "all 2 instances were skipped"
    assert drive.states()["join"] == join
    assert steps.ready == ([] if join == SKIPPED else ["join"])


def test_foreach_with_a_failed_instance_fails_and_all_done_sees_what_succeeded():
    drive = _fanned(when="${index} != 1", trigger="all_done")
    drive.start()
    steps = drive.run("src", {"items": [10, 11, 12]})
    assert kinds(steps.events) == [("TaskExpanded", "m"), ("TaskSkipped", "m[1]")]
    assert steps.ready == ["m[0]", "m[2]"]
    drive.started("m[0]", "m[2]")
    assert drive.step([drive.failed("m[2]", "ValueError: bad\nline two")]).events == []
    steps = drive.step([drive.succeeded("m[0]", "A")])
    assert kinds(steps.events) == [("TaskFailed", "m")]
    assert steps.events[0].error == "1 of 3 instances failed; first m[2]: ValueError: bad"
    assert steps.ready == ["join"]
    assert drive.render("join") == {"all": ["A", None, None]}


def test_foreach_over_what_is_not_a_list_fails_the_task():
    drive = _fanned()
    drive.start()
    steps = drive.run("src", {"items": 3})
    assert steps.events[0] == TaskFailed(
        task_id="m", at=steps.events[0].at, error="foreach: expected a list, got int"
    )
    assert kinds(steps.events)[1:] == [("TaskUpstreamFailed", "join"), ("RunFinished", None)]


def test_foreach_over_a_literal_list_expands_at_start():
    drive = Driver([task("m", foreach=[1, 2], input={"v": "${item}"})])
    steps = drive.start()
    assert kinds(steps.events) == [("TaskExpanded", "m")]
    assert steps.ready == ["m[0]", "m[1]"]


def test_a_resumed_group_runs_only_its_unfinished_instances():
    drive = _fanned()
    drive.start()
    drive.run("src", {"items": ["a", "b"]})
    drive.run("m[0]", "A")
    drive.started("m[1]")  # running when its process died
    drive.resumed()
    assert drive.state.tasks["m[1]"].deaths == 1
    assert drive.start() == Steps([], ["m[1]"])
    steps = drive.run("m[1]", "B")
    assert drive.state.tasks["m[1]"].attempts == 2
    assert kinds(steps.events) == [("TaskSucceeded", "m")]
    assert steps.events[0].output == ["A", "B"]
    assert steps.ready == ["join"]


def test_a_worker_that_loads_the_run_mid_group_finishes_the_group():
    drive = _fanned()
    drive.start()
    drive.run("src", {"items": ["a", "b", "c"]})
    drive.started("m[0]", "m[1]")
    drive.step([drive.succeeded("m[1]", "B")])
    drive.load()  # another worker: only the journal, m[0] still running
    drive.started("m[2]")
    assert drive.step([drive.succeeded("m[2]", "C")]) == Steps([], [])
    steps = drive.step([drive.succeeded("m[0]", "A")])
    assert kinds(steps.events) == [("TaskSucceeded", "m")]
    assert steps.events[0].output == ["A", "B", "C"]
    assert drive.render("join") == {"all": ["A", "B", "C"]}


# -- the run's end ----------------------------------------------------------------------------


def _finishes(events: list[Event]) -> list[RunFinished]:
    return [e for e in events if isinstance(e, RunFinished)]


def test_the_run_finishes_once_and_only_when_nothing_is_unfinished():
    drive = Driver(
        [
            task("a"),
            task("m", foreach=[1, 2], input={"v": "${item}"}),
            task("b", dependencies=["a"]),
        ]
    )
    drive.start()
    drive.started("m[0]", "m[1]")
    assert _finishes(drive.run("a", {"n": 1}).events) == []
    assert _finishes(drive.run("b", {"n": 2}).events) == []
    assert _finishes(drive.step([drive.succeeded("m[0]", 0)]).events) == []
    steps = drive.step([drive.succeeded("m[1]", 1)])
    assert kinds(steps.events) == [("TaskSucceeded", "m"), ("RunFinished", None)]
    assert steps.events[-1].status == SUCCEEDED
    assert drive.adv.unfinished() == 0
    assert drive.state.status == SUCCEEDED
    assert drive.step([]) == Steps([], [])  # never twice
    assert len(_finishes(drive.journal)) == 1 and drive.journal[-1] is steps.events[-1]


def test_a_run_with_a_failure_finishes_failed():
    drive = Driver([task("a"), task("b", trigger="all_done", dependencies=["a"])])
    drive.start()
    assert _finishes(drive.run("a", error="ValueError: a").events) == []
    steps = drive.run("b", {"n": 1})
    assert _finishes(steps.events) == [RunFinished(at=steps.events[-1].at, status=FAILED)]
    assert drive.step([]) == Steps([], [])


def test_a_run_decided_entirely_at_start_finishes_at_start():
    drive = Driver([task("a", when="false"), task("b", dependencies=["a"])])
    steps = drive.start()
    assert kinds(steps.events) == [
        ("TaskSkipped", "a"),
        ("TaskSkipped", "b"),
        ("RunFinished", None),
    ]
    assert steps.events[-1].status == SUCCEEDED  # skipped tasks are not failures
    assert drive.start() == Steps([], [])  # a second start decides nothing again


# -- poison -------------------------------------------------------------------------------------


def _deaths(drive: Driver, task_id: str, count: int) -> None:
    """`count` sessions whose process died while `task_id` ran."""
    for _ in range(count):
        drive.started(task_id)
        drive.resumed()


@pytest.mark.parametrize(("max_deaths", "deaths"), [(3, 2), (3, 3), (3, 4), (1, 1)])
def test_a_task_at_max_deaths_is_failed_not_started(max_deaths, deaths):
    drive = Driver(
        [task("bad"), task("after", dependencies=["bad"]), task("fine")], max_deaths=max_deaths
    )
    _deaths(drive, "bad", deaths)
    assert drive.state.tasks["bad"].deaths == deaths
    steps = drive.start()
    if deaths < max_deaths:
        assert steps == Steps([], ["bad", "fine"])
        return
    at = steps.events[0].at
    assert steps.events == [
        TaskFailed(task_id="bad", at=at, error=poison_error(deaths)),
        TaskUpstreamFailed(task_id="after", at=at),
    ]
    assert steps.ready == ["fine"]
    done = drive.run("fine", {"n": 1})
    assert done.events == [RunFinished(at=done.events[0].at, status=FAILED)]


# -- regressions: a task made ready twice --------------------------------------------------------

# A dependent decided in a cascade (its last upstream ended without running) while
# still pending (ready, not started) was decided again by the loop that started the
# cascade, and listed in `ready` twice.


def test_start_makes_a_task_ready_once():
    # `start` cascades from a's skip to b (ready, still pending), then its loop reaches b
    drive = Driver([task("a", when="false"), task("b", dependencies=["a"], trigger="none_failed")])
    assert drive.start().ready == ["b"]


def test_start_readies_the_instances_of_a_cascaded_expansion_once():
    drive = Driver(
        [
            task("a", when="false"),
            task(
                "m",
                dependencies=["a"],
                trigger="none_failed",
                foreach=[1, 2],
                input={"v": "${item}"},
            ),
        ]
    )
    assert drive.start().ready == ["m[0]", "m[1]"]


def test_step_makes_a_task_ready_once():
    # x ends: its dependent z is skipped, which readies d; then x's loop reaches d
    drive = Driver(
        [
            task("x"),
            task("z", dependencies=["x"], when="false"),
            task("d", dependencies=["x", "z"], trigger="none_failed"),
        ]
    )
    drive.start()
    assert drive.run("x", {"n": 1}).ready == ["d"]


# -- regression: a group completed twice on resume -----------------------------------------------


def engine_resumed(tasks: list[dict[str, Any]], journal: list[Event]) -> RunResult:
    """The Engine's session over a journal (run_started first) whose last session
    died: it folds it, appends its own run_resumed, and runs the run to its end."""
    workflow = spec.from_data({"name": "advance", "tasks": tasks})

    async def main(db: Path) -> RunResult:
        store = await Journal.open(db, durability="off")
        store.start()
        try:
            record = RunRecord(
                run_id=RUN_ID,
                workflow=workflow.name,
                spec=spec.encode(workflow),
                spec_hash=spec.spec_hash(workflow),
                params={},
                base_dir=str(HERE),
                created_at=0.0,
                cwd=str(db.parent),
            )
            await store.create_run(record, journal[0])
            for event in journal[1:]:
                store.append(RUN_ID, event)
            await store.flush()
        finally:
            await store.close()
        return await aresume(RUN_ID, db=db, durability="off", max_deaths=3)

    with tempfile.TemporaryDirectory() as folder:
        return asyncio.run(main(Path(folder) / "journal.db"))


def _last_instance_poisoned() -> Driver:
    """m[0] succeeded; m[1], m's last unfinished instance, took its process down
    three times: the resume fails it (poison), which ends the group."""
    drive = Driver(
        [
            task("m", foreach=[1, 2], input={"v": "${item}"}),
            task("after", input={"v": 1, "up": "${m.output}"}, trigger="all_done"),
        ]
    )
    drive.start()
    drive.run("m[0]", {"n": 1})
    _deaths(drive, "m[1]", 3)
    return drive


_GROUP_FAILED = f"1 of 2 instances failed; first m[1]: {poison_error(3)}"


def test_the_engine_ends_a_group_whose_last_instance_is_poison_once():
    drive = _last_instance_poisoned()
    # the journal as the Engine would find it: the third session died too
    result = engine_resumed(drive.tasks, drive.journal[:-1])
    assert result.tasks["m[1]"].state == FAILED
    assert result.tasks["m[1]"].error == poison_error(3)
    assert (result.tasks["m"].state, result.tasks["m"].error) == (FAILED, _GROUP_FAILED)
    assert result.tasks["after"].output == adv_work(v=1, up=[{"n": 1}, None])
    assert result.status == FAILED


def test_advance_ends_a_group_whose_last_instance_is_poison_once():
    drive = _last_instance_poisoned()
    steps = drive.start()
    at = steps.events[0].at
    assert steps.events == [
        TaskFailed(task_id="m[1]", at=at, error=poison_error(3)),
        TaskFailed(task_id="m", at=at, error=_GROUP_FAILED),
    ]
    assert steps.ready == ["after"]


# -- regression: a worker that loads a run forgot a failed group's partial output ---------------

# `Advance.__init__` put in its scope the outputs of succeeded and skipped tasks only;
# `apply` gives a failed group its partial list for `all_done` dependents: a worker
# that loaded the run after the group failed could not render what reads it.


def _group_failed(**join: Any) -> Driver:
    drive = Driver(
        [
            task("m", foreach=[1, 2], input={"v": "${item}"}),
            task("join", trigger="all_done", **join),
        ]
    )
    drive.start()
    drive.run("m[0]", "A")
    drive.run("m[1]", error="ValueError: b")
    assert drive.state.tasks["m"].state == FAILED
    return drive


def test_the_worker_that_failed_a_group_hands_all_done_its_partial_list():
    drive = _group_failed(input={"all": "${m.output}"})
    assert drive.render("join") == {"all": ["A", None]}


def test_a_worker_that_loads_the_run_after_a_group_failed_hands_all_done_its_partial_list():
    drive = _group_failed(input={"all": "${m.output}"})
    drive.load()  # a worker that takes the run up: its journal only
    assert drive.render("join") == {"all": ["A", None]}


def test_a_worker_can_load_a_run_expanded_over_a_failed_groups_list():
    drive = _group_failed(foreach="${m.output}", input={"v": "${item}"})
    assert drive.states()["join"] == EXPANDED  # over ["A", None]
    drive.load()  # raises: "its foreach list is not the one it was expanded from"
    assert drive.adv.start(100.0).ready == ["join[0]", "join[1]"]


# -- property: Advance ends a run as the Engine does ----------------------------------------------


@st.composite
def random_workflows(draw: st.DrawFn) -> list[dict[str, Any]]:
    """5-30 tasks of `adv_work`, each depending on some earlier ones (explicitly or by
    a reference in its input), with random triggers, some `when`s on upstream
    outputs, some failures, and some `foreach`s over an upstream's list. A third of
    them are calm: nothing fails, so that runs that succeed are compared too.

    The odds come from a `random.Random` seeded by Hypothesis: its own choices lean
    to the simplest value, which would make nearly every task a failure."""
    count = draw(st.integers(5, 30))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    calm = rng.random() < 1 / 3
    tasks: list[dict[str, Any]] = []
    plain: list[str] = []  # earlier tasks without foreach: their output is a dict
    groups: list[str] = []  # earlier tasks with foreach: their output is a list
    for i in range(count):
        task_id = f"t{i}"
        earlier = [t["id"] for t in tasks]
        near = earlier[-6:] if rng.random() < 0.8 else earlier  # mostly recent tasks
        deps = rng.sample(near, rng.randint(0, min(3, len(near))))
        by_ref = [d for d in deps if rng.random() < 0.5]
        if groups and groups[-1] not in deps and rng.random() < 0.4:
            by_ref.append(groups[-1])  # reads the list of the latest group's outputs
        spec_: dict[str, Any] = {
            "id": task_id,
            "tool": "adv_work",
            "trigger": rng.choice(["all_success", *TRIGGERS]),
        }
        if explicit := [d for d in deps if d not in by_ref]:
            spec_["dependencies"] = explicit
        value: dict[str, Any] = {"v": i, "up": [f"${{{d}.output}}" for d in by_ref]}
        when: str | None = None
        if plain and rng.random() < 0.3:
            lists: list[Any] = [f"${{{d}.output.items}}" for d in plain[-4:]]
            lists += [f"${{{g}.output}}" for g in groups[-2:]]  # a group's list of outputs
            lists += [[], [1, 2, 3]]
            if not calm:
                lists.append(f"${{{plain[-1]}.output}}")  # not a list
                if rng.random() < 0.1:
                    spec_["max_items"] = 1
                value["fail_mod"] = rng.choice([0, 0, 2, 3])
                value["index"] = "${index}"
                value["fail_index"] = rng.choice([None, None, 0, 1])
            spec_["foreach"] = rng.choice(lists)
            if isinstance(spec_["foreach"], list) and len(spec_["foreach"]) > 1:
                spec_.pop("max_items", None)  # a list written out over it fails validation
            value["v"] = "${item}"
            when = rng.choice([None, None, None, "${index} > 0", "${item} != 2", "false"])
            groups.append(task_id)
        else:
            if not calm:
                value["fail"] = rng.random() < 0.07
                choices: list[str | None] = [None] * 6 + ["false"]
                for other in plain[-3:]:  # a reference adds the dependency if it is not one
                    choices += [f"${{{other}.output.n}} > 1", f"${{{other}.output.n}} != 2"]
                when = rng.choice(choices)
            plain.append(task_id)
        if when is not None:
            spec_["when"] = when
        spec_["input"] = value
        tasks.append(spec_)
    return tasks


def _snapshot(tasks: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {
        task_id: (task.state, task.output, task.error, task.reason, task.attempts)
        for task_id, task in tasks.items()
    }


def run_engine(tasks: list[dict[str, Any]]) -> tuple[dict[str, tuple[Any, ...]], str]:
    workflow = spec.from_data({"name": "advance", "tasks": tasks})
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "journal.db"
        result = asyncio.run(arun(workflow, db=db, durability="off", base_dir=HERE))
    return _snapshot(result.tasks), result.status


def _attempt(adv: Advance, task_id: str, at: float) -> Event:
    """What a worker commits for one attempt: the tool called on the input rendered
    from committed outputs, as `Engine._launch` and `attempt.call_tool` do."""
    plan = adv.plan.tasks[task_id]
    attempt = adv.state.tasks[task_id].attempts
    try:
        value = plan.template.render(adv.scope_of(plan))
    except DurableError as exc:
        return TaskFailed(task_id=task_id, attempt=attempt, at=at, error=f"input: {exc.message}")
    args, kwargs = call_args(value)
    try:
        output = adv_work(*args, **kwargs)
    except Exception as exc:
        return TaskFailed(task_id=task_id, attempt=attempt, at=at, error=describe(exc))
    output = decode_output(encode_output(output))
    return TaskSucceeded(task_id=task_id, attempt=attempt, at=at, output=output)


def run_advance(
    tasks: list[dict[str, Any]], rnd: random.Random | None, loads: bool = False
) -> tuple[dict[str, tuple[Any, ...]], str]:
    """Drive a run with `Advance` alone, as workers would: ready tasks are claimed
    (started) and their outcomes committed in a random order and in random batches
    (`rnd`), or, with no `rnd`, everything ready claimed and committed at once.
    With `loads`, now and then the run is taken up by a worker that only has its
    journal (`Driver.load`)."""
    drive = Driver(tasks)
    queued: list[str] = []
    running: dict[str, Event] = {}
    seen: set[str] = set()

    def took(steps: Steps) -> None:
        for task_id in steps.ready:  # each made ready once, while pending
            assert drive.state.tasks[task_id].state == PENDING, task_id
            assert task_id not in seen, f"{task_id} made ready twice"
            seen.add(task_id)
            queued.append(task_id)
        if any(isinstance(e, RunFinished) for e in steps.events):
            assert isinstance(drive.journal[-1], RunFinished)
            assert not queued and not running and drive.adv.unfinished() == 0

    took(drive.start())
    while queued or running:
        assert drive.state.status is None, "the run finished with work left"
        if loads and rnd is not None and rnd.random() < 0.1:
            drive.load()
        claim = bool(queued) and (not running or rnd is None or rnd.random() < 0.5)
        if claim:
            picked = (
                list(queued) if rnd is None else rnd.sample(queued, rnd.randint(1, len(queued)))
            )
            for task_id in picked:
                queued.remove(task_id)
                drive.started(task_id)
                running[task_id] = _attempt(drive.adv, task_id, drive.now())
        else:
            ids = list(running)
            batch = ids if rnd is None else rnd.sample(ids, rnd.randint(1, len(ids)))
            took(drive.step([running.pop(task_id) for task_id in batch]))
    finishes = _finishes(drive.journal)
    assert len(finishes) == 1 and drive.journal[-1] is finishes[0]
    assert drive.step([]) == Steps([], [])
    return _snapshot(drive.state.tasks), finishes[0].status


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(random_workflows(), st.integers(0, 2**32 - 1))
def test_advance_ends_every_task_as_the_engine_does(tasks, seed):
    """Committed in any order, in any batches, by workers that kept the run or took
    it up from its journal, outcomes end each task (its state, output, error or
    reason, attempts) and the run as the Engine ends them."""
    engine_tasks, engine_status = run_engine(tasks)
    for order, loads in ((random.Random(seed), False), (random.Random(~seed), True), (None, False)):
        tasks_seen, status = run_advance(tasks, order, loads)
        assert tasks_seen == engine_tasks
        assert status == engine_status
