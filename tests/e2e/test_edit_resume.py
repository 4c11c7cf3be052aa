"""Resuming an edited workflow (issue 10), through the real `durable` command.

One 50-task DAG (5 layers of 10; each task reads one or two outputs of the layer
before) runs to success in each test's own folder; its two Python tools, in a
`tools.py` beside the workflow, append the id of every task they are called for to
`calls.log`. The test then edits the workflow (or the tools) and resumes with
`--reload`, `--workflow FILE` or `--dry-run`, and checks three things against each
other: the `run` lines of the plan printed on stdout, the tasks actually called
during the resume (the call log), and the set computed here, independently, from
the DAG (the edited tasks and everything downstream of them). The outputs after the
resume are compared with the outputs this file computes from the edited DAG.

Bad input (a file that no longer parses, a renamed task, a cycle, a missing
`--workflow` file) is refused with exit 2 and one
`error: ` line naming the file and the problem, and leaves the journal file byte
for byte as it was.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

RUN_ID = "base"
LAYERS = 5
WIDTH = 10

TOOLS = """
from __future__ import annotations

import threading
from pathlib import Path

import durable

HERE = Path(__file__).parent
CALLS = HERE / "calls.log"
_lock = threading.Lock()


def _called() -> str:
    task_id = durable.current_context().task_id
    with _lock, CALLS.open("a") as log:
        log.write(task_id + "\\n")
    if (HERE / f"fail-{task_id}").exists():
        raise RuntimeError(f"{task_id} was told to fail")
    return task_id


@durable.tool
def work(n: int, up: list | None = None) -> int:
    _called()
    return n + sum(up or [])


@durable.tool
def other(n: int, up: list | None = None) -> int:
    _called()
    return n * OTHER_FACTOR + sum(up or [])
"""

#: `other` multiplies `n` by this; editing it edits the tool's code.
FACTOR = 2


def tools_source(factor: int = FACTOR) -> str:
    return TOOLS.replace("OTHER_FACTOR", str(factor))


# -- the DAG, as data ----------------------------------------------------------------


@dataclass
class Task:
    tool: str
    n: int
    up: list[str] = field(default_factory=list)
    when: str | None = None


Dag = dict[str, Task]


def make_dag() -> Dag:
    """5 layers of 10: t{L}_{i} reads t{L-1}_{i}, and for even i also t{L-1}_{i+3 mod 10}.

    `other` serves the tasks where (L + i) % 4 == 1, scattered over the layers, so
    that some of them have no `other` task upstream and some do.
    """
    dag: Dag = {}
    for layer in range(LAYERS):
        for i in range(WIDTH):
            up: list[str] = []
            if layer:
                up.append(f"t{layer - 1}_{i}")
                if i % 2 == 0:
                    up.append(f"t{layer - 1}_{(i + 3) % WIDTH}")
            tool = "other" if (layer + i) % 4 == 1 else "work"
            dag[f"t{layer}_{i}"] = Task(tool, layer * 10 + i, up)
    return dag


def render(dag: Dag) -> str:
    lines = ["name: edit_resume", "imports: [tools]", "max_concurrency: 8", "tasks:"]
    for task_id, task in dag.items():
        refs = ", ".join(f'"${{{up}.output}}"' for up in task.up)
        data = f"n: {task.n}" + (f", up: [{refs}]" if task.up else "")
        when = f', when: "{task.when}"' if task.when is not None else ""
        lines.append(f"  - {{id: {task_id}, tool: {task.tool}, input: {{{data}}}{when}}}")
    return "\n".join(lines) + "\n"


def descendants(dag: Dag, roots: set[str]) -> set[str]:
    """`roots` and every task downstream of one of them."""
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for task_id, task in dag.items():
            if task_id not in found and found.intersection(task.up):
                found.add(task_id)
                changed = True
    return found


def outputs(dag: Dag, factor: int = FACTOR) -> dict[str, int]:
    """Every task's output, computed here the way the tools compute it."""
    done: dict[str, int] = {}
    while len(done) < len(dag):
        for task_id, task in dag.items():
            if task_id in done or not all(up in done for up in task.up):
                continue
            total = sum(done[up] for up in task.up)
            done[task_id] = task.n * (factor if task.tool == "other" else 1) + total
    return done


