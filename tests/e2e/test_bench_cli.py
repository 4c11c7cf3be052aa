"""`durable bench` runs the real engine and reports the fields the README's Performance section uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

REQUIRED = (
    "tasks_per_s",
    "us_per_task",
    "baseline_tasks_per_s",
    "events_per_commit",
    "journal_bytes_per_task",
    "peak_rss_mb",
)


@pytest.fixture
def bench(durable, tmp_path: Path) -> Any:
    def run(*args: str) -> dict[str, Any]:
        done = durable("bench", *args, "--json", cwd=tmp_path, timeout=120, check=0)
        return json.loads(done.stdout)

    return run


@pytest.mark.parametrize("shape", ["wide", "chain", "layered", "diamond"])
def test_bench_json_has_the_documented_fields(bench, shape: str) -> None:
    report = bench("--tasks", "60", "--shape", shape, "-j", "8")
    for key in REQUIRED:
        assert report[key] > 0, key
    assert report["tasks"] == 60
    assert report["shape"] == shape
    # Every task writes task_started and task_succeeded; plus run_started/finished.
    assert report["events"] == 2 * 60 + 2
    assert report["commits"] >= 1


def test_bench_chain_commits_once_per_task_and_sleep_mode_runs_in_parallel(bench) -> None:
    chain = bench("--tasks", "40", "--shape", "chain", "--durability", "off")
    # The durability barrier: each link waits for the commit of the one before it.
    assert chain["commits"] >= 40
    # 40 sleeps of 0.1 s: about 0.1 s side by side, 4 s one after the other.
    io = bench("--tasks", "40", "--sleep", "0.1", "-j", "40", "--repeat", "2")
    assert io["seconds"] < 2.0  # parallel, not one after the other
    assert io["runs"] == 2 and io["tasks_per_s_min"] <= io["tasks_per_s"] <= io["tasks_per_s_max"]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--sleep", "nan"),
        ("--sleep", "inf"),
        ("--sleep", "1e400"),  # read as inf
        ("--sleep", "-1"),
        ("--sleep", "-inf"),
        ("--tasks", "0"),
        ("--tasks", "nan"),
        ("-j", "0"),
        ("-j", "inf"),
        ("--repeat", "0"),
        ("--repeat", "1.5"),
    ],
)
def test_a_bad_option_value_is_refused_before_anything_runs(
    durable, no_traceback, tmp_path: Path, option: str, value: str
) -> None:
    """`--sleep nan` once ran the benchmark, whose tasks failed, and ended in a
    traceback (`RuntimeError: benchmark run ... ended failed`); then in an error about
    a task of a workflow the user never wrote. Now click refuses it, naming the option."""
    result = durable("bench", "--tasks", "2", option, value, cwd=tmp_path, timeout=30, check=2)
    no_traceback(result)
    assert result.stdout == ""
    error = result.stderr.splitlines()[0]
    assert error.startswith("error: Invalid value for ") and f"'{option}'" in error, result.stderr
    assert value in error, error
