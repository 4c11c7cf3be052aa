"""Tests that kill mutants `tests/mutation.sh` found surviving (see tests/README.md).

Each states a behaviour the rest of the unit suite left unchecked; the comment on
each names the mutants (mutmut's names, as of the run recorded in tests/README.md)
that it kills, so that a later run can tell a regression from a new gap.
"""

from __future__ import annotations

import asyncio
import collections
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from journal_reads import journal_events

from durable import graph, loader, spec, tools
from durable.errors import DurableError, ExpressionError, ValidationError
from durable.events import (
    RunResumed,
    RunStarted,
    TaskCancelled,
    TaskFailed,
    TaskRetrying,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    TaskUpstreamFailed,
)
from durable.executors import current_context
from durable.expr import MAX_DEPTH, MAX_LENGTH
from durable.expr import parse as parse_expression
from durable.refs import Scope, Template, referenced_tasks
from durable.runner import Hooks, aresume, arun
from durable.state import IllegalTransition, RunState


def workflow(tasks: list[dict], **fields) -> spec.Workflow:  # type: ignore[type-arg]
    return spec.from_data({"name": "kills", "tasks": tasks, **fields})


def scope(**outputs: object) -> Scope:
    return Scope(params={"p": 1}, run_id="r", outputs=outputs)


# -- expr ------------------------------------------------------------------------------------


def test_and_or_evaluate_references_against_the_scope() -> None:
    # _Compiler._and/_or mutmut_4: operands evaluated without the scope.
    both = parse_expression("${a.output} > 1 and ${b.output} < 5")
    assert both.evaluate(scope(a=2, b=3)) is True
    assert both.evaluate(scope(a=2, b=9)) is False
    either = parse_expression("${a.output} > 1 or ${b.output} < 5")
    assert either.evaluate(scope(a=0, b=9)) is False
    assert either.evaluate(scope(a=0, b=3)) is True
    # and/or return the deciding operand, as Python's do.
    assert parse_expression("${a.output} and ${b.output}").evaluate(scope(a=[], b=1)) == []
    assert parse_expression("${a.output} or ${b.output}").evaluate(scope(a=0, b="x")) == "x"


def test_a_list_of_references_is_evaluated_against_the_scope() -> None:
    # _Compiler._compile mutmut_113: list items evaluated without the scope.
    expression = parse_expression("${a.output} in [${b.output}, 3]")
    assert expression.evaluate(scope(a=7, b=7)) is True
    assert expression.evaluate(scope(a=7, b=8)) is False


def test_limits_are_inclusive() -> None:
    # parse mutmut_4 and mutmut_39, _depth mutmut_3: off by one at the limits.
    assert parse_expression(" " * (MAX_LENGTH - 4) + "true").evaluate(scope()) is True
    with pytest.raises(ExpressionError, match="longer than"):
        parse_expression(" " * (MAX_LENGTH - 3) + "true")
    # `not not ... 1`: a chain of unary nodes, one level each, down to a constant.
    deepest = "not " * (MAX_DEPTH - 1) + "1"
    assert parse_expression(deepest).evaluate(scope()) is (MAX_DEPTH % 2 == 1)
    with pytest.raises(ExpressionError, match="nested deeper"):
        parse_expression("not " + deepest)


def test_huge_powers_are_refused_and_harmless_ones_evaluate() -> None:
    # _check_power mutmut_9 (bits = exponent / log2(base)) and mutmut_1 (or -> and,
    # which takes log2(0)).
    with pytest.raises(DurableError, match="exponent too large"):
        parse_expression("10 ** 4000 > 1").evaluate(scope())
    with pytest.raises(DurableError, match="exponent too large"):
        parse_expression("${a.output} ** 4000 > 1").evaluate(scope(a=10))
    assert parse_expression("${a.output} ** 20000 == 0").evaluate(scope(a=0)) is True
    assert parse_expression("(-1) ** 20001").evaluate(scope()) == -1


