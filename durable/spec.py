"""The workflow file: typed Structs, and loading them from YAML, JSON or TOML.

Decoding happens once, here, at the edge. msgspec reports a problem as a JSON path
(`$.tasks[1].retries`); users think in task ids and fields, so every decode error is
rewritten as "file: line N: task 'b': field 'retries': expected ...". This module checks
the *shape* of a workflow; whether it makes sense as a graph is `graph.py`'s job.

A file is refused at load time, in one line that names it, when it could hurt the
process rather than merely be wrong:

- it is not UTF-8 text (a UTF-8 byte-order mark is allowed and ignored);
- its data nests deeper than `MAX_DEPTH` levels, counting the top-level mapping as
  one: every later stage (conversion, templates, the journal's encoder) recurses, and
  a file 1,000 levels deep used to end in a `RecursionError`. Only `params` and task
  `input` hold data of any shape, so only they are walked, level by level; deeper
  than the decoders themselves can go, their `RecursionError` is caught here;
- its YAML aliases (`*name`) expand it beyond `EXPANSION_FACTOR` times the file's
  size and beyond `EXPANSION_FLOOR`. A 430-byte "billion laughs" file otherwise
  passes `validate` and makes `run` take gigabytes. Size is counted as one per value
  plus the length of each scalar's text (about the characters the data would take
  written out), so that a long string repeated by aliases counts as long. Merge keys
  (`<<: *base`) repeat far less than that and are unaffected.

A YAML file that may hold an alias has its composed nodes measured before anything
is constructed: iteratively, each distinct node once, so the check is linear in the
file however much the aliases repeat; it also refuses an alias inside itself and
depth stacked up through aliases. A file without one skips the walk.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from durable.errors import SpecError

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_-]*\Z"

TaskId = Annotated[str, Meta(pattern=IDENTIFIER)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(ge=0)]
PositiveSeconds = Annotated[float, Meta(gt=0)]
Concurrency = Annotated[int, Meta(ge=1)]

TRIGGERS = ("all_success", "none_failed", "all_done")

MAX_DEPTH = 100
EXPANSION_FACTOR = 10
EXPANSION_FLOOR = 1_000_000


class _Spec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """Frozen, strict base: an unknown key in a workflow file is an error, not a typo to ignore.

    `gc=False`: a spec is a tree, never a cycle, so the cyclic GC need not track it;
    decoding 100k tasks took 0.74 s with tracking and 0.31 s without."""


class Task(_Spec, kw_only=True):
    """One node of the workflow: a tool call whose input may reference other tasks."""

    id: TaskId
    tool: Annotated[str, Meta(min_length=1)]
    input: Any = None
    dependencies: list[TaskId] = []
    when: str | None = None
    retries: NonNegativeInt = 0
    retry_delay: Seconds = 1.0
    timeout: PositiveSeconds | None = None
    # A plain string (not a Literal) so that `graph.validate` can report a bad
    # trigger together with every other problem instead of failing the decode.
    trigger: str = "all_success"


class Workflow(_Spec, kw_only=True):
    """A whole workflow file. Build one in code, or `load()` it from a file."""

    name: Annotated[str, Meta(min_length=1)]
    tasks: list[Task]
    max_concurrency: Concurrency = 16
    params: dict[str, Any] = {}
    imports: list[str] = []
    # Checked by `graph.build` rather than by a constraint, so that the error can
    # name the tool (msgspec reports a bad dict value as `limits[...]`).
    limits: dict[str, int] = {}


class Decoded(msgspec.Struct, kw_only=True):
    """A file decoded as far as it goes, so that `validate` reports everything in one pass.

    `problems` are the shape errors, worded for people. A task with one is left out of
    `workflow` (its id goes to `broken_ids`, so that references to it are not reported
    as unknown); a bad field of a task that is otherwise sound is dropped instead, so
    that the rest of it can still be checked. `workflow` is None when what is left
    would give false alarms (bad `params`, `imports` or `tasks`). `lines` is set for
    YAML only: JSON and TOML decoders keep no positions.
    """

    workflow: Workflow | None
    problems: list[str] = []
    broken_ids: list[str] = []
    lines: SourceLines | None = None


def load(path: str | Path) -> Workflow:
    """Read and decode a workflow file; a wrong shape raises `SpecError` with its first problem."""
    decoded = read(path)
    if decoded.problems or decoded.workflow is None:
        raise SpecError(str(path), decoded.problems[0])
    return decoded.workflow


def read(path: str | Path) -> Decoded:
    """Read a workflow file, choosing the format by its extension, and collect its shape problems.

    Raises `SpecError` only for a file that cannot be decoded at all (unreadable, not
    text, not valid YAML/JSON/TOML, over a limit).
    """
    path = Path(path)
    source = str(path)
    decode = _DECODERS.get(path.suffix.lower())
    if decode is None:
        raise SpecError(source, "unknown file type (expected .yaml, .yml, .json or .toml)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(source, f"cannot read: {exc.strerror or exc}") from None
    data = _utf8(source, data)
    try:
        raw = decode(data, source)
        if not isinstance(raw, dict):
            raise SpecError(source, f"a workflow must be a mapping, got {type(raw).__name__}")
        decoded = _decode(raw, SourceLines(data) if decode is _decode_yaml else None)
        _check_depth(decoded, source)
        return decoded
    except RecursionError:  # a last resort: the depth checks should have refused it first
        raise SpecError(source, f"nested deeper than {MAX_DEPTH} levels") from None


def from_data(raw: Any, source: str = "<workflow>", text: bytes | None = None) -> Workflow:
    """Convert already-decoded data (e.g. a dict built in code) into a `Workflow`."""
    if not isinstance(raw, dict):
        raise SpecError(source, f"a workflow must be a mapping, got {type(raw).__name__}")
    try:
        decoded = _decode(raw, SourceLines(text) if text is not None else None)
        _check_depth(decoded, source)
    except RecursionError:  # data built in code, as deep as Python allowed
        raise SpecError(source, f"nested deeper than {MAX_DEPTH} levels") from None
    if decoded.problems or decoded.workflow is None:
        raise SpecError(source, decoded.problems[0])
    return decoded.workflow


def spec_hash(workflow: Workflow) -> str:
    """A stable fingerprint of a workflow, stored with each run."""
    return hashlib.sha256(encode(workflow)).hexdigest()[:16]


def encode(workflow: Workflow) -> bytes:
    return msgspec.json.encode(workflow)


def decode(data: bytes) -> Workflow:
    return msgspec.json.decode(data, type=Workflow)


# -- text -----------------------------------------------------------------------------


def _utf8(source: str, data: bytes) -> bytes:
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
        raise SpecError(source, f"not valid JSON: {_first_line(message)}") from None
    return raw


def _decode_toml(data: bytes, source: str) -> Any:
    try:
        raw = msgspec.toml.decode(data)
    except (msgspec.DecodeError, ValueError) as exc:  # tomllib lets int()'s ValueError through
        raise SpecError(source, f"not valid TOML: {_first_line(exc)}") from None
    return raw


def _check_depth(decoded: Decoded, source: str) -> None:
    """Refuse free-form data (`params`, task `input`) nested deeper than `MAX_DEPTH`.

    Only those fields hold data of any shape: every other field has a type, which a
    deeper value would already have failed. Checked a level at a time, without
    recursion, over all of them at once (a per-task walk cost more than the check).
    """
    workflow = decoded.workflow
    if workflow is None:
        return
    containers = (dict, list)
    params = [v for v in workflow.params.values() if isinstance(v, containers)]
    inputs = [t.input for t in workflow.tasks if isinstance(t.input, containers)]
    for start, level in ((3, params), (4, inputs)):  # the top-level mapping is level 1
        depth = start
        while level:
            if depth > MAX_DEPTH:
                raise SpecError(
                    source, f"{_deep_field(decoded)}nested deeper than {MAX_DEPTH} levels"
                )
            level = [
                child
                for value in level
                for child in (value.values() if value.__class__ is dict else value)
                if isinstance(child, containers)
            ]
            depth += 1


def _deep_field(decoded: Decoded) -> str:
    """ "line 7: task 'a': field 'input': ", naming where data is too deep (an error path)."""
    assert decoded.workflow is not None

    def depth(value: Any) -> int:
        level, count = [value], 0
        while level:
            level = [
                c
                for v in level
                if isinstance(v, dict | list)
                for c in (v.values() if isinstance(v, dict) else v)
            ]
            count += 1
        return count - 1

    lines = decoded.lines
    for name, value in decoded.workflow.params.items():
        if 2 + depth(value) > MAX_DEPTH:
            line = lines.line(["params", name]) if lines is not None else None
            return (f"line {line}: " if line else "") + f"field 'params.{name}': "
    for position, task in enumerate(decoded.workflow.tasks):
        if 3 + depth(task.input) > MAX_DEPTH:
            line = lines.task(position, "input") if lines is not None else None
            return (f"line {line}: " if line else "") + f"task '{task.id}': field 'input': "
    return ""


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
_ALIAS = re.compile(rb"(?:^|[\s\[{,:?-])\*[^\s,\[\]{}]", re.MULTILINE)


def _decode_yaml(data: bytes, source: str) -> Any:
    import yaml

    loader = _strict_yaml_loader()(data)  # a safe loader, see above
    if _ALIAS.search(
        data
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
        return f"line {line}, column {column}: {_first_line(str(exc).split(' in ', 1)[0])}"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return _first_line(re.sub(r'\s*in "<[^>]*>",', "", str(exc)))
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
    return where + _first_line(text)


_DECODERS: dict[str, Callable[[bytes, str], Any]] = {
    ".yaml": _decode_yaml,
    ".yml": _decode_yaml,
    ".json": _decode_json,
    ".toml": _decode_toml,
}


# -- shape: raw data to Structs, every problem collected ---------------------------


def _decode(raw: dict[str, Any], lines: SourceLines | None) -> Decoded:
    """Convert in one call when the file is right (the fast path); otherwise object by object."""
    try:
        return Decoded(workflow=msgspec.convert(raw, Workflow), lines=lines)
    except msgspec.ValidationError:
        pass
    problems: list[str] = []
    raw_tasks = raw.get("tasks")
    top_fields = dict(raw)
    if isinstance(raw_tasks, list):
        top_fields["tasks"] = []
    top, refused = _convert(top_fields, Workflow, [], raw, lines, problems)
    tasks: list[Task] = []
    rows: list[int] = []
    broken: list[str] = []
    for index, item in enumerate(raw_tasks if isinstance(raw_tasks, list) else []):
        task, refused_fields = _convert(item, Task, ["tasks", index], raw, lines, problems)
        if task is None or refused_fields & {"id", "tool"}:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                broken.append(item["id"])
        else:
            tasks.append(task)
            rows.append(index)
    if lines is not None:
        lines.rows = rows
    usable = top is not None and not refused & {"params", "imports", "tasks"}
    workflow = msgspec.structs.replace(top, tasks=tasks) if usable else None
    return Decoded(workflow=workflow, problems=problems, broken_ids=broken, lines=lines)


# A required field that is wrong is replaced by one of these to find the rest of the
# object's problems; the object itself is then reported and not used.
_STAND_INS: dict[str, Any] = {"name": "_", "tasks": [], "id": "_", "tool": "_"}


def _convert(
    fields: Any,
    cls: type[Any],
    prefix: list[str | int],
    raw: Any,
    lines: SourceLines | None,
    problems: list[str],
) -> tuple[Any, set[str]]:
    """Convert one object, dropping each field msgspec refuses and trying again.

    msgspec stops at the first error; this finds all of an object's problems at the
    cost of one conversion per problem. Returns the Struct (None when the object is
    not a mapping) and the names of the fields that were refused.
    """
    refused: set[str] = set()
    if not isinstance(fields, dict):
        fields = {"": fields}  # let msgspec word "expected `object`, got ..."
        try:
            msgspec.convert(fields[""], cls)
        except msgspec.ValidationError as exc:
            problems.append(describe_validation_error(str(exc), raw, lines, prefix))
        return None, refused
    fields = dict(fields)
    for _ in range(len(fields) + len(_STAND_INS) + 1):
        try:
            return msgspec.convert(fields, cls), refused
        except msgspec.ValidationError as exc:
            problems.append(describe_validation_error(str(exc), raw, lines, prefix))
            parts = _error_parts(str(exc))[1]
            key = parts[0] if parts else None
            if (
                not isinstance(key, str)
                or key in refused
                or (key not in fields and key not in _STAND_INS)
            ):
                return None, refused
            refused.add(key)
            if key in _STAND_INS:
                fields[key] = _STAND_INS[key]
            else:
                del fields[key]
    return None, refused


_PATH_PART = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]|\[\.\.\.\]")


def _error_parts(message: str) -> tuple[str, list[str | int], bool]:
    """msgspec's "Expected `int` - at `$.tasks[1].retries`" as (what, path parts, missing?)."""
    what, _, where = message.partition(" - at `")
    parts: list[str | int] = []
    for key, index in _PATH_PART.findall(where.rstrip("`").removeprefix("$")):
        parts.append(key if key else int(index) if index else "...")
    unknown = re.match(r"Object contains unknown field `(.+)`", what)
    missing = re.match(r"Object missing required field `(.+)`", what)
    if unknown:
        parts.append(unknown.group(1))
        what = "unknown field"
    elif missing:
        parts.append(missing.group(1))
        what = "required field is missing"
    elif what.startswith("Expected `str` matching regex"):  # IDENTIFIER, the only pattern
        what = "must start with a letter or '_' and hold only letters, digits, '_' and '-'"
    else:
        what = what[:1].lower() + what[1:]
    return what, parts, missing is not None


