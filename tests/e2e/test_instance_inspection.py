"""`durable status RUN 'fan[2]'` and `durable log RUN --task 'fan[2]'`: an instance of a
`foreach` task is a task of its own (the README: it has its own events), so the
commands that show one task show an instance too. Both once failed on one: `status`
with a KeyError traceback (its attempts were replayed from a fold that has no
instances before their expansion), `log` refusing it (only the file's ids counted).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

WORKFLOW = """\
name: fan
tasks:
  - id: fan
    tool: shell
    foreach: [a, b, c]
    retries: 1
    retry_delay: 0
    # Each instance fails its first attempt (no marker yet) and succeeds its second.
    input: {command: [sh, -c, 'test -e "m-$0" || { touch "m-$0"; exit 3; }', "${item}"]}
  - id: after
    tool: echo
    input: "${fan.output}"
"""


@pytest.fixture
def ran(durable, write, tmp_path: Path) -> Path:
    write(tmp_path, "fan.yaml", WORKFLOW)
    durable("run", "fan.yaml", "--db", "j.db", "--run-id", "fan-1", cwd=tmp_path, check=0)
    return tmp_path


def test_status_of_an_instance_shows_its_own_attempts(durable, as_json, ran: Path) -> None:
    shown = durable("status", "fan-1", "fan[2]", "--db", "j.db", cwd=ran, check=0)
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("task fan[2] of run fan-1 (fan): succeeded, 2 attempts")
    assert [line.split()[-1] for line in lines[1:]] == ["retrying", "succeeded"]
    document = as_json(durable("status", "fan-1", "fan[2]", "--db", "j.db", "--json", cwd=ran))
    assert document["task_id"] == "fan[2]"
    assert document["task"]["attempts"] == 2
    times = document["task"]["attempt_times"]
    assert [(t["attempt"], t["outcome"]) for t in times] == [(1, "retrying"), (2, "succeeded")]
    assert times[0]["ended_at"] <= times[1]["started_at"]


def test_log_of_an_instance_shows_its_events_only(durable, ran: Path) -> None:
    shown = durable("log", "fan-1", "--db", "j.db", "--task", "fan[1]", cwd=ran, check=0)
    words = [line.split(None, 2)[1:] for line in shown.stdout.splitlines()]
    assert words == [
        ["fan[1]", "started (attempt 1)"],
        ["fan[1]", "retrying (attempt 1): ToolFailed: shell: sh exited with 3; retrying in 0s"],
        ["fan[1]", "started (attempt 2)"],
        ["fan[1]", "succeeded"],
    ]


@pytest.mark.parametrize("task", ["fan[3]", "after[0]", "fan[x]", "nope"])
def test_log_and_status_refuse_what_is_not_a_task_of_the_run(
    durable, no_traceback, ran: Path, task: str
) -> None:
    for command in (["log", "fan-1", "--task", task], ["status", "fan-1", task]):
        refused = durable(*command, "--db", "j.db", cwd=ran, check=2)
        no_traceback(refused)
        assert refused.stderr.strip() == f"error: run 'fan-1' has no task '{task}'"