# -- the run under test --------------------------------------------------------------


@dataclass
class Plan:
    kept: int
    to_run: int
    removed_count: int
    run: dict[str, str]  # task -> reason
    removed: list[str]


PLAN_HEADER = re.compile(r"^plan for run (\S+): (\d+) kept, (\d+) to run, (\d+) removed$")
RUN_LINE = re.compile(r"^  run (\S+): (.+)$")
REMOVE_LINE = re.compile(r"^  remove (\S+)$")


def parse_plan(stdout: str, run_id: str = RUN_ID) -> Plan:
    """The plan block of a resume's stdout: its header and the indented lines after it."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if PLAN_HEADER.match(line)]
    assert len(starts) == 1, f"expected one plan header on stdout:\n{stdout}"
    header = PLAN_HEADER.match(lines[starts[0]])
    assert header is not None
    assert header.group(1) == run_id, lines[starts[0]]
    run: dict[str, str] = {}
    removed: list[str] = []
    for line in lines[starts[0] + 1 :]:
        if not line.startswith("  "):
            break
        if found := RUN_LINE.match(line):
            assert found.group(1) not in run, f"task planned twice: {line}"
            run[found.group(1)] = found.group(2)
        elif found := REMOVE_LINE.match(line):
            removed.append(found.group(1))
        else:
            raise AssertionError(f"not a plan line: {line!r}\n{stdout}")
    plan = Plan(int(header.group(2)), int(header.group(3)), int(header.group(4)), run, removed)
    assert plan.to_run == len(plan.run), stdout
    assert plan.removed_count == len(plan.removed), stdout
    return plan


@dataclass
class Base:
    folder: Path
    db: Path
    workflow: Path
    dag: Dag
    durable: Any
    journal_digest: Any

    def cmd(self, *args: str | Path, check: int | None = None) -> subprocess.CompletedProcess[str]:
        return self.durable(*args, "--db", self.db, cwd=self.folder, check=check)

    def resume(
        self, *args: str | Path, check: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.cmd("resume", RUN_ID, "--no-live", *args, check=check)

    def edit(self, dag: Dag, name: str = "workflow.yaml") -> Path:
        path = self.folder / name
        path.write_text(render(dag))
        return path

    def edit_tools(self, factor: int) -> None:
        (self.folder / "tools.py").write_text(tools_source(factor))

    def calls(self) -> list[str]:
        """Task ids the tools were called for since the log was last cleared."""
        log = self.folder / "calls.log"
        return log.read_text().split() if log.exists() else []

    def clear_calls(self) -> None:
        (self.folder / "calls.log").write_text("")

    def status(self, run_id: str = RUN_ID) -> dict[str, Any]:
        result = self.cmd("status", run_id, "--json", check=0)
        return json.loads(result.stdout)

    def outputs(self, run_id: str = RUN_ID) -> dict[str, Any]:
        return json.loads(self.cmd("output", run_id, check=0).stdout)

    def journal_bytes(self) -> str:
        """A hash of the journal: the file and its write-ahead log (`journal_digest`)."""
        return self.journal_digest(self.db)


@pytest.fixture
def base(durable, write, journal_digest, tmp_path: Path) -> Base:
    """The 50-task DAG run once to success in this test's folder; the call log cleared."""
    write(tmp_path, "tools.py", tools_source())
    dag = make_dag()
    workflow = write(tmp_path, "workflow.yaml", render(dag))
    run = Base(tmp_path, tmp_path / "journal.db", workflow, dag, durable, journal_digest)
    run.cmd("run", workflow, "--run-id", RUN_ID, "-q", check=0)
    assert sorted(run.calls()) == sorted(dag), "the first run calls every task once"
    run.clear_calls()
    return run


def assert_three_way(plan: Plan, called: list[str], expected: set[str]) -> None:
    """The plan's `run` lines, the tasks called, and the DAG's own answer agree."""
    assert len(called) == len(set(called)), f"a task was called twice: {sorted(called)}"
    assert set(plan.run) == expected, (
        f"plan runs {sorted(plan.run)}, the DAG says {sorted(expected)}"
    )
    assert set(called) == expected, f"called {sorted(called)}, the DAG says {sorted(expected)}"


