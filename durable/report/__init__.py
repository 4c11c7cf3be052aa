"""Reporters: how a run shows itself. Live on a terminal, plain lines otherwise, or JSON lines.

A reporter only formats; it never decides anything. When nobody watches (the
Python API, `durable bench`), there is no reporter and reporting costs nothing.

- `lines`: the base `Reporter`, plain lines per transition, `--quiet`, `summary_line`;
- `jsonlines`: `--json`;
- `model` (what the live view shows, pure), `draw` (how it looks), `summary` (the
  end of a live run), `live` (the view on a terminal, with rich);
- `output`: which of them a run gets.
"""

from durable.report.jsonlines import JsonReporter
from durable.report.lines import (
    PlainReporter,
    QuietReporter,
    Reporter,
    describe_event,
    describe_start,
    summary_line,
)
from durable.report.output import for_output

__all__ = [
    "JsonReporter",
    "PlainReporter",
    "QuietReporter",
    "Reporter",
    "describe_event",
    "describe_start",
    "for_output",
    "summary_line",
]
