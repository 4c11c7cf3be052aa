"""How a tool call runs: async tools on the loop, sync tools in threads, CPU-bound in processes.

The context a call sees and what it reports are `context.py`; the pools themselves,
and what keeps them from outliving a run, are `pools.py`. Async tools are cancelled
for real; a sync tool that times out is abandoned in its daemon thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from durable.context import (
    LOG_CHARS,
    LOG_LINE_CHARS,
    LOG_LINES,
    PROGRESS_EVERY,
    TaskContext,
    TaskReports,
    _current,
    current_context,
    idempotency_key,
)
from durable.pools import (
    BROKEN_POOL,
    UNGUARDED_MAIN,
    DaemonThreadPool,
    refuse_in_pool_worker,
    sigint_blocked,
    stop_process_pool,
    worker_started,
)
from durable.tools import ToolDef

__all__ = [
    "BROKEN_POOL",
    "LOG_CHARS",
    "LOG_LINES",
    "LOG_LINE_CHARS",
    "PROGRESS_EVERY",
    "UNGUARDED_MAIN",
    "DaemonThreadPool",
    "Executors",
    "TaskContext",
    "TaskReports",
    "call_args",
    "current_context",
    "idempotency_key",
    "refuse_in_pool_worker",
]


def call_args(value: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A mapping input becomes keyword arguments; null no arguments; anything else one argument."""
    if isinstance(value, dict):
        return (), value
    if value is None:
        return (), {}
    return (value,), {}


def _in_process(
    module: str,
    qualname: str,
    context: TaskContext,
    search_path: list[str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Runs in a worker process. The tool is named, not pickled, so that the worker can
    first put the workflow's folder on `sys.path` and then import it."""
    for folder in reversed(search_path):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    fn: Any = importlib.import_module(module)
    for part in qualname.split("."):
        fn = getattr(fn, part)
    _current.set(context)
    return fn(*args, **kwargs)


class Executors:
    """The pools a run needs, created on first use and shut down with the run."""

    def __init__(self, max_threads: int) -> None:
        self._max_threads = max_threads
        self._threads: DaemonThreadPool | None = None
        self._processes: Any = None  # a ProcessPoolExecutor, made on first CPU-bound call
        # Process calls submitted and not known to be done: at shutdown, one that is
        # not done was abandoned (timed out, interrupted) and still runs.
        self._in_process: set[Future[Any]] = set()

    async def call(self, tool: ToolDef, value: Any, context: TaskContext) -> Any:
        """Call `tool` with `value`, the call seeing `context`; return its output."""
        token = _current.set(context)
        try:
            return await self.start(tool, value, context)
        finally:
            _current.reset(token)

    def start(self, tool: ToolDef, value: Any, context: TaskContext) -> Awaitable[Any]:
        """Start a call of `tool` with `value`: what it returns is awaited for the
        output. The caller has set `context` as the current one (`_current`), and
        resets it once the call is over (`call`, `attempt.call_tool`).

        Not a coroutine of its own: an async tool's coroutine is handed back as it
        is, so that an attempt awaits one frame fewer (1.5 % of a wide run's
        instructions, `bench/instructions.py`).
        """
        args, kwargs = call_args(value)
        if tool.is_async:
            return tool.fn(*args, **kwargs)  # type: ignore[no-any-return]
        if tool.cpu_bound:
            fn = tool.fn
            job = partial(
                _in_process,
                fn.__module__,
                fn.__qualname__,
                context,
                list(sys.path),
                args,
                kwargs,
            )
            return self._call_in_process(job)
        if self._threads is None:
            self._threads = DaemonThreadPool(self._max_threads)
        # copy_context carries the TaskContext into the worker thread.
        job = partial(contextvars.copy_context().run, tool.fn, *args, **kwargs)
        return asyncio.wrap_future(self._threads.submit(job))

    async def _call_in_process(self, job: Callable[[], Any]) -> Any:
        from concurrent.futures.process import BrokenProcessPool

        if self._processes is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # forkserver, not fork: forking a process that has threads (the
            # journal's, the tool pool's) can deadlock the child.
            self._processes = ProcessPoolExecutor(
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=worker_started,
            )
        pool = self._processes
        try:
            with sigint_blocked():
                future = pool.submit(job)
            self._in_process.add(future)
            try:
                return await asyncio.wrap_future(future)
            finally:
                if future.done():
                    self._in_process.discard(future)
        except BrokenProcessPool:
            # A broken pool refuses every later call: the next call (a retry) gets a new one.
            if self._processes is pool:
                self._processes = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise BrokenProcessPool(BROKEN_POOL) from None

    def shutdown(self) -> None:
        """Stop the pools. Abandoned threads are left to finish (they are daemons);
        abandoned processes are terminated."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
        if self._processes is not None:
            abandoned = any(not future.done() for future in self._in_process)
            stop_process_pool(self._processes, abandoned)
            self._processes = None
            self._in_process.clear()
