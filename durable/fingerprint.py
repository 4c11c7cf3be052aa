"""A fingerprint per task attempt: equal work, equal fingerprint; other work, another.

Recorded in each `task_started` event, it is what tells a task whose work is
unchanged (an edited workflow resumed, a cache) from one that must run again. It
hashes, with BLAKE2b:

- the tool's identity: its name, and its behaviour: for a built-in tool, durable's
  version of it (`shell`'s command and `http`'s request are in the input); for a
  Python tool, the `version=` its author gave (`@durable.tool(version="2")`), or
  else the source code of the function itself (not of what it calls: give a
  `version` when the result depends on more);
- the task's fully rendered input, after every reference is substituted, encoded
  canonically: msgpack with map keys sorted, so that key order never matters, and
  floats as their exact IEEE bits (1 and 1.0 differ, as their types do).

Pure: no I/O (reading a function's source reads its module's file, once per tool).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import Any

import msgspec

from durable.tools import ToolDef

#: Bumped when the fingerprint's recipe changes: fingerprints of two recipes never match.
RECIPE = 1
#: The behaviour of the built-in tools; bumped when one of them changes what it returns.
BUILTINS_VERSION = "1"

_canonical = msgspec.msgpack.Encoder(order="sorted").encode


def fingerprint(identity: str, rendered_input: Any) -> str:
    """The fingerprint of calling the tool `identity` names with `rendered_input`:
    BLAKE2b-128 of the canonical msgpack of `(RECIPE, identity, rendered_input)`.

    Raises `TypeError`/`msgspec.EncodeError` for an input msgpack cannot encode
    (it came from a workflow file or from committed outputs, so it always can).
    """
    hasher = _seeded(identity).copy()
    hasher.update(_canonical(rendered_input))
    return hasher.hexdigest()


@functools.lru_cache(maxsize=1024)
def _seeded(identity: str) -> Any:
    """A hasher fed with all of a tool's fingerprints' bytes before its input's.

    A msgpack array is its header then its items, one after the other: so the
    tuple's bytes are this prefix and the input's. Hashing the prefix once per tool
    (copies of this hasher go on from it) makes a fingerprint 0.56 -> 0.36 µs; it
    is computed for every task started.
    """
    return hashlib.blake2b(b"\x93" + _canonical(RECIPE) + _canonical(identity), digest_size=16)


@functools.lru_cache(maxsize=1024)
def tool_identity(tool: ToolDef) -> str:
    """What a fingerprint knows of the tool: its name and what decides its behaviour."""
    fn = tool.fn
    if tool.version is not None:
        return f"{tool.name}@{tool.version}"
    if getattr(fn, "__module__", None) == "durable.builtins":
        return f"{tool.name}@builtin-{BUILTINS_VERSION}"
    return f"{tool.name}@source-{_source_hash(fn)}"


def _source_hash(fn: Any) -> str:
    """A hash of the function's source; of its compiled code where there is no source."""
    target = inspect.unwrap(fn)
    try:
        text = inspect.getsource(target).encode()
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        text = (
            repr(getattr(target, "__qualname__", target)).encode()
            if code is None
            else code.co_code + repr(code.co_consts).encode()
        )
    return hashlib.blake2b(text, digest_size=8).hexdigest()
