"""The corruption campaign: damaged copies of a real journal never answer wrongly.

One journal is made once, by the real `durable` command: a six-task diamond whose
outputs are dicts, strings and numbers (`dia1`), a run with a failed task (`fail1`),
and a run SIGKILLed while its second task ran (`kill1`). Two images are kept: the
journal checkpointed into its main file, and the same journal with `kill1`'s
commits still in its `-wal` file.

Each case damages a fresh copy of an image, seeded (`random.Random(seed)`): one
flipped bit (anywhere, in bytes of known outputs and run ids, in the file header
and page headers), a burst of garbage, a truncation (mid-page and at page
boundaries), a zeroed page; in the `-wal` file or in the main file under it. Then
every reading command runs on it in-process (click's `CliRunner`, the same code
as the `durable` script: a sample is run through the real command to prove it), and

- each command either answers exactly as it did on the undamaged copy (exit 0,
  same stdout and stderr), or fails with exit 2 and a first line `error: ...`,
  never a traceback; `runs` may exit 2 while it lists the runs it could read, and
  those entries must be the original ones;
- `check` exits 2 whenever any other command answered differently or failed, so
  it notices whatever the others noticed (the converse need not hold: `check` also
  runs SQLite's integrity check, which sees damage no read goes through).

One hole is SQLite's by design, and the `-wal` cases assert it precisely rather
than loosely: a damaged frame of the `-wal` file reads as a crash at an earlier
commit (SQLite's recovery keeps the frames before the first bad checksum and
drops the rest, which is how it survives torn writes). Nothing in the main file
then says that commits are missing, so every command, `check` included, answers
as for the journal cut at that earlier commit, at exit 0. Such a case must match
one of those earlier journals exactly, all commands together.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import struct
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest
from click.testing import CliRunner
from durable_cli.main import cli

pytestmark = pytest.mark.sqlite_only("damages copies of the SQLite journal file")

RUNS = ("dia1", "fail1", "kill1")
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("runs", "--json"),
    *(("status", run, "--json") for run in RUNS),
    *(("output", run) for run in RUNS),
    *(("log", run, "--json") for run in RUNS),
    ("check",),
)
CHECK = ("check",)
PAGE = 4096

MAIN_CASES = 240
WAL_CASES = 60  # two thirds in the -wal file, one third in the main file under it
#: Cases also run through the real `durable` command (seed of MAIN_CASES' series).
SUBPROCESS_SEEDS = (0, 1, 2, 3, 4, 5, 6, 34, 145, 183)

DIAMOND = """
name: diamond
tasks:
  - {id: a, tool: echo, input: {name: "alpha-output-7391", n: 42, nested: {list: [1, 2.5, "x"]}}}
  - {id: b, tool: echo, input: "${a.output.name}-beta-output"}
  - {id: c, tool: echo, input: {value: "${a.output.n}"}}
  - {id: d, tool: echo, input: {b: "${b.output}", c: "${c.output.value}"}}
  - {id: e, tool: echo, input: 3.14159}
  - {id: f, tool: echo, input: ["${d.output}", "${e.output}", "gamma-output-5522"]}
"""
FAILS = """
name: fails
tasks:
  - {id: ok, tool: echo, input: "fine-output-1234"}
  - {id: boom, tool: shell, input: {command: [sh, -c, "echo nope-9911 >&2; exit 3"]}, dependencies: [ok]}
  - {id: after, tool: echo, input: 1, dependencies: [boom]}
"""
SLOW = """
name: slow
tasks:
  - {id: first, tool: echo, input: {k: "killed-run-output-3377"}}
  - {id: slow, tool: sleep, input: {seconds: 60, result: 1}, dependencies: [first]}
