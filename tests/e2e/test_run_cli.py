"""`durable run` and the commands that read a run back, driven as the real command.

Every test writes its workflow into its own temporary folder, runs the command with
that folder as the working directory and its own `--db`, and reads the outcome
back through the CLI (`status --json`, `log --json`, ...) or, where it must wait
for a moment mid-run, by polling the journal itself rather than sleeping.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
TERMINAL_KINDS = {"task_succeeded", "task_failed", "task_cancelled", "task_retrying"}


# -- helpers ------------------------------------------------------------------


def max_overlap(events: list[dict[str, Any]]) -> int:
    """The most attempts running at once, from a run's JSON events in seq order."""
    running = peak = 0
    for event in events:
        if event["kind"] == "task_started":
            running += 1
            peak = max(peak, running)
        elif event["kind"] in TERMINAL_KINDS:
            running -= 1
    return peak


# -- a run with a failure, read back every way --------------------------------

MIXED = """
name: mixed
params: {greeting: hello, count: 2}
tasks:
  - id: ok
    tool: echo
    input: {greeting: "${params.greeting}", count: "${params.count}"}
  - id: after_ok
    tool: echo
    input: {got: "${ok.output.greeting}"}
  - id: broken
    tool: shell
    input: {command: ["sh", "-c", "echo oops >&2; exit 3"]}
  - id: after_broken
    tool: echo
    input: {x: "${broken.output}"}
  - id: far_after_broken
    tool: echo
    dependencies: [after_broken]
    input: {}
"""


