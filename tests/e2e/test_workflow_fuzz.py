"""Fuzzing `durable validate` with mutated workflow files: no traceback, no hang, exit 0/1/2.

Seeded mutations (byte flips, deletions, duplications, truncations, splices, and
inserted tokens that aim at the decoders' weak spots: deep nesting, aliases, bad
bytes, YAML tags) of valid and invalid workflow files. Each case is reproducible
from its seed number alone.

Most cases run in-process through the very command the CLI runs (click's runner on
`durable_cli.main.cli`, exceptions not caught): a subprocess costs ~0.3 s a case,
which would buy ten times fewer cases. A small sample goes through the real
`durable` command to prove the two agree.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from durable_cli.main import cli

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parent.parent.parent
DURABLE = os.path.join(os.path.dirname(sys.executable), "durable")
IN_PROCESS_SEEDS = range(600)
SUBPROCESS_SEEDS = range(10_000, 10_020)
CASE_SECONDS = 10  # generous: a case takes milliseconds; this is hang detection

YAML = """\
name: fuzz
max_concurrency: 4
params: {query: durable, size: 3}
tasks:
  - id: a
    tool: echo
    input: {query: "${params.query}", items: [1, 2, {k: v}]}
  - id: b
    tool: sleep
    input: {seconds: 0, result: "${a.output.items[2]}"}
    when: "${a.output.items[0]} < ${params.size} and not false"
  - id: c
    tool: shell
    dependencies: [a]
    input: {command: "echo ${b.output.k}", check: false}
    trigger: none_failed
    timeout: 5
"""

ALIASED = """\
name: aliased
params: {shared: &shared [1, 2, 3]}
tasks:
  - &t {id: a, tool: echo, retries: 2, input: &in {x: *shared}}
  - {<<: *t, id: b, input: {y: *in, z: "${a.output.x}"}}
"""

DATA = {
    "name": "fuzz",
    "params": {"n": 2, "words": ["x", "y"]},
    "limits": {"echo": 2},
    "tasks": [
        {"id": "a", "tool": "echo", "input": {"n": "${params.n}"}},
        {"id": "b", "tool": "echo", "input": "${a.output.n}", "dependencies": ["a"]},
        {"id": "c", "tool": "echo", "when": "${b.output} == 2", "trigger": "all_done"},
    ],
}

TOML = """\
name = "fuzz"
[params]
n = 2
[[tasks]]
id = "a"
tool = "echo"
input = { n = "${params.n}", list = [1, [2, 3]] }
[[tasks]]
id = "b"
tool = "echo"
dependencies = ["a"]
retries = 2
"""

TOKENS = [
    b"[",
    b"]",
    b"{",
    b"}",
    b"[" * 150,
    b"{a: " * 150,
    b'{"a": ' * 150,
    b"a = [" * 150,
    b"*a",
    b"&a ",
    b"<<: *base\n",
    b"\n- ",
    b": ",
    b"${",
    b"${a.output}",
    b"$${",
    b'"',
    b"'",
    b"\xff",
    b"\xc3",
    b"\x00",
    b"\x07",
    b"\xef\xbb\xbf",
    b"\t",
    b"\r\n",
    b"!!python/object/apply:os.system [true] ",
    b"!!int ",
    b"!!float ",
    b"!!binary ",
    b"!!set ",
    b"2021-13-45",
    b"1e999",
    b"-1",
    b"null",
    b"~",
    b"? ",
    b"---\n",
    b"\\u0000",
    b"9" * 5000,
]


def seed_files() -> list[tuple[str, bytes]]:
    """(extension, bytes) of every file the mutations start from."""
    seeds = [
        (".yaml", YAML.encode()),
        (".yaml", ALIASED.encode()),
        (".json", json.dumps(DATA, indent=1).encode()),
        (".toml", TOML.encode()),
    ]
    for path in sorted((ROOT / "examples").glob("*/workflow.*")):
        seeds.append((path.suffix, path.read_bytes()))
    for path in sorted((ROOT / "tests" / "data" / "invalid").iterdir()):
        if path.suffix in (".yaml", ".yml", ".json", ".toml") and path.name != "expected.toml":
            seeds.append((path.suffix, path.read_bytes()))
    return seeds


SEEDS = seed_files()
VALID = 4  # the first seeds validate as they are


def mutate(seed: int) -> tuple[str, bytes]:
    """The file of case `seed`: one to three mutations of a seed file."""
    rng = random.Random(seed)
    if rng.random() < 0.25:  # well-formed text with wrong data: reaches the shape and graph checks
        return _structured(rng)
    # Half the cases start from a valid file, so that mutations reach past the decoder.
    suffix, data = rng.choice(SEEDS[:VALID] if rng.random() < 0.5 else SEEDS)
    if rng.random() < 0.1:  # the wrong decoder for the text
        suffix = rng.choice([".yaml", ".json", ".toml"])
    for _ in range(rng.randint(1, 3)):
        data = _mutation(rng, data)
    return suffix, data


def _mutation(rng: random.Random, data: bytes) -> bytes:
    size = len(data)
    at = rng.randint(0, size)
    kind = rng.randrange(7)
    if kind == 0:  # flip bytes
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            if out:
                out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if kind == 1:  # delete a range
        return data[:at] + data[at + rng.randint(1, 40) :]
    if kind == 2:  # duplicate a range somewhere
        chunk = data[at : at + rng.randint(1, 200)]
        where = rng.randint(0, size)
        return data[:where] + chunk * rng.randint(1, 3) + data[where:]
    if kind == 3:  # truncate
        return data[:at]
    if kind == 4:  # splice with another seed
        _, other = rng.choice(SEEDS)
        return data[:at] + other[rng.randint(0, len(other)) :]
    if kind == 5:  # repeat or swap lines
        lines = data.splitlines(keepends=True)
        if len(lines) > 1:
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if rng.random() < 0.5:
                lines[i], lines[j] = lines[j], lines[i]
            else:
                lines.insert(i, lines[j])
        return b"".join(lines)
    return data[:at] + rng.choice(TOKENS) + data[at:]  # insert a token


VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**70,
    1e308,
    "",
    "x",
    "1st",
    "${a.output}",
    "${c.output.k}",
    "${ghost.output}",
    "${params.nope}",
    "${a.output",
    "$${a.output}",
    "${b.output} > 1 and len(x)",
    "a -> b",
    "all_done",
    [],
    ["a"],
    ["a", "b", "c", "zz"],
    {},
    {"k": "${b.output}"},
    {"id": "d", "tool": "echo"},
]


def _structured(rng: random.Random) -> tuple[str, bytes]:
    """A seed's data with a few values replaced, deleted or nested, written as JSON or YAML."""
    data = json.loads(json.dumps(DATA))
    data["tasks"].append({"id": "d", "tool": "shell", "input": {"command": "echo ${c.output}"}})
    for _ in range(rng.randint(1, 4)):
        parent: Any = data
        key: Any = rng.choice(list(data))
        while isinstance(parent[key], dict | list) and parent[key] and rng.random() < 0.7:
            parent = parent[key]
            key = (
                rng.choice(list(parent)) if isinstance(parent, dict) else rng.randrange(len(parent))
            )
        action = rng.random()
        if action < 0.15 and isinstance(parent, dict):
            del parent[key]
        elif action < 0.25:
            parent[key] = json.loads("[" * 120 + "1" + "]" * 120)
        elif action < 0.35 and isinstance(parent, dict):
            parent[rng.choice(["colr", "retries", "when", "trigger", "timeout", "limits"])] = (
                copy.deepcopy(rng.choice(VALUES))
            )
        else:
            parent[key] = copy.deepcopy(rng.choice(VALUES))
    if rng.random() < 0.5:
        return ".json", json.dumps(data).encode()
    return ".yaml", yaml.safe_dump(data).encode()