"""
#: Bytes a flip is aimed at: outputs, run ids, kinds, a workflow name, an error.
NEEDLES = (
    b"alpha-output-7391",
    b"beta-output",
    b"gamma-output-5522",
    b"fine-output-1234",
    b"killed-run-output-3377",
    b"nope-9911",
    b"dia1",
    b"fail1",
    b"kill1",
    b"task_succeeded",
    b"run_finished",
    b"diamond",
)


class Answer(NamedTuple):
    code: int
    stdout: str
    stderr: str


Answers = dict[tuple[str, ...], Answer]


class Image(NamedTuple):
    main: bytes
    wal: bytes | None


class Campaign(NamedTuple):
    case_dir: Path
    index_page: int  # the page of the events_by_run index (it fits in one)
    main: Image
    wal: Image
    original: dict[str, Answers]  # image name -> answers
    earlier: list[Answers]  # the WAL image cut at each commit, oldest first


_runner = CliRunner()


def place(case_dir: Path, main: bytes, wal: bytes | None) -> Path:
    """A fresh copy at the one path every case uses (paths appear in the answers)."""
    db = case_dir / "journal.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(main)
    if wal is not None:
        Path(f"{db}-wal").write_bytes(wal)
    return db


def answers(db: Path) -> Answers:
    """Every command's answer, in-process; an exception other than an exit fails here."""
    found: Answers = {}
    for command in COMMANDS:
        result = _runner.invoke(cli, [*command, "--db", str(db)], catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(
                f"durable {' '.join(command)} raised {result.exception!r}\n{result.stderr}"
            ) from result.exception
        found[command] = Answer(result.exit_code, result.stdout, result.stderr)
    return found


def commit_boundaries(wal: bytes) -> list[int]:
    """Lengths at which the -wal file ends just after a commit (0: no frame at all)."""
    page_size = struct.unpack(">I", wal[8:12])[0]
    frame = 24 + page_size
    cuts, offset = [0], 32
    while offset + frame <= len(wal):
        if struct.unpack(">I", wal[offset + 4 : offset + 8])[0]:  # db size: a commit frame
            cuts.append(offset + frame)
        offset += frame
    return cuts


@pytest.fixture(scope="module")
def campaign(
    tmp_path_factory: pytest.TempPathFactory,
    durable: Any,
    start: Any,
    stop: Any,
    write: Any,
    wait_for_events: Any,
) -> Campaign:
    home = tmp_path_factory.mktemp("corruption")
    db = home / "journal.db"
    write(home, "diamond.yaml", DIAMOND)
    write(home, "fails.yaml", FAILS)
    write(home, "slow.yaml", SLOW)
    durable("run", "diamond.yaml", "--db", db, "--run-id", "dia1", cwd=home, check=0)
    durable("run", "fails.yaml", "--db", db, "--run-id", "fail1", cwd=home, check=1)
    process = start("run", "slow.yaml", "--db", db, "--run-id", "kill1", cwd=home)
    try:
        wait_for_events(db, "kill1", "task_started", task_id="slow", process=process)
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop(process)
    # The killed process left its commits in the -wal file (a clean exit would
    # have checkpointed them): keep that image, then checkpoint everything.
    wal_image = Image(db.read_bytes(), Path(f"{db}-wal").read_bytes())
    assert len(commit_boundaries(wal_image.wal)) >= 3, "kill1 left too few commits in the WAL"
    connection = sqlite3.connect(db)
    try:
        assert connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() == (0, 0, 0)
        ((index_page,),) = connection.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'events_by_run'"
        )
        try:
            index_pages = connection.execute(
                "SELECT count(*) FROM dbstat WHERE name = 'events_by_run'"
            ).fetchone()[0]
        except sqlite3.OperationalError:  # a SQLite built without dbstat: 25 entries fit
            index_pages = 1
        assert index_pages == 1, "the index no longer fits in one page: aim at its leaves"
    finally:
        connection.close()
    main_image = Image(db.read_bytes(), None)
    assert len(main_image.main) % PAGE == 0

    case_dir = home / "case"
    case_dir.mkdir()
    original = {
        "main": answers(place(case_dir, *main_image)),
        "wal": answers(place(case_dir, *wal_image)),
    }
    assert original["main"] == original["wal"]
    earlier = [
        answers(place(case_dir, wal_image.main, wal_image.wal[:cut]))
        for cut in commit_boundaries(wal_image.wal)
    ]
    assert earlier[-1] == original["wal"]
    return Campaign(case_dir, index_page, main_image, wal_image, original, earlier)


# -- the damage -------------------------------------------------------------------


def _flip(data: bytearray, offset: int, rng: random.Random) -> str:
    bit = rng.randrange(8)
    data[offset] ^= 1 << bit
    return f"bit {bit} of byte {offset} flipped"


def _needle_offsets(data: bytes) -> list[tuple[bytes, int]]:
    found = []
    for needle in NEEDLES:
        at = data.find(needle)
        while at >= 0:
            found.append((needle, at))
            at = data.find(needle, at + 1)
    return found


