"""What is paid before the first task runs: CLI start-up, and validating/planning a workflow.

- `durable --help` and `durable run ONE_TASK.yaml --db ...`: a subprocess, from
  process start to exit (interpreter, imports, journal, one task, last commit).
  Before each round (untimed) `python -c pass` is timed too, for `extra_info`: the best
  of each (`best_s`, `python_s`) and their `ratio` (issue 12: a one-task run within
  0.08 s where `python -c pass` takes 0.02 s). The commands run with their bytecode
  cached, as an installed durable does (`pip` compiles it; here, where
  `PYTHONDONTWRITEBYTECODE` may be set, under a private `PYTHONPYCACHEPREFIX`, filled
  by the warm-up round): compiling durable's modules is not start-up.
- `test_startup_imports` (a check, not a benchmark): what those two commands import.
  `--help` loads no engine (asyncio, msgspec, the runner); a run loads one command
  module, and neither PyYAML (the workflow is plain YAML: `yaml_subset`) nor rich,
  aiohttp or networkx.
- `plan_workflow` of a 10k-task layered workflow: validation and the graph
  (what `durable validate` and every `run` do after reading the file).
- `plan_workflow` of 10k tasks that reference an instance of a `foreach` task
  defined last: the reference checks stay linear.
- `spec.load` of the same workflow as a 10k-task YAML (and JSON) file: decoding.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from durable import spec
from durable.benchmark import make_workflow
from durable.loader import plan_workflow
from durable.spec import from_data

ONE_TASK = """\
name: one-task
tasks:
  - id: hello
    tool: echo
    input: {greeting: hello}
