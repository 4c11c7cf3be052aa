"""DBOS's side of the PostgreSQL side-by-side: the wide and io workloads on a DBOS queue.

Run it with the interpreter of bench/peers_pg/.venv-dbos (see setup.sh):

    .venv-dbos/bin/python dbos_queue.py wide --workers 4 --tasks 10000
    .venv-dbos/bin/python dbos_queue.py io --workers 4 --slots 50 --tasks 2000 --sleep 0.1

A round:

1. creates a fresh database `dbos_bench_<hex>` on the server, and DBOS's system
   schema in it (`DBOS.migrate`, the documented out-of-band migration);
2. registers one queue, `bench`, with `worker_concurrency=SLOTS` and
   `polling_interval_sec=POLL` (`DBOSClient.register_queue`);
3. starts WORKERS processes, each a DBOS application (`DBOS(config=...)`,
   `DBOS.launch()`) with its own `executor_id` (`w0`, `w1`, ...; DBOS's docs require a
   distinct one per process for `worker_concurrency`), all on the same system
   database, application name and application version, so that all of them dequeue
   from the one queue; it waits until every one has launched;
4. the submitter (this process, through `DBOSClient`) enqueues TASKS workflows
   `bench_task(i)` on the queue, one `enqueue` (one transaction) each unless
   `--enqueue-batch K`, then waits until TASKS of them are SUCCESS;
5. stops the workers and drops the database.

`--prefill` holds the queue (`worker_concurrency=0`) while everything is enqueued and
times only the drain, from `Queue.set_worker_concurrency(SLOTS)` to the last
completion. A round that loses its server, or during which the server restarts
(something else restarted it), is discarded and run again.

Timed: from just before the first enqueue to the `completed_at` of the last
workflow to finish (DBOS stamps it from the database's clock, on this machine), so
the waiter's own polling adds nothing. `enqueue_s` is how long submission took.

A task is one DBOS workflow; a workflow is what a DBOS queue runs. `--step` also
wraps the body in a `@DBOS.step`, which checkpoints its output in a row of its own.
`--async` makes the workflow a coroutine (`asyncio.sleep`) run on DBOS's event loop
instead of a plain function (`time.sleep`) run on DBOS's thread pool.

Everything else is DBOS's default configuration (system database pool of 20
connections per process, LISTEN/NOTIFY on, queue polling 1 s unless `--poll`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time

APP_NAME = "dbos_bench"
APP_VERSION = "bench"
QUEUE = "bench"
WORKFLOW = "bench_task"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
# A round that loses its server (restarted by something else) is run again, up to this many times.
ROUND_ATTEMPTS = 8


# --------------------------------------------------------------------------- worker


def worker_main(args: argparse.Namespace) -> None:
    """One DBOS application process: launches, then dequeues from QUEUE until SIGTERM."""
    import asyncio
    import logging

    from dbos import DBOS

    sleep = args.sleep

    if args.step:

        @DBOS.step(name="bench_body")
        def body(i: int) -> int:
            if sleep:
                time.sleep(sleep)
            return i

        @DBOS.step(name="bench_body_async")
        async def body_async(i: int) -> int:
            if sleep:
                await asyncio.sleep(sleep)
            return i

    else:

        def body(i: int) -> int:
            if sleep:
                time.sleep(sleep)
            return i

        async def body_async(i: int) -> int:
            if sleep:
                await asyncio.sleep(sleep)
            return i

    if args.use_async:

        @DBOS.workflow(name=WORKFLOW)
        async def bench_task(i: int) -> int:
            return await body_async(i)

    else:

        @DBOS.workflow(name=WORKFLOW)
        def bench_task(i: int) -> int:
            return body(i)

    DBOS(
        config={
            "name": APP_NAME,
            "system_database_url": args.url,
            "executor_id": args.executor_id,
            "application_version": APP_VERSION,
            # The parent migrated the fresh database before starting any worker.
            "run_migrations": False,
            "log_level": "WARNING",
            **({"sys_db_pool_size": args.pool} if args.pool else {}),
        }
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    parent = os.getppid()

    def orphaned() -> None:  # the submitter died without stopping us: stop anyway
        while not stop.wait(1.0):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=orphaned, daemon=True).start()
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    print("READY", flush=True)
    stop.wait()
    DBOS.destroy(workflow_completion_timeout_sec=0)
    sys.stdout.flush()
    os._exit(0)


# --------------------------------------------------------------------------- admin


def admin_connect(server: str):
    import psycopg

    return psycopg.connect(f"{server}/postgres", autocommit=True)


def create_database(server: str) -> str:
    name = f"dbos_bench_{secrets.token_hex(6)}"
    with admin_connect(server) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(server: str, name: str) -> None:
    for attempt in range(3):
        try:
            with admin_connect(server) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except Exception as e:
            if attempt == 2:
                print(f"could not drop database {name}: {e}", file=sys.stderr)
                return
            wait_server(server, 60)


def wait_server(server: str, limit: float) -> bool:
    """Wait (at most `limit` s) until the server accepts connections again."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with admin_connect(server) as c:
                c.execute("SELECT 1")
            return True
        except Exception:
            time.sleep(1.0)
    return False


