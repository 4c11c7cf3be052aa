"""Instructions a task (`bench/instructions.py`): a guard that the machine's swings
cannot trip.

Wall-clock guards here bound ratios with a margin of about 2x, because this machine's
speed moves by that much from one hour to the next. Instructions counted by valgrind
move by about 0.5 %, so this guard can be much closer: a run of each shape must cost
at most 1.25x the instructions a task it cost when the guard was written (`d67b721`,
Python 3.11.7; `bench/README.md`, "Instructions a task"). A change that brings back
a turn of the loop, a second row an attempt or a fold of its own per event would
fail it; a new version of Python or of a dependency would not.

Quick mode counts runs of 300 and 900 tasks (about 35 s a shape), full mode 1,000
and 3,000. Needs valgrind: skipped without it, except under CI (`CI=true`), where
that is a failure.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest
from instructions import per_task

#: Run instructions a task at `d67b721` (Python 3.11.7, uvloop), by shape.
MEASURED = {"wide": 122_677, "chain": 197_327, "layered": 146_816}
MARGIN = 1.25


def _need_valgrind() -> None:
    if shutil.which("valgrind") is None:
        why = "valgrind is not installed (apt-get install valgrind)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.mark.parametrize(
    "shape",
    ["wide", "chain", pytest.param("layered", marks=pytest.mark.full_only)],
)
def test_instructions_a_task(kit, shape: str) -> None:
    _need_valgrind()
    small, large = kit.size(1000, 300), kit.size(3000, 900)
    run, plan = per_task(sys.executable, shape, small, large)
    kit.guard(
        f"{shape}: a run's instructions a task",
        run,
        at_most=MARGIN * MEASURED[shape],
        readme=f"{MEASURED[shape]:,} at d67b721 (bench/README.md, 'Instructions a task')",
    )
    assert plan > 0, "planning cost nothing: the measurement is broken"
