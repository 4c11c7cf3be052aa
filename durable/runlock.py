"""One process drives a run: an exclusive `flock` per run, released by the OS on death."""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from durable.errors import DurableError, RunLocked

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_run_id(run_id: str) -> str:
    """Run ids name lock files, so they are plain words: no paths, no spaces.

    Checked wherever a run id becomes a name, including ids read from a journal,
    which may have been crafted or damaged.
    """
    if not _RUN_ID.fullmatch(run_id):
        raise DurableError(f"bad run id '{run_id}': use up to 64 letters, digits, '_', '-' or '.'")
    return run_id


class RunLock:
    """Only one process drives a run: an exclusive `flock` on a per-run lock file.

    The OS releases the lock when the process dies, however it dies, so a crashed
    run is never locked out of its own resume. Lock files live beside the journal in
    `<journal>.locks/`; they are empty and left in place.
    """

    def __init__(self, journal_path: Path, run_id: str) -> None:
        self.path = Path(f"{journal_path}.locks") / check_run_id(run_id)
        self.run_id = run_id
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(self.run_id) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def is_held_elsewhere(self) -> bool:
        """True when a live process drives the run. Never creates the lock file."""
        if not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    async def __aenter__(self) -> RunLock:
        """`async with journal.lock(run_id)`: the form every journal's lock takes."""
        self.acquire()
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release()

    def __exit__(self, *exc: object) -> None:
        self.release()
