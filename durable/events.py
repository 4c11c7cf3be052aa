"""The journal's vocabulary: one tagged union of event Structs.

An event is a fact that happened to a run, with the time it happened. Nothing else
in durable records state: the state of a run is the fold of its events
(`state.py`). In the journal an event is a row: the common columns (`run_id`,
`task_id`, `attempt`, `kind`, `at`) plus `data`, the msgpack of the fields that
only its kind has (`FIELDS`), or NULL when it has none.

One row holds two events: `task_ran` (`RAN`) is an attempt's `task_started` and
its `task_succeeded` when both were committed in the same transaction, as a fast
tool's are (`EventQueue.append_succeeded`). Its `at` is the start's; its `data`
the msgpack array `[fingerprint, the success's at, output]`. Read back, it is the
two events again (`from_ran_row`): nothing above the journal tells the two forms
apart. A commit then inserts one row an attempt instead of two: 10-20 % more tasks
a second on every shape of `durable bench`, 2-3 points of it from checkpoints, which
come every so many rows (`bench/README.md`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgspec


class _Event(msgspec.Struct, frozen=True, tag_field="kind", kw_only=True, gc=False):
    """Events are never part of a reference cycle, so the cyclic GC need not track
    them (`gc=False`): replaying a million of them then costs no GC passes."""

    at: float


class RunStarted(_Event, tag="run_started"):
    """A run's first session starts. `source`: the workflow file it was read from
    (None for one built in code), which `resume --reload` reads again."""

    source: str | None = None


class RunResumed(_Event, tag="run_resumed"):
    pass


class RunAmended(_Event, tag="run_amended"):
    """The run goes on with an edited workflow (`durable resume --reload`, `amend.py`).

    `spec` is the new workflow's snapshot (JSON, as `runs.spec`), `tasks` its task ids
    in file order, `reset` the tasks that had finished but must run again, `source`
    the file it was read from. History is never rewritten: this event is the edit.
    """

    spec: bytes
    tasks: list[str]
    reset: list[str]
    source: str | None = None


class RunFinished(_Event, tag="run_finished"):
    status: str


class RunInterrupted(_Event, tag="run_interrupted"):
    pass


class _TaskEvent(_Event, frozen=True, kw_only=True):
    task_id: str
    attempt: int = 0


class TaskStarted(_TaskEvent, tag="task_started"):
    """An attempt starts. `fingerprint` (`fingerprint.py`) names the work it does:
    None when its input could not be rendered, and in journals written before it."""

    fingerprint: str | None = None


class TaskSucceeded(_TaskEvent, tag="task_succeeded"):
    output: Any = None


class TaskRetrying(_TaskEvent, tag="task_retrying"):
    error: str
    delay: float


class TaskFailed(_TaskEvent, tag="task_failed"):
    error: str


class TaskSkipped(_TaskEvent, tag="task_skipped"):
    reason: str


class TaskUpstreamFailed(_TaskEvent, tag="task_upstream_failed"):
    pass


class TaskCancelled(_TaskEvent, tag="task_cancelled"):
    pass


class TaskReused(_TaskEvent, tag="task_reused", kw_only=True):
    """The task succeeded without running: the cache held a committed success of
    the same work (`fingerprint`), in run `from_run`, task `from_task`, attempt
    `from_attempt` (`journal/cache.py`)."""

    output: Any = None
    fingerprint: str
    from_run: str
    from_task: str
    from_attempt: int


class TaskExpanded(_TaskEvent, tag="task_expanded"):
    """A `foreach` task's list was rendered: it has `count` instances (`fanout.py`),
    `digest` fingerprints their items. Committed before any instance starts."""

    count: int
    digest: str


class TaskProgress(_TaskEvent, tag="task_progress"):
    """A running attempt's own word on how far it is (`ctx.progress`): not a transition.

    `fraction` is None or in [0, 1]. The engine journals at most one every
    `context.PROGRESS_EVERY` seconds per task, and drops the latest one unsent when
    the attempt ends (its outcome says more), so a tool may call it in a tight loop.
    """

    fraction: float | None = None
    message: str = ""


class TaskLog(_TaskEvent, tag="task_log"):
    """A line a running attempt logged through `ctx.log`: not a transition.

    `level` is the `logging` level name (INFO, WARNING...). Kept per attempt within
    the limits of `context.LOG_LINES` and `context.LOG_CHARS`.
    """

    level: str
    message: str


Event = (
    RunStarted
    | RunResumed
    | RunFinished
    | RunInterrupted
    | RunAmended
    | TaskStarted
    | TaskSucceeded
    | TaskRetrying
    | TaskFailed
    | TaskSkipped
    | TaskUpstreamFailed
    | TaskCancelled
    | TaskReused
    | TaskExpanded
    | TaskProgress
    | TaskLog
)

#: Kinds that are not transitions: what a running attempt says about itself. The
#: fold accepts them in any state and changes no state for them.
NOTES = (TaskProgress, TaskLog)

KINDS: dict[str, type[_Event]] = {cls.__struct_config__.tag: cls for cls in Event.__args__}  # type: ignore[attr-defined]

_COMMON = {"at", "task_id", "attempt"}
FIELDS: dict[str, tuple[str, ...]] = {
    kind: tuple(f for f in cls.__struct_fields__ if f not in _COMMON) for kind, cls in KINDS.items()
}

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


#: Each event class's kind, as the journal's `kind` column names it.
_KIND_OF: dict[type[_Event], str] = {cls: kind for kind, cls in KINDS.items()}


def kind_of(event: Event) -> str:
    return _KIND_OF[type(event)]


def encode_data(event: Event) -> bytes | None:
    """The `data` column: msgpack of the kind's own fields, or None when it has none.

    Raises `msgspec.EncodeError`/`TypeError` for an output msgspec cannot encode;
    the engine turns that into a task failure that names the type.
    """
    return _ENCODE_DATA[type(event)](event)


def _fields_encoder(names: tuple[str, ...]) -> Callable[[Any], bytes | None]:
    """How one kind's `data` is encoded: chosen once per kind, not per event (two a task)."""
    if not names:
        return lambda event: None
    if names == ("output",):
        return lambda event: encode_output(event.output)
    if names == ("fingerprint",):
        return lambda event: encode_fingerprint(event.fingerprint)
    return lambda event: _encoder.encode({name: getattr(event, name) for name in names})