class Hang(Exception):
    pass


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail a case that runs too long, instead of hanging the suite (main thread only)."""

    def expire(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(path: Path, code: int, stdout: str, stderr: str) -> None:
    """Exit 0/1/2; a refusal is one `error:` line naming the file (then detail lines)."""
    assert code in (0, 1, 2), (code, stdout, stderr)
    assert "Traceback" not in stdout + stderr
    if code != 0:
        first = stderr.splitlines()[0] if stderr else ""
        assert first.startswith("error: "), stderr
        assert str(path) in first, stderr


def test_seeds_cover_every_format(tmp_path: Path) -> None:
    runner = CliRunner()
    for number, (suffix, data) in enumerate(SEEDS[:VALID]):
        path = tmp_path / f"valid_{number}{suffix}"
        path.write_bytes(data)
        result = runner.invoke(cli, ["validate", str(path)], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
    assert {suffix for suffix, _ in SEEDS} >= {".yaml", ".json", ".toml"}
    assert len(SEEDS) >= 40
    assert mutate(7) == mutate(7)


def test_mutated_workflows_in_process(tmp_path: Path) -> None:
    runner = CliRunner()
    codes: dict[int, int] = {}
    slowest = 0.0
    for seed in IN_PROCESS_SEEDS:
        suffix, data = mutate(seed)
        path = tmp_path / f"case_{seed}{suffix}"
        path.write_bytes(data)
        began = time.monotonic()
        try:
            with deadline(CASE_SECONDS):
                result = runner.invoke(cli, ["validate", str(path)], catch_exceptions=False)
        except BaseException as exc:  # anything but an exit is a bug: say which case
            raise AssertionError(f"seed {seed} ({path.name}): {exc!r}\n{data[:500]!r}") from exc
        slowest = max(slowest, time.monotonic() - began)
        try:
            check(path, result.exit_code, result.stdout, result.stderr)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed} ({path.name}): {exc}\n{data[:500]!r}") from None
        codes[result.exit_code] = codes.get(result.exit_code, 0) + 1
        path.unlink()
    assert sum(codes.values()) >= 500
    assert codes.get(0, 0) > 0 and codes.get(2, 0) > 0, (
        codes
    )  # the mutations are neither all fatal nor all harmless
    assert slowest < CASE_SECONDS


def test_mutated_workflows_through_the_real_command(tmp_path: Path) -> None:
    cases = []
    for seed in SUBPROCESS_SEEDS:
        suffix, data = mutate(seed)
        path = tmp_path / f"case_{seed}{suffix}"
        path.write_bytes(data)
        cases.append(path)

    def validate(path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
        began = time.monotonic()
        result = subprocess.run(
            [DURABLE, "validate", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            check=False,
        )
        return result, time.monotonic() - began

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(validate, cases))
    for path, (result, elapsed) in zip(cases, results, strict=True):
        try:
            check(path, result.returncode, result.stdout, result.stderr)
            assert elapsed < CASE_SECONDS + 5
        except AssertionError as exc:
            raise AssertionError(f"{path.name}: {exc}\n{path.read_bytes()[:500]!r}") from None
