"""executors.py: where a call runs (loop, thread, process) and the context it sees.

Most tests drive real runs (`runner.arun` with a SQLite journal under `tmp_path`);
the process-pool tool lives in a module written into `tmp_path` and listed in the
workflow's `imports:`, as a user's would be.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import durable
from durable import runner
from durable.executors import Executors, TaskContext, call_args, current_context, idempotency_key
from durable.journal import Journal
from durable.runner import RunResult
from durable.spec import Task, Workflow
from durable.tools import REGISTRY, ToolDef

# -- tools -----------------------------------------------------------------------------

CALLS: list[dict[str, Any]] = []
FAIL_SESSION = {"on": True}


def _snapshot() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "thread_name": threading.current_thread().name,
        "context": msgspec.structs.asdict(current_context()),
    }


async def where_async() -> dict[str, Any]:
    await asyncio.sleep(0)
    return _snapshot()


def where_sync() -> dict[str, Any]:
    return _snapshot()


async def slow_async_context(delay: float) -> str:
    """Reads its context after others have started: each task must still see its own."""
    before = current_context().task_id
    await asyncio.sleep(delay)
    return f"{before}/{current_context().task_id}"


def slow_sync_context(delay: float) -> str:
    before = current_context().task_id
    time.sleep(delay)
    return f"{before}/{current_context().task_id}"


async def flaky_async(fail_until: int) -> str:
    context = current_context()
    CALLS.append(msgspec.structs.asdict(context))
    if context.attempt < fail_until:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return context.idempotency_key


def flaky_sync(fail_until: int) -> str:
    context = current_context()
    CALLS.append(msgspec.structs.asdict(context))
    if context.attempt < fail_until:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return context.idempotency_key


def fails_in_first_session() -> str:
    context = current_context()
    CALLS.append(msgspec.structs.asdict(context))
    if FAIL_SESSION["on"]:
        raise RuntimeError("first session fails")
    return context.idempotency_key


class Widget:
    pass


def returns_object() -> Any:
    return object()


def returns_widget() -> Any:
    return Widget()


def returns_set() -> Any:
    return {3, 1, 2}


def raises_timeout_error() -> Any:
    raise TimeoutError("socket read timed out")


def sleeps_sync(seconds: float) -> str:
    time.sleep(seconds)
    return "late"


TOOLS = [
    where_async,
    where_sync,
    slow_async_context,
    slow_sync_context,
    flaky_async,
    flaky_sync,
    fails_in_first_session,
    returns_object,
    returns_widget,
    returns_set,
    raises_timeout_error,
    sleeps_sync,
]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register this file's tools in a copy of the registry; undo `sys` changes afterwards."""
    monkeypatch.setattr(REGISTRY, "_tools", dict(REGISTRY._tools))
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules = dict(sys.modules)
    for fn in TOOLS:
        REGISTRY.add(fn, name=f"x_{fn.__name__}")
    CALLS.clear()
    FAIL_SESSION["on"] = True
    yield
    for name in set(sys.modules) - set(modules):
        del sys.modules[name]
    sys.modules.update(modules)


def run_workflow(
    tmp_path: Path,
    tasks: list[dict[str, Any]],
    imports: list[str] | None = None,
    run_id: str | None = None,
) -> RunResult:
    workflow = Workflow(name="executors", imports=imports or [], tasks=[Task(**t) for t in tasks])
    return asyncio.run(
        runner.arun(workflow, db=tmp_path / "journal.db", base_dir=tmp_path, run_id=run_id)
    )


PROCESS_MODULE = """
    import json
    import os
    import threading

    import durable
    from durable.executors import current_context


    @durable.tool(name="{tool}", cpu_bound=True)
    def where_process(log, fail_first=False):
        context = current_context()
        record = {{
            "pid": os.getpid(),
            "thread": threading.get_ident(),
            "thread_name": threading.current_thread().name,
            "context": {{
                "run_id": context.run_id,
                "task_id": context.task_id,
                "attempt": context.attempt,
                "idempotency_key": context.idempotency_key,
            }},
        }}
        with open(log, "a") as handle:
            handle.write(json.dumps(record) + "\\n")
        if fail_first and context.attempt == 1:
            raise RuntimeError("process attempt 1 fails")
        return record
"""


