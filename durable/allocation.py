"""Building big, long-lived, acyclic structures without the cyclic GC in the way.

A plan, a decoded spec and a fold allocate hundreds of thousands of objects that
live for the whole run and form no cycles. Python's generational GC, triggered
by the allocations themselves, walks them again and again while they are built:
planning 100k tasks took twice as long with it on. `bulk_allocation` pauses it for
the duration and restores whatever it was.

Pausing it is not enough. Every object made meanwhile is still in the youngest
generation, and the first allocation after the GC is back sets off a collection
that walks them all: a fifth of the time of planning a 40k-task workflow
(`bench/README.md`).
So they are moved into the oldest generation first (`gc.freeze` then
`gc.unfreeze`: two list splices, nothing walked). A run then freezes them for its
whole length (`Engine.run`), so that they are not walked at all.
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
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()
