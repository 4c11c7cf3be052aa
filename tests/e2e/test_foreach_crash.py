"""A SIGKILL campaign for `foreach`: kill a three-level fan-out at seeded moments, resume.

The workflow (`workflow_document`): `a` returns a list of 100 items; `b` maps over
it (100 instances, each a small dict derived from its item); `c` maps over `b`'s
output (100 instances, each a small list); `d` joins `c`'s output. Every tool call
appends one line, `TASK ATTEMPT PID`, to the file named by `FOREACH_LOG` (O_APPEND,
so the lines of every process of a run land in one file and can be counted), and
the instances sleep a few milliseconds, so that kills land while they run.

Each case runs the real `durable` command against a real SQLite file and kills it
(SIGKILL) once per session, as soon as the journal holds the event that marks its
moment: `b`'s `task_expanded` (its instances not yet started, or just starting),
some level-2 instances done, the last of them done (`b`'s own success about to be
committed), `c`'s `task_expanded`, some level-3 instances done,
the join started; and, in the last cases, a second kill during the resume itself.
How many successes a kill waits for is drawn from a seeded `random.Random`, so a
failing case is reproduced by its id. Whatever the journal holds after the kill was
committed before it.

After each kill `durable check` exits 0 and the run reads as interrupted; then
`durable resume` (killed again in the two-kill cases) until the run succeeds. Then:

1. a task whose `task_succeeded` was committed before a kill is never called after
   it: one committed before the first kill was called exactly once across all the
   processes of the run (one committed only before the second kill may have been
   called in the first process too, its success lost with it). Every task was
   called at least once, none twice in one process, and per kill at most
   `max_concurrency` calls were lost (ran without their success being committed),
   each called again later;
2. every output (`durable output RUN`) equals an uninterrupted run's;
3. the journal holds exactly one `task_expanded` for `b` and one for `c`, and one
   `task_succeeded` per task;
4. `durable status` lists exactly `a`, `b`, `c`, `d`, `b[0]`..`b[99]` and
   `c[0]`..`c[99]`, all succeeded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

ITEMS = 100
CONCURRENCY = 8
RUN_ID = "fanout"
POLL_SECONDS = 0.001
DEADLINE_SECONDS = 30.0

B = [f"b[{i}]" for i in range(ITEMS)]
C = [f"c[{i}]" for i in range(ITEMS)]
#: What calls a tool: the foreach tasks `b` and `c` themselves never do.
TOOL_TASKS = frozenset({"a", "d", *B, *C})
ALL_TASKS = frozenset({*TOOL_TASKS, "b", "c"})

# The run's `task_succeeded` events come in this order, level by level: a group
# succeeds only once all its instances have, and the next level waits for it.
A_DONE = 1  # a
B_INSTANCES_DONE = A_DONE + ITEMS  # ... b[0..99]
B_DONE = B_INSTANCES_DONE + 1  # b
C_INSTANCES_DONE = B_DONE + ITEMS  # ... c[0..99]
C_DONE = C_INSTANCES_DONE + 1  # c
SLACK = 5  # successes left to go when a kill during a level fires: it lands in that level

TOOLS = '''\
"""The foreach campaign's tools: a logged call, a short sleep, a deterministic output."""

from __future__ import annotations

import os
import time
import zlib

import durable