def write_process_module(folder: Path) -> tuple[str, str]:
    """A uniquely named tools module; returns (module name, tool name)."""
    suffix = uuid.uuid4().hex[:8]
    module, tool = f"cpu_tools_{suffix}", f"where_process_{suffix}"
    (folder / f"{module}.py").write_text(textwrap.dedent(PROCESS_MODULE.format(tool=tool)))
    return module, tool


# -- where a call runs, and what it sees -------------------------------------------------


def test_async_sync_and_process_tools_run_where_they_should_and_see_their_context(
    tmp_path: Path,
) -> None:
    module, tool = write_process_module(tmp_path)
    log = tmp_path / "process.log"
    result = run_workflow(
        tmp_path,
        [
            {"id": "on_loop", "tool": "x_where_async"},
            {"id": "in_thread", "tool": "x_where_sync"},
            {"id": "in_process", "tool": tool, "input": {"log": str(log)}},
            {
                "id": "by_reference",
                "tool": f"{module}:where_process",
                "input": {"log": str(log), "fail_first": True},
                "retries": 1,
                "retry_delay": 0.01,
            },
        ],
        imports=[module],
        run_id="run-where",
    )
    assert result.status == "succeeded", {k: t.error for k, t in result.tasks.items()}
    out = {task_id: task.output for task_id, task in result.tasks.items()}
    main = threading.main_thread()

    assert out["on_loop"]["pid"] == os.getpid()
    assert out["on_loop"]["thread"] == main.ident

    assert out["in_thread"]["pid"] == os.getpid()
    assert out["in_thread"]["thread"] != main.ident
    assert out["in_thread"]["thread_name"].startswith("durable-tool")

    for task_id in ("in_process", "by_reference"):
        assert out[task_id]["pid"] != os.getpid()

    for task_id, output in out.items():
        assert output["context"] == {
            "run_id": "run-where",
            "task_id": task_id,
            "attempt": 2 if task_id == "by_reference" else 1,
            "idempotency_key": idempotency_key("run-where", task_id),
        }

    # The process tool failed on attempt 1 and was retried: same key both times.
    records = [json.loads(line) for line in log.read_text().splitlines()]
    retried = [r["context"] for r in records if r["context"]["task_id"] == "by_reference"]
    assert [r["attempt"] for r in retried] == [1, 2]
    assert {r["idempotency_key"] for r in retried} == {idempotency_key("run-where", "by_reference")}


@pytest.mark.parametrize("tool", ["x_slow_async_context", "x_slow_sync_context"])
def test_concurrent_calls_each_see_their_own_context(tmp_path: Path, tool: str) -> None:
    tasks = [{"id": f"t{n}", "tool": tool, "input": {"delay": 0.05 - n * 0.005}} for n in range(8)]
    result = run_workflow(tmp_path, tasks)
    assert result.status == "succeeded"
    assert {tid: t.output for tid, t in result.tasks.items()} == {
        f"t{n}": f"t{n}/t{n}" for n in range(8)
    }


def test_current_context_outside_a_tool_raises() -> None:
    with pytest.raises(RuntimeError, match="outside of a tool call"):
        current_context()


def test_current_context_is_public() -> None:
    # The executors docstring and the RuntimeError both say `durable.current_context()`.
    assert durable.current_context is current_context


