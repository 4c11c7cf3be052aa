"""The cache across runs: finding the committed success that answers a fingerprint.

An entry (`schema._CACHE`) is written in the same transaction as the success it
names (`EventQueue.append_succeeded(remember=...)`), so it never names an output that a
crash could take back. Before an entry is used, the event it names is read and
checked: it must be that task's `task_succeeded` (or the `task_ran` row that holds
it, `events.RAN`), and its checksum must chain from
the event before it (`integrity.py`); anything else is a miss, never a wrong output.
`durable cache clear` deletes entries; the events stay, as history.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from durable.events import RAN, SUCCEEDED, decode_output, from_ran_row
from durable.integrity import event_crc

if TYPE_CHECKING:
    from durable.graph import TaskPlan
    from durable.spec import Workflow


def caches(task: TaskPlan, run_cache: bool) -> bool:
    """Whether a task uses the cache (looks up, and remembers its success): its own
    `cache` if it says, else the run's (`--cache`, or the workflow's `cache`); never
    for a tool that says its output must not be reused."""
    own = task.spec.cache
    wanted = run_cache if own is None else own
    return wanted and task.tool is not None and task.tool.cacheable


def newer_than(task: TaskPlan, workflow: Workflow, now: float) -> float | None:
    """The oldest commit time an entry may have to answer the task (`cache_ttl`, the
    task's or else the workflow's); None: any age."""
    ttl = task.spec.cache_ttl if task.spec.cache_ttl is not None else workflow.cache_ttl
    return None if ttl is None else now - ttl


class CacheHit(NamedTuple):
    """A committed success that answers a fingerprint."""

    run_id: str
    task_id: str
    attempt: int
    at: float
    output: Any

    def describe(self) -> str:
        return f"run {self.run_id}, task {self.task_id}, attempt {self.attempt}"


def lookup(
    conn: sqlite3.Connection, fingerprint: str, newer_than: float | None = None
) -> CacheHit | None:
    """The entry for `fingerprint`, if there is one (committed at or after
    `newer_than`) and the event it names checks out."""
    row = conn.execute(LOOKUP, (fingerprint,)).fetchone()
    return None if row is None else judge(row, newer_than)


#: The entry, the event it names, and the checksum that event chains from, in one
#: read (SQLite's `?` and PostgreSQL's `$1` differ; the tables are named alike).
LOOKUP = """SELECT c.run_id, c.task_id, c.attempt, c.at,
        e.run_id, e.task_id, e.attempt, e.kind, e.at, e.data, e.crc,
        coalesce(
            (SELECT p.crc FROM events p WHERE p.run_id = e.run_id AND p.seq < e.seq
             ORDER BY p.seq DESC LIMIT 1),
            (SELECT r.crc FROM runs r WHERE r.run_id = e.run_id))
    FROM cache c LEFT JOIN events e ON e.seq = c.seq WHERE c.fingerprint = ?"""


def judge(row: tuple[Any, ...], newer_than: float | None) -> CacheHit | None:
    """A looked-up entry (`LOOKUP`'s row), if it may answer: recent enough, naming
    the success of its own run, task and attempt, and that event's checksum sound."""
    run_id, task_id, attempt, at, *event, previous = row
    if newer_than is not None and at < newer_than:
        return None
    if event[0] is None or tuple(event[:3]) != (run_id, task_id, attempt):
        return None  # its run was pruned, or the entry is wrong: run the task
    kind = event[3]
    if kind not in (SUCCEEDED, RAN):
        return None
    data = None if event[5] is None else bytes(event[5])
    if previous is None or event_crc(previous, *event[:5], data) != event[6]:
        return None
    try:
        if kind == RAN:
            output = from_ran_row(task_id, attempt, event[4], data)[1].output  # type: ignore[arg-type]
        else:
            output = None if data is None else decode_output(data)
    except (msgspec.DecodeError, TypeError, ValueError):
        return None
    return CacheHit(run_id, task_id, attempt, at, output)


def forgetting(
    older_than: float | None = None, tool: str | None = None, mark: str = "?"
) -> tuple[str, list[Any]]:
    """`cache clear`'s condition on the entries: a WHERE clause ("" for all of them)
    and its values. `mark` is the backend's placeholder: "?" for SQLite, "$" for
    PostgreSQL (numbered `$1`, `$2`)."""
    clauses, parameters = [], []
    for clause, value in (("at <", older_than), ("tool =", tool)):
        if value is not None:
            parameters.append(value)
            clauses.append(f"{clause} {mark}{len(parameters) if mark == '$' else ''}")
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), parameters


def clear(
    conn: sqlite3.Connection, *, older_than: float | None = None, tool: str | None = None
) -> int:
    """Forget entries (all; or committed before `older_than`; or of one tool)."""
    where, parameters = forgetting(older_than, tool)
    with conn:
        return conn.execute(f"DELETE FROM cache{where}", parameters).rowcount


def count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM cache").fetchone()[0]