@pytest.mark.parametrize(
    ("source", "message"),
    [
        # _Compiler._compile mutmut_27/28: the hint for a bare word.
        (
            "foo == 1",
            "'foo == 1': unknown name 'foo' (use a reference like ${task.output}, or quote text)",
        ),
        # _Compiler._compile mutmut_96.
        ("1 is 1", "'1 is 1': identity comparisons ('is', 'is not') are not allowed"),
        # _Compiler._compile mutmut_116/117: a node type with no better name.
        ("(yield from [1])", "'(yield from [1])': YieldFrom expressions are not allowed"),
    ],
)
def test_refusals_say_what_is_refused(source: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(source)
    assert message in str(caught.value)


# -- refs ------------------------------------------------------------------------------------


def test_constants_beside_a_reference_keep_their_values() -> None:
    # _compile mutmut_22/25: a constant list or scalar inside a templated input.
    template = Template({"keep": [1, {"k": 2}], "n": 3, "ref": "${a.output}"})
    assert template.render(scope(a="x")) == {"keep": [1, {"k": 2}], "n": 3, "ref": "x"}


def test_several_escapes_in_one_string() -> None:
    # _compile_string mutmut_44: constant pieces joined with something else.
    assert Template("a $${x} b $${y} c").render(scope()) == "a ${x} b ${y} c"


def test_a_missing_key_lists_the_keys_there_are() -> None:
    # _missing mutmut_6/12/13/14.
    many = {f"k{i:02}": i for i in range(12)}
    with pytest.raises(DurableError) as caught:
        Template("${a.output.nope}").render(scope(a=many))
    listed = ", ".join(f"k{i:02}" for i in range(10))
    assert f"missing key 'nope' (keys: {listed})" in str(caught.value)
    with pytest.raises(DurableError) as caught:
        Template("${a.output.nope}").render(scope(a={}))
    assert "missing key 'nope' (keys: none)" in str(caught.value)


def test_a_path_may_have_spaces_between_its_steps() -> None:
    # parse_ref mutmut_20: skipping a space went back to the start of the path.
    assert Template("${a.output.x .y [1]}").render(scope(a={"x": {"y": [0, 5]}})) == 5


def test_referenced_tasks_leaves_out_params_and_run() -> None:
    # referenced_tasks mutmut_9..12.
    value = {"q": "${params.output} ${run.id} ${a.output} ${b.output.x}"}
    assert referenced_tasks(value) == ["a", "b"]
    assert referenced_tasks("${params.output}") == []


# -- graph -----------------------------------------------------------------------------------

TRUSTED = [
    {"id": "a", "tool": "echo", "input": 1},
    {"id": "b", "tool": "echo", "input": "${a.output}"},
    {"id": "c", "tool": "echo", "when": "${b.output} > 0"},
    {"id": "d", "tool": "echo", "dependencies": ["a", "c"]},
]


INVALID = Path(__file__).resolve().parents[1] / "data" / "invalid"
CATALOGUE = tomllib.loads((INVALID / "expected.toml").read_text())


@pytest.mark.parametrize(
    "name", sorted(name for name, entry in CATALOGUE.items() if entry.get("exists", True))
)
def test_the_invalid_catalogue_in_process(name: str) -> None:
    """tests/e2e/test_validate_cli.py's catalogue, without a subprocess.

    The e2e test is the contract; this copy exists so that the fast unit selection
    `tests/mutation.sh` runs sees the line numbers and wording of every problem
    (build mutmut_16..58, _plan_task mutmut_8..106, the _Lines helpers).
    """
    with pytest.raises(DurableError) as caught:
        loader.plan_file(INVALID / name)
    for expected in CATALOGUE[name]["contains"]:
        assert expected in str(caught.value)


EVERY_PROBLEM = """\
name: lines
limits:
  http: 2
  echo: 0
tasks:
  - id: a
    tool: echo
    dependencies:
      - b
      - a
      - nope
  - id: b
    tool: ehco
  - id: c
    tool: echo
    input:
      ok: 1
      bad: "x ${a.output"
    when: "1 +"
    trigger: sometimes
  - tool: echo
    id: a
  - id: d
    tool: echo
    dependencies: [e]
  - id: e
    tool: echo
    input:
      more: "${d.output}"
      text: "${ghost.output}"
  - id: f
    tool: shell
    input: {command: "echo 'unclosed"}
  - id: g
    tool: echo
    when: "${ghost2.output} > 1"
  - id: h
    tool: echo
    input: "${ghost3.output}"
    when: "${ghost3.output} > 1"
"""


def test_every_kind_of_problem_names_its_line(tmp_path: Path) -> None:
    """The README: every error names the file, the line (YAML), the task and the field.

    (build mutmut_16..63, _plan_task mutmut_8..106 and the _Lines helpers: a wrong or
    missing line survived the catalogue, which pins few line numbers.)
    """
    path = tmp_path / "wf.yaml"
    path.write_text(EVERY_PROBLEM)
    with pytest.raises(ValidationError) as caught:
        loader.plan_file(path)
    # Where a field spans lines, the line is the item or key that holds the culprit.
    assert caught.value.problems == [
        "line 22: task 'a': duplicate id (used 2 times)",
        "line 10: task 'a': field 'dependencies': a task cannot depend on itself",
        "line 11: task 'a': field 'dependencies': unknown task 'nope'",
        "line 13: task 'b': field 'tool': unknown tool 'ehco' (did you mean 'echo'?)",
        "line 18: task 'c': field 'input': bad reference in 'x ${a.output': '${' is never closed",
        "line 19: task 'c': field 'when': '1 +': syntax error (invalid syntax)",
        "line 20: task 'c': field 'trigger': unknown trigger 'sometimes' "
        "(expected all_success, none_failed, all_done)",
        "line 30: task 'e': reference ${ghost.output}: unknown task 'ghost'",
        "line 33: task 'f': field 'input': tool 'shell' cannot take it: No closing quotation",
        "line 36: task 'g': reference ${ghost2.output}: unknown task 'ghost2'",
        "line 39: task 'h': reference ${ghost3.output}: unknown task 'ghost3'",
        "line 40: task 'h': reference ${ghost3.output}: unknown task 'ghost3'",
        "line 3: field 'limits': no task uses tool 'http'",
        "line 4: field 'limits': tool 'echo': limit must be at least 1, got 0",
        "line 23: cycle: d -> e -> d",
    ]


def test_trusted_plan_matches_the_validated_one() -> None:
    # build_trusted mutmut_14/17 (deps from `when`), 20 (tool), 32 (dependents), 33 (workflow).
    wf = workflow(TRUSTED)
    checked = graph.build(wf, tools.REGISTRY.resolve)
    trusted = graph.build_trusted(wf, tools.REGISTRY.resolve)
    assert trusted.workflow is wf
    for task_id, plan in checked.tasks.items():
        mirror = trusted.tasks[task_id]
        assert set(mirror.deps) == set(plan.deps), task_id
        assert sorted(mirror.dependents) == sorted(plan.dependents), task_id
        assert mirror.tool is plan.tool is not None
    assert trusted.tasks["c"].deps == ("b",)
    assert trusted.levels == checked.levels == [["a"], ["b"], ["c"], ["d"]]


def test_trusted_plan_reports_every_tool_it_cannot_find() -> None:
    # build_trusted mutmut_5/7/8 (break after the first) and 28..31 (the error's parts).
    wf = workflow(
        [{"id": "x", "tool": "echo"}, {"id": "y", "tool": "nope_1"}, {"id": "z", "tool": "nope_2"}]
    )
    with pytest.raises(ValidationError) as caught:
        graph.build_trusted(wf, tools.REGISTRY.resolve, source="run 'r1'")
    text = str(caught.value)
    assert "run 'r1'" in text
    assert "task 'y': field 'tool'" in text and "nope_1" in text
    assert "task 'z': field 'tool'" in text and "nope_2" in text


def test_a_task_without_when_has_no_condition() -> None:
    # _plan_task mutmut_21: `when = ""` makes the engine evaluate a condition that is not there.
    plan = graph.build(workflow([{"id": "a", "tool": "echo"}]), tools.REGISTRY.resolve)
    assert plan.tasks["a"].when is None


def test_a_cycle_is_named_from_its_first_task_in_file_order() -> None:
    # _cycles mutmut_14/16 (node order), 22 (the other end of each edge), 24/26 (start).
    wf = workflow(
        [
            {"id": "z", "tool": "echo", "dependencies": ["y"]},
            {"id": "y", "tool": "echo", "dependencies": ["x"]},
            {"id": "x", "tool": "echo", "dependencies": ["z"]},
            {"id": "w", "tool": "echo", "dependencies": ["z"]},
        ]
    )
    with pytest.raises(ValidationError) as caught:
        graph.build(wf, tools.REGISTRY.resolve)
    assert "cycle: z -> x -> y -> z" in str(caught.value)


def test_a_limit_below_one_is_reported() -> None:
    # build mutmut_30.
    wf = workflow([{"id": "a", "tool": "echo"}], limits={"echo": 0})
    with pytest.raises(ValidationError) as caught:
        graph.build(wf, tools.REGISTRY.resolve)
    assert "field 'limits': tool 'echo': limit must be at least 1, got 0" in str(caught.value)


def test_dot_export() -> None:
    # to_dot mutmut_2/3/4/10.
    plan = graph.build(
        workflow([{"id": "a", "tool": "echo"}, {"id": "b", "tool": "echo", "dependencies": ["a"]}]),
        tools.REGISTRY.resolve,
    )
    assert graph.to_dot(plan) == (
        'digraph "kills" {\n'
        "  rankdir=LR;\n"
        '  "a" [label="a\\necho"];\n'
        '  "b" [label="b\\necho"];\n'
        '  "a" -> "b";\n'
        "}"
    )


# -- state -----------------------------------------------------------------------------------

STARTED = [RunStarted(at=1.0), TaskStarted(task_id="a", attempt=1, at=2.0)]


@pytest.mark.parametrize(
    ("history", "event", "state"),
    [
        # RunState.apply mutmut_35/43/59/67: the message names the refused event.
        ([RunStarted(at=1.0)], TaskSucceeded(task_id="a", attempt=1, at=3.0), "pending"),
        (
            [RunStarted(at=1.0)],
            TaskRetrying(task_id="a", attempt=1, at=3.0, error="e", delay=1.0),
            "pending",
        ),
        (STARTED, TaskSkipped(task_id="a", at=3.0, reason="r"), "running"),
        ([RunStarted(at=1.0)], TaskCancelled(task_id="a", attempt=0, at=3.0), "pending"),
        (
            [*STARTED, TaskSucceeded(task_id="a", attempt=1, at=3.0)],
            TaskFailed(task_id="a", attempt=1, at=4.0, error="e"),
            "succeeded",
        ),
        (STARTED, TaskUpstreamFailed(task_id="a", at=3.0), "running"),
        (
            [*STARTED, TaskSucceeded(task_id="a", attempt=1, at=3.0)],
            TaskStarted(task_id="a", attempt=2, at=4.0),
            "succeeded",
        ),
    ],
)
def test_an_illegal_transition_names_the_task_the_event_and_the_state(
    history, event, state
) -> None:  # type: ignore[no-untyped-def]
    folded = RunState.fold(["a"], history)
    with pytest.raises(IllegalTransition) as caught:
        folded.apply(event)
    assert str(caught.value) == f"task 'a': {type(event).__name__} is illegal in state '{state}'"


def test_run_level_illegal_transitions_say_exactly_what_happened() -> None:
    # RunState.apply mutmut_74/80, RunState._task mutmut_5.
    with pytest.raises(IllegalTransition) as caught:
        RunState.fold(["a"], [RunStarted(at=1.0), RunStarted(at=2.0)])
    assert str(caught.value) == "run_started twice"
    with pytest.raises(IllegalTransition) as caught:
        RunState.fold(["a"], [RunResumed(at=1.0)])
    assert str(caught.value) == "run_resumed before run_started"
    with pytest.raises(IllegalTransition) as caught:
        RunState.fold(["a"], [RunStarted(at=1.0), TaskStarted(task_id="zz", attempt=1, at=2.0)])
    assert str(caught.value) == "TaskStarted for unknown task 'zz'"


# -- engine ------------------------------------------------------------------------------------

IN_FLIGHT: collections.Counter[str] = collections.Counter()
PEAK: collections.Counter[str] = collections.Counter()
FAILS_LEFT: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _reset_engine_tools() -> None:
    IN_FLIGHT.clear()
    PEAK.clear()
    FAILS_LEFT.clear()


async def kill_work(key: str = "", hold: float = 0.02) -> dict[str, Any]:
    """Counts calls in flight (overall and per tool); fails while FAILS_LEFT[key] says so."""
    tool = current_context().task_id[0]  # tasks named by tool group: "x1", "y2", ...
    for name in ("all", tool):
        IN_FLIGHT[name] += 1
        PEAK[name] = max(PEAK[name], IN_FLIGHT[name])
    try:
        await asyncio.sleep(hold)
    finally:
        for name in ("all", tool):
            IN_FLIGHT[name] -= 1
    if FAILS_LEFT.get(key, 0) > 0:
        FAILS_LEFT[key] -= 1
        raise RuntimeError(f"flaky {key}")
    return {"attempt": current_context().attempt, "run": current_context().run_id}


async def kill_bare_error() -> None:
    raise ValueError()


async def kill_limited(key: str = "", hold: float = 0.02) -> dict[str, Any]:
    return await kill_work(key, hold)


for _tool in (kill_work, kill_bare_error, kill_limited):
    tools.REGISTRY.add(_tool, name=_tool.__name__)


def engine_run(tasks: list[dict], db: Path, **options: Any):  # type: ignore[no-untyped-def,type-arg]
    fields = options.pop("fields", {})
    return asyncio.run(arun(workflow(tasks, **fields), db=db, durability="off", **options))


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_retry_frees_its_slot_exactly_once(tmp_path: Path, jobs: int) -> None:
    # _release mutmut_1/2/3, _free_tool_slot mutmut_3/5, _occupy mutmut_9: after a
    # retry the slot counts drift, and tasks either stop starting (a hang, then a
    # timeout) or run beyond the limits.
    FAILS_LEFT.update({"x1": 1, "y1": 2})
    tasks = [
        {
            "id": "x1",
            "tool": "kill_work",
            "input": {"key": "x1"},
            "retries": 2,
            "retry_delay": 0.01,
        },
        {"id": "x2", "tool": "kill_work"},
        {"id": "x3", "tool": "kill_work"},
        {
            "id": "y1",
            "tool": "kill_limited",
            "input": {"key": "y1"},
            "retries": 2,
            "retry_delay": 0.01,
        },
        {"id": "y2", "tool": "kill_limited"},
        {"id": "y3", "tool": "kill_limited"},
    ]
    result = engine_run(
        tasks, tmp_path / "j.db", max_concurrency=jobs, fields={"limits": {"kill_limited": 1}}
    )
    assert result.ok, result.tasks
    assert PEAK["all"] <= jobs and PEAK["y"] == 1
    assert result.stats.peak_running == jobs  # _occupy mutmut_27
    assert result.tasks["y1"].attempts == 3


def test_attempts_are_recorded_in_every_event_and_the_context(tmp_path: Path) -> None:
    # _attempt mutmut_7/24/28, _failed mutmut_37/41: the attempt number of an outcome.
    db = tmp_path / "j.db"
    FAILS_LEFT.update({"ok": 1, "bad": 5})
    tasks = [
        {
            "id": "ok",
            "tool": "kill_work",
            "input": {"key": "ok"},
            "retries": 1,
            "retry_delay": 0.01,
        },
        {
            "id": "bad",
            "tool": "kill_work",
            "input": {"key": "bad"},
            "retries": 1,
            "retry_delay": 0.01,
        },
    ]
    result = engine_run(tasks, db)
    assert result.outputs["ok"] == {"attempt": 2, "run": result.run_id}
    outcomes = {
        (type(e).__name__, e.task_id): e.attempt
        for e in journal_events(db, result.run_id)
        if isinstance(e, TaskSucceeded | TaskFailed)
    }
    assert outcomes == {("TaskSucceeded", "ok"): 2, ("TaskFailed", "bad"): 2}


def test_fail_fast_cancels_a_task_waiting_to_retry(tmp_path: Path) -> None:
    # _stop mutmut_2..10: the task in backoff is cancelled, with its attempt and time.
    db = tmp_path / "j.db"
    FAILS_LEFT.update({"r": 9, "f": 9})
    tasks = [
        {
            "id": "r",
            "tool": "kill_work",
            "input": {"key": "r", "hold": 0},
            "retries": 3,
            "retry_delay": 30,
        },
        {"id": "f", "tool": "kill_work", "input": {"key": "f", "hold": 0.2}},
    ]
    started = time.time()
    result = engine_run(tasks, db, fail_fast=True)
    assert time.time() - started < 10  # did not sit out the 30 s backoff
    assert result.status == "failed"
    assert result.tasks["r"].state == "cancelled"
    (cancelled,) = [e for e in journal_events(db, result.run_id) if isinstance(e, TaskCancelled)]
    assert cancelled.task_id == "r" and cancelled.attempt == 1
    assert started <= cancelled.at <= time.time()


def test_run_id_and_events_reach_the_tools_and_the_hooks(tmp_path: Path) -> None:
    # Engine.__init__ mutmut_11 (on_event dropped), mutmut_17 (${run.id} renders null).
    seen: list[Any] = []
    tasks = [{"id": "a", "tool": "echo", "input": {"id": "${run.id}"}}]
    result = asyncio.run(
        arun(
            workflow(tasks),
            db=tmp_path / "j.db",
            durability="off",
            hooks=Hooks(on_event=seen.append),
        )
    )
    assert result.outputs["a"] == {"id": result.run_id}
    task_events = [type(e).__name__ for e in seen if getattr(e, "task_id", None)]
    assert task_events == ["TaskStarted", "TaskSucceeded"]
    assert type(seen[-1]).__name__ == "RunFinished"


def test_an_error_without_a_message_is_named_alone(tmp_path: Path) -> None:
    # _describe mutmut_6: "ValueError: " with nothing after it.
    result = engine_run([{"id": "a", "tool": "kill_bare_error"}], tmp_path / "j.db")
    assert result.tasks["a"].error == "ValueError"


def test_a_kept_skipped_task_reads_as_null_after_resume(tmp_path: Path) -> None:
    # Engine._start mutmut_8: a skipped task kept from an earlier session read as "".
    db = tmp_path / "j.db"
    FAILS_LEFT["f"] = 1
    tasks = [
        {"id": "s", "tool": "echo", "when": "false"},
        {"id": "f", "tool": "kill_work", "input": {"key": "f", "hold": 0}},
        {
            "id": "d",
            "tool": "echo",
            "dependencies": ["f"],
            "trigger": "none_failed",
            "input": {"skipped": "${s.output}"},
        },
    ]
    first = engine_run(tasks, db)
    assert first.tasks["f"].state == "failed"
    second = asyncio.run(aresume(first.run_id, db=db, durability="off"))
    assert second.ok, second.tasks
    assert second.outputs["d"] == {"skipped": None}
