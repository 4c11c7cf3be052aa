"""Which reporter a run gets: decided by the options and by where stdout goes."""

from __future__ import annotations

import os
import sys
from typing import IO

from durable.report.jsonlines import JsonReporter
from durable.report.lines import PlainReporter, QuietReporter, Reporter


def for_output(
    json: bool = False, stream: IO[str] | None = None, *, quiet: bool = False, live: bool = True
) -> Reporter:
    """`--json` wins, then `--quiet`; the live view only on a terminal that can move
    its cursor (not TERM=dumb) and unless `--no-live`; plain lines everywhere else."""
    stream = stream or sys.stdout
    if json:
        return JsonReporter(stream)
    if quiet:
        return QuietReporter(stream)
    if live and stream.isatty() and os.environ.get("TERM", "") not in ("dumb", "unknown"):
        from durable.report.live import LiveReporter  # rich costs ~50 ms to import

        return LiveReporter(stream)
    return PlainReporter(stream)
