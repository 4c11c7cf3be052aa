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
from journal_reads import journal_events

import durable
from durable import runner
from durable.errors import ValidationError
from durable.executors import Executors, TaskContext, call_args, current_context, idempotency_key
from durable.runner import RunResult
from durable.spec import Task, Workflow
from durable.state import RunState
from durable.tools import REGISTRY, ToolDef

# -- tools -----------------------------------------------------------------------------

CALLS: list[dict[str, Any]] = []


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


def flaky_sync(fail_until: int) -> str:
    context = current_context()
    CALLS.append(msgspec.structs.asdict(context))
    if context.attempt < fail_until:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return context.idempotency_key


TOOLS = [
    where_async,
    where_sync,
    slow_async_context,
    slow_sync_context,
    flaky_sync,
]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Register this file's tools in a copy of the registry; undo `sys` changes afterwards.

    Only the test's own modules (written under `tmp_path`) are forgotten: dropping a
    library module imported on first use (`concurrent.futures.process`) would leave
    two copies of it, and pickling for the process pool then fails.
    """
    monkeypatch.setattr(REGISTRY, "_tools", dict(REGISTRY._tools))
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules = dict(sys.modules)
    for fn in TOOLS:
        REGISTRY.add(fn, name=f"x_{fn.__name__}")
    CALLS.clear()
    yield
    for name in set(sys.modules) - set(modules):
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(str(tmp_path)):
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
    """Written out, validation refuses it; a whole reference is known only at run time."""
    with pytest.raises(ValidationError, match="tool 'x_flaky_sync' cannot take it: it has no"):
        run_workflow(tmp_path, [{"id": "t", "tool": "x_flaky_sync", "input": {"nope": 1}}])
    tasks = [
        {"id": "src", "tool": "echo", "input": {"nope": 1}},
        {"id": "t", "tool": "x_flaky_sync", "input": "${src.output}"},
    ]
    result = run_workflow(tmp_path, tasks)
    assert result.tasks["t"].state == "failed"
    assert "TypeError" in (result.tasks["t"].error or "")


# -- what every kind of tool gets the same: async, sync (thread) and process ------------------
#
# One test per behaviour, each run once per kind. The tools live in a module written
# into `tmp_path` and imported through `imports:`, as a user's would be, because a
# process-pool worker imports its tool by name. They record what they saw in a log
# file, since a worker process cannot append to this process's lists.

KINDS = ["async", "sync", "process"]

KIND_MODULE = """
    import asyncio
    import dataclasses
    import json
    import os
    import time

    import durable
    from durable.executors import current_context


    @dataclasses.dataclass
    class Point:
        x: int
        y: int


    class Widget:
        pass


    SHAPES = {
        "point": lambda: Point(1, 2),
        "pair": lambda: (1, 2),
        "set": lambda: {3, 1, 2},
        "object": lambda: object(),
        "widget": lambda: Widget(),
    }


    def record(log, fail_until=0):
        \"\"\"Log the call's context; fail while the attempt is below `fail_until`.\"\"\"
        context = current_context()
        with open(log, "a") as handle:
            handle.write(json.dumps({
                "run_id": context.run_id,
                "task_id": context.task_id,
                "attempt": context.attempt,
                "idempotency_key": context.idempotency_key,
            }) + "\\n")
        if context.attempt < fail_until:
            raise RuntimeError(f"attempt {context.attempt} fails")
        return {"attempt": context.attempt, "key": context.idempotency_key}


    def shape(which, log=None):
        \"\"\"A value of the named shape; logs the call when given a log.\"\"\"
        if log:
            with open(log, "a") as handle:
                handle.write(which + "\\n")
        return SHAPES[which]()


    def type_of(value):
        \"\"\"The Python type a dependent was handed.\"\"\"
        return type(value).__name__


    def raise_timeout():
        \"\"\"A tool whose own I/O timed out (sockets, aiohttp, wait_for raise this).\"\"\"
        raise TimeoutError("socket read timed out")


    def wait_for(release):
        \"\"\"Block until the release file exists (at most 60 s); the test creates it.\"\"\"
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "released"


    async def record_async(log, fail_until=0):
        return record(log, fail_until)


    async def shape_async(which, log=None):
        return shape(which, log)


    async def type_of_async(value):
        return type_of(value)


    async def raise_timeout_async():
        raise_timeout()


    async def wait_for_async(release):
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return "released"


    for _fn in (record, shape, type_of, raise_timeout, wait_for):
        durable.tool(name="sync_" + _fn.__name__)(_fn)
        durable.tool(name="process_" + _fn.__name__, cpu_bound=True)(_fn)
        durable.tool(name="async_" + _fn.__name__)(globals()[_fn.__name__ + "_async"])
