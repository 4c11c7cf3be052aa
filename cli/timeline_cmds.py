"""`durable timeline`: a run drawn as one self-contained HTML file.

It only reads: the journal is opened read-only, as by `status` and `log`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from durable_cli.options import db_option, run_id_argument


@click.command()
@run_id_argument()
@db_option
@click.option(
    "-o",
    "--output",
    "output_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Where to write the HTML ('-' for stdout). [default: timeline-RUN_ID.html]",
)
@click.option("--open", "open_it", is_flag=True, help="Open the file in the default browser.")
def timeline(run_id: str, db: str | None, output_path: str | None, open_it: bool) -> None:
    """Draw a run as one HTML file (no network needed): every attempt on a Gantt
    chart, running tasks against the concurrency bound, and the critical path.
    """
    from durable_cli.journal_cmds import _with_journal
    from durable_cli.output_file import write_output

    from durable import timeline_html
    from durable.timeline import Timeline, build

    async def collect(journal: Any) -> Timeline:
        from durable import graph, spec
        from durable.inspection import resolve_run_id, view_run

        record = await journal.get_run(await resolve_run_id(journal, run_id))
        view = await view_run(journal, record)  # refuses a damaged run
        # The picture needs no tool: plan without importing the workflow's modules.
        plan = graph.build_trusted(spec.decode(record.spec), _no_tool)
        events = [event for _, event in await journal.events(record.run_id)]
        return build(record.run_id, events, plan, status=view.status, live=view.status == "running")

    drawn = _with_journal(db, collect)
    page = timeline_html.render(drawn)
    if output_path == "-":
        click.echo(page, nl=False)
        return
    path = Path(output_path or f"timeline-{drawn.run_id}.html")
    write_output(path, page.encode("utf-8"))
    tasks = len(drawn.states)
    click.echo(f"wrote {path} ({len(drawn.attempts)} attempts of {tasks} tasks)")
    if open_it:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            click.echo(f"no browser found here: open {path} yourself")


def _no_tool(name: str) -> Any:
    """A tool resolver that resolves nothing: the timeline needs the graph, not the tools."""
    return None


COMMANDS = [timeline]
