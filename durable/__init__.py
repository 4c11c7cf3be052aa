"""durable: run workflows of tool calls in parallel, and never lose finished work."""

from durable.errors import DurableError
from durable.executors import TaskContext, current_context
from durable.runner import RunResult, arun, aresume, resume, run
from durable.spec import Task, Workflow, load
from durable.tools import tool

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
