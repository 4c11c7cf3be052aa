"""The cache across runs from the command line: `durable run --cache`, `durable resume
--cache`, `durable cache clear`, and `cache: true` on a tool that refuses it.

The tools (a `tools.py` beside the workflow) append one line per call, the task's
name, to the file `$CACHE_CALL_LOG` names: the log says exactly which tasks a
command ran. `$CACHE_TOOL_SLEEP` makes each call slow, for the crash test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

TOOLS = """\
import os
import time

import durable


def _called(name):
    with open(os.environ["CACHE_CALL_LOG"], "a") as log:
        log.write(name + "\\n")
    time.sleep(float(os.environ.get("CACHE_TOOL_SLEEP", "0")))


@durable.tool(name="step")
def step(name, value=None, upstream=None):
    _called(name)
    return {"name": name, "value": value, "upstream": upstream}


@durable.tool(name="fetch")
def fetch(name, value=None):
    _called(name)
    return {"fetched": name, "value": value}


@durable.tool(name="charge", cacheable=False)
def charge(amount):
    return {"charged": amount}
"""

#: a, g take param x; b takes y; c <- a; d <- b, c; f <- e; g <- f. e is `fetch`.
WORKFLOW: dict[str, Any] = {
    "name": "cached",
    "imports": ["tools"],
    "params": {"x": 1, "y": "why"},
    "tasks": [
        {"id": "a", "tool": "step", "input": {"name": "a", "value": "${params.x}"}},
        {"id": "b", "tool": "step", "input": {"name": "b", "value": "${params.y}"}},
        {"id": "c", "tool": "step", "input": {"name": "c", "upstream": "${a.output}"}},
        {
            "id": "d",
            "tool": "step",
            "input": {"name": "d", "upstream": ["${b.output}", "${c.output.upstream}"]},
        },
        {"id": "e", "tool": "fetch", "input": {"name": "e", "value": 5}},
        {"id": "f", "tool": "step", "input": {"name": "f", "upstream": "${e.output}"}},
        {
            "id": "g",
            "tool": "step",
            "input": {"name": "g", "value": "${params.x}"},
            "dependencies": ["f"],
        },
    ],
}
TASKS = {task["id"] for task in WORKFLOW["tasks"]}

SUMMARY = re.compile(r"^run (\S+) succeeded in [\d.]+s: (\d+) succeeded(?: \((\d+) from cache\))?$")


def depends_on_param(workflow: dict[str, Any], param: str) -> set[str]:
    """The tasks whose rendered input changes with `param`: those that reference it,
    and everything downstream of them, from the DAG (references and `dependencies`)."""
    deps: dict[str, set[str]] = {}
    direct = set()
    for task in workflow["tasks"]:
        text = json.dumps(task["input"])
        deps[task["id"]] = set(task.get("dependencies", [])) | {
            ref for ref in re.findall(r"\$\{(\w+)\.", text) if ref != "params"
        }
        if re.search(r"\$\{params\." + param + r"\b", text):
            direct.add(task["id"])
    affected = set(direct)
    while True:
        more = {task for task, before in deps.items() if before & affected} - affected
        if not more:
            return affected
        affected |= more


def setup(tmp_path: Path, write: Any, workflow: dict[str, Any] = WORKFLOW) -> dict[str, str]:
    write(tmp_path, "tools.py", TOOLS)
    write(tmp_path, "wf.yaml", yaml.safe_dump(workflow, sort_keys=False))
    return {"DURABLE_DB": str(tmp_path / "journal.db"), "CACHE_CALL_LOG": str(tmp_path / "calls")}


def calls(env: dict[str, str]) -> list[str]:
    """The tasks called since the last `calls`, in order; empties the log."""
    log = Path(env["CACHE_CALL_LOG"])
    if not log.exists():
        return []
    names = log.read_text().split()
    log.unlink()
    return names


def run_cached(
    durable: Any, tmp_path: Path, env: dict[str, str], *args: str
) -> tuple[str, re.Match[str], str]:
    """`durable run wf.yaml --cache ARGS`: the run id, the summary line's match, stdout."""
    result = durable("run", "wf.yaml", "--cache", *args, cwd=tmp_path, env=env, check=0)
    lines = result.stdout.splitlines()
    summary = SUMMARY.match(lines[-1])
    assert summary, result.stdout
    return summary.group(1), summary, result.stdout


