"""The `durable` group loads each command's module on first use, from `main.COMMANDS`."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
from durable_cli import main


def test_the_table_names_every_command_of_every_module() -> None:
    for module_name in sorted(set(main.COMMANDS.values())):
        module = importlib.import_module(f"durable_cli.{module_name}")
        for command in getattr(module, "COMMANDS", ()):
            assert main.COMMANDS.get(command.name) == module_name, command.name


def test_every_command_loads() -> None:
    ctx = click.Context(main.cli)
    for name in main.cli.list_commands(ctx):
        command = main.cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name
    assert main.cli.get_command(ctx, "no-such-command") is None


def test_a_command_loads_only_its_own_module() -> None:
    """`durable run` must not pay for the other commands (nor `--help` for the engine)."""
    code = (
        "import sys, click\n"
        "from durable_cli.main import cli\n"
        "cli.get_command(click.Context(cli), 'run')\n"
        "print(sorted(m for m in sys.modules if m.startswith(('durable_cli.', 'durable.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = eval(out.stdout)  # a list of module names
    assert "durable_cli.run_cmds" in loaded
    assert not [m for m in loaded if m.endswith("_cmds") and m != "durable_cli.run_cmds"]
    assert "durable.runner" not in loaded and "durable.engine" not in loaded


def test_importing_the_command_registers_no_exit_callback() -> None:
    """`main` registers its exit (`_Leave`) first, so that it is called last, after every
    other `atexit` callback: nothing imported before `main` runs may register one."""
    code = "import atexit\nimport durable_cli.main\nprint(atexit._ncallbacks())\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
