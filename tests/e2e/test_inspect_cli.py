"""Reading runs from the command line: `log --follow` against a live driver, what a
dead run looks like, durations across a resume, run id prefixes, `runs` filters,
`status --failed`, and shell completion."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

GATE = """
name: gate
max_concurrency: 4
tasks:
  - {id: first, tool: echo, input: 1}
  - id: w1
    tool: shell
    dependencies: [first]
    input: {command: ["sh", "-c", "while [ ! -e release ]; do sleep 0.02; done"]}
  - id: w2
    tool: shell
    dependencies: [first]
    input: {command: ["sh", "-c", "while [ ! -e release ]; do sleep 0.02; done"]}
  - {id: last, tool: echo, dependencies: [w1, w2], input: 2}
"""


@pytest.fixture
def gate(tmp_path: Path, write) -> dict[str, Path]:
    return {
        "folder": tmp_path,
        "workflow": write(tmp_path, "gate.yaml", GATE),
        "db": tmp_path / "j.db",
    }


def _start_blocked(gate: dict[str, Path], start, wait_for_events, run_id: str) -> Any:
    """A driver whose `w1` and `w2` are running, blocked on the `release` file."""
    folder, db = gate["folder"], gate["db"]
    driver = start("run", gate["workflow"], "--db", db, "--run-id", run_id, cwd=folder)
    wait_for_events(db, run_id, "task_started", 3, process=driver)
    return driver


@pytest.mark.parametrize("as_json", [False, True], ids=["plain", "json"])
def test_log_follow_sees_every_transition_and_exits_with_the_run(
    gate, start, stop, wait_for_events, journal_kinds, json_lines, Lines, as_json: bool
) -> None:
    folder, db = gate["folder"], gate["db"]
    driver = _start_blocked(gate, start, wait_for_events, "follow-1")
    follower = None
    try:
        extra = ["--json"] if as_json else []
        # by a prefix of the id, as git takes commits
        follower = start("log", "follow-", "--db", db, "--follow", *extra, cwd=folder)
        lines = Lines(follower.stdout)
        first = [lines.next() for _ in range(5)]  # everything committed so far
        assert follower.poll() is None, "the follower must wait for the run"
        (folder / "release").touch()
        follower.wait(timeout=30)
        out = "".join(first) + lines.rest()
        err = follower.stderr.read()
        driver.wait(timeout=30)
    finally:
        (folder / "release").touch()
        stop(driver)
        stop(follower)
    assert follower.returncode == 0, err
    assert driver.returncode == 0
    journal = journal_kinds(db, "follow-1")
    if as_json:
        events = json_lines(out)
        assert [(e.get("task_id"), e["kind"]) for e in events] == journal
        assert all(e["run_id"] == "follow-1" for e in events)
    else:
        printed = out.splitlines()
        assert len(printed) == len(journal)
        for line, (task_id, kind) in zip(printed, journal, strict=True):
            words = line.split()
            if task_id is None:
                assert words[1:3] == ["run", kind.removeprefix("run_")], line
            else:
                assert words[1:3] == [task_id, kind.removeprefix("task_")], line
        assert printed[-1].endswith("run finished succeeded")


def test_log_follow_says_so_when_the_driver_is_killed(
    gate, start, stop, wait_for_events, durable, as_json, Lines
) -> None:
    folder, db = gate["folder"], gate["db"]
    driver = _start_blocked(gate, start, wait_for_events, "gone-1")
    follower = None
    try:
        follower = start("log", "gone-1", "--db", db, "--follow", cwd=folder)
        lines = Lines(follower.stdout)
        for _ in range(5):
            lines.next()
        os.killpg(driver.pid, signal.SIGKILL)
        killed = time.monotonic()
        follower.wait(timeout=10)
        took = time.monotonic() - killed
        err = follower.stderr.read()
    finally:
        # The shell steps run in sessions of their own and outlive the driver: let them end.
        (folder / "release").touch()
        stop(driver)
        stop(follower)
    assert follower.returncode == 130, err
    assert took < 3, f"the follower took {took:.1f}s to notice"
    assert err.strip() == (
        "run gone-1 is no longer driven by any process (interrupted); "
        "resume it with `durable resume gone-1`"
    )

    # The dead run's in-flight tasks are interrupted, never `running`.
    status = as_json(durable("status", "gone", "--db", db, "--json", cwd=folder))
    assert status["status"] == "interrupted"
    states = {task_id: task["state"] for task_id, task in status["tasks"].items()}
    assert states == {
        "first": "succeeded",
        "w1": "interrupted",
        "w2": "interrupted",
        "last": "pending",
    }
    runs = as_json(durable("runs", "--db", db, "--json", cwd=folder))
    assert runs[0]["counts"] == {"succeeded": 1, "interrupted": 2, "pending": 1}
    listing = durable("runs", "--db", db, cwd=folder, check=0).stdout
    assert "running" not in listing and "2 interrupted" in listing

    failed = durable("status", "gone-1", "--failed", "--db", db, cwd=folder, check=0).stdout
    lines_out = failed.splitlines()
    assert lines_out[0].startswith("run gone-1 (gate): interrupted after ")
    assert "resume it with `durable resume gone-1`" in lines_out[1]
    rows = [line.split()[:3] for line in lines_out[3:]]
    assert rows == [["w1", "interrupted", "1"], ["w2", "interrupted", "1"]]

    # A follower of a run nobody drives prints its history and says so at once.
    late = durable("log", "gone-1", "--db", db, "--follow", cwd=folder, timeout=10)
    assert late.returncode == 130
    assert "no longer driven by any process" in late.stderr


def test_a_resumed_task_s_duration_leaves_out_the_dead_time(
    gate, start, stop, wait_for_events, durable, as_json
) -> None:
    folder, db = gate["folder"], gate["db"]
    driver = _start_blocked(gate, start, wait_for_events, "dur-1")
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        stop(driver)
    time.sleep(1.5)  # the process is dead for 1.5 s: no task's time
    (folder / "release").touch()
    durable("resume", "dur-1", "--db", db, cwd=folder, check=0)
    status = as_json(durable("status", "dur-1", "--db", db, "--json", cwd=folder))
    w1 = status["tasks"]["w1"]
    assert w1["state"] == "succeeded" and w1["attempts"] == 2
    assert w1["finished_at"] - w1["started_at"] > 1.5
    assert w1["duration"] < 1.0, w1
    assert status["duration"] < 1.5, status

    detail = as_json(durable("status", "dur", "w1", "--db", db, "--json", cwd=folder))
    attempts = detail["task"]["attempt_times"]
    assert [a["outcome"] for a in attempts] == ["interrupted", "succeeded"]
    assert sum(a["duration"] for a in attempts) == pytest.approx(w1["duration"], abs=0.01)
    text = durable("status", "dur-1", "w1", "--db", db, cwd=folder, check=0).stdout
    assert text.startswith("task w1 of run dur-1 (gate): succeeded, 2 attempts, ")
    assert "attempt 2" in text


# -- a journal of finished runs -------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory, durable, write) -> dict[str, Any]:
    """Three runs: `abc-1` (ok) and `abd-2` (fails), of two workflows, and `x-3` (ok)."""
    folder = tmp_path_factory.mktemp("finished")
    ok = write(folder, "ok.yaml", "name: ok\ntasks:\n  - {id: a, tool: echo, input: {n: [1, 2]}}\n")
    bad = write(
        folder,
        "bad.yaml",
        """