def assert_upstream_reasons(plan: Plan, dag: Dag, own: dict[str, set[str]]) -> None:
    """Each planned task's reason is one of `own[task]`, or names a planned upstream."""
    for task_id, reason in plan.run.items():
        if reason in own.get(task_id, set()):
            continue
        found = re.fullmatch(r"upstream '(\S+)' runs again", reason)
        assert found, f"{task_id}: unexpected reason {reason!r}"
        assert found.group(1) in dag[task_id].up, f"{task_id}: {reason!r} is not its upstream"
        assert found.group(1) in plan.run, f"{task_id}: {reason!r} but that task is kept"


def assert_succeeded(base: Base, dag: Dag, factor: int = FACTOR) -> None:
    status = base.status()
    assert status["status"] == "succeeded", status
    assert set(status["tasks"]) == set(dag), sorted(status["tasks"])
    assert {task["state"] for task in status["tasks"].values()} == {"succeeded"}
    assert base.outputs() == outputs(dag, factor)


# -- editing a succeeded run ---------------------------------------------------------


def test_no_change_plans_nothing_and_calls_nothing(base: Base) -> None:
    before = base.status()
    result = base.resume("--reload", check=0)
    plan = parse_plan(result.stdout)
    assert (plan.kept, plan.to_run, plan.removed_count) == (50, 0, 0), result.stdout
    assert base.calls() == []
    after = base.status()
    assert after["status"] == before["status"] == "succeeded"
    assert after["tasks"] == before["tasks"]
    assert base.outputs() == outputs(base.dag)


def test_changed_input_runs_that_task_and_its_downstream(base: Base) -> None:
    dag = copy.deepcopy(base.dag)
    dag["t2_3"].n += 1000
    base.edit(dag)
    result = base.resume("--reload", check=0)
    plan = parse_plan(result.stdout)
    expected = descendants(dag, {"t2_3"})
    assert len(expected) < len(dag) // 2, "the DAG keeps most tasks"
    assert_three_way(plan, base.calls(), expected)
    assert plan.run["t2_3"] == "input changed"
    assert_upstream_reasons(plan, dag, {"t2_3": {"input changed"}})
    assert (plan.kept, plan.removed_count) == (50 - len(expected), 0)
    assert_succeeded(base, dag)


def test_changed_tool_code_runs_its_tasks_and_their_downstream(base: Base) -> None:
    base.edit_tools(FACTOR + 1)
    result = base.resume("--reload", check=0)
    plan = parse_plan(result.stdout)
    of_other = {task_id for task_id, task in base.dag.items() if task.tool == "other"}
    expected = descendants(base.dag, of_other)
    assert_three_way(plan, base.calls(), expected)
    # An `other` task with no `other` task upstream can only run for its own code.
    alone = {
        task_id
        for task_id in of_other
        if not (descendants(base.dag, of_other - {task_id}) & {task_id})
    }
    assert alone and alone != of_other
    for task_id in alone:
        assert plan.run[task_id] == "tool code changed", (task_id, plan.run[task_id])
    assert_upstream_reasons(plan, base.dag, {t: {"tool code changed"} for t in of_other})
    assert plan.kept == 50 - len(expected) and plan.kept > 0
    assert_succeeded(base, base.dag, FACTOR + 1)


def test_tool_and_when_changes_name_their_reason(base: Base) -> None:
    dag = copy.deepcopy(base.dag)
    dag["t1_2"].tool = "other"  # another tool: `tool changed`
    dag["t3_8"].when = "${t2_8.output} > 0"  # true, as before: still `when changed`
    base.edit(dag)
    result = base.resume("--reload", check=0)
    plan = parse_plan(result.stdout)
    expected = descendants(dag, {"t1_2", "t3_8"})
    assert "t3_8" not in descendants(dag, {"t1_2"})
    assert_three_way(plan, base.calls(), expected)
    assert plan.run["t1_2"] == "tool changed"
    assert plan.run["t3_8"] == "when changed"
    assert_upstream_reasons(plan, dag, {"t1_2": {"tool changed"}, "t3_8": {"when changed"}})
    assert_succeeded(base, dag)


