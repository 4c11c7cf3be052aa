"""Which event loop runs durable: uvloop where it is installed, asyncio's otherwise.

Measured on the 2-core CI machine (`bench/README.md`): uvloop makes a chain of
no-op tasks about 1.7x faster (each commit is a wake-up of the loop) and a wide
DAG about 1.3x. It is an optional dependency (`pip install 'durable[fast]'`), on by
default when present; `DURABLE_LOOP=asyncio` turns it off. Only the entry points
that own the loop (`durable.run`, `durable.resume`, the CLI) choose it; `arun` runs
on whatever loop its caller has.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory if it is installed and not turned off, else None (asyncio's)."""
    if os.environ.get("DURABLE_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def name() -> str:
    return "uvloop" if loop_factory() is not None else "asyncio"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on the chosen loop.

    The result is handed out through a list, not as the main task's result: on
    exit, Python 3.11's Runner restores its SIGINT handler in a way that formats
    the main task with `repr`, result included, and a `RunResult` of 100k tasks
    took 0.9 s to format.
    """
    box: list[T] = []

    async def main() -> None:
        box.append(await coro)

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main())
    return box[0]