class ServerRestarted(Exception):
    """The server restarted during the round (something else restarted it)."""


def server_started(server: str) -> str:
    with admin_connect(server) as c:
        return str(c.execute("SELECT pg_postmaster_start_time()").fetchone()[0])


def xact_commit(server: str, name: str) -> int:
    """Committed transactions in database `name` so far (pg_stat_database)."""
    with admin_connect(server) as c:
        c.execute("SELECT pg_stat_force_next_flush()")
        row = c.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    return int(row[0]) if row else 0


def machine_busy(interval: float = 1.0) -> float:
    """Percent of all CPUs busy (not idle, not iowait) over `interval`, from /proc/stat."""

    def sample() -> list[int]:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:]]

    a = sample()
    time.sleep(interval)
    d = [y - x for x, y in zip(a, sample(), strict=True)]
    total = sum(d) or 1
    return 100.0 * (total - d[3] - d[4]) / total


def wait_quiet(below: float, max_wait: float) -> float:
    """Wait (at most max_wait s) for a second in which the machine is less than
    `below` percent busy, since other work on the machine slows every process of a
    round; return the last second's figure, which the round reports."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = machine_busy(1.0)
        if busy < below or time.monotonic() >= deadline:
            return round(busy, 1)


# --------------------------------------------------------------------------- one round


def start_workers(args: argparse.Namespace, url: str) -> list[subprocess.Popen]:
    procs = []
    for k in range(args.workers):
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "_worker",
            "--url",
            url,
            "--executor-id",
            f"w{k}",
            "--sleep",
            str(args.sleep),
        ]
        if args.step:
            cmd.append("--step")
        if args.use_async:
            cmd.append("--async")
        if args.pool:
            cmd += ["--pool", str(args.pool)]
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=None if args.verbose else subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        )
    return procs


def wait_ready(procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        ready = threading.Event()

        def read(p=p, ready=ready):
            for line in p.stdout:
                if line.strip() == "READY":
                    ready.set()
                    return

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"worker {p.pid} did not launch within {timeout} s")


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)


def one_round(args: argparse.Namespace) -> dict:
    import sqlalchemy as sa
    from dbos import DBOS, DBOSClient

    server = args.server.rstrip("/")
    started = server_started(server)
    name = create_database(server)
    url = f"{server}/{name}"
    procs: list[subprocess.Popen] = []
    client = None
    try:
        DBOS.migrate(url)
        client = DBOSClient(
            system_database_url=url,
            application_name=APP_NAME,
            system_database_pool_size=max(5, args.submit_threads + 2),
        )
        # --prefill holds the queue (worker_concurrency 0: no worker may claim) while
        # everything is enqueued, and releases it with Queue.set_worker_concurrency.
        queue = client.register_queue(
            QUEUE,
            worker_concurrency=0 if args.prefill else args.slots,
            polling_interval_sec=args.poll,
        )
        procs = start_workers(args, url)
        wait_ready(procs, timeout=60)

        engine = sa.create_engine(
            url.replace("postgresql://", "postgresql+psycopg://", 1),
            pool_size=max(5, args.submit_threads + 2),
        )
        count_done = sa.text(
            "SELECT count(*) FILTER (WHERE status = 'SUCCESS'),"
            " count(*) FILTER (WHERE status IN ('ERROR', 'CANCELLED', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED'))"
            " FROM dbos.workflow_status WHERE queue_name = :q"
        )
        commits_before = xact_commit(server, name)
        options = {"queue_name": QUEUE, "workflow_name": WORKFLOW}
        deadline = time.monotonic() + args.timeout

        def submit(lo: int, hi: int) -> None:
            if args.enqueue_batch <= 1:
                for i in range(lo, hi):
                    client.enqueue(options, i)
                return
            for start in range(lo, hi, args.enqueue_batch):
                with engine.begin() as conn:
                    for i in range(start, min(hi, start + args.enqueue_batch)):
                        client.enqueue_in_transaction(conn, options, i)

        n = args.submit_threads
        bounds = [args.tasks * k // n for k in range(n + 1)]
        errors: list[BaseException] = []

        def guarded(lo: int, hi: int) -> None:
            try:
                submit(lo, hi)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [
            threading.Thread(target=guarded, args=(bounds[k], bounds[k + 1])) for k in range(n)
        ]
        t0 = t_submit = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        t_enqueued = time.time()
        if args.prefill:
            t0 = time.time()
            queue.set_worker_concurrency(args.slots)

        with engine.connect() as conn:
            while True:
                done, failed = conn.execute(count_done, {"q": QUEUE}).one()
                conn.commit()
                if failed:
                    raise RuntimeError(f"{failed} workflows did not succeed")
                if done >= args.tasks:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{done}/{args.tasks} done after {args.timeout} s (--timeout)"
                    )
                time.sleep(0.02)
            t_seen = time.time()
            last_ms, per_exec = (
                conn.execute(
                    sa.text(
                        "SELECT max(completed_at) FROM dbos.workflow_status WHERE queue_name = :q"
                    ),
                    {"q": QUEUE},
                ).one()[0],
                dict(
                    conn.execute(
                        sa.text(
                            "SELECT executor_id, count(*) FROM dbos.workflow_status"
                            " WHERE queue_name = :q GROUP BY executor_id ORDER BY executor_id"
                        ),
                        {"q": QUEUE},
                    ).all()
                ),
            )
        engine.dispose()
        stop_workers(procs)
        commits = xact_commit(server, name) - commits_before
        if server_started(server) != started:
            # DBOS rides out a restart (it retries its connections), but the round's
            # time then includes the outage.
            raise ServerRestarted(f"the server restarted during the round (was up since {started})")
        seconds = last_ms / 1000.0 - t0
        return {
            "seconds": round(seconds, 4),
            "tasks_per_s": round(args.tasks / seconds, 1),
            "enqueue_s": round(t_enqueued - t_submit, 4),
            "seen_s": round(t_seen - t0, 4),
            "per_executor": per_exec,
            "commits": commits,
            "commits_per_task": round(commits / args.tasks, 2),
        }
    finally:
        if client is not None:
            client.destroy()
        stop_workers(procs)
        drop_database(server, name)


# --------------------------------------------------------------------------- CLI


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        p = argparse.ArgumentParser(prog="dbos_queue.py _worker")
        p.add_argument("_worker")
        p.add_argument("--url", required=True)
        p.add_argument("--executor-id", required=True)
        p.add_argument("--sleep", type=float, default=0.0)
        p.add_argument("--step", action="store_true")
        p.add_argument("--async", dest="use_async", action="store_true")
        p.add_argument("--pool", type=int, default=None)
        worker_main(p.parse_args())
        return

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workload", choices=["wide", "io"])
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--slots",
        type=int,
        default=None,
        help="per-worker concurrency, DBOS's worker_concurrency (default: wide 64, io 50)",
    )
    p.add_argument("--tasks", type=int, default=None, help="default: wide 10000, io 2000")
    p.add_argument(
        "--sleep", type=float, default=None, help="seconds per task (default: wide 0, io 0.1)"
    )
    p.add_argument(
        "--poll",
        type=float,
        default=1.0,
        help="the queue's polling_interval_sec (default 1.0, DBOS's default)",
    )
    p.add_argument(
        "--enqueue-batch",
        type=int,
        default=1,
        help="enqueues per transaction (default 1: one DBOSClient.enqueue each; "
        "K > 1: DBOSClient.enqueue_in_transaction, K per transaction)",
    )
    p.add_argument(
        "--submit-threads",
        type=int,
        default=1,
        help="submitter threads, each enqueuing its share of the tasks (default 1)",
    )
    p.add_argument(
        "--prefill",
        action="store_true",
        help="enqueue everything first on a held queue, then time only the drain "
        "(from releasing the queue to the last completion)",
    )
    p.add_argument("--step", action="store_true", help="run the body as a @DBOS.step")
    p.add_argument("--async", dest="use_async", action="store_true", help="async workflows")
    p.add_argument(
        "--pool",
        type=int,
        default=None,
        help="each worker's sys_db_pool_size (default: DBOS's, 20)",
    )
    p.add_argument("--rounds", type=int, default=1, help="rounds; the JSON reports the median")
    p.add_argument("--timeout", type=float, default=600.0, help="per round, seconds (default 600)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before a round, wait up to this many seconds for the machine to be "
        "less than --quiet-below percent busy (0: don't; default 60)",
    )
    p.add_argument("--quiet-below", type=float, default=25.0, help="percent (default 25)")
    p.add_argument("--server", default=os.environ.get("PG_SERVER", DEFAULT_SERVER))
    p.add_argument("--verbose", action="store_true", help="show the workers' stderr")
    args = p.parse_args()
    # A timeout's SIGTERM unwinds through one_round's cleanup (workers, database).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.slots is None:
        args.slots = 64 if args.workload == "wide" else 50
    if args.tasks is None:
        args.tasks = 10000 if args.workload == "wide" else 2000
    if args.sleep is None:
        args.sleep = 0.0 if args.workload == "wide" else 0.1

    import importlib.metadata

    import psycopg
    import sqlalchemy.exc

    lost_server = (psycopg.OperationalError, sqlalchemy.exc.OperationalError, ServerRestarted)
    rounds = []
    while len(rounds) < args.rounds:
        busy = wait_quiet(args.quiet_below, args.quiet_wait) if args.quiet_wait > 0 else None
        for attempt in range(ROUND_ATTEMPTS):
            try:
                rounds.append({**one_round(args), "busy_before_pct": busy})
                break
            except lost_server as e:
                # Something else restarted the server mid-round: the round says
                # nothing about DBOS, so run it again once the server is back.
                print(
                    f"round lost to a server error, retrying: {e}".splitlines()[0], file=sys.stderr
                )
                if attempt == ROUND_ATTEMPTS - 1 or not wait_server(args.server.rstrip("/"), 120):
                    raise
        print(json.dumps({"round": len(rounds), **rounds[-1]}), file=sys.stderr, flush=True)
    med = statistics.median(r["seconds"] for r in rounds)
    median_round = min(rounds, key=lambda r: abs(r["seconds"] - med))
    print(
        json.dumps(
            {
                "peer": "dbos",
                "dbos_version": importlib.metadata.version("dbos"),
                "workload": args.workload,
                "workers": args.workers,
                "slots": args.slots,
                "tasks": args.tasks,
                "sleep": args.sleep,
                "poll": args.poll,
                "enqueue_batch": args.enqueue_batch,
                "submit_threads": args.submit_threads,
                "prefill": args.prefill,
                "step": args.step,
                "async": args.use_async,
                "seconds": round(med, 4),
                "tasks_per_s": round(args.tasks / med, 1),
                "rounds": [r["seconds"] for r in rounds],
                "enqueue_s": median_round["enqueue_s"],
                "commits_per_task": median_round["commits_per_task"],
                "per_executor": median_round["per_executor"],
                "busy_before_pct": [r["busy_before_pct"] for r in rounds],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
