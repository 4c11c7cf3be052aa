"""Shared set-up for the benchmark suite (how to run it: bench/README.md).

Two modes, chosen by the environment:

- full (the default): the sizes the figures in bench/README.md are measured at.
- quick (`BENCH_QUICK=1`): every benchmark still runs its code, once, at reduced
  sizes (the 100k-task wide checks excepted), and benchmarks marked `full_only` are
  skipped. CI runs the suite this way (with `--benchmark-disable`) so that it
  cannot rot and its guards hold.

Benchmarks assert correctness (the run succeeded, every task succeeded) and, in
both modes, loose guards on the README's performance claims (`Kit.guard`). A guard
never bounds a raw time: it bounds a count (journal bytes per task, events per
commit, tasks re-run), a memory peak, or a ratio of two times taken on the same
machine moments apart (the I/O workload against its ideal, a resume against a
plan), with a margin of about 2x, so that a slow or loaded machine passes and a
regression of the kind that matters (a lost batching, memory or time per task
doubled, an O(n^2)) fails.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from durable import eventloop
from durable.journal import Journal
from durable.runner import RunResult
from durable.state import SUCCEEDED

QUICK = os.environ.get("BENCH_QUICK", "").strip().lower() not in ("", "0", "false", "no")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "full_only: a benchmark skipped in quick mode (BENCH_QUICK=1)"
    )


def pytest_report_header(config: pytest.Config) -> str:
    mode = "quick (BENCH_QUICK=1: reduced sizes, one round)" if QUICK else "full"
    return f"durable bench: {mode} mode, event loop {eventloop.name()}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not QUICK:
        return
    skip = pytest.mark.skip(reason="full mode only (unset BENCH_QUICK to run it)")
    for item in items:
        if item.get_closest_marker("full_only") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def durable_exe() -> str:
    """The `durable` console script of the running virtualenv."""
    path = os.path.join(os.path.dirname(sys.executable), "durable")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no durable executable at {path}: pip install -e '.[test]' first")
    return path


@pytest.fixture(scope="session")
def cached_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a timed `durable` subprocess: bytecode written and read
    (under a private prefix), as an installed durable has it, even where
    `PYTHONDONTWRITEBYTECODE` is set; compiling durable's modules is not start-up."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path_factory.mktemp("pycache"))
    return env


@pytest.fixture
def kit(tmp_path: Path) -> Kit:
    return Kit(QUICK, tmp_path)


class Kit:
    """What every benchmark needs: the mode's sizes and rounds, fresh journals, checks."""

    def __init__(self, quick: bool, tmp_path: Path) -> None:
        self.quick = quick
        self._tmp_path = tmp_path
        self._counter = itertools.count()

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def rounds(self, full: int) -> int:
        return 1 if self.quick else full

    def warmup(self, full: int = 1) -> int:
        return 0 if self.quick else full

    def fresh_dir(self) -> Path:
        """A new empty directory (one per benchmark round)."""
        path = self._tmp_path / f"round-{next(self._counter)}"
        path.mkdir()
        return path

    def new_journal(self, durability: str = "normal") -> Path:
        """An empty journal (schema included) in a fresh directory, so a round does not time it."""
        db = self.fresh_dir() / "journal.db"

        async def create() -> None:
            journal = await Journal.open(db, create=True, durability=durability)
            await journal.close()

        eventloop.run(create())
        return db

    @staticmethod
    def check(result: RunResult, tasks: int) -> None:
        """What every benchmark asserts: the run and every one of its tasks succeeded."""
        assert result.status == SUCCEEDED, f"run {result.run_id} ended {result.status}"
        assert len(result.tasks) == tasks
        failed = {
            task_id: task.state for task_id, task in result.tasks.items() if task.state != SUCCEEDED
        }
        assert not failed, (
            f"tasks that did not succeed: {dict(itertools.islice(failed.items(), 5))}"
        )

    @staticmethod
    def guard(
        what: str,
        measured: float,
        *,
        at_most: float | None = None,
        at_least: float | None = None,
        readme: str,
    ) -> None:
        """Assert a loose bound on a figure the README stands behind.

        The message says what was measured, the bound, and what the README claims.
        """
        if at_most is not None:
            assert measured <= at_most, (
                f"{what}: measured {measured:,.3g}, guard <= {at_most:,.3g} (README: {readme})"
            )
        if at_least is not None:
            assert measured >= at_least, (
                f"{what}: measured {measured:,.3g}, guard >= {at_least:,.3g} (README: {readme})"
            )

    @staticmethod
    def median(values: Iterable[float]) -> float:
        found = list(values)
        return statistics.median(found) if found else 0.0

    @staticmethod
    def run_stats(results: list[RunResult], tasks: int) -> dict[str, Any]:
        """`extra_info` from the engine's own stats (`RunResult.stats`), median round by run time.

        `tasks_per_s` counts the run alone, from `run_started` to a committed
        `run_finished`, as `durable bench` does; the benchmark's own time also
        includes what `arun` does before (validating and planning the workflow).
        """
        ordered = sorted(results, key=lambda result: result.stats.run_seconds)
        stats = ordered[len(ordered) // 2].stats
        return {
            "tasks": tasks,
            "tasks_per_s": round(tasks / stats.run_seconds, 1) if stats.run_seconds else None,
            "run_seconds": round(stats.run_seconds, 4),
            "commits": stats.commits,
            "events": stats.events,
            "events_per_commit": round(stats.events / max(stats.commits, 1), 1),
            "peak_running": stats.peak_running,
            "loop": eventloop.name(),
            "quick": QUICK,
        }
