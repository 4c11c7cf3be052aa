"""The bytes of a workflow file to plain data: UTF-8, YAML, JSON, TOML, within limits.

A file is refused here, in one line that names it, when it could hurt the process
rather than merely be wrong:

- it is not UTF-8 text (a UTF-8 byte-order mark is allowed and ignored);
- its YAML aliases (`*name`) expand it beyond `EXPANSION_FACTOR` times the file's
  size and beyond `EXPANSION_FLOOR`. A 430-byte "billion laughs" file otherwise
  passes `validate` and makes `run` take gigabytes. Size is counted as one per value
  plus the length of each scalar's text (about the characters the data would take
  written out), so that a long string repeated by aliases counts as long. Merge keys
  (`<<: *base`) repeat far less than that and are unaffected;
- it nests deeper than the decoders themselves can go (their `RecursionError` is
  caught by `spec.read`); `spec` bounds the depth of decoded data at `MAX_DEPTH`.

A YAML file that may hold an alias has its composed nodes measured before anything
is constructed: iteratively, each distinct node once, so the check is linear in the
file however much the aliases repeat; it also refuses an alias inside itself and
depth stacked up through aliases. A file without one skips the walk.

Most YAML files never reach PyYAML: `yaml_subset` decodes those it can prove PyYAML
would read the same way (no aliases, tags or YAML 1.1 oddities) ten times faster,
and hands every other file, and every error, to the strict loader here.

Errors name a line and column, never a byte offset or a library's internals.
`SourceLines` finds where a field of a YAML file is, for messages about it.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from durable import yaml_subset
from durable.errors import SpecError

MAX_DEPTH = 100
EXPANSION_FACTOR = 10
EXPANSION_FLOOR = 1_000_000


# -- text -----------------------------------------------------------------------------


def utf8(source: str, data: bytes) -> bytes:
    """The file's bytes, checked to be UTF-8 and without a byte-order mark.

    Editors on Windows write the mark; it says nothing a UTF-8 reader needs. Anything
    else that is not UTF-8 (Latin-1, UTF-16) is refused here, where the byte can still
    be named, rather than by whichever decoder trips on it.
    """
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_column(data, exc.start)
        raise SpecError(
            source,
            f"not UTF-8 text: invalid byte 0x{data[exc.start]:02x} at line {line}, column {column}",
        ) from None
    return data


def _line_column(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of a byte offset."""
    offset = max(0, min(offset, len(data)))
    start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[start:offset].decode("utf-8", errors="replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


# -- JSON and TOML --------------------------------------------------------------------


def _decode_json(data: bytes, source: str) -> Any:
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        message = str(exc).removeprefix("JSON is malformed: ")
        found = re.search(r"\s*\(byte (\d+)\)$", message)
        if found:
            line, column = _line_column(data, int(found.group(1)))
            message = f"line {line}, column {column}: {message[: found.start()]}"
        elif message == "Input data was truncated":
            line, column = _line_column(data, len(data))
            message = f"line {line}, column {column}: the file ends too soon"
        raise SpecError(source, f"not valid JSON: {first_line(message)}") from None
    return raw


def _decode_toml(data: bytes, source: str) -> Any:
    try:
        raw = msgspec.toml.decode(data)
    except (msgspec.DecodeError, ValueError) as exc:  # tomllib lets int()'s ValueError through
        raise SpecError(source, f"not valid TOML: {first_line(exc)}") from None
    return raw


# -- YAML -----------------------------------------------------------------------------


_GUARDED_TAGS = frozenset({"bool", "int", "float", "timestamp", "binary"})


@functools.cache
def _strict_yaml_loader() -> type:
    """PyYAML's safe loader (libyaml's where built), refusing duplicate keys and bombs.

    Plain YAML keeps the last of two equal keys, so a task with two `input:` keys
    would silently lose one. The composed node graph is measured before anything is
    constructed (see the module docstring). Built on first use: importing PyYAML
    costs start-up.
    """
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class StrictLoader(base):  # type: ignore[valid-type,misc]
        size_limit = 0

        def get_single_data(self) -> Any:
            node = self.get_single_node()
            if node is None:
                return None
            if self.size_limit:
                _measure(node, self.size_limit)
            return self.construct_document(node)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if not isinstance(node, yaml.MappingNode):  # `!!set [1]`: the base class words it
                return super().construct_mapping(node, deep)
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` keys may be overridden: that is their point
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, str | int | float) or isinstance(key, bool):
                    # The journal stores inputs as JSON, whose keys are text.
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"a key must be text or a number, not {key!r}",
                        key_node.start_mark,
                    )
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first at line {first_line[key]})",
                        key_node.start_mark,
                    )
                first_line[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    def guarded(construct: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        """PyYAML's scalar constructors raise plain ValueError (`!!int 0x`, `2021-13-45`)."""

        def construct_scalar(loader: Any, node: Any) -> Any:
            try:
                return construct(loader, node)
            except (ValueError, KeyError, IndexError, OverflowError, TypeError) as exc:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"cannot read {node.value!r} as {node.tag.rsplit(':', 1)[-1]}: {exc}",
                    node.start_mark,
                ) from None

        return construct_scalar

    for tag, construct in list(base.yaml_constructors.items()):
        if tag is not None and tag.rsplit(":", 1)[-1] in _GUARDED_TAGS:
            StrictLoader.add_constructor(tag, guarded(construct))
    return StrictLoader


class _TooBig(Exception):
    """The composed YAML is over a limit; carries the message for `SpecError`."""


def _measure(root: Any, size_limit: int) -> None:
    """Walk the composed nodes once, refusing depth over `MAX_DEPTH`, recursive aliases,
    and an expanded size over `size_limit`.

    Iterative, with each collection's expanded size and height memoised by identity:
    an alias is a second edge to the same node, so the walk is linear in the nodes
    written however much the aliases repeat them.
    """
    import yaml

    scalar = yaml.ScalarNode
    known: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    open_ids: set[int] = set()

    def children(node: Any) -> Any:
        return (
            node.value
            if isinstance(node, yaml.SequenceNode)
            else itertools.chain.from_iterable(node.value)
        )

    if isinstance(root, scalar):
        return
    # The path from the root: each node with its children still to see, and the size
    # and height gathered so far (kept in locals while a node's scalars are summed).
    frames: list[tuple[Any, Any]] = [(root, iter(children(root)))]
    gathered: list[tuple[int, int]] = []
    open_ids.add(id(root))
    size, height = 1, 0
    while frames:
        node, todo = frames[-1]
        for child in todo:
            if child.__class__ is scalar:
                size += 1 + len(child.value)
                continue
            found = known.get(id(child))
            if found is not None:
                if len(frames) + found[1] > MAX_DEPTH:
                    raise _TooBig(f"{_mark(child)}nested deeper than {MAX_DEPTH} levels")
                size += found[0]
                height = max(height, found[1])
                continue
            if id(child) in open_ids:
                raise _TooBig(f"{_mark(child)}an alias refers to a value that contains it")
            if len(frames) >= MAX_DEPTH:
                raise _TooBig(f"{_mark(child)}nested deeper than {MAX_DEPTH} levels")
            open_ids.add(id(child))
            frames.append((child, iter(children(child))))
            gathered.append((size, height))
            size, height = 1, 0
            break
        else:
            frames.pop()
            open_ids.discard(id(node))
            known[id(node)] = (size, height + 1)
            if gathered:
                parent_size, parent_height = gathered.pop()
                size, height = parent_size + size, max(parent_height, height + 1)
            elif size > size_limit:
                raise _TooBig(
                    f"YAML aliases expand the file to about {size:,} characters of data, "
                    f"over the limit of {size_limit:,} ({EXPANSION_FACTOR} times the file's "
                    f"size, and at least {EXPANSION_FLOOR:,})"
                )


def _mark(node: Any) -> str:
    return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}: "


# Could this text hold an alias? `*name` after a space, a line start or a flow
# indicator. A false alarm (`a: x *y`) only costs the walk.
_ALIAS = rb"(?:^|[\s\[{,:?-])\*[^\s,\[\]{}]"  # compiled on first use


def decode_yaml(data: bytes, source: str) -> Any:
    """A YAML file's data: yaml_rs where it provably reads the file as PyYAML would
    (`yaml_subset`), else PyYAML's strict loader, which also words every error."""
    value = yaml_subset.decode(data)
    if value is not yaml_subset.UNSURE:
        return value
    return decode_yaml_strictly(data, source)


def decode_yaml_strictly(data: bytes, source: str) -> Any:
    """PyYAML's safe loader, refusing duplicate keys and bombs (see the module docstring)."""
    import yaml

    loader = _strict_yaml_loader()(data)  # a safe loader, see above
    if re.search(
        _ALIAS, data, re.MULTILINE
    ):  # without aliases the data is as big as the file; depth is checked later
        loader.size_limit = max(EXPANSION_FLOOR, EXPANSION_FACTOR * len(data))
    try:
        return loader.get_single_data()
    except _TooBig as exc:
        raise SpecError(source, str(exc)) from None
    except yaml.YAMLError as exc:
        raise SpecError(source, f"not valid YAML: {_yaml_problem(exc, data)}") from None
    finally:
        loader.dispose()


def _yaml_problem(exc: Exception, data: bytes) -> str:
    """PyYAML's error as "line L, column C: problem (context)", without its `in "<byte string>"`."""
    import yaml

    if isinstance(exc, yaml.reader.ReaderError):
        line, column = _line_column(data, exc.position)
        return f"line {line}, column {column}: {first_line(str(exc).split(' in ', 1)[0])}"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return first_line(re.sub(r'\s*in "<[^>]*>",', "", str(exc)))
    mark = exc.problem_mark or exc.context_mark
    text = exc.problem or exc.context or type(exc).__name__
    if exc.problem and exc.context:
        context = exc.context
        cmark, pmark = exc.context_mark, exc.problem_mark
        if cmark is not None and (
            pmark is None or (cmark.line, cmark.column) != (pmark.line, pmark.column)
        ):
            context += f" at line {cmark.line + 1}, column {cmark.column + 1}"
        text += f" ({context})"
    if exc.note:
        text += f"; {exc.note}"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + first_line(text)


DECODERS: dict[str, Callable[[bytes, str], Any]] = {
    ".yaml": decode_yaml,
    ".yml": decode_yaml,
    ".json": _decode_json,
    ".toml": _decode_toml,
}


# -- positions ------------------------------------------------------------------------


class SourceLines:
    """Where things are in a YAML file, for error messages about it.

    The file is composed again on first use: only a file with problems pays for it.
    `rows` maps a position in the decoded workflow's tasks to the task's position in
    the file, when tasks with shape problems were left out.
    """

    __slots__ = ("_root", "_text", "rows")

    def __init__(self, text: bytes) -> None:
        self._text = text
        self._root: Any = None
        self.rows: list[int] | None = None

    def _node(self) -> Any:
        if self._root is None:
            import yaml

            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            try:
                self._root = yaml.compose(self._text, Loader=loader) or False
            except yaml.YAMLError:
                self._root = False
        return self._root

    def line(self, parts: Sequence[str | int], parent_only: bool = False) -> int | None:
        """The 1-based line of the node at `parts` (or of its parent), or of the nearest found."""
        node = self._find(parts[:-1] if parent_only else parts)
        return node.start_mark.line + 1 if node is not None else None

    def task(
        self, position: int, field: str | None = None, needle: str | None = None
    ) -> int | None:
        """The line of a task's field, or of the text in that field that holds `needle`."""
        import yaml

        index = self.rows[position] if self.rows is not None else position
        found = self._find(["tasks", index] + ([field] if field else []))
        stack = [found] if needle is not None and found is not None else []
        while stack:
            node = stack.pop()
            if isinstance(node, yaml.ScalarNode):
                if needle in node.value:
                    return node.start_mark.line + 1
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(reversed(node.value))
            else:
                stack.extend(reversed([n for pair in node.value for n in pair]))
        return found.start_mark.line + 1 if found is not None else None

    def _find(self, parts: Sequence[str | int]) -> Any:
        import yaml

        node = self._node()
        if not node:
            return None
        for part in parts:
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                for key_node, value_node in node.value:
                    if key_node.value == part:
                        node = value_node
                        break
                else:
                    break
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(part, int)
                and part < len(node.value)
            ):
                node = node.value[part]
            else:
                break
        return node


def first_line(exc: Exception | str) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(exc).__name__
