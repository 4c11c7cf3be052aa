"""executors: the process pool of `cpu_bound` tools ends with the run, and says why it broke.

- A call abandoned in a worker (a timeout, an interrupt) does not keep the run, or the
  interpreter, waiting: its workers are terminated at shutdown.
- A worker that dies (a tool calling `os._exit`, a segfault, a script without the
  `__main__` guard) fails the call with an error naming the likely causes, and the
  next call gets a fresh pool.
- `refuse_in_pool_worker` stops a run that a pool process would start while it
  imports the main script.

The tools live in a module written into `tmp_path`, as a user's would.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from durable.executors import (
    BROKEN_POOL,
    UNGUARDED_MAIN,
    Executors,
    TaskContext,
    refuse_in_pool_worker,
)
from durable.tools import ToolDef

TOOLS = """
    import os
    import time


    def pid():
        return os.getpid()


    def spin(seconds):
        time.sleep(seconds)
        return "done"


    def die():
        os._exit(3)
"""

CONTEXT = TaskContext("r", "t", 1, "r:t")


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    name = f"pool_tools_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(TOOLS))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    yield module
    sys.modules.pop(name, None)


def cpu(module: ModuleType, name: str) -> ToolDef:
    return ToolDef(name, getattr(module, name), is_async=False, cpu_bound=True)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_shutdown_terminates_a_worker_still_running_an_abandoned_call(tools: ModuleType) -> None:
    async def main() -> tuple[int, float]:
        executors = Executors(2)
        worker = await executors.call(cpu(tools, "pid"), None, CONTEXT)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(executors.call(cpu(tools, "spin"), 60, CONTEXT), 0.5)
        started = time.monotonic()
        executors.shutdown()
        return worker, time.monotonic() - started

    worker, took = asyncio.run(main())
    assert took < 5, "shutdown waited for the abandoned call"
    assert not alive(worker)


def test_a_worker_that_dies_fails_the_call_with_the_likely_causes(tools: ModuleType) -> None:
    async def main() -> tuple[str, str]:
        executors = Executors(2)
        try:
            with pytest.raises(BrokenProcessPool) as broken:
                await executors.call(cpu(tools, "die"), None, CONTEXT)
            # The broken pool is dropped: a retry gets a new one.
            after = await executors.call(cpu(tools, "spin"), 0, CONTEXT)
        finally:
            executors.shutdown()
        return str(broken.value), after

    message, after = asyncio.run(main())
    assert message == BROKEN_POOL
    assert "worker process" in message
    assert 'if __name__ == "__main__":' in message
    assert after == "done"


def test_refuse_in_pool_worker_lets_an_ordinary_process_run() -> None:
    refuse_in_pool_worker()  # the test process is not importing a main script for a pool


def test_refuse_in_pool_worker_stops_a_run_started_while_a_pool_imports_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    process: Any = multiprocessing.current_process()
    monkeypatch.setattr(process, "_inheriting", True, raising=False)
    with pytest.raises(SystemExit) as exit_:
        refuse_in_pool_worker()
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {UNGUARDED_MAIN}\n"
    assert 'if __name__ == "__main__":' in captured.err
    assert "\n" not in captured.err.rstrip("\n")