def damage(
    data: bytes, seed: int, *, page_headers: bool = True, index_page: int | None = None
) -> tuple[bytes, str]:
    """One seeded corruption of `data` (a main file, or a -wal file when not
    `page_headers`): the kind rotates with the seed, the rest is drawn from it.
    `index_page` (1-based) holds the `events_by_run` index: half the flips aimed at
    known bytes go to the run ids of its entries, which each run's reads go through."""
    rng = random.Random(seed)
    out = bytearray(data)
    kind = seed % 8
    if kind in (0, 1) or (kind == 3 and not page_headers):  # a bit anywhere
        what = _flip(out, rng.randrange(len(out)), rng)
        return bytes(out), what
    if kind == 3:  # a bit in a page's cell content: a row of a table or of an index
        page = rng.randrange(len(data) // PAGE)
        header = page * PAGE + (100 if page == 0 else 0)
        content = int.from_bytes(data[header + 5 : header + 7], "big") or 65536
        offset = page * PAGE + rng.randrange(min(content, PAGE - 1), PAGE)
        what = f"page {page + 1} content: " + _flip(out, offset, rng)
        return bytes(out), what
    if kind == 2:  # a bit in the bytes of an output, a run id, a kind
        targets = _needle_offsets(data)
        if index_page is not None and rng.random() < 0.5:
            low, high = (index_page - 1) * PAGE, index_page * PAGE
            targets = [
                (needle, at)
                for needle, at in targets
                if needle in (b"dia1", b"fail1", b"kill1") and low <= at < high
            ]
        assert targets, "no known bytes in the image"
        needle, at = rng.choice(targets)
        offset = at + rng.randrange(len(needle))
        what = f"{needle.decode()} at {at}: " + _flip(out, offset, rng)
        return bytes(out), what
    if kind == 4:  # a bit in the file header or a page's header and cell pointers
        if page_headers:
            pages = len(data) // PAGE
            if rng.random() < 0.3:
                offset = rng.randrange(100)
            else:
                page = rng.randrange(pages)
                offset = page * PAGE + (100 if page == 0 else 0) + rng.randrange(24)
        else:  # the WAL header, or a frame header
            frames = (len(data) - 32) // (24 + PAGE)
            if rng.random() < 0.3 or not frames:
                offset = rng.randrange(32)
            else:
                offset = 32 + rng.randrange(frames) * (24 + PAGE) + rng.randrange(24)
        what = "header: " + _flip(out, offset, rng)
        return bytes(out), what
    if kind == 5:  # a burst of garbage, anywhere or over rows (the schema's SQL included)
        size = rng.randrange(2, 65)
        offset = rng.randrange(len(out) - size)
        if page_headers and rng.random() < 0.5:
            page = rng.randrange(len(data) // PAGE)
            header = page * PAGE + (100 if page == 0 else 0)
            content = int.from_bytes(data[header + 5 : header + 7], "big") or 65536
            offset = page * PAGE + rng.randrange(min(content, PAGE - size - 1), PAGE - size)
        out[offset : offset + size] = rng.randbytes(size)
        return bytes(out), f"{size} random bytes at {offset}"
    if kind == 6:  # truncated: mid-page, or at a page boundary
        if rng.random() < 0.5:
            size = rng.randrange(len(out))
        else:
            unit = PAGE if page_headers else 24 + PAGE
            base = 0 if page_headers else 32
            size = base + rng.randrange((len(out) - base) // unit) * unit
        return bytes(out[:size]), f"truncated to {size} bytes"
    # kind 7: a page of zeros (a frame of zeros in a -wal file)
    if page_headers:
        page = rng.randrange(len(out) // PAGE)
        out[page * PAGE : (page + 1) * PAGE] = bytes(PAGE)
        return bytes(out), f"page {page + 1} zeroed"
    frames = (len(out) - 32) // (24 + PAGE)
    frame = rng.randrange(frames)
    start_at = 32 + frame * (24 + PAGE)
    out[start_at : start_at + 24 + PAGE] = bytes(24 + PAGE)
    return bytes(out), f"frame {frame} zeroed"


# -- the rules --------------------------------------------------------------------


def judge(got: Answers, original: Answers, what: str) -> None:
    """Each command answers as for the original, or fails with exit 2 in one line;
    and `check` notices whatever any other command noticed."""
    for command, answer in got.items():
        name = f"{what}: durable {' '.join(command)}"
        assert "Traceback" not in answer.stdout + answer.stderr, f"{name}\n{answer.stderr}"
        if answer.code == 0:
            assert answer == original[command], (
                f"{name} exited 0 with a different answer (a silent wrong answer)\n"
                f"got:      {answer.stdout[:2000]}\nexpected: {original[command].stdout[:2000]}"
            )
            continue
        assert answer.code == 2, f"{name} exited {answer.code}\n{answer.stderr}"
        first = answer.stderr.splitlines()[0] if answer.stderr else ""
        assert first.startswith("error: "), (
            f"{name}: stderr does not start with 'error: '\n{answer.stderr}"
        )
        if command[0] == "runs":
            # It lists what it could read: every entry not marked damaged is the original.
            before = {
                entry["run_id"]: entry for entry in msgspec.json.decode(original[command].stdout)
            }
            listed = msgspec.json.decode(answer.stdout) if answer.stdout else []
            for entry in listed:
                if entry["status"] != "damaged":
                    assert entry == before.get(entry["run_id"]), f"{name} listed {entry}"
        else:
            assert answer.stdout == "", f"{name} printed something before failing\n{answer.stdout}"
    noticed = [
        " ".join(command)
        for command, answer in got.items()
        if command != CHECK and answer != original[command]
    ]
    if noticed:
        assert got[CHECK].code == 2, (
            f"{what}: `durable check` exited {got[CHECK].code} although these answered "
            f"otherwise than on the original: {noticed}\n{got[CHECK].stdout}"
        )


# -- the cases --------------------------------------------------------------------


def test_the_original_journal_answers(campaign: Campaign) -> None:
    original = campaign.original["main"]
    assert all(answer.code == 0 for answer in original.values()), original
    statuses = {
        run: msgspec.json.decode(original[("status", run, "--json")].stdout)["status"]
        for run in RUNS
    }
    assert statuses == {"dia1": "succeeded", "fail1": "failed", "kill1": "interrupted"}
    assert "alpha-output-7391" in original[("output", "dia1")].stdout
    assert "ok (3 run(s), 25 events" in original[CHECK].stdout
    # The earliest WAL cut has no kill1 at all: that run is wholly in the -wal file.
    assert campaign.earlier[0][("status", "kill1", "--json")].code == 2


@pytest.mark.parametrize("seed", range(MAIN_CASES))
def test_a_damaged_main_file(campaign: Campaign, seed: int) -> None:
    data, what = damage(campaign.main.main, seed, index_page=campaign.index_page)
    got = answers(place(campaign.case_dir, data, None))
    judge(got, campaign.original["main"], f"seed {seed}, {what}")


@pytest.mark.parametrize("seed", range(WAL_CASES))
def test_a_damaged_journal_with_a_wal(campaign: Campaign, seed: int) -> None:
    main, wal = campaign.wal
    if seed % 3 == 2:
        # The main file under a -wal file: the frames override the pages they hold.
        data, what = damage(main, seed, index_page=campaign.index_page)
        got = answers(place(campaign.case_dir, data, wal))
        judge(got, campaign.original["wal"], f"seed {seed}, main file, {what}")
        return
    data, what = damage(wal, seed, page_headers=False)
    got = answers(place(campaign.case_dir, main, data))
    # Known hole, by SQLite's design: a damaged frame reads as a crash at an earlier
    # commit (see the module docstring). Then the answers must be exactly those of
    # the journal cut at one of its commits, every command together.
    if got in campaign.earlier:
        return
    judge(got, campaign.original["wal"], f"seed {seed}, -wal file, {what}")


def test_the_real_command_answers_as_in_process(
    campaign: Campaign, durable: Any, no_traceback: Any
) -> None:
    """The in-process runs above stand for the `durable` script: same exit, same text."""
    # One command per case (a process costs half a second here), `check` first.
    commands = [CHECK, *(command for command in COMMANDS if command != CHECK)]
    for index, seed in enumerate(SUBPROCESS_SEEDS):
        data, what = damage(campaign.main.main, seed, index_page=campaign.index_page)
        command = commands[index % len(commands)]
        db = place(campaign.case_dir, data, None)
        inside = _runner.invoke(cli, [*command, "--db", str(db)], catch_exceptions=True)
        db = place(campaign.case_dir, data, None)
        real = durable(*command, "--db", db, cwd=campaign.case_dir)
        no_traceback(real)
        assert (real.returncode, real.stdout, real.stderr) == (
            inside.exit_code,
            inside.stdout,
            inside.stderr,
        ), f"seed {seed}, {what}: durable {' '.join(command)}"