def describe_validation_error(
    message: str,
    raw: Any,
    text: bytes | SourceLines | None,
    prefix: Sequence[str | int] = (),
) -> str:
    """Rewrite msgspec's "Expected `int` - at `$.tasks[1].retries`" for a person.

    The result names the line (YAML only: PyYAML keeps node marks), the task by its
    id when it has one, and the field. `prefix` is the path of the object that was
    converted on its own (a task is converted alone to find every problem).
    """
    what, parts, missing = _error_parts(message)
    parts = [*prefix, *parts]
    lines = SourceLines(text) if isinstance(text, bytes) else text
    line = lines.line(parts, parent_only=missing) if lines is not None else None
    location = f"line {line}: " if line else ""
    return f"{location}{_where(parts, raw)}{what}"


def _where(parts: list[str | int], raw: Any) -> str:
    """ "task 'b': field 'retries': " for a path; a task is named by its id when it has one."""
    prefix = ""
    if len(parts) >= 2 and parts[0] == "tasks" and isinstance(parts[1], int):
        prefix = f"task {_task_label(raw, parts[1])}: "
        parts = parts[2:]
    field = _dotted(parts)
    return prefix + (f"field '{field}': " if field else "")


def _task_label(raw: Any, index: int) -> str:
    try:
        task_id = raw["tasks"][index]["id"]
    except (KeyError, IndexError, TypeError):
        task_id = None
    return f"'{task_id}'" if isinstance(task_id, str) and task_id else f"#{index + 1}"


def _dotted(parts: list[str | int]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "...":
            text += "[...]"
        else:
            text += f".{part}" if text else part
    return text


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


def _first_line(exc: Exception | str) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(exc).__name__
