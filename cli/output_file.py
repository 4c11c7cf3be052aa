"""`-o FILE`: how a command writes a whole document to a path it was given.

One function, `write_output`, for every command with `-o` (`export`, `timeline`).
A regular file is replaced atomically: a reader sees the old file or the whole new
one, never half of it. Renaming a file over the path is right only for a regular
file or a path that does not exist yet. Anything else the path may name is not a
file to replace:

- a symlink: its target is written (atomically, if the target is a regular file or
  does not exist yet) and the link stays, as a shell's `>` would leave it;
- a FIFO, a character device (`/dev/null`, `/dev/full`, `/dev/stdout` on a
  terminal or a pipe), a socket: written directly, as a shell's `>` would. A rename
  would put a regular file in its place: a FIFO's reader got nothing, and, as root,
  a device node was replaced.

Every failure is a `DurableError` naming the path as given (exit 2), ENOSPC on
`/dev/full` too. This is not `-o -` (stdout): the callers write that themselves.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from durable.errors import DurableError


def write_output(path: Path, data: bytes) -> None:
    """Write `data` as the whole content of `path` (see the module's docstring)."""
    try:
        try:
            mode: int | None = os.stat(path).st_mode  # what the path names, links followed
        except FileNotFoundError:
            mode = None
        if mode is None or stat.S_ISREG(mode):
            target = Path(os.path.realpath(path))  # a symlink's target; else `path` itself
            _replace_atomically(target, data, None if mode is None else stat.S_IMODE(mode))
        else:
            # Opened through `path`, not its realpath: `/dev/stdout` is a link to
            # `/proc/self/fd/1`, whose "target" (`pipe:[1234]`) is no path at all.
            _write_directly(path, data)
    except OSError as exc:
        raise DurableError(f"cannot write {path}: {exc.strerror or exc}") from None


def _replace_atomically(path: Path, data: bytes, mode: int | None) -> None:
    """A temporary file in the same folder, synced, then renamed over `path`. It gets
    the mode a plain write would have given it: the old file's (`mode`), or 0666 less
    the umask for a new one."""
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _write_directly(path: Path, data: bytes) -> None:
    """Open what is there for writing (a FIFO's open waits for its reader) and write.

    No O_CREAT or O_TRUNC: the path exists and is not a regular file. No fsync: a
    FIFO or a device has nothing to sync and some refuse it (EINVAL).
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        rest = memoryview(data)
        while rest:  # a pipe may take part of it at a time
            rest = rest[os.write(fd, rest) :]
    finally:
        os.close(fd)
