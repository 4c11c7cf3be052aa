"""The operator commands of issue 10, through the real `durable` command: `export` (a run
as one JSON document, to stdout or atomically to a file) and `prune` (deleting whole
finished runs, by id or by age, and reclaiming their space).

What prune must never do is the point of most of these tests: touch another run's
rows (compared byte for byte), leave the journal unsound (`durable check`; SQLite's
integrity check), leave it without its append-only triggers (also after a prune that
failed half-way), or delete a run that a live process drives or the workers hold.
They run on PostgreSQL too (`DURABLE_TEST_BACKEND=postgres`); only what is about the
SQLite file (its size after VACUUM, its integrity check) is asserted on SQLite alone.
"""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import pg
import pytest
from journal_tables import append_only_refuses, fail_deleting_summaries

FANOUT = """\
name: fanout
params: {n: 3}
tasks:
  - {id: a, tool: echo, input: {n: "${params.n}"}}
  - {id: fan, tool: echo, foreach: [1, 2, 3], input: {i: "${item}"}}
  - {id: b, tool: echo, dependencies: [a], input: {all: "${fan.output}"}}
"""

FAILING = """\
name: failing
tasks:
  - {id: good, tool: echo, input: {ok: true}}
  - {id: bad, tool: shell, input: {command: [sh, -c, "echo boom >&2; exit 3"]}}
  - {id: after, tool: echo, dependencies: [bad], input: 1}
"""

# Each run journals about 0.5 MB of outputs: enough for VACUUM to give back pages.
BULKY = f"""\
name: bulky
tasks:
  - {{id: big, tool: echo, foreach: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], input: {{i: "${{item}}", pad: "{"x" * 25_000}"}}}}
"""

SLEEPY = """\
name: sleepy
tasks:
  - {id: nap, tool: sleep, input: {seconds: 60, result: 1}}
"""

# A run that stays live until the test creates `release` in its folder.
GATE = """\
name: gate
tasks:
  - {id: first, tool: echo, input: 1}
  - id: wait
    tool: shell
    dependencies: [first]
    input: {command: [sh, -c, "while [ ! -e release ]; do sleep 0.02; done; echo released"]}
  - {id: last, tool: echo, dependencies: [wait], input: "${wait.output.stdout}"}
"""

EVENTS = "SELECT seq, run_id, task_id, attempt, kind, at, data, crc FROM events"
#: A run's events: a `task_ran` row holds two (a task's start and its success).
EVENTS_OF_RUN = (
    "SELECT sum(CASE kind WHEN 'task_ran' THEN 2 ELSE 1 END) FROM events WHERE run_id = ?"
)
TASK_FIELDS = {"state", "attempts", "output", "error", "started_at", "finished_at", "duration"}
#: What the sizes measure: the file and its WAL, or the tables in PostgreSQL.
SIZE_OF = r"the journal(?: \(its tables in PostgreSQL\))?"
FINAL = re.compile(
    rf"pruned (\d+) runs? \((\d+) events?\); {SIZE_OF} went from (\d+\.\d\d) MB to "
    r"(\d+\.\d\d) MB"
)


