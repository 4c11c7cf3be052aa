"""`durable timeline`: a real run (retries, a failure, an interruption, a resume) drawn
and loaded in a real headless browser, Debian's `chromium`.

Without chromium on PATH the browser tests are skipped, saying how to install it;
`.ci/run` installs it, so CI runs them (with `CI` set, a missing chromium fails them). The page's own script records what a test
needs on the root element (`data-bars`, `data-errors`), and chromium's console
(`--enable-logging=stderr`) must stay silent. The screenshot of the main run is kept
at `tests/artifacts/timeline.png` (and under the test's tmp_path).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
RUN_ID = "timeline01"

TOOLS = '''
import asyncio
import pathlib

import durable


@durable.tool
async def flaky(n: int) -> dict:
    """Fails twice, then succeeds."""
    counter = pathlib.Path("flaky.count")
    count = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(count + 1))
    await asyncio.sleep(0.3)
    if count < 2:
        raise RuntimeError(f"flaky failure #{count + 1}: <b>not bold</b> & </script>")
    return {"n": n}


@durable.tool
async def broken() -> None:
    await asyncio.sleep(0.4)
    raise ValueError("always fails: <img src=x onerror=alert(1)>")


@durable.tool
async def slow(seconds: float) -> str:
    """Hangs on its first two calls (to be interrupted, then killed), takes `seconds` after."""
    counter = pathlib.Path("slow.count")
    count = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(count + 1))
    if count < 2:
        await asyncio.sleep(120)
    await asyncio.sleep(seconds)
    return "built"
'''

WORKFLOW = """
name: timeline-demo
max_concurrency: 3
imports: [tools]
tasks:
  - {id: fetch, tool: sleep, input: {seconds: 0.3, result: 1}}
  - {id: side, tool: sleep, input: {seconds: 0.4}}
  - id: flaky_api
    tool: flaky
    input: {n: "${fetch.output}"}
    retries: 2
    retry_delay: 0.2
  - {id: broken_step, tool: broken, dependencies: [fetch]}
  - {id: after_broken, tool: echo, input: "${broken_step.output}"}
  - {id: slow_build, tool: slow, input: {seconds: 0.6}, dependencies: [fetch]}
  - {id: report, tool: sleep, input: {seconds: 0.3}, dependencies: [flaky_api, slow_build]}
  - id: cleanup
    tool: sleep
    input: {seconds: 0.2}
    dependencies: [report, after_broken]
    trigger: all_done
"""


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
    durable: Any,
    start: Any,
    stop: Any,
    write: Any,
    wait_for_events: Any,
) -> tuple[Path, Path]:
    """The run of the check, in three sessions: retries and a failure, then SIGINT while
    `slow_build` runs; a resume killed (SIGKILL) while it runs again; a resume to the end."""
    folder = tmp_path_factory.mktemp("timeline")
    write(folder, "tools.py", TOOLS)
    write(folder, "workflow.yaml", WORKFLOW)
    db = folder / "journal.db"
    process = start("run", "workflow.yaml", "--db", db, "--run-id", RUN_ID, cwd=folder)
    try:
        for task_id, kind in (
            ("slow_build", "task_started"),
            ("flaky_api", "task_succeeded"),
            ("broken_step", "task_failed"),
        ):
            wait_for_events(db, RUN_ID, kind, task_id=task_id, process=process)
        os.kill(process.pid, signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        stop(process)
    process = start("resume", RUN_ID, "--db", db, cwd=folder)
    try:
        wait_for_events(db, RUN_ID, "task_started", 2, task_id="slow_build", process=process)
        wait_for_events(db, RUN_ID, "task_failed", 2, task_id="broken_step", process=process)
    finally:
        stop(process)  # SIGKILL: the process dies with slow_build running
    durable("resume", RUN_ID, "--db", db, cwd=folder, check=1)  # broken_step fails again
    return folder, db


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None and os.environ.get("CI"):
        pytest.fail(
            "chromium is not on PATH, yet .ci/run installs it: the browser tests must run in CI"
        )
    if found is None:
        pytest.skip(
            "chromium is not on PATH: install Debian's package (`apt-get install -y chromium`) "
            "to run the timeline's browser tests; .ci/run installs it"
        )
    return found


def load(page: Path, profile: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """Load a page in headless chromium: its DOM after the scripts ran, and its console."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",  # never the shared default profile
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1400,900",
        "--dump-dom",
    ]
    if screenshot is not None:
        command.append(f"--screenshot={screenshot}")
    result = subprocess.run(
        [*command, page.as_uri()], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


def root_data(dom: str) -> dict[str, str]:
    """The `data-*` attributes of the page's root element, as the script left them."""
    match = re.search(r"<html([^>]*)>", dom)
    assert match, dom[:500]
    return dict(re.findall(r'data-([a-z]+)="([^"]*)"', match.group(1)))


def test_the_timeline_loads_in_chromium_with_a_bar_per_attempt(
    demo_run: tuple[Path, Path], durable: Any, count_events: Any, no_traceback: Any, tmp_path: Path
) -> None:
    folder, db = demo_run
    page = tmp_path / "run.html"
    result = durable("timeline", RUN_ID, "--db", db, "-o", page, cwd=folder, check=0)
    no_traceback(result)
    attempts = count_events(db, RUN_ID, "task_started")
    # fetch, side, report, cleanup; flaky_api x3; broken_step and slow_build x3 (3 sessions)
    assert attempts == 13
    assert result.stdout == f"wrote {page} ({attempts} attempts of 8 tasks)\n"

    shot = tmp_path / "timeline.png"
    dom, console = load(page, tmp_path / "profile", screenshot=shot)
    data = root_data(dom)
    assert data["ready"] == "1", "the page's script did not run to its end"
    assert data["errors"] == "0", re.search(r'<pre id="page-errors">(.*?)</pre>', dom, re.S)
    assert console == []
    assert int(data["bars"]) == attempts
    assert int(data["marks"]) == count_events(db, RUN_ID, "task_upstream_failed")
    # The errors are user data: shown as text in the tooltips, never as markup.
    assert "<img" not in dom and "<b>not bold" not in dom
    # The interruption, the gap and the resume are drawn; so is the critical path.
    assert 'class="ending interrupted"' in dom and 'class="ending died"' in dom
    assert dom.count('class="gapband"') == 2
    cut = re.findall(r'<rect class="bar cut[^"]*" data-i', dom)
    # slow_build's two, cut by SIGINT and when the process died (the legend has one
    # without data-i); SIGINT's was drawn as cancelled, not as cut off.
    assert len(cut) == 2
    assert "resumed" in dom
    critical = re.findall(r'<text class="label crit"[^>]*><title>[^<]*</title>([^<]*)</text>', dom)
    assert critical == ["fetch", "slow_build", "report", "cleanup"]  # rows by first start
    assert len(re.findall(r'<rect class="bar [^"]*crit" data-i', dom)) == 6

    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "timeline.png")


