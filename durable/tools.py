"""The tool registry: `@durable.tool`, `module:function` references, and `imports:`.

A tool is any Python callable, sync or async. Registering it gives it a short name
that workflow files use; a `package.module:function` reference needs no
registration at all. Whether a tool is async or CPU-bound decides where it runs
(see `executors.py`); this module only records it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, overload

import msgspec

from durable.errors import ToolNotFound
from durable.refs import is_one_reference

F = TypeVar("F", bound=Callable[..., Any])


class ToolDef(msgspec.Struct, frozen=True):
    """A resolved tool: the callable and how it must be run."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    cpu_bound: bool = False
    # Turns the raw `input` into the template to substitute; `shell` uses it to split a
    # command into words before substitution, so values never become shell syntax.
    prepare: Callable[[Any], Any] | None = None
    #: The tool's version as its author states it (`@tool(version=...)`): what a
    #: fingerprint takes instead of the function's source (`fingerprint.py`).
    version: str | None = None
    #: False for a tool whose output must never be reused from the cache (one whose
    #: point is its side effect: a payment, an email).
    cacheable: bool = True

    def template_source(self, raw_input: Any) -> Any:
        return self.prepare(raw_input) if self.prepare is not None else raw_input


class Registry:
    """Name -> tool. Re-registering a name replaces it (a module imported again re-registers)."""

    def __init__(self) -> None:
        self._tools: dict[str, ToolDef] = {}

    def add(
        self,
        fn: Callable[..., Any],
        name: str | None = None,
        cpu_bound: bool = False,
        prepare: Callable[[Any], Any] | None = None,
        version: str | None = None,
        cacheable: bool = True,
    ) -> ToolDef:
        if not callable(fn):
            raise TypeError(f"a tool must be callable, got {type(fn).__name__}")
        tool_def = ToolDef(
            name=name or fn.__name__,
            fn=fn,
            is_async=inspect.iscoroutinefunction(fn),
            cpu_bound=cpu_bound,
            prepare=prepare,
            version=version,
            cacheable=cacheable,
        )
        if tool_def.is_async and cpu_bound:
            raise TypeError(f"tool '{tool_def.name}': an async function cannot be cpu_bound")
        self._tools[tool_def.name] = tool_def
        try:
            fn.__durable_tool__ = tool_def  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass  # a builtin or a bound method: reachable by name only
        return tool_def

    def names(self) -> list[str]:
        return sorted(self._tools)

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def resolve(self, name: str) -> ToolDef:
        """A registered name, or a `module:function` imported on demand."""
        found = self._tools.get(name)
        if found is not None:
            return found
        if ":" not in name:
            raise ToolNotFound(f"unknown tool '{name}'", _suggest(name, self._tools))
        module_name, _, attr = name.partition(":")
        if not module_name or not attr:
            raise ToolNotFound(f"tool '{name}': expected 'module:function'")
        try:
            module = _import(module_name)
        except Exception as exc:  # an import can fail in any way (SyntaxError, its own errors)
            raise ToolNotFound(
                f"tool '{name}': cannot import module '{module_name}': {type(exc).__name__}: {exc}"
            ) from None
        fn: Any = module
        for part in attr.split("."):
            fn = getattr(fn, part, None)
        if fn is None or not callable(fn):
            raise ToolNotFound(f"tool '{name}': module '{module_name}' has no function '{attr}'")
        # A registered function keeps its options (above all `prepare`, which keeps
        # substituted values out of shell syntax) when it is named as module:function.
        registered = getattr(fn, "__durable_tool__", None)
        return (
            registered
            if isinstance(registered, ToolDef)
            else ToolDef(name, fn, inspect.iscoroutinefunction(fn))
        )


def _suggest(name: str, known: Iterable[str]) -> list[str]:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=3)
    return [f"did you mean {', '.join(repr(c) for c in close)}?"] if close else []


REGISTRY = Registry()


@overload
def tool(fn: F, /) -> F: ...
@overload
def tool(
    *,
    name: str | None = None,
    cpu_bound: bool = False,
    version: str | None = None,
    cacheable: bool = True,
) -> Callable[[F], F]: ...


