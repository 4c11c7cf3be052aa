"""Commands that read a workflow file without running it: `validate` and `graph`."""

from __future__ import annotations

import click

workflow_argument = click.argument("workflow", type=click.Path(dir_okay=False, path_type=str))


@click.command()
@workflow_argument
def validate(workflow: str) -> None:
    """Check a workflow file without running it.

    Reports every problem at once: unknown keys, wrong types, duplicate ids, unknown
    dependencies, tools and references, bad `when` expressions, cycles. Exits 0 and
    prints a one-line summary when the file is valid, 2 otherwise.
    """
    from durable.loader import plan_file

    plan, _ = plan_file(workflow)
    click.echo(plan.summary())


@click.command()
@workflow_argument
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "dot", "mermaid"]),
    default="text",
    show_default=True,
    help="text: the levels (tasks on one level can run together); dot/mermaid: the DAG.",
)
def graph(workflow: str, fmt: str) -> None:
    """Show how a workflow would run: its levels, or its DAG as DOT or Mermaid."""
    from durable import graph as graph_module
    from durable.loader import plan_file

    plan, _ = plan_file(workflow)
    render = {
        "text": graph_module.to_text,
        "dot": graph_module.to_dot,
        "mermaid": graph_module.to_mermaid,
    }
    click.echo(render[fmt](plan))


COMMANDS = [validate, graph]
