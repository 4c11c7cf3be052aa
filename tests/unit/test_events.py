"""events.py: every kind survives the journal row form, and the JSON-lines form has one shape."""

from __future__ import annotations

import datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durable.events import (
    FIELDS,
    KINDS,
    RAN,
    RunAmended,
    RunFinished,
    RunInterrupted,
    RunResumed,
    RunStarted,
    TaskCancelled,
    TaskExpanded,
    TaskFailed,
    TaskLog,
    TaskProgress,
    TaskRetrying,
    TaskReused,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    TaskUpstreamFailed,
    encode_data,
    encode_fingerprint,
    encode_output,
    encode_ran,
    from_ran_row,
    from_row,
    kind_of,
    to_dict,
)
from durable.journal.common import checked_row

#: One event of every kind, with non-default values in every field.
SAMPLES = [
    RunStarted(at=1.25),
    RunResumed(at=2.5),
    RunFinished(at=3.0, status="failed"),
    RunInterrupted(at=4.0),
    TaskStarted(task_id="fetch", attempt=1, at=5.0, fingerprint="9f" * 16),
    TaskSucceeded(task_id="fetch", attempt=2, at=6.0, output={"items": [1, 2], "n": None}),
    TaskRetrying(task_id="fetch", attempt=1, at=7.0, error="ValueError: boom", delay=0.5),
    TaskFailed(task_id="fetch", attempt=3, at=8.0, error="timed out after 1s"),
    TaskSkipped(task_id="fetch", attempt=0, at=9.0, reason="condition false: ${params.x}"),
    TaskUpstreamFailed(task_id="fetch", at=10.0),
    TaskCancelled(task_id="fetch", attempt=4, at=11.0),
    TaskProgress(task_id="fetch", attempt=1, at=12.0, fraction=0.5, message="half way"),
    TaskLog(task_id="fetch", attempt=1, at=13.0, level="WARNING", message="rate limited"),
    TaskExpanded(task_id="fetch", at=14.0, count=3, digest="0badc0de"),
    TaskReused(
        task_id="fetch",
        at=16.0,
        output={"x": 1},
        fingerprint="ab" * 16,
        from_run="r0",
        from_task="fetch",
        from_attempt=2,
    ),
    RunAmended(at=15.0, spec=b'{"name":"w"}', tasks=["a", "b"], reset=["b"], source="/w.yaml"),
]

# The journal's `kind` column and `durable log --json`'s "kind": changing this set
# changes the journal format, which old journals and readers depend on.
KNOWN_KINDS = {
    "run_started",
    "run_resumed",
    "run_finished",
    "run_interrupted",
    "task_started",
    "task_succeeded",
    "task_retrying",
    "task_failed",
    "task_skipped",
    "task_upstream_failed",
    "task_cancelled",
    "task_progress",
    "task_log",
    "task_expanded",
    "run_amended",
    "task_reused",
}


def row_of(event):
    """The journal row of an event, as `Journal.append` builds it."""
    return (
        kind_of(event),
        getattr(event, "task_id", None),
        getattr(event, "attempt", None),
        event.at,
        encode_data(event),
    )


def test_kinds_are_exactly_the_known_ones():
    assert set(KINDS) == KNOWN_KINDS
    assert {kind_of(event) for event in SAMPLES} == KNOWN_KINDS


@pytest.mark.parametrize("event", SAMPLES, ids=kind_of)
def test_every_kind_round_trips_through_a_row(event):
    kind, task_id, attempt, at, data = row_of(event)
    back = from_row(kind, task_id, attempt, at, data)
    assert back == event
    assert type(back) is type(event)


@pytest.mark.parametrize("event", SAMPLES, ids=kind_of)
def test_data_is_null_exactly_for_kinds_without_fields(event):
    data = encode_data(event)
    if FIELDS[kind_of(event)]:
        assert isinstance(data, bytes)
    else:
        assert data is None


def test_a_start_without_a_fingerprint_stores_no_data():
    """As journals written before fingerprints have it, and read back the same."""
    event = TaskStarted(task_id="t", attempt=2, at=1.0)
    assert encode_data(event) is None
    assert from_row("task_started", "t", 2, 1.0, None) == event


def test_fields_exclude_the_common_columns():
    assert FIELDS["task_started"] == ("fingerprint",)
    assert FIELDS["run_finished"] == ("status",)
    assert FIELDS["task_succeeded"] == ("output",)
    assert set(FIELDS["task_retrying"]) == {"error", "delay"}
    for names in FIELDS.values():
        assert not {"at", "task_id", "attempt"} & set(names)


def test_a_null_output_is_still_data():
    """`None` as an output is encoded (msgpack nil), not confused with 'no data'."""
    event = TaskSucceeded(task_id="t", attempt=1, at=1.0, output=None)
    data = encode_data(event)
    assert data == msgspec.msgpack.encode(None)
    assert from_row(*row_of(event)) == event


def test_run_events_have_no_task_columns():
    kind, task_id, attempt, _, _ = row_of(RunFinished(at=1.0, status="succeeded"))
    assert (kind, task_id, attempt) == ("run_finished", None, None)


def test_a_null_attempt_column_reads_as_zero():
    assert from_row("task_upstream_failed", "t", None, 1.0, None) == TaskUpstreamFailed(
        task_id="t", at=1.0
    )


def test_unknown_kind_is_refused():
    with pytest.raises(KeyError):
        from_row("task_exploded", "t", 1, 1.0, None)


def test_events_are_immutable():
    event = TaskStarted(task_id="t", attempt=1, at=1.0)
    with pytest.raises(AttributeError):
        event.attempt = 2  # type: ignore[misc]