def run(durable, folder: Path, workflow: Path, run_id: str, check: int = 0) -> None:  # type: ignore[no-untyped-def]
    durable("run", workflow, "--db", "j.db", "--run-id", run_id, "-q", cwd=folder, check=check)


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def size(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def on_postgres(journal_target, db: Path) -> bool:  # type: ignore[no-untyped-def]
    """Whether the test's journal `db` is a PostgreSQL database (postgres mode)."""
    return journal_target(db) != str(db)


def schema(journal_rows, db: Path, postgres: bool) -> list[tuple[Any, ...]]:  # type: ignore[no-untyped-def]
    """The journal's schema: SQLite's SQL of it; PostgreSQL's triggers, with whether each
    is enabled, and its tables' columns."""
    if not postgres:
        return journal_rows(db, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
    return journal_rows(
        db, "SELECT tgname, tgenabled::text FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1"
    ) + journal_rows(
        db,
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'durable' ORDER BY 1, 2",
    )


def others(journal_rows, db: Path, gone: tuple[str, ...], postgres: bool) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Every row of the runs not in `gone`, as stored, and the schema."""
    marks = ", ".join("?" * len(gone))
    return {
        "events": journal_rows(db, f"{EVENTS} WHERE run_id NOT IN ({marks}) ORDER BY seq", gone),
        "runs": journal_rows(
            db, f"SELECT * FROM runs WHERE run_id NOT IN ({marks}) ORDER BY run_id", gone
        ),
        "summaries": journal_rows(
            db, f"SELECT * FROM summaries WHERE run_id NOT IN ({marks}) ORDER BY run_id", gone
        ),
        "schema": schema(journal_rows, db, postgres),
    }


def listed(durable, folder: Path) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return json.loads(durable("runs", "--db", "j.db", "--json", cwd=folder, check=0).stdout)


# -- export ----------------------------------------------------------------------------


def test_export_to_stdout_and_to_a_file_are_one_document(durable, write, as_json, tmp_path):
    workflow = write(tmp_path, "wf.yaml", FANOUT)
    run(durable, tmp_path, workflow, "exp-1")

    document = as_json(durable("export", "exp-1", "--db", "j.db", cwd=tmp_path))
    result = durable("export", "exp-", "-o", "out.json", "--db", "j.db", cwd=tmp_path, check=0)
    assert result.stdout == "wrote out.json (6 tasks)\n"
    assert json.loads((tmp_path / "out.json").read_text()) == document
    # Atomically: a temporary file beside it, renamed; none is left behind.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []

    assert set(document) == {
        "run_id", "workflow", "status", "created_at", "finished_at", "duration", "params", "tasks",
    }  # fmt: skip
    assert document["run_id"] == "exp-1"
    assert document["workflow"] == "fanout"
    assert document["status"] == "succeeded"
    assert document["params"] == {"n": 3}
    assert document["created_at"] <= document["finished_at"]
    # Workflow order, each foreach task followed by its instances.
    assert list(document["tasks"]) == ["a", "fan", "fan[0]", "fan[1]", "fan[2]", "b"]
    for task in document["tasks"].values():
        assert set(task) >= TASK_FIELDS
        assert task["state"] == "succeeded" and task["error"] is None
    assert document["tasks"]["fan"]["instances"] == 3

    outputs = as_json(durable("output", "exp-1", "--db", "j.db", cwd=tmp_path))
    assert {tid: task["output"] for tid, task in document["tasks"].items()} == outputs
    status = as_json(durable("status", "exp-1", "--db", "j.db", "--json", cwd=tmp_path))
    assert document["tasks"] == status["tasks"]

    # `-o` over an existing file replaces it whole.
    (tmp_path / "out.json").write_text("old")
    durable("export", "exp-1", "-o", "out.json", "--db", "j.db", cwd=tmp_path, check=0)
    assert json.loads((tmp_path / "out.json").read_text()) == document


def test_export_of_a_run_with_a_failed_task(durable, write, as_json, tmp_path):
    workflow = write(tmp_path, "wf.yaml", FAILING)
    run(durable, tmp_path, workflow, "fail-1", check=1)

    document = as_json(durable("export", "fail-1", "--db", "j.db", cwd=tmp_path))
    assert document["status"] == "failed"
    tasks = document["tasks"]
    assert list(tasks) == ["good", "bad", "after"]
    assert tasks["good"]["state"] == "succeeded" and tasks["good"]["output"] == {"ok": True}
    assert tasks["bad"]["state"] == "failed"
    assert tasks["bad"]["attempts"] == 1
    assert tasks["bad"]["output"] is None
    assert tasks["bad"]["error"]
    assert tasks["after"]["state"] == "upstream_failed"
    assert tasks["after"]["attempts"] == 0 and tasks["after"]["duration"] is None


def test_export_of_an_unknown_run_is_one_error_and_writes_nothing(
    durable, write, no_traceback, journal_target, tmp_path
):
    workflow = write(tmp_path, "wf.yaml", FANOUT)
    run(durable, tmp_path, workflow, "exp-1")
    for extra in ([], ["-o", "out.json"]):
        result = durable("export", "nope", "--db", "j.db", *extra, cwd=tmp_path, check=2)
        no_traceback(result)
        where = journal_target("j.db", tmp_path)  # j.db, or its database's DSN
        assert first_line(result.stderr) == f"error: run 'nope' not found in {where}"
        assert result.stdout == ""
    assert not (tmp_path / "out.json").exists()


@pytest.mark.sqlite_only("damages the run by dropping a trigger of the SQLite file")
def test_export_of_a_damaged_run_names_the_damage_and_writes_nothing(
    durable, write, no_traceback, tmp_path
):
    workflow = write(tmp_path, "wf.yaml", FANOUT)
    run(durable, tmp_path, workflow, "exp-1")
    # Bypass the append-only trigger, as a stray tool or a bad disk would.
    connection = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
    try:
        connection.execute("DROP TRIGGER events_append_only_update")
        connection.execute(
            "UPDATE events SET at = at + 1 WHERE seq = (SELECT max(seq) FROM events"
            " WHERE run_id = 'exp-1' AND kind IN ('task_succeeded', 'task_ran'))"
        )
    finally:
        connection.close()
    (tmp_path / "out.json").write_text("old")
    for extra in ([], ["-o", "out.json"]):
        result = durable("export", "exp-1", "--db", "j.db", *extra, cwd=tmp_path, check=2)
        no_traceback(result)
        assert first_line(result.stderr).startswith("error: j.db: run 'exp-1' is damaged: event ")
        assert "does not match its checksum" in first_line(result.stderr)
        assert result.stdout == ""
    assert (tmp_path / "out.json").read_text() == "old"


# -- prune -------------------------------------------------------------------------------


@pytest.fixture
def four_runs(durable, write, tmp_path) -> dict[str, Any]:
    """A journal of four bulky runs, finished, oldest first: keep-1, drop-1, keep-2, drop-2."""
    workflow = write(tmp_path, "wf.yaml", BULKY)
    for run_id in ("keep-1", "drop-1", "keep-2", "drop-2"):
        run(durable, tmp_path, workflow, run_id)
    return {"folder": tmp_path, "db": tmp_path / "j.db", "workflow": workflow}


def test_prune_by_id_deletes_those_runs_whole_and_nothing_else(
    durable, journal_rows, journal_target, count_events, four_runs
):
    folder, db = four_runs["folder"], four_runs["db"]
    postgres = on_postgres(journal_target, db)
    gone = ("drop-1", "drop-2")
    kept_before = others(journal_rows, db, gone, postgres)
    listed_before = listed(durable, folder)
    counts = {run_id: count_events(db, run_id) for run_id in gone}
    size_before = None if postgres else size(db)

    result = durable("prune", "drop-1", "drop-2", "--db", "j.db", cwd=folder, check=0)
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    for line, run_id in zip(lines, gone, strict=False):
        assert re.fullmatch(
            rf"pruned {run_id} \(bulky, created \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d, "
            rf"{counts[run_id]} events\)",
            line,
        ), line
    final = FINAL.fullmatch(lines[2])
    assert final, lines[2]
    assert int(final[1]) == 2 and int(final[2]) == sum(counts.values())
    assert ("(its tables in PostgreSQL)" in lines[2]) == postgres
    if size_before is not None:  # the file and its WAL, VACUUMed
        size_after = size(db)
        assert size_after < size_before * 0.75, (size_before, size_after)
        assert final[3] == f"{size_before / 1e6:.2f}" and final[4] == f"{size_after / 1e6:.2f}"
        assert journal_rows(db, "PRAGMA integrity_check") == [("ok",)]

    # The pruned runs are gone whole; every other row is as it was, byte for byte,
    # and the schema (the append-only triggers included, enabled) is the one it had.
    for table in ("runs", "events", "summaries"):
        marks = ", ".join("?" * len(gone))
        assert journal_rows(
            db, f"SELECT count(*) FROM {table} WHERE run_id IN ({marks})", gone
        ) == [(0,)]
    assert others(journal_rows, db, gone, postgres) == kept_before
    durable("check", "--db", "j.db", cwd=folder, check=0)
    assert listed(durable, folder) == [doc for doc in listed_before if doc["run_id"] not in gone]
    append_only_refuses(journal_target(db))

    # A pruned run's id is free again.
    run(durable, folder, four_runs["workflow"], "drop-1")
    assert [doc["run_id"] for doc in listed(durable, folder)] == ["keep-1", "keep-2", "drop-1"]
    assert others(journal_rows, db, ("drop-1",), postgres)["events"] == kept_before["events"]
    durable("check", "--db", "j.db", cwd=folder, check=0)


def test_prune_by_age_takes_the_runs_created_before_then(
    durable, write, journal_rows, journal_target, tmp_path
):
    workflow = write(tmp_path, "wf.yaml", FANOUT)
    db = tmp_path / "j.db"
    postgres = on_postgres(journal_target, db)
    run(durable, tmp_path, workflow, "old-1")
    run(durable, tmp_path, workflow, "old-2")
    (then,) = journal_rows(db, "SELECT max(at) FROM events")[0]
    run(durable, tmp_path, workflow, "new-1")
    kept_before = others(journal_rows, db, ("old-1", "old-2"), postgres)

    # An age that no run is older than: nothing to do, and nothing done.
    result = durable("prune", "--older-than", "1w", "--db", "j.db", cwd=tmp_path, check=0)
    assert FINAL.fullmatch(result.stdout.strip()), result.stdout
    assert result.stdout.startswith("pruned 0 runs (0 events); ")
    assert len(listed(durable, tmp_path)) == 3

    # A date-time (local, as `runs --since` reads it) between the old runs and the new.
    when = datetime.fromtimestamp(then).isoformat()
    result = durable("prune", "--older-than", when, "--db", "j.db", cwd=tmp_path, check=0)
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [["pruned", "old-1"], ["pruned", "old-2"]]
    assert lines[-1].startswith("pruned 2 runs (")
    assert [doc["run_id"] for doc in listed(durable, tmp_path)] == ["new-1"]
    assert others(journal_rows, db, ("old-1", "old-2"), postgres) == kept_before
    durable("check", "--db", "j.db", cwd=tmp_path, check=0)


def test_prune_dry_run_lists_and_changes_nothing(durable, journal_rows, journal_digest, four_runs):
    folder, db = four_runs["folder"], four_runs["db"]
    before = journal_digest(db)
    events = sum(
        journal_rows(db, EVENTS_OF_RUN, (run_id,))[0][0] for run_id in ("drop-1", "keep-1")
    )

    result = durable("prune", "drop-1", "keep-1", "--dry-run", "--db", "j.db", cwd=folder, check=0)
    lines = result.stdout.splitlines()
    assert [line.split()[:3] for line in lines[:-1]] == [
        ["would", "prune", "drop-1"],
        ["would", "prune", "keep-1"],
    ]
    assert re.fullmatch(
        rf"would prune 2 runs \({events} events\); {SIZE_OF} is \d+\.\d\d MB; nothing was changed",
        lines[-1],
    ), lines[-1]
    result = durable(
        "prune", "--older-than", "0s", "--dry-run", "--db", "j.db", cwd=folder, check=0
    )
    assert result.stdout.splitlines()[-1].startswith("would prune 4 runs (")

    assert journal_digest(db) == before
    assert len(listed(durable, folder)) == 4


def test_prune_refuses_a_running_run(
    durable,
    write,
    start,
    stop,
    wait_for_events,
    journal_rows,
    journal_target,
    no_traceback,
    tmp_path,
):
    run(durable, tmp_path, write(tmp_path, "done.yaml", FANOUT), "done-1")
    sleepy = write(tmp_path, "sleepy.yaml", SLEEPY)
    db = tmp_path / "j.db"
    driver = start("run", sleepy, "--db", "j.db", "--run-id", "live-1", "-q", cwd=tmp_path)
    try:
        wait_for_events(db, "live-1", "task_started", process=driver)
        before = journal_rows(db, f"{EVENTS} ORDER BY seq")
        for args in (
            ["live-1"],
            ["done-1", "live-1"],
            ["live-1", "--dry-run"],
            ["--older-than", "0s"],
        ):
            result = durable("prune", *args, "--db", "j.db", cwd=tmp_path, check=2)
            no_traceback(result)
            assert result.stderr.strip() == (
                "error: run 'live-1' is running (a live process drives it): nothing was pruned"
            ), args
            assert result.stdout == ""
        assert driver.poll() is None, "the run must go on"
        assert journal_rows(db, f"{EVENTS} ORDER BY seq") == before
    finally:
        stop(driver)

    # Killed, the run is interrupted (once PostgreSQL has seen its connection go, its
    # lock with it): that may be pruned, giving up its resume.
    assert wait_until(lambda: [doc["status"] for doc in listed(durable, tmp_path)]) == [
        "succeeded",
        "interrupted",
    ]
    result = durable("prune", "live-1", "--db", "j.db", cwd=tmp_path, check=0)
    assert result.stdout.startswith("pruned live-1 (sleepy, created ")
    assert [doc["run_id"] for doc in listed(durable, tmp_path)] == ["done-1"]
    resumed = durable("resume", "live-1", "--db", "j.db", cwd=tmp_path, check=2)
    where = journal_target("j.db", tmp_path)
    assert first_line(resumed.stderr) == f"error: run 'live-1' not found in {where}"
    durable("check", "--db", "j.db", cwd=tmp_path, check=0)


def wait_until(look: Any, timeout: float = 10.0) -> Any:
    """`look()` once it stops saying `running` (a status list), or at the deadline."""
    import time

    deadline = time.monotonic() + timeout
    while "running" in (seen := look()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def test_prune_beside_a_live_run_leaves_it_whole(
    durable, start, stop, write, wait_for_events, journal_rows, journal_target, as_json, four_runs
):
    """The prune goes on beside a live driver: on SQLite VACUUM rewrites the file under
    its connections; on PostgreSQL the prune's lock on the tables holds its commits
    back for a moment. Either way it goes on unharmed."""
    folder, db = four_runs["folder"], four_runs["db"]
    postgres = on_postgres(journal_target, db)
    gate = write(folder, "gate.yaml", GATE)
    driver = start("run", gate, "--db", "j.db", "--run-id", "live-1", "-q", cwd=folder)
    try:
        wait_for_events(db, "live-1", "task_started", 2, process=driver)
        size_before = None if postgres else size(db)
        kept = others(journal_rows, db, ("drop-1", "drop-2", "live-1"), postgres)
        result = durable("prune", "drop-1", "drop-2", "--db", "j.db", cwd=folder, check=0)
        assert result.stdout.splitlines()[-1].startswith("pruned 2 runs (")
        if size_before is not None:
            assert size(db) < size_before
        (folder / "release").touch()
        assert driver.wait(timeout=30) == 0, driver.stderr.read()
    finally:
        (folder / "release").touch()
        stop(driver)
    assert (
        others(journal_rows, db, ("drop-1", "drop-2", "live-1"), postgres)["events"]
        == kept["events"]
    )
    assert as_json(durable("output", "live-1", "last", "--db", "j.db", cwd=folder)) == "released\n"
    assert [doc["run_id"] for doc in listed(durable, folder)] == ["keep-1", "keep-2", "live-1"]
    durable("check", "--db", "j.db", cwd=folder, check=0)


def test_prune_refuses_an_unknown_run_and_prunes_nothing(
    durable, write, journal_rows, journal_target, no_traceback, tmp_path
):
    workflow = write(tmp_path, "wf.yaml", FANOUT)
    run(durable, tmp_path, workflow, "done-1")
    db = tmp_path / "j.db"
    where = journal_target("j.db", tmp_path)
    before = journal_rows(db, f"{EVENTS} ORDER BY seq")
    # Whole ids only: what is named is deleted, so a prefix names nothing.
    for ids in (["nope"], ["done-1", "nope"], ["done-"]):
        result = durable("prune", *ids, "--db", "j.db", cwd=tmp_path, check=2)
        no_traceback(result)
        assert first_line(result.stderr) == f"error: run '{ids[-1]}' not found in {where}"
        assert result.stdout == ""
    assert journal_rows(db, f"{EVENTS} ORDER BY seq") == before

    # Ids or an age, exactly one of the two.
    for args in ([], ["done-1", "--older-than", "1d"]):
        result = durable("prune", *args, "--db", "j.db", cwd=tmp_path, check=2)
        no_traceback(result)
        assert first_line(result.stderr) == "error: give either RUN_ID... or --older-than AGE"
    result = durable("prune", "--older-than", "soon", "--db", "j.db", cwd=tmp_path, check=2)
    assert first_line(result.stderr).startswith(
        "error: Invalid value for '--older-than': 'soon' is neither an age"
    )
    assert journal_rows(db, f"{EVENTS} ORDER BY seq") == before


def test_prune_that_fails_half_way_prunes_nothing_and_leaves_the_triggers_on(
    durable, write, journal_rows, journal_target, journal_digest, no_traceback, tmp_path
):
    """Another program's trigger refuses to let summaries go: the prune fails after it
    has set the append-only triggers aside and deleted the run's events, inside its
    transaction. It says so in one line, and the journal is as it was, triggers on."""
    workflow = write(tmp_path, "wf.yaml", FANOUT)
    run(durable, tmp_path, workflow, "done-1")
    run(durable, tmp_path, workflow, "done-2")
    db = tmp_path / "j.db"
    fail_deleting_summaries(journal_target(db))
    before = journal_digest(db)

    result = durable("prune", "done-1", "--db", "j.db", cwd=tmp_path, check=2)
    no_traceback(result)
    where = journal_target("j.db", tmp_path)
    assert result.stderr.strip() == (
        f"error: {where}: cannot prune: boom: summaries stay; nothing was pruned"
    )
    assert result.stdout == ""
    assert journal_digest(db) == before
    append_only_refuses(journal_target(db))
    assert [doc["run_id"] for doc in listed(durable, tmp_path)] == ["done-1", "done-2"]
    durable("check", "--db", "j.db", cwd=tmp_path, check=0)


FLEET = """\
name: fleet
tasks:
  - {id: a, tool: echo, input: 1}
  - {id: b, tool: echo, input: 2}
"""


def test_prune_refuses_a_run_the_workers_hold(durable, write, no_traceback, tmp_path):
    """A run handed to the workers (`run --workers --detach`, no worker alive yet) is
    theirs while it has work: refused, dry run too. Cancelled, it may go. The fleet
    needs PostgreSQL: the test has a database of its own, on either pass."""
    write(tmp_path, "fleet.yaml", FLEET)
    with pg.fresh_database() as dsn:
        durable("run", "fleet.yaml", "--db", dsn, "--run-id", "done-1", "-q", cwd=tmp_path, check=0)
        submitted = durable(
            "run", "fleet.yaml", "--db", dsn, "--workers", "--detach", "--run-id", "fleet-1",
            cwd=tmp_path, check=0,
        )  # fmt: skip
        assert "fleet-1" in submitted.stdout
        before = pg.fetch(dsn, "SELECT seq, run_id, kind FROM durable.events ORDER BY seq")
        for args in (["fleet-1"], ["done-1", "fleet-1", "--dry-run"], ["--older-than", "0s"]):
            result = durable("prune", *args, "--db", dsn, cwd=tmp_path, check=2)
            no_traceback(result)
            assert result.stderr.strip() == (
                "error: run 'fleet-1' is running (the workers hold 2 of its tasks, ready or "
                "running): nothing was pruned"
            ), args
        assert pg.fetch(dsn, "SELECT seq, run_id, kind FROM durable.events ORDER BY seq") == before

        durable("cancel", "fleet-1", "--db", dsn, cwd=tmp_path, check=0)
        result = durable("prune", "fleet-1", "--db", dsn, cwd=tmp_path, check=0)
        assert result.stdout.startswith("pruned fleet-1 (fleet, created ")
        for table in ("runs", "events", "summaries", "work", "fleet_runs"):
            assert pg.fetch(
                dsn, f"SELECT count(*) FROM durable.{table} WHERE run_id = 'fleet-1'"
            ) == [(0,)], table
        assert pg.fetch(dsn, "SELECT run_id FROM durable.runs") == [("done-1",)]
