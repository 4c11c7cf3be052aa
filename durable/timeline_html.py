"""A `Timeline` drawn as one self-contained HTML file: inline SVG, a little JS, no network.

The SVG is drawn here, so the picture is whole without JS; the script only adds
the tooltips, local clock times and a summary for tests (`data-bars` and
`data-errors` on the root element). A Content-Security-Policy forbids every
external resource, so the file cannot reach the network even by mistake.

Everything that comes from the run (task ids, tools, errors) is user data: it is
escaped for HTML, and the data the script reads is JSON that cannot close its
`<script>` element.

The time axis is drawn session by session, to scale within each; the dead time
between two sessions is a hatched gap of fixed width, labelled with its length.
"""

from __future__ import annotations

import html
import itertools
import math
import time
from collections.abc import Iterator

import msgspec

from durable.timeline import (
    CANCELLED,
    CUT,
    DIED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    RETRIED,
    RUNNING,
    SUCCEEDED,
    Attempt,
    Timeline,
)
from durable.timeline_page import CATCH, DEFS, PAGE, SCRIPT, STYLE

WIDTH = 1360
GAP = 56  # the dead time between two sessions
PAD = 10  # room after each session's last event
TASK_LABELS = 230
SLOT_LABELS = 64
TOP = 44  # session labels
AXIS = 26  # tick labels under the chart
RUNNING_HEIGHT = 120
BOTTOM = 30

ENDINGS = {
    FINISHED: "finished",
    INTERRUPTED: "\u2716 interrupted",
    DIED: "\u2620 process died",
    "live": "\u2026 still running",
}
LEGEND = [
    (SUCCEEDED, "succeeded"),
    (RETRIED, "failed, retried"),
    (FAILED, "failed"),
    (CANCELLED, "cancelled"),
    (CUT, "cut off (interrupted / process died)"),
    (RUNNING, "running"),
]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def duration(seconds: float) -> str:
    """A duration for people: `340 ms`, `12.3 s`, `4 min 12 s`, `18 h 3 min`."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.3g} s" if seconds < 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


def _clock(at: float) -> str:
    """UTC, for a page read without JS; the script shows local time instead."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _tick_step(span: float, pixels: float) -> float:
    """A 1-2-5 step that puts a tick every ~90 px."""
    raw = span / max(pixels / 90, 1)
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _tick_label(seconds: float) -> str:
    if seconds == 0:
        return "0"
    if seconds < 60:
        return f"{seconds:g}s"
    if seconds < 3600:
        return f"{seconds / 60:g}m"
    return f"{seconds / 3600:g}h"


class Axis:
    """Time to x, session by session: one scale for every session, fixed-width gaps."""

    def __init__(self, timeline: Timeline, left: float, right: float) -> None:
        sessions = timeline.sessions
        spans = [max(s.end - s.start, 0.0) for s in sessions]
        # Many resumes shrink the gaps and pads: together they take at most 40% of the width.
        gap = min(GAP, 0.3 * (right - left) / max(len(sessions) - 1, 1))
        pad = min(PAD, 0.1 * (right - left) / max(len(sessions), 1))
        room = right - left - gap * max(len(sessions) - 1, 0) - pad * len(sessions)
        total = sum(spans)
        self.scale = room / total if total > 0 else 1.0
        self.starts: list[float] = []
        self.segments: list[tuple[float, float]] = []
        x = left
        for session, span in zip(sessions, spans, strict=True):
            self.starts.append(session.start)
            width = span * self.scale + pad
            self.segments.append((x, x + width))
            x += width + gap

    def x(self, session: int, at: float) -> float:
        return self.segments[session][0] + (at - self.starts[session]) * self.scale


def render(timeline: Timeline) -> str:
    """The whole HTML page for a timeline."""
    left = SLOT_LABELS if timeline.packed else TASK_LABELS
    axis = Axis(timeline, left, WIDTH - 16)
    rows = len(timeline.rows)
    pitch = max(2.0, min(22.0, 560 / max(rows, 1))) if timeline.packed else 22.0
    gantt = rows * pitch
    running_top = TOP + gantt + AXIS + 24
    height = running_top + RUNNING_HEIGHT + BOTTOM
    svg = "".join(
        [
            f'<svg id="chart" width="{WIDTH}" '
            f'height="{height:.0f}" viewBox="0 0 {WIDTH} {height:.0f}">',
            DEFS,
            *_rows(timeline, left, pitch),
            *_gaps(timeline, axis, TOP - 6, height - BOTTOM + 6),
            *_grid(timeline, axis, TOP, TOP + gantt, running_top, running_top + RUNNING_HEIGHT),
            *_bars(timeline, axis, pitch),
            *_marks(timeline, axis, pitch),
            *_critical(timeline, axis, pitch),
            *_sessions(timeline, axis, gantt),
            *_running(timeline, axis, left, running_top),
            "</svg>",
        ]
    )
    return PAGE.format(
        title=_e(f"durable timeline: {timeline.workflow} ({timeline.run_id})"),
        style=STYLE,
        catch=CATCH,
        header=_header(timeline),
        svg=svg,
        data=_data(timeline),
        script=SCRIPT,
    )


