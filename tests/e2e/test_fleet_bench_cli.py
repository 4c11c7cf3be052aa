"""`durable bench --workers N --db postgresql://...` from the command line: the fleet's
benchmark as a user runs it (`durable/fleet/bench.py` behind it; `bench/test_fleet.py`
measures with the same code, but never through the CLI).

Each test has a fresh database of its own. No time is asserted beyond sanity: the
report's fields are consistent, every benchmark run succeeded, and the workers the
benchmark started are gone when it returns.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pg
import pytest

pytestmark = pytest.mark.e2e


def test_a_fleet_bench_reports_its_median_run_and_the_round_trip(
    durable, dsn: str, tmp_path: Path
) -> None:
    done = durable(
        "bench", "--db", dsn, "--workers", "2", "--worker-slots", "4", "-n", "60", "-j", "8",
        "--shape", "layered", "--repeat", "2", "--json",
        cwd=tmp_path, timeout=180, check=0,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert (report["shape"], report["tasks"], report["workers"]) == ("layered", 60, 2)
    assert (report["slots"], report["concurrency"], report["runs"]) == (4, 8, 2)
    assert 0 < report["tasks_per_s_min"] <= report["tasks_per_s"] <= report["tasks_per_s_max"]
    assert report["tasks_per_s"] == pytest.approx(60 / report["seconds"], rel=0.01)
    assert 0 < report["round_trip_ms"] < 1000
    # Both runs ended succeeded, every task once; the fleet let go of them and stopped.
    runs = pg.fetch(dsn, "SELECT run_id FROM durable.runs")
    assert len(runs) == 2
    finished = pg.fetch(
        dsn, "SELECT data FROM durable.events WHERE kind = 'run_finished' ORDER BY seq"
    )
    assert [msgspec.msgpack.decode(row[0])["status"] for row in finished] == ["succeeded"] * 2
    succeeded = pg.fetch(
        dsn,
        "SELECT count(*), count(DISTINCT (run_id, task_id)) FROM durable.events"
        " WHERE kind = 'task_succeeded'",
    )
    assert succeeded == [(120, 120)]
    assert pg.fetch(dsn, "SELECT count(*) FROM durable.work") == [(0,)]
    assert pg.fetch(dsn, "SELECT count(*) FROM durable.workers") == [(0,)]


def test_a_fleet_bench_prints_its_figures(durable, dsn: str, tmp_path: Path) -> None:
    done = durable(
        "bench", "--db", dsn, "--workers", "1", "-n", "30", "--shape", "chain",
        cwd=tmp_path, timeout=120, check=0,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert lines[0] == "chain x 30 (echo), 1 workers x 16 slots, max_concurrency 16"
    assert [line.split()[0] for line in lines[1:]] == ["throughput", "run", "round"]
    assert lines[1].split()[2] == "tasks/s" and lines[3].split()[3] == "ms"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "error: --workers measures the fleet: give --db postgresql://..."),
        (
            ["--db", "journal.db"],
            "error: --db journal.db: bench measures a PostgreSQL journal (postgresql://...)"
            " or, without --db, a temporary SQLite file",
        ),
        (
            ["--db", "DSN", "--durability", "off"],
            "error: --durability off is for the SQLite journal; workers take normal or full",
        ),
    ],
)
def test_a_fleet_bench_refuses_what_it_cannot_measure(
    durable, dsn: str, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [dsn if arg == "DSN" else arg for arg in args]
    done = durable(
        "bench", "--workers", "1", "-n", "10", *args,
        cwd=tmp_path, check=2, env={"DURABLE_DB": None},
    )  # fmt: skip
    assert done.stderr.splitlines() == [message]
    assert "Traceback" not in done.stderr
    assert pg.fetch(dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'durable'") == [(0,)]
