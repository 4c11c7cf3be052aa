"""The crash workload's one tool for durable: append a task's line to a file.

The workflow compare.py writes beside a copy of this module names it under
`imports:`; the peers' scripts append the same line (`{i:04d}` and a newline, five
bytes, so that the driver can count lines by the file's size).
"""

from __future__ import annotations

import durable


@durable.tool(cacheable=False)  # its point is its side effect
def append(path: str, i: int) -> int:
    with open(path, "a") as f:
        f.write(f"{i:04d}\n")
    return i
