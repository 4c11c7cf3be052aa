"""The branching example's tools: `measure` a batch, and `report` on the branch taken.

The branches themselves use built-ins (`sleep`, `echo`); only what needs a little
logic lives here.
"""

from __future__ import annotations

from typing import Any

import durable


@durable.tool
def measure(size: int | float | str) -> dict[str, Any]:
    """Return `{"n": size}` as a number, so that `when` can compare it with `>`.

    Coerces text because a value given on the command line (`-p size=50`) may arrive
    as a string, and `"50" > 100` is an evaluation error, not a branch.
    """
    n = float(size)
    if not n.is_integer():
        return {"n": n}
    return {"n": int(n)}


@durable.tool
def report(
    big: dict[str, Any] | None = None, small: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Say which branch ran. The branch that was skipped arrives as null.

    Raises if neither ran: under `trigger: none_failed` that would mean both branches
    were skipped, which the two complementary conditions are meant to rule out.
    """
    taken = [outcome for outcome in (big, small) if outcome is not None]
    if len(taken) != 1:
        raise ValueError(f"report: expected exactly one branch to run, got {len(taken)}")
    outcome = taken[0]
    return {
        "branch": outcome["branch"],
        "items": outcome["items"],
        "text": f"{outcome['items']} items took the {outcome['branch']} path",
    }
