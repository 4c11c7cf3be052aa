"""`-o FILE` of `export` and `timeline` (`cli/output_file.py`), through the real command.

A regular file is replaced atomically (a temporary file renamed over it); anything
else is not a file to replace. A FIFO is written to (its reader gets the document,
and the FIFO stays), a symlink's target is written (and the link stays). Each
command's `-o -` (stdout) is the document to compare with. Writing to a device is
in `tests/unit/test_output_file.py`, where no rename can reach `/dev`.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

WORKFLOW = """\
name: small
tasks:
  - {id: a, tool: echo, input: {n: 1}}
  - {id: b, tool: echo, dependencies: [a], input: "${a.output.n}"}
"""

#: Each command with `-o`, and how to ask it for its document on stdout.
COMMANDS = {
    "export": ("export", "out-1"),
    "timeline": ("timeline", "out-1"),
}


@pytest.fixture
def folder(durable: Any, write: Any, tmp_path: Path) -> Path:
    """A folder with a journal `j.db` holding one finished run, `out-1`."""
    workflow = write(tmp_path, "wf.yaml", WORKFLOW)
    durable("run", workflow, "--db", "j.db", "--run-id", "out-1", "-q", cwd=tmp_path, check=0)
    return tmp_path


def document(durable: Any, folder: Path, command: str) -> bytes:
    result = durable(*COMMANDS[command], "--db", "j.db", "-o", "-", cwd=folder, check=0)
    return result.stdout.encode()


def leftovers(*folders: Path) -> list[str]:
    return sorted(p.name for folder in folders for p in folder.iterdir() if p.suffix == ".tmp")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_fifo_is_written_to_not_replaced(durable: Any, folder: Path, command: str) -> None:
    expected = document(durable, folder, command)
    fifo = folder / "pipe"
    os.mkfifo(fifo)
    # Opened without waiting for a writer; read from a thread while the command runs.
    # A read that finds no writer returns b"": the end once the command has exited.
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    received: list[bytes] = []
    exited = threading.Event()

    def read() -> None:
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:  # a writer, nothing written yet
                chunk = None
            if chunk:
                received.append(chunk)
            elif chunk == b"" and exited.is_set():
                return
            else:
                time.sleep(0.005)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        result = durable(*COMMANDS[command], "--db", "j.db", "-o", "pipe", cwd=folder, timeout=30)
    finally:
        exited.set()
        reader.join(10)
        os.close(fd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote pipe (")
    assert b"".join(received) == expected
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO, not a regular file
    assert leftovers(folder) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_a_symlinks_target_is_written_and_the_link_kept(
    durable: Any, folder: Path, command: str
) -> None:
    expected = document(durable, folder, command)
    (folder / "elsewhere").mkdir()
    target = folder / "elsewhere" / "target"
    target.write_text("old")
    target.chmod(0o640)
    link = folder / "link"
    link.symlink_to(Path("elsewhere", "target"))

    result = durable(*COMMANDS[command], "--db", "j.db", "-o", "link", cwd=folder, check=0)
    assert result.stdout.startswith("wrote link (")
    assert link.is_symlink() and os.readlink(link) == str(Path("elsewhere", "target"))
    assert target.read_bytes() == expected
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the target's mode, as before
    assert leftovers(folder, folder / "elsewhere") == []

    # A link to nothing yet: its target is created, as a shell's `>` would.
    dangling = folder / "dangling"
    dangling.symlink_to(Path("elsewhere", "new"))
    durable(*COMMANDS[command], "--db", "j.db", "-o", "dangling", cwd=folder, check=0)
    assert dangling.is_symlink()
    assert (folder / "elsewhere" / "new").read_bytes() == expected


@pytest.mark.parametrize("command", COMMANDS)
def test_a_regular_file_is_replaced_whole(durable: Any, folder: Path, command: str) -> None:
    expected = document(durable, folder, command)
    out = folder / "out"
    out.write_text("old " * 100_000)
    out.chmod(0o600)
    durable(*COMMANDS[command], "--db", "j.db", "-o", "out", cwd=folder, check=0)
    assert out.read_bytes() == expected
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert leftovers(folder) == []


@pytest.mark.skipif(not Path("/proc/self/fd/1").exists(), reason="no /proc/self/fd")
@pytest.mark.parametrize("command", COMMANDS)
def test_a_link_to_the_commands_own_stdout_writes_into_the_pipe(
    durable: Any, folder: Path, command: str
) -> None:
    """What `-o /dev/stdout` is: a link to `/proc/self/fd/1`, whose target is the pipe
    the test reads (no path: `pipe:[1234]`), written to, never replaced."""
    expected = document(durable, folder, command)
    (folder / "stdout").symlink_to("/proc/self/fd/1")
    result = durable(*COMMANDS[command], "--db", "j.db", "-o", "stdout", cwd=folder, check=0)
    written = result.stdout.encode()
    assert written.startswith(expected)
    assert written[len(expected) :].startswith(b"wrote stdout (")
    assert (folder / "stdout").is_symlink()
