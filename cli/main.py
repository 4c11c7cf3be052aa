"""The `durable` command group and the one error boundary.

Commands import the engine lazily so that `durable --help` starts fast.
"""

from __future__ import annotations

import sys

import click

from durable.errors import DurableError


class DurableGroup(click.Group):
    """Turns a `DurableError` into one line on stderr (then detail lines) and its exit code.

    Nothing else is caught: an exception that is not a `DurableError` is a bug, and
    its traceback is what a bug report needs.
    """

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except DurableError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            # Ctrl-C before a run's own handler is installed (while validating a
            # large file, say): nothing was journaled yet, nothing to resume.
            click.echo("error: interrupted", err=True)
            ctx.exit(130)


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


def _register() -> None:
    from durable_cli import (
        bench_cmds,
        fleet_cmds,
        inspect_cmds,
        journal_cmds,
        operator_cmds,
        run_cmds,
        timeline_cmds,
        watch_cmds,
    )

    for module in (
        run_cmds,
        journal_cmds,
        watch_cmds,
        inspect_cmds,
        bench_cmds,
        timeline_cmds,
        fleet_cmds,
    ):
        for command in module.COMMANDS:
            cli.add_command(command)
    cli.add_command(operator_cmds.export)
    cli.add_command(operator_cmds.prune)
    cli.add_command(operator_cmds.cache)
    cli.add_command(operator_cmds.cancel)


_register()


def main() -> None:
    cli(prog_name="durable")


if __name__ == "__main__":
    sys.exit(main())
