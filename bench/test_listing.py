"""`durable runs` and `durable status` on a journal of many runs and many events.

The journal holds 1,000 runs of 2,000 events each (2,000,000 events; quick mode:
40 runs), each a run of a 999-task `wide` workflow driven by the real engine, so
that every run has the summary the engine keeps (`durable/summary.py`). It is built
once per session in a subprocess. Timed, in this process: the CLI command itself
(`durable runs --json`, `durable runs` as a table, `durable status RUN --json` for
the newest run), called through click as `durable` calls it. bench/README.md also
gives each command's wall time as a fresh process, measured by `test_wall_times`.

Guards (counts, not times): `runs` folds no run (it reads summaries), and its answer
equals the fold's for every run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from durable_cli.main import cli

from durable import eventloop, spec
from durable.benchmark import make_workflow
from durable.inspection import runs_document, select_runs, view_run
from durable.journal import Journal
from durable.summary import summarize

TASKS = 999  # 2 events each, plus run_started and run_finished: 2,000 events a run
RUNS = (1_000, 40)  # full, quick

_BUILD = """
import sys
from durable import runner
for i in range(int(sys.argv[3])):
    result = runner.run(sys.argv[1], db=sys.argv[2], run_id=f"run-{i:04d}", durability="off")
    assert result.status == "succeeded", result.status
"""


@pytest.fixture(scope="session")
def many_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    from conftest import QUICK

    runs = RUNS[1] if QUICK else RUNS[0]
    folder = tmp_path_factory.mktemp("listing")
    workflow = folder / "wide.json"
    workflow.write_bytes(spec.encode(make_workflow("wide", TASKS)))
    db = folder / "journal.db"
    subprocess.run(
        [sys.executable, "-c", _BUILD, str(workflow), str(db), str(runs)],
        check=True,
        timeout=1800,
    )
    return db, runs


def _cli(db: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--db", str(db)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_runs_json(benchmark: Any, many_runs: tuple[Path, int], kit: Any) -> None:
    db, runs = many_runs
    output = benchmark.pedantic(
        _cli, args=(db, "runs", "--json"), rounds=kit.rounds(10), warmup_rounds=kit.warmup()
    )
    listed = json.loads(output)
    assert len(listed) == runs
    assert all(
        doc["status"] == "succeeded" and doc["counts"] == {"succeeded": TASKS} for doc in listed
    )


def test_runs_table(benchmark: Any, many_runs: tuple[Path, int], kit: Any) -> None:
    db, runs = many_runs
    output = benchmark.pedantic(
        _cli, args=(db, "runs"), rounds=kit.rounds(10), warmup_rounds=kit.warmup()
    )
    assert sum(line.startswith("run-") for line in output.splitlines()) == runs


def test_runs_limit(benchmark: Any, many_runs: tuple[Path, int], kit: Any) -> None:
    db, _ = many_runs
    output = benchmark.pedantic(
        _cli, args=(db, "runs", "--limit", "20"), rounds=kit.rounds(10), warmup_rounds=kit.warmup()
    )
    assert sum(line.startswith("run-") for line in output.splitlines()) == 20


def test_status_of_the_newest_run(benchmark: Any, many_runs: tuple[Path, int], kit: Any) -> None:
    db, runs = many_runs
    newest = f"run-{runs - 1:04d}"
    output = benchmark.pedantic(
        _cli,
        args=(db, "status", newest, "--json"),
        rounds=kit.rounds(10),
        warmup_rounds=kit.warmup(),
    )
    document = json.loads(output)
    assert document["status"] == "succeeded" and len(document["tasks"]) == TASKS


def test_runs_folds_no_run_and_agrees_with_the_fold(many_runs: tuple[Path, int], kit: Any) -> None:
    """The guard: every run is listed from its summary, and each summary is its fold."""
    db, runs = many_runs

    async def check() -> tuple[int, int]:
        journal = await Journal.open(db, create=False, readonly=True)
        try:
            rows = await journal.list_summaries()
            usable = sum(row.summary is not None for row in rows)
            agree = 0
            for line in await select_runs(journal):
                record = await journal.get_run(line.run_id)  # type: ignore[union-attr]
                view = await view_run(journal, record)
                folded = summarize(record.workflow, record.created_at, view.state)
                agree += line.summary == folded and runs_document(line)["counts"] == view.counts()  # type: ignore[union-attr]
            return usable, agree
        finally:
            await journal.close()

    usable, agree = eventloop.run(check())
    kit.guard(
        "runs folded (of those listed)", runs - usable, at_most=0, readme="runs reads summaries"
    )
    kit.guard("summaries equal to the fold", agree, at_least=runs, readme="a summary is its fold")


def test_wall_times(many_runs: tuple[Path, int], durable_exe: str) -> None:
    """Each command as a fresh process, as a user runs it (printed for bench/README.md)."""
    db, runs = many_runs
    commands = {
        "runs": ["runs"],
        "runs --json": ["runs", "--json"],
        "runs --limit 20": ["runs", "--limit", "20"],
        "status RUN": ["status", f"run-{runs - 1:04d}"],
        "status RUN --json": ["status", f"run-{runs - 1:04d}", "--json"],
        "--version": ["--version"],
    }
    env = {**os.environ, "DURABLE_DB": str(db)}
    lines = [f"{runs} runs, {db.stat().st_size / 1e6:.0f} MB journal; best of 5, seconds:"]
    for name, args in commands.items():
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run([durable_exe, *args], env=env, check=True, capture_output=True)
            best = min(best, time.perf_counter() - started)
        lines.append(f"  durable {name}: {best:.3f}")
    print("\n".join(lines))
