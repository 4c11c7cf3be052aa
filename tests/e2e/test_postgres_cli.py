"""The `durable` command on a PostgreSQL journal (`--db postgresql://...`), end to end.

Each test gets a database of its own. Locally a missing server skips them with the
reason; in CI (`CI` set) they fail (`tests/pg.py`).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pg
import pytest

DIAMOND = """
name: diamond
tasks:
  - {id: a, tool: echo, input: {n: 1}}
  - {id: b, tool: echo, input: "${a.output.n}"}
  - {id: c, tool: echo, foreach: [1, 2, 3], input: {i: "${item}"}}
  - {id: d, tool: echo, input: ["${b.output}", "${c.output}"]}
"""

# A tool that returns once the file `go` exists beside it.
GATED = """
import time
from pathlib import Path

import durable


@durable.tool
def gated(result: int) -> int:
    while not (Path(__file__).parent / "go").exists():
        time.sleep(0.01)
    return result
"""


def test_run_and_every_reading_command(tmp_path: Path, dsn: str, durable: Any, write: Any) -> None:
    workflow = write(tmp_path, "wf.yaml", DIAMOND)
    durable("run", workflow, "--db", dsn, "--run-id", "d1", cwd=tmp_path, check=0)
    listed = json.loads(durable("runs", "--db", dsn, "--json", cwd=tmp_path, check=0).stdout)
    assert [(r["run_id"], r["status"]) for r in listed] == [("d1", "succeeded")]
    status = json.loads(
        durable("status", "d1", "--db", dsn, "--json", cwd=tmp_path, check=0).stdout
    )
    assert {t: s["state"] for t, s in status["tasks"].items()} == dict.fromkeys(
        ["a", "b", "c", "d", "c[0]", "c[1]", "c[2]"], "succeeded"
    )
    output = durable("output", "d1", "d", "--db", dsn, cwd=tmp_path, check=0).stdout
    assert json.loads(output) == [1, [{"i": 1}, {"i": 2}, {"i": 3}]]
    kinds = [
        json.loads(line)["kind"]
        for line in durable(
            "log", "d1", "--db", dsn, "--json", cwd=tmp_path, check=0
        ).stdout.splitlines()
    ]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert "ok (" in durable("check", "--db", dsn, cwd=tmp_path, check=0).stdout
    # the journal is nowhere on disk
    assert not (tmp_path / ".durable").exists()


@pytest.mark.parametrize("kill_after", [1, 6, 17])
def test_a_killed_run_reads_interrupted_and_resumes_once(
    tmp_path: Path, dsn: str, durable: Any, start: Any, stop: Any, write: Any, kill_after: int
) -> None:
    # The first `kill_after` tasks end; the rest wait for a file the test writes only
    # after the kill, so the driver is alive, with its slots full, however slow the
    # machine (with sleeps alone, a loaded one saw the run end before the kill).
    write(tmp_path, "tools.py", GATED)
    tasks = "\n".join(
        f"  - {{id: t{i}, tool: sleep, input: {{seconds: 0.05, result: {i}}}}}"
        if i < kill_after
        else f"  - {{id: t{i}, tool: gated, input: {{result: {i}}}}}"
        for i in range(60)
    )
    workflow = write(
        tmp_path,
        "slow.yaml",
        f"name: slow\nimports: [tools]\nmax_concurrency: 3\ntasks:\n{tasks}\n",
    )
    process = start("run", workflow, "--db", dsn, "--run-id", "k1", "--no-live", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            listed = json.loads(durable("runs", "--db", dsn, "--json", cwd=tmp_path).stdout or "[]")
            if listed and listed[0]["counts"].get("succeeded", 0) >= kill_after:
                break
            assert time.monotonic() < deadline, listed
            time.sleep(0.1)
        assert listed[0]["status"] == "running"  # the database knows a live driver
        refused = durable("resume", "k1", "--db", dsn, cwd=tmp_path)
        assert refused.returncode == 2 and "another live process" in refused.stderr
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        stop(process)
    status = json.loads(
        durable("status", "k1", "--db", dsn, "--json", cwd=tmp_path, check=0).stdout
    )
    assert status["status"] == "interrupted"
    committed = {t for t, s in status["tasks"].items() if s["state"] == "succeeded"}
    assert len(committed) == kill_after
    (tmp_path / "go").touch()
    durable("resume", "k1", "--db", dsn, "--no-live", cwd=tmp_path, check=0)
    after = json.loads(durable("status", "k1", "--db", dsn, "--json", cwd=tmp_path, check=0).stdout)
    assert after["status"] == "succeeded"
    assert all(after["tasks"][t]["attempts"] == 1 for t in committed)
    durable("check", "k1", "--db", dsn, cwd=tmp_path, check=0)


def test_bad_targets_say_so_in_one_line(
    tmp_path: Path, dsn: str, durable: Any, write: Any, no_traceback: Any
) -> None:
    workflow = write(tmp_path, "wf.yaml", DIAMOND)
    unreachable = "postgresql://postgres@127.0.0.1:1/nowhere"
    result = durable("run", workflow, "--db", unreachable, cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {unreachable}: cannot connect")
    # a schema 'durable' of another program
    pg.execute(dsn, "CREATE SCHEMA durable", "CREATE TABLE durable.jobs (id int)")
    result = durable("run", workflow, "--db", dsn, cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 2 and "belongs to another program" in result.stderr
    assert pg.fetch(dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'durable'") == [(1,)]


def test_cancel_stops_the_driver_through_the_database(
    tmp_path: Path, dsn: str, durable: Any, start: Any, stop: Any, write: Any
) -> None:
    workflow = write(
        tmp_path,
        "long.yaml",
        "name: long\ntasks:\n  - {id: s, tool: sleep, input: {seconds: 60}}\n"
        "  - {id: t, tool: echo, input: 1}\n",
    )
    process = start("run", workflow, "--db", dsn, "--run-id", "c1", "--no-live", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            listed = json.loads(durable("runs", "--db", dsn, "--json", cwd=tmp_path).stdout or "[]")
            if listed and listed[0]["status"] == "running" and listed[0]["counts"].get("succeeded"):
                break
            assert time.monotonic() < deadline, listed
            time.sleep(0.1)
        cancelled = durable("cancel", "c1", "--db", dsn, cwd=tmp_path, check=0)
        assert cancelled.stdout.startswith("run c1 cancelled")
        assert process.wait(timeout=10) == 1
    finally:
        stop(process)
    status = json.loads(
        durable("status", "c1", "--db", dsn, "--json", cwd=tmp_path, check=0).stdout
    )
    assert status["status"] == "cancelled" and status["tasks"]["s"]["state"] == "cancelled"
    again = durable("cancel", "c1", "--db", dsn, cwd=tmp_path)
    assert again.returncode == 2 and "is not running" in again.stderr
