"""durable: run workflows of tool calls in parallel, and never lose finished work."""

from durable.errors import DurableError
from durable.spec import Task, Workflow
from durable.tools import tool

__all__ = ["DurableError", "Task", "Workflow", "tool"]
