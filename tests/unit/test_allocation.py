"""allocation.py: what a bulk allocation builds is not left to the GC's young generation."""

from __future__ import annotations

import gc

from durable.allocation import bulk_allocation


def test_no_collection_walks_what_was_built() -> None:
    """Left in generation 0, the 20,000 lists would be walked by the collection that
    the next allocations set off, the GC being back on: `bulk_allocation` moves
    them to the oldest generation at once. Each collection's young count (objects
    made since the last one) is read as it starts."""
    young_at_start: list[int] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            young_at_start.append(gc.get_count()[0])

    assert gc.isenabled()
    gc.callbacks.append(watch)
    try:
        with bulk_allocation():
            assert not gc.isenabled()
            built = [[i] for i in range(20_000)]
        junk = [[i] for i in range(5_000)]  # enough for young collections of their own
    finally:
        gc.callbacks.remove(watch)
    assert gc.isenabled()
    assert young_at_start, "the GC collected nothing: it is not back on"
    assert max(young_at_start) < 10_000, young_at_start
    assert len(built) == 20_000 and len(junk) == 5_000


def test_a_gc_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with bulk_allocation():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
