"""The four workloads every side of the comparison runs, defined once.

`compare.py` and the peers' scripts (`dbos_side.py`, `langgraph_side.py`) each run
in a virtualenv of their own, as scripts of this folder, which Python puts first on
their path: they import this module by name. Standard library only, so that it
imports in every one of those environments.
"""

from __future__ import annotations

import argparse

WORKLOADS = ("wide", "chain", "io", "crash")
#: Tasks per workload, and how many may run at once (a chain runs one at a time).
SIZES = {"wide": 1000, "chain": 200, "io": 200, "crash": 1000}
JOBS = {"wide": 16, "chain": 1, "io": 50, "crash": 16}
#: Seconds each io task sleeps.
SLEEP = 0.05


def side_parser(doc: str, db_help: str, jobs_help: str) -> argparse.ArgumentParser:
    """The arguments a peer's script takes from `compare.py` (or from a person)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--db", required=True, help=db_help)
    parser.add_argument("--tasks", type=int, default=None, help="default: the workload's size")
    parser.add_argument("--jobs", type=int, default=None, help=jobs_help)
    parser.add_argument("--sleep", type=float, default=SLEEP, help="io: seconds per task")
    parser.add_argument("--lines", help="crash: the file every task appends its line to")
    return parser


def tasks_and_jobs(args: argparse.Namespace) -> tuple[int, int]:
    """The parsed arguments' task count and concurrency, the workload's by default."""
    return args.tasks or SIZES[args.workload], args.jobs or JOBS[args.workload]
