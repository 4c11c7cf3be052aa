"""`${...}` references: parsing them out of task inputs, and substituting values.

Grammar of what goes between `${` and `}`::

    params.NAME | run.id | TASK.output ( .KEY | [INDEX] )*
    TASK[N].output ( .KEY | [INDEX] )*       one instance of a `foreach` task
    item ( .KEY | [INDEX] )* | index          in a `foreach` task: its item, its position

A string that is exactly one reference is replaced by the value itself, keeping its
type (a list stays a list). A reference embedded in longer text is interpolated as
text: strings as they are, everything else as JSON (`null`, `true`, `[1, 2]`). `$${`
is a literal `${`.

Inputs are compiled once into a `Template`; rendering it walks only the parts that
hold references, so a constant input costs nothing per call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from durable.errors import ReferenceSyntaxError, ResolutionError

_REF = re.compile(r"\$(\$?)\{([^{}]*)\}")
_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_ROOT = re.compile(rf"\s*({_NAME})\s*(?:\[\s*(\d+)\s*\]\s*)?(?:\.\s*({_NAME}))?")
_STEP = re.compile(rf"\.({_NAME})|\[\s*(-?\d+)\s*\]|\[\s*\"([^\"]*)\"\s*\]|\[\s*'([^']*)'\s*\]")
#: A reference made of dotted names alone (`t1.output.n`, `params.x`): most of them.
_DOTTED = re.compile(rf"{_NAME}(?:\.{_NAME})+")
#: An instance's id as `instance_id` writes it: no sign, no leading zero.
_INSTANCE = re.compile(r"([^\[\]]+)\[(0|[1-9][0-9]*)\]")


#: The names a `foreach` task's input and `when` may use for their instance.
ITEM_NAMES = ("item", "index")


def instance_id(task_id: str, index: int) -> str:
    """The id of one instance of a `foreach` task: `fetch[3]`."""
    return f"{task_id}[{index}]"


def split_instance(task_id: str) -> tuple[str, int] | None:
    """`fetch[3]` as ("fetch", 3); None for an id that is not an instance's."""
    match = _INSTANCE.fullmatch(task_id)
    return (match[1], int(match[2])) if match else None


def is_one_reference(text: str) -> bool:
    """Whether `text` is exactly one `${...}`, nothing around it: its value arrives as
    data of its own type (a list to expand, words for a program), not as text. The
    checks ask this, so that they agree with the renderer (`_compile_string`)."""
    return _whole(text) is not None


def _whole(text: str) -> re.Match[str] | None:
    """The match of `text` when it is exactly one reference (not a `$${...}` escape)."""
    match = _REF.fullmatch(text)
    return match if match is not None and not match.group(1) else None


def group_of(task_id: str) -> str:
    """The task an id belongs to: `fetch` for `fetch[3]`, itself for any other."""
    return task_id.split("[", 1)[0]


class Ref(msgspec.Struct, frozen=True):
    """One parsed reference. `kind` is "param", "run", "task", "item" or "index"; `name`
    the param or task id (`fetch[3]` for an instance of a `foreach` task)."""

    kind: str
    name: str
    path: tuple[str | int, ...] = ()
    text: str = ""

    def __str__(self) -> str:
        return "${" + self.text + "}"


def parse_ref(inner: str) -> Ref:
    """Parse the text between `${` and `}`."""
    text = inner.strip()
    if _DOTTED.fullmatch(text):  # the common shapes, without the general walk below
        head, member, *path = text.split(".")
        if head == "item":
            return Ref("item", "item", (member, *path), text)
        if head == "params":
            return Ref("param", member, tuple(path), text)
        if member == "output" and head != "run":
            return Ref("task", head, tuple(path), text)
        # anything else (`run.id`, and every error) as below
    root = _ROOT.match(text)
    # `${index.output}` is a task named `index`; `${item...}` is always the item.
    if root and (root.group(1) == "item" or (root.group(1) == "index" and not root.group(3))):
        head, member = root.group(1), None
        rest = text[root.end(1) :]
    elif not root or root.group(3) is None:
        raise ReferenceSyntaxError(
            f"bad reference '${{{inner}}}': expected params.NAME, run.id, TASK.output[.key],"
            " item or index"
        )
    else:
        head, member = root.group(1), root.group(3)
        rest = text[root.end() :]
    path: list[str | int] = []
    pos = 0
    while pos < len(rest):
        if rest[pos].isspace():
            pos += 1
            continue
        step = _STEP.match(rest, pos)
        if not step:
            raise ReferenceSyntaxError(f"bad reference '${{{inner}}}': cannot parse '{rest[pos:]}'")
        key, index, dq, sq = step.groups()
        if index is not None:
            path.append(int(index))
        else:
            path.append(next(part for part in (key, dq, sq) if part is not None))
        pos = step.end()
    if member is None:
        if head == "index" and path:
            raise ReferenceSyntaxError(f"bad reference '${{{inner}}}': index is a number")
        return Ref(head, head, tuple(path), text)
    if root.group(2) is not None:  # TASK[N].output
        if head in ("params", "run"):
            raise ReferenceSyntaxError(f"bad reference '${{{inner}}}': '{head}' has no instances")
        head = instance_id(head, int(root.group(2)))
    if head == "params":
        return Ref("param", member, tuple(path), text)
    if head == "run":
        if member != "id" or path:
            raise ReferenceSyntaxError(
                f"bad reference '${{{inner}}}': the only run field is run.id"
            )
        return Ref("run", "id", (), text)
    if member != "output":
        raise ReferenceSyntaxError(
            f"bad reference '${{{inner}}}': a task reference reads '{head}.output', not '{head}.{member}'"
        )
    return Ref("task", head, tuple(path), text)


