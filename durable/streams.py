"""An output stream whose reader has gone (`| head` quit, a log shipper died)."""

from __future__ import annotations

import os
from typing import IO, Any


def discard_rest(stream: IO[Any]) -> None:
    """Point `stream`'s file descriptor at /dev/null: what it still buffers, and
    everything written to it later, goes nowhere, so that a later write, or the
    flush at exit, cannot fail again. A stream that is not a file (a test's
    StringIO) is left as it is."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass
