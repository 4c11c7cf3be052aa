"""Ctrl-C before a run exists (while a large file is being validated) exits 130, no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DURABLE = os.path.join(os.path.dirname(sys.executable), "durable")


@pytest.mark.e2e
def test_sigint_while_validating_exits_130_without_a_traceback(tmp_path: Path) -> None:
    # PyYAML takes seconds to decode this many tasks, so the signal lands mid-parse.
    lines = ["name: big", "tasks:"]
    lines += [f"  - {{id: t{i}, tool: echo, input: {{i: {i}}}}}" for i in range(60_000)]
    workflow = tmp_path / "big.yaml"
    workflow.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(
        [DURABLE, "validate", str(workflow)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.8)
    assert process.poll() is None, "validation finished before the signal could be sent"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert err.splitlines()[0] == "error: interrupted"
    assert "Traceback" not in out + err