def test_timeline_open_hands_the_file_to_the_browser(
    demo_run: tuple[Path, Path], durable: Any, tmp_path: Path
) -> None:
    folder, db = demo_run
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > "{opened}"\n')
    browser.chmod(browser.stat().st_mode | stat.S_IXUSR)
    page = tmp_path / "run.html"
    durable(
        "timeline", RUN_ID, "--db", db, "-o", page, "--open",
        cwd=folder, env={"BROWSER": str(browser)}, check=0,
    )  # fmt: skip
    assert opened.read_text() == page.resolve().as_uri()


def test_timeline_writes_to_stdout_or_by_default_into_the_current_folder(
    demo_run: tuple[Path, Path], durable: Any
) -> None:
    folder, db = demo_run
    result = durable("timeline", RUN_ID, "--db", db, "-o", "-", cwd=folder, check=0)
    assert result.stdout.startswith("<!DOCTYPE html>") and result.stdout.endswith("</html>\n")
    result = durable("timeline", RUN_ID, "--db", db, cwd=folder, check=0)
    assert result.stdout.startswith(f"wrote timeline-{RUN_ID}.html (")
    assert (folder / f"timeline-{RUN_ID}.html").read_text().startswith("<!DOCTYPE html>")


def test_timeline_of_an_unknown_run_or_into_a_missing_folder_is_refused(
    demo_run: tuple[Path, Path], durable: Any, no_traceback: Any
) -> None:
    folder, db = demo_run
    result = durable("timeline", "nosuchrun", "--db", db, cwd=folder, check=2)
    no_traceback(result)
    assert result.stderr.startswith("error: ") and "nosuchrun" in result.stderr
    result = durable(
        "timeline", RUN_ID, "--db", db, "-o", folder / "no" / "x.html", cwd=folder, check=2
    )
    no_traceback(result)
    assert result.stderr.startswith(f"error: cannot write {folder / 'no' / 'x.html'}: ")


def test_ten_thousand_tasks_draw_in_seconds_and_load(
    durable: Any, write: Any, tmp_path: Path
) -> None:
    count = 10_000
    tasks = [
        {
            "id": f"t{i}",
            "tool": "echo",
            "input": i,
            **({"dependencies": [f"t{i - 100}"]} if i >= 100 else {}),
        }
        for i in range(count)
    ]
    write(tmp_path, "big.json", json.dumps({"name": "big", "max_concurrency": 64, "tasks": tasks}))
    db = tmp_path / "journal.db"
    run = ["run", "big.json", "--db", db, "--run-id", "big", "--durability", "off"]
    durable(*run, cwd=tmp_path, check=0)
    page = tmp_path / "big.html"
    began = time.monotonic()
    durable("timeline", "big", "--db", db, "-o", page, cwd=tmp_path, check=0)
    drawn_in = time.monotonic() - began
    print(f"10k tasks: timeline written in {drawn_in:.2f}s, {page.stat().st_size / 1e6:.1f} MB")
    assert drawn_in < 10, f"{drawn_in:.2f}s (the command, start-up included)"
    began = time.monotonic()
    dom, console = load(page, tmp_path / "profile")
    print(f"10k tasks: loaded in chromium in {time.monotonic() - began:.2f}s", file=sys.stderr)
    data = root_data(dom)
    assert (data["ready"], data["errors"], data["bars"]) == ("1", "0", str(count))
    assert console == []
