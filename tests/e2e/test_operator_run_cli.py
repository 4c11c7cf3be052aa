"""`durable rerun`, `durable cancel` and `durable run --dry-run`, through the real command.

Each test works in its own folder with its own journal file. The workflows' Python
tools live in a `tools.py` beside them (`imports: [tools]`) and append the id of
every task they are called for to `calls.log`, so that what actually ran is read
from that log, not from what durable says it ran. `step` returns its `n` plus the
number in the file `bump` (0 when absent) plus the sum of `up`: writing `bump`
before a rerun changes the outputs of exactly the tasks that run again. `nap`
sleeps `NAP_SECONDS` (an environment variable, 60 unless set), so a run can be
held mid-task and resumed quickly.

- rerun: exactly the named tasks run again (with `--downstream`, and what depends
  on them), the rest are kept with their outputs, the request is journaled as a
  `run_amended` event and the journal stays sound (`durable check`); an instance of
  a `foreach` task reruns alone; a rerun is refused (exit 2) while another process
  drives the run, and for a task the run does not have, leaving the journal as it was.
- cancel: the driver stops within a second or so, journals the run `cancelled` and
  exits 1; `resume` finishes it without calling again what had succeeded. A run no
  process drives is refused. A cancel request the driver never took (it died first)
  must not cancel a later, unrelated resume.
- run --dry-run: what would run, from the plan alone; with `--cache`, what the cache
  would answer; the journal is neither created nor touched.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

TOOLS = """
from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import durable

HERE = Path(__file__).parent
_lock = threading.Lock()


def _called() -> None:
    task_id = durable.current_context().task_id
    with _lock, (HERE / "calls.log").open("a") as log:
        log.write(task_id + "\\n")


def _bump() -> int:
    path = HERE / "bump"
    return int(path.read_text()) if path.exists() else 0


@durable.tool
def step(n: int, up: list | None = None) -> int:
    _called()
    return n + _bump() + sum(up or [])


@durable.tool
async def nap(n: int) -> int:
    _called()
    await asyncio.sleep(float(os.environ.get("NAP_SECONDS", "60")))
    return n
"""

# a -> b -> c, b -> e <- d, and a foreach task feeding `total`.
CHAIN = """\
name: chain
imports: [tools]
tasks:
  - {id: a, tool: step, input: {n: 1}}
  - {id: b, tool: step, input: {n: 10, up: ["${a.output}"]}}
  - {id: c, tool: step, input: {n: 100, up: ["${b.output}"]}}
  - {id: d, tool: step, input: {n: 1000}}
  - {id: e, tool: step, input: {n: 10000, up: ["${b.output}", "${d.output}"]}}
  - {id: fetch, tool: step, foreach: [1, 2, 3], input: {n: "${item}"}}
  - {id: total, tool: step, input: {n: 0, up: "${fetch.output}"}}
"""

CHAIN_OUTPUTS = {
    "a": 1,
    "b": 11,
    "c": 111,
    "d": 1000,
    "e": 11011,
    "fetch": [1, 2, 3],
    "fetch[0]": 1,
    "fetch[1]": 2,
    "fetch[2]": 3,
    "total": 6,
}

# One long task, three quick ones that finish before it, one after it.
SLOW = """\
name: slow
imports: [tools]
tasks:
  - {id: q1, tool: step, input: {n: 1}}
  - {id: q2, tool: step, input: {n: 2}}
  - {id: q3, tool: step, input: {n: 3, up: ["${q1.output}"]}}
  - {id: slow, tool: nap, input: {n: 7}}
  - {id: after, tool: step, input: {n: 0, up: ["${slow.output}", "${q3.output}"]}}
"""

BUSY = """\
name: busy
tasks:
  - {id: first, tool: echo, input: 1}
  - {id: nap, tool: sleep, input: {seconds: 60, result: 1}}
"""

# No foreach and no `when`: the cache can answer every task in advance.
DRY = """\
name: dry
imports: [tools]
tasks:
  - {id: a, tool: step, input: {n: 1}}
  - {id: d, tool: step, input: {n: 1000}}
  - {id: b, tool: step, input: {n: 10, up: ["${a.output}"]}}
  - {id: c, tool: step, input: {n: 100, up: ["${b.output}"]}}
  - {id: e, tool: step, input: {n: 10000, up: ["${b.output}", "${d.output}"]}}
