"""Crash campaigns for the fleet (`durable worker`, `durable run --workers`) on PostgreSQL.

1. `test_crash_campaign_500_tasks`: a generated 500-task workflow (`workflow_document`:
   a fan-out, chains, diamonds, a random mesh, `when:` conditions of which some are
   false, `trigger: all_done` tasks, and a `retries: 2` task whose first attempt fails
   through a marker file) is handed to three workers (`-j 8`, lease 1 s). The
   submitting `durable run --workers` is SIGKILLed early on, and then a random worker
   is SIGKILLed 20 times (a fresh one started in its place each time), at moments drawn
   from a seeded `random.Random` (`DURABLE_FLEET_SEED`, printed, and named in every
   failure): each once the journal holds a drawn number of successes, and a drawn
   pause after the previous kill, so the kills spread over the run on any machine.
   The tools sleep 0.2-1.2 s (seeded by task): a run of a few ms per task is over
   before 20 kills and their restarts fit in it, and slots full at a kill are what
   the bound below is about. Every tool execution appends `start TASK ATTEMPT PID`
   and, after its work, `end TASK ATTEMPT PID` to one log (O_APPEND). Then:
   - the run ends `succeeded` (`durable status --json`), `durable check` exits 0;
   - each task succeeded exactly once in the journal (one `task_succeeded`), and
     exactly the tasks the uninterrupted run succeeded;
   - every committed success ran exactly once, to its end: one execution of its
     attempt, none of a later attempt; no attempt ran twice (the fence);
   - an execution whose outcome was not committed is one its worker could not
     commit: by a killed worker, or one whose lease was taken over; per killed worker
     at most its 8 slots, and in all at most 20 kills x 8 slots;
   - the outputs (`durable output`) are those of the same workflow run in-process,
     uninterrupted, on SQLite.
   It takes about 35 s (the fleet run about 30).
2. `test_postgres_restart_mid_run`: 100 tasks of about 50 ms (two chains) with two
   workers; the server is restarted (`pg_ctlcluster ... restart`) in the middle; the
   workers reconnect, the run succeeds, every task succeeded exactly once, a quarter
   of them at least after the restart. PostgreSQL is started again at the end whatever
   happens. It restarts the one server every PostgreSQL test shares: do not run it
   beside others (pytest-xdist), nor where others share the server.
3. `test_workers_survive_their_connections_being_cut`: what a restart does to the
   workers' connections, 0.1 s apart, without a restart (asyncpg reports a statement
   sent on a connection just ended as an InternalClientError; a reconnect can be cut
   while it is being set up).
4. `test_opening_a_journal_while_another_process_makes_it`: journals opened at once
   on a fresh database, while one of them creates the schema.
5. `test_the_follower_survives_its_connection_being_cut`: `run --workers` following
   its run rides out its connections being ended.
6. `test_no_lease_is_lost_when_no_worker_dies`: a lease granted by a transaction
   begun by the last COMMIT is measured from the clock, not from that transaction's
   start (`now()`).

Each of 3-6 was a bug when it was written; the exceptions named `...Bug` are now
plain assertion failures.

All need PostgreSQL (`tests/pg.py`: skipped locally without it, failed on CI). The
server may be shared: a command or worker it refuses at connection time (every slot
taken, or it is restarting) is tried again (`REFUSALS`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pg
import pytest
import yaml

pytestmark = pytest.mark.e2e

#: The kill schedule's seed (a failure names it; set this to replay one).
SEED = int(os.environ.get("DURABLE_FLEET_SEED", "20250611"))
#: The shape of the generated workflow is fixed, whatever the kill seed.
DAG_SEED = 7
TASKS = 500
WORKERS = 3
SLOTS = 8
LEASE = 1.0
KILLS = 20
#: A task whose worker is killed this many times while it runs is failed (the guard
#: against a tool that kills its worker): random kills are not that, so it is high.
MAX_DEATHS = 10
RUN_ID = "fleet"
CAMPAIGN_DEADLINE = 100.0  # seconds for the fleet run, kills included

TOOLS = '''\
"""The fleet campaign's tools: a logged execution, a short sleep, a deterministic output."""

from __future__ import annotations

import json
import os
import random
import time
import zlib

import durable

#: How long the tools sleep, relatively (the reference run sleeps 1% as long).
SCALE = float(os.environ.get("FLEET_SLEEP", "1"))


def _note(what: str) -> None:
    context = durable.current_context()
    line = f"{what} {context.task_id} {context.attempt} {os.getpid()}\\n"
    path = os.path.join(os.environ["FLEET_DIR"], "calls.log")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _result(k: str, deps: list) -> dict:
    digest = zlib.crc32(json.dumps([k, deps], sort_keys=True).encode())
    return {"k": k, "v": digest % 100, "h": digest}


@durable.tool
def work(k: str, deps: list) -> dict:
    _note("start")
    time.sleep(random.Random(k).uniform(0.2, 1.2) * SCALE)
    result = _result(k, deps)
    _note("end")
    return result


@durable.tool
def flaky(k: str, deps: list) -> dict:
    """Fails its first execution ever (a marker file says it happened), then works."""
    _note("start")
    marker = os.path.join(os.environ["FLEET_DIR"], k + ".failed")
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        pass
    else:
        _note("fail")
        raise RuntimeError("the first attempt fails on purpose")
    time.sleep(random.Random(k).uniform(0.2, 1.2) * SCALE)
    result = _result(k, deps)
    _note("end")
    return result
