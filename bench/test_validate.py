"""`durable validate` of a 100,000-task YAML workflow (issue 12: at most 3 s).

- `test_validate_yaml_cli`: `durable validate FILE` in a subprocess, process start
  to exit: reading, YAML, the shape (msgspec), the graph (references, cycles,
  levels); bytecode cached, as in `test_startup.py`. Quick mode: 10,000 tasks.
- `test_decode_yaml`: `formats.decode_yaml` of the same file, the YAML alone;
  `extra_info` has PyYAML's strict loader on the same bytes (`strict_s`, one run:
  about 5 s at full size) and the ratio.

The file is the `layered` shape of `durable bench`, written the way people write
YAML (block style). Its guard: the fast decoder (`yaml_subset`, yaml_rs) answers for
it, and is at least 3x PyYAML's strict loader on it (measured: about 13x), so a
change that sends every file back to PyYAML fails here whatever the machine's speed.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from durable import formats, yaml_subset
from durable.allocation import bulk_allocation
from durable.benchmark import make_workflow


def write_yaml(path: Path, tasks: int) -> Path:
    """A `layered` workflow of `tasks` tasks, as block-style YAML."""
    workflow = make_workflow("layered", tasks, 64)
    lines = [f"name: {workflow.name}", f"max_concurrency: {workflow.max_concurrency}", "tasks:"]
    for task in workflow.tasks:
        lines += [f"- id: {task.id}", f"  tool: {task.tool}", "  input:"]
        lines += [f"    {key}: {value}" for key, value in task.input.items()]
        if task.dependencies:
            lines.append("  dependencies:")
            lines += [f"  - {dependency}" for dependency in task.dependencies]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def yaml_file(tmp_path_factory: pytest.TempPathFactory):
    """`get(tasks)`: the workflow file of that many tasks, written once per module."""
    folder = tmp_path_factory.mktemp("validate")
    written: dict[int, Path] = {}

    def get(tasks: int) -> Path:
        if tasks not in written:
            written[tasks] = write_yaml(folder / f"workflow-{tasks}.yaml", tasks)
        return written[tasks]

    return get


def decode(decoder, data: bytes, source: str):  # type: ignore[no-untyped-def]
    """A decoder as `durable validate` runs it: with the cyclic GC paused (`plan_file`)."""
    with bulk_allocation():
        return decoder(data, source)


def test_validate_yaml_cli(
    benchmark, kit, durable_exe: str, yaml_file, tmp_path: Path, cached_env
) -> None:
    tasks = kit.size(100_000, 10_000)
    path = yaml_file(tasks)

    def validate() -> str:
        done = subprocess.run(
            [durable_exe, "validate", str(path)],
            cwd=tmp_path,
            env=cached_env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = benchmark.pedantic(
        validate, rounds=kit.rounds(5), warmup_rounds=kit.warmup(), iterations=1
    )
    assert f"{tasks} tasks" in out
    benchmark.extra_info.update(tasks=tasks, file_bytes=path.stat().st_size, quick=kit.quick)


def test_decode_yaml(benchmark, kit, yaml_file) -> None:
    tasks = kit.size(100_000, 10_000)
    path = yaml_file(tasks)
    data = path.read_bytes()
    assert yaml_subset.decode(data) is not yaml_subset.UNSURE, "the fast decoder left it to PyYAML"
    value = benchmark.pedantic(
        decode,
        args=(formats.decode_yaml, data, str(path)),
        rounds=kit.rounds(5),
        warmup_rounds=kit.warmup(),
        iterations=1,
    )
    assert len(value["tasks"]) == tasks

    def best(decoder, rounds: int) -> float:  # type: ignore[no-untyped-def]
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            decode(decoder, data, str(path))
            times.append(time.perf_counter() - started)
        return min(times)

    # Best of a few, each side, moments apart: load only ever adds time.
    fast_s = best(formats.decode_yaml, 3)
    strict_s = best(formats.decode_yaml_strictly, 1)
    ratio = strict_s / fast_s
    benchmark.extra_info.update(
        tasks=tasks, fast_s=round(fast_s, 3), strict_s=round(strict_s, 3), ratio=round(ratio, 1)
    )
    kit.guard(
        "PyYAML's strict loader / the fast decoder, on a generated workflow",
        ratio,
        at_least=3,
        readme="validating a 100,000-task YAML workflow takes under 3 s",
    )
