"""How the live view looks: a `View`, a `Notice` or a `Summary` as rich renderables.

No terminal here and no clock: these functions turn the model's output into text
with styles, so a test can render them into a string. `live.py` puts them on screen.
The lines are built as `Text`, not tables: a frame is drawn up to ten times a
second on the event loop's thread, and a `Text` renders several times faster.
"""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from durable.report.model import Notice, View
from durable.report.summary import Summary
from durable.state import INTERRUPTED, SUCCEEDED

#: How a state is named and coloured in the counts.
LABELS = {"upstream_failed": "upstream failed"}
STYLES = {
    "succeeded": "green",
    "failed": "bold red",
    "skipped": "dim",
    "upstream_failed": "yellow",
    "cancelled": "yellow",
    "retrying": "yellow",
    "running": "cyan",
    "waiting": "dim",
    "unfinished": "yellow",
}
BAR_WIDTH = 40
ID_WIDTH = 32
TOOL_WIDTH = 20


def seconds(value: float) -> str:
    """12.3s, 4m05s, 2h03m: tenths while they still mean something."""
    if value < 60:
        return f"{value:.1f}s"
    value = int(value)
    if value < 3600:
        return f"{value // 60}m{value % 60:02d}s"
    return f"{value // 3600}h{value % 3600 // 60:02d}m"


def rate(value: float) -> str:
    return f"{value:,.0f} tasks/s" if value >= 10 else f"{value:.1f} tasks/s"


def count_parts(counts: list[tuple[str, int]]) -> list[tuple[str, str]]:
    return [(f"{n:,} {LABELS.get(state, state)}", STYLES.get(state, "")) for state, n in counts]


def _joined(parts: list[tuple[str, str]], sep: str = " · ") -> Text:
    text = Text()
    for index, (words, style) in enumerate(parts):
        if index:
            text.append(sep, style="dim")
        text.append(words, style=style)
    return text


def header(view: View) -> Text:
    """run ID · workflow · elapsed · rate · ETA."""
    text = Text.assemble(("run ", "bold"), (view.run_id, "bold cyan"), (" · ", "dim"))
    text.append(view.workflow, style="bold")
    text.append(f" · {seconds(view.elapsed)}")
    if view.rate is not None:
        text.append(f" · {rate(view.rate)}")
    if view.eta is not None:
        text.append(f" · ETA {seconds(view.eta)}")
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def bar(view: View, width: int, ascii_only: bool = False) -> Text:
    """A bar of finished/total, then the numbers: `━━━━━╸━━━━━  60/100  60%`."""
    percent = 100 * view.finished // view.total if view.total else 100
    numbers = f"  {view.finished:,}/{view.total:,}  {percent}%"
    size = max(10, min(BAR_WIDTH, width - len(numbers) - 1))
    filled = size * view.finished // view.total if view.total else size
    full, empty = ("#", "-") if ascii_only else ("━", "─")
    failing = any(state == "failed" for state, _ in view.counts)
    text = Text()
    text.append(full * filled, style="red" if failing else "green")
    text.append(empty * (size - filled), style="bright_black")
    text.append(numbers)
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def rows(view: View) -> list[Text]:
    """The running attempts, longest-running first, each cut to the terminal's width."""
    if not view.rows:
        lines = []
    else:
        id_width = min(ID_WIDTH, max(len(row.task_id) for row in view.rows))
        tool_width = min(TOOL_WIDTH, max(len(row.tool) for row in view.rows))
        lines = []
        for row in view.rows:
            text = Text("  ")
            text.append(_fit(row.task_id, id_width), style="cyan")
            text.append("  ")
            text.append(_fit(row.tool, tool_width), style="dim")
            text.append(f"  #{row.attempt:<2} {seconds(row.seconds):>7}")
            if row.progress:
                text.append("  ")
                text.append(row.progress, style="italic")
            text.no_wrap, text.overflow = True, "ellipsis"
            lines.append(text)
    if view.more:
        lines.append(Text(f"  +{view.more:,} more", style="dim"))
    return lines


def _fit(words: str, width: int) -> str:
    return words.ljust(width) if len(words) <= width else words[: width - 1] + "…"


def frame(view: View, width: int, ascii_only: bool = False) -> Text:
    """One whole frame of the live area, as one `Text` of several lines.

    One `Text` rather than a `Group` of lines: rich renders it in a third of the time.
    """
    counts = _joined(count_parts(view.counts))
    lines = [header(view), bar(view, width, ascii_only), counts, *rows(view)]
    text = Text("\n").join(lines)
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def notice(item: Notice) -> Text:
    """A permanent line for a failure or a retry (it stays in the scrollback)."""
    if item.retry_in is None:
        text = Text(f"✗ {item.task_id} failed", style="bold red")
    else:
        text = Text(f"↻ {item.task_id} retrying", style="yellow")
    text.append(f" (attempt {item.attempt}): ", style="dim")
    text.append(item.error)
    if item.retry_in is not None:
        text.append(f"; again in {item.retry_in:g}s", style="dim")
    return text


def summary(item: Summary) -> Group:
    """The run's outcome, what took longest, what failed, and what to type next."""
    style = {SUCCEEDED: "bold green", INTERRUPTED: "bold yellow"}.get(item.status, "bold red")
    first = Text.assemble(
        ("run ", "bold"), (item.run_id, "bold cyan"), " ", (item.status, style),
        f" in {seconds(item.elapsed)} · {item.finished:,}/{item.total:,} finished: ",
    )  # fmt: skip
    first.append_text(_joined(count_parts(item.counts), ", "))
    if item.reused:
        first.append(f" ({item.reused:,} from cache)", style="dim")
    lines = [first]
    if item.slowest:
        slow = ", ".join(f"{task_id} {seconds(s)}" for task_id, s in item.slowest)
        lines.append(Text.assemble(("  slowest: ", "dim"), slow))
    for task_id, attempts, error in item.failed:
        lines.append(
            Text.assemble(
                ("  failed: ", "red"), (task_id, "bold"), f" (attempt {attempts}): {error}"
            )
        )
    if item.more_failed:
        lines.append(Text(f"  +{item.more_failed:,} more failed", style="red"))
    width = max(len(what) for what, _ in item.commands)
    for what, command in item.commands:
        lines.append(Text.assemble((f"  {what + ':':<{width + 1}} ", "dim"), (command, "bold")))
    return Group(*lines)
