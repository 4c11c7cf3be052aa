"""`durable run ... | head`: the reader of the run's output quits while the run goes on.

The run stops as on Ctrl-C: journaled as interrupted, resumable, exit 130, a note on
stderr and no traceback; a resume finishes it without running a committed task again.
(Before, the broken pipe crashed the engine, printed a traceback of a KeyError.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import read_first_line_and_quit

TASKS = 30

# A chain of short sleeps: events keep coming for about 3 s, so the closed pipe is
# found by a flush (at least once a second) long before the run could end.
CHAIN = "name: chain\ntasks:\n" + "".join(
    f"  - {{id: t{i}, tool: sleep, input: {{seconds: 0.1, result: {i}}}"
    + (f", dependencies: [t{i - 1}]" if i else "")
    + "}\n"
    for i in range(TASKS)
)


@pytest.mark.parametrize("output", ["--no-live", "--json"])
def test_a_closed_output_stops_the_run_resumably(
    output: str,
    durable: Any,
    start: Any,
    stop: Any,
    write: Any,
    as_json: Any,
    no_traceback: Any,
    tmp_path: Path,
) -> None:
    workflow = write(tmp_path, "chain.yaml", CHAIN)
    db = tmp_path / "j.db"
    process = start("run", workflow, "--db", db, "--run-id", "p1", output, cwd=tmp_path)
    try:
        first, code, stderr = read_first_line_and_quit(process)
    finally:
        stop(process)
    assert code == 130, stderr
    if output == "--json":
        assert json.loads(first)["kind"] == "run_started"
    else:
        assert first.startswith("run p1 started"), first
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr
    assert stderr.splitlines() == [
        "note: the output was closed (Broken pipe): the run stopped",
        "error: run 'p1' interrupted",
        "  resume it with `durable resume p1`",
    ], stderr

    status = as_json(durable("status", "p1", "--db", db, "--json", cwd=tmp_path, check=0))
    assert status["status"] == "interrupted"
    done = {t for t, s in status["tasks"].items() if s["state"] == "succeeded"}
    assert len(done) < TASKS  # it stopped early, not at the end of the run

    resumed = durable("resume", "p1", "--db", db, "-q", cwd=tmp_path, check=0)
    no_traceback(resumed)
    assert resumed.returncode == 0, resumed.stderr
    after = as_json(durable("status", "p1", "--db", db, "--json", cwd=tmp_path, check=0))
    assert after["status"] == "succeeded"
    assert all(after["tasks"][t]["attempts"] == 1 for t in done)
    assert [after["tasks"][f"t{i}"]["output"] for i in range(TASKS)] == list(range(TASKS))
    durable("check", "p1", "--db", db, cwd=tmp_path)


def test_output_closed_before_the_run_starts(
    durable: Any, start: Any, stop: Any, write: Any, as_json: Any, tmp_path: Path
) -> None:
    """Nobody reads at all (`| true` has exited): the run is created and stops at once."""
    workflow = write(tmp_path, "chain.yaml", CHAIN)
    db = tmp_path / "j.db"
    read, unread = os.pipe()
    os.close(read)  # writing to `unread` now fails with EPIPE
    try:
        process = start(
            "run", workflow, "--db", db, "--run-id", "p2", "--no-live",
            cwd=tmp_path, stdout=unread,
        )  # fmt: skip
    finally:
        os.close(unread)
    try:
        assert process.wait(timeout=60) == 130
        stderr = process.stderr.read()
    finally:
        stop(process)
    assert "Traceback" not in stderr, stderr
    assert stderr.startswith("note: the output was closed (Broken pipe)"), stderr
    status = as_json(durable("status", "p2", "--db", db, "--json", cwd=tmp_path, check=0))
    assert status["status"] == "interrupted"
    assert {s["state"] for s in status["tasks"].values()} == {"pending"}  # none started


@pytest.mark.parametrize(
    "args",
    [
        ("runs",),
        ("runs", "--json"),
        ("status", "p3"),
        ("log", "p3"),
        ("output", "p3"),
        ("export", "p3", "-o", "-"),
        ("check",),
    ],
    ids=lambda args: "-".join(args),
)
def test_a_full_output_is_one_error_line(
    args: tuple[str, ...], durable: Any, start: Any, stop: Any, write: Any, tmp_path: Path
) -> None:
    """`> /dev/full`: each write fails with ENOSPC. It was a traceback, exit 1."""
    workflow = write(tmp_path, "chain.yaml", "name: one\ntasks:\n  - {id: a, tool: echo}\n")
    db = tmp_path / "j.db"
    durable("run", workflow, "--db", db, "--run-id", "p3", "-q", cwd=tmp_path, check=0)
    with open("/dev/full", "w") as full:
        process = start(*args, "--db", db, cwd=tmp_path, stdout=full.fileno())
    try:
        assert process.wait(timeout=60) == 1
        stderr = process.stderr.read()
    finally:
        stop(process)
    assert stderr == "error: cannot write the output: No space left on device\n", stderr


def test_a_closed_stdout_is_refused_before_anything(
    durable: Any, write: Any, journal_exists: Any, tmp_path: Path
) -> None:
    """`>&-`: there is no standard output at all. It was an AttributeError's traceback."""
    import subprocess

    from conftest import DURABLE, environment

    workflow = write(tmp_path, "one.yaml", "name: one\ntasks:\n  - {id: a, tool: echo}\n")
    db = tmp_path / "j.db"
    done = subprocess.run(
        [*DURABLE, "run", str(workflow), "--db", str(db)],
        cwd=tmp_path, env=environment(None), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, timeout=60, close_fds=True, pass_fds=(),
        preexec_fn=lambda: os.close(1),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "error: standard output is closed (send it to /dev/null instead)\n"
    assert not journal_exists(db)
