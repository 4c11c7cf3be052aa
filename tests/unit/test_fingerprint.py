"""Fingerprints (`durable/fingerprint.py`): equal work, equal fingerprint, in any
process and whatever the order of a dict's keys; any change to the tool or to the
rendered input, another fingerprint."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from durable import spec
from durable.events import TaskStarted
from durable.fingerprint import BUILTINS_VERSION, RECIPE, fingerprint, tool_identity
from durable.journal import Journal
from durable.runner import arun
from durable.tools import REGISTRY, ToolDef, import_modules

# JSON-like values, as inputs are: what workflow files, params and outputs hold.
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


def _reordered(value: Any, data: st.DataObject) -> Any:
    """The same value with every dict's keys in another order."""
    if isinstance(value, dict):
        keys = data.draw(st.permutations(list(value)))
        return {key: _reordered(value[key], data) for key in keys}
    if isinstance(value, list):
        return [_reordered(item, data) for item in value]
    return value


@settings(max_examples=200, deadline=None)
@given(values, st.data())
def test_key_order_never_changes_a_fingerprint(value, data):
    assert fingerprint("t@1", value) == fingerprint("t@1", _reordered(value, data))


@settings(max_examples=200, deadline=None)
@given(values, values)
def test_different_inputs_have_different_fingerprints(one, other):
    same = msgspec.msgpack.encode(one, order="sorted") == msgspec.msgpack.encode(
        other, order="sorted"
    )
    assert (fingerprint("t@1", one) == fingerprint("t@1", other)) == same


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), values)
def test_a_fingerprint_is_the_documented_recipe(identity, value):
    """BLAKE2b-128 of the canonical msgpack of (RECIPE, identity, input), however
    `fingerprint` gets there (it hashes each tool's prefix once)."""
    data = msgspec.msgpack.Encoder(order="sorted").encode((RECIPE, identity, value))
    assert fingerprint(identity, value) == hashlib.blake2b(data, digest_size=16).hexdigest()


def test_fingerprints_recorded_by_earlier_versions_still_match():
    """Journals and caches keep fingerprints across upgrades: the recipe may change
    only with `RECIPE`. These were computed before the per-tool prefix existed."""
    assert RECIPE == 1
    assert (
        fingerprint("echo@builtin-1", {"n": 12, "b": [1.0, "x", None, True]})
        == "fdd423c4c7e3f4802ac56fbf55227f4b"
    )
    assert fingerprint("my_tool@2", None) == "f0145373f8704e4e26ebaac322cf6b81"


def test_numbers_are_their_exact_values_and_types():
    assert fingerprint("t", 0.1 + 0.2) != fingerprint("t", 0.3)
    assert fingerprint("t", 1) != fingerprint("t", 1.0)
    assert fingerprint("t", 0.0) != fingerprint("t", -0.0)
    assert fingerprint("t", {"a": 1.5}) == fingerprint("t", {"a": 3 / 2})
    assert fingerprint("t", 2**62) != fingerprint("t", 2**62 + 1)


def test_the_tool_is_part_of_the_work():
    assert fingerprint("a@1", {"x": 1}) != fingerprint("b@1", {"x": 1})
    assert fingerprint("a@1", {"x": 1}) != fingerprint("a@2", {"x": 1})


@settings(max_examples=30, deadline=None)
@given(st.lists(values, min_size=1, max_size=8))
def test_another_process_computes_the_same_fingerprints(batch):
    """A fresh interpreter (its own hash seed, its own dict orders) agrees."""
    script = textwrap.dedent(
        """
        import sys, msgspec
        from durable.fingerprint import fingerprint
        batch = msgspec.msgpack.decode(sys.stdin.buffer.read())
        print("\\n".join(fingerprint("t@1", value) for value in batch))
        """
    )
    here = [fingerprint("t@1", value) for value in batch]
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=msgspec.msgpack.encode(batch),
        capture_output=True,
        check=True,
        env={"PYTHONHASHSEED": "random", "PATH": ""},
    )
    assert done.stdout.decode().split() == here


