"""`--json`: one JSON object per event on stdout, for programs that watch a run.

The objects are the journal's events (`events.to_dict`) with the run id in each.
The session's first object, `run_started` or `run_resumed`, also carries what a
consumer needs to draw progress without reading anything else: the workflow's name,
`tasks` (how many the run has) and `kept` (how many a resume keeps as finished).
Those are added here, in the stream, not to the stored events: the journal's events
are checksummed facts, and the workflow and its size are already in the run's row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from durable.events import Event, RunResumed, RunStarted, to_dict
from durable.report.lines import Reporter
from durable.spec import Workflow
from durable.state import KEPT, RunState

if TYPE_CHECKING:
    from durable.runner import RunResult


class JsonReporter(Reporter):
    """One JSON object per event on stdout; the run id is in every object."""

    _encoder = msgspec.json.Encoder()

    def __init__(self, stream=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(stream)
        self._opening: dict[str, object] = {}

    def on_start(self, run_id: str, workflow: Workflow, state: RunState, resumed: bool) -> None:
        super().on_start(run_id, workflow, state, resumed)
        kept = sum(1 for task in state.tasks.values() if task.state in KEPT) if resumed else 0
        self._opening = {"workflow": workflow.name, "tasks": len(state.tasks), "kept": kept}

    def on_event(self, event: Event) -> None:
        record = to_dict(event, self.run_id)
        if isinstance(event, RunStarted | RunResumed):
            record.update(self._opening)
        try:
            line = self._encoder.encode(record).decode()
        except (TypeError, msgspec.EncodeError):
            record["output"] = repr(record.get("output"))
            line = self._encoder.encode(record).decode()
        self.write(line)
        if getattr(event, "task_id", None) is None:
            self.flush()
        else:
            self.flush_now_and_then()

    def finish(self, result: RunResult, elapsed: float, db: str | None = None) -> None:
        """The stream ends with `run_finished`; there is no summary to add."""
