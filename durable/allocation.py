"""Building big, long-lived, acyclic structures without the cyclic GC in the way.

A plan, a decoded spec and a fold allocate hundreds of thousands of objects that
live for the whole run and form no cycles. Python's generational GC, triggered
by the allocations themselves, walks them again and again while they are built:
planning 100k tasks took twice as long with it on. `bulk_allocation` pauses it for
the duration and restores whatever it was.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def bulk_allocation() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
