"""A run is never stranded: whatever killed it, durable itself can open and resume it.

Each test reproduces one way the trust issue found to leave a run that durable could
no longer open or resume (a kill mid-checkpoint, a kill between a run's row and its
first event, a tool that kills its process, a deleted journal, a full disk, a
read-only folder, a crafted run id, a resume from another directory), through the
real `durable` command on a real SQLite file.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

TOOLS = """
import os, time, ctypes
import durable

@durable.tool
async def die(code: int = 3):
    os._exit(code)

@durable.tool
def segfault():
    ctypes.string_at(0)

@durable.tool
def where():
    return os.getcwd()

@durable.tool
async def nap(seconds: float = 0.0):
    import asyncio
    await asyncio.sleep(seconds)
    return seconds
"""


def test_a_poison_task_is_failed_after_max_deaths_and_the_rest_of_the_run_goes_on(
    tmp_path, durable, write, no_traceback, as_json
):
    """A tool that kills its process kills each resume too; after N recorded deaths
    while it ran, the task is failed with a clear error, and its independent
    siblings and the run finish."""
    write(tmp_path, "tools.py", TOOLS)
    workflow = write(
        tmp_path,
        "wf.yaml",
        """
name: poison
imports: [tools]
tasks:
  - {id: ok, tool: nap}
  - {id: bad, tool: die, input: {code: 3}}
  - {id: after_ok, tool: echo, input: "${ok.output}"}
""",
    )
    first = durable("run", workflow, "--run-id", "p1", "--max-deaths", "2", cwd=tmp_path)
    assert first.returncode == 3  # os._exit(3) inside the tool: nothing durable can do here
    exits = []
    for _ in range(4):
        result = durable("resume", "p1", "--max-deaths", "2", cwd=tmp_path)
        exits.append(result.returncode)
        if result.returncode != 3:
            break
    # At most max_deaths + 1 resumes die (the first death may come before the task's
    # start was committed); then the task is failed and the run ends.
    assert exits[-1] == 1, (exits, result.stdout, result.stderr)
    assert len(exits) <= 3, exits
    no_traceback(result)
    assert "bad: the process died 2 times while this task ran" in result.stderr
    status = as_json(durable("status", "p1", "--json", cwd=tmp_path))
    assert status["status"] == "failed"
    assert status["tasks"]["bad"]["state"] == "failed"
    assert status["tasks"]["after_ok"]["state"] == "succeeded"
    # Raising the limit tries it once more (and it dies again: exit 3).
    again = durable("resume", "p1", "--max-deaths", "5", cwd=tmp_path)
    assert again.returncode == 3


def test_a_segfaulting_tool_does_not_strand_the_run(tmp_path, durable, write, as_json):
    write(tmp_path, "tools.py", TOOLS)
    workflow = write(
        tmp_path,
        "wf.yaml",
        "name: seg\nimports: [tools]\ntasks:\n  - {id: crash, tool: segfault}\n  - {id: fine, tool: echo, input: 1}\n",
    )
    first = durable("run", workflow, "--run-id", "s1", "--max-deaths", "2", cwd=tmp_path)
    assert first.returncode == -signal.SIGSEGV
    codes = [
        durable("resume", "s1", "--max-deaths", "2", cwd=tmp_path).returncode for _ in range(3)
    ]
    assert 1 in codes, codes
    assert codes[codes.index(1) :] == [1] * (len(codes) - codes.index(1))
    status = as_json(durable("status", "s1", "--json", cwd=tmp_path))
    assert status["tasks"]["crash"]["error"].startswith("the process died 2 times")
    assert status["tasks"]["fine"]["state"] == "succeeded"


@pytest.mark.sqlite_only("plants a run row in the file with sqlite3")
def test_a_run_whose_row_has_no_first_event_resumes(tmp_path, durable, write):
    """A journal written by an older durable that died between creating the run's row
    and its first commit: resume treats that session as the run's first."""
    workflow = write(tmp_path, "wf.yaml", "name: w\ntasks:\n  - {id: a, tool: echo, input: 1}\n")
    durable("run", workflow, "--run-id", "r1", cwd=tmp_path, check=0)
    db = tmp_path / ".durable" / "journal.db"
    connection = sqlite3.connect(db)
    spec, created = connection.execute("SELECT spec, created_at FROM runs").fetchone()
    connection.execute(
        "INSERT INTO runs (run_id, workflow, spec, spec_hash, params, base_dir, created_at)"
        " VALUES ('orphan', 'w', ?, 'h', x'7b7d', ?, ?)",
        (spec, str(tmp_path), created),
    )
    connection.commit()
    connection.close()
    result = durable("resume", "orphan", cwd=tmp_path, check=0)
    assert "Traceback" not in result.stderr
    kinds = [
        row[0]
        for row in sqlite3.connect(db).execute(
            "SELECT kind FROM events WHERE run_id='orphan' ORDER BY seq"
        )
    ]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"