def _called() -> None:
    context = durable.current_context()
    line = f"{context.task_id} {context.attempt} {os.getpid()}\\n"
    fd = os.open(os.environ["FOREACH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@durable.tool
def make_list(n: int) -> list:
    _called()
    return [{"k": i, "word": f"w{(i * 37) % 101:03d}"} for i in range(n)]


@durable.tool
def work(x: dict | list, i: int | None = None) -> dict | list:
    _called()
    time.sleep(0.01)
    if i is not None:  # level 2: an item of a's list, and its index
        return {"k": x["k"], "i": i, "sq": x["k"] * x["k"], "word": x["word"].upper()}
    # level 3: an output of level 2
    return [x["k"], x["sq"] + x["i"], zlib.crc32(x["word"].encode())]


@durable.tool
def join(parts: list) -> dict:
    _called()
    time.sleep(0.4)
    return {
        "n": len(parts),
        "keys": [part[0] for part in parts],
        "total": sum(part[1] for part in parts),
        "crc": zlib.crc32(repr(parts).encode()),
    }
'''


def workflow_document() -> dict[str, Any]:
    return {
        "name": "foreach_crash",
        "max_concurrency": CONCURRENCY,
        "imports": ["tools"],
        "tasks": [
            {"id": "a", "tool": "make_list", "input": {"n": ITEMS}},
            {
                "id": "b",
                "tool": "work",
                "foreach": "${a.output}",
                "input": {"x": "${item}", "i": "${index}"},
            },
            {"id": "c", "tool": "work", "foreach": "${b.output}", "input": {"x": "${item}"}},
            {"id": "d", "tool": "join", "input": "${c.output}"},
        ],
    }


def write_workflow(write: Callable[..., Path], folder: Path) -> Path:
    write(folder, "tools.py", TOOLS)
    return write(folder, "workflow.yaml", yaml.safe_dump(workflow_document(), sort_keys=False))


def log_env(log: Path) -> dict[str, str]:
    return {"FOREACH_LOG": str(log)}


# -- the moments -------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """Kill a session once the journal holds `count` events of `kind` (for `task_id`),
    then `delay` seconds later. `done`: tasks whose success must be committed by then;
    `undone`: tasks whose success must not (the kill landed where it was aimed)."""

    kind: str
    task_id: str | None
    count: int
    done: tuple[str, ...]
    undone: tuple[str, ...]
    delay: float = 0.0


def b_expanded() -> Kill:
    return Kill("task_expanded", "b", 1, done=("a",), undone=("b",))


def c_expanded() -> Kill:
    return Kill("task_expanded", "c", 1, done=("b",), undone=("c",))


def level2(rng: random.Random) -> Kill:
    target = rng.randint(A_DONE + 1, B_INSTANCES_DONE - SLACK)
    return Kill("task_succeeded", None, target, done=("a",), undone=("b",))


def level3(rng: random.Random) -> Kill:
    target = rng.randint(B_DONE + 1, C_INSTANCES_DONE - SLACK)
    return Kill("task_succeeded", None, target, done=("b",), undone=("c",))


def last_b_instance() -> Kill:
    # `b`'s own success is emitted once the last instance's is committed: the kill
    # lands just before it is committed, or just after (c's expansion may follow).
    return Kill("task_succeeded", None, B_INSTANCES_DONE, done=("a", *B), undone=("c",))


def join(rng: random.Random) -> Kill:
    # The join sleeps 0.4 s: a kill at most 0.15 s after its start lands in it.
    delay = round(rng.uniform(0.0, 0.15), 3)
    return Kill("task_started", "d", 1, done=("c",), undone=("d",), delay=delay)


def moments() -> list[Any]:
    """One list of kills per case: the first kills `durable run`, the next `durable
    resume`. Seeded: a case's id is enough to draw its moments again."""
    cases = [pytest.param([b_expanded()], id="b-expanded")]
    for seed in (1, 2):
        cases.append(pytest.param([level2(random.Random(seed))], id=f"level2-seed{seed}"))
    cases.append(pytest.param([last_b_instance()], id="last-b-instance"))
    cases.append(pytest.param([c_expanded()], id="c-expanded"))
    for seed in (3, 4):
        cases.append(pytest.param([level3(random.Random(seed))], id=f"level3-seed{seed}"))
    cases.append(pytest.param([join(random.Random(5))], id="join-seed5"))
    rng = random.Random(6)
    cases.append(
        pytest.param([level2(rng), c_expanded()], id="level2-then-resume-c-expanded-seed6")
    )
    rng = random.Random(7)
    cases.append(
        pytest.param([b_expanded(), level2(rng)], id="b-expanded-then-resume-level2-seed7")
    )
    rng = random.Random(8)
    cases.append(pytest.param([level2(rng), level3(rng)], id="level2-then-resume-level3-seed8"))
    return cases


# -- reading what happened ---------------------------------------------------------


def calls(log: Path) -> list[tuple[str, int, int]]:
    """Every tool call of a run, in order: (task id, attempt, pid)."""
    if not log.exists():
        return []
    found = []
    for line in log.read_text().splitlines():
        task_id, attempt, pid = line.split()
        found.append((task_id, int(attempt), int(pid)))
    return found


def successes(journal_rows: Callable[..., list[Any]], db: Path) -> list[str]:
    rows = journal_rows(
        db,
        "SELECT task_id FROM events WHERE run_id = ? AND kind IN ('task_succeeded', 'task_ran')"
        " ORDER BY seq",
        (RUN_ID,),
    )
    return [task_id for (task_id,) in rows]


def expansions(journal_rows: Callable[..., list[Any]], db: Path) -> list[str]:
    rows = journal_rows(
        db,
        "SELECT task_id FROM events WHERE run_id = ? AND kind = 'task_expanded' ORDER BY seq",
        (RUN_ID,),
    )
    return [task_id for (task_id,) in rows]


def history(journal_rows: Callable[..., list[Any]], db: Path, task_ids: list[str]) -> str:
    """The journal's events of these tasks and of the run, for a failure's message."""
    wanted = set(task_ids)
    rows = journal_rows(
        db,
        "SELECT seq, task_id, attempt, kind FROM events WHERE run_id = ? ORDER BY seq",
        (RUN_ID,),
    )
    return "\n".join(
        f"  {seq:5d} {kind:16s} {task_id or '-'} attempt={attempt}"
        for seq, task_id, attempt, kind in rows
        if task_id is None or task_id in wanted
    )


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(
    durable: Callable[..., subprocess.CompletedProcess[str]],
    write: Callable[..., Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """Every output of the same workflow run once without interruption."""
    folder = tmp_path_factory.mktemp("foreach_reference")
    workflow = write_workflow(write, folder)
    db, log = folder / "journal.db", folder / "calls.log"
    durable("run", workflow, "--db", db, "--run-id", RUN_ID, cwd=folder, env=log_env(log), check=0)
    ran = Counter(task_id for task_id, _, _ in calls(log))
    assert set(ran) == TOOL_TASKS and set(ran.values()) == {1}
    outputs = json.loads(durable("output", RUN_ID, "--db", db, cwd=folder, check=0).stdout)
    assert set(outputs) == ALL_TASKS
    assert outputs["d"]["n"] == ITEMS
    assert outputs["d"]["keys"] == list(range(ITEMS))
    assert outputs["c"] == [outputs[c] for c in C]
    return outputs


@pytest.fixture
def launch(
    start: Callable[..., subprocess.Popen[str]], stop: Callable[..., None]
) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start one session of the run in the background; every one is stopped at the end."""
    started: list[subprocess.Popen[str]] = []

    def launch_session(args: list[Any], cwd: Path, log: Path) -> subprocess.Popen[str]:
        process = start(*args, cwd=cwd, env=log_env(log), stdout=subprocess.DEVNULL)
        started.append(process)
        return process

    yield launch_session
    for process in started:
        stop(process)


# -- the campaign --------------------------------------------------------------------


@pytest.mark.parametrize("kills", moments())
def test_foreach_survives_kills(
    kills: list[Kill],
    launch: Callable[..., subprocess.Popen[str]],
    durable: Callable[..., subprocess.CompletedProcess[str]],
    write: Callable[..., Path],
    journal_rows: Callable[..., list[Any]],
    count_events: Callable[..., int],
    wait_for_events: Callable[..., int],
    reference: dict[str, Any],
    tmp_path: Path,
) -> None:
    workflow = write_workflow(write, tmp_path)
    db, log = tmp_path / "journal.db", tmp_path / "calls.log"
    commands = [["run", workflow, "--run-id", RUN_ID]] + [["resume", RUN_ID]] * (len(kills) - 1)

    pids: list[int] = []  # of each killed session
    committed: list[set[str]] = []  # successes committed when each was killed
    for k, (command, kill) in enumerate(zip(commands, kills, strict=True)):
        # A second kill aims at a later moment than the first reached.
        target = max(kill.count, count_events(db, RUN_ID, kill.kind, kill.task_id) + 1)
        process = launch([*command, "--db", db], tmp_path, log)
        wait_for_events(
            db,
            RUN_ID,
            kill.kind,
            target,
            task_id=kill.task_id,
            process=process,
            timeout=DEADLINE_SECONDS,
            poll=POLL_SECONDS,
        )
        if kill.delay:
            time.sleep(kill.delay)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL, f"session {k} ended before its kill"
        pids.append(process.pid)

        done = successes(journal_rows, db)
        committed.append(set(done))
        assert len(done) == len(set(done)), f"a task succeeded twice: {Counter(done)}"
        assert set(kill.done) <= committed[k], (
            f"kill {k} landed before {kill.done} had committed: {sorted(committed[k])}"
        )
        assert not set(kill.undone) & committed[k], (
            f"kill {k} landed after {kill.undone} had committed"
        )
        if k:
            assert committed[k - 1] <= committed[k]
        durable("check", "--db", db, cwd=tmp_path, check=0)
        status = json.loads(
            durable("status", RUN_ID, "--db", db, "--json", cwd=tmp_path, check=0).stdout
        )
        assert status["status"] == "interrupted"

    resumed = durable("resume", RUN_ID, "--db", db, cwd=tmp_path, env=log_env(log))
    assert resumed.returncode == 0, (
        f"the last resume exited {resumed.returncode}\nstdout: {resumed.stdout}\n"
        f"stderr: {resumed.stderr}\njournal:\n{history(journal_rows, db, ['b', 'c', 'd'])}"
    )

    # (4) the run succeeded, with exactly the instances it expanded into.
    status = json.loads(
        durable("status", RUN_ID, "--db", db, "--json", cwd=tmp_path, check=0).stdout
    )
    assert status["status"] == "succeeded"
    assert set(status["tasks"]) == ALL_TASKS
    not_succeeded = {t: s["state"] for t, s in status["tasks"].items() if s["state"] != "succeeded"}
    assert not not_succeeded
    durable("check", RUN_ID, "--db", db, cwd=tmp_path, check=0)

    # (2) the outputs are an uninterrupted run's.
    outputs = json.loads(durable("output", RUN_ID, "--db", db, cwd=tmp_path, check=0).stdout)
    assert set(outputs) == set(reference)
    differ = sorted(t for t in reference if outputs[t] != reference[t])
    assert not differ, f"outputs differ from the uninterrupted run's: {differ}"

    # (3) each foreach task was expanded once, and each task succeeded once.
    assert sorted(expansions(journal_rows, db)) == ["b", "c"]
    succeeded = Counter(successes(journal_rows, db))
    assert set(succeeded) == ALL_TASKS and set(succeeded.values()) == {1}

    # (1) a committed success is never called again; every task is called.
    made = calls(log)
    total = Counter(task_id for task_id, _, _ in made)
    assert set(total) == TOOL_TASKS, (
        f"never called: {sorted(TOOL_TASKS - set(total))}; "
        f"not a tool task: {sorted(set(total) - TOOL_TASKS)}"
    )
    final_pids = {pid for _, _, pid in made} - set(pids)
    assert len(final_pids) <= 1, f"calls from unknown processes: {final_pids}"
    sessions = [Counter(t for t, _, pid in made if pid == p) for p in pids]
    sessions.append(Counter(t for t, _, pid in made if pid in final_pids))
    for k, session in enumerate(sessions):
        twice = sorted(t for t, n in session.items() if n > 1)
        assert not twice, f"session {k} called these twice: {twice}"
    for k, before in enumerate(committed):
        later: Counter[str] = Counter()
        for session in sessions[k + 1 :]:
            later.update(session)
        again = sorted(t for t in before & TOOL_TASKS if later[t])
        assert not again, (
            f"committed before kill {k}, yet called again after it: {again}\n"
            f"calls: {[c for c in made if c[0] in again]}\n"
            f"journal:\n{history(journal_rows, db, again)}"
        )
        lost = sorted(set(sessions[k]) - before)
        assert len(lost) <= CONCURRENCY, (
            f"kill {k}: {len(lost)} calls without a committed success (> {CONCURRENCY}): {lost}"
        )
        assert set(lost) <= set(later), f"lost at kill {k}, never called again"
    # What had committed at the first kill was called once in all: before it, only.
    once = sorted(t for t in committed[0] & TOOL_TASKS if total[t] != 1)
    assert not once, (
        f"committed before the first kill, yet called {[total[t] for t in once]} times: {once}"
    )
