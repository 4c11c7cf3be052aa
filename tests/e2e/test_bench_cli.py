"""`durable bench` runs the real engine and reports the fields DESIGN.md §5 names."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

DURABLE = os.path.join(os.path.dirname(sys.executable), "durable")
REQUIRED = (
    "tasks_per_s",
    "us_per_task",
    "baseline_tasks_per_s",
    "events_per_commit",
    "journal_bytes_per_task",
    "peak_rss_mb",
)


def bench(*args: str) -> dict:
    done = subprocess.run(
        [DURABLE, "bench", *args, "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.e2e
@pytest.mark.parametrize("shape", ["wide", "chain", "layered", "diamond"])
def test_bench_json_has_the_design_fields(shape: str) -> None:
    report = bench("--tasks", "60", "--shape", shape, "-j", "8")
    for key in REQUIRED:
        assert report[key] > 0, key
    assert report["tasks"] == 60
    assert report["shape"] == shape
    # Every task writes task_started and task_succeeded; plus run_started/finished.
    assert report["events"] == 2 * 60 + 2
    assert report["commits"] >= 1


@pytest.mark.e2e
def test_bench_chain_commits_once_per_task_and_sleep_mode_runs_in_parallel() -> None:
    chain = bench("--tasks", "40", "--shape", "chain", "--durability", "off")
    # The durability barrier: each link waits for the commit of the one before it.
    assert chain["commits"] >= 40
    io = bench("--tasks", "20", "--sleep", "0.1", "-j", "20", "--repeat", "2")
    assert io["seconds"] < 0.1 * 20 / 2  # parallel, not one after the other
    assert io["runs"] == 2 and io["tasks_per_s_min"] <= io["tasks_per_s"] <= io["tasks_per_s_max"]
