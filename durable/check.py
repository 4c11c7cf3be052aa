"""`durable check`: is the journal whole, and if not, exactly what is damaged.

Three layers, each catching what the others cannot: SQLite's own integrity check
(the file's pages and indexes), every row's checksum and every run's chain
(`integrity.py`: a changed, lost or moved event), and the fold (a history the
state machine forbids). Events that belong to no run are reported too, and a
run's summary that is damaged or disagrees with the fold (`summary.py`).
"""

from __future__ import annotations

import msgspec

from durable.errors import DurableError, JournalDamaged, JournalError
from durable.inspection import fold_run
from durable.journal import Journal, RunRecord
from durable.state import RunState
from durable.summary import summarize


class CheckReport(msgspec.Struct):
    runs: int = 0
    events: int = 0
    #: Runs written before checksums existed: read, folded, but not verifiable.
    unverified: list[str] = msgspec.field(default_factory=list)
    problems: list[str] = msgspec.field(default_factory=list)


async def check_journal(journal: Journal, run_id: str | None = None) -> CheckReport:
    """Check the whole journal, or one run of it; never raises for damage, reports it."""
    report = CheckReport()
    report.problems += await journal.page_problems()
    if run_id is not None:
        try:
            records: list[RunRecord | JournalDamaged] = [await journal.get_run(run_id)]
        except JournalDamaged as exc:
            records = [exc]
    else:
        records = await journal.list_runs()
        orphans = await journal.orphan_events()
        report.problems += [
            f"{count} event(s) belong to no run (run id {orphan!r})" for orphan, count in orphans
        ]
    for record in records:
        report.runs += 1
        if isinstance(record, JournalDamaged):
            report.problems.append(record.message.removeprefix(f"{journal.path}: "))
            continue
        count, problems = await journal.damage(record.run_id)
        report.events += count
        report.problems += [f"run '{record.run_id}': {problem}" for problem in problems]
        if record.crc is None:
            report.unverified.append(record.run_id)
        if problems:
            continue
        try:
            _, state, last_seq = await fold_run(journal, record)
        except JournalDamaged as exc:
            report.problems.append(exc.message.removeprefix(f"{journal.path}: "))
            continue
        if problem := await _summary_problem(journal, record, state, last_seq):
            report.problems.append(f"run '{record.run_id}': {problem}")
    return report


async def _summary_problem(
    journal: Journal, record: RunRecord, state: RunState, last_seq: int
) -> str | None:
    """What is wrong with the run's summary: damaged, or not the fold of its events."""
    row = await journal.read_summary(record.run_id, last_seq)
    if row.damaged:
        return "its summary does not match its checksum (`durable runs` folds its events instead)"
    if (
        row.summary is not None
        and not row.behind
        and row.summary != summarize(record.workflow, record.created_at, state)
    ):
        return "its summary does not agree with the fold of its events"
    return None


def raise_for(report: CheckReport, journal: Journal) -> None:
    """Turn a report with problems into the error `durable check` exits with."""
    if not report.problems:
        return
    count = len(report.problems)
    error: DurableError = JournalError(
        str(journal.path), f"damaged: {count} problem{'s' if count != 1 else ''} found"
    )
    error.details = report.problems
    raise error