def tool(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    cpu_bound: bool = False,
    version: str | None = None,
    cacheable: bool = True,
) -> F | Callable[[F], F]:
    """Register a function as a tool: `@tool`, or `@tool(name="web_search", cpu_bound=True)`.

    `version` names the tool's behaviour for fingerprints (`fingerprint.py`): give
    one when the result depends on more than the function's own source (a model, a
    helper it calls), and change it when that changes. The function itself is
    returned unchanged, so it stays callable and picklable. `cacheable=False` keeps
    its outputs out of the cache (`durable run --cache`): for a tool whose point is
    its side effect.
    """

    def register(function: F) -> F:
        REGISTRY.add(function, name=name, cpu_bound=cpu_bound, version=version, cacheable=cacheable)
        return function

    return register(fn) if fn is not None else register


def arguments_problem(tool: ToolDef, source: Any) -> str | None:
    """What keeps a task's input as written (`source`, after the tool's `prepare`)
    from being arguments of the tool's function, as `executors.call_args` passes
    them, or None: a mapping's keys are keyword arguments (known as written, even
    where the values are references), null is none, anything else is one argument.
    A text that is one whole reference may become any of these: it is not checked."""
    if isinstance(source, dict):
        odd = next((key for key in source if key.__class__ is not str), None)
        if odd is not None:
            return f"the key {odd!r} is no argument name (a mapping's keys name arguments)"
        return _binding_problem(tool.fn, "keywords", tuple(source))
    if isinstance(source, str) and is_one_reference(source):
        return None
    return _binding_problem(tool.fn, "none" if source is None else "one", ())


@functools.lru_cache(maxsize=1024)
def _binding_problem(fn: Callable[..., Any], kind: str, keys: tuple[str, ...]) -> str | None:
    """Whether `fn` takes those arguments; cached, as most tasks of a workflow call a
    few tools with the same keys, and a signature costs microseconds."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a callable Python cannot describe: the call will tell
        return None
    parameters = signature.parameters
    named = [
        p.name for p in parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    unknown = [key for key in keys if key not in named]
    if unknown and not takes_any:  # before what is missing: a misspelt name is the cause
        return (
            f"it has no argument {', '.join(repr(key) for key in unknown)} "
            f"(it takes: {', '.join(named) or 'none'})"
        )
    try:
        if kind == "keywords":
            signature.bind(**dict.fromkeys(keys))
        elif kind == "one":
            signature.bind(None)
        else:
            signature.bind()
    except TypeError as exc:
        return str(exc)
    return None


def import_modules(imports: Iterable[str], base_dir: str | Path) -> list[str]:
    """Import the workflow's `imports:` modules, found relative to `base_dir` first.

    Returns one problem string per module that fails, rather than raising, so that
    validation can report them all. The folder is put on `sys.path` so that
    `module:function` references and process-pool workers find the same modules.
    """
    folder = str(Path(base_dir).resolve())
    add_search_path(folder)
    problems = []
    for module_name in imports:
        existing = sys.modules.get(module_name)
        # Another workflow's module of the same name (e.g. two `tools.py`):
        # load this folder's one instead of silently reusing the other.
        if (
            existing is not None
            and not _is_under(getattr(existing, "__file__", None), folder)
            and _local_module_exists(folder, module_name)
        ):
            del sys.modules[module_name]
        try:
            _import(module_name)
        except Exception as exc:  # an import can fail in any way; report it, don't crash
            problems.append(f"imports: cannot import '{module_name}': {type(exc).__name__}: {exc}")
    return problems


def _import(module_name: str) -> ModuleType:
    """`importlib.import_module`, where a module that calls `sys.exit` as it is
    imported (`sys.exit("API_KEY is not set")`) fails to import, as one that raises
    does: a problem to report, naming it, not the exit of the whole command."""
    try:
        return importlib.import_module(module_name)
    except SystemExit as exc:
        why = "" if exc.code is None else f": {exc.code}"
        raise ImportError(f"it called sys.exit{why}") from None


def add_search_path(folder: str) -> None:
    """Put `folder` first on `sys.path`, moving it there if it is already further down."""
    if sys.path[:1] != [folder]:
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)


def _is_under(file: str | None, folder: str) -> bool:
    return file is not None and str(Path(file).resolve()).startswith(folder + "/")


def _local_module_exists(folder: str, module_name: str) -> bool:
    base = Path(folder, *module_name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


import durable.builtins  # noqa: E402,F401  (registers echo, sleep, shell, http)