def _header(t: Timeline) -> str:
    counts: dict[str, int] = {}
    for state in t.states.values():
        counts[state] = counts.get(state, 0) + 1
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    resumed = len(t.sessions) - 1
    facts = [
        f"status <b>{_e(t.status)}</b>",
        f"{len(t.states)} tasks: {_e(states)}",
        f"{len(t.attempts)} attempts",
        f"wall time {duration(t.end - t.start)}"
        + (
            f" ({duration(t.active_seconds)} running, {resumed} resume{'s' * (resumed != 1)})"
            if resumed
            else ""
        ),
        f"peak {t.peak} running, bound {t.max_concurrency}",
    ]
    if t.critical:
        facts.append(f"critical path: {len(t.critical)} task{'s' * (len(t.critical) != 1)}")
    legend = "".join(
        f'<span class="key"><svg width="22" height="12"><rect class="bar {cls}" width="22" height="12"/>'
        f"</svg>{label}</span>"
        for cls, label in LEGEND
    )
    legend += (
        '<span class="key"><svg width="22" height="12"><rect class="bar succeeded crit" x="1" y="1" '
        'width="20" height="10"/></svg>critical path</span>'
        '<span class="key"><svg width="22" height="12"><rect class="gap" width="22" height="12"/>'
        "</svg>between sessions (not to scale)</span>"
        '<span class="key"><svg width="14" height="12"><path class="mark" d="M7,1 l5,5 l-5,5 l-5,-5 z"/>'
        "</svg>skipped or upstream failed (no attempt)</span>"
    )
    notes = [
        "The dashed line is the workflow's max_concurrency; a <code>-j</code> given to "
        "<code>durable run</code> or <code>resume</code> is not journaled and may have set "
        "another bound.",
    ]
    if t.packed:
        notes.insert(
            0,
            f"{len(t.states)} tasks: rows are concurrency slots, not tasks (each attempt takes "
            "the lowest slot free when it starts).",
        )
    return (
        f"<h1>{_e(t.workflow)} <small>run {_e(t.run_id)}</small></h1>"
        f'<p class="facts">{" · ".join(facts)}</p>'
        f'<p class="legend">{legend}</p>' + "".join(f'<p class="note">{note}</p>' for note in notes)
    )


def _rows(t: Timeline, left: float, pitch: float) -> Iterator[str]:
    yield '<g class="rows">'
    if not t.packed:
        on_path = set(t.critical)
        for row, task_id in enumerate(t.rows):
            y = TOP + row * pitch
            if row % 2:
                yield f'<rect class="stripe" x="0" y="{y:.1f}" width="{WIDTH}" height="{pitch:.1f}"/>'
            label = task_id if len(task_id) <= 30 else task_id[:29] + "\u2026"  # type: ignore[arg-type]
            cls = "label crit" if task_id in on_path else "label"
            yield (
                f'<text class="{cls}" x="{left - 8}" y="{y + pitch / 2 + 4:.1f}">'
                f"<title>{_e(task_id)} ({_e(t.tools.get(task_id, '?'))}: "
                f"{_e(t.states.get(task_id, '?'))})</title>{_e(label)}</text>"
            )
    else:
        step = max(1, math.ceil(14 / pitch))
        for row in range(0, len(t.rows), step):
            y = TOP + row * pitch + min(pitch, 14) / 2 + 4
            yield f'<text class="label" x="{left - 8}" y="{y:.1f}">slot {row + 1}</text>'
    yield "</g>"