@pytest.mark.sqlite_only("reads the journal file with sqlite3")
def test_creating_a_run_commits_its_row_and_first_event_together(tmp_path, durable, write):
    """SIGKILL the moment the run's row exists (a stalled journal makes the window
    wide): either the run does not exist, or it has its first event."""
    write(tmp_path, "tools.py", TOOLS)
    workflow = write(
        tmp_path,
        "wf.yaml",
        "name: w\nimports: [tools]\ntasks:\n  - {id: a, tool: nap, input: {seconds: 30}}\n",
    )
    db = tmp_path / ".durable" / "journal.db"
    process = subprocess.Popen(
        [shutil.which("durable") or "durable", "run", str(workflow), "--run-id", "k1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # "run k1 started": the run exists by now
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    connection = sqlite3.connect(db)
    runs = connection.execute("SELECT count(*) FROM runs").fetchone()[0]
    firsts = connection.execute("SELECT kind FROM events ORDER BY seq LIMIT 1").fetchall()
    connection.close()
    assert runs == 1 and firsts == [("run_started",)]


@pytest.mark.sqlite_only("checkpoints the file's WAL under the readers")
def test_many_readers_during_a_checkpoint_never_see_a_malformed_journal(
    tmp_path, durable, write, as_json
):
    """`runs` and `status` started together while another process checkpoints a large
    WAL: each reads the journal as SQLite does and answers, never "malformed"."""
    tasks = "\n".join(f"  - {{id: t{i}, tool: echo, input: {i}}}" for i in range(3000))
    workflow = write(tmp_path, "wf.yaml", f"name: big\ntasks:\n{tasks}\n")
    db = tmp_path / "j.db"
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.close()
    durable("run", workflow, "--db", db, "--run-id", "big1", "-j", "64", cwd=tmp_path, check=0)
    # Fill the WAL again with a second run, then checkpoint it while 8 readers start.
    durable("run", workflow, "--db", db, "--run-id", "big2", "-j", "64", cwd=tmp_path, check=0)
    results: list[subprocess.CompletedProcess[str]] = []
    stop = threading.Event()

    def checkpoint() -> None:
        connection = sqlite3.connect(db, isolation_level=None)
        while not stop.is_set():
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.close()

    checkpointer = threading.Thread(target=checkpoint)
    checkpointer.start()
    try:
        readers = [
            threading.Thread(target=lambda args=args: results.append(durable(*args, cwd=tmp_path)))
            for args in [("runs", "--db", db, "--json"), ("status", "big1", "--db", db)] * 4
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
    finally:
        stop.set()
        checkpointer.join()
    assert len(results) == 8
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "malformed" not in result.stderr


@pytest.mark.sqlite_only("a journal file in a read-only folder")
def test_reading_commands_work_in_a_read_only_folder(tmp_path, durable, write, as_json):
    """`runs`, `status`, `log`, `output` and `check` never write; they work on a journal
    whose folder (and file) they cannot write, WAL left behind by a crash included."""
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("needs setpriv to drop root, which ignores file permissions")
    probe = _as_nobody(["durable", "--version"], tmp_path)
    if probe.returncode != 0:
        pytest.skip(
            "an unprivileged user cannot run durable from this install (its venv or "
            f"checkout is not readable by others): {probe.stderr.strip()[:200]}"
        )
    # pytest's own tmp folders are private to root: use one anybody may enter.
    tmp_path = Path(tempfile.mkdtemp(prefix="durable-ro-"))
    os.chmod(tmp_path, 0o755)
    workflow = write(tmp_path, "wf.yaml", "name: w\ntasks:\n  - {id: a, tool: echo, input: 7}\n")
    durable("run", workflow, "--run-id", "ro1", cwd=tmp_path, check=0)
    folder = tmp_path / ".durable"
    for path in folder.iterdir():
        if path.is_file():
            os.chmod(path, 0o444)
    os.chmod(folder, 0o555)
    try:
        for args in (
            ["runs"],
            ["status", "ro1"],
            ["log", "ro1"],
            ["output", "ro1", "a"],
            ["check"],
        ):
            result = _as_nobody(["durable", *args, "--db", str(folder / "journal.db")], tmp_path)
            assert result.returncode == 0, (args, result.stderr)
            assert "readonly" not in result.stderr
        assert set(os.listdir(folder)) >= {"journal.db"}
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(tmp_path)


def _as_nobody(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command as an unprivileged user when we are root (root ignores modes)."""
    executable = shutil.which(command[0]) or command[0]
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run(
        [*prefix, executable, *command[1:]],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": "/tmp"},
    )


@pytest.mark.sqlite_only("deletes the journal file under the run")
def test_a_journal_deleted_during_a_run_stops_the_run(
    tmp_path, start, stop, write, wait_for_events
):
    write(tmp_path, "tools.py", TOOLS)
    workflow = write(
        tmp_path,
        "wf.yaml",
        "name: w\nimports: [tools]\ntasks:\n  - {id: slow, tool: nap, input: {seconds: 20}}\n",
    )
    db = tmp_path / ".durable" / "journal.db"
    process = start("run", workflow, "--run-id", "d1", cwd=tmp_path)
    try:
        wait_for_events(db, "d1", "task_started", process=process)
        shutil.rmtree(tmp_path / ".durable")
        out, err = process.communicate(timeout=10)  # noticed within a second or so
    finally:
        stop(process)
    assert process.returncode == 2, (out, err)
    assert "deleted or replaced" in err
    assert "Traceback" not in err


@pytest.mark.sqlite_only("a file-size limit stands in for a full disk")
def test_a_full_disk_is_named_and_the_run_resumes_once_there_is_room(
    tmp_path, durable, write, as_json
):
    """A file-size limit stands in for a full disk: SQLite cannot grow the journal.
    The error says so (not "cannot rollback"), and after the limit is lifted the run
    resumes and finishes."""
    tasks = "\n".join(f"  - {{id: t{i}, tool: echo, input: '${{params.big}}'}}" for i in range(300))
    workflow = write(
        tmp_path,
        "wf.yaml",
        f"name: full\nmax_concurrency: 4\nparams: {{big: {'y' * 2000}}}\ntasks:\n{tasks}\n",
    )

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    result = subprocess.run(
        [shutil.which("durable") or "durable", "run", str(workflow), "--run-id", "f1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limited,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "file-size limit" in result.stderr.splitlines()[0]
    assert "cannot rollback" not in result.stderr
    assert "Traceback" not in result.stderr
    durable("check", cwd=tmp_path, check=0)
    durable("resume", "f1", cwd=tmp_path, check=0)
    status = as_json(durable("status", "f1", "--json", cwd=tmp_path))
    assert {task["state"] for task in status["tasks"].values()} == {"succeeded"}


@pytest.mark.sqlite_only("plants a run row in the file with sqlite3")
def test_a_run_id_read_from_a_journal_is_checked_before_it_names_a_file(
    tmp_path, durable, write, no_traceback
):
    workflow = write(tmp_path, "wf.yaml", "name: w\ntasks:\n  - {id: a, tool: echo, input: 1}\n")
    durable("run", workflow, "--run-id", "good", cwd=tmp_path, check=0)
    db = tmp_path / ".durable" / "journal.db"
    connection = sqlite3.connect(db)
    row = connection.execute(
        "SELECT workflow, spec, spec_hash, params, base_dir, created_at FROM runs"
    ).fetchone()
    connection.execute(
        "INSERT INTO runs (run_id, workflow, spec, spec_hash, params, base_dir, created_at)"
        " VALUES ('../../escape', ?, ?, ?, ?, ?, ?)",
        row,
    )
    connection.commit()
    connection.close()
    result = durable("resume", "../../escape", cwd=tmp_path)
    assert result.returncode == 2
    no_traceback(result)
    assert "bad run id" in result.stderr
    assert not (tmp_path / "escape").exists() and not (tmp_path / ".durable" / "escape").exists()
    # The rest of the journal stays readable.
    listing = durable("runs", cwd=tmp_path)
    no_traceback(listing)
    assert "good" in listing.stdout


def test_every_session_of_a_run_works_in_the_run_s_directory(tmp_path, durable, write, as_json):
    """A resume started elsewhere runs the remaining tasks where the run began."""
    home = tmp_path / "home"
    home.mkdir()
    write(home, "tools.py", TOOLS)
    workflow = write(
        home,
        "wf.yaml",
        """
name: w
imports: [tools]
tasks:
  - {id: first, tool: where}
  - {id: boom, tool: shell, input: {command: "test -e go"}, dependencies: [first]}
  - {id: second, tool: where, dependencies: [boom]}
  - {id: touch, tool: shell, input: {command: "touch made-here"}, dependencies: [boom]}
""",
    )
    db = tmp_path / "j.db"
    assert durable("run", workflow, "--db", db, "--run-id", "w1", cwd=home).returncode == 1
    (home / "go").touch()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    durable("resume", "w1", "--db", db, cwd=elsewhere, check=0)
    outputs = as_json(durable("output", "w1", "--db", db, cwd=elsewhere))
    assert outputs["first"] == outputs["second"] == str(home)
    assert (home / "made-here").exists() and not (elsewhere / "made-here").exists()


def test_durable_check_reports_a_healthy_journal(tmp_path, durable, write):
    workflow = write(tmp_path, "wf.yaml", "name: w\ntasks:\n  - {id: a, tool: echo, input: 1}\n")
    durable("run", workflow, "--run-id", "h1", cwd=tmp_path, check=0)
    result = durable("check", cwd=tmp_path, check=0)
    assert "ok (1 run(s), 4 events, checksums verified)" in result.stdout
    durable("check", "h1", cwd=tmp_path, check=0)
    missing = durable("check", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "run 'nope' not found" in missing.stderr


@pytest.mark.sqlite_only("flips a byte inside the journal file")
def test_a_damaged_event_is_reported_and_only_its_run_is_refused(
    tmp_path, durable, write, no_traceback
):
    workflow = write(
        tmp_path,
        "wf.yaml",
        'name: w\ntasks:\n  - {id: a, tool: echo, input: "${run.id}-output-41"}\n',
    )
    durable("run", workflow, "--run-id", "bad", cwd=tmp_path, check=0)
    durable("run", workflow, "--run-id", "fine", cwd=tmp_path, check=0)
    db = tmp_path / ".durable" / "journal.db"
    _flip_in_output(db, "bad")
    for args in (
        ["status", "bad"],
        ["output", "bad"],
        ["resume", "bad"],
        ["check"],
        ["check", "bad"],
    ):
        result = durable(*args, cwd=tmp_path)
        no_traceback(result)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "run 'bad'" in result.stderr.splitlines()[0] or "damaged" in result.stderr
    check = durable("check", cwd=tmp_path)
    # The task's start and success, committed together, are one row (`task_ran`).
    assert "run 'bad': event 2 (task_ran of task 'a') does not match its checksum" in check.stderr
    durable("status", "fine", cwd=tmp_path, check=0)
    durable("check", "fine", cwd=tmp_path, check=0)
    # `runs` reads each run's summary, written with its events before the damage, and
    # no event: it lists both runs as they ended. Reading the damaged event is
    # what the commands above refuse to do.
    listing = durable("runs", "--json", cwd=tmp_path, check=0)
    assert {doc["run_id"]: doc["status"] for doc in json.loads(listing.stdout)} == {
        "bad": "succeeded",
        "fine": "succeeded",
    }


def _flip_in_output(db: Path, run_id: str) -> None:
    """Change one byte of a task's committed output inside the file itself, as a disk
    fault would (the append-only triggers stop an UPDATE, not a flipped bit)."""
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (data,) = connection.execute(
        "SELECT data FROM events WHERE run_id = ? AND kind IN ('task_succeeded', 'task_ran')",
        (run_id,),
    ).fetchone()
    connection.close()
    raw = db.read_bytes()
    at = raw.index(bytes(data))
    changed = bytearray(raw)
    changed[at + len(data) - 1] ^= 0x01  # "...-41" becomes "...-40"
    db.write_bytes(bytes(changed))


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("process deaths and setpriv are Linux-specific here")
