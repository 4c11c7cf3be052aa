"""Ctrl-C before a run exists (while a workflow is being validated) exits 130, no traceback."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

# Imported while the workflow is validated: it says so on stderr, then blocks (for a
# minute at most), so the signal lands mid-validation however loaded the machine is.
TOOLS = """
import sys
import time

print("importing tools", file=sys.stderr, flush=True)
time.sleep(60)
"""

WORKFLOW = """
name: early
imports: [tools]
tasks:
  - {id: a, tool: echo, input: {n: 1}}
"""


def test_sigint_while_validating_exits_130_without_a_traceback(
    tmp_path: Path, start, stop, write, Lines
) -> None:
    write(tmp_path, "tools.py", TOOLS)
    workflow = write(tmp_path, "workflow.yaml", WORKFLOW)
    process = start("validate", workflow, cwd=tmp_path)
    try:
        errors = Lines(process.stderr)
        assert errors.next() == "importing tools\n"
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        err = errors.rest()
        out = process.stdout.read()
        assert process.wait(timeout=30) == 130
    finally:
        stop(process)
    assert err.splitlines()[0] == "error: interrupted"
    assert "Traceback" not in out + err