def _grid(
    t: Timeline, axis: Axis, top: float, bottom: float, r_top: float, r_bottom: float
) -> Iterator[str]:
    yield '<g class="grid">'
    for session, (x0, x1) in zip(t.sessions, axis.segments, strict=True):
        span = session.end - session.start
        step = _tick_step(span, x1 - x0)
        n = 0
        while n * step <= span + 1e-9:
            x = axis.x(session.index, session.start + n * step)
            yield f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom:.1f}"/>'
            yield f'<line x1="{x:.1f}" y1="{r_top:.1f}" x2="{x:.1f}" y2="{r_bottom:.1f}"/>'
            yield f'<text class="tick" x="{x:.1f}" y="{bottom + 16:.1f}">{_tick_label(round(n * step, 9))}</text>'
            n += 1
    yield "</g>"


def _gaps(t: Timeline, axis: Axis, top: float, bottom: float) -> Iterator[str]:
    for i in range(1, len(t.sessions)):
        x0, x1 = axis.segments[i - 1][1], axis.segments[i][0]
        dead = t.sessions[i].start - t.sessions[i - 1].end
        mid, middle = (x0 + x1) / 2, (top + bottom) / 2
        yield (
            f'<g class="gapband"><rect class="gap" x="{x0:.1f}" y="{top:.1f}" width="{x1 - x0:.1f}" '
            f'height="{bottom - top:.1f}"><title>no process drove the run for {duration(dead)}</title></rect>'
            f'<text class="gaplabel" transform="translate({mid + 4:.1f},{middle:.1f}) rotate(-90)">'
            f"{duration(dead)} later</text></g>"
        )


def _bars(t: Timeline, axis: Axis, pitch: float) -> Iterator[str]:
    height = max(pitch - 6, 1.0) if pitch >= 8 else max(pitch - 1, 1.0)
    inset = (pitch - height) / 2
    yield '<g class="bars">'
    for i, a in enumerate(t.attempts):
        x0, x1 = axis.x(a.session, a.start), axis.x(a.session, a.end)
        cls = f"bar {a.outcome} crit" if a.critical else f"bar {a.outcome}"
        yield (
            f'<rect class="{cls}" data-i="{i}" x="{x0:.1f}" y="{TOP + a.row * pitch + inset:.1f}" '
            f'width="{max(x1 - x0, 1.5):.1f}" height="{height:.1f}"/>'
        )
    yield "</g>"
    if not t.packed:
        yield '<g class="numbers">'
        for a in t.attempts:
            x0, x1 = axis.x(a.session, a.start), axis.x(a.session, a.end)
            if x1 - x0 >= 26:
                y = TOP + a.row * pitch + pitch / 2 + 4
                yield f'<text x="{x0 + 4:.1f}" y="{y:.1f}">#{a.attempt}</text>'
        yield "</g>"
    if t.packed:
        return
    yield '<g class="backoff">'
    for a in t.attempts:
        if a.delay:
            x0 = axis.x(a.session, a.end)
            x1 = axis.x(a.session, min(a.end + a.delay, t.sessions[a.session].end))
            y = TOP + a.row * pitch + pitch / 2
            yield (
                f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{max(x1, x0 + 2):.1f}" y2="{y:.1f}">'
                f"<title>backoff {duration(a.delay)} before attempt {a.attempt + 1}</title></line>"
            )
    yield "</g>"


def _marks(t: Timeline, axis: Axis, pitch: float) -> Iterator[str]:
    yield '<g class="marks">'
    for i, m in enumerate(t.marks):
        if m.row < 0:
            continue
        x, y = axis.x(m.session, m.at), TOP + m.row * pitch + pitch / 2
        yield (
            f'<path class="mark {m.outcome}" data-m="{i}" '
            f'd="M{x:.1f},{y - 5:.1f} l5,5 l-5,5 l-5,-5 z"/>'
        )
    yield "</g>"


def _critical(t: Timeline, axis: Axis, pitch: float) -> Iterator[str]:
    """Connectors from each task of the critical path to the next: who released whom.

    Each goes from the dependency's last attempt to the first attempt of the next task
    that began after it: a task cut off and resumed was released before the resume.
    """
    on_path: dict[str, list[Attempt]] = {task_id: [] for task_id in t.critical}
    for a in t.attempts:  # one pass: a path as long as the run must not scan it per task
        if a.task_id in on_path:
            on_path[a.task_id].append(a)
    path = [on_path[task_id] for task_id in t.critical]
    yield '<g class="critpath">'
    for before, after in itertools.pairwise(path):
        if not before or not after:
            continue
        done = before[-1]
        released = next((a for a in after if a.start >= done.end), after[-1])
        x0, y0 = axis.x(done.session, done.end), TOP + done.row * pitch + pitch / 2
        x1, y1 = axis.x(released.session, released.start), TOP + released.row * pitch + pitch / 2
        yield f'<path d="M{x0:.1f},{y0:.1f} H{max(x0, x1 - 4):.1f} V{y1:.1f} H{x1:.1f}"/>'
    yield "</g>"


