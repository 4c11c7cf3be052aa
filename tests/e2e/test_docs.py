"""Every command has help, and every command is documented in the README.

The commands are those the README's "Command line" section promises, together with
those registered on the `durable` click group, which must be exactly those its
`--help` lists: a command missing from any side fails here, by name.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest
from durable_cli.main import cli

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parent.parent.parent / "README.md"
DOCUMENTED = ["run", "resume", "runs", "status", "log", "output", "validate", "graph", "bench"]
REGISTERED = cli.list_commands(click.Context(cli))  # loaded on first use: not `cli.commands`
COMMANDS = sorted(set(DOCUMENTED) | set(REGISTERED))


@pytest.fixture(scope="module")
def helps(
    durable, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, subprocess.CompletedProcess[str]]:
    """`durable COMMAND --help` for every command, run in parallel."""
    cwd = tmp_path_factory.mktemp("help")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda command: durable(command, "--help", cwd=cwd), COMMANDS)
        return dict(zip(COMMANDS, results, strict=True))


def test_top_level_help_lists_every_command(durable, tmp_path: Path) -> None:
    result = durable("--help", cwd=tmp_path, check=0)
    assert "Usage: durable" in result.stdout
    section = result.stdout.split("Commands:", 1)[1]
    listed = re.findall(r"^  (\S+)", section, flags=re.MULTILINE)
    assert sorted(listed) == sorted(REGISTERED)


@pytest.mark.parametrize("command", COMMANDS)
def test_command_has_help(helps: dict[str, subprocess.CompletedProcess[str]], command: str) -> None:
    result = helps[command]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"Usage: durable {command}" in result.stdout
    body = result.stdout.split("\n", 1)[1]
    assert body.strip(), f"`durable {command} --help` has a usage line and nothing else"


@pytest.mark.parametrize("command", COMMANDS)
def test_command_is_in_readme(command: str) -> None:
    readme = README.read_text(encoding="utf-8")
    assert re.search(rf"\bdurable {re.escape(command)}\b", readme), (
        f"README.md never shows `durable {command}`"
    )


def test_every_package_is_in_the_build() -> None:
    """A subpackage missing from pyproject's `packages` is left out of the wheel,
    though an editable install (and so every other test) would never notice."""
    import tomllib

    root = README.parent
    declared = set(
        tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(root).parts)
        for init in (root / "durable").rglob("__init__.py")
    }
    assert found <= declared, f"add to [tool.setuptools] packages: {sorted(found - declared)}"
