"""The workflow file: typed Structs, and loading them from YAML, JSON or TOML.

Decoding happens once, here, at the edge. msgspec reports a problem as a JSON path
(`$.tasks[1].retries`); users think in task ids and fields, so every decode error is
rewritten as "file:line: task 'b': field 'retries': expected ...". This module checks
the *shape* of a workflow; whether it makes sense as a graph is `graph.py`'s job.
"""

from __future__ import annotations

import functools
import hashlib
import re
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


@functools.cache
def _strict_yaml_loader() -> type:
    """PyYAML's safe loader (libyaml's where built), refusing duplicate keys.

    Plain YAML keeps the last of two equal keys, so a task with two `input:` keys
    would silently lose one. Built on first use: importing PyYAML costs start-up.
    """
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class StrictLoader(base):  # type: ignore[valid-type,misc]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` keys may be overridden: that is their point
                key = self.construct_object(key_node, deep=deep)
                try:
                    if key in first_line:
                        raise yaml.constructor.ConstructorError(
                            None,
                            None,
                            f"duplicate key {key!r} (first at line {first_line[key]})",
                            key_node.start_mark,
                        )
                    first_line[key] = key_node.start_mark.line + 1
                except TypeError:  # an unhashable key: the base class reports it
                    pass
            return super().construct_mapping(node, deep)

    return StrictLoader


def _decode_yaml(text: bytes) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_strict_yaml_loader())  # a safe loader, see above
    except yaml.YAMLError as exc:
        raise msgspec.DecodeError(str(exc)) from None


_DECODERS = {
    ".yaml": _decode_yaml,
    ".yml": _decode_yaml,
    ".json": msgspec.json.decode,
    ".toml": msgspec.toml.decode,
}


def load(path: str | Path) -> Workflow:
    """Read and decode a workflow file, choosing the format by its extension."""
    path = Path(path)
    decode = _DECODERS.get(path.suffix.lower())
    if decode is None:
        raise SpecError(str(path), "unknown file type (expected .yaml, .yml, .json or .toml)")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise SpecError(str(path), f"cannot read: {exc.strerror or exc}") from None
    try:
        raw = decode(text)
    except msgspec.DecodeError as exc:
        raise SpecError(
            str(path), f"not valid {path.suffix.lstrip('.').upper()}: {_first_line(exc)}"
        ) from None
    return from_data(raw, source=str(path), text=text if decode is _decode_yaml else None)


def from_data(raw: Any, source: str = "<workflow>", text: bytes | None = None) -> Workflow:
    """Convert already-decoded data (e.g. a dict built in code) into a `Workflow`."""
    if not isinstance(raw, dict):
        raise SpecError(source, f"a workflow must be a mapping, got {type(raw).__name__}")
    try:
        return msgspec.convert(raw, Workflow)
    except msgspec.ValidationError as exc:
        raise SpecError(source, describe_validation_error(str(exc), raw, text)) from None


def spec_hash(workflow: Workflow) -> str:
    """A stable fingerprint of a workflow, stored with each run."""
    return hashlib.sha256(encode(workflow)).hexdigest()[:16]


def encode(workflow: Workflow) -> bytes:
    return msgspec.json.encode(workflow)


def decode(data: bytes) -> Workflow:
    return msgspec.json.decode(data, type=Workflow)


_PATH_PART = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]|\[\.\.\.\]")


def describe_validation_error(message: str, raw: Any, text: bytes | None) -> str:
    """Rewrite msgspec's "Expected `int` - at `$.tasks[1].retries`" for a person.

    The result names the line (YAML only: PyYAML keeps node marks), the task by its
    id when it has one, and the field.
    """
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

    prefix = ""
    if len(parts) >= 2 and parts[0] == "tasks" and isinstance(parts[1], int):
        prefix = f"task {_task_label(raw, parts[1])}: "
        field_parts = parts[2:]
    else:
        field_parts = parts
    field = _dotted(field_parts)
    line = _yaml_line(text, parts, missing is not None) if text is not None else None
    location = f"line {line}: " if line else ""
    field_text = f"field '{field}': " if field else ""
    return f"{location}{prefix}{field_text}{what}"


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


def _yaml_line(text: bytes, parts: list[str | int], parent_only: bool) -> int | None:
    """The 1-based line of the node at `parts` in a YAML document, if it can be found."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    walk = parts[:-1] if parent_only else parts
    for part in walk:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    node = value_node
                    break
            else:
                return node.start_mark.line + 1
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
        else:
            break
    return node.start_mark.line + 1 if node is not None else None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(exc).__name__
