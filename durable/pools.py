"""The pools tool calls run in: daemon threads for sync tools, processes for CPU-bound ones.

A timed-out or cancelled *sync* tool cannot be stopped: Python cannot kill a
thread. Its attempt is abandoned and its result ignored; the thread finishes in the
background, and it is a daemon thread, so it never keeps the process alive once the
run is over. Its thread no longer counts against the pool's size: another takes its
place, or a tool that hangs would hold a slot of the pool for good (of a worker,
for every run it takes later). A call cancelled in a worker process runs on there
until the run ends; then the workers of a pool that still has such a call are
terminated, so that nothing outlives the run.

Pool processes are started by forkserver, which imports the main script in each new
process: a script that starts a run at top level, without an
`if __name__ == "__main__":` guard, would start the run again there.
`refuse_in_pool_worker` refuses that second run.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import Any

# -- threads: sync tools ---------------------------------------------------------------


class DaemonThreadPool(Executor):
    """Runs sync tools in daemon threads, so that an abandoned call never keeps a process alive.

    `ThreadPoolExecutor` is not used because its workers are not daemons and
    `concurrent.futures` joins them at interpreter exit: after a sync tool timed out,
    `durable run` printed its summary and then waited for the tool, forever if it
    hangs. A daemon thread still running at exit is simply dropped. This is not a
    general-purpose pool (no `initializer`, no limit on idle time): just enough for
    `Executors`, which shuts it down without waiting.

    Threads are started on demand, up to `max_workers`, and reused while idle. Each
    call runs in the thread as given: `Executors.call` wraps it in a copy of the
    caller's context so that `current_context()` works there.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "durable-tool") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._work: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._numbers = itertools.count()
        self._shut_down = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot schedule new calls after shutdown")
            future: Future[Any] = _Call(self)
            self._work.put(_WorkItem(future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._serve,
                    name=f"{self._prefix}_{next(self._numbers)}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
            return future

    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                self._work.put(None)  # pass the stop on to the next idle thread
                return
            item.run()
            if item.future.abandoned:  # type: ignore[attr-defined]
                # Another thread took its place (`_Call.cancel`): this one ends.
                with self._lock:
                    self._max_workers -= 1
                    self._threads.remove(threading.current_thread())
                return
            del item  # do not hold the last call's arguments and result while idle
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut_down = True
            if cancel_futures:
                while True:
                    try:
                        item = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item.future.cancel()
            self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class _Call(Future[Any]):
    """A call's future, which knows when it is abandoned: `cancel()` of a call that
    already runs (its attempt timed out, or was cancelled: `asyncio.wrap_future`
    passes that on) cannot stop it, so its thread stops counting against the pool,
    which may start another in its place; the thread ends once the call returns."""

    def __init__(self, pool: DaemonThreadPool) -> None:
        super().__init__()
        self._pool = pool
        self.abandoned = False

    def cancel(self) -> bool:
        if super().cancel():
            return True
        # Under the future's own lock, which its result is set under: marked while it
        # runs, it is marked before `_serve` reads the mark, once the call returns.
        with self._condition:
            if self.running() and not self.abandoned:
                self.abandoned = True
                with self._pool._lock:
                    self._pool._max_workers += 1
        return False


class _WorkItem:
    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(
        self, future: Future[Any], fn: Callable[..., Any], args: Any, kwargs: dict[str, Any]
    ) -> None:
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # handed to the caller, as ThreadPoolExecutor does
            self.future.set_exception(exc)
            del exc  # break the frame -> traceback -> exception cycle
        else:
            self.future.set_result(result)


# -- processes: cpu_bound tools ---------------------------------------------------------

BROKEN_POOL = (
    "a worker process of the process pool died while this call ran or waited: "
    "a tool that exits or crashes its process (os._exit, a segfault, the OOM killer), "
    "or a script that calls durable.run() at top level without "
    "'if __name__ == \"__main__\":' (the pool's processes import the main script)"
)

UNGUARDED_MAIN = (
    "durable.run() was called while a process-pool worker imported the main script, "
    "which would start the run a second time; put the script's top-level code under "
    "'if __name__ == \"__main__\":' so that importing it does not start a run"
)


def refuse_in_pool_worker() -> None:
    """Refuse to start a run in a process that is importing the main script to become a worker.

    forkserver and spawn start a pool process by importing the script that started
    the parent (as `__mp_main__`; multiprocessing marks the process as `_inheriting`
    meanwhile). A script that calls `durable.run()` at top level would start a
    duplicate run of the workflow, in the same journal, in every such process (and
    its pool calls fail or break the parent's pool).

    This prints one line and raises `SystemExit(2)` rather than a `DurableError`: it
    runs inside multiprocessing's bootstrap, where an exception is printed as a
    traceback to the user's terminal, once per process. The parent's task then fails
    with `BROKEN_POOL`, which names the likely cause.
    """
    process = sys.modules.get("multiprocessing.process")
    if process is None:  # a pool process imports multiprocessing before the script
        return
    if getattr(process.current_process(), "_inheriting", False):
        print(f"error: {UNGUARDED_MAIN}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def _ignore_signal(signum: int, frame: Any) -> None:
    """SIGINT's handler in pool processes: the driver alone decides what Ctrl-C means."""


def worker_started() -> None:
    """The initializer of each pool process.

    A terminal's Ctrl-C signals the whole process group, pool workers included, and
    each printed a `KeyboardInterrupt` traceback. The driver handles the interrupt
    (it cancels, then terminates the workers), so a worker ignores SIGINT: with a
    handler that does nothing rather than SIG_IGN, because a handler, unlike SIG_IGN,
    is not inherited by the programs a tool starts. The driver kept SIGINT blocked
    while it started the process (`sigint_blocked`); it is unblocked here.

    A worker waits for work on a pipe it holds both ends of, so it never sees the
    driver die; it also holds the forkserver's and the resource tracker's pipes open,
    which kept all three alive after a `kill -9` of the driver. A daemon thread waits
    on the parent's sentinel (a pipe whose write end only the driver holds, closed
    by the kernel however the driver ends) and exits the worker when it closes.
    """
    import multiprocessing

    signal.signal(signal.SIGINT, _ignore_signal)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    parent = multiprocessing.parent_process()
    if parent is not None:
        watcher = threading.Thread(
            target=_exit_with_driver, args=(parent,), name="durable-driver-watch", daemon=True
        )
        watcher.start()


def _exit_with_driver(parent: Any) -> None:
    parent.join()  # returns once the driver is gone
    os._exit(1)


@contextmanager
def sigint_blocked() -> Iterator[None]:
    """Hold SIGINT in this thread while the pool starts processes.

    A pool process inherits the signal mask, so a Ctrl-C that lands while it starts
    (importing modules, before `worker_started` runs) waits instead of printing a
    traceback; and the driver, blocked in `submit` until the process is up, gets it
    once that is done, through its own handler. Without this, a Ctrl-C in the first
    few hundred milliseconds of the first CPU-bound call printed tracebacks from the
    forkserver and killed the driver with a `KeyboardInterrupt`.

    The forkserver, started on the first call, keeps the mask (it ignores SIGINT
    anyway), so processes that other pools of the same program start from it begin
    with SIGINT blocked too.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def stop_process_pool(pool: Any, abandoned: bool) -> None:
    """Shut a process pool down and wait until its workers are gone.

    A call abandoned by a timeout or an interrupt still runs in its worker, and the
    pool (and the interpreter's exit) would wait for it: its workers are terminated
    first, then killed if a tool ignores SIGTERM. `_processes` is private to
    `ProcessPoolExecutor`; Python 3.14's `terminate_workers()` is the public form.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    if abandoned:
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(2)
            if process.is_alive():
                process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


# -- the pools of a run -----------------------------------------------------------------
