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

`test_resume_after_kill` is the README's own case: a 100k-task run of `durable run`
SIGKILLed once about half its tasks have succeeded, then resumed in a fresh
process. It guards what the README claims about it (bench/README.md, "Guards").
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from durable import eventloop, runner, spec
from durable.benchmark import make_workflow
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

# test_resume_after_kill. README: "A 100k-task workflow ... its resume starts
# dispatching within 2 s" (Figures: 1.75 s wide, 1.80 s layered, process start to
# the first task_started, peak RSS 167 / 194 MB; `plan_ms` of the same workflows
# is 1.47 s / 2.89 s).
KILL_TASKS = 100_000
KILL_RUN_ID = "bench-kill"
# Resume (journal opened, 50k tasks' events read and folded, the workflow planned
# from its snapshot) up to the first dispatch, over planning the same workflow
# afresh (what every `durable run` pays first): 1.0-1.6 for wide here, 0.5 for
# layered (a resume plans its own snapshot as trusted, without validating it again).
# Both times are taken in one process seconds apart, so a slow machine scales both;
# a resume that rereads or replans per event, or anything O(n^2), is far beyond 3.
RESUME_MAX_PLAN_RATIO = 3.0
# README figures: shape -> (process start to first dispatch s, plan s, peak RSS MB).
RESUME_README = {"wide": (1.75, 1.47, 167), "layered": (1.80, 2.89, 194)}

