"""The crash campaign: kills aimed where the trust issue found runs stranded.

`test_crash_resume.py` proves the at-least-once contract for kills at seeded moments
of an ordinary run. These aim at the narrow windows around it:

- a WAL checkpoint: the journal's file is half rewritten from its `-wal` when the
  process dies (reproduced exactly, by copying part of a WAL into the file, and by
  seeded kills of runs long enough to checkpoint, and at close);
- the creation of a run: its row and its first event must be one commit;
- a resume.

After each: `durable check` finds the journal whole, readers answer, and a resume
finishes the run.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TASKS = 3000  # about 6,000 events: the journal checkpoints every 2,000


def echo_workflow(folder: Path, count: int, name: str = "wf.json") -> Path:
    """`count` independent echo tasks, as JSON (fast to load even at 50k tasks)."""
    document = {
        "name": "campaign",
        "max_concurrency": 64,
        "tasks": [{"id": f"t{i}", "tool": "echo", "input": {"i": i}} for i in range(count)],
    }
    path = folder / name
    path.write_text(json.dumps(document))
    return path


def assert_whole_and_resumable(
    durable: Callable[..., subprocess.CompletedProcess[str]], db: Path, run_id: str, cwd: Path
) -> None:
    """The journal checks whole, and a resume brings the run to `succeeded`."""
    durable("check", "--db", db, cwd=cwd, check=0)
    durable("runs", "--db", db, cwd=cwd, check=0)
    resumed = durable("resume", run_id, "--db", db, cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr
    status = json.loads(durable("status", run_id, "--db", db, "--json", cwd=cwd, check=0).stdout)
    assert status["status"] == "succeeded"
    assert {task["state"] for task in status["tasks"].values()} == {"succeeded"}
    durable("check", run_id, "--db", db, cwd=cwd, check=0)


# -- a checkpoint cut short, reproduced exactly -------------------------------------


def wal_pages(wal: bytes) -> tuple[int, dict[int, bytes]]:
    """The page size and the newest committed image of each page in a WAL file."""
    page_size = int.from_bytes(wal[8:12], "big")
    pages: dict[int, bytes] = {}
    pending: dict[int, bytes] = {}
    offset = 32
    while offset + 24 + page_size <= len(wal):
        number = int.from_bytes(wal[offset : offset + 4], "big")
        commit = int.from_bytes(wal[offset + 4 : offset + 8], "big")
        pending[number] = wal[offset + 24 : offset + 24 + page_size]
        if commit:  # a commit frame: its transaction's pages are all committed
            pages.update(pending)
            pending = {}
        offset += 24 + page_size
    return page_size, pages


@pytest.mark.sqlite_only("copies part of the SQLite WAL into the file")
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_a_checkpoint_cut_short_leaves_a_journal_durable_reads_and_resumes(
    tmp_path: Path,
    durable: Callable[..., Any],
    start: Any,
    stop: Any,
    wait_for_events: Any,
    fraction: float,
) -> None:
    """Copy only part of the WAL into the file, as a checkpoint killed midway does.
    SQLite recovers from that (the WAL still has every page); durable must too."""
    workflow = echo_workflow(tmp_path, 1500)
    db = tmp_path / "journal.db"
    process = start(
        "run", workflow, "--db", db, "--run-id", "cut", cwd=tmp_path, stdout=subprocess.DEVNULL
    )
    try:
        wait_for_events(db, "cut", "task_succeeded", 600, process=process, timeout=60)
        # Freeze the files as a SIGKILL would leave them, before the next checkpoint.
        process.kill()
        process.wait(timeout=30)
    finally:
        stop(process)
    wal = Path(f"{db}-wal").read_bytes()
    page_size, pages = wal_pages(wal)
    assert pages, "the kill left no WAL to checkpoint"
    numbers = sorted(pages)
    written = numbers[: max(1, int(len(numbers) * fraction))]
    with db.open("r+b") as handle:  # a checkpoint writes pages in page order
        for number in written:
            handle.seek((number - 1) * page_size)
            handle.write(pages[number])
    assert_whole_and_resumable(durable, db, "cut", tmp_path)


# -- seeded kills of runs long enough to checkpoint -------------------------------


@pytest.mark.sqlite_only("aimed at SQLite's WAL checkpoints")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kills_around_checkpoints(
    tmp_path: Path, durable: Any, start: Any, stop: Any, wait_for_events: Any, seed: int
) -> None:
    """Kill a 3,000-task run at a seeded moment near a checkpoint (every 2,000 events:
    the first falls at about 1,000 successes), then check and resume."""
    workflow = echo_workflow(tmp_path, TASKS)
    db = tmp_path / "journal.db"
    target = random.Random(seed).randint(950, 2100)
    process = start(
        "run", workflow, "--db", db, "--run-id", "ck", cwd=tmp_path, stdout=subprocess.DEVNULL
    )
    try:
        wait_for_events(db, "ck", "task_succeeded", target, process=process, timeout=60)
        process.kill()
        process.wait(timeout=30)
    finally:
        stop(process)
    assert_whole_and_resumable(durable, db, "ck", tmp_path)


@pytest.mark.sqlite_only("aimed at SQLite's last checkpoint, as the journal closes")
def test_kill_as_the_run_closes(
    tmp_path: Path, durable: Any, start: Any, stop: Any, wait_for_events: Any
) -> None:
    """The last checkpoint runs as the journal closes, after `run_finished`."""
    workflow = echo_workflow(tmp_path, TASKS)
    db = tmp_path / "journal.db"
    process = start(
        "run", workflow, "--db", db, "--run-id", "end", cwd=tmp_path, stdout=subprocess.DEVNULL
    )
    try:
        wait_for_events(db, "end", "run_finished", 1, timeout=60)
        process.kill()
        process.wait(timeout=30)
    finally:
        stop(process)
    durable("check", "--db", db, cwd=tmp_path, check=0)
    again = durable("resume", "end", "--db", db, cwd=tmp_path, check=0)
    assert "already succeeded" in again.stdout


# -- the creation of a run ---------------------------------------------------------


@pytest.mark.sqlite_only("watches sqlite_master for the run's table")
@pytest.mark.parametrize("attempt", range(3))
def test_kill_as_a_large_run_is_created(
    tmp_path: Path, durable: Any, start: Any, stop: Any, journal_rows: Any, attempt: int
) -> None:
    """A 20,000-task run killed the moment its row is visible: the row never stands
    without its first event, so the run always resumes."""
    workflow = echo_workflow(tmp_path, 20_000)
    db = tmp_path / "journal.db"
    process = start(
        "run", workflow, "--db", db, "--run-id", "born", cwd=tmp_path, stdout=subprocess.DEVNULL
    )
    try:
        while not journal_rows(db, "SELECT 1 FROM sqlite_master WHERE name = 'runs'") or not (
            journal_rows(db, "SELECT run_id FROM runs")
        ):
            assert process.poll() is None, "the run ended before it could be killed"
        process.kill()
        process.wait(timeout=30)
    finally:
        stop(process)
    kinds = journal_rows(db, "SELECT kind FROM events WHERE run_id = 'born' ORDER BY seq LIMIT 1")
    assert kinds == [("run_started",)]
    assert_whole_and_resumable(durable, db, "born", tmp_path)


# -- a resume ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [11, 12])
def test_kill_during_a_resume(
    tmp_path: Path, durable: Any, start: Any, stop: Any, wait_for_events: Any, seed: int
) -> None:
    rng = random.Random(seed)
    workflow = echo_workflow(tmp_path, TASKS)
    db = tmp_path / "journal.db"
    for command, target in (
        (["run", workflow, "--run-id", "rr"], rng.randint(100, 1000)),
        (["resume", "rr"], rng.randint(1200, 2500)),
    ):
        process = start(*command, "--db", db, cwd=tmp_path, stdout=subprocess.DEVNULL)
        try:
            wait_for_events(db, "rr", "task_succeeded", target, process=process, timeout=60)
            process.kill()
            process.wait(timeout=30)
        finally:
            stop(process)
        durable("check", "--db", db, cwd=tmp_path, check=0)
    assert_whole_and_resumable(durable, db, "rr", tmp_path)