def outputs(durable: Any, tmp_path: Path, env: dict[str, str], run_id: str) -> Any:
    result = durable("output", run_id, cwd=tmp_path, env=env, check=0)
    return json.loads(result.stdout)


def reused_lines(stdout: str) -> dict[str, str]:
    """task id -> the `reused from the cache (...)` detail of its line."""
    found = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"\S+ (\S+) reused from the cache \((.*)\)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_a_second_cached_run_calls_no_tool_and_outputs_the_same(durable, write, tmp_path):
    env = setup(tmp_path, write)
    first, summary, stdout = run_cached(durable, tmp_path, env)
    assert sorted(calls(env)) == sorted(TASKS)
    assert summary.group(3) is None and reused_lines(stdout) == {}

    second, summary, stdout = run_cached(durable, tmp_path, env)
    assert calls(env) == [], "the second run called a tool"
    assert (summary.group(2), summary.group(3)) == (str(len(TASKS)), str(len(TASKS)))
    assert reused_lines(stdout) == {task: f"run {first}, task {task}, attempt 1" for task in TASKS}
    expected = outputs(durable, tmp_path, env, first)
    assert set(expected) == TASKS
    assert outputs(durable, tmp_path, env, second) == expected
    for task in TASKS:  # and one task at a time
        one = durable("output", second, task, cwd=tmp_path, env=env, check=0)
        assert json.loads(one.stdout) == expected[task]

    result = durable("run", "wf.yaml", "--cache", "--json", cwd=tmp_path, env=env, check=0)
    assert calls(env) == []
    events = [json.loads(line) for line in result.stdout.splitlines()]
    reused = {e["task_id"]: e for e in events if e["kind"] == "task_reused"}
    assert set(reused) == TASKS
    assert not [e for e in events if e["kind"] in ("task_started", "task_succeeded")]
    assert {(e["from_task"], e["from_attempt"]) for e in reused.values()} == {
        (task, 1) for task in TASKS
    }


def test_a_changed_param_reruns_exactly_the_tasks_that_depend_on_it(durable, write, tmp_path):
    env = setup(tmp_path, write)
    run_cached(durable, tmp_path, env)
    calls(env)
    assert depends_on_param(WORKFLOW, "x") == {"a", "c", "d", "g"}  # the DAG, as built
    for param, value in (("x", "2"), ("y", "other")):
        expected = depends_on_param(WORKFLOW, param)
        run_id, summary, stdout = run_cached(durable, tmp_path, env, "-p", f"{param}={value}")
        called = calls(env)
        assert sorted(called) == sorted(expected), (param, called)
        assert set(reused_lines(stdout)) == TASKS - expected
        assert summary.group(3) == str(len(TASKS - expected))
        changed = outputs(durable, tmp_path, env, run_id)
        if param == "x":
            assert changed["a"]["value"] == changed["g"]["value"] == 2
        else:
            assert changed["d"]["upstream"][0]["value"] == "other"