# -- a tool's identity ----------------------------------------------------------------


def test_builtins_are_identified_by_durables_version_of_them():
    assert tool_identity(REGISTRY.resolve("echo")) == f"echo@builtin-{BUILTINS_VERSION}"
    assert tool_identity(REGISTRY.resolve("shell")) == f"shell@builtin-{BUILTINS_VERSION}"


def _module(folder: Path, name: str, body: str) -> ToolDef:
    (folder / f"{name}.py").write_text(
        "import durable\n\n" + textwrap.dedent(body), encoding="utf-8"
    )
    assert import_modules([name], folder) == []
    return REGISTRY.resolve(f"{name}:work")


def test_a_python_tool_is_identified_by_its_source_or_its_stated_version(tmp_path: Path):
    one = _module(tmp_path, "fp_one", "def work(x):\n    return x + 1\n")
    same = _module(tmp_path, "fp_same", "def work(x):\n    return x + 1\n")
    other = _module(tmp_path, "fp_other", "def work(x):\n    return x + 2\n")
    # the name is the registered one (`module:function` here), the rest its source
    assert tool_identity(one).split("@")[1] == tool_identity(same).split("@")[1]
    assert tool_identity(one).split("@")[1] != tool_identity(other).split("@")[1]
    versioned = _module(
        tmp_path,
        "fp_versioned",
        '@durable.tool(name="fp_versioned", version="2024-06")\ndef work(x):\n    return x\n',
    )
    assert tool_identity(versioned) == "fp_versioned@2024-06"


# -- recorded by the engine -------------------------------------------------------------


def _starts(db: Path, tasks: list[dict[str, Any]], **fields: Any) -> dict[str, list[str | None]]:
    workflow = spec.from_data({"name": "fp", "tasks": tasks, **fields})

    async def main() -> dict[str, list[str | None]]:
        result = await arun(workflow, db=db, durability="off")
        journal = await Journal.open(db, create=False)
        try:
            found: dict[str, list[str | None]] = {}
            for _, event in await journal.events(result.run_id):
                if isinstance(event, TaskStarted):
                    found.setdefault(event.task_id, []).append(event.fingerprint)
            return found
        finally:
            await journal.close()

    return asyncio.run(main())


def test_each_attempt_records_the_fingerprint_of_its_work(tmp_path: Path):
    tasks = [
        {"id": "a", "tool": "echo", "input": {"n": 1, "m": [1, 2]}},
        {"id": "b", "tool": "echo", "input": {"m": [1, 2], "n": 1}},  # a's input, reordered
        {"id": "c", "tool": "echo", "input": {"n": "${a.output.n}", "m": [1, 2]}},  # rendered: a's
        {"id": "d", "tool": "echo", "input": {"n": 2, "m": [1, 2]}},
        {
            "id": "flaky",
            "tool": "shell",
            "input": {"command": ["sh", "-c", "exit 3"]},
            "retries": 1,
            "retry_delay": 0,
        },
        {"id": "each", "tool": "echo", "foreach": [1, 1, 2], "input": "${item}"},
    ]
    first = _starts(tmp_path / "one.db", tasks)
    again = _starts(tmp_path / "two.db", tasks)
    assert first == again  # another run, the same work
    assert first["a"] == first["b"] == first["c"]
    assert first["a"] != first["d"]
    assert len(first["flaky"]) == 2 and first["flaky"][0] == first["flaky"][1] is not None
    assert first["each[0]"] == first["each[1]"] != first["each[2]"]
    assert all(len(mark or "") == 32 for marks in first.values() for mark in marks)


def test_an_input_that_cannot_be_rendered_starts_without_a_fingerprint(tmp_path: Path):
    starts = _starts(
        tmp_path / "j.db",
        [
            {"id": "a", "tool": "echo", "input": {"k": 1}},
            {"id": "b", "tool": "echo", "input": "${a.output.missing}"},
        ],
    )
    assert starts["b"] == [None]
