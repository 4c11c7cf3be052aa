"""Resume: replay a journal of 100k and 1M events, up to the first new dispatch.

The journal holds one failed run, made by the real engine: a wide workflow of
echo tasks that all succeed, plus a `gate` task (the built-in `shell` running
`test -e MARKER`) that fails because its marker file does not exist yet, and a few
tasks that depend on the gate (so they end `upstream_failed`). Each echo task
writes two events, so a workflow of about N/2 tasks makes a run of N events.

The journal is built once per session, in a subprocess (`durability="off"`, so
that the pytest process does not keep the build's memory), and then the marker
is created. Each round resumes a copy of it (a resume appends): the timed part runs
from calling `runner.aresume` to the moment the first `task_started` event of the
new session reaches `Hooks.on_event`: opening the journal, reading and folding
every event, planning the workflow, dispatching the gate. The rest of the run
(the gate and its dependents) then finishes outside the timed part, and is
checked: the resumed run must succeed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from durable import eventloop, runner
from durable.events import TaskStarted
from durable.runner import RunResult
from durable.state import SUCCEEDED

RUN_ID = "bench-resume"
AFTER_GATE = 8
# id -> (events in full mode, events in quick mode, rounds in full mode)
EVENTS = {"100k": (100_000, 10_000, 5), "1M": (1_000_000, 20_000, 3)}

# Run in a subprocess: build the journal with the public API. The run must fail (the gate).
_BUILD = """
import sys
from durable import runner
result = runner.run(sys.argv[1], db=sys.argv[2], run_id=sys.argv[3], durability="off")
print(result.status, result.stats.events)
sys.exit(0 if result.status == "failed" else 3)
"""


def resume_workflow(events: int, marker: Path) -> dict[str, Any]:
    """A workflow whose first run writes about `events` events and fails at the gate.

    Events: run_started, 2 per echo task, 2 for the gate (started, failed), one
    `task_upstream_failed` per task after the gate, run_finished.
    """
    echo_tasks = max(1, (events - AFTER_GATE - 4) // 2)
    tasks: list[dict[str, Any]] = [
        {"id": f"t{i}", "tool": "echo", "input": {"n": i}} for i in range(echo_tasks)
    ]
    tasks.append({"id": "gate", "tool": "shell", "input": {"command": ["test", "-e", str(marker)]}})
    tasks += [
        {"id": f"after{i}", "tool": "echo", "input": {"gate": "${gate.output.returncode}"}}
        for i in range(AFTER_GATE)
    ]
    return {"name": "bench-resume", "max_concurrency": 1024, "tasks": tasks}


class ResumeJournal:
    def __init__(self, path: Path, events: int, tasks: int, build_seconds: float) -> None:
        self.path = path
        self.events = events
        self.tasks = tasks
        self.build_seconds = build_seconds

    def files(self) -> list[Path]:
        return [p for p in (self.path, Path(f"{self.path}-wal")) if p.exists()]


@pytest.fixture(scope="session")
def resume_journals(tmp_path_factory: pytest.TempPathFactory):
    """`get(events)`: a journal with a failed run of that many events, built once per session."""
    folder = tmp_path_factory.mktemp("resume-journals")
    built: dict[int, ResumeJournal] = {}

    def get(events: int) -> ResumeJournal:
        if events in built:
            return built[events]
        marker = folder / f"gate-{events}.open"
        workflow = resume_workflow(events, marker)
        spec = folder / f"resume-{events}.json"
        spec.write_text(json.dumps(workflow))
        db = folder / f"resume-{events}.db"
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _BUILD, str(spec), str(db), RUN_ID],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"building the journal: {done.stdout}{done.stderr}"
        build_seconds = time.perf_counter() - started
        connection = sqlite3.connect(db)
        try:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            (count,) = connection.execute(
                "SELECT count(*) FROM events WHERE run_id = ?", (RUN_ID,)
            ).fetchone()
        finally:
            connection.close()
        assert abs(count - events) <= events // 100, (
            f"the journal holds {count} events, not about {events}"
        )
        marker.touch()  # from now on the gate passes: a resume can finish the run
        built[events] = ResumeJournal(db, count, len(workflow["tasks"]), build_seconds)
        return built[events]

    yield get
    shutil.rmtree(folder, ignore_errors=True)


async def _wait(task: asyncio.Future[RunResult]) -> RunResult:
    return await task


class Resumes:
    """Rounds of resume: copy the journal, resume to the first dispatch (timed), finish.

    One event loop (uvloop where installed, as `durable.eventloop` chooses) for all
    rounds: the timed call runs it until the first dispatch and stops it; the next
    round's setup (or `finish()` after the last) runs it again until the resumed
    run ends, so the end of a run is never timed and never skipped.
    """

    def __init__(self, journal: ResumeJournal, workdir: Path) -> None:
        self.journal = journal
        self.workdir = workdir
        self.loop = asyncio.Runner(loop_factory=eventloop.loop_factory())
        self.pending: asyncio.Task[RunResult] | None = None
        self.round_dir: Path | None = None
        self.first_dispatch: list[float] = []
        self.finish_seconds: list[float] = []
        self.results: list[RunResult] = []
        self._rounds = itertools.count()

    def setup(self) -> tuple[tuple[Path], dict[str, Any]]:
        self.finish()
        self.round_dir = self.workdir / f"round-{next(self._rounds)}"
        self.round_dir.mkdir()
        for source in self.journal.files():
            shutil.copyfile(
                source, self.round_dir / source.name.replace(self.journal.path.name, "journal.db")
            )
        return (self.round_dir / "journal.db",), {}

    def to_first_dispatch(self, db: Path) -> None:
        self.loop.run(self._start(db))

    async def _start(self, db: Path) -> None:
        loop = asyncio.get_running_loop()
        dispatched: asyncio.Future[float] = loop.create_future()

        def on_event(event: Any) -> None:
            if isinstance(event, TaskStarted) and not dispatched.done():
                dispatched.set_result(time.perf_counter())

        started = time.perf_counter()
        self.pending = loop.create_task(
            runner.aresume(RUN_ID, db=db, hooks=runner.Hooks(on_event=on_event))
        )
        await asyncio.wait([dispatched, self.pending], return_when=asyncio.FIRST_COMPLETED)
        if not dispatched.done():
            result = self.pending.result()  # raises what the resume raised
            raise AssertionError(f"the resume ended {result.status} without dispatching a task")
        self.first_dispatch.append(dispatched.result() - started)

    def finish(self) -> None:
        """Run the pending resume to its end, check it, and delete the round's copy."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            started = time.perf_counter()
            result = self.loop.run(_wait(pending))
            self.finish_seconds.append(time.perf_counter() - started)
            self.results.append(result)
            assert result.status == SUCCEEDED, f"the resumed run ended {result.status}"
            assert len(result.tasks) == self.journal.tasks
            assert all(task.state == SUCCEEDED for task in result.tasks.values())
        if self.round_dir is not None:
            shutil.rmtree(self.round_dir, ignore_errors=True)
            self.round_dir = None

    def close(self) -> None:
        try:
            self.finish()
        finally:
            self.loop.close()


@pytest.mark.parametrize("size", list(EVENTS))
def test_resume_to_first_dispatch(
    benchmark, kit, resume_journals, tmp_path: Path, size: str
) -> None:
    full, quick, rounds = EVENTS[size]
    journal = resume_journals(kit.size(full, quick))
    resumes = Resumes(journal, tmp_path)
    try:
        benchmark.pedantic(
            resumes.to_first_dispatch, setup=resumes.setup, rounds=kit.rounds(rounds), iterations=1
        )
    finally:
        resumes.close()
    assert resumes.results, "no resume ran to its end"
    first = kit.median(resumes.first_dispatch)
    benchmark.extra_info.update(
        events=journal.events,
        tasks=journal.tasks,
        first_dispatch_s=round(first, 4),
        events_per_s=round(journal.events / first, 1) if first else None,
        finish_s=round(kit.median(resumes.finish_seconds), 4),
        journal_mb=round(sum(p.stat().st_size for p in journal.files()) / 1e6, 1),
        build_s=round(journal.build_seconds, 1),
        loop=eventloop.name(),
        quick=kit.quick,
    )
