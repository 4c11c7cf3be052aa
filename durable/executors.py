"""How a tool call runs: async tools on the loop, sync tools in threads, CPU-bound in processes.

Each call sees a `TaskContext` through `durable.current_context()`. Its
`idempotency_key` is derived from the run id and task id only, so it is the same
for every attempt and every resume of a task: a tool that passes it to an external
API (as an `Idempotency-Key` header, a unique constraint, a file name) makes its
side effect happen once even though the call itself may run more than once.

A timed-out or cancelled *sync* tool cannot be stopped: Python cannot kill a
thread. Its attempt is abandoned and its result ignored; the thread finishes in the
background. Async tools and processes are cancelled for real.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import msgspec

from durable.tools import ToolDef


class TaskContext(msgspec.Struct, frozen=True):
    """What a tool call may know about itself."""

    run_id: str
    task_id: str
    attempt: int
    idempotency_key: str


def idempotency_key(run_id: str, task_id: str) -> str:
    """`RUN:TASK`: unique per task of a run, the same for all its attempts and resumes.

    Run ids are hex and task ids are `[A-Za-z0-9_-]`, so the key fits the charset
    and length limits of the usual idempotency headers.
    """
    return f"{run_id}:{task_id}"


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "durable_task", default=None
)


def current_context() -> TaskContext:
    """The context of the tool call in progress. Raises outside of one."""
    context = _current.get()
    if context is None:
        raise RuntimeError("durable.current_context() called outside of a tool call")
    return context


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
        self._threads: ThreadPoolExecutor | None = None
        self._processes: Any = None  # a ProcessPoolExecutor, made on first CPU-bound call

    async def call(self, tool: ToolDef, value: Any, context: TaskContext) -> Any:
        args, kwargs = call_args(value)
        token = _current.set(context)
        try:
            if tool.is_async:
                return await tool.fn(*args, **kwargs)
            loop = asyncio.get_running_loop()
            if tool.cpu_bound:
                if self._processes is None:
                    import multiprocessing
                    from concurrent.futures import ProcessPoolExecutor

                    # forkserver, not fork: forking a process that has threads (the
                    # journal's, the tool pool's) can deadlock the child.
                    self._processes = ProcessPoolExecutor(
                        mp_context=multiprocessing.get_context("forkserver")
                    )
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
                return await loop.run_in_executor(self._processes, job)
            if self._threads is None:
                self._threads = ThreadPoolExecutor(
                    self._max_threads, thread_name_prefix="durable-tool"
                )
            # copy_context carries the TaskContext into the worker thread.
            job = partial(contextvars.copy_context().run, tool.fn, *args, **kwargs)
            return await loop.run_in_executor(self._threads, job)
        finally:
            _current.reset(token)

    def shutdown(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown(wait=False, cancel_futures=True)
