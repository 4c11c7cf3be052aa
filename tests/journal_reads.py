"""Reading a run's committed events back in a unit test: the one helper for it.

    from journal_reads import journal_events

    events = journal_events(db, run_id)   # the run's events, oldest first

`tests/` is on sys.path for every test (its conftest.py is the root one), as for
`pg.py`. The journal is opened, read with `Journal.events` (each row checked) and
closed, on an event loop of its own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from durable.journal import Journal


def journal_events(db: str | Path, run_id: str) -> list[Any]:
    async def main() -> list[Any]:
        journal = await Journal.open(db, create=False)
        try:
            return [event for _, event in await journal.events(run_id)]
        finally:
            await journal.close()

    return asyncio.run(main())