_ENCODE_DATA = {cls: _fields_encoder(FIELDS[kind]) for kind, cls in KINDS.items()}


def encode_output(output: Any) -> bytes:
    """The `data` of a `task_succeeded` event: the output itself, as msgpack."""
    return _encoder.encode(output)


def encode_fingerprint(fingerprint: str | None) -> bytes | None:
    """The `data` of a `task_started` event: its fingerprint as a bare msgpack string
    (34 bytes a task, not a map of 47), or None."""
    return None if fingerprint is None else _encoder.encode(fingerprint)


def decode_output(data: bytes) -> Any:
    return _decoder.decode(data)


#: The kinds of the two events every attempt that succeeds journals (by their rows:
#: `EventQueue.append_started`, `append_succeeded`), and of the row that holds both.
STARTED: str = TaskStarted.__struct_config__.tag  # type: ignore[assignment]
SUCCEEDED: str = TaskSucceeded.__struct_config__.tag  # type: ignore[assignment]
RAN = "task_ran"

_RAN_HEADER = b"\x93"  # a msgpack array of three
_NIL = b"\xc0"
_pack_float = struct.Struct(">Bd").pack  # a msgpack float 64: 0xcb and 8 bytes


def encode_ran(started: bytes | None, at: float, output: bytes) -> bytes:
    """A `task_ran` row's `data` from the two rows' own (`encode_fingerprint`'s and
    `encode_output`'s) and the success's time, without decoding either: a msgpack
    array is its header followed by its items' encodings."""
    return b"".join((_RAN_HEADER, started or _NIL, _pack_float(0xCB, at), output))


def from_ran_row(
    task_id: str, attempt: int, at: float, data: bytes
) -> tuple[TaskStarted, TaskSucceeded]:
    """The two events a `task_ran` row holds (`encode_ran`)."""
    fingerprint, succeeded_at, output = _decoder.decode(data)
    if (
        task_id is None
        or not isinstance(succeeded_at, float)
        or not isinstance(fingerprint, str | None)
    ):
        raise ValueError("not a task_started and its task_succeeded")
    return (
        TaskStarted(task_id=task_id, attempt=attempt, at=at, fingerprint=fingerprint),
        TaskSucceeded(task_id=task_id, attempt=attempt, at=succeeded_at, output=output),
    )


def from_row(
    kind: str, task_id: str | None, attempt: int | None, at: float, data: bytes | None
) -> Event:
    """Rebuild an event from a journal row. The two kinds that make up most of a
    journal are built directly; replaying a large run is mostly this function."""
    if kind == "task_succeeded":
        return TaskSucceeded(
            task_id=task_id,
            attempt=attempt or 0,
            at=at,  # type: ignore[arg-type]
            output=None if data is None else _decoder.decode(data),
        )
    if kind == "task_started":
        return TaskStarted(
            task_id=task_id,  # type: ignore[arg-type]
            attempt=attempt or 0,
            at=at,
            fingerprint=None if data is None else _decoder.decode(data),
        )
    cls = KINDS[kind]
    fields: dict[str, Any] = {"at": at}
    if task_id is not None:
        fields["task_id"] = task_id
        fields["attempt"] = attempt or 0
    if data is not None:
        fields.update(_decoder.decode(data))
    return cls(**fields)


def to_dict(event: Event, run_id: str, seq: int | None = None) -> dict[str, Any]:
    """The JSON-lines form of an event (`durable run --json`, `durable log --json`)."""
    record: dict[str, Any] = {"seq": seq} if seq is not None else {}
    record.update(run_id=run_id, kind=kind_of(event))
    record.update(msgspec.structs.asdict(event))
    if isinstance(event, RunAmended):  # the workflow itself, not its bytes in base64
        record["spec"] = msgspec.json.decode(event.spec)
    return record
