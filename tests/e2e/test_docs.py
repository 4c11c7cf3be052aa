"""Every command has help, and every command is documented in the README.

The commands are those the design promises (DESIGN.md §5) together with those the
installed `durable` lists in its own help: a command missing from either side
fails here, by name.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

DURABLE = os.path.join(os.path.dirname(sys.executable), "durable")
README = Path(__file__).resolve().parent.parent.parent / "README.md"
DESIGNED = ["run", "resume", "runs", "status", "log", "output", "validate", "graph", "bench"]


def durable(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DURABLE, *args], capture_output=True, text=True, timeout=60, check=False)


def listed_commands() -> list[str]:
    """The command names under "Commands:" in `durable --help`."""
    result = durable("--help")
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("Commands:", 1)[1]
    return re.findall(r"^  (\S+)", section, flags=re.MULTILINE)


COMMANDS = sorted(set(DESIGNED) | set(listed_commands()))


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda command: durable(command, "--help"), COMMANDS)
        return dict(zip(COMMANDS, results, strict=True))


def test_top_level_help() -> None:
    result = durable("--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    assert listed_commands()


@pytest.mark.parametrize("command", COMMANDS)
def test_command_has_help(helps: dict[str, subprocess.CompletedProcess[str]], command: str) -> None:
    result = helps[command]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"durable {command}" in result.stdout
    body = result.stdout.split("\n", 1)[1]
    assert body.strip(), f"`durable {command} --help` has a usage line and nothing else"


@pytest.mark.parametrize("command", COMMANDS)
def test_command_is_in_readme(command: str) -> None:
    readme = README.read_text(encoding="utf-8")
    assert re.search(rf"\bdurable {re.escape(command)}\b", readme), (
        f"README.md never shows `durable {command}`"
    )