@pytest.fixture(scope="module")
def mixed(durable, write, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One failed run of MIXED with `--json`, shared by the read-back tests."""
    folder = tmp_path_factory.mktemp("mixed")
    workflow = write(folder, "mixed.yaml", MIXED)
    db = folder / "journal.db"
    result = durable(
        "run", str(workflow), "--db", str(db), "--run-id", "mixed-1", "--json", cwd=folder
    )
    status = durable("status", "mixed-1", "--db", str(db), "--json", cwd=folder)
    return {"folder": folder, "db": db, "result": result, "status": status}


def test_failed_task_exits_1_and_spares_the_independent_branch(
    no_traceback, as_json, mixed: dict[str, Any]
) -> None:
    result = mixed["result"]
    assert result.returncode == 1, result.stderr
    no_traceback(result)
    status = as_json(mixed["status"])
    states = {task_id: task["state"] for task_id, task in status["tasks"].items()}
    assert states == {
        "ok": "succeeded",
        "after_ok": "succeeded",
        "broken": "failed",
        "after_broken": "upstream_failed",
        "far_after_broken": "upstream_failed",
    }
    assert status["status"] == "failed"
    assert "3" in status["tasks"]["broken"]["error"]


def test_status_json_has_exactly_the_documented_shape(as_json, mixed: dict[str, Any]) -> None:
    status = as_json(mixed["status"])
    assert set(status) == {"run_id", "workflow", "status", "duration", "tasks"}
    assert (status["run_id"], status["workflow"]) == ("mixed-1", "mixed")
    for task in status["tasks"].values():
        assert set(task) == {
            "state",
            "attempts",
            "started_at",
            "finished_at",
            "duration",
            "output",
            "error",
        }
    ok = status["tasks"]["ok"]
    assert ok["output"] == {"greeting": "hello", "count": 2}
    assert ok["attempts"] == 1 and ok["error"] is None
    assert ok["started_at"] <= ok["finished_at"]
    assert status["tasks"]["far_after_broken"]["attempts"] == 0


def test_status_text_names_the_run_and_the_error(durable, mixed: dict[str, Any]) -> None:
    result = durable("status", "mixed-1", "--db", str(mixed["db"]), cwd=mixed["folder"])
    assert result.returncode == 0, result.stderr
    assert "mixed-1" in result.stdout.splitlines()[0]
    broken = next(line for line in result.stdout.splitlines() if "broken" in line)
    assert "failed" in broken and "3" in broken


def same_events(shown: list[tuple[Any, str]], journaled: list[tuple[Any, str]]) -> bool:
    """Whether the events shown live are the journal's: the same ones, each task's in
    the same order. Across tasks the order may differ within one commit: a task's
    start and success committed together are one row, in its start's place
    (`durable.events.RAN`), before rows queued between them."""

    def by_task(events: list[tuple[Any, str]]) -> dict[Any, list[str]]:
        tasks: dict[Any, list[str]] = {}
        for task_id, kind in events:
            tasks.setdefault(task_id, []).append(kind)
        return tasks

    return by_task(shown) == by_task(journaled)


def assert_seqs_are_rows(events: list[dict[str, Any]]) -> None:
    """Each event carries its row's seq: they increase, and only a task's start and its
    success share one (a `task_ran` row)."""
    seqs = [event["seq"] for event in events]
    assert seqs == sorted(seqs)
    for before, after in itertools.pairwise(events):
        if before["seq"] == after["seq"]:
            assert (before["kind"], after["kind"]) == ("task_started", "task_succeeded")
            assert before["task_id"] == after["task_id"]


def test_run_json_prints_one_object_per_event(
    json_lines, journal_kinds, mixed: dict[str, Any]
) -> None:
    events = json_lines(mixed["result"].stdout)
    assert all(event["run_id"] == "mixed-1" and "kind" in event for event in events)
    assert events[0]["kind"] == "run_started"
    assert events[-1]["kind"] == "run_finished"
    assert events[-1]["status"] == "failed"
    # The same transitions the journal holds, each task's in the same order.
    assert same_events(
        [(e.get("task_id"), e["kind"]) for e in events], journal_kinds(mixed["db"], "mixed-1")
    )


def test_log_plain_and_json(durable, json_lines, journal_kinds, mixed: dict[str, Any]) -> None:
    folder, db = mixed["folder"], str(mixed["db"])
    journal = journal_kinds(mixed["db"], "mixed-1")
    plain = durable("log", "mixed-1", "--db", db, cwd=folder)
    assert plain.returncode == 0, plain.stderr
    assert len(plain.stdout.splitlines()) == len(journal)
    assert "broken failed" in plain.stdout

    events = json_lines(durable("log", "mixed-1", "--db", db, "--json", cwd=folder).stdout)
    assert_seqs_are_rows(events)
    assert [(e.get("task_id"), e["kind"]) for e in events] == journal
    assert all(event["run_id"] == "mixed-1" for event in events)


def test_output_all_and_one(durable, as_json, mixed: dict[str, Any]) -> None:
    folder, db = mixed["folder"], str(mixed["db"])
    outputs = as_json(durable("output", "mixed-1", "--db", db, cwd=folder))
    assert outputs == {"ok": {"greeting": "hello", "count": 2}, "after_ok": {"got": "hello"}}
    one = as_json(durable("output", "mixed-1", "after_ok", "--db", db, cwd=folder))
    assert one == {"got": "hello"}


# -- succeeding runs ------------------------------------------------------------

SIMPLE = """
name: simple
params: {count: 2, word: hi}
tasks:
  - id: a
    tool: echo
    input: {count: "${params.count}", word: "${params.word}"}
  - id: b
    tool: echo
    input: {twice: "${a.output.count} and ${a.output.word}"}
"""


def test_run_prints_run_id_first_and_runs_lists_oldest_first(
    durable, write, no_traceback, as_json, count_events, tmp_path: Path
) -> None:
    workflow = write(tmp_path, "simple.yaml", SIMPLE)
    db = tmp_path / "j.db"
    first = durable("run", str(workflow), "--db", str(db), cwd=tmp_path)
    second = durable("run", str(workflow), "--db", str(db), "--run-id", "second-run", cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    no_traceback(first)

    runs = as_json(durable("runs", "--db", str(db), "--json", cwd=tmp_path))
    assert isinstance(runs, list) and len(runs) == 2
    for entry in runs:
        assert {"run_id", "workflow", "status", "created_at", "counts"} <= set(entry)
        assert entry["workflow"] == "simple"
        assert entry["status"] == "succeeded"
        assert entry["counts"] == {"succeeded": 2}
    assert runs[1]["run_id"] == "second-run"
    assert runs[0]["created_at"] <= runs[1]["created_at"]
    assert runs[0]["run_id"] in first.stdout.splitlines()[0]
    assert "second-run" in second.stdout.splitlines()[0]

    # A run id already in the journal is refused, and nothing is written.
    before = count_events(db)
    again = durable("run", str(workflow), "--db", str(db), "--run-id", "second-run", cwd=tmp_path)
    assert again.returncode == 2
    no_traceback(again)
    assert "second-run" in again.stderr.splitlines()[0]
    assert count_events(db) == before


def test_param_override_coerces_numbers_only_where_the_default_is_one(
    durable, write, as_json, tmp_path: Path
) -> None:
    workflow = write(tmp_path, "simple.yaml", SIMPLE)
    db = str(tmp_path / "j.db")
    result = durable(
        "run",
        str(workflow),
        "--db",
        db,
        "--run-id",
        "p",
        "-p",
        "count=5",
        "-p",
        "word=7",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert as_json(durable("output", "p", "--db", db, cwd=tmp_path)) == {
        "a": {"count": 5, "word": "7"},
        "b": {"twice": "5 and 7"},
    }


PROBE = '''
from __future__ import annotations

import asyncio

import durable

_running = 0
_peak = 0


@durable.tool
async def probe(seconds: float) -> int:
    """Sleep; return the most probes this process has seen running at once so far."""
    global _running, _peak
    _running += 1
    _peak = max(_peak, _running)
    await asyncio.sleep(seconds)
    _running -= 1
    return _peak
'''


@pytest.fixture(scope="module")
def wide(durable, write, json_lines, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Four independent async probes under `-j 2`, in a workflow that would allow eight."""
    folder = tmp_path_factory.mktemp("wide")
    write(folder, "tools.py", PROBE)
    tasks = "".join(f"  - {{id: t{i}, tool: probe, input: {{seconds: 0.25}}}}\n" for i in range(4))
    workflow = write(
        folder, "wide.yaml", f"name: wide\nimports: [tools]\nmax_concurrency: 8\ntasks:\n{tasks}"
    )
    result = durable(
        "run", str(workflow), "--db", str(folder / "j.db"), "-j", "2", "--json", cwd=folder
    )
    assert result.returncode == 0, result.stderr
    return {"events": json_lines(result.stdout)}


def test_jobs_bounds_concurrency(wide: dict[str, Any]) -> None:
    peaks = [e["output"] for e in wide["events"] if e["kind"] == "task_succeeded"]
    assert len(peaks) == 4
    assert max(peaks) == 2


def test_journal_never_shows_more_running_than_jobs(wide: dict[str, Any]) -> None:
    """The journal never claims more attempts running at once than `-j` allows.

    A task keeps its slot until its outcome is journaled, so the next task's
    `task_started` always comes after the finished task's `task_succeeded`.
    """
    assert max_overlap(wide["events"]) == 2


def test_fail_fast_cancels_the_rest(durable, write, no_traceback, as_json, tmp_path: Path) -> None:
    workflow = write(
        tmp_path,
        "ff.yaml",
        """
name: ff
tasks:
  - {id: broken, tool: shell, input: {command: ["sh", "-c", "sleep 0.2; exit 1"]}}
  - {id: slow, tool: sleep, input: {seconds: 30}}
  - {id: after_slow, tool: echo, input: {x: "${slow.output}"}}
""",
    )
    db = str(tmp_path / "j.db")
    began = time.monotonic()
    result = durable(
        "run", str(workflow), "--db", db, "--run-id", "ff", "--fail-fast", cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - began < 15
    no_traceback(result)
    status = as_json(durable("status", "ff", "--db", db, "--json", cwd=tmp_path))
    assert status["status"] == "failed"
    assert status["tasks"]["broken"]["state"] == "failed"
    assert status["tasks"]["slow"]["state"] == "cancelled"
    assert status["tasks"]["after_slow"]["state"] != "succeeded"


def test_durable_db_environment_variable(
    durable, write, as_json, journal_exists, tmp_path: Path
) -> None:
    workflow = write(tmp_path, "simple.yaml", SIMPLE)
    db = tmp_path / "elsewhere" / "env.db"
    env = {"DURABLE_DB": str(db)}
    result = durable("run", str(workflow), "--run-id", "env", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert journal_exists(db)
    assert not (tmp_path / ".durable").exists()
    runs = as_json(durable("runs", "--json", env=env, cwd=tmp_path))
    assert [(entry["run_id"], entry["status"]) for entry in runs] == [("env", "succeeded")]


# -- interruption and resume ----------------------------------------------------

HOLD = '''
from __future__ import annotations

import asyncio
import os
import time

import durable


@durable.tool
async def hold(result: str, release: str) -> str:
    """Runs until the release file exists (a minute at most), then returns `result`."""
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return result
'''

SLOW = """
name: slow
imports: [tools]
params: {release: none}
tasks:
  - {id: quick, tool: echo, input: {n: 1}}
  - {id: slow_1, tool: hold, input: {result: one, release: "${params.release}"}}
  - {id: slow_2, tool: hold, input: {result: two, release: "${params.release}"}}
  - {id: after, tool: echo, input: {got: ["${slow_1.output}", "${slow_2.output}"]}}
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_interrupts_resumably(
    durable,
    start,
    stop,
    write,
    as_json,
    count_events,
    journal_kinds,
    wait_for_events,
    Lines,
    tmp_path: Path,
    signum: signal.Signals,
) -> None:
    """SIGINT or SIGTERM mid-run: exit 130, running tasks journaled as cancelled, resumable.

    `slow_1` and `slow_2` run until the test creates their release file, which it
    does only after the signal: the signal always lands while they run.
    """
    write(tmp_path, "tools.py", HOLD)
    workflow = write(tmp_path, "slow.yaml", SLOW)
    release = tmp_path / "release"
    db = tmp_path / "j.db"
    process = start(
        "run", workflow, "--db", db, "--run-id", "sig", "-p", f"release={release}", cwd=tmp_path
    )
    try:
        lines = Lines(process.stdout)
        # The run id comes first, while the run is still going.
        assert "sig" in lines.next()
        wait_for_events(db, "sig", "task_started", 3, process=process)
        wait_for_events(db, "sig", "task_succeeded", 1, task_id="quick", process=process)
        assert process.poll() is None
        process.send_signal(signum)
        process.wait(timeout=30)
        out = lines.rest()
        err = process.stderr.read()
    finally:
        release.touch()
        stop(process)
    assert process.returncode == 130, err
    assert "Traceback" not in out + err
    journal = journal_kinds(db, "sig")
    assert ("slow_1", "task_cancelled") in journal
    assert ("slow_2", "task_cancelled") in journal
    assert journal[-1] == (None, "run_interrupted")
    assert not any(kind == "run_finished" for _, kind in journal)

    runs = as_json(durable("runs", "--db", str(db), "--json", cwd=tmp_path))
    assert runs[0]["status"] == "interrupted"
    if signum != signal.SIGINT:
        return  # the resume is the same whichever signal stopped the run

    resumed = durable("resume", "sig", "--db", str(db), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    status = as_json(durable("status", "sig", "--db", str(db), "--json", cwd=tmp_path))
    assert status["status"] == "succeeded"
    assert status["tasks"]["after"]["output"] == {"got": ["one", "two"]}
    # `quick` succeeded before the signal: it never runs again.
    assert journal_kinds(db, "sig").count(("quick", "task_started")) == 1

    before = count_events(db)
    again = durable("resume", "sig", "--db", str(db), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already succeeded" in again.stdout
    assert count_events(db) == before


TOOLS = '''
from __future__ import annotations

import os

import durable


@durable.tool
def flaky(marker: str) -> dict:
    """Fails until the marker file exists."""
    if not os.path.exists(marker):
        raise RuntimeError(f"no marker at {marker}")
    return {"ok": True}
'''

RETRYING = """
name: retrying
imports: [tools]
params: {marker: none}
tasks:
  - {id: steady, tool: echo, input: {n: 1}}
  - id: flaky
    tool: flaky
    input: {marker: "${params.marker}"}
    retries: 2
    retry_delay: 0.05
  - {id: after, tool: echo, input: {flaky: "${flaky.output}", steady: "${steady.output}"}}
"""


def test_retries_back_off_then_resume_reruns_only_what_failed(
    durable, write, no_traceback, as_json, json_lines, tmp_path: Path
) -> None:
    write(tmp_path, "tools.py", TOOLS)
    workflow = write(tmp_path, "retrying.yaml", RETRYING)
    marker = tmp_path / "marker"
    db = str(tmp_path / "j.db")
    result = durable(
        "run", str(workflow), "--db", db, "--run-id", "r", "-p", f"marker={marker}", cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr
    no_traceback(result)

    events = json_lines(durable("log", "r", "--db", db, "--json", cwd=tmp_path).stdout)
    retrying = [e for e in events if e["kind"] == "task_retrying"]
    assert [e["task_id"] for e in retrying] == ["flaky", "flaky"]
    assert [e["delay"] for e in retrying] == pytest.approx([0.05, 0.1])
    assert all("no marker" in e["error"] for e in retrying)
    failed = [e for e in events if e["kind"] == "task_failed"]
    assert [(e["task_id"], e["attempt"]) for e in failed] == [("flaky", 3)]
    assert ("after", "task_upstream_failed") in [(e.get("task_id"), e["kind"]) for e in events]

    marker.touch()
    resumed = durable("resume", "r", "--db", db, "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    session = json_lines(resumed.stdout)
    started = [e["task_id"] for e in session if e["kind"] == "task_started"]
    assert sorted(started) == ["after", "flaky"]
    assert session[-1]["kind"] == "run_finished" and session[-1]["status"] == "succeeded"
    outputs = as_json(durable("output", "r", "--db", db, cwd=tmp_path))
    assert outputs["after"] == {"flaky": {"ok": True}, "steady": {"n": 1}}


def test_log_follow_streams_until_the_run_finishes(
    start, stop, write, json_lines, journal_kinds, wait_for_events, Lines, tmp_path: Path
) -> None:
    """`--follow` prints events as they happen, and returns once the run has finished.

    Task `b` waits for a file the test creates only after `--follow` has printed
    `b`'s start: the follower is then provably streaming a live run.
    """
    workflow = write(
        tmp_path,
        "chain.yaml",
        """
name: chain
tasks:
  - {id: a, tool: echo, input: {n: 1}}
  - id: b
    tool: shell
    dependencies: [a]
    input: {command: ["sh", "-c", "while [ ! -e release ]; do sleep 0.02; done"]}
  - {id: c, tool: echo, input: {b: "${b.output.returncode}"}}
""",
    )
    db = tmp_path / "j.db"
    run = start("run", str(workflow), "--db", str(db), "--run-id", "follow", cwd=tmp_path)
    follow: subprocess.Popen[str] | None = None
    try:
        wait_for_events(db, "follow", "run_started", 1, process=run)
        follow = start("log", "follow", "--db", str(db), "--follow", "--json", cwd=tmp_path)
        lines = Lines(follow.stdout)
        streamed = []
        while not streamed or streamed[-1][:2] != ("b", "task_started"):
            event = json.loads(lines.next())
            streamed.append((event.get("task_id"), event["kind"], event["seq"]))
        assert run.poll() is None
        (tmp_path / "release").touch()
        follow.wait(timeout=30)
        out = lines.rest()
        err = follow.stderr.read()
        run.communicate(timeout=30)
    finally:
        (tmp_path / "release").touch()
        stop(run)
        stop(follow)
    assert follow.returncode == 0, err
    assert run.returncode == 0
    events = [(e.get("task_id"), e["kind"], e["seq"]) for e in json_lines(out)]
    events = streamed + events
    assert events[0][1] == "run_started"
    assert events[-1][1] == "run_finished"
    assert ("c", "task_succeeded") in [event[:2] for event in events]
    assert_seqs_are_rows([{"task_id": t, "kind": k, "seq": seq} for t, k, seq in events])
    assert [event[:2] for event in events] == journal_kinds(db, "follow")


# -- the shipped examples ------------------------------------------------------


@pytest.fixture(scope="module")
def examples(durable, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both shipped examples (branching twice), run at once from a folder of their own."""
    folder = tmp_path_factory.mktemp("examples")
    runs = {
        "research": ("research", ()),
        "big": ("branching", ()),
        "small": ("branching", ("-p", "size=50")),
    }

    def run(name: str) -> subprocess.CompletedProcess[str]:
        example, params = runs[name]
        workflow = str(EXAMPLES / example / "workflow.yaml")
        db = str(folder / f"{name}.db")
        return durable("run", workflow, *params, "--db", db, "--run-id", name, "--json", cwd=folder)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(runs, pool.map(run, runs), strict=True))
    return {"folder": folder, "results": results}


def outputs_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The outputs a succeeded `run --json` printed, by task."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return {e["task_id"]: e["output"] for e in events if e["kind"] == "task_succeeded"}


def test_research_example_runs(durable, as_json, examples: dict[str, Any]) -> None:
    outputs = outputs_of(examples["results"]["research"])
    assert outputs["task_3"]["summary"].strip()
    assert outputs["task_3"]["sources"]
    assert outputs["task_3"]["note"] == "total is 42"
    assert outputs["task_2"]["value"] == 42
    assert isinstance(outputs["task_1"], list) and outputs["task_1"]
    # `output RUN TASK` reads back what the run printed.
    folder = examples["folder"]
    db = str(folder / "research.db")
    assert (
        as_json(durable("output", "research", "task_3", "--db", db, cwd=folder))
        == outputs["task_3"]
    )


@pytest.mark.parametrize(
    ("name", "taken", "skipped", "items"),
    [("big", "big", "small", 120), ("small", "small", "big", 50)],
    ids=["default", "size=50"],
)
def test_branching_example_takes_the_branch_of_its_size(
    json_lines, examples: dict[str, Any], name: str, taken: str, skipped: str, items: int
) -> None:
    result = examples["results"][name]
    outputs = outputs_of(result)
    events = json_lines(result.stdout)
    assert (skipped, "task_skipped") in [(e.get("task_id"), e["kind"]) for e in events]
    assert skipped not in outputs
    assert outputs["report"]["branch"] == taken
    assert outputs["report"]["items"] == items
    assert f"cleanup done for run {name}" in outputs["cleanup"]["stdout"]


def test_crawl_example_is_interrupted_and_resumed_as_the_quickstart_says(
    tmp_path, start, stop, durable, as_json, wait_for_events, journal_rows
) -> None:
    """The quickstart's Ctrl-C step, followed as written: interrupt the crawl example
    halfway, resume it, and only the pages not yet fetched are fetched again."""
    workflow = Path(__file__).resolve().parents[2] / "examples" / "crawl" / "workflow.yaml"
    db = tmp_path / "j.db"
    process = start(
        "run", workflow, "--db", db, "--run-id", "crawl", "-p", "seconds=0.5", cwd=tmp_path
    )
    try:
        wait_for_events(db, "crawl", "task_succeeded", 4, process=process)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        stop(process)
    kept = {
        row[0]
        for row in journal_rows(
            db, "SELECT task_id FROM events WHERE kind IN ('task_succeeded', 'task_ran')"
        )
    }
    assert 4 <= len(kept) < 13
    durable("resume", "cra", "--db", db, cwd=tmp_path, check=0)
    assert as_json(durable("output", "crawl", "index", "--db", db, cwd=tmp_path)) == {
        "pages": list(range(1, 13))
    }
    starts = journal_rows(
        db,
        "SELECT task_id, count(*) FROM events WHERE kind IN ('task_started', 'task_ran')"
        " GROUP BY task_id",
    )
    assert all(count == 1 for task_id, count in starts if task_id in kept)


def test_resume_of_a_run_that_succeeded_says_so_off_the_json_stream(
    durable, write, tmp_path: Path
) -> None:
    """With --json, stdout is the event stream: the sentence went there, and broke a
    program that parsed it. It is a note on stderr now; plain, it stays on stdout."""
    workflow = write(tmp_path, "one.yaml", "name: one\ntasks:\n  - {id: a, tool: echo}\n")
    db = tmp_path / "j.db"
    durable("run", workflow, "--db", db, "--run-id", "done", "-q", cwd=tmp_path, check=0)
    as_json = durable("resume", "done", "--db", db, "--json", cwd=tmp_path, check=0)
    assert as_json.stdout == ""
    assert as_json.stderr == "note: run done already succeeded; nothing to resume\n"
    plain = durable("resume", "done", "--db", db, cwd=tmp_path, check=0)
    assert plain.stdout == "run done already succeeded; nothing to resume\n"