def test_added_task_is_the_only_one_that_runs(base: Base) -> None:
    dag = copy.deepcopy(base.dag)
    dag["extra"] = Task("work", 999, ["t4_3"])
    base.edit(dag)
    result = base.resume("--reload", check=0)
    plan = parse_plan(result.stdout)
    assert plan.run == {"extra": "new task"}, result.stdout
    assert (plan.kept, plan.to_run, plan.removed_count) == (50, 1, 0)
    assert base.calls() == ["extra"]
    assert_succeeded(base, dag)


def test_removed_leaf_is_removed_and_nothing_runs(base: Base) -> None:
    dag = copy.deepcopy(base.dag)
    del dag["t4_6"]
    base.edit(dag)
    result = base.resume("--reload", check=0)
    plan = parse_plan(result.stdout)
    assert plan.run == {} and plan.removed == ["t4_6"], result.stdout
    assert (plan.kept, plan.to_run, plan.removed_count) == (49, 0, 1)
    assert base.calls() == []
    assert_succeeded(base, dag)  # status lists the amended workflow's tasks only
    assert "t4_6" not in base.outputs()


def test_dry_run_changes_nothing_then_the_real_resume_does_what_it_said(base: Base) -> None:
    dag = copy.deepcopy(base.dag)
    dag["t1_4"].n = -7
    base.edit(dag)
    status = base.status()
    before = base.journal_bytes()
    dry = base.resume("--reload", "--dry-run", check=0)
    assert "Traceback" not in dry.stdout + dry.stderr
    dry_plan = parse_plan(dry.stdout)
    assert "dry run: nothing changed" in dry.stdout.splitlines(), dry.stdout
    assert base.journal_bytes() == before, "a dry run wrote to the journal"
    assert base.calls() == []
    assert base.status() == status

    real = base.resume("--reload", check=0)
    real_plan = parse_plan(real.stdout)
    assert real_plan == dry_plan
    assert "dry run" not in real.stdout
    assert_three_way(real_plan, base.calls(), descendants(dag, {"t1_4"}))
    assert_succeeded(base, dag)


def test_workflow_option_reads_another_file(base: Base) -> None:
    original = base.workflow.read_text()
    dag = copy.deepcopy(base.dag)
    dag["t3_6"].n = 5000
    dag["added"] = Task("other", 7, ["t0_0"])
    other = base.edit(dag, "other.yaml")
    result = base.resume("--workflow", other, check=0)
    plan = parse_plan(result.stdout)
    expected = descendants(dag, {"t3_6", "added"})
    assert_three_way(plan, base.calls(), expected)
    assert plan.run["t3_6"] == "input changed" and plan.run["added"] == "new task"
    assert base.workflow.read_text() == original
    assert_succeeded(base, dag)


def test_amended_run_is_counted_and_checks_clean(base: Base) -> None:
    dag = copy.deepcopy(base.dag)
    dag["t4_1"].n = 1
    base.edit(dag)
    base.resume("--reload", check=0)
    assert base.status()["amended"] == 1
    runs = json.loads(base.cmd("runs", "--json", check=0).stdout)
    (entry,) = [run for run in runs if run["run_id"] == RUN_ID]
    assert entry["amended"] == 1
    assert entry["status"] == "succeeded"
    base.cmd("check", check=0)

    dag["t4_2"].n = 2
    base.edit(dag)
    base.clear_calls()
    result = base.resume("--reload", check=0)
    assert_three_way(parse_plan(result.stdout), base.calls(), {"t4_2"})
    assert base.status()["amended"] == 2
    base.cmd("check", RUN_ID, check=0)
    assert_succeeded(base, dag)


# -- editing a failed run ------------------------------------------------------------


def fail_run(base: Base, task_id: str, run_id: str) -> None:
    """Run the DAG again as `run_id` with `task_id` failing; clear the call log after."""
    flag = base.folder / f"fail-{task_id}"
    flag.write_text("")
    base.cmd("run", base.workflow, "--run-id", run_id, "-q", check=1)
    flag.unlink()
    base.clear_calls()