OUTPUTS = [
    None,
    True,
    False,
    0,
    -7,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    -0.0,
    float("inf"),
    "",
    "unicode ☃ \x00 text",
    b"\x00\xffbytes",
    [],
    {},
    [1, "a", None, [2.5, {"k": [True]}]],
    {"nested": {"deep": {"list": [1, 2, 3]}}, "empty": {}, "n": None},
    "x" * 100_000,
]


@pytest.mark.parametrize("output", OUTPUTS, ids=lambda o: type(o).__name__)
def test_outputs_of_many_types_round_trip(output):
    event = TaskSucceeded(task_id="t", attempt=1, at=1.0, output=output)
    back = from_row(*row_of(event))
    assert back.output == output
    assert type(back.output) is type(output)


def test_datetime_output_round_trips():
    now = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    event = TaskSucceeded(task_id="t", attempt=1, at=1.0, output={"when": now})
    assert from_row(*row_of(event)).output == {"when": now}


@pytest.mark.parametrize("output", [object(), 2**64, -(2**63) - 1, {"nested": [object()]}])
def test_unencodable_outputs_raise(output):
    with pytest.raises((TypeError, OverflowError, msgspec.EncodeError)):
        encode_data(TaskSucceeded(task_id="t", attempt=1, at=1.0, output=output))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=60)
@given(json_values)
def test_any_plain_output_round_trips(output):
    event = TaskSucceeded(task_id="t", attempt=1, at=1.0, output=output)
    assert from_row(*row_of(event)) == event


@settings(max_examples=30)
@given(
    st.text(), st.floats(min_value=0, allow_nan=False, allow_infinity=False), st.integers(0, 10**6)
)
def test_retrying_round_trips(error, delay, attempt):
    event = TaskRetrying(task_id="t", attempt=attempt, at=2.0, error=error, delay=delay)
    assert from_row(*row_of(event)) == event


class TestToDict:
    def test_task_event_with_seq(self):
        event = TaskRetrying(task_id="fetch", attempt=2, at=7.5, error="boom", delay=0.5)
        record = to_dict(event, "run-1", seq=12)
        assert record == {
            "seq": 12,
            "run_id": "run-1",
            "kind": "task_retrying",
            "at": 7.5,
            "task_id": "fetch",
            "attempt": 2,
            "error": "boom",
            "delay": 0.5,
        }
        assert list(record)[:3] == ["seq", "run_id", "kind"]

    def test_run_event_without_seq(self):
        record = to_dict(RunFinished(at=3.0, status="succeeded"), "run-1")
        assert record == {
            "run_id": "run-1",
            "kind": "run_finished",
            "at": 3.0,
            "status": "succeeded",
        }
        assert "seq" not in record

    def test_seq_zero_is_kept(self):
        assert to_dict(RunStarted(at=1.0), "r", seq=0)["seq"] == 0

    @pytest.mark.parametrize("event", SAMPLES, ids=kind_of)
    def test_every_kind_is_json_and_carries_its_fields(self, event):
        record = to_dict(event, "r", seq=1)
        assert record["kind"] == kind_of(event)
        assert set(FIELDS[kind_of(event)]) <= set(record)
        if kind_of(event).startswith("task_"):
            assert record["task_id"] == "fetch"
            assert "attempt" in record
        else:
            assert "task_id" not in record
        decoded = msgspec.json.decode(msgspec.json.encode(record))
        assert decoded == record

    def test_an_amendment_carries_its_workflow_as_json(self):
        event = RunAmended(at=1.0, spec=b'{"name":"w","tasks":[]}', tasks=[], reset=[])
        assert to_dict(event, "r")["spec"] == {"name": "w", "tasks": []}

    def test_output_is_carried_as_is(self):
        event = TaskSucceeded(task_id="t", attempt=1, at=1.0, output=[1, {"a": None}])
        assert to_dict(event, "r")["output"] == [1, {"a": None}]


# -- task_ran: a start and its success in one row ------------------------------------------

#: Outputs as tools give them back (JSON-like data, every msgpack type a journal holds).
_OUTPUTS = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    output=_OUTPUTS,
    fingerprint=st.none() | st.text(min_size=1, max_size=40),
    started=st.floats(0, 2e9),
    succeeded=st.floats(0, 2e9),
)
def test_a_task_ran_row_is_the_start_and_the_success_it_was_made_of(
    output, fingerprint, started, succeeded
):
    """`encode_ran` joins the two rows' own `data` without decoding them; read back,
    the row is the two events, field for field (NaN compared by its encoding)."""
    data = encode_ran(encode_fingerprint(fingerprint), succeeded, encode_output(output))
    start, success = from_ran_row("t", 3, started, data)
    assert start == TaskStarted(task_id="t", attempt=3, at=started, fingerprint=fingerprint)
    assert (success.task_id, success.attempt, success.at) == ("t", 3, succeeded)
    assert encode_output(success.output) == encode_output(output)


@pytest.mark.parametrize(
    "data",
    [
        encode_output([None, 1.0]),  # two items, not three
        encode_output([None, "3.0", 1]),  # the success's time is not a float
        encode_output([7, 3.0, 1]),  # the fingerprint is not text
        b"\x93\xc0",  # cut short
        None,
    ],
    ids=["two-items", "text-time", "number-fingerprint", "truncated", "null"],
)
def test_a_task_ran_row_that_is_not_two_events_is_named_damage(data):
    """Read through the journal's row check (its checksum passing), a malformed
    `task_ran` row is an event that cannot be read, never a half-made event."""
    (checked,) = checked_row(lambda *row: None, 7, "r1", RAN, "t", 1, 2.0, data, 0)
    seq, event, problem = checked
    assert (seq, event) == (7, None)
    assert problem is not None and problem.startswith("event 7 (task_ran) cannot be read")
