"""DBOS's side of the peers comparison: one workload, one process, one fresh SQLite file.

Run it with the interpreter of DBOS's own virtualenv (setup.sh); compare.py does:

    .venvs/dbos/bin/python dbos_side.py wide --db /tmp/x/dbos.sqlite
    .venvs/dbos/bin/python dbos_side.py crash --db ... --lines FILE   # then again: recovery

It prints one JSON line: the workload's seconds, counted from just before the
workflow starts (after `DBOS.launch()` has created and migrated the system database)
to its result in hand, and the PRAGMAs in force on DBOS's own connection.

How each workload is written, as DBOS's docs write such work:

- wide, io, crash: one parent workflow enqueues N child workflows on a queue
  (`DBOS.register_queue`, `worker_concurrency=J`) and waits for each handle's result.
  A child is one `@DBOS.workflow` whose output DBOS checkpoints in its status row;
  the parent's enqueues and `get_result`s are checkpointed steps of the parent, which
  is what lets a relaunch recover the fan-out without running a finished child again.
- chain: one workflow calling N `@DBOS.step`s in sequence, each taking the previous
  step's output (one checkpoint row per step).

The queue's polling interval (`--poll`, default 0.01 s; DBOS's default is 1 s, which
would hold a 1,000-task queue at 16 claims a second) and `get_result`'s (the same) are
the only settings changed from DBOS's defaults. `--wal` (the `dbos-wal` variant of
compare.py, not in its default set) also puts the fresh file in WAL mode before DBOS
opens it, to compare storage settings like for like. Crash recovery is DBOS's own: a
process launched on the same system database with the same executor id (`local`) and
application version recovers the PENDING parent at `DBOS.launch()`; this script then
waits for that workflow's result.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time

from workloads import side_parser, tasks_and_jobs

APP = "durable_peers"
PARENT_ID = "peers-crash-parent"


def main() -> None:
    parser = side_parser(
        __doc__, db_help="the SQLite system database file", jobs_help="queue worker_concurrency"
    )
    parser.add_argument("--poll", type=float, default=0.01, help="queue polling interval, s")
    parser.add_argument(
        "--wal",
        action="store_true",
        help="put a new database file in WAL mode before DBOS opens it (not DBOS's default)",
    )
    args = parser.parse_args()
    tasks, jobs = tasks_and_jobs(args)

    import logging

    from dbos import DBOS

    poll = args.poll
    sleep = args.sleep
    lines = args.lines

    @DBOS.workflow(name="noop")
    def noop(i: int) -> int:
        return i

    @DBOS.workflow(name="nap")
    def nap(i: int) -> int:
        time.sleep(sleep)
        return i

    @DBOS.workflow(name="append")
    def append(i: int) -> int:
        with open(lines, "a") as f:  # type: ignore[arg-type]
            f.write(f"{i:04d}\n")
        return i

    children = {"wide": noop, "io": nap, "crash": append}

    @DBOS.workflow(name="fan_out")
    def fan_out(kind: str, n: int) -> int:
        queue = DBOS.retrieve_queue("peers")
        handles = [queue.enqueue(children[kind], i) for i in range(n)]
        return sum(h.get_result(polling_interval_sec=poll) for h in handles)

    @DBOS.step(name="inc")
    def inc(n: int) -> int:
        return n + 1

    @DBOS.workflow(name="chain")
    def chain(n: int) -> int:
        value = 0
        for _ in range(n):
            value = inc(value)
        return value

    DBOS(
        config={
            "name": APP,
            "system_database_url": f"sqlite:///{args.db}",
            "application_version": "peers",
            "log_level": "WARNING",
        }
    )
    recovering = args.workload == "crash" and os.path.exists(args.db)
    if args.wal and not os.path.exists(args.db):
        # journal_mode=WAL is kept in the file, so every connection DBOS opens uses
        # it; synchronous stays SQLite's default, FULL (an fsync of the WAL per commit).
        import sqlite3

        wal = sqlite3.connect(args.db)
        wal.execute("PRAGMA journal_mode=WAL")
        wal.close()
    DBOS.launch()
    # Persisted in the system database; a recovering process finds it there already.
    DBOS.register_queue("peers", worker_concurrency=jobs, polling_interval_sec=poll)
    logging.getLogger("dbos").setLevel(logging.WARNING)

    started = time.perf_counter()
    if args.workload == "chain":
        result = chain(tasks)
        assert result == tasks, result
    elif args.workload == "crash" and recovering:
        # launch() has already started recovering the parent; wait for it.
        result = DBOS.retrieve_workflow(PARENT_ID).get_result(polling_interval_sec=poll)
    elif args.workload == "crash":
        from dbos import SetWorkflowID

        with SetWorkflowID(PARENT_ID):
            result = fan_out("crash", tasks)
    else:
        result = fan_out(args.workload, tasks)
    seconds = time.perf_counter() - started
    if args.workload != "chain":
        assert result == tasks * (tasks - 1) // 2, result

    report = {
        "tool": "dbos",
        "version": importlib.metadata.version("dbos"),
        "workload": args.workload,
        "tasks": tasks,
        "jobs": jobs,
        "poll": poll,
        "seconds": round(seconds, 4),
        "recovered": recovering,
        "pragmas": pragmas(),
    }
    print(json.dumps(report), flush=True)
    DBOS.destroy(workflow_completion_timeout_sec=0)
    sys.stdout.flush()
    os._exit(0)


def pragmas() -> dict[str, object]:
    """The storage settings on a connection of DBOS's own pool, as SQLite reports them."""
    import sqlalchemy as sa
    from dbos._dbos import _get_dbos_instance  # internal: only to read the settings

    with _get_dbos_instance()._sys_db.engine.connect() as c:
        return {
            name: c.execute(sa.text(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "synchronous", "busy_timeout")
        }


if __name__ == "__main__":
    main()
