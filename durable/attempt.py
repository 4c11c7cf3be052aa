"""One call of a tool: its input in, its output (encoded once) or its failure out.

Shared by the in-process `Engine` and the fleet's workers (`fleet/worker.py`), so a
task fails, times out and has its output checked the same way whoever runs it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from durable.context import _current as current
from durable.errors import DurableError
from durable.events import decode_output, encode_output
from durable.executors import Executors, TaskContext, TaskReports, idempotency_key
from durable.fingerprint import fingerprint, tool_identity
from durable.graph import TaskPlan
from durable.refs import Scope


class AttemptFailed(Exception):
    """An attempt that ended in failure: `error` is what the journal records;
    `retryable` is false when trying again cannot help (a bad input, an output that
    cannot be stored)."""

    def __init__(self, error: str, retryable: bool = True) -> None:
        super().__init__(error)
        self.error = error
        self.retryable = retryable


def render_input(plan: TaskPlan, scope: Scope) -> tuple[Any, str | None]:
    """An attempt's input, rendered from committed outputs, and the fingerprint of its
    work (`fingerprint.py`), which its `task_started` carries.

    An input that cannot be rendered gives the `AttemptFailed` the attempt raises
    (trying again cannot help) and no fingerprint; so does an input that a tool's
    `prepare` made unencodable, which still runs.
    """
    try:
        value = plan.template.render(scope)
    except DurableError as exc:
        return AttemptFailed(f"input: {exc.message}", retryable=False), None
    assert plan.tool is not None
    try:
        return value, fingerprint(tool_identity(plan.tool), value)
    except (TypeError, ValueError, msgspec.EncodeError):
        return value, None


async def call_tool(
    executors: Executors,
    plan: TaskPlan,
    value: Any,
    run_id: str,
    attempt: int,
    reports: TaskReports,
) -> tuple[Any, bytes]:
    """Call the task's tool with the rendered input; return its output and its encoding.

    The tool sees the attempt's `TaskContext`. Once the call is over, however it
    ended, the attempt's log lines are journaled (`reports.settle`): before its
    outcome, which the caller journals next.

    The output handed on is the one decoded back from what the journal stores,
    so that dependents see the same value live as after a resume (a tuple is a
    list, a set is refused, a dataclass is a dict). Raises `AttemptFailed` for
    anything the tool does wrong (a timeout included), `CancelledError` if cancelled.
    """
    assert plan.tool is not None
    task_id = plan.id
    context = TaskContext(run_id, task_id, attempt, idempotency_key(run_id, task_id))
    timeout = plan.spec.timeout
    token = current.set(context)
    try:
        try:
            if timeout is None:
                output = await executors.start(plan.tool, value, context)
            else:
                deadline = asyncio.timeout(timeout)
                try:
                    async with deadline:
                        output = await executors.start(plan.tool, value, context)
                except TimeoutError:
                    if deadline.expired():
                        raise AttemptFailed(f"timed out after {timeout:g}s") from None
                    raise
        except (asyncio.CancelledError, AttemptFailed):
            raise
        except Exception as exc:  # a tool may raise anything; that is the task failing
            raise AttemptFailed(describe(exc)) from None
        try:
            data = encode_output(output)
        except (TypeError, msgspec.EncodeError, OverflowError) as exc:
            raise AttemptFailed(
                f"output of type {type(output).__name__} is not serialisable: {exc}",
                retryable=False,
            ) from None
        return decode_output(data), data
    finally:
        current.reset(token)
        reports.settle(task_id, attempt)


def describe(exc: BaseException) -> str:
    """An exception as the journal records a failure: its type, and its text if any."""
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