def test_plain_resume_of_an_edited_failed_run_notes_it_and_runs_the_snapshot(
    base: Base,
) -> None:
    fail_run(base, "t2_3", "failing")
    downstream = descendants(base.dag, {"t2_3"})
    states = {t: task["state"] for t, task in base.status("failing")["tasks"].items()}
    assert {t for t, state in states.items() if state != "succeeded"} == downstream

    dag = copy.deepcopy(base.dag)
    dag["t3_3"].n = 777  # downstream of the failure: it will run, from the snapshot
    dag["t0_0"].n = 555  # succeeded: kept
    base.edit(dag)
    result = base.cmd("resume", "failing", "--no-live", check=0)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1, result.stderr
    assert "--reload" in notes[0]
    assert "plan for run" not in result.stdout
    assert sorted(base.calls()) == sorted(downstream)
    assert base.outputs("failing") == outputs(base.dag)  # the old numbers
    assert "amended" not in base.status("failing") or base.status("failing")["amended"] == 0


def test_reload_of_a_failed_run_runs_what_did_not_succeed_and_what_changed(
    base: Base,
) -> None:
    fail_run(base, "t2_3", "failing")
    dag = copy.deepcopy(base.dag)
    dag["t1_9"].n = 4242
    base.edit(dag)
    result = base.cmd("resume", "failing", "--reload", "--no-live", check=0)
    plan = parse_plan(result.stdout, "failing")
    expected = descendants(dag, {"t2_3", "t1_9"})
    assert_three_way(plan, base.calls(), expected)
    assert plan.run["t2_3"] == "did not succeed"
    assert plan.run["t1_9"] == "input changed"
    not_succeeded = descendants(dag, {"t2_3"})
    assert_upstream_reasons(
        plan,
        dag,
        {"t1_9": {"input changed"}} | {t: {"did not succeed"} for t in not_succeeded},
    )
    status = base.status("failing")
    assert status["status"] == "succeeded" and status["amended"] == 1
    assert base.outputs("failing") == outputs(dag)


# -- bad input: refused, the journal untouched ---------------------------------------


def broken_yaml(base: Base) -> tuple[str, ...]:
    base.workflow.write_text("name: edit_resume\nimports: [tools]\ntasks: [\n  - {id: t0_0\n")
    return ("--reload",)


def renamed_task(base: Base) -> tuple[str, ...]:
    dag = copy.deepcopy(base.dag)
    dag["renamed_leaf"] = dag.pop("t4_7")
    base.edit(dag)
    return ("--reload",)


def cycle(base: Base) -> tuple[str, ...]:
    dag = copy.deepcopy(base.dag)
    dag["t0_0"].up = ["t4_0"]
    base.edit(dag)
    return ("--reload",)


def missing_file(base: Base) -> tuple[str, ...]:
    return ("--workflow", str(base.folder / "nope.yaml"))


#: case -> (how to make it, what the first line of stderr names, what the message names).
#: A workflow that fails validation is reported as `durable run` and `validate` report
#: it: `error: FILE: N problem(s) found`, then one indented line per problem.
BAD = {
    "unparsable file": (broken_yaml, ["workflow.yaml"], []),
    "renamed task": (renamed_task, ["workflow.yaml", "t4_7", "renamed_leaf"], []),
    "cycle": (cycle, ["workflow.yaml"], ["cycle", "t0_0", "t4_0"]),
    "missing --workflow file": (missing_file, ["nope.yaml"], []),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry-run"])
def test_bad_input_is_refused_and_changes_nothing(base: Base, case: str, dry_run: bool) -> None:
    make, first_line, message = BAD[case]
    args = make(base)
    status = base.status()
    before = base.journal_bytes()
    result = base.resume(*args, *(["--dry-run"] if dry_run else []))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert base.journal_bytes() == before, "a refused resume wrote to the journal"
    assert base.calls() == []
    assert base.status() == status
    lines = result.stderr.splitlines()
    assert lines and lines[0].startswith("error: "), output
    for culprit in first_line:
        assert culprit in lines[0], lines[0]
    for culprit in message:
        assert culprit in result.stderr, result.stderr


def test_reload_with_workflow_reads_that_file(base: Base) -> None:
    """`--reload --workflow FILE` (DESIGN.md's form) is `--workflow FILE`."""
    dag = copy.deepcopy(base.dag)
    dag["t4_0"].n = 1
    other = base.edit(dag, "other.yaml")
    both = base.resume("--reload", "--workflow", str(other), "--dry-run")
    alone = base.resume("--workflow", str(other), "--dry-run")
    assert both.returncode == alone.returncode == 0, both.stderr + alone.stderr
    assert both.stdout == alone.stdout
    assert "  run t4_0: input changed" in both.stdout.splitlines()