"""

CYCLE = """\
name: loop
tasks:
  - {id: a, tool: echo, dependencies: [b], input: 1}
  - {id: b, tool: echo, dependencies: [a], input: 2}
"""


# -- helpers ------------------------------------------------------------------------


def setup(write, folder: Path, workflow: str, name: str = "wf.yaml") -> Path:  # type: ignore[no-untyped-def]
    write(folder, "tools.py", TOOLS)
    return write(folder, name, workflow)


def calls(folder: Path) -> list[str]:
    log = folder / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def forget_calls(folder: Path) -> None:
    (folder / "calls.log").unlink(missing_ok=True)


def status(durable, as_json, folder: Path, db: Path, run_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return as_json(durable("status", run_id, "--db", db, "--json", cwd=folder))


def outputs(document: dict[str, Any]) -> dict[str, Any]:
    return {task_id: task["output"] for task_id, task in document["tasks"].items()}


def states(document: dict[str, Any]) -> dict[str, str]:
    return {task_id: task["state"] for task_id, task in document["tasks"].items()}


def events(durable, folder: Path, db: Path, run_id: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    result = durable("log", run_id, "--db", db, "--json", cwd=folder, check=0)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def error_lines(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def chain(durable, write, tmp_path: Path) -> tuple[Path, Path]:
    """CHAIN run to success as run `r1`, the call log emptied: (folder, db)."""
    workflow = setup(write, tmp_path, CHAIN)
    db = tmp_path / "j.db"
    durable("run", workflow, "--db", db, "--run-id", "r1", "-q", cwd=tmp_path, check=0)
    assert sorted(calls(tmp_path)) == sorted(t for t in CHAIN_OUTPUTS if t != "fetch")
    forget_calls(tmp_path)
    return tmp_path, db


# -- rerun ----------------------------------------------------------------------------


def test_rerun_dry_run_prints_the_plan_and_changes_nothing(
    durable, as_json, no_traceback, journal_rows, chain
):
    folder, db = chain
    before = journal_rows(db, "SELECT count(*) FROM events")
    result = durable("rerun", "r1", "b", "--downstream", "--dry-run", "--db", db, cwd=folder)
    no_traceback(result)
    assert result.stdout.splitlines()[:2] == [
        "plan for run r1: 7 kept, 3 to run, 0 removed",
        "  run b: asked to run again",
    ], result.stdout
    assert calls(folder) == []
    assert journal_rows(db, "SELECT count(*) FROM events") == before
    assert status(durable, as_json, folder, db, "r1").get("amended", 0) == 0


def test_rerun_runs_the_named_task_and_with_downstream_its_descendants(
    durable, as_json, no_traceback, chain
):
    folder, db = chain
    (folder / "bump").write_text("5")

    result = durable("rerun", "r1", "b", "--db", db, cwd=folder, check=0)
    no_traceback(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "plan for run r1: 9 kept, 1 to run, 0 removed", result.stdout
    assert lines[1] == "  run b: asked to run again", result.stdout
    assert calls(folder) == ["b"]
    after = status(durable, as_json, folder, db, "r1")
    assert after["status"] == "succeeded"
    # b ran again with the bump; what reads it was kept as it was.
    assert outputs(after) == {**CHAIN_OUTPUTS, "b": 16}
    assert after["tasks"]["b"]["attempts"] == 2
    assert after["tasks"]["c"]["attempts"] == 1

    forget_calls(folder)
    result = durable("rerun", "r1", "b", "--downstream", "--db", db, cwd=folder, check=0)
    no_traceback(result)
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        "plan for run r1: 7 kept, 3 to run, 0 removed",
        "  run b: asked to run again",
        "  run c: upstream 'b' runs again",
        "  run e: upstream 'b' runs again",
    ], result.stdout
    assert sorted(calls(folder)) == ["b", "c", "e"]
    after = status(durable, as_json, folder, db, "r1")
    assert after["status"] == "succeeded"
    assert outputs(after) == {**CHAIN_OUTPUTS, "b": 16, "c": 121, "e": 11021}

    durable("check", "--db", db, cwd=folder, check=0)
    amended = [e for e in events(durable, folder, db, "r1") if e["kind"] == "run_amended"]
    assert [e["reset"] for e in amended] == [["b"], ["b", "c", "e"]]


def test_rerun_is_refused_while_another_process_drives_the_run(
    durable, start, stop, write, no_traceback, count_events, wait_for_events, tmp_path
):
    workflow = write(tmp_path, "wf.yaml", BUSY)
    db = tmp_path / "j.db"
    driver = start("run", workflow, "--db", db, "--run-id", "busy", "-q", cwd=tmp_path)
    try:
        wait_for_events(db, "busy", "task_succeeded", task_id="first", process=driver)
        wait_for_events(db, "busy", "task_started", task_id="nap", process=driver)

        result = durable("rerun", "busy", "first", "--db", db, cwd=tmp_path, timeout=20)
        no_traceback(result)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert lines[0].startswith("error: ") and "'busy'" in lines[0], result.stderr
        assert len(error_lines(result)) == 1, result.stderr
        assert count_events(db, "busy", "run_amended") == 0
        assert driver.poll() is None, "the refused rerun stopped the driver"
    finally:
        stop(driver)


def test_rerun_of_a_task_the_run_does_not_have_changes_nothing(
    durable, no_traceback, journal_digest, chain
):
    folder, db = chain
    before = journal_digest(db)
    for tasks in (["zz"], ["a", "zz"], ["fetch[7]"]):
        result = durable("rerun", "r1", *tasks, "--db", db, cwd=folder)
        no_traceback(result)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stdout == ""
        unknown = tasks[-1]
        assert result.stderr.splitlines()[0] == (
            f"error: run 'r1': the run has no task '{unknown}'"
        ), result.stderr
        assert journal_digest(db) == before, f"a refused rerun of {tasks} wrote to the journal"
        assert calls(folder) == []


def test_rerun_of_one_foreach_instance(durable, as_json, no_traceback, chain):
    folder, db = chain
    (folder / "bump").write_text("40")

    result = durable("rerun", "r1", "fetch[1]", "--db", db, cwd=folder, check=0)
    no_traceback(result)
    assert "  run fetch[1]: asked to run again" in result.stdout.splitlines(), result.stdout
    assert calls(folder) == ["fetch[1]"]
    after = status(durable, as_json, folder, db, "r1")
    assert after["status"] == "succeeded"
    assert after["tasks"]["fetch"]["state"] == "succeeded"
    assert outputs(after) == {**CHAIN_OUTPUTS, "fetch[1]": 42, "fetch": [1, 42, 3]}

    # With --downstream, what reads the foreach task's list runs again too.
    forget_calls(folder)
    durable("rerun", "r1", "fetch[1]", "--downstream", "--db", db, cwd=folder, check=0)
    assert sorted(calls(folder)) == ["fetch[1]", "total"]
    after = status(durable, as_json, folder, db, "r1")
    assert outputs(after) == {
        **CHAIN_OUTPUTS,
        "fetch[1]": 42,
        "fetch": [1, 42, 3],
        "total": 0 + 40 + 1 + 42 + 3,
    }
    durable("check", "--db", db, cwd=folder, check=0)


# -- cancel ---------------------------------------------------------------------------


def test_cancel_stops_the_driver_and_resume_finishes_the_run(
    durable, start, stop, write, as_json, no_traceback, wait_for_events, tmp_path
):
    workflow = setup(write, tmp_path, SLOW)
    db = tmp_path / "j.db"
    driver = start(
        "run", workflow, "--db", db, "--run-id", "c1", "-q", cwd=tmp_path,
        env={"NAP_SECONDS": "60"},
    )  # fmt: skip
    try:
        wait_for_events(db, "c1", "task_started", task_id="slow", process=driver)
        wait_for_events(db, "c1", "task_succeeded", 3, process=driver)  # q1, q2, q3

        began = time.monotonic()
        result = durable("cancel", "c1", "--db", db, cwd=tmp_path, timeout=20)
        took = time.monotonic() - began
        no_traceback(result)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("run c1 cancelled; "), result.stdout
        assert took < 3, f"cancel took {took:.1f}s"
        assert driver.wait(timeout=10) == 1
    finally:
        stop(driver)

    cancelled = status(durable, as_json, tmp_path, db, "c1")
    assert cancelled["status"] == "cancelled"
    assert states(cancelled) == {
        "q1": "succeeded",
        "q2": "succeeded",
        "q3": "succeeded",
        "slow": "cancelled",
        "after": "pending",
    }

    result = durable(
        "resume", "c1", "--db", db, "-q", cwd=tmp_path, env={"NAP_SECONDS": "0.05"}, check=0
    )
    no_traceback(result)
    finished = status(durable, as_json, tmp_path, db, "c1")
    assert finished["status"] == "succeeded"
    assert outputs(finished) == {"q1": 1, "q2": 2, "q3": 4, "slow": 7, "after": 11}
    assert collections.Counter(calls(tmp_path)) == {
        "q1": 1,
        "q2": 1,
        "q3": 1,
        "slow": 2,
        "after": 1,
    }


def test_cancel_of_a_run_no_process_drives_is_refused(
    durable, write, journal_rows, journal_digest, no_traceback, tmp_path
):
    workflow = write(tmp_path, "wf.yaml", BUSY.replace("seconds: 60", "seconds: 0"))
    db = tmp_path / "j.db"
    durable("run", workflow, "--db", db, "--run-id", "idle", "-q", cwd=tmp_path, check=0)
    before = journal_digest(db)

    result = durable("cancel", "idle", "--db", db, cwd=tmp_path, timeout=20)
    no_traceback(result)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("error: run 'idle' is not running: "), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert journal_digest(db) == before
    assert journal_rows(db, "SELECT count(*) FROM requests") == [(0,)]

    result = durable("cancel", "nosuchrun", "--db", db, cwd=tmp_path, timeout=20)
    no_traceback(result)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: "), result.stderr


def test_a_cancel_its_driver_never_took_does_not_cancel_a_later_resume(
    durable, start, stop, write, as_json, journal_rows, wait_for_events, tmp_path
):
    """The driver dies (here: frozen, then killed) after `durable cancel` asked it to
    stop but before it looked for requests. The request was for that process: a resume
    started later, by someone who wants the run finished, must not be cancelled by it."""
    workflow = setup(write, tmp_path, SLOW)
    db = tmp_path / "j.db"
    driver = start(
        "run", workflow, "--db", db, "--run-id", "c2", "-q", cwd=tmp_path,
        env={"NAP_SECONDS": "60"},
    )  # fmt: skip
    canceller = None
    try:
        wait_for_events(db, "c2", "task_started", task_id="slow", process=driver)
        # Frozen only once it has nothing left to write until `slow` ends: a process
        # frozen inside a commit holds SQLite's write lock, and the cancel would fail
        # on a locked journal instead (CI saw that once).
        wait_for_events(db, "c2", "task_succeeded", task_id="q3", process=driver)
        os.kill(driver.pid, signal.SIGSTOP)
        canceller = start("cancel", "c2", "--db", db, cwd=tmp_path)
        deadline = time.monotonic() + 10
        while journal_rows(db, "SELECT count(*) FROM requests") == [(0,)]:
            assert time.monotonic() < deadline, "durable cancel left no request"
            assert canceller.poll() is None, canceller.stderr.read() if canceller.stderr else ""
            time.sleep(0.01)
        stop(driver)  # SIGKILL: it never takes the request
        canceller.wait(timeout=15)
        said = f"`durable cancel` exited {canceller.returncode}: {canceller.stdout.read()}"
    finally:
        stop(driver)
        stop(canceller)

    # Longer than the driver's half-second look at the requests table.
    result = durable(
        "resume", "c2", "--db", db, "-q", cwd=tmp_path, env={"NAP_SECONDS": "1.5"}, timeout=30
    )
    finished = status(durable, as_json, tmp_path, db, "c2")
    assert (result.returncode, finished["status"]) == (0, "succeeded"), (
        f"a resume nobody asked to cancel ended {finished['status']} (exit "
        f"{result.returncode}): {states(finished)}\n{result.stderr}\n(before: {said})"
    )


# -- run --dry-run ------------------------------------------------------------------------


def cached_section(stdout: str) -> dict[str, str]:
    """The lines under `from cache, not run:`: task id -> what answers it."""
    lines = stdout.splitlines()
    start = lines.index("from cache, not run:") + 1
    found = {}
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        task_id, _, what = line.strip().partition(": ")
        found[task_id] = what
    return found


def test_run_dry_run_says_what_would_run_and_writes_nothing(
    durable, write, no_traceback, journal_digest, journal_exists, tmp_path
):
    workflow = setup(write, tmp_path, DRY)
    db = tmp_path / "j.db"

    result = durable("run", workflow, "--dry-run", "--db", db, cwd=tmp_path, check=0)
    no_traceback(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "dry: 5 tasks in 3 levels, at most 16 at once", result.stdout
    assert lines[1] == "to run: 5 tasks", result.stdout
    assert re.fullmatch(r"level 0: a, d\s+2 tasks", lines[2]), result.stdout
    assert re.fullmatch(r"level 1: b\s+1 task", lines[3]), result.stdout
    assert re.fullmatch(r"level 2: c, e\s+2 tasks", lines[4]), result.stdout
    assert "critical path: a -> b -> c (3 tasks)" in lines, result.stdout
    assert lines[-1] == "nothing runs: this was a dry run", result.stdout
    assert "from cache, not run:" not in lines
    # Nothing ran and no journal was created (nor a default one, without --db).
    durable("run", workflow, "--dry-run", "--cache", cwd=tmp_path, check=0)
    assert calls(tmp_path) == []
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("j.db")]
    assert not (tmp_path / ".durable").exists()

    # --json: one document, with the levels; -j is the concurrency it would have.
    result = durable("run", workflow, "--dry-run", "--json", "-j", "1", "--db", db, cwd=tmp_path)
    no_traceback(result)
    document = json.loads(result.stdout)
    assert [level["tasks"] for level in document["levels"]] == [["a", "d"], ["b"], ["c", "e"]]
    assert [level["at_once"] for level in document["levels"]] == [1, 1, 1]
    assert document["levels"][0]["bound_by"] == ["max_concurrency"]
    assert document["concurrency"] == 1
    assert document["critical_path"] == ["a", "b", "c"]
    assert document["cached"] == {}
    assert not journal_exists(db)

    # After a run with --cache, the dry run says the cache answers every task.
    result = durable("run", workflow, "--cache", "--db", db, "--run-id", "warm", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(calls(tmp_path)) == ["a", "b", "c", "d", "e"]
    forget_calls(tmp_path)
    before = journal_digest(db)
    result = durable("run", workflow, "--dry-run", "--cache", "--db", db, cwd=tmp_path, check=0)
    no_traceback(result)
    answered = cached_section(result.stdout)
    assert sorted(answered) == ["a", "b", "c", "d", "e"], result.stdout
    assert all("warm" in what for what in answered.values()), result.stdout
    assert result.stdout.splitlines()[-1] == "nothing runs: this was a dry run"
    assert "critical path: none (nothing to run)" in result.stdout.splitlines()
    result = durable(
        "run", workflow, "--dry-run", "--cache", "--json", "--db", db, cwd=tmp_path, check=0
    )
    assert sorted(json.loads(result.stdout)["cached"]) == ["a", "b", "c", "d", "e"]
    assert journal_digest(db) == before, "a dry run wrote to the journal"
    assert calls(tmp_path) == []


def test_run_dry_run_refuses_what_the_run_would(
    durable, write, no_traceback, journal_digest, journal_exists, tmp_path
):
    """A dry run said what a run would do where the run itself was refused: a bad
    run id, one the journal already holds, a journal that is not durable's."""
    workflow = setup(write, tmp_path, DRY)
    db = tmp_path / "j.db"
    result = durable("run", workflow, "--dry-run", "--run-id", "bad id", "--db", db, cwd=tmp_path)
    assert result.returncode == 2 and error_lines(result)[0].startswith("error: bad run id")
    assert not journal_exists(db)

    durable("run", workflow, "--db", db, "--run-id", "taken", "-q", cwd=tmp_path, check=0)
    before = journal_digest(db)
    result = durable("run", workflow, "--dry-run", "--run-id", "taken", "--db", db, cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 2 and result.stdout == ""
    assert error_lines(result)[0] == "error: run 'taken' already exists", result.stderr
    assert journal_digest(db) == before
    durable("run", workflow, "--dry-run", "--run-id", "free", "--db", db, cwd=tmp_path, check=0)


def test_run_dry_run_of_a_cyclic_workflow_is_refused(
    durable, write, no_traceback, journal_exists, tmp_path
):
    workflow = write(tmp_path, "loop.yaml", CYCLE)
    db = tmp_path / "j.db"
    for extra in ([], ["--json"], ["--cache"]):
        result = durable("run", workflow, "--dry-run", *extra, "--db", db, cwd=tmp_path)
        no_traceback(result)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stdout == ""
        errors = error_lines(result)
        assert len(errors) == 1 and result.stderr.startswith(errors[0]), result.stderr
        assert "loop.yaml" in errors[0], result.stderr
        assert re.search(r"cycle: (a -> b -> a|b -> a -> b)", result.stderr), result.stderr
        assert not journal_exists(db)
