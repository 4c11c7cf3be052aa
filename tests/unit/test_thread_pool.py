"""executors.DaemonThreadPool: sync tools run in daemon threads, so nothing waits for them.

`ThreadPoolExecutor` joins its workers at interpreter exit, so a timed-out sync tool
(abandoned: Python cannot stop a thread) kept `durable run` and any script calling
`durable.run()` alive until the tool returned, forever for one that hangs.
"""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import CancelledError

import pytest

from durable.executors import DaemonThreadPool, Executors, TaskContext, current_context
from durable.tools import ToolDef


def test_calls_run_in_named_daemon_threads_and_return_or_raise() -> None:
    pool = DaemonThreadPool(2)
    try:
        thread = pool.submit(threading.current_thread).result(timeout=5)
        assert thread.daemon
        assert thread.name.startswith("durable-tool_")
        assert thread is not threading.current_thread()
        assert pool.submit(lambda a, b=0: a + b, 2, b=3).result(timeout=5) == 5
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(timeout=5)
    finally:
        pool.shutdown()


def test_threads_are_reused_and_bounded() -> None:
    pool = DaemonThreadPool(2)
    release = threading.Event()
    try:
        # One call at a time: the idle thread is reused.
        names = {pool.submit(lambda: threading.current_thread().name).result(5) for _ in range(3)}
        assert names == {"durable-tool_0"}
        blocked = [pool.submit(release.wait) for _ in range(3)]
        deadline = time.monotonic() + 5
        while sum(f.running() for f in blocked) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [f.running() for f in blocked] == [True, True, False]  # the third waits
        release.set()
        assert all(f.result(timeout=5) for f in blocked)
        assert len(pool._threads) == 2
    finally:
        release.set()
        pool.shutdown()


def test_shutdown_cancels_what_has_not_started_and_refuses_new_calls() -> None:
    pool = DaemonThreadPool(1)
    release = threading.Event()
    running = pool.submit(release.wait)
    waiting = pool.submit(lambda: "never")
    pool.shutdown(wait=False, cancel_futures=True)
    assert waiting.cancelled()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: None)
    release.set()
    assert running.result(timeout=5) is True
    with pytest.raises(CancelledError):
        waiting.result(timeout=0)


def test_a_copied_context_reaches_the_thread() -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")
    marker.set("from the caller")
    pool = DaemonThreadPool(1)
    try:
        seen = pool.submit(contextvars.copy_context().run, marker.get).result(timeout=5)
    finally:
        pool.shutdown()
    assert seen == "from the caller"


def test_an_abandoned_sync_call_still_sees_its_context_and_is_left_running() -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def stuck() -> None:
        started.set()
        release.wait(5)
        seen.append(current_context().task_id)  # after its caller gave up on it

    async def main() -> None:
        executors = Executors(2)
        context = TaskContext("r", "t", 1, "r:t")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                executors.call(ToolDef("stuck", stuck, False), None, context), 0.05
            )
        started.wait(5)
        executors.shutdown()  # does not wait for the abandoned thread

    asyncio.run(main())
    release.set()
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["t"]


def test_an_abandoned_call_gives_its_place_in_the_pool_to_another_thread() -> None:
    """A timed-out sync tool kept its thread, and with it a place of the pool's size,
    for as long as it ran: forever for one that hangs, so later calls waited (a
    worker's later runs too). Now another thread takes its place, and the abandoned
    one ends when its call returns."""

    async def main() -> None:
        executors = Executors(1)
        release = threading.Event()
        context = TaskContext("r", "t", 1, "r:t")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                executors.call(ToolDef("hang", release.wait, False), 30, context), 0.05
            )
        quick = executors.call(ToolDef("quick", lambda: "done", False), None, context)
        assert await asyncio.wait_for(quick, 5) == "done"  # it waited behind the hang
        pool = executors._threads
        assert pool is not None and len(pool._threads) == 2
        release.set()
        deadline = time.monotonic() + 5
        while len(pool._threads) > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert (len(pool._threads), pool._max_workers) == (1, 1)  # back to its size
        executors.shutdown()

    asyncio.run(main())


def test_a_call_that_ends_as_it_is_given_up_on_leaves_the_pool_its_size() -> None:
    """`cancel()` of a call that has finished, or not started, lends no thread."""
    pool = DaemonThreadPool(1)
    try:
        done = pool.submit(lambda: 1)
        assert done.result(timeout=5) == 1
        assert not done.cancel() and pool._max_workers == 1
        release = threading.Event()
        running = pool.submit(release.wait, 5)
        waiting = pool.submit(lambda: 2)
        assert waiting.cancel()  # not started: simply cancelled
        assert pool._max_workers == 1
        release.set()
        assert running.result(timeout=5) is True
    finally:
        pool.shutdown()


ABANDON = """
    import asyncio, time
    from durable.executors import Executors, TaskContext
    from durable.tools import ToolDef

    async def main():
        executors = Executors(2)
        call = executors.call(ToolDef("hang", time.sleep, False), 60, TaskContext("r", "t", 1, "k"))
        try:
            await asyncio.wait_for(call, 0.1)
        except TimeoutError:
            print("abandoned", flush=True)
        executors.shutdown()

    asyncio.run(main())
"""


def test_the_interpreter_exits_with_an_abandoned_sync_call_still_running() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(ABANDON)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout == "abandoned\n", done.stderr
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 10, "the interpreter waited for the abandoned thread"
