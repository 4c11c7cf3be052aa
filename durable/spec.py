"""The workflow file: typed Structs, and decoding a file into them.

Decoding happens once, here, at the edge. msgspec reports a problem as a JSON path
(`$.tasks[1].retries`); users think in task ids and fields, so every decode error is
rewritten as "file: line N: task 'b': field 'retries': expected ...". This module checks
the *shape* of a workflow; whether it makes sense as a graph is `graph.py`'s job. How
the bytes of a YAML, JSON or TOML file become plain data, within limits that keep a
hostile file from hurting the process, is `formats.py`'s.

Free-form data (`params`, task `input` and `foreach`) that a run could not keep is
refused here, after decoding (`data_problem`): nested deeper than `formats.MAX_DEPTH`
levels, an integer over 64 bits, infinity or NaN.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from durable import formats
from durable.errors import SpecError
from durable.formats import MAX_DEPTH, SourceLines

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_-]*\Z"

TaskId = Annotated[str, Meta(pattern=IDENTIFIER)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
#: The longest time a field may give, about 31 years: a bound that keeps infinity out
#: (the run keeps its workflow as JSON, which would write it as null) and every sum
#: of times finite.
MAX_SECONDS = 1e9
Seconds = Annotated[float, Meta(ge=0, le=MAX_SECONDS)]
PositiveSeconds = Annotated[float, Meta(gt=0, le=MAX_SECONDS)]
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
    #: Run the task once per item of this list (a reference to one, or a literal
    #: list): `fanout.py`. Its input and `when` may use `${item}` and `${index}`.
    foreach: Any = None
    #: The most items `foreach` may expand into (default `fanout.DEFAULT_MAX_ITEMS`).
    max_items: Annotated[int, Meta(ge=0)] | None = None
    #: Reuse an earlier committed success of the same work (`journal/cache.py`):
    #: None follows the workflow's `cache` (and `durable run --cache`).
    cache: bool | None = None
    #: Seconds an entry of the cache answers for (None: the workflow's, or forever).
    cache_ttl: Seconds | None = None


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
    #: Every task reuses earlier successes of the same work unless it says `cache: false`.
    cache: bool = False
    cache_ttl: Seconds | None = None


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
    decode = formats.DECODERS.get(path.suffix.lower())
    if decode is None:
        raise SpecError(source, "unknown file type (expected .yaml, .yml, .json or .toml)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(source, f"cannot read: {exc.strerror or exc}") from None
    data = formats.utf8(source, data)
    try:
        raw = decode(data, source)
        if not isinstance(raw, dict):
            raise SpecError(source, not_a_mapping(raw))
        decoded = _decode(raw, SourceLines(data) if decode is formats.decode_yaml else None)
        _check_data(decoded, source)
        return decoded
    except RecursionError:  # a last resort: the depth checks should have refused it first
        raise SpecError(source, f"nested deeper than {MAX_DEPTH} levels") from None


def not_a_mapping(raw: Any) -> str:
    """Why a document is no workflow, in the file's words rather than Python's."""
    if raw is None:
        what = "nothing (the file is empty)"
    elif isinstance(raw, list):
        what = "a list"
    elif isinstance(raw, str):
        what = "a string"
    elif isinstance(raw, bool):
        what = "true or false"
    elif isinstance(raw, int | float):
        what = "a number"
    else:
        what = type(raw).__name__
    return f"a workflow must be a mapping (name:, tasks:), got {what}"


def from_data(raw: Any, source: str = "<workflow>", text: bytes | None = None) -> Workflow:
    """Convert already-decoded data (e.g. a dict built in code) into a `Workflow`."""
    if not isinstance(raw, dict):
        raise SpecError(source, not_a_mapping(raw))
    try:
        decoded = _decode(raw, SourceLines(text) if text is not None else None)
        _check_data(decoded, source)
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


#: The integers the journal can hold (msgpack's 64 bits, signed or not).
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


_HUGE = "an integer outside 64 bits (-2**63 to 2**64-1), which the journal cannot keep"
_ENDLESS = "is no number a run can keep (it keeps its workflow as JSON: no inf, no nan)"


def data_problem(value: Any, level: int) -> str | None:
    """What keeps free-form data (a param, a task's `input` or `foreach`) out of a run,
    or None. `level` is how deep `value` sits in its file (the top mapping is 1).

    - Nested deeper than `MAX_DEPTH` levels: every later stage (conversion,
      templates, the journal's encoder) recurses.
    - An integer outside 64 bits: the journal's msgpack cannot hold it, so the run
      could not record the work it fingerprints.
    - Infinity or NaN: the run keeps its workflow as JSON, which has neither, so a
      resume would hand the tool null where the first session handed it `inf`.

    Walked a level at a time, without recursion: the depth is what is checked.
    """
    values = [value]
    while values:
        below: list[Any] = []
        for item in values:
            kind = item.__class__
            if kind is str or item is None:  # most of it: tested first
                continue
            if kind is int:
                if not INT_MIN <= item <= INT_MAX:
                    return _HUGE
            elif kind is float:
                if not math.isfinite(item):
                    return f"{item} {_ENDLESS}"
            elif isinstance(item, dict | list):
                if level > MAX_DEPTH:
                    return f"nested deeper than {MAX_DEPTH} levels"
                below.extend(item.values() if isinstance(item, dict) else item)
        values = below
        level += 1
    return None


def _check_data(decoded: Decoded, source: str) -> None:
    """Refuse free-form data (`params`, task `input` and `foreach`) a run cannot keep
    (`data_problem`), naming the first field that holds it.

    Only those fields hold data of any shape: every other field has a type, which a
    deeper value would already have failed. Checked in one walk over all of them
    (a walk per field cost more than the check); the field is looked for only when
    there is a problem.
    """
    workflow = decoded.workflow
    if workflow is None:
        return
    params = list(workflow.params.values())
    inputs = [value for t in workflow.tasks for value in (t.input, t.foreach)]
    # As items of one list, each value sits a level deeper than the list.
    if data_problem(params, 2) is None and data_problem(inputs, 3) is None:
        return
    lines = decoded.lines
    for name, value in workflow.params.items():
        problem = data_problem(value, 3)
        if problem is not None:
            line = lines.line(["params", name]) if lines is not None else None
            where = (f"line {line}: " if line else "") + f"field 'params.{name}': "
            raise SpecError(source, where + problem)
    for position, task in enumerate(workflow.tasks):
        for field, value in (("input", task.input), ("foreach", task.foreach)):
            problem = data_problem(value, 4)
            if problem is not None:
                line = lines.task(position, field) if lines is not None else None
                where = (f"line {line}: " if line else "") + f"task '{task.id}': field '{field}': "
                raise SpecError(source, where + problem)


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


_PATH_PART = r"\.([A-Za-z_][\w-]*)|\[(\d+)\]|\[\.\.\.\]"  # compiled on first use


def _error_parts(message: str) -> tuple[str, list[str | int], bool]:
    """msgspec's "Expected `int` - at `$.tasks[1].retries`" as (what, path parts, missing?)."""
    what, _, where = message.partition(" - at `")
    parts: list[str | int] = []
    for key, index in re.findall(_PATH_PART, where.rstrip("`").removeprefix("$")):
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