name: bad
tasks:
  - {id: fine, tool: echo, input: 1}
  - {id: broken, tool: shell, input: {command: "false"}}
  - {id: after, tool: echo, dependencies: [broken]}
""",
    )
    db = folder / "j.db"
    durable("run", ok, "--db", db, "--run-id", "abc-1", cwd=folder, check=0)
    durable("run", bad, "--db", db, "--run-id", "abd-2", cwd=folder, check=1)
    durable("run", ok, "--db", db, "--run-id", "x-3", cwd=folder, check=0)
    return {"folder": folder, "db": db}


def _ids(durable, finished, *args: str) -> list[str]:
    result = durable("runs", "--db", finished["db"], "--json", *args, cwd=finished["folder"])
    assert result.returncode == 0, result.stderr
    return [entry["run_id"] for entry in json.loads(result.stdout)]


def test_runs_filters(durable, finished) -> None:
    assert _ids(durable, finished) == ["abc-1", "abd-2", "x-3"]
    assert _ids(durable, finished, "--status", "failed") == ["abd-2"]
    assert _ids(durable, finished, "--status", "failed,succeeded", "--limit", "2") == [
        "abd-2",
        "x-3",
    ]
    assert _ids(durable, finished, "--status", "failed", "--status", "interrupted") == ["abd-2"]
    assert _ids(durable, finished, "--workflow", "ok") == ["abc-1", "x-3"]
    assert _ids(durable, finished, "--since", "1h", "--limit", "1") == ["x-3"]
    assert _ids(durable, finished, "--since", "2999-01-01") == []
    none = durable("runs", "--db", finished["db"], "--since", "2999-01-01", cwd=finished["folder"])
    assert none.stdout == "no runs match\n"
    bad = durable("runs", "--db", finished["db"], "--status", "done", cwd=finished["folder"])
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: Invalid value for '--status': unknown status 'done'")
    bad = durable("runs", "--db", finished["db"], "--since", "soon", cwd=finished["folder"])
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: Invalid value for '--since': 'soon' is neither an age")


def test_runs_shows_finish_time_and_duration(durable, finished) -> None:
    entries = json.loads(
        durable("runs", "--db", finished["db"], "--json", cwd=finished["folder"], check=0).stdout
    )
    for entry in entries:
        assert set(entry) == {
            "run_id",
            "workflow",
            "status",
            "created_at",
            "finished_at",
            "duration",
            "counts",
        }
        assert entry["finished_at"] >= entry["created_at"]
        assert 0 <= entry["duration"] <= entry["finished_at"] - entry["created_at"] + 0.01
    text = durable("runs", "--db", finished["db"], cwd=finished["folder"], check=0).stdout
    header, *rows = text.splitlines()
    assert header.split() == [
        "RUN",
        "WORKFLOW",
        "STATUS",
        "CREATED",
        "FINISHED",
        "DURATION",
        "TASKS",
    ]
    assert rows[1].split()[:3] == ["abd-2", "bad", "failed"]
    assert rows[1].endswith("1 succeeded, 1 failed, 1 upstream_failed")


def test_run_id_prefixes(durable, finished, as_json) -> None:
    folder, db = finished["folder"], finished["db"]
    assert as_json(durable("status", "abd", "--db", db, "--json", cwd=folder))["run_id"] == "abd-2"
    assert as_json(durable("output", "abc", "a", "--db", db, cwd=folder)) == {"n": [1, 2]}
    assert "run finished" in durable("log", "x", "--db", db, cwd=folder, check=0).stdout
    for command in (["status", "ab"], ["log", "ab"], ["output", "ab"]):
        result = durable(*command, "--db", db, cwd=folder)
        assert result.returncode == 2
        assert result.stdout == ""
        error = result.stderr.splitlines()
        assert error[0] == "error: run id 'ab' is ambiguous: 2 runs start with it"
        assert error[1].split()[:2] == ["abc-1", "ok"]
        assert error[2].split()[:2] == ["abd-2", "bad"]
    missing = durable("status", "zz", "--db", db, cwd=folder)
    assert missing.returncode == 2 and "run 'zz' not found" in missing.stderr


def test_status_lists_failures_first_and_failed_shows_only_them(durable, finished) -> None:
    folder, db = finished["folder"], finished["db"]
    text = durable("status", "abd-2", "--db", db, cwd=folder, check=0).stdout.splitlines()
    assert text[0].startswith("run abd-2 (bad): failed after ")
    assert text[0].endswith("1 succeeded, 1 failed, 1 upstream_failed")
    assert text[1].split() == ["TASK", "STATE", "ATTEMPTS", "STARTED", "DURATION", "ERROR"]
    assert [line.split()[:2] for line in text[2:]] == [
        ["broken", "failed"],
        ["after", "upstream_failed"],
        ["fine", "succeeded"],
    ]
    assert "exited with 1" in text[2]
    only = durable("status", "abd-2", "--failed", "--db", db, "--json", cwd=folder, check=0)
    assert list(json.loads(only.stdout)["tasks"]) == ["broken", "after"]
    calm = durable("status", "abc-1", "--failed", "--db", db, cwd=folder, check=0)
    assert calm.stdout.splitlines()[-1] == "no task needs attention"


def _complete(durable, finished, line: str) -> list[str]:
    """What bash completion offers for `line` (click's protocol: one `type,value` a line)."""
    env = {
        "_DURABLE_COMPLETE": "bash_complete",
        "COMP_WORDS": line,
        "COMP_CWORD": str(len(line.split(" ")) - 1),
        "DURABLE_DB": str(finished["db"]),
    }
    result = durable(cwd=finished["folder"], env=env, check=0)
    assert "Traceback" not in result.stderr
    return [item.split(",", 1)[1] for item in result.stdout.splitlines() if item]


def test_shell_completion_of_run_ids_and_task_ids(durable, finished) -> None:
    assert _complete(durable, finished, "durable status ") == ["x-3", "abd-2", "abc-1"]
    assert _complete(durable, finished, "durable log ab") == ["abd-2", "abc-1"]
    assert _complete(durable, finished, "durable output abd-2 ") == ["fine", "broken", "after"]
    assert _complete(durable, finished, "durable status abd b") == ["broken"]
    # no journal: nothing to complete, and no error
    missing = dict(finished, db=finished["folder"] / "nope.db")
    assert _complete(durable, missing, "durable status ") == []