def _sessions(t: Timeline, axis: Axis, gantt: float) -> Iterator[str]:
    yield '<g class="sessions">'
    for s, (x0, _) in zip(t.sessions, axis.segments, strict=True):
        verb = "started" if s.index == 0 else "resumed"
        yield (
            f'<text class="session" x="{x0:.1f}" y="{TOP - 26}">\u25b6 {verb} '
            f'<tspan data-t="{s.start}">{_e(_clock(s.start))}</tspan></text>'
        )
        ending = ENDINGS.get(s.ended, s.ended)
        if s.ended == FINISHED and s.status:
            ending = f"\u25a0 finished: {s.status}"
        xe = axis.x(s.index, s.end)
        yield f'<line class="end {s.ended}" x1="{xe:.1f}" y1="{TOP - 10}" x2="{xe:.1f}" y2="{TOP + gantt:.1f}"/>'
        yield f'<text class="ending {s.ended}" x="{xe:.1f}" y="{TOP - 12}">{_e(ending)}</text>'
    yield "</g>"


def _running(t: Timeline, axis: Axis, left: float, top: float) -> Iterator[str]:
    """Attempts running over time (per pixel column, the most at any moment in it)."""
    ceiling = max(t.max_concurrency, t.peak, 1)
    bottom = top + RUNNING_HEIGHT

    def y(count: float) -> float:
        return bottom - count / ceiling * (RUNNING_HEIGHT - 8)

    yield '<g class="running">'
    yield f'<text class="title" x="{left - 8}" y="{top - 8:.1f}">running</text>'
    for value in sorted({0, t.max_concurrency, t.peak}):
        if value <= ceiling:
            yield f'<text class="tick y" x="{left - 8}" y="{y(value) + 4:.1f}">{value}</text>'
    for s, steps in zip(t.sessions, t.running, strict=True):
        x0, x1 = axis.segments[s.index]
        columns = [0] * (int(x1 - x0) + 2)
        for (at, count), nxt in zip(steps, [*steps[1:], (s.end, 0)], strict=False):
            c0 = int(axis.x(s.index, at) - x0)
            c1 = int(axis.x(s.index, nxt[0]) - x0)
            for c in range(max(c0, 0), min(max(c0, c1), len(columns) - 1) + 1):
                if count > columns[c]:
                    columns[c] = count
        points = [f"M{x0:.1f},{bottom:.1f}"]
        for c, count in enumerate(columns[:-1]):
            points.append(f"L{x0 + c:.1f},{y(count):.1f}H{x0 + c + 1:.1f}")
        points.append(f"L{x0 + len(columns) - 1:.1f},{bottom:.1f}Z")
        yield f'<path class="area" d="{"".join(points)}"/>'
    yield f'<line class="axisline" x1="{left}" y1="{bottom:.1f}" x2="{WIDTH - 16}" y2="{bottom:.1f}"/>'
    yb = y(t.max_concurrency)
    yield f'<line class="bound" x1="{left}" y1="{yb:.1f}" x2="{WIDTH - 16}" y2="{yb:.1f}"/>'
    yield (
        f'<text class="boundlabel" x="{WIDTH - 18}" y="{yb - 4:.1f}">'
        f"max_concurrency {t.max_concurrency} (from the workflow)</text>"
    )
    yield "</g>"


def _data(t: Timeline) -> str:
    """What the tooltips show, as JSON that cannot end its `<script>` element."""
    document = {
        "start": t.start,
        "sessions": [[s.start, s.end, s.ended] for s in t.sessions],
        "attempts": [
            [
                a.task_id,
                t.tools.get(a.task_id, "?"),
                a.attempt,
                a.session,
                a.start,
                a.end,
                a.outcome,
                _clip(a.error),
                a.critical,
                a.delay,
            ]
            for a in t.attempts
        ],
        "marks": [
            [m.task_id, t.tools.get(m.task_id, "?"), m.session, m.at, m.outcome, _clip(m.reason)]
            for m in t.marks
        ],
    }
    raw = msgspec.json.encode(document)
    return (
        raw.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026").decode()
    )


def _clip(text: str | None, limit: int = 1200) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "\u2026"