def test_context_is_reset_after_a_call() -> None:
    seen: list[TaskContext] = []

    def capture() -> None:
        seen.append(current_context())

    context = TaskContext("r", "t", 1, idempotency_key("r", "t"))

    async def main() -> None:
        executors = Executors(2)
        try:
            await executors.call(ToolDef("capture", capture, is_async=False), None, context)
            with pytest.raises(RuntimeError):
                current_context()
        finally:
            executors.shutdown()

    asyncio.run(main())
    assert seen == [context]
    with pytest.raises(RuntimeError):
        current_context()


# -- the idempotency key ---------------------------------------------------------------------


def test_idempotency_key_depends_on_run_and_task_only() -> None:
    key = idempotency_key("run-1", "task-a")
    assert key == idempotency_key("run-1", "task-a") == "run-1:task-a"
    others = {
        idempotency_key("run-2", "task-a"),
        idempotency_key("run-1", "task-b"),
        idempotency_key("run-1task", "-a"),
        idempotency_key("run-", "1task-a"),
    }
    assert key not in others
    assert len(others) == 4


@pytest.mark.parametrize("tool", ["x_flaky_async", "x_flaky_sync"])
def test_idempotency_key_is_stable_across_retries(tmp_path: Path, tool: str) -> None:
    result = run_workflow(
        tmp_path,
        [
            {
                "id": "pay",
                "tool": tool,
                "input": {"fail_until": 3},
                "retries": 2,
                "retry_delay": 0.01,
            },
            {"id": "other", "tool": tool, "input": {"fail_until": 0}},
        ],
    )
    assert result.status == "succeeded"
    pay = [c for c in CALLS if c["task_id"] == "pay"]
    assert [c["attempt"] for c in pay] == [1, 2, 3]
    assert {c["idempotency_key"] for c in pay} == {idempotency_key(result.run_id, "pay")}
    assert {c["run_id"] for c in pay} == {result.run_id}
    assert result.tasks["pay"].output == idempotency_key(result.run_id, "pay")
    assert result.tasks["other"].output != result.tasks["pay"].output


def test_idempotency_key_is_stable_across_resume_and_differs_between_runs(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    workflow = Workflow(name="resume", tasks=[Task(id="charge", tool="x_fails_in_first_session")])

    async def scenario() -> tuple[RunResult, RunResult, RunResult]:
        first = await runner.arun(workflow, db=db, base_dir=tmp_path)
        FAIL_SESSION["on"] = False
        resumed = await runner.aresume(first.run_id, db=db)
        another = await runner.arun(workflow, db=db, base_dir=tmp_path)
        return first, resumed, another

    first, resumed, another = asyncio.run(scenario())
    assert first.status == "failed"
    assert resumed.status == "succeeded"
    assert resumed.run_id == first.run_id
    first_call, resumed_call, other_call = CALLS
    assert first_call["run_id"] == resumed_call["run_id"] == first.run_id
    assert first_call["idempotency_key"] == resumed_call["idempotency_key"]
    assert resumed_call["idempotency_key"] == idempotency_key(first.run_id, "charge")
    assert resumed_call["attempt"] > first_call["attempt"]
    assert other_call["run_id"] == another.run_id != first.run_id
    assert other_call["idempotency_key"] != first_call["idempotency_key"]


# -- how input becomes arguments -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": 1, "b": [2]}, ((), {"a": 1, "b": [2]})),
        ({}, ((), {})),
        (None, ((), {})),
        (5, ((5,), {})),
        ("text", (("text",), {})),
        ([1, 2], (([1, 2],), {})),
        (False, ((False,), {})),
        (0, ((0,), {})),
    ],
)
def test_call_args(value: Any, expected: tuple[tuple[Any, ...], dict[str, Any]]) -> None:
    assert call_args(value) == expected


