"""durable: run workflows of tool calls in parallel, and never lose finished work.

The public names are re-exported lazily (PEP 562), so that `import durable.errors`
(what the CLI needs to print `--help`) does not pay for the engine's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from durable.errors import DurableError
    from durable.executors import TaskContext, current_context
    from durable.runner import RunResult, aresume, arun, resume, run
    from durable.spec import Task, Workflow, load
    from durable.tools import tool

_EXPORTS = {
    "DurableError": "durable.errors",
    "TaskContext": "durable.executors",
    "current_context": "durable.executors",
    "RunResult": "durable.runner",
    "arun": "durable.runner",
    "aresume": "durable.runner",
    "run": "durable.runner",
    "resume": "durable.runner",
    "Task": "durable.spec",
    "Workflow": "durable.spec",
    "load": "durable.spec",
    "tool": "durable.tools",
}

__all__ = [
    "DurableError",
    "RunResult",
    "Task",
    "TaskContext",
    "Workflow",
    "aresume",
    "arun",
    "current_context",
    "load",
    "resume",
    "run",
    "tool",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'durable' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