class Scope(msgspec.Struct):
    """What references resolve against: params, the run id, and *committed* task outputs.

    The engine only ever puts an output here after its `task_succeeded` event is
    committed; that is the durability barrier. A skipped task's output is `None`.
    """

    params: Mapping[str, Any]
    run_id: str
    outputs: Mapping[str, Any]
    #: The item of a `foreach` task's instance, and its position in the list
    #: (`index` None: not an instance).
    item: Any = None
    index: int | None = None

    def bind(self, item: Any, index: int) -> Scope:
        """The scope of one instance of a `foreach` task: this one, plus its item."""
        return Scope(self.params, self.run_id, self.outputs, item, index)


def resolve(ref: Ref, scope: Scope) -> Any:
    """The value of one reference, or a `ResolutionError` naming the missing key."""
    if ref.kind == "run":
        return scope.run_id
    if ref.kind in ITEM_NAMES:
        if scope.index is None:
            raise ResolutionError(f"{ref}: only a task with foreach has an {ref.kind}")
        if ref.kind == "index":
            return scope.index
        value = scope.item
    elif ref.kind == "param":
        if ref.name not in scope.params:
            raise ResolutionError(f"{ref}: no param '{ref.name}'")
        value = scope.params[ref.name]
    else:
        if ref.name not in scope.outputs:
            raise ResolutionError(f"{ref}: task '{ref.name}' has no committed output")
        value = scope.outputs[ref.name]
    for step in ref.path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            raise ResolutionError(f"{ref}: {_missing(value, step)}") from None
    return value


def _missing(value: Any, step: str | int) -> str:
    if value is None:
        return f"cannot read {step!r} of null"
    if isinstance(step, int):
        if isinstance(value, list):
            return f"index {step} out of range (length {len(value)})"
        return f"cannot index a {type(value).__name__} with [{step}]"
    if isinstance(value, dict):
        keys = ", ".join(sorted(map(str, value))[:10]) or "none"
        return f"missing key '{step}' (keys: {keys})"
    return f"cannot read key '{step}' of a {type(value).__name__}"


_json = msgspec.json.Encoder()


def as_text(value: Any) -> str:
    """How a value reads when interpolated into a string."""
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


class Template:
    """A compiled task input. `refs` lists every reference; `render(scope)` substitutes them."""

    __slots__ = ("refs", "render")

    def __init__(self, value: Any) -> None:
        refs: list[Ref] = []
        # Most inputs hold no `$` at all: one C-speed encode proves it, and spares
        # the walk (planning 100k tasks is mostly this).
        if not isinstance(value, dict | list | str) or b"$" not in _json.encode(value):
            build: Any = _Const(value)
        else:
            build = _compile(value, refs)
        #: `render(scope)`: the input with its references substituted. The compiled
        #: function itself, not a method calling it: one call fewer an attempt.
        self.render: Callable[[Scope], Any] = build
        self.refs: tuple[Ref, ...] = tuple(refs)

    @property
    def is_constant(self) -> bool:
        return not self.refs


def _holds_reference(text: str) -> bool:
    """Whether `text` holds a `${...}` that is not a `$${...}` escape."""
    return any(not match.group(1) for match in _REF.finditer(text))


def _compile(value: Any, refs: list[Ref]) -> Any:
    """Return a function scope -> value. Constant subtrees are returned as they are."""
    if isinstance(value, str):
        return _compile_string(value, refs)
    # A part is constant exactly when compiling it found no reference.
    before = len(refs)
    if isinstance(value, dict):
        for key in value:
            if key.__class__ is str and "${" in key and _holds_reference(key):
                raise ReferenceSyntaxError(
                    f"the key '{key}' holds a reference, but keys are taken as written, "
                    "never substituted: put the reference in a value"
                )
        parts = {
            k: _compile_string(v, refs) if v.__class__ is str else _compile(v, refs)
            for k, v in value.items()
        }
        if len(refs) == before:
            return _Const(value)
        return _mapping(parts)
    if isinstance(value, list):
        items = [_compile(v, refs) for v in value]
        if len(refs) == before:
            return _Const(value)
        return lambda scope: [p(scope) for p in items]
    return _Const(value)


