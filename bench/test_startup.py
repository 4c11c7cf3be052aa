"""What is paid before the first task runs: CLI start-up, and validating/planning a workflow.

- `durable --help` and `durable run ONE_TASK.yaml --db ...`: a subprocess, from
  process start to exit (interpreter, imports, journal, one task, last commit).
- `plan_workflow` of a 10k-task layered workflow: validation and the graph
  (what `durable validate` and every `run` do after reading the file).
- `spec.load` of the same workflow as a 10k-task YAML (and JSON) file: decoding.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgspec
import pytest

from durable import spec
from durable.benchmark import make_workflow
from durable.loader import plan_workflow

ONE_TASK = """\
name: one-task
tasks:
  - id: hello
    tool: echo
    input: {greeting: hello}
"""


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{command} exited {done.returncode}: {done.stderr}"


def test_startup_help(benchmark, kit, durable_exe: str, tmp_path: Path) -> None:
    benchmark.pedantic(
        _run,
        args=([durable_exe, "--help"], tmp_path),
        rounds=kit.rounds(10),
        warmup_rounds=kit.warmup(),
        iterations=1,
    )


def test_startup_one_task_run(benchmark, kit, durable_exe: str, tmp_path: Path) -> None:
    workflow = tmp_path / "one_task.yaml"
    workflow.write_text(ONE_TASK)

    def setup():
        folder = kit.fresh_dir()
        return ([durable_exe, "run", str(workflow), "--db", str(folder / "journal.db")], folder), {}

    benchmark.pedantic(
        _run, setup=setup, rounds=kit.rounds(10), warmup_rounds=kit.warmup(), iterations=1
    )


def test_plan_workflow(benchmark, kit) -> None:
    """Validate and plan a layered workflow of 10k tasks (already decoded)."""
    tasks = kit.size(10000, 1000)
    workflow = make_workflow("layered", tasks, 64)
    plan = benchmark.pedantic(
        plan_workflow,
        args=(workflow, "."),
        rounds=kit.rounds(5),
        warmup_rounds=kit.warmup(),
        iterations=1,
    )
    assert len(plan.tasks) == tasks
    benchmark.extra_info.update(tasks=tasks, shape="layered", quick=kit.quick)


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
