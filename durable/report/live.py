"""The live view on a terminal: `LiveModel` drawn with rich, on a timer of the loop.

Nothing is done per event but keeping it: `on_event` is the `append` of a list, a
call into C that costs some 40 ns (a 100,000-task run emits over 200,000 events).
Each frame takes that backlog into the model at once (`LiveModel.apply_all`, half
the cost of one call per event) and draws. A timer on the event loop (`loop.call_later`) draws a frame every `INTERVAL`
seconds, so the clock, the elapsed times and the running count move even while no
task finishes. The timer is the loop's, not a thread's: rich's own auto-refresh
thread would take the GIL from the loop at its own moments, where a loop timer
draws between two steps of the scheduler. A frame that costs more than `BUDGET` of
the interval pushes the next one back, so drawing never takes more than about 3 %
of the loop's time, however slow the terminal or large the run. (Measured on a
100,000-task run, the whole view, events and frames, cost about 5 % of its CPU time.)

Failures and retries are printed above the live area, at the next frame, as
permanent lines that stay in the scrollback; at most `NOTICES_PER_FRAME` a frame,
the rest counted in one line (`durable status` has them all). At the end the live
area is erased and the summary (`summary.py`) printed in its place.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import IO, TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from durable.events import Event
from durable.report import draw
from durable.report.lines import Reporter, describe_start
from durable.report.model import LiveModel
from durable.report.summary import summarize
from durable.spec import Workflow
from durable.state import FAILED, RunState

if TYPE_CHECKING:
    from durable.runner import RunResult

INTERVAL = 0.1
BUDGET = 0.03
NOTICES_PER_FRAME = 20
#: Lines of the live area that are not running attempts: header, bar, counts, and
#: one left free so the area never fills the terminal (it would scroll as it redraws).
FIXED_LINES = 4


class LiveReporter(Reporter):
    """A live view redrawn in place, at most ten times a second; see the module docstring."""

    def __init__(self, stream: IO[str] | None = None, console: Console | None = None) -> None:
        super().__init__(stream)
        self.console = console or Console(file=self.stream, highlight=False)
        self.model: LiveModel | None = None
        self._live: Live | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backlog: list[Event] = []
        #: Events wait here for the next frame; see the module docstring.
        self.on_event = self._backlog.append  # type: ignore[method-assign]
        self._interval = INTERVAL
        #: Seconds spent drawing, and frames drawn: what the view cost the run.
        self.drawing = 0.0
        self.frames = 0

    def on_start(self, run_id: str, workflow: Workflow, state: RunState, resumed: bool) -> None:
        super().on_start(run_id, workflow, state, resumed)
        tools = {task.id: task.tool for task in workflow.tasks}
        self.model = LiveModel(run_id, workflow.name, tools, state)
        self.console.print(Text(describe_start(run_id, workflow, state, resumed)))
        self._live = Live(
            console=self.console,
            auto_refresh=False,
            transient=True,
            # What a Python tool prints is printed above the live area, as the
            # notices are, instead of pushing the area down and being drawn over.
            redirect_stdout=True,
            redirect_stderr=True,
            vertical_overflow="crop",
        )
        self._live.start()
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # driven without a loop (not by the CLI): no frames, the end only
            self._loop = None
            return
        self._tick()

    def on_event(self, event: Event) -> None:  # replaced per instance by the backlog's append
        self._backlog.append(event)

    def _catch_up(self) -> None:
        if self._backlog and self.model is not None:
            self.model.apply_all(self._backlog)
            self._backlog.clear()

    def _tick(self) -> None:
        began = time.perf_counter()
        self._catch_up()
        assert self.model is not None
        if self.model.status is not None:  # the run is over: the summary comes next
            self.close()
            return
        drawn = time.perf_counter()
        self._draw()
        done = time.perf_counter()
        self.drawing += done - began
        self.frames += 1
        # Catching up costs the same whenever it is done; drawing less often saves.
        self._interval = max(INTERVAL, (done - drawn) / BUDGET)
        assert self._loop is not None
        self._timer = self._loop.call_later(self._interval, self._tick)

    def _draw(self) -> None:
        assert self.model is not None and self._live is not None
        width, height = self.console.size
        view = self.model.view(time.time(), room=height - FIXED_LINES)
        self._live.update(draw.frame(view, width, self._ascii_only()), refresh=False)
        notices = self._notices()
        if notices is not None:
            self.console.print(notices)  # above the live area, which is redrawn with it
        else:
            self._live.refresh()

    def _notices(self) -> Group | None:
        assert self.model is not None
        notices = self.model.take_notices()
        if not notices:
            return None
        lines = [draw.notice(item) for item in notices[:NOTICES_PER_FRAME]]
        if len(notices) > NOTICES_PER_FRAME:
            more = len(notices) - NOTICES_PER_FRAME
            lines.append(Text(f"… and {more:,} more failures or retries", style="red"))
        return Group(*lines)

    def _ascii_only(self) -> bool:
        return not self.console.encoding.lower().startswith("utf")

    def finish(self, result: RunResult, elapsed: float, db: str | None = None) -> None:
        """The summary, printed where the live area was."""
        self.close()
        if self.model is None:  # the session never started
            super().finish(result, elapsed, db)
            return
        self.console.print(draw.summary(summarize(self.model, result.status, elapsed, db)))
        self.console.file.flush()
        if not sys.stderr.isatty():  # on a terminal the summary has said it already
            for task_id, task in result.tasks.items():
                if task.state == FAILED:
                    sys.stderr.write(f"  {task_id}: {task.error}\n")

    def close(self) -> None:
        """Stop drawing and give the terminal back (cursor shown, live area erased)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None
        self._catch_up()
        if self._live is not None:
            live, self._live = self._live, None
            notices = self._notices() if self.model is not None else None
            if notices is not None:
                self.console.print(notices)
            live.stop()
