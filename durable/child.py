"""A program the `shell` tool runs: in a session of its own, holding only its 0, 1 and 2.

It is started by `subprocess.Popen` (`close_fds`, as asyncio's own loop starts one),
not by the running loop's `subprocess_exec`, because uvloop's leaks descriptors:
it hands the program its stdin, stdout and stderr twice, once as 0, 1 and 2 and
once more, inheritable, under the numbers it created them with, and it does not
implement `close_fds`. A background child that sent its output elsewhere
(`sleep 60 >/dev/null 2>&1 &`) still held those copies of the pipes' writing ends,
so the pipes did not end when the program did, and the task lasted as long as the
background child (or failed as timed out). With Popen a task ends, on either loop,
when its program has exited and no one else holds its pipes.

The pipes are read and written with the loop's `add_reader` and `add_writer`, and
closed by `communicate` at their ends or when it is cancelled; not through transports,
whose ends differ between the loops (uvloop keeps a pipe's transport open at its
end if the protocol asks to, and a connection cancelled half-way leaves its pipe
closed twice). The exit is awaited through a pidfd where Linux has them, else in a
daemon thread that waits for this one pid, as asyncio's `ThreadedChildWatcher` does;
not through asyncio's child watchers, which uvloop does not use (libuv reaps only the
children it started) and Python deprecates from 3.12.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import IO

_CHUNK = 256 * 1024  # as much as asyncio's pipe transport reads at once


class Child:
    """A started program: its pid, its exit code once it has exited, and `communicate`.

    Not asyncio's `Process`: `kill` kills the whole process group (the program, and
    whatever it started that stayed in the group), and `communicate` hands each
    chunk of output to a callback as it is read.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[None] = self._loop.create_future()
        for pipe in (popen.stdin, popen.stdout, popen.stderr):
            if pipe is not None:
                os.set_blocking(pipe.fileno(), False)
        self._watch_exit()

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode if self._exited.done() else None

    async def communicate(
        self, data: bytes | None, on_output: Callable[[int, bytes], None] | None = None
    ) -> tuple[bytes, bytes]:
        """Feed `data` to stdin, read stdout and stderr to their ends, wait for the exit.

        `on_output(1 or 2, chunk)` sees each chunk of stdout or stderr as it is read.
        Each pipe is closed at its end, or when this is cancelled; the program is
        left running then (see `stop`).
        """
        loop = self._loop
        popen = self._popen
        stdin, stdout, stderr = popen.stdin, popen.stdout, popen.stderr
        assert stdout is not None and stderr is not None
        output: dict[int, list[bytes]] = {1: [], 2: []}
        busy: set[IO[bytes]] = set()  # the pipes not at their end yet
        done: asyncio.Future[None] = loop.create_future()

        def end(pipe: IO[bytes], error: OSError | None = None) -> None:
            if pipe is stdin:
                loop.remove_writer(pipe.fileno())
            else:
                loop.remove_reader(pipe.fileno())
            pipe.close()
            busy.discard(pipe)
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            elif not busy:
                done.set_result(None)

        def reading(stream: int, pipe: IO[bytes]) -> Callable[[], None]:
            def readable() -> None:
                try:
                    chunk = os.read(pipe.fileno(), _CHUNK)
                except BlockingIOError:
                    return
                except OSError as exc:
                    end(pipe, exc)
                    return
                if not chunk:
                    end(pipe)
                    return
                output[stream].append(chunk)
                if on_output is not None:
                    on_output(stream, chunk)

            return readable

        rest = memoryview(data or b"")

        def writable() -> None:
            nonlocal rest
            assert stdin is not None
            try:
                rest = rest[os.write(stdin.fileno(), rest) :]
            except BlockingIOError:
                return
            except (BrokenPipeError, ConnectionResetError):  # it stopped reading: its loss
                rest = rest[:0]
            except OSError as exc:
                end(stdin, exc)
                return
            if not rest:
                end(stdin)  # the program reads the end of its input

        try:
            for stream, pipe in ((1, stdout), (2, stderr)):
                busy.add(pipe)
                loop.add_reader(pipe.fileno(), reading(stream, pipe))
            if stdin is not None:
                busy.add(stdin)
                loop.add_writer(stdin.fileno(), writable)
            await done
        finally:
            for pipe in list(busy):
                end(pipe)
        await self.wait()
        return b"".join(output[1]), b"".join(output[2])

    async def wait(self) -> int:
        """The exit code, once the program has exited (whoever still holds its pipes)."""
        # Shielded: a cancelled waiter must not cancel the exit every waiter shares.
        await asyncio.shield(self._exited)
        assert self._popen.returncode is not None
        return self._popen.returncode

    def kill(self) -> None:
        """SIGKILL to the program's process group, grandchildren included."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """Kill the process group and wait for the program's exit."""
        self.kill()
        await self.wait()

    def _watch_exit(self) -> None:
        try:
            pidfd = os.pidfd_open(self._popen.pid)
        except (AttributeError, OSError):  # not Linux 5.3+, or a sandbox refuses it
            threading.Thread(
                target=self._wait_in_thread, name=f"durable-wait-{self.pid}", daemon=True
            ).start()
            return

        def exited() -> None:
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
            self._popen.wait()  # at once: a pidfd is readable once its process has exited
            self._set_exited()

        self._loop.add_reader(pidfd, exited)

    def _wait_in_thread(self) -> None:
        self._popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop has closed
            self._loop.call_soon_threadsafe(self._set_exited)

    def _set_exited(self) -> None:
        if not self._exited.done():
            self._exited.set_result(None)


def start(argv: list[str], cwd: str | None, env: dict[str, str] | None, stdin: bool) -> Child:
    """Start `argv` in a new session, on the running loop, its stdout and stderr piped,
    and its stdin too if `stdin`, else /dev/null. Raises OSError if it cannot be run."""
    popen = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # the loop reads and writes the descriptors; nothing is buffered here
        # Its own process group, so that a timeout or Ctrl-C kills the whole tree
        # (an `sh -c` and whatever it started), not just the direct child.
        start_new_session=True,
    )
    return Child(popen)
