"""`yaml_subset`: yaml_rs answers only where PyYAML's strict loader would answer the same.

The property that matters is one-sided: whenever `yaml_subset.decode` returns data,
`formats.decode_yaml_strictly` returns equal data (same types, same key order, `-0.0`
and NaN included). A document it is unsure about costs only speed. The documents are
drawn from the parts of YAML where YAML 1.1 and 1.2 parsers are known to differ.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durable import formats, yaml_subset
from durable.errors import SpecError

UNSURE = yaml_subset.UNSURE


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0, nor True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, dict):
        return (
            list(map(type, a)) == list(map(type, b))
            and list(a) == list(b)
            and all(same(a[key], b[key]) for key in a)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def agrees(text: str | bytes) -> bool:
    """Whether the fast path answered (True) or left it to PyYAML (False); a
    disagreement fails the test, naming both readings."""
    data = text.encode() if isinstance(text, str) else text
    fast = yaml_subset.decode(data)
    if fast is UNSURE:
        return False
    try:
        strict = formats.decode_yaml_strictly(data, "f.yaml")
    except SpecError as exc:
        pytest.fail(f"yaml_rs read {data!r} as {fast!r}; PyYAML refuses it: {exc}")
    assert same(fast, strict), f"{data!r}: yaml_rs {fast!r}, PyYAML {strict!r}"
    return True


# -- what takes the fast path, and what must not ---------------------------------------

FAST = [
    "name: w\ntasks:\n  - id: a\n    tool: echo\n    input: {n: 1, x: -2.5, y: 0.25}\n",
    "a: [1, +2, -0, 0, 10.5, 123456789012345678]\n",
    "a: 1.0.3\nb: 10.0.0.1\nc: 10s\nd: 3fa85f64\ne: ./path\nf: http://localhost:8080/x\n",
    "a: true\nb: False\nc: NULL\nd: ~\ne:\n",
    "a: run on the server, or no\n",
    "a: |\n  line\n   indented\n\n  last\nb: >-\n  folded\n  text\n",
    "a: \"esc \\\" \\\\ \\n \\t \\u00e9 \\x41 \\/\"\nb: 'it''s'\n",
    "---\na: 1\n",
    "# comment\n---\na: 1\n",
    "a: café ☕\n",
    "1: one\n1.5: x\n",
    'a: {"b": 1, "c":2}\n',
    "",
    "# only a comment\n",
    "- a\n- b: c\n  d: [e, {f: g}]\n",
]


@pytest.mark.parametrize("text", FAST)
def test_common_yaml_takes_the_fast_path(text: str) -> None:
    assert agrees(text)


UNSURE_TEXTS = [
    "a: yes\n",
    "a: Off\n",
    "on: 1\n",
    "a: '=' \n",
    "a: =\n",
    "a: 010\n",
    "a: 0o17\n",
    "a: 0x1F\n",
    "a: 0b11\n",
    "a: 1e3\n",
    "a: 1.5e3\n",
    "a: 1_000\n",
    "a: _1\n",
    "a: .5\n",
    "a: +.5\n",
    "a: 5.\n",
    "a: .inf\n",
    "a: .NaN\n",
    "a: 12:30\n",
    "a: 2001-12-14\n",
    "a: 1234567890123456789\n",
    "a: ._\n",
    "a: &x 1\nb: *x\n",
    "a: !!str 1\n",
    "<<: {a: 1}\n",
    "? a\n: b\n",
    "true: 1\n",
    "null: 1\n",
    "~: 1\n",
    ": 1\n",
    "[a]: 1\n",
    "{a: 1}: 2\n",
    "a: {b:}\n",
    "a: 1\n---\nb: 2\n",
    "a: 1\n...\n",
    "%YAML 1.1\n---\na: 1\n",
    "a:\tb\n",
    "a: b\r\n",
    "a: \x07\n",
    "a: x\u0085y\n",
    "a: x\u2028y\n",
    "a: \ufeffx\n",
    "a: >\n  no final line break",
    "a: b\nb: c\na: d\n",  # yaml_rs refuses the duplicate; PyYAML words the error
    "a:\n" + "".join("  " * depth + f"k{depth}:\n" for depth in range(1, 60)),
    "- - - - - - - - - x\n",
    "a: [" * 300 + "]" * 300 + "\n",
]


@pytest.mark.parametrize("text", UNSURE_TEXTS)
def test_what_parsers_read_differently_is_left_to_pyyaml(text: str) -> None:
    assert not agrees(text)


def test_without_yaml_rs_everything_is_left_to_pyyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "yaml_rs", None)  # `import yaml_rs` raises ImportError
    assert yaml_subset.decode(b"a: 1\n") is UNSURE
    assert formats.decode_yaml(b"a: 1\n", "f.yaml") == {"a": 1}


def test_a_large_generated_workflow_takes_the_fast_path() -> None:
    lines = ["name: big", "tasks:"]
    for i in range(2000):
        lines += [f"- id: t{i}", "  tool: echo", f"  input: {{n: {i}, ref: '${{t{i}.output}}'}}"]
        if i:
            lines.append(f"  dependencies: [t{i - 1}]")
    assert agrees("\n".join(lines) + "\n")


# -- generated documents ----------------------------------------------------------------

# Scalars from where YAML 1.1 and 1.2 part ways, and ordinary ones.
# fmt: off
SCALARS = [
    "0", "1", "-1", "+1", "-0", "007", "0o7", "0x1f", "0X1F", "0b1", "0B1", "1_0", "_1",
    "1.5", "-1.5", "+1.5", "0.5", ".5", "-.5", "5.", "1e3", "1E3", "1.5e3", "1.5e+3", "1e+3",
    ".inf", "-.Inf", ".NAN", ".nAn", "1:30", "1:30.5", "12:30:00", "2001-12-14",
    "2001-12-14T21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5", "1.0.3", "10s", "3fa8",
    "yes", "No", "ON", "off", "y", "n", "true", "False", "NULL", "null", "~", "=", "<<",
    "a", "run on", "x: y", "x #y", "x#y", "-", "--", "---", "...", "?", "a?b", "%d",
    "./p", ".", "..", "._", "__", "12345678901234567890", "-123456789012345678",
    "'q'", '"q"', "'it''s'", '"a\\"b"', '"\\x41"', '"\\/"', '"\\N\\_\\L\\P"', '"\\e"',
    "''", '""', "café", "a\u00a0b", "&a x", "*a", "!x y", "!!str 1",
]
# fmt: on
KEYS = ["a", "b", "k", "on", "yes", "true", "null", "~", "1", "1.5", "010", "'q'", '"x"', ""]


@st.composite
def documents(draw: st.DrawFn) -> str:
    """A small YAML document: block and flow collections, multi-line scalars, comments."""

    def node(depth: int, indent: int) -> str:
        kind = draw(st.sampled_from(["scalar", "scalar", "flow", "map", "seq", "block", "multi"]))
        if depth > 3 or kind == "scalar":
            return " " + draw(st.sampled_from(SCALARS))
        if kind == "flow":
            items = draw(st.lists(st.sampled_from(SCALARS), max_size=3))
            if draw(st.booleans()):
                pairs = [f"{draw(st.sampled_from(KEYS))}: {item}" for item in items]
                return " {" + draw(st.sampled_from([", ", ",", " ,"])).join(pairs) + "}"
            return " [" + ", ".join(items) + "]"
        if kind == "block":
            style = draw(st.sampled_from(["|", ">", "|-", ">+", "|2"]))
            lines = draw(st.lists(st.sampled_from(["x", " y", "", "z z", "1e3"]), max_size=3))
            pad = " " * (indent + 2)
            return f" {style}\n" + "".join(f"{pad}{line}\n" for line in lines).rstrip("\n")
        if kind == "multi":
            first, second = draw(st.sampled_from(SCALARS)), draw(st.sampled_from(SCALARS))
            return f" {first}\n{' ' * (indent + 2)}{second}"
        pad = " " * (indent + 2)
        entries = []
        for _ in range(draw(st.integers(1, 3))):
            child = node(depth + 1, indent + 2)
            if kind == "map":
                entries.append(f"{pad}{draw(st.sampled_from(KEYS))}:{child}")
            else:
                entries.append(f"{pad}-{child}")
        comment = draw(st.sampled_from(["", " # c"]))
        return comment + "\n" + "\n".join(entries)

    top = []
    for _ in range(draw(st.integers(1, 4))):
        top.append(f"{draw(st.sampled_from(KEYS))}:{node(0, 0)}")
    prefix = draw(st.sampled_from(["", "---\n", "# c\n", "a: 1\n---\n"]))
    suffix = draw(st.sampled_from(["\n", "\n", "", "\n...\n", "\n# end\n"]))
    return prefix + "\n".join(top) + suffix


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_generated_documents_are_read_alike_or_left_to_pyyaml(text: str) -> None:
    agrees(text)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**18), 10**18))
def test_numbers_read_alike(number: float, integer: int) -> None:
    agrees(f"f: {number!r}\ng: {number:.17g}\ni: {integer}\n")


# Ordinary scalars, and the structure around them: what takes the fast path.
PLAIN = [
    "0", "1", "-2", "+3", "1.5", "-0.25", "a", "b c", "x-y", "t1", "${t1.output}", "'q'",
    "'it''s'", '"d q"', '"e\\"s\\\\c"', '"\\x41\\u00e9"', "true", "false", "null", "~", "",
    "café", "a:b", "a#b", "http://h:80/p", "1.0.3", "10s", "--x", "x y  ", "'multi\n  line'",
    '"multi\n  line"', '"cont\\\n  inued"', "plain\n  continued",
]  # fmt: skip
PLAIN_KEYS = ["a", "b", "id", "k k", "'q'", '"d"', "1", "x-y", "t_1"]


def plain_document(rng: Any) -> str:
    """Block and flow collections at varied indentation, block scalars, comments."""

    def scalar(flow: bool) -> str:
        value = rng.choice(PLAIN)
        if flow and ("\n" in value or "#" in value or value.startswith("-")):
            return "'z'"
        return value

    def node(depth: int, indent: int, flow: bool = False) -> str:
        kinds = ["scalar"] * 3 + ["flow_map", "flow_seq"] + ([] if flow else ["map", "seq", "text"])
        kind = rng.choice(kinds) if depth < 4 else "scalar"
        pad = " " * (indent + 2)
        if kind == "scalar":
            return scalar(flow) if flow else " " + scalar(flow)
        if kind in ("flow_map", "flow_seq"):
            items = [node(depth + 1, indent, True) for _ in range(rng.randint(0, 3))]
            if kind == "flow_map":
                items = [f"{rng.choice(PLAIN_KEYS)}: {item}" for item in items]
            sep = rng.choice([", ", ",", ",\n" + pad])
            opened, closed = ("{", "}") if kind == "flow_map" else ("[", "]")
            text = opened + rng.choice(["", " "]) + sep.join(items) + rng.choice(["", ","]) + closed
            return text if flow else " " + text
        if kind == "text":
            lines = [
                rng.choice(["x", " y", "", "z  z", "1e3", "# not a comment"]) for _ in range(3)
            ]
            body = "\n".join(pad + line if line else "" for line in ["first", *lines])
            return f" {rng.choice(['|', '>', '|-', '>-', '|+', '>+'])}\n{body}"
        step = rng.choice([1, 2, 2, 4])
        pad = " " * (indent + step)
        entries = []
        for _ in range(rng.randint(1, 3)):
            child = node(depth + 1, indent + step)
            head = f"{rng.choice(PLAIN_KEYS)}:" if kind == "map" else "-"
            entries.append(pad + head + child)
        return rng.choice(["", " # c"]) + "\n" + rng.choice(["\n", "\n\n", "\n# c\n"]).join(entries)

    keys = rng.sample(["a", "b", "c", "d"], rng.randint(1, 4))
    body = "\n".join(f"{key}:{node(0, 0)}" for key in keys)
    return rng.choice(["", "---\n", "# c\n"]) + body + rng.choice(["\n", "\n\n", "\n# end\n"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_plain_documents_are_read_alike_or_left_to_pyyaml(rng: Any) -> None:
    agrees(plain_document(rng))


def test_most_plain_documents_take_the_fast_path() -> None:
    """The generator above is worth its name: the fast path answers for many of them."""
    import random

    rng = random.Random(0)
    answered = sum(agrees(plain_document(rng)) for _ in range(300))
    assert answered >= 60, answered