def test_a_killed_cached_run_resumes_without_rerunning_committed_work(
    durable, start, stop, write, wait_for_events, journal_rows, tmp_path
):
    env = setup(tmp_path, write)
    db = Path(env["DURABLE_DB"])
    slow = {**env, "CACHE_TOOL_SLEEP": "0.4"}
    process = start(
        "run", "wf.yaml", "--cache", "-j", "1", "--run-id", "killed", cwd=tmp_path, env=slow
    )
    try:
        wait_for_events(db, "killed", "task_succeeded", 2, process=process, timeout=20)
    finally:
        stop(process)  # SIGKILL, in the middle of the run
    assert process.returncode != 0
    committed = {
        task
        for (task,) in journal_rows(
            db,
            "SELECT task_id FROM events WHERE run_id = 'killed'"
            " AND kind IN ('task_succeeded', 'task_ran')",
        )
    }
    assert 2 <= len(committed) < len(TASKS), committed
    remembered = {task for (task,) in journal_rows(db, "SELECT task_id FROM cache")}
    assert remembered == committed
    calls(env)

    result = durable("resume", "killed", "--cache", cwd=tmp_path, env=env, check=0)
    called = calls(env)
    assert not set(called) & committed, f"committed work ran again: {called}"
    assert sorted(called) == sorted(TASKS - committed)
    assert "killed succeeded" in result.stdout

    plain_env = {**env, "DURABLE_DB": str(tmp_path / "plain.db")}
    durable("run", "wf.yaml", "--run-id", "plain", cwd=tmp_path, env=plain_env, check=0)
    assert outputs(durable, tmp_path, env, "killed") == outputs(
        durable, tmp_path, plain_env, "plain"
    )
    durable("check", cwd=tmp_path, env=env, check=0)


def test_cache_clear_forgets_all_or_one_tools_entries(durable, write, tmp_path, count_events):
    env = setup(tmp_path, write)
    db = Path(env["DURABLE_DB"])
    run_cached(durable, tmp_path, env)
    assert sorted(calls(env)) == sorted(TASKS)
    events = count_events(db)

    kept = durable("cache", "clear", "--older-than", "1h", cwd=tmp_path, env=env, check=0)
    assert kept.stdout.strip() == f"forgot 0 cache entries; {len(TASKS)} left"
    cleared = durable("cache", "clear", cwd=tmp_path, env=env, check=0)
    assert cleared.stdout.strip() == f"forgot {len(TASKS)} cache entries; 0 left"
    assert count_events(db) == events, "clearing the cache deleted history"

    _, summary, _ = run_cached(durable, tmp_path, env)
    assert sorted(calls(env)) == sorted(TASKS), "a cleared cache still answered"
    assert summary.group(3) is None

    one = durable("cache", "clear", "--tool", "fetch", "--db", db, cwd=tmp_path, check=0)
    assert one.stdout.strip() == f"forgot 1 cache entry; {len(TASKS) - 1} left"
    _, summary, stdout = run_cached(durable, tmp_path, env)
    # e (fetch) runs again; its output is the same, so f, its dependent, is reused
    assert calls(env) == ["e"]
    assert set(reused_lines(stdout)) == TASKS - {"e"}
    assert summary.group(3) == str(len(TASKS) - 1)


def test_cache_true_on_an_uncacheable_tool_is_refused_before_the_journal(
    durable, write, tmp_path, no_traceback, journal_digest, journal_exists
):
    env = setup(tmp_path, write)
    db = Path(env["DURABLE_DB"])
    durable("run", "wf.yaml", cwd=tmp_path, env=env, check=0)  # a journal to leave alone
    before = journal_digest(db)
    bad = {
        "name": "pays",
        "imports": ["tools"],
        "tasks": [
            {"id": "quote", "tool": "step", "input": {"name": "quote"}, "cache": True},
            {"id": "pay", "tool": "charge", "input": {"amount": 3}, "cache": True},
        ],
    }
    write(tmp_path, "bad.yaml", yaml.safe_dump(bad, sort_keys=False))
    calls(env)
    for args in (("validate", "bad.yaml"), ("run", "bad.yaml"), ("run", "bad.yaml", "--cache")):
        result = durable(*args, cwd=tmp_path, env=env, check=2)
        no_traceback(result)
        output = (result.stdout + result.stderr).splitlines()
        naming = [line for line in output if "task 'pay'" in line]
        assert len(naming) == 1, output
        assert "field 'cache'" in naming[0] and "charge" in naming[0]
        assert not [line for line in output if "quote" in line], output
    assert calls(env) == []
    assert journal_digest(db) == before, "the journal changed"
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    fresh = tmp_path / "fresh.db"
    durable("run", "bad.yaml", "--db", fresh, cwd=tmp_path, env=env, check=2)
    assert not journal_exists(fresh)
