"""`durable validate` on the catalogue of broken files, run as the real command.

Each file in `tests/data/invalid/` is paired with the substrings its error must
contain in `expected.toml`. Every file must exit 2, name itself, say what is wrong,
and never print a traceback: a traceback means a user error reached us as a bug.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

INVALID = Path(__file__).parent.parent / "data" / "invalid"
EXPECTED: dict[str, dict] = tomllib.loads((INVALID / "expected.toml").read_text())


@pytest.fixture(scope="module")
def validated(
    durable, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, subprocess.CompletedProcess]:
    """Run `durable validate` on every catalogue entry once, in parallel."""
    cwd = tmp_path_factory.mktemp("validate")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
        futures = {
            name: pool.submit(durable, "validate", str(INVALID / name), cwd=cwd)
            for name in EXPECTED
        }
        return {name: future.result() for name, future in futures.items()}


def test_catalogue_matches_the_folder() -> None:
    files = {p.name for p in INVALID.iterdir() if p.name != "expected.toml"}
    present = {name for name, entry in EXPECTED.items() if entry.get("exists", True)}
    absent = {name for name, entry in EXPECTED.items() if not entry.get("exists", True)}
    assert files == present
    assert not any((INVALID / name).exists() for name in absent)
    assert len(files) >= 24
    assert all(entry["contains"] for entry in EXPECTED.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_file_is_reported(
    name: str, validated: dict[str, subprocess.CompletedProcess]
) -> None:
    result = validated[name]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert name in result.stderr.splitlines()[0]
    for expected in EXPECTED[name]["contains"]:
        assert expected in result.stderr


VALID = """\
name: demo
params: {who: world}
tasks:
  - id: greet
    tool: echo
    input: {text: "hello ${params.who}"}
  - id: dump
    tool: "json:dumps"
    input: {obj: [1, 2]}
  - id: report
    tool: echo
    input: {greeting: "${greet.output.text}", dumped: "${dump.output}"}
    when: "${greet.output.text} != ''"
"""


def test_valid_file_prints_one_line_summary(durable, write, tmp_path: Path) -> None:
    path = write(tmp_path, "ok.yaml", VALID)
    result = durable("validate", path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "demo: 3 tasks, 2 levels, max concurrency 16\n"
    assert result.stderr == ""


def test_graph_of_invalid_file_is_the_same_error(durable, tmp_path: Path) -> None:
    result = durable("graph", INVALID / "cycle_3.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "cycle: x -> y -> z -> x" in result.stderr
    assert "Traceback" not in result.stderr