'''

#: What `flaky` raises, as the journal records it.
FLAKY_ERROR = "RuntimeError: the first attempt fails on purpose"


# -- the workflow ------------------------------------------------------------------


def workflow_document(total: int = TASKS) -> dict[str, Any]:
    """`total` tasks: `src`; a fan-out of 60; 8 chains of 15; 30 diamonds; `flaky`; a
    random mesh; two `all_done` sinks. About one task in eight has a `when:` that is
    false for one output in three (what depends on a skipped task is skipped, unless
    its trigger is `all_done`)."""
    rng = random.Random(DAG_SEED)
    tasks: list[dict[str, Any]] = []
    ids: list[str] = []

    def add(
        task_id: str,
        deps: list[str],
        *,
        tool: str = "work",
        cond: bool = False,
        trigger: str | None = None,
        retries: int | None = None,
    ) -> None:
        task: dict[str, Any] = {
            "id": task_id,
            "tool": tool,
            "input": {"k": task_id, "deps": [f"${{{dep}.output}}" for dep in deps]},
        }
        if deps:
            task["dependencies"] = list(deps)
        if cond and deps:
            task["when"] = f"${{{deps[0]}.output.v}} % 3 != 0"
        if trigger:
            task["trigger"] = trigger
        if retries is not None:
            task["retries"] = retries
            task["retry_delay"] = 0.2
        tasks.append(task)
        ids.append(task_id)

    def maybe() -> bool:
        return rng.random() < 0.12

    add("src", [])
    fans = [f"fan{i:02d}" for i in range(60)]
    for fan in fans:
        add(fan, ["src"], cond=maybe())
    for c in range(8):
        previous = fans[c]
        for j in range(15):
            add(f"ch{c}_{j:02d}", [previous], cond=j > 0 and rng.random() < 0.04)
            previous = f"ch{c}_{j:02d}"
    for d in range(30):
        top = f"dia{d:02d}"
        add(top, [rng.choice(ids[1:])])
        add(f"{top}_l", [top], cond=maybe())
        add(f"{top}_r", [top])
        add(f"{top}_b", [f"{top}_l", f"{top}_r"], trigger="all_done" if d % 3 == 0 else None)
    add("flaky", ["src"], tool="flaky", retries=2)
    mesh = 0
    while len(ids) < total - 2:
        deps = rng.sample(ids[1:], rng.randint(1, 3))
        add(
            f"mix{mesh:03d}",
            deps,
            cond=maybe(),
            trigger="all_done" if rng.random() < 0.06 else None,
        )
        mesh += 1
    conditional = [task["id"] for task in tasks if "when" in task]
    add("gather", [*rng.sample(conditional, 12), "flaky"], trigger="all_done")
    chain_ends = [f"ch{c}_14" for c in range(8)]
    add("sink", [*chain_ends, "gather", ids[-3]], trigger="all_done")
    assert len(tasks) == total and len(set(ids)) == total
    return {"name": "fleet_crash", "max_concurrency": 64, "imports": ["fleettools"], "tasks": tasks}


def write_workflow(folder: Path, document: dict[str, Any]) -> Path:
    (folder / "fleettools.py").write_text(TOOLS)
    path = folder / "workflow.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# -- a server shared with others ------------------------------------------------------

#: What the server answers a new connection when it cannot take it: every connection
#: slot is taken (the test server may be shared with other work that takes most of them
#: for a while), or it is starting or stopping (someone restarts it). A command that
#: could not connect at all is tried again; a worker that could not start is started
#: again. (A worker that loses its connection mid-run retries on its own, with backoff:
#: that is part of what is tested.)
REFUSALS = ("too many clients", "the database system is")


def refused(text: str) -> bool:
    return any(refusal in text for refusal in REFUSALS)


def run_cli(
    durable: Callable[..., subprocess.CompletedProcess[str]],
    *args: Any,
    cwd: Path,
    check: int | None = 0,
    **options: Any,
) -> subprocess.CompletedProcess[str]:
    """`durable ARGS`, tried again while the server refuses the connection."""
    deadline = time.monotonic() + 60
    while True:
        result = durable(*args, cwd=cwd, **options)
        if not refused(result.stderr) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if check is not None:
        assert result.returncode == check, (
            f"durable {' '.join(map(str, args))} exited {result.returncode}\n"
            f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}"
        )
    return result


def transient() -> tuple[type[BaseException], ...]:
    """The driver's errors of a server that cannot answer for now (InternalClientError:
    a connection the server has just ended, see CUT_BUG_REASON)."""
    import asyncpg

    return (
        asyncpg.InternalClientError,
        asyncpg.TooManyConnectionsError,
        asyncpg.CannotConnectNowError,
        asyncpg.AdminShutdownError,
        asyncpg.InterfaceError,  # connection closed (ConnectionDoesNotExistError...)
        OSError,
    )


def on_server(call: Callable[[], Any], timeout: float = 60) -> Any:
    """`call()`, tried again while the server cannot answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except transient():
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@contextmanager
def fresh_database() -> Iterator[str]:
    """As `pg.fresh_database()`, tried again while the server cannot answer."""
    base = pg.require_pg()
    name = f"durable_test_{uuid.uuid4().hex[:8]}"
    on_server(lambda: pg.execute(base, f'CREATE DATABASE "{name}"'))
    try:
        yield pg.with_database(base, name)
    finally:
        on_server(lambda: pg.execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- reading what happened ---------------------------------------------------------


class Poller:
    """One connection to the run's database, for the cheap polls of the campaign
    (a connection each would cost this 2-core machine more than the polling); made
    again if the server ends it."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._loop = asyncio.new_event_loop()
        self._conn: Any = None

    def count(self, run_id: str, kind: str) -> int:
        """Committed events of a kind; 0 while durable has not made its tables yet."""
        import asyncpg

        async def count() -> int:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self._dsn, timeout=10)
            try:
                return await self._conn.fetchval(
                    "SELECT count(*) FROM durable.events WHERE run_id = $1 AND kind = $2",
                    run_id,
                    kind,
                    timeout=10,
                )
            except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
                return 0
            except BaseException:
                self._conn.terminate()
                raise

        return on_server(lambda: self._loop.run_until_complete(count()))

    def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            try:
                self._loop.run_until_complete(self._conn.close(timeout=5))
            except Exception:
                self._conn.terminate()
        self._loop.close()


def tool_log(log: Path) -> list[tuple[str, str, int, int]]:
    """Every line of the tools' log: (what, task id, attempt, pid)."""
    if not log.exists():
        return []
    found = []
    for line in log.read_text().splitlines():
        what, task_id, attempt, pid = line.split()
        found.append((what, task_id, int(attempt), int(pid)))
    return found


def journal_events(
    durable: Callable[..., subprocess.CompletedProcess[str]], dsn: str, run_id: str, cwd: Path
) -> list[dict[str, Any]]:
    out = run_cli(durable, "log", run_id, "--db", dsn, "--json", cwd=cwd).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def lost_story(
    pid: int,
    lost: list[tuple[str, int, int]],
    lines: list[tuple[str, str, int, int]],
    events: list[dict[str, Any]],
    workers_log: str,
) -> str:
    """For a failure's message: what a worker ran without committing it, and what the
    journal says of those tasks."""
    mine = [(t, a) for t, a, p in lost if p == pid]
    ended = {(t, a) for what, t, a, p in lines if p == pid and what == "end"}
    tasks = {t for t, _ in mine}
    story = [f"worker pid {pid} ran, without its outcome committed:"]
    story += [f"  {t} attempt {a}{' (ran to its end)' if (t, a) in ended else ''}" for t, a in mine]
    story.append("the journal, for those tasks:")
    story += [
        f"  {e['seq']:6d} {e['kind']:15s} {e['task_id']} attempt={e.get('attempt')} "
        f"{e.get('error') or ''}"
        for e in events
        if e.get("task_id") in tasks
    ]
    story += [line for line in workers_log.splitlines() if "refused" in line or "lost" in line]
    return "\n".join(story)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Name the seed in any failure of the block."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"[DURABLE_FLEET_SEED={seed}] {exc}") from exc
    except pytest.fail.Exception as exc:
        pytest.fail(f"[DURABLE_FLEET_SEED={seed}] {exc}")


# -- the processes -------------------------------------------------------------------


@pytest.fixture
def launch(
    start: Callable[..., subprocess.Popen[Any]], stop: Callable[..., None]
) -> Iterator[Callable[..., subprocess.Popen[Any]]]:
    """Start `durable ...` in the background, its stderr to a file; all stopped at the end."""
    started: list[subprocess.Popen[Any]] = []
    files: list[Any] = []

    def launch_one(*args: Any, cwd: Path, env: dict[str, str], err: Path) -> subprocess.Popen[Any]:
        handle = err.open("w")
        files.append(handle)
        process = start(*args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=handle)
        process.err = err  # type: ignore[attr-defined]
        started.append(process)
        return process

    yield launch_one
    for process in started:
        stop(process)
    for handle in files:
        handle.close()


#: Bugs of durable: see `test_workers_survive_their_connections_being_cut`.
CUT_BUG_REASON = (
    "bugs: a worker dies when the server ends its connections (a restart, "
    "pg_terminate_backend) instead of reconnecting: (1) a statement sent on a connection "
    "the server has just ended, before asyncpg has seen it close, raises asyncpg's "
    "InternalClientError ('cannot switch to state 15; another operation (2) is in "
    "progress'), which durable/fleet/worker.py `_is_connection_error` does not count as a "
    "lost connection; (2) `Worker._reconnect` retries only JournalError and OSError, but "
    "`PgJournal.open` (and `register` after it) raise asyncpg's own errors when the new "
    "connection is ended while it is being set up"
)


class CutBug(AssertionError):
    """A worker died of the bugs of CUT_BUG_REASON."""


def died_of_the_cut_bug(text: str) -> bool:
    """A worker's stderr shows it died of one of the two bugs of CUT_BUG_REASON."""
    return ("InternalClientError" in text and "another operation" in text) or (
        "Traceback" in text and ", in _reconnect" in text
    )


def err_of(process: subprocess.Popen[Any]) -> str:
    return process.err.read_text()  # type: ignore[attr-defined]


class Fleet:
    """`size` workers of one database; `kill(i)` SIGKILLs one and starts a fresh one.
    `tend()` starts again a worker the server refused to connect at its start (a
    shared server's limit, not durable's doing); any other exit fails the test."""

    def __init__(
        self,
        launch: Callable[..., subprocess.Popen[Any]],
        args: list[Any],
        folder: Path,
        env: dict[str, str],
        size: int,
    ) -> None:
        self._launch, self._args, self._folder, self._env = launch, args, folder, env
        #: What to do when a worker died of the connection bugs (CUT_BUG_REASON):
        #: None fails the test as any other death does.
        self.on_cut_bug: Callable[[str], None] | None = None
        self.spawned: list[subprocess.Popen[Any]] = []
        self.killed: list[int] = []
        self.refused_starts = 0
        self.members = [self._spawn() for _ in range(size)]

    def _spawn(self) -> subprocess.Popen[Any]:
        err = self._folder / f"worker{len(self.spawned) + 1:02d}.err"
        process = self._launch("worker", *self._args, cwd=self._folder, env=self._env, err=err)
        self.spawned.append(process)
        return process

    def tend(self) -> None:
        for i, process in enumerate(self.members):
            if process.poll() is None:
                continue
            text = err_of(process)
            if self.on_cut_bug is not None and died_of_the_cut_bug(text):
                self.on_cut_bug(text)
            assert refused(text) and "started on" not in text, (
                f"worker pid {process.pid} exited {process.returncode} on its own:\n" + text[-3000:]
            )
            self.refused_starts += 1
            self.members[i] = self._spawn()

    def kill(self, i: int) -> None:
        self.tend()
        process = self.members[i]
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        self.killed.append(process.pid)
        self.members[i] = self._spawn()

    def wait_started(self, timeout: float = 60) -> None:
        """Until every worker has said it started: the journal's tables are made.
        (Not to be raced: a process that opens a fresh journal while another is making
        it may fail, see `test_opening_a_journal_while_another_process_makes_it`.)"""
        deadline = time.monotonic() + timeout
        while not all("started on" in err_of(process) for process in self.members):
            self.tend()
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.02)

    def log(self) -> str:
        return "".join(err_of(process) for process in self.spawned)


# -- 1. the campaign -----------------------------------------------------------------


def test_crash_campaign_500_tasks(
    tmp_path: Path,
    durable: Callable[..., subprocess.CompletedProcess[str]],
    launch: Callable[..., subprocess.Popen[Any]],
) -> None:
    print(f"DURABLE_FLEET_SEED={SEED}")
    document = workflow_document()
    workflow = write_workflow(tmp_path, document)
    tool_tasks = {task["id"] for task in document["tasks"]}

    # The same workflow, uninterrupted, in-process, on SQLite (its tools sleep 1%
    # as long: what they return does not depend on it).
    began = time.monotonic()
    (tmp_path / "reference").mkdir()
    ref_env = {"FLEET_DIR": str(tmp_path / "reference"), "FLEET_SLEEP": "0.01"}
    ref_db = tmp_path / "j.db"
    run_cli(durable, "run", workflow, "--db", ref_db, "--run-id", "ref", "-q",
            cwd=tmp_path, env=ref_env, timeout=120)  # fmt: skip
    reference = json.loads(run_cli(durable, "output", "ref", "--db", ref_db, cwd=tmp_path).stdout)
    ref_status = json.loads(
        run_cli(durable, "status", "ref", "--db", ref_db, "--json", cwd=tmp_path).stdout
    )
    reference_seconds = time.monotonic() - began
    ref_states = {task_id: task["state"] for task_id, task in ref_status["tasks"].items()}
    tally = Counter(ref_states.values())
    assert ref_status["status"] == "succeeded"
    assert set(tally) == {"succeeded", "skipped"}, tally
    assert 10 <= tally["skipped"] <= 200, f"the conditions skip too few or too many: {tally}"
    assert set(reference) == {t for t, state in ref_states.items() if state == "succeeded"}
    assert ref_states["flaky"] == "succeeded"
    # Some `all_done` task ran although a dependency of it was skipped.
    assert any(
        ref_states[task["id"]] == "succeeded"
        and any(ref_states[dep] == "skipped" for dep in task["dependencies"])
        for task in document["tasks"]
        if task.get("trigger") == "all_done"
    )
    succeeding = len(reference)

    rng = random.Random(SEED)
    # A kill lands once the journal holds its number of successes, and a seeded pause
    # after the previous kill: spread over the run, whatever the machine's speed.
    targets = sorted(rng.sample(range(10, succeeding - 60), KILLS))
    gaps = [round(rng.uniform(0.4, 1.0), 3) for _ in range(KILLS)]
    victims = [rng.randrange(WORKERS) for _ in range(KILLS)]
    submitter_kill = rng.randint(2, 8)

    (tmp_path / "fleet").mkdir()
    env = {"FLEET_DIR": str(tmp_path / "fleet")}
    log = tmp_path / "fleet" / "calls.log"
    with fresh_database() as dsn, seeded(SEED):
        poller = Poller(dsn)
        try:
            began = time.monotonic()
            deadline = began + CAMPAIGN_DEADLINE
            fleet = Fleet(
                launch, ["--db", dsn, "-j", SLOTS, "--lease", LEASE], tmp_path, env, WORKERS
            )
            fleet.wait_started()

            def waiting(what: str) -> None:
                fleet.tend()
                assert time.monotonic() < deadline, (
                    f"{what}: not within {CAMPAIGN_DEADLINE:g}s; "
                    f"{poller.count(RUN_ID, 'task_succeeded')} successes"
                )
                time.sleep(0.01)

            submitted = ["run", workflow, "--db", dsn, "--workers", "--run-id", RUN_ID,
                         "--max-deaths", MAX_DEATHS]  # fmt: skip
            submitter = launch(*submitted, cwd=tmp_path, env=env, err=tmp_path / "submitter.err")
            # Kill the submitter early, as it follows the run it handed over.
            while poller.count(RUN_ID, "task_succeeded") < submitter_kill:
                if submitter.poll() is not None and refused(err_of(submitter)):
                    assert not poller.count(RUN_ID, "run_started"), err_of(submitter)
                    submitter = launch(
                        *submitted, cwd=tmp_path, env=env, err=tmp_path / "submitter2.err"
                    )
                assert submitter.poll() is None, (
                    f"`durable run --workers` exited {submitter.returncode} before its kill:\n"
                    + err_of(submitter)
                )
                waiting("the run's first successes")
            os.killpg(submitter.pid, signal.SIGKILL)
            assert submitter.wait(timeout=30) == -signal.SIGKILL

            kill_times: list[float] = []
            last = time.monotonic()
            for k, (target, gap, victim) in enumerate(zip(targets, gaps, victims, strict=True)):
                while (
                    poller.count(RUN_ID, "task_succeeded") < target or time.monotonic() < last + gap
                ):
                    assert not poller.count(RUN_ID, "run_finished"), (
                        f"the run finished after only {k} of {KILLS} kills"
                    )
                    waiting(f"kill {k + 1}")
                fleet.kill(victim)
                last = time.monotonic()
                kill_times.append(round(last - began, 1))
            while not poller.count(RUN_ID, "run_finished"):
                waiting("the run's end")
            fleet_seconds = time.monotonic() - began
            fleet.tend()
        finally:
            poller.close()

        # The run succeeded, as the uninterrupted one did, and the journal checks whole.
        status = json.loads(
            run_cli(durable, "status", RUN_ID, "--db", dsn, "--json", cwd=tmp_path).stdout
        )
        states = {task_id: task["state"] for task_id, task in status["tasks"].items()}
        assert status["status"] == "succeeded", {
            task_id: (task["state"], task["error"])
            for task_id, task in status["tasks"].items()
            if task["state"] not in ("succeeded", "skipped")
        }
        assert states == ref_states
        checked = run_cli(durable, "check", "--db", dsn, cwd=tmp_path, check=None)
        assert checked.returncode == 0, checked.stdout + checked.stderr

        # Each task succeeded exactly once in the journal.
        events = journal_events(durable, dsn, RUN_ID, tmp_path)
        successes = Counter(e["task_id"] for e in events if e["kind"] == "task_succeeded")
        assert set(successes) == set(reference), set(successes) ^ set(reference)
        twice = {task_id: n for task_id, n in successes.items() if n != 1}
        assert not twice, f"tasks succeeded more than once: {twice}"
        success_attempt = {
            e["task_id"]: e["attempt"] for e in events if e["kind"] == "task_succeeded"
        }
        # The attempts whose outcome was committed: successes, and flaky's failure.
        committed: dict[tuple[str, int], str] = {}
        lease_losses = 0
        for e in events:
            if e["kind"] == "task_retrying" and e["error"].startswith("lease lost"):
                lease_losses += 1
            elif e["kind"] in ("task_succeeded", "task_failed", "task_retrying"):
                committed[(e["task_id"], e["attempt"])] = e.get("error") or e["kind"]
        failed = sorted(key for key, why in committed.items() if why != "task_succeeded")
        assert all(committed[key] == FLAKY_ERROR for key in failed), {
            key: committed[key] for key in failed
        }

        # Every committed success ran exactly once, to its end; no attempt ran twice.
        lines = tool_log(log)
        starts = Counter((t, a) for what, t, a, _ in lines if what == "start")
        ends = Counter((t, a) for what, t, a, _ in lines if what == "end")
        assert {t for t, _ in starts} <= tool_tasks
        doubled = {key: n for key, n in starts.items() if n != 1}
        assert not doubled, f"an attempt was executed more than once: {doubled}"
        for task_id, attempt in success_attempt.items():
            assert starts[(task_id, attempt)] == 1 == ends[(task_id, attempt)], (
                f"{task_id}: its committed success (attempt {attempt}) did not run exactly once"
            )
            later = sorted(a for t, a in starts if t == task_id and a > attempt)
            assert not later, f"{task_id} ran again (attempts {later}) after its success"
        assert set(committed) <= set(starts), "an outcome was committed for no execution"
        # flaky failed once ever (its marker file), and that failure is committed,
        # unless its worker died before it could commit it.
        fails = [(t, a) for what, t, a, _ in lines if what == "fail"]
        assert len(fails) == 1 and fails[0][0] == "flaky", fails
        assert failed in ([], fails), (failed, fails)

        # What ran without its outcome being committed died with its worker, or lost
        # its lease: at most a worker's slots per kill.
        lost = [(t, a, pid) for what, t, a, pid in lines if what == "start"]
        lost = [(t, a, pid) for t, a, pid in lost if (t, a) not in committed]
        per_pid = Counter(pid for _, _, pid in lost)
        by_killed = [per_pid.get(pid, 0) for pid in fleet.killed]
        by_others = {pid: n for pid, n in per_pid.items() if pid not in fleet.killed}
        over = [pid for pid in fleet.killed if per_pid.get(pid, 0) > SLOTS]
        assert not over, f"a kill lost more than {SLOTS} executions: {by_killed}\n" + lost_story(
            over[0], lost, lines, events, fleet.log()
        )
        total = sum(starts.values())
        assert total == succeeding + len(failed) + len(lost)
        assert total - succeeding - len(failed) <= KILLS * SLOTS, (total, succeeding, failed)

        # The outputs are the uninterrupted run's.
        outputs = json.loads(run_cli(durable, "output", RUN_ID, "--db", dsn, cwd=tmp_path).stdout)
        assert set(outputs) == set(reference)
        differ = sorted(task_id for task_id in reference if outputs[task_id] != reference[task_id])
        assert not differ, f"outputs differ from the uninterrupted run's: {differ[:20]}"

        print(
            f"reference run {reference_seconds:.1f}s; fleet run {fleet_seconds:.1f}s "
            f"({succeeding} tasks succeeded, {len(tool_tasks) - succeeding} skipped); "
            f"kills at {kill_times} s; executions {total} = {succeeding} successes "
            f"+ {len(failed)} failed attempt + {len(lost)} lost; lost per kill {by_killed} "
            f"(mean {sum(by_killed) / KILLS:.1f}), by workers not killed {by_others}; "
            f"'lease lost' retries journaled {lease_losses}; late outcomes refused "
            f"{fleet.log().count('late outcome refused')}; most attempts of a task "
            f"{max(success_attempt.values())}; worker starts refused by the server "
            f"{fleet.refused_starts}"
        )


# -- 2. PostgreSQL restarts under the workers -----------------------------------------------

RESTART_CHAINS = 2
RESTART_LENGTH = 50


def restart_document() -> dict[str, Any]:
    """2 chains of 50 tasks of about 50 ms (the `slow` tool): 100 tasks, about 3 s
    from end to end, of which the restart interrupts the middle."""
    tasks = []
    for c in range(RESTART_CHAINS):
        for j in range(RESTART_LENGTH):
            deps = [f"c{c}_{j - 1:02d}"] if j else []
            tasks.append(
                {
                    "id": f"c{c}_{j:02d}",
                    "tool": "slow",
                    "input": {"k": f"c{c}_{j:02d}", "deps": [f"${{{d}.output}}" for d in deps]},
                }
            )
    return {"name": "pg_restart", "max_concurrency": 8, "imports": ["slowtools"], "tasks": tasks}


SLOW_TOOLS = """\
import os
import time

import durable


def _started(k: str) -> None:
    context = durable.current_context()
    path = os.path.join(os.environ["FLEET_DIR"], "calls.log")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"start {k} {context.attempt} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)


@durable.tool
def slow(k: str, deps: list) -> dict:
    _started(k)
    time.sleep(0.05)
    return {"k": k, "n": 1 + sum(dep["n"] for dep in deps)}


@durable.tool
def nap(k: str, s: float) -> dict:
    _started(k)
    time.sleep(s)
    return {"k": k}
"""


def cluster() -> list[str]:
    """`pg_ctlcluster`'s version and cluster arguments for the local server."""
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if shutil.which("pg_ctlcluster") is None or len(versions) != 1:
        pytest.skip("no single local cluster to restart with pg_ctlcluster")
    return [versions[0], "main"]


@contextmanager
def not_a_subreaper() -> Iterator[None]:
    """pytest, as conftest.py makes it, adopts the orphans of its descendants; and
    pg_ctlcluster leaves the server it starts an orphan (a daemon). Adopted, the
    server would be killed as a leftover process after the test: so pytest is no
    subreaper while pg_ctlcluster runs, and the server goes to init, as it should."""
    if not sys.platform.startswith("linux"):
        yield
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    was = ctypes.c_int(0)
    libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    try:
        yield
    finally:
        if was.value:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def pg_ctl(action: str) -> subprocess.CompletedProcess[str]:
    with not_a_subreaper():
        return subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster(), action],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def wait_reachable(dsn: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            pg.fetch(dsn, "SELECT 1")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextmanager
def server_kept_running(base: str) -> Iterator[None]:
    """Whatever happens in the block, PostgreSQL answers again after it."""
    try:
        yield
    finally:
        if pg_ctl("status").returncode != 0:
            pg_ctl("start")
        wait_reachable(base)


def test_postgres_restart_mid_run(
    tmp_path: Path,
    durable: Callable[..., subprocess.CompletedProcess[str]],
    launch: Callable[..., subprocess.Popen[Any]],
) -> None:
    base = pg.require_pg()
    if not base.startswith(
        ("postgresql://postgres@127.0.0.1:", "postgresql://postgres@localhost:")
    ):
        pytest.skip(f"{pg.redacted(base)} is not the local server this test may restart")
    cluster()
    if pg_ctl("status").returncode != 0:
        pytest.skip("pg_ctlcluster cannot see the local cluster: " + pg_ctl("status").stderr)
    (tmp_path / "slowtools.py").write_text(SLOW_TOOLS)
    workflow = tmp_path / "workflow.yaml"
    workflow.write_text(yaml.safe_dump(restart_document(), sort_keys=False))
    env = {"FLEET_DIR": str(tmp_path)}
    total = RESTART_CHAINS * RESTART_LENGTH

    with fresh_database() as dsn, server_kept_running(base):
        fleet = Fleet(launch, ["--db", dsn, "-j", 2], tmp_path, env, 2)
        fleet.wait_started()
        run_cli(durable, "run", workflow, "--db", dsn, "--workers", "--detach", "--run-id", "rs",
                cwd=tmp_path)  # fmt: skip
        began = time.monotonic()
        poller = Poller(dsn)
        try:
            while (before := poller.count("rs", "task_succeeded")) < total // 3:
                assert time.monotonic() < began + 60, "the run did not get going"
                time.sleep(0.01)
        finally:
            poller.close()
        restarting = time.monotonic()
        restarted = pg_ctl("restart")
        restart_seconds = time.monotonic() - restarting
        if restarted.returncode != 0:
            message = f"cannot restart PostgreSQL: {restarted.stderr.strip() or restarted.stdout}"
            if pg.on_ci():
                pytest.fail(message)
            pytest.skip(message)
        restart_at = restarting - began
        wait_reachable(dsn)
        # When the new server started, on the journal's clock (`at`: this machine's).
        back_at = pg.fetch(dsn, "SELECT extract(epoch FROM pg_postmaster_start_time())")[0][0]
        back_at = float(back_at)
        poller = Poller(dsn)
        try:
            while not poller.count("rs", "run_finished"):
                fleet.tend()
                assert time.monotonic() < began + 90, "the run did not finish after the restart"
                time.sleep(0.02)
        finally:
            poller.close()
        elapsed = time.monotonic() - began
        fleet.tend()
        for process in fleet.members:  # both lost their connections, and made new ones
            assert "lost the database" in err_of(process), err_of(process)
            assert "reconnected" in err_of(process), err_of(process)

        status = json.loads(
            run_cli(durable, "status", "rs", "--db", dsn, "--json", cwd=tmp_path).stdout
        )
        assert status["status"] == "succeeded", status
        events = journal_events(durable, dsn, "rs", tmp_path)
        successes = Counter(e["task_id"] for e in events if e["kind"] == "task_succeeded")
        assert len(successes) == total and set(successes.values()) == {1}, successes
        # The run was in its middle: work was left for after the restart.
        later = [e for e in events if e["kind"] == "task_succeeded" and e["at"] > back_at]
        assert len(later) >= total // 4, (
            f"only {len(later)} successes after the restart (the server was up again at "
            f"{back_at:.2f}; {before} successes before it)"
        )
        outputs = json.loads(run_cli(durable, "output", "rs", "--db", dsn, cwd=tmp_path).stdout)
        assert outputs == {
            f"c{c}_{j:02d}": {"k": f"c{c}_{j:02d}", "n": j + 1}
            for c in range(RESTART_CHAINS)
            for j in range(RESTART_LENGTH)
        }
        run_cli(durable, "check", "--db", dsn, cwd=tmp_path)
        calls = (tmp_path / "calls.log").read_text().splitlines()
        starts = Counter(line.split()[1] for line in calls)
        print(
            f"restart at {restart_at:.1f}s with {before} of {total} succeeded, "
            f"pg_ctlcluster restart took {restart_seconds:.1f}s; {len(later)} successes after "
            f"it; run done in {elapsed:.1f}s; executions {sum(starts.values())} "
            f"(run again: {sorted(t for t, n in starts.items() if n > 1)})"
        )


# -- 3. connections cut under the workers ---------------------------------------------


def test_workers_survive_their_connections_being_cut(
    tmp_path: Path,
    durable: Callable[..., subprocess.CompletedProcess[str]],
    launch: Callable[..., subprocess.Popen[Any]],
) -> None:
    """What a restart does to every connection, without restarting anything: the
    server ends the workers' connections (`pg_terminate_backend`), every 0.1 s while
    the run goes. Each worker must reconnect every time and the run succeed, each
    task once. (A connection the server ends is, for a moment, one asyncpg has not
    seen close: a statement sent then fails with InternalClientError, which the
    worker does not take for a lost connection: it dies. It takes a few cuts.)"""
    (tmp_path / "slowtools.py").write_text(SLOW_TOOLS)
    workflow = tmp_path / "workflow.yaml"
    workflow.write_text(yaml.safe_dump(restart_document(), sort_keys=False))
    env = {"FLEET_DIR": str(tmp_path)}
    total = RESTART_CHAINS * RESTART_LENGTH
    cut = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    with fresh_database() as dsn:
        fleet = Fleet(launch, ["--db", dsn, "-j", 2], tmp_path, env, 2)
        fleet.wait_started()

        def cut_bug(text: str) -> None:
            raise CutBug(text[-1500:])

        fleet.on_cut_bug = cut_bug
        run_cli(durable, "run", workflow, "--db", dsn, "--workers", "--detach", "--run-id", "cut",
                cwd=tmp_path)  # fmt: skip
        began = time.monotonic()
        cuts = 0
        while not pg.fetch(dsn, "SELECT count(*) FROM durable.events WHERE kind = 'run_finished'")[
            0
        ][0]:
            fleet.tend()
            assert time.monotonic() < began + 60, "the run did not finish"
            cuts += pg.fetch(dsn, cut)[0][0] > 0
            time.sleep(0.1)
        fleet.tend()
        status = json.loads(
            run_cli(durable, "status", "cut", "--db", dsn, "--json", cwd=tmp_path).stdout
        )
        assert status["status"] == "succeeded", status
        events = journal_events(durable, dsn, "cut", tmp_path)
        successes = Counter(e["task_id"] for e in events if e["kind"] == "task_succeeded")
        assert len(successes) == total and set(successes.values()) == {1}, successes
        assert cuts >= 10, f"only {cuts} cuts landed"
        print(f"{cuts} cuts; run done in {time.monotonic() - began:.1f}s")


# -- 4. a journal opened while another process makes it ---------------------------------

SCHEMA_RACE_REASON = (
    "bug: durable/journal/postgres.py `PgJournal._check_schema` reads `to_regclass("
    "'durable.schema_version')`, then, in later statements (each its own snapshot), "
    "whether schema `durable` has tables; when another process commits the journal's "
    "tables between the two, it raises 'its schema 'durable' belongs to another program "
    "(it has no schema_version)': two workers and `durable run --workers` started together "
    "on a fresh database can fail so"
)


class SchemaRaceBug(AssertionError):
    """An open refused a journal that another process was making."""


def test_opening_a_journal_while_another_process_makes_it() -> None:
    """Openers (as `durable runs`, `status`, `watch` open the journal) poll a fresh
    database while another connection makes the journal in it (as the first `durable
    worker` does): each sees no journal yet, then the journal; never "another
    program's schema". Through the API in this process, so that the openers are many
    and fast enough to land in the moment the tables are committed (the commands, each
    a process, land there too, more rarely: see SCHEMA_RACE_REASON)."""
    from durable.errors import JournalError
    from durable.journal.postgres import PgJournal

    async def race(dsn: str) -> Counter[str]:
        seen: Counter[str] = Counter()
        made = asyncio.Event()

        async def opener() -> None:
            while not made.is_set():
                try:
                    journal = await PgJournal.open(dsn, create=False, readonly=True)
                except JournalError as exc:
                    seen[str(exc).split(": ", 1)[-1]] += 1
                else:
                    await journal.close()
                    seen["opened"] += 1

        async def maker() -> None:
            await asyncio.sleep(0.05)
            journal = await PgJournal.open(dsn, create=True)
            await journal.close()
            await asyncio.sleep(0.02)
            made.set()

        await asyncio.gather(maker(), *(opener() for _ in range(8)))
        return seen

    for _ in range(5):
        with fresh_database() as dsn:
            seen = asyncio.run(race(dsn))
        assert seen["opened"] and seen["no durable journal in this database yet"], seen
        wrong = {why: n for why, n in seen.items() if "another program" in why}
        if wrong:
            raise SchemaRaceBug(f"{wrong} (of {dict(seen)})")


# -- 5. the follower of a fleet run, its connection cut -----------------------------------

FOLLOWER_BUG_REASON = (
    "bug: `durable run --workers` (and `durable watch`), following a fleet run on "
    "PostgreSQL, dies with a traceback and exit code 1 (which means 'finished with failed "
    "tasks') when its connection is ended, while the workers go on and the run succeeds: "
    "the follower's reads (durable/report/watch.py `watch` -> durable/journal/postgres.py "
    "`_checked`) never reconnect, and cli/journal_cmds.py `_with_journal` lets asyncpg's "
    "InterfaceError / InternalClientError through as a traceback"
)


class FollowerBug(AssertionError):
    """The follower died of its cut connection."""


def test_the_follower_survives_its_connection_being_cut(
    tmp_path: Path,
    durable: Callable[..., subprocess.CompletedProcess[str]],
    launch: Callable[..., subprocess.Popen[Any]],
) -> None:
    """`durable run --workers` follows the run; the server ends the follower's
    connections (only its: the newest of the database); it must go on following and
    exit 0 when the run succeeds, as an uncut one does."""
    (tmp_path / "slowtools.py").write_text(SLOW_TOOLS)
    workflow = tmp_path / "workflow.yaml"
    workflow.write_text(yaml.safe_dump(restart_document(), sort_keys=False))
    env = {"FLEET_DIR": str(tmp_path)}
    with fresh_database() as dsn:
        fleet = Fleet(launch, ["--db", dsn, "-j", 2], tmp_path, env, 2)
        fleet.wait_started()
        poller = Poller(dsn)
        try:
            poller.count("fw", "run_started")  # its connection, made before `since`
            time.sleep(0.05)
            since = pg.fetch(dsn, "SELECT now()")[0][0]
            follower = launch(
                "run", workflow, "--db", dsn, "--workers", "--run-id", "fw",
                cwd=tmp_path, env=env, err=tmp_path / "follower.err",
            )  # fmt: skip
            while poller.count("fw", "task_succeeded") < 20:
                assert follower.poll() is None, err_of(follower)
                fleet.tend()
                time.sleep(0.01)
            # The follower's connections: made after the workers', which are not cut.
            cut = pg.fetch(
                dsn,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                f" AND backend_start > '{since.isoformat()}'::timestamptz",
            )[0][0]
            assert cut >= 1
            while not poller.count("fw", "run_finished"):
                fleet.tend()
                time.sleep(0.02)
        finally:
            poller.close()
        code = follower.wait(timeout=30)
        fleet.tend()
        status = json.loads(
            run_cli(durable, "status", "fw", "--db", dsn, "--json", cwd=tmp_path).stdout
        )
        assert status["status"] == "succeeded"
        if "Traceback" in err_of(follower):
            raise FollowerBug(f"exit {code}:\n{err_of(follower)[-800:]}")
        assert code == 0, err_of(follower)


# -- 6. a lease taken in the transaction that commits a long task ---------------------

STALE_LEASE_REASON = (
    "bug (in the uncommitted change to durable/fleet/store.py that ends a claiming "
    "transaction with `COMMIT; BEGIN`, `FleetStore._transaction`): the next transaction "
    "is begun when the last one commits, and PostgreSQL's now() is its start time; so "
    "the leases it grants (`_WRITE`: lease_until = now() + lease) and the times it "
    "compares (not_before, lease_until < now() in `_CLAIMABLE_RUNS` and the claim) are "
    "as old as the wait between the two: tasks claimed when a task that ran longer than "
    "the lease commits get a lease already over, and another, healthy, worker takes them "
    "over ('lease lost') and runs them again"
)


class StaleLeaseBug(AssertionError):
    """A lease was lost with no worker killed nor paused."""


def test_no_lease_is_lost_when_no_worker_dies(
    tmp_path: Path,
    durable: Callable[..., subprocess.CompletedProcess[str]],
    launch: Callable[..., subprocess.Popen[Any]],
) -> None:
    """Two healthy workers (-j 4, lease 1 s); `a` runs 2 s, then 8 tasks of 0.6 s
    depend on it. The worker that commits `a` claims 4 of them in the same
    transaction; no lease may run out (nobody stops renewing), so nothing is taken
    over, and every task runs once."""
    (tmp_path / "slowtools.py").write_text(SLOW_TOOLS)
    tasks = [{"id": "a", "tool": "nap", "input": {"k": "a", "s": 2.0}}]
    tasks += [
        {"id": f"f{i}", "tool": "nap", "input": {"k": f"f{i}", "s": 0.6}, "dependencies": ["a"]}
        for i in range(8)
    ]
    workflow = tmp_path / "workflow.yaml"
    workflow.write_text(
        yaml.safe_dump({"name": "leases", "imports": ["slowtools"], "tasks": tasks})
    )
    env = {"FLEET_DIR": str(tmp_path)}
    with fresh_database() as dsn:
        fleet = Fleet(launch, ["--db", dsn, "-j", 4, "--lease", 1], tmp_path, env, 2)
        fleet.wait_started()
        run_cli(durable, "run", workflow, "--db", dsn, "--workers", "--detach", "--run-id", "ls",
                cwd=tmp_path)  # fmt: skip
        poller = Poller(dsn)
        try:
            began = time.monotonic()
            while not poller.count("ls", "run_finished"):
                fleet.tend()
                assert time.monotonic() < began + 30, "the run did not finish"
                time.sleep(0.02)
        finally:
            poller.close()
        fleet.tend()
        events = journal_events(durable, dsn, "ls", tmp_path)
        lost = [
            e["task_id"]
            for e in events
            if e["kind"] == "task_retrying" and e["error"].startswith("lease lost")
        ]
        if lost:
            raise StaleLeaseBug(f"leases lost with no worker killed: {lost}")
        starts = Counter(
            line.split()[1] for line in (tmp_path / "calls.log").read_text().split("\n") if line
        )
        assert set(starts.values()) == {1} and len(starts) == 9, starts
