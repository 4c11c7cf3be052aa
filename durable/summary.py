"""A run's summary: what `durable runs` shows of it, without folding its events.

The summary is the fold's answer (`state.py`) to a few questions (status, counts
by state, the session clocks), taken at the last event it covers. The journal
keeps one per run (`journal/writer.py`), rewritten in the same transaction as each
batch of the run's events, from the engine's own `RunState`: the fold of exactly
the events committed with it. It is a cache, never a source of truth:

- it names the last event it covers (`last_seq`), and a reader that finds a later
  event of the run folds the events instead (a journal written by an older durable
  has no summaries, and its runs are folded as before);
- it carries a checksum, and a reader that finds it wrong folds the events instead;
- the events stay append-only; the summary is the one row that is ever replaced.

So it cannot drift: it is either the fold of the events up to `last_seq`, and
`last_seq` is the run's last event, or it is not used. `durable check` (and a test)
fold every run and compare. And since a commit writes events and summary together,
a summary whose `last_seq` is past the run's last event says that events were lost:
the one damage a checksum chain cannot see (`integrity.py`). Past the last event as
read in the summary's own snapshot, that is: a live run's process may commit more
events and a summary after a reader has read the events (`journal.reader.seen_from`).

Pure: no I/O.
"""

from __future__ import annotations

import msgspec

from durable.state import INTERRUPTED, RETRYING, RUNNING, RunState


class RunSummary(msgspec.Struct, array_like=True, frozen=True):
    """The fold's answer for a whole run. Stored as msgpack, so fields are only added
    at the end, with defaults."""

    #: Copies of the run row's columns, so that listing runs reads no run row (and
    #: its spec): the summary's checksum vouches for them.
    workflow: str
    created_at: float
    #: `RunState.status`: None while a session goes on (or its process died).
    status: str | None
    interrupted: bool
    sessions: int
    started_at: float | None
    finished_at: float | None
    elapsed: float
    session_started_at: float | None
    last_event_at: float | None
    counts: dict[str, int]
    #: How many times the run went on with an edited workflow (`amend.py`).
    amendments: int = 0

    def duration(self, end: float | None) -> float | None:
        """Seconds in the run's sessions, the open one counted up to `end`."""
        return session_time(self.sessions, self.elapsed, self.session_started_at, end)


def summarize(workflow: str, created_at: float, state: RunState) -> RunSummary:
    return RunSummary(
        workflow,
        created_at,
        state.status,
        state.interrupted,
        state.sessions,
        state.started_at,
        state.finished_at,
        state.elapsed,
        state.session_started_at,
        state.last_event_at,
        state.counts(),
        state.amendments,
    )


def session_time(
    sessions: int, elapsed: float, session_started_at: float | None, end: float | None
) -> float | None:
    """Seconds in a run's sessions, never the time it had no process; None if it
    never started. The open session, if any, counts up to `end`."""
    if not sessions:
        return None
    if session_started_at is not None and end is not None:
        elapsed += max(0.0, end - session_started_at)
    return elapsed


#: States of a task whose attempt was going on (or about to) when its run stopped.
IN_FLIGHT = frozenset({RUNNING, RETRYING})


def shown_state(state: str, run_status: str) -> str:
    """A task's state as shown: in an interrupted run, in-flight tasks are `interrupted`."""
    return INTERRUPTED if run_status == INTERRUPTED and state in IN_FLIGHT else state


def shown_counts(counts: dict[str, int], run_status: str) -> dict[str, int]:
    """Counts by state as shown (`shown_state`), from the fold's counts."""
    shown: dict[str, int] = {}
    for state, n in counts.items():
        key = shown_state(state, run_status)
        shown[key] = shown.get(key, 0) + n
    return shown
