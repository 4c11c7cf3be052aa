"""The built-in tools: `echo`, `sleep`, `shell` and `http`.

All four are async so that they run on the event loop with no thread hop. `shell`
never goes through a shell: a string command is split into words *before* references
are substituted (see `shell_words`), so a substituted value is always data inside
one argument, never shell syntax. Write `["sh", "-c", "..."]` if you want a shell,
and accept what that means.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
from collections.abc import Callable
from typing import Any

from durable.child import start
from durable.refs import is_one_reference
from durable.tools import REGISTRY


class ToolFailed(Exception):
    """A built-in tool's own failure (non-zero exit, HTTP error status)."""


async def echo(*args: Any, **kwargs: Any) -> Any:
    """Return the input as it came: a mapping input as a dict, anything else as is.

    A null input (and so an empty mapping, which arrives the same way) echoes as null.
    """
    if args:
        return args[0]
    return kwargs or None


async def sleep(seconds: float, result: Any = None) -> Any:
    """Sleep, then return `result`. Useful for tests and for pacing."""
    await asyncio.sleep(float(seconds))
    return result


def shell_words(raw_input: Any) -> Any:
    """Split a string `command` into argv words before any `${...}` is substituted.

    A command that is one whole reference is left alone: its value (a list of
    words, or a string to split) arrives as data, never as shell syntax.
    """
    if isinstance(raw_input, str):
        raw_input = {"command": raw_input}
    if isinstance(raw_input, dict):
        command = raw_input.get("command")
        if isinstance(command, str) and not is_one_reference(command):
            return {**raw_input, "command": shlex.split(command)}
    return raw_input


async def shell(
    command: list[str] | str,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    check: bool = True,
    progress: bool | str = False,
) -> dict[str, Any]:
    """Run a program without a shell. Output: `{returncode, stdout, stderr}`.

    A non-zero exit fails the task unless `check` is false. With `progress` (true or
    "stdout", or "stderr"), the last line the program wrote to that stream (lines
    end with a newline or a carriage return, as progress bars draw them) is the
    task's progress message (`ctx.progress`), as it is written.
    """
    if progress not in (False, True, "stdout", "stderr"):
        raise ToolFailed(
            f"shell: progress must be true, false, 'stdout' or 'stderr', not {progress!r}"
        )
    argv = shlex.split(command) if isinstance(command, str) else [str(word) for word in command]
    if not argv:
        raise ToolFailed("shell: empty command")
    full_env = {**os.environ, **{k: str(v) for k, v in env.items()}} if env else None
    try:
        child = start(argv, cwd=cwd, env=full_env, stdin=stdin is not None)
    except OSError as exc:
        # Popen names the folder it could not enter in the error: say which is missing.
        where = f" in cwd {cwd!r}" if cwd is not None and exc.filename == cwd else ""
        raise ToolFailed(f"shell: cannot run {argv[0]!r}{where}: {exc.strerror or exc}") from None
    data = stdin.encode() if stdin is not None else None
    try:
        out, err = await child.communicate(data, _progress_reporter(progress))
    except asyncio.CancelledError:
        await child.stop()
        raise
    result = {
        "returncode": child.returncode,
        "stdout": out.decode(errors="replace"),
        "stderr": err.decode(errors="replace"),
    }
    if check and child.returncode != 0:
        tail = result["stderr"].strip().splitlines()[-1:] or [""]
        raise ToolFailed(f"shell: {argv[0]} exited with {child.returncode}: {tail[0]}".rstrip(": "))
    return result


_LINE_END = re.compile(rb"[\r\n]")


def _progress_reporter(progress: bool | str) -> Callable[[int, bytes], None] | None:
    """The `on_output` of `Child.communicate` that reports the last complete line of
    the chosen stream (1 for stdout, 2 for stderr) as the task's progress; None
    without `progress`, or outside a task.

    Reported once per chunk read, not per line; `ctx.progress` keeps only the latest
    anyway, and journals it at most twice a second.
    """
    if not progress:
        return None
    from durable.executors import _current

    context = _current.get()
    if context is None:
        return None
    wanted = 2 if progress == "stderr" else 1
    partial = b""

    def report(stream: int, chunk: bytes) -> None:
        nonlocal partial
        if stream != wanted:
            return
        *whole, partial = _LINE_END.split(partial + chunk)
        partial = partial[-4096:]  # a stream with no line ends is not held twice
        for line in reversed(whole):
            if line.strip():
                context.progress(None, line.decode(errors="replace").strip())
                break

    return report


async def http(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    json: Any = None,
    body: str | None = None,
    params: dict[str, Any] | None = None,
    timeout: float | None = 30.0,
    raise_for_status: bool = True,
) -> dict[str, Any]:
    """An HTTP request on aiohttp. Output: `{status, headers, json}` or `{status, headers, text}`.

    A 4xx/5xx status fails the task (so `retries` apply) unless `raise_for_status` is false.
    """
    import aiohttp  # imported here: it costs ~0.1 s of start-up that most runs never need

    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.request(
                method.upper(), url, headers=headers, json=json, data=body, params=params
            ) as response,
        ):
            received = response.headers
            result: dict[str, Any] = {
                "status": response.status,
                # A header sent more than once (Set-Cookie) is its values joined, as
                # HTTP folds them; `dict()` kept only the first.
                "headers": {k: ", ".join(received.getall(k)) for k in dict.fromkeys(received)},
            }
            # Bytes that are not the text they say (no charset, Latin-1, binary) are
            # replaced, not a failed task that every retry would fetch again.
            text = await response.text(errors="replace")
            result["text"] = text
            if response.content_type == "application/json" or response.content_type.endswith(
                "+json"
            ):
                import msgspec

                try:
                    decoded = msgspec.json.decode(text)
                    msgspec.msgpack.encode(decoded)  # what the journal can keep (64-bit ints)
                except (msgspec.DecodeError, OverflowError):
                    pass  # kept as text
                else:
                    del result["text"]
                    result["json"] = decoded
    except aiohttp.ClientError as exc:
        raise ToolFailed(f"http: {method.upper()} {url}: {type(exc).__name__}: {exc}") from None
    except TimeoutError:
        # aiohttp's own `timeout` (the task's `timeout:` cancels instead).
        raise ToolFailed(
            f"http: {method.upper()} {url}: timed out after {timeout:g}s (the tool's own timeout)"
        ) from None
    if raise_for_status and result["status"] >= 400:
        raise ToolFailed(f"http: {method.upper()} {url} returned {result['status']}")
    return result


for _fn in (echo, sleep, http):
    REGISTRY.add(_fn)
REGISTRY.add(shell, prepare=shell_words)
