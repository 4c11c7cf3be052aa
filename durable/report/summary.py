"""The live view's last word: how the run ended and what to type next.

Pure, like the model: it reads the model of a finished session (which kept the
slowest attempts and the first failures as they happened, so the end costs nothing
however large the run) and returns what to say; the drawing decides how it looks.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from durable.report.model import LiveModel
from durable.state import SUCCEEDED

#: Attempts quicker than this are not worth naming as slow.
SLOW_ENOUGH = 0.1


@dataclass(slots=True)
class Summary:
    run_id: str
    status: str
    elapsed: float
    total: int
    finished: int
    counts: list[tuple[str, int]]
    #: Of the succeeded, how many came from the cache.
    reused: int = 0
    #: (task id, seconds) of this session's slowest successful attempts.
    slowest: list[tuple[str, float]] = field(default_factory=list)
    #: (task id, attempt, first line of the error) of the first failures.
    failed: list[tuple[str, int, str]] = field(default_factory=list)
    more_failed: int = 0
    #: (what it does, the command line): resume when there is something left to do,
    #: and always how to inspect the run.
    commands: list[tuple[str, str]] = field(default_factory=list)


def summarize(model: LiveModel, status: str, elapsed: float, db: str | None = None) -> Summary:
    """`db`: the `--db` the run was given, repeated in the commands it suggests."""
    finished = model.finished
    counts = [(state, n) for state, n in model.counts.items() if n]
    if model.total > finished:
        counts.append(("unfinished", model.total - finished))
    failed = [(item.task_id, item.attempt, item.error) for item in model.failures]
    db_option = f" --db {shlex.quote(db)}" if db else ""
    commands = []
    if status != SUCCEEDED:
        commands.append(("resume", f"durable resume {model.run_id}{db_option}"))
    commands.append(("inspect", f"durable status {model.run_id}{db_option}"))
    return Summary(
        run_id=model.run_id,
        status=status,
        elapsed=elapsed,
        total=model.total,
        finished=finished,
        counts=counts,
        reused=model.reused,
        slowest=[
            (task_id, seconds) for seconds, task_id in model.slowest if seconds >= SLOW_ENOUGH
        ],
        failed=failed,
        more_failed=model.counts["failed"] - len(failed),
        commands=commands,
    )
