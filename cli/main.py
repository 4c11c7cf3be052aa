"""The `durable` command group and the one error boundary.

A command's module is imported only when that command runs (or `--help` lists it),
and commands import the engine lazily, so that `durable run` pays for neither the
other commands nor their options, and `durable --help` not for the engine.
"""

from __future__ import annotations

import atexit
import errno
import importlib
import os
import sys
from typing import NoReturn

import click

from durable.errors import DurableError, OutputClosed
from durable.streams import discard_rest

# Each command, by name, and the module of `durable_cli` that defines it (in the
# module's `COMMANDS`, or as the attribute of that name). Listed here rather than found
# by importing every module; `tests/unit/test_cli_main.py` checks the two agree.
COMMANDS: dict[str, str] = {
    "run": "run_cmds",
    "resume": "run_cmds",
    "rerun": "run_cmds",
    "runs": "journal_cmds",
    "status": "journal_cmds",
    "log": "journal_cmds",
    "output": "journal_cmds",
    "check": "journal_cmds",
    "watch": "watch_cmds",
    "validate": "inspect_cmds",
    "graph": "inspect_cmds",
    "bench": "bench_cmds",
    "timeline": "timeline_cmds",
    "worker": "fleet_cmds",
    "workers": "fleet_cmds",
    "export": "operator_cmds",
    "prune": "operator_cmds",
    "cache": "operator_cmds",
    "cancel": "operator_cmds",
}


# click 8.2+ raises this usage error to show a group's help when it is given no
# command (`durable`, `durable cache`); that stays help, as click prints it.
_HELP_NOT_ERROR: type[click.UsageError] | tuple[()] = getattr(
    click.exceptions, "NoArgsIsHelpError", ()
)


class DurableGroup(click.Group):
    """Turns a `DurableError` into one line on stderr (then detail lines) and its exit code.

    click's usage errors (a bad option value, a missing argument, an unknown option or
    command) take the same way, as `usage_error` makes them: the problem first, in
    click's words, then its usage line and help hint. Nothing else is caught: an
    exception that is neither is a bug, and its traceback is what a bug report needs.
    Commands are loaded from `COMMANDS` on first use.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module = importlib.import_module(f"durable_cli.{COMMANDS[cmd_name]}")
            listed = [c for c in getattr(module, "COMMANDS", ()) if c.name == cmd_name]
            self.add_command(listed[0] if listed else getattr(module, cmd_name))
        return self.commands.get(cmd_name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """`durable`'s own options; a command's are parsed in `invoke`."""
        try:
            return super().parse_args(ctx, args)
        except _HELP_NOT_ERROR:
            raise
        except click.UsageError as exc:
            if ctx.resilient_parsing:  # shell completion: click's, untouched
                raise
            refuse(ctx, usage_error(exc))

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except DurableError as exc:
            refuse(ctx, exc)
        except OSError as exc:
            # Only the output meets these at this boundary (the journal's errors and a
            # file's, `-o`, are durable's own): a full disk, a pipe's reader gone.
            if exc.errno not in _OUTPUT_ERRNOS:
                raise
            discard_rest(sys.stdout)  # what it still buffers must not fail the exit again
            refuse(ctx, OutputClosed(exc.strerror or str(exc)))
        except _HELP_NOT_ERROR:
            raise
        except click.UsageError as exc:
            refuse(ctx, usage_error(exc))
        except KeyboardInterrupt:
            # Ctrl-C before a run's own handler is installed (while validating a
            # large file, say): nothing was journaled yet, nothing to resume.
            click.echo("error: interrupted", err=True)
            ctx.exit(130)


_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EPIPE, errno.EDQUOT, errno.EFBIG, errno.EIO})


def refuse(ctx: click.Context, exc: DurableError) -> NoReturn:
    """Print `error: MESSAGE` (then its detail lines) on stderr and exit with its code."""
    click.echo(f"error: {exc}", err=True)
    ctx.exit(exc.exit_code)


def usage_error(exc: click.UsageError) -> DurableError:
    """click's usage error as durable's: click's message, naming the option or argument,
    then the command's usage line and `Try 'durable CMD --help' for help.` as details.

    click's own layout puts the usage first and its `Error:` line last.
    """
    details: list[str] = []
    ctx = exc.ctx
    if ctx is not None:
        details.append(" ".join(ctx.get_usage().split()))  # one line, however wide
        if ctx.command.get_help_option(ctx) is not None:
            option = max(ctx.command.get_help_option_names(ctx), key=len)
            details.append(f"Try '{ctx.command_path} {option}' for help.")
    error = DurableError(exc.format_message(), details)
    error.exit_code = exc.exit_code
    return error


@click.group(cls=DurableGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="durable", prog_name="durable")
def cli() -> None:
    """Run workflows of tool calls in parallel, journaled to SQLite.

    A crashed or interrupted run resumes where it stopped: finished tasks are
    never run again.

    \b
    Start with:
      durable validate examples/research/workflow.yaml
      durable run examples/research/workflow.yaml
      durable runs
    """


def main() -> None:
    """The `durable` command: `cli`, then an exit without the interpreter's teardown."""
    if sys.stdout is None:  # started with it closed (`>&-`): nowhere to say anything
        print("error: standard output is closed (send it to /dev/null instead)", file=sys.stderr)
        raise SystemExit(2)
    leave = _Leave()
    if getattr(atexit, "_ncallbacks", lambda: 1)() == 0:
        atexit.register(leave)  # the first registered, so the last called
    try:
        cli(prog_name="durable")
    except SystemExit as exit:
        if exit.code is None or type(exit.code) is int:  # not a message to print
            leave.code = exit.code or 0
        raise


class _Leave:
    """Ends the process with `os._exit` once every other exit step is done.

    Python's teardown frees every module and object one by one, with collections of
    the garbage collector between: about a tenth of a one-task `durable run`'s
    instructions, and more of its time (each object's memory is touched once more).
    As the last `atexit` callback this runs after threads that are not daemons have
    been joined and every other callback (logging's flush, a pool's shutdown, a
    tool's own) has run; it flushes standard output and error, then exits with the
    code `cli` gave. What it skips is the finalizing of objects still alive then: a
    Python tool must close or flush a file it writes, as for a process that may be
    killed. A bug's traceback (no `SystemExit`), an exit with a message, or a flush
    that fails (a closed pipe) take Python's usual exit; so does a process in which
    something registered an `atexit` callback before `main` ran (a `sitecustomize`,
    coverage measuring subprocesses), which this one would otherwise skip.
    """

    def __init__(self) -> None:
        #: The exit code, once `cli` has exited with one (None: Python's usual exit).
        self.code: int | None = None

    def __call__(self) -> None:
        if self.code is None:
            return
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            return
        os._exit(self.code)


if __name__ == "__main__":
    sys.exit(main())