@pytest.mark.parametrize("is_async", [True, False])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"x": 1, "y": "z"}, ((), {"x": 1, "y": "z"})),
        (None, ((), {})),
        (7, ((7,), {})),
        ([1], (([1],), {})),
    ],
)
def test_executors_call_passes_input_as_arguments(
    is_async: bool, value: Any, expected: tuple[tuple[Any, ...], dict[str, Any]]
) -> None:
    def capture(*args: Any, **kwargs: Any) -> Any:
        return args, kwargs

    async def capture_async(*args: Any, **kwargs: Any) -> Any:
        return args, kwargs

    fn = capture_async if is_async else capture
    context = TaskContext("r", "t", 1, idempotency_key("r", "t"))

    async def main() -> Any:
        executors = Executors(1)
        try:
            return await executors.call(ToolDef("capture", fn, is_async=is_async), value, context)
        finally:
            executors.shutdown()

    assert asyncio.run(main()) == expected


def test_input_that_does_not_fit_the_signature_fails_the_task(tmp_path: Path) -> None:
    result = run_workflow(tmp_path, [{"id": "t", "tool": "x_flaky_sync", "input": {"nope": 1}}])
    assert result.tasks["t"].state == "failed"
    assert "TypeError" in (result.tasks["t"].error or "")


# -- outputs, failures, timeouts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "type_name"), [("x_returns_object", "object"), ("x_returns_widget", "Widget")]
)
def test_non_serialisable_output_fails_the_task_naming_the_type(
    tmp_path: Path, tool: str, type_name: str
) -> None:
    result = run_workflow(
        tmp_path,
        [
            {"id": "bad", "tool": tool},
            {"id": "after", "tool": "echo", "input": "${bad.output}"},
            {"id": "independent", "tool": "echo", "input": {"ok": True}},
        ],
    )
    assert result.status == "failed"
    assert result.tasks["bad"].state == "failed"
    error = result.tasks["bad"].error or ""
    assert f"type {type_name}" in error
    assert "not serialisable" in error
    assert result.tasks["after"].state == "upstream_failed"
    assert result.tasks["independent"].output == {"ok": True}


def test_output_dependents_see_is_the_output_the_journal_holds(tmp_path: Path) -> None:
    # msgspec encodes a set as an array, so the journal (and any resume, `durable output`)
    # holds a list, while the live run keeps the set: `${src.output[0]}` fails live and
    # would work after a resume. Live and journaled outputs must be the same value.
    db = tmp_path / "journal.db"
    result = run_workflow(
        tmp_path,
        [
            {"id": "src", "tool": "x_returns_set"},
            {"id": "first", "tool": "echo", "input": "${src.output[0]}"},
        ],
    )

    async def journaled() -> Any:
        journal = await Journal.open(db, create=False)
        try:
            events = [event for _, event in await journal.events(result.run_id)]
        finally:
            await journal.close()
        return next(
            e.output
            for e in events
            if getattr(e, "task_id", None) == "src" and type(e).__name__ == "TaskSucceeded"
        )

    assert result.tasks["src"].output == asyncio.run(journaled())
    assert result.tasks["first"].state == "succeeded", result.tasks["first"].error


def test_a_tool_raising_timeout_error_fails_its_task_not_the_run(tmp_path: Path) -> None:
    # A tool's own TimeoutError (socket.timeout is one) is taken for the task timeout;
    # with no `timeout` set, formatting `None:g` raises TypeError and the run crashes.
    result = run_workflow(
        tmp_path,
        [
            {"id": "t", "tool": "x_raises_timeout_error"},
            {"id": "independent", "tool": "echo", "input": {"ok": True}},
        ],
    )
    assert result.status == "failed"
    assert "socket read timed out" in (result.tasks["t"].error or "")
    assert result.tasks["independent"].state == "succeeded"


def test_a_timed_out_sync_tool_is_abandoned(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_workflow(
        tmp_path, [{"id": "t", "tool": "x_sleeps_sync", "input": {"seconds": 3}, "timeout": 0.1}]
    )
    # Well under the tool's 3 s: the run did not wait for the thread.
    assert time.monotonic() - started < 2
    assert result.tasks["t"].state == "failed"
    assert result.tasks["t"].error == "timed out after 0.1s"