"""


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """The kind of tool under test: its tools are named `KIND_behaviour` (`process_shape`)."""
    return request.param


@pytest.fixture
def kind_module(tmp_path: Path) -> str:
    """KIND_MODULE written into `tmp_path` under a unique name; returns that name."""
    name = f"kind_tools_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(KIND_MODULE))
    return name


def assert_fold_matches(result: RunResult, db: Path) -> None:
    """What the live run returned is exactly the fold of what it journaled."""
    folded = RunState.fold(result.tasks, journal_events(db, result.run_id))
    assert folded.tasks == result.tasks
    assert folded.status == result.status


def test_a_timed_out_tool_fails_its_task_and_the_run_does_not_wait_for_it(
    tmp_path: Path, kind: str, kind_module: str
) -> None:
    """An attempt past its `timeout` fails at the deadline, whatever the tool's kind.

    A sync tool cannot be stopped (Python cannot kill a thread) and a process-pool
    job keeps its worker: both are abandoned, their late result ignored. The tool
    here would block for a minute; the test releases it once the run has returned.
    """
    release = tmp_path / "release"
    started = time.monotonic()
    try:
        result = run_workflow(
            tmp_path,
            [
                {
                    "id": "t",
                    "tool": f"{kind}_wait_for",
                    "input": {"release": str(release)},
                    "timeout": 0.1,
                },
                {"id": "independent", "tool": "echo", "input": {"ok": True}},
            ],
            imports=[kind_module],
        )
        elapsed = time.monotonic() - started
    finally:
        release.touch()
    assert result.tasks["t"].state == "failed"
    assert result.tasks["t"].error == "timed out after 0.1s"
    assert result.tasks["independent"].state == "succeeded"
    # Blocked, the run would take the tool's full minute; starting a process pool
    # takes a second or two on a loaded machine.
    assert elapsed < 20, f"a 0.1 s timeout took {elapsed:.1f} s"
    assert_fold_matches(result, tmp_path / "journal.db")


def test_a_tool_raising_timeout_error_fails_its_task_not_the_run(
    tmp_path: Path, kind: str, kind_module: str
) -> None:
    """A tool's own TimeoutError (with no `timeout:` set) is that task's failure, named as such.

    It is not mistaken for the task's own deadline, and the rest of the run goes on.
    """
    result = run_workflow(
        tmp_path,
        [
            {"id": "t", "tool": f"{kind}_raise_timeout"},
            {"id": "independent", "tool": "echo", "input": {"ok": True}},
        ],
        imports=[kind_module],
    )
    assert result.status == "failed"
    assert result.tasks["t"].state == "failed"
    assert result.tasks["t"].error == "TimeoutError: socket read timed out"
    assert result.tasks["independent"].state == "succeeded"
    assert_fold_matches(result, tmp_path / "journal.db")


@pytest.mark.parametrize(("which", "type_name"), [("object", "object"), ("widget", "Widget")])
def test_an_unserialisable_output_fails_the_task_naming_the_type_without_retries(
    tmp_path: Path, kind: str, kind_module: str, which: str, type_name: str
) -> None:
    log = tmp_path / "calls.log"
    result = run_workflow(
        tmp_path,
        [
            {
                "id": "bad",
                "tool": f"{kind}_shape",
                "input": {"which": which, "log": str(log)},
                "retries": 3,
                "retry_delay": 0.01,
            },
            {"id": "after", "tool": "echo", "input": "${bad.output}"},
            {"id": "independent", "tool": "echo", "input": {"ok": True}},
        ],
        imports=[kind_module],
    )
    assert result.status == "failed"
    assert result.tasks["bad"].state == "failed"
    error = result.tasks["bad"].error or ""
    assert error.startswith(f"output of type {type_name} is not serialisable"), error
    assert log.read_text().splitlines() == [which]  # refused once, never retried
    assert result.tasks["after"].state == "upstream_failed"
    assert result.tasks["independent"].output == {"ok": True}
    assert_fold_matches(result, tmp_path / "journal.db")


def test_dependents_see_the_output_as_the_journal_stores_it(
    tmp_path: Path, kind: str, kind_module: str
) -> None:
    """An output is handed on as msgpack (msgspec) decodes it back, live as after a resume.

    A dataclass becomes a dict, a tuple a list, and a set a list (msgspec encodes a
    set as an array, in the set's iteration order). So `${a.output.x}` reads the
    dataclass's field and `${c.output} == [1, 2]` holds, and the live `RunResult`
    equals the fold of the journal.
    """
    result = run_workflow(
        tmp_path,
        [
            {"id": "a", "tool": f"{kind}_shape", "input": {"which": "point"}},
            {"id": "b", "tool": "echo", "input": "${a.output.x}"},
            {"id": "c", "tool": f"{kind}_shape", "input": {"which": "pair"}},
            {"id": "d", "tool": "echo", "when": "${c.output} == [1, 2]", "input": "ran"},
            {"id": "s", "tool": f"{kind}_shape", "input": {"which": "set"}},
            {"id": "first", "tool": "echo", "input": "${s.output[0]}"},
            {"id": "seen", "tool": f"{kind}_type_of", "input": {"value": "${s.output}"}},
        ],
        imports=[kind_module],
    )
    assert result.status == "succeeded", {t: s.error or s.reason for t, s in result.tasks.items()}
    assert result.outputs == {
        "a": {"x": 1, "y": 2},
        "b": 1,
        "c": [1, 2],
        "d": "ran",
        "s": [1, 2, 3],
        "first": 1,
        "seen": "list",
    }
    assert_fold_matches(result, tmp_path / "journal.db")


def test_idempotency_key_is_the_same_for_every_attempt_and_resume(
    tmp_path: Path, kind: str, kind_module: str
) -> None:
    """`RUN:TASK`, for every attempt of a task and every resume; other tasks and runs differ."""
    db = tmp_path / "journal.db"
    log = tmp_path / "calls.log"
    workflow = Workflow(
        name="idempotency",
        imports=[kind_module],
        tasks=[
            # Attempts 1 and 2 fail in the first session; attempt 3, on resume, succeeds.
            Task(
                id="pay",
                tool=f"{kind}_record",
                input={"log": str(log), "fail_until": 3},
                retries=1,
                retry_delay=0.01,
            ),
            Task(id="other", tool=f"{kind}_record", input={"log": str(log)}),
        ],
    )

    async def scenario() -> tuple[RunResult, RunResult, RunResult]:
        first = await runner.arun(workflow, db=db, base_dir=tmp_path)
        resumed = await runner.aresume(first.run_id, db=db)
        another = await runner.arun(workflow, db=db, base_dir=tmp_path)
        return first, resumed, another

    first, resumed, another = asyncio.run(scenario())
    assert first.status == "failed"
    assert resumed.status == "succeeded"
    assert resumed.run_id == first.run_id != another.run_id
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    pay = [c for c in calls if c["task_id"] == "pay" and c["run_id"] == first.run_id]
    assert [c["attempt"] for c in pay] == [1, 2, 3]
    assert {c["idempotency_key"] for c in pay} == {idempotency_key(first.run_id, "pay")}
    assert resumed.outputs["pay"] == {"attempt": 3, "key": idempotency_key(first.run_id, "pay")}
    assert resumed.outputs["other"]["key"] == idempotency_key(first.run_id, "other")
    keys = {c["idempotency_key"] for c in calls}
    # One key per task of each run: pay and other, in two runs.
    assert len(keys) == 4
    assert {c["idempotency_key"] for c in calls if c["run_id"] == another.run_id} == {
        idempotency_key(another.run_id, "pay"),
        idempotency_key(another.run_id, "other"),
    }
