"""Instructions a task, counted by valgrind: a measure that a busy machine cannot move.

This machine's speed moves by 2x from one hour to the next (`bench/README.md`), so
wall-clock rounds cannot see a change of a few per cent. `valgrind --tool=callgrind`
counts the instructions a process executes, the same to about 0.3 % whatever else
the machine does. A run's instructions per task are taken as a difference, so that
what every process pays once (the interpreter, imports, the journal's creation)
drops out:

    run(N) = instructions of a process that plans and runs an N-task workflow
    plan(N) = instructions of a process that only plans it
    per task = ((run(N2) - run(N1)) - (plan(N2) - plan(N1))) / (N2 - N1)

and planning's own per task is (plan(N2) - plan(N1)) / (N2 - N1).

    python bench/instructions.py --shape layered [-n 1000 3000] [--python PATH]

`--python` runs another interpreter (another checkout's virtual environment, for an
A/B; durable is imported from wherever that interpreter finds it). Summaries are
rewritten only at a session's end here, not every `SUMMARY_EVERY`: under valgrind a
run is 50x slower and would write one at every commit. Instructions are not time:
work that misses the CPU's caches (the garbage collector walking a large heap, say)
costs far more time than its count says, so a change is also timed. Needs valgrind.
Not collected by pytest (no `test_` prefix); `test_instructions.py` guards its
figures.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile

#: What each measured process runs: `plan` only plans; `run` plans, then runs.
CHILD = """
import os, sys, tempfile
from pathlib import Path
from durable import benchmark, eventloop, runner
from durable.journal import writer
from durable.loader import plan_workflow

writer.SUMMARY_EVERY = 1e9
mode, shape, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
workflow = benchmark.make_workflow(shape, n, 64)
if mode == "plan":
    plan_workflow(workflow, os.getcwd())
else:
    async def go():
        with tempfile.TemporaryDirectory() as folder:
            result = await runner.arun(workflow, db=Path(folder, "j.db"))
            assert result.status == "succeeded", result.status
    eventloop.run(go())
"""


def instructions(python: str, mode: str, shape: str, tasks: int) -> int:
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            python,
            "-c",
            CHILD,
            mode,
            shape,
            str(tasks),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),  # not a checkout's folder, whose `durable` would shadow
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"valgrind printed no count:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_task(python: str, shape: str, small: int, large: int) -> tuple[float, float]:
    """A run's instructions a task, and planning's (see the module docstring)."""
    count = {
        (mode, n): instructions(python, mode, shape, n)
        for mode in ("run", "plan")
        for n in (small, large)
    }
    plan = (count["plan", large] - count["plan", small]) / (large - small)
    run = (count["run", large] - count["run", small]) / (large - small) - plan
    return run, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("wide", "chain", "layered"), default="wide")
    parser.add_argument("-n", "--tasks", type=int, nargs=2, default=(1000, 3000))
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    run, plan = per_task(args.python, args.shape, *args.tasks)
    print(f"{args.shape}: run {run:,.0f} instructions a task, planning {plan:,.0f}")


if __name__ == "__main__":
    main()
