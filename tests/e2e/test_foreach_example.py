"""The `research_foreach` example, run by the real `durable` command.

`plan` answers with sub-questions; `search` and `summarise` are `foreach` tasks that
expand into one instance per sub-question (`search[0]`, `search[1]`...); `report`
joins the summaries into a Markdown file. The tests check the instances in
`durable status`, the outputs in `durable output` (the group's list is the
instances' outputs in item order), and the report: one section per sub-question.
Then a run is SIGKILLed while the `search` instances run (`RESEARCH_SLOW` makes each
search take a second, and the example lets two run at once), and `durable resume`
must finish it with the report of an uninterrupted run, without running again an
instance whose success was committed before the kill.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "research_foreach"
WORKFLOW = EXAMPLE / "workflow.yaml"
DEFAULT_QUESTION = "Explain write-ahead logging, event sourcing, idempotent retries and fan-out"
FAST = {"RESEARCH_SLOW": None}


def output(durable, as_json, folder: Path, run_id: str, task: str) -> Any:
    return as_json(durable("output", run_id, task, "--db", folder / "journal.db", cwd=folder))


def succeeded(journal_rows, db: Path, run_id: str, group: str) -> set[str]:
    """The instances of `group` whose success is committed."""
    rows = journal_rows(
        db,
        "SELECT task_id FROM events WHERE run_id = ? AND kind IN ('task_succeeded', 'task_ran')"
        " AND task_id LIKE ?",
        (run_id, f"{group}[%"),  # `[` is plain text to LIKE
    )
    return {task_id for (task_id,) in rows}


def starts(journal_rows, db: Path, run_id: str, task_id: str) -> int:
    rows = journal_rows(
        db,
        "SELECT count(*) FROM events WHERE run_id = ? AND kind IN ('task_started', 'task_ran')"
        " AND task_id = ?",
        (run_id, task_id),
    )
    return rows[0][0]


@pytest.mark.parametrize(
    ("question", "report", "expected"),
    [
        pytest.param(None, "report.md", 4, id="defaults"),
        pytest.param("Compare sagas and exactly-once delivery", "sagas.md", 2, id="params"),
    ],
)
def test_every_instance_runs_and_the_report_has_a_section_each(
    durable, as_json, no_traceback, tmp_path: Path, question: str | None, report: str, expected
) -> None:
    params = [] if question is None else ["-p", f"question={question}", "-p", f"report={report}"]
    db = tmp_path / "journal.db"
    result = durable("run", WORKFLOW, *params, "--db", db, "--run-id", "r", cwd=tmp_path, env=FAST)
    no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr

    questions = output(durable, as_json, tmp_path, "r", "plan")["questions"]
    assert len(questions) == expected

    status = as_json(durable("status", "r", "--db", db, "--json", cwd=tmp_path))
    assert status["status"] == "succeeded"
    states = {task: info["state"] for task, info in status["tasks"].items()}
    instances = {task for task in states if "[" in task}
    assert instances == {
        f"{group}[{i}]" for group in ("search", "summarise") for i in range(expected)
    }
    assert set(states.values()) == {"succeeded"}, states

    search = output(durable, as_json, tmp_path, "r", "search")
    one_by_one = [output(durable, as_json, tmp_path, "r", f"search[{i}]") for i in range(expected)]
    assert search == one_by_one
    assert [part["question"] for part in search] == questions
    assert [part["position"] for part in search] == list(range(expected))
    outputs = {task: info["output"] for task, info in status["tasks"].items()}
    assert outputs["search"] == search
    summaries = outputs["summarise"]
    assert summaries == [outputs[f"summarise[{i}]"] for i in range(expected)]
    assert [part["question"] for part in summaries] == questions

    written = output(durable, as_json, tmp_path, "r", "report")
    assert written == {"path": str((tmp_path / report).resolve()), "sections": expected}
    lines = (tmp_path / report).read_text().splitlines()
    assert lines[0] == f"# {question or DEFAULT_QUESTION}"
    sections = [line for line in lines if line.startswith("## ")]
    assert sections == [f"## {i + 1}. {q}" for i, q in enumerate(questions)]


def test_a_run_killed_during_the_searches_resumes_to_the_same_report(
    durable, start, stop, as_json, no_traceback, wait_for_events, journal_rows, tmp_path: Path
) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    killed.mkdir()
    durable(
        "run", WORKFLOW, "--db", whole / "journal.db", "--run-id", "w", cwd=whole, env=FAST, check=0
    )
    count = len(output(durable, as_json, whole, "w", "plan")["questions"])

    db = killed / "journal.db"
    process = start(
        "run", WORKFLOW, "--db", db, "--run-id", "k", cwd=killed, env={"RESEARCH_SLOW": "1"}
    )
    try:
        wait_for_events(db, "k", "task_expanded", task_id="search", process=process)
        deadline = time.monotonic() + 30
        while not succeeded(journal_rows, db, "k", "search"):
            assert process.poll() is None, f"durable exited ({process.returncode}) before a search"
            assert time.monotonic() < deadline, "no search instance succeeded within 30s"
            time.sleep(0.002)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        stop(process)

    done_before = succeeded(journal_rows, db, "k", "search")
    assert 0 < len(done_before) < count, "the kill did not land while the searches ran"
    assert not (killed / "report.md").exists()

    result = durable("resume", "k", "--db", db, cwd=killed, env=FAST)
    no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr

    status = as_json(durable("status", "k", "--db", db, "--json", cwd=killed))
    assert status["status"] == "succeeded"
    assert {task for task in status["tasks"] if task.startswith("search[")} == {
        f"search[{i}]" for i in range(count)
    }
    assert {info["state"] for info in status["tasks"].values()} == {"succeeded"}
    for task in done_before:  # committed before the kill: never run again
        assert starts(journal_rows, db, "k", task) == 1, task
    assert output(durable, as_json, killed, "k", "summarise") == output(
        durable, as_json, whole, "w", "summarise"
    )
    assert (killed / "report.md").read_text() == (whole / "report.md").read_text()