def _mapping(parts: dict[str, Any]) -> Any:
    """A mapping that holds references: a copy of it with its constants in place and
    its references' slots held (so that its keys keep their order), filled in.
    Per render, a C-speed copy and one call per reference, not one per key.

    The renderer takes what it needs as default arguments, not from closure cells:
    planning makes one per task, and every cell is one more object for the garbage
    collector to walk while it does."""
    shape: dict[str, Any] = {}
    filled = []
    for k, p in parts.items():  # a loop, not two comprehensions: planning pays it per task
        if p.__class__ is _Const:
            shape[k] = p.value
        else:
            shape[k] = None
            filled.append((k, p))

    def render(scope: Scope, _shape: Any = shape, _filled: Any = tuple(filled)) -> Any:
        value = _shape.copy()
        for k, p in _filled:
            value[k] = p(scope)
        return value

    return render


def _resolver(ref: Ref) -> Any:
    """`resolve` of one reference, made once: a task's output read by its keys, with
    no test of the reference's kind per render (a reference of another kind, or a
    value that is not there, goes through `resolve`, which says what is missing).
    What it reads it takes as default arguments, as `_mapping`'s renderers do."""
    if ref.kind != "task":
        return lambda scope: resolve(ref, scope)

    def output(scope: Scope, _ref: Ref = ref, _path: Any = ref.path) -> Any:
        try:
            value = scope.outputs[_ref.name]
            for step in _path:
                value = value[step]
        except (KeyError, IndexError, TypeError):
            return resolve(_ref, scope)  # raises, naming the missing part
        return value

    return output


class _Const:
    """A constant subtree. Renders to the same object every time; tools must not mutate input."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, scope: Scope) -> Any:
        return self.value


def _compile_string(text: str, refs: list[Ref]) -> Any:
    if "$" not in text:
        return _Const(text)
    whole = _whole(text)
    if whole is not None:  # exactly one reference: its value
        only = parse_ref(whole.group(2))
        refs.append(only)
        return _resolver(only)
    pieces: list[str | Ref] = []
    pos = 0
    for match in _REF.finditer(text):
        pieces.append(_literal(text, text[pos : match.start()]))
        if match.group(1):  # `$${...}` escapes a literal `${...}`
            pieces.append("${" + match.group(2) + "}")
        else:
            ref = parse_ref(match.group(2))
            refs.append(ref)
            pieces.append(ref)
        pos = match.end()
    pieces.append(_literal(text, text[pos:]))
    pieces = [p for p in pieces if p != ""]
    if len(pieces) == 1 and isinstance(pieces[0], Ref):
        return _resolver(pieces[0])
    if not any(isinstance(p, Ref) for p in pieces):
        return _Const("".join(p for p in pieces if isinstance(p, str)))
    return lambda scope: "".join(
        p if isinstance(p, str) else as_text(resolve(p, scope)) for p in pieces
    )


_OPENING = re.compile(r"\$(\$?)\{")


def _literal(text: str, piece: str) -> str:
    """A piece of `text` between its references, as it renders: a `$${` there is a
    literal `${` (one that is never closed too); a `${` is a reference never closed."""
    if "${" not in piece:
        return piece

    def escaped(match: re.Match[str]) -> str:
        if not match.group(1):
            raise ReferenceSyntaxError(f"bad reference in '{text}': '${{' is never closed")
        return "${"

    return _OPENING.sub(escaped, piece)


_TASK_REF = re.compile(
    r"(?<!\$)\$\{\s*([A-Za-z_][A-Za-z0-9_-]*)\s*(?:\[\s*\d+\s*\]\s*)?\.\s*output\b"
)


def referenced_tasks(value: Any) -> list[str]:
    """The task ids a (nested) value references, found by a scan, not a parse (an
    instance's reference, `fetch[3]`, names its task, `fetch`).

    Only for values already validated: it agrees with `Template` on valid input,
    and it is several times faster (one C-speed encode and one regex pass).
    """
    text = value if isinstance(value, str) else _json.encode(value).decode()
    if "$" not in text:
        return []
    return [name for name in _TASK_REF.findall(text) if name not in ("params", "run")]


def find_refs(value: Any) -> tuple[Ref, ...]:
    """Every reference inside a (nested) value, in order."""
    return Template(value).refs