# Run in a fresh process: resume, then plan the same workflow (timed) for the ratio.
_RESUME = """
import json, sys, time
from durable import runner, spec
from durable.benchmark import peak_rss_mb
from durable.events import TaskStarted
from durable.loader import plan_workflow

run_id, db, workflow_file = sys.argv[1:]
first, started = [], [0]

def on_event(event):
    if isinstance(event, TaskStarted):
        started[0] += 1
        if not first:
            first.append((time.perf_counter(), time.time()))

called = time.perf_counter()
result = runner.resume(run_id, db=db, hooks=runner.Hooks(on_event=on_event))
finished = time.perf_counter()
rss = peak_rss_mb()  # VmHWM: not inherited over exec, unlike ru_maxrss
report = {
    "status": result.status,
    "tasks": len(result.tasks),
    "succeeded": sum(task.state == "succeeded" for task in result.tasks.values()),
    "started": started[0],
    "first_dispatch_s": first[0][0] - called if first else None,
    "first_dispatch_at": first[0][1] if first else None,
    "resume_s": finished - called,
    "peak_rss_mb": round(rss, 1),
}
del result
workflow = spec.load(workflow_file)
planned = time.perf_counter()
plan_workflow(workflow, ".")
report["plan_s"] = time.perf_counter() - planned
print(json.dumps(report))
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
            (count,) = connection.execute(  # a `task_ran` row is two events
                "SELECT sum(CASE kind WHEN 'task_ran' THEN 2 ELSE 1 END) FROM events"
                " WHERE run_id = ?",
                (RUN_ID,),
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


def _kill_midway(durable_exe: str, workflow_file: Path, db: Path, tasks: int) -> int:
    """`durable run` the workflow, SIGKILL it once about half its tasks have succeeded.

    Watches the journal (a read-only connection, polling the last event's number),
    never the clock. Returns how many tasks had their success committed.
    """
    process = subprocess.Popen(
        [durable_exe, "run", str(workflow_file), "--db", str(db), "--run-id", KILL_RUN_ID],
        cwd=workflow_file.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    connection: sqlite3.Connection | None = None
    try:
        deadline = time.monotonic() + 600
        while True:
            time.sleep(0.01)
            if process.poll() is not None:
                raise AssertionError(
                    f"the run ended ({process.returncode}) before it could be killed: "
                    f"{process.stderr.read().decode() if process.stderr else ''}"
                )
            assert time.monotonic() < deadline, "the run did not reach half its tasks in 600 s"
            if connection is None:
                if not db.exists():
                    continue
                connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                (last,) = connection.execute("SELECT max(seq) FROM events").fetchone()
            except sqlite3.OperationalError:  # the schema is not there yet
                continue
            # One row a task when its start and success commit together (`task_ran`),
            # two when apart: from a quarter to a half have succeeded.
            if (last or 0) >= tasks // 2:
                break
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before the kill"
        ((committed,),) = connection.execute(
            "SELECT count(*) FROM events WHERE run_id = ?"
            " AND kind IN ('task_succeeded', 'task_ran')",
            (KILL_RUN_ID,),
        ).fetchall()
        return committed
    finally:
        if connection is not None:
            connection.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


@pytest.mark.parametrize("shape", ["wide", pytest.param("layered", marks=pytest.mark.full_only)])
def test_resume_after_kill(benchmark, kit, durable_exe: str, tmp_path: Path, shape: str) -> None:
    """100k tasks (-j 64) killed at about 50k, resumed in a fresh process.

    Runs at 100k in quick mode too (wide only; 15-25 s here), since the claim is
    about 100k. A round times the resuming process from start to exit (the other
    50k tasks included); `extra_info` has the first dispatch: `first_dispatch_s`
    (from calling `resume`), `process_start_to_first_dispatch_s` (a Python process
    calling `runner.resume`, not the CLI: no click), `plan_s`, the ratio, RSS.

    Guards: the resumed run succeeds; it starts exactly the tasks whose success was
    not committed (none re-run); its first dispatch within 3x the time to plan the
    same workflow (best of up to three resumes of copies of the killed journal, as
    load only adds time); peak RSS within 2x the README's figure.
    """
    workflow_file = tmp_path / "workflow.json"
    workflow_file.write_bytes(spec.encode(make_workflow(shape, KILL_TASKS, 64)))
    killed = tmp_path / "killed"
    killed.mkdir()
    db = killed / "journal.db"
    committed = _kill_midway(durable_exe, workflow_file, db, KILL_TASKS)
    assert 0 < committed < KILL_TASKS, f"{committed} tasks had succeeded at the kill"
    journal_files = [path for path in (db, Path(f"{db}-wal")) if path.exists()]

    reports: list[dict[str, Any]] = []

    def resume_copy() -> None:
        folder = kit.fresh_dir()
        for source in journal_files:
            shutil.copyfile(source, folder / source.name)
        started_at = time.time()
        done = subprocess.run(
            [sys.executable, "-c", _RESUME, KILL_RUN_ID, str(folder / db.name), str(workflow_file)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"resuming: {done.stdout}{done.stderr}"
        report = json.loads(done.stdout)
        shutil.rmtree(folder, ignore_errors=True)
        assert report["status"] == SUCCEEDED, f"the resumed run ended {report['status']}"
        assert report["tasks"] == report["succeeded"] == KILL_TASKS, report
        # At-least-once, and no more: the tasks whose success was committed are kept.
        assert report["started"] == KILL_TASKS - committed, (
            f"the resume started {report['started']} tasks; "
            f"{KILL_TASKS - committed} had no committed success"
        )
        report["process_start_to_first_dispatch_s"] = report.pop("first_dispatch_at") - started_at
        report["ratio"] = report["first_dispatch_s"] / report["plan_s"]
        reports.append(report)

    benchmark.pedantic(resume_copy, rounds=1, iterations=1)
    while reports[-1]["ratio"] > RESUME_MAX_PLAN_RATIO and len(reports) < 3:
        resume_copy()  # a loaded moment? resume another copy: the best one counts
    best = min(reports, key=lambda report: report["ratio"])
    readme_s, readme_plan, readme_mb = RESUME_README[shape]
    benchmark.extra_info.update(
        {key: round(value, 4) if isinstance(value, float) else value for key, value in best.items()}
    )
    benchmark.extra_info.update(
        shape=shape, committed_at_kill=committed, attempts=len(reports), quick=kit.quick
    )
    kit.guard(
        f"{shape} x 100k killed at {committed}: resume to first dispatch / plan "
        f"({best['first_dispatch_s']:.2f} s / {best['plan_s']:.2f} s, best of {len(reports)})",
        best["ratio"],
        at_most=RESUME_MAX_PLAN_RATIO,
        readme=f"its resume starts dispatching within 2 s ({readme_s} s from process start; "
        f"plan_ms {readme_plan * 1000:.0f})",
    )
    kit.guard(
        f"{shape} x 100k: the resuming process's peak RSS (MB)",
        best["peak_rss_mb"],
        at_most=2 * readme_mb,
        readme=f"peak RSS {readme_mb} MB",
    )