"""


class Timed:
    """Times a command; before each round (untimed, in the benchmark's `setup`), times
    `python -c pass` the same way, for the ratio."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.command_s: list[float] = []
        self.python_s: list[float] = []

    def _run(self, command: list[str], cwd: Path) -> float:
        started = time.perf_counter()
        done = subprocess.run(
            command, cwd=cwd, env=self.env, capture_output=True, text=True, check=False
        )
        elapsed = time.perf_counter() - started
        assert done.returncode == 0, f"{command} exited {done.returncode}: {done.stderr}"
        return elapsed

    def python(self, cwd: Path) -> None:
        self.python_s.append(self._run([sys.executable, "-c", "pass"], cwd))

    def __call__(self, command: list[str], cwd: Path) -> None:
        self.command_s.append(self._run(command, cwd))

    def info(self) -> dict[str, float]:
        best, python = min(self.command_s), min(self.python_s)
        return {
            "best_s": round(best, 4),
            "python_s": round(python, 4),
            "ratio": round(best / python, 1),
        }


def test_startup_help(benchmark, kit, durable_exe: str, tmp_path: Path, cached_env) -> None:
    timed = Timed(cached_env)

    def setup():
        timed.python(tmp_path)
        return ([durable_exe, "--help"], tmp_path), {}

    benchmark.pedantic(
        timed, setup=setup, rounds=kit.rounds(10), warmup_rounds=kit.warmup(), iterations=1
    )
    benchmark.extra_info.update(timed.info(), quick=kit.quick)


def test_startup_one_task_run(benchmark, kit, durable_exe: str, tmp_path: Path, cached_env) -> None:
    workflow = tmp_path / "one_task.yaml"
    workflow.write_text(ONE_TASK)
    timed = Timed(cached_env)

    def setup():
        folder = kit.fresh_dir()
        timed.python(folder)
        return ([durable_exe, "run", str(workflow), "--db", str(folder / "journal.db")], folder), {}

    benchmark.pedantic(
        timed, setup=setup, rounds=kit.rounds(10), warmup_rounds=kit.warmup(), iterations=1
    )
    benchmark.extra_info.update(timed.info(), quick=kit.quick)


def _imported(durable_exe: str, args: list[str], cwd: Path) -> set[str]:
    """The modules a `durable` command has imported by the time it exits."""
    listing = cwd / "modules.json"
    code = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: open({str(listing)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
        f"sys.argv = [{durable_exe!r}, *{args!r}]\n"
        "from durable_cli.main import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return set(json.loads(listing.read_text()))


def test_startup_imports(durable_exe: str, tmp_path: Path) -> None:
    helped = _imported(durable_exe, ["--help"], tmp_path)
    for engine in ("asyncio", "msgspec", "sqlite3", "durable.runner", "durable.engine"):
        assert engine not in helped, f"`durable --help` imports {engine}"
    workflow = tmp_path / "one_task.yaml"
    workflow.write_text(ONE_TASK)
    ran = _imported(durable_exe, ["run", str(workflow), "--db", str(tmp_path / "j.db")], tmp_path)
    assert "durable.runner" in ran
    # Nor what a run does not need and costs its start a ms or two each: the live
    # view's model (and `dataclasses` with it) and `secrets` (`json` too, which this
    # harness imports itself).
    for heavy in (
        "yaml",
        "rich",
        "aiohttp",
        "networkx",
        "durable.report.model",
        "dataclasses",
        "secrets",
    ):
        assert heavy not in ran, f"`durable run` of a one-task workflow imports {heavy}"
    commands = sorted(m for m in ran if m.startswith("durable_cli.") and m.endswith("_cmds"))
    assert commands == ["durable_cli.run_cmds"]


def _bench_plan(benchmark, kit, workflow):  # type: ignore[no-untyped-def]
    """`plan_workflow` of an already decoded workflow, 5 rounds (quick: 1)."""
    return benchmark.pedantic(
        plan_workflow,
        args=(workflow, "."),
        rounds=kit.rounds(5),
        warmup_rounds=kit.warmup(),
        iterations=1,
    )


def test_plan_workflow(benchmark, kit) -> None:
    """Validate and plan a layered workflow of 10k tasks (already decoded)."""
    tasks = kit.size(10000, 1000)
    plan = _bench_plan(benchmark, kit, make_workflow("layered", tasks, 64))
    assert len(plan.tasks) == tasks
    benchmark.extra_info.update(tasks=tasks, shape="layered", quick=kit.quick)


def test_plan_instance_refs(benchmark, kit) -> None:
    """Validate and plan 10k tasks that each reference an instance of a `foreach` task
    defined after them (`${fan[0].output}`). Checking that the referenced task has a
    `foreach` once scanned every task per reference: 24 s for 20k tasks here, now 0.5 s."""
    tasks = kit.size(10000, 1000)
    workflow = from_data(
        {
            "name": "instance-refs",
            "tasks": [
                *(
                    {"id": f"t{i}", "tool": "echo", "input": "${fan[0].output}"}
                    for i in range(tasks)
                ),
                {"id": "fan", "tool": "echo", "foreach": [1, 2, 3], "input": "${item}"},
            ],
        }
    )
    plan = _bench_plan(benchmark, kit, workflow)
    assert plan.tasks["t0"].deps == ("fan",)
    benchmark.extra_info.update(tasks=tasks + 1, quick=kit.quick)


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_plan_load_spec(benchmark, kit, tmp_path: Path, suffix: str) -> None:
    """Decode a 10k-task workflow file into a `Workflow` (`spec.load`)."""
    tasks = kit.size(10000, 1000)
    document = msgspec.json.decode(spec.encode(make_workflow("layered", tasks, 64)))
    path = tmp_path / f"workflow.{suffix}"
    path.write_bytes(
        msgspec.yaml.encode(document) if suffix == "yaml" else msgspec.json.encode(document)
    )
    workflow = benchmark.pedantic(
        spec.load, args=(path,), rounds=kit.rounds(5), warmup_rounds=kit.warmup(), iterations=1
    )
    assert len(workflow.tasks) == tasks
    benchmark.extra_info.update(tasks=tasks, file_bytes=path.stat().st_size, quick=kit.quick)
