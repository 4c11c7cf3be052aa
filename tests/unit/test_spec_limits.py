"""spec.py: files that could hurt the process, not merely be wrong, are refused at load time.

Alias bombs, deep nesting, bytes that are not UTF-8, and decoder errors that leaked
library internals (`in "<byte string>"`, `(byte 12)`) or exceptions that were not
`DurableError`s. Each refusal is one line that names the file.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest

from durable import spec
from durable.errors import SpecError, ValidationError
from durable.loader import plan_file


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def refused(path: Path) -> str:
    """The one-line message of the `SpecError` that loading `path` raises."""
    with pytest.raises(SpecError) as info:
        spec.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert info.value.exit_code == 2
    return message.removeprefix(f"{path}: ")


def bomb(levels: int) -> str:
    """The "billion laughs": each level is nine aliases of the one before."""
    lines = [
        "name: bomb",
        "params:",
        '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    ]
    previous = "a"
    for name in "bcdefghijk"[: levels - 1]:
        lines.append(f"  {name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    lines.append(f'tasks: [{{id: t, tool: echo, input: "${{params.{previous}}}"}}]')
    return "\n".join(lines) + "\n"


class TestAliasBombs:
    def test_billion_laughs_is_refused_quickly(self, tmp_path: Path) -> None:
        path = write(tmp_path, "bomb.yaml", bomb(9))
        assert len(path.read_bytes()) < 450
        began = time.monotonic()
        message = refused(path)
        assert time.monotonic() - began < 2
        assert message.startswith("YAML aliases expand the file to about ")
        assert "over the limit of 1,000,000 (10 times the file's size, and at least 1,000,000)" in (
            message
        )

    def test_one_level_smaller_is_refused_too(self, tmp_path: Path) -> None:
        # 9**8 strings: the size that wrote a 606 MB journal.
        assert "YAML aliases expand" in refused(write(tmp_path, "bomb.yaml", bomb(8)))

    def test_validate_refuses_it_before_anything_runs(self, tmp_path: Path) -> None:
        with pytest.raises(SpecError, match="YAML aliases expand"):
            plan_file(write(tmp_path, "bomb.yaml", bomb(8)))

    def test_a_long_string_repeated_by_aliases_counts_as_long(self, tmp_path: Path) -> None:
        text = (
            "name: w\nparams:\n  s: &s "
            + "x" * 20_000
            + "\n  many: ["
            + ", ".join(["*s"] * 100)
            + "]\ntasks: []\n"
        )
        assert "YAML aliases expand" in refused(write(tmp_path, "long.yaml", text))

    def test_small_repetition_is_allowed(self, tmp_path: Path) -> None:
        workflow = spec.load(write(tmp_path, "ok.yaml", bomb(5)))  # 9**5 values, ~240k characters
        assert len(workflow.params["e"]) == 9

    def test_an_alias_that_contains_itself_is_refused(self, tmp_path: Path) -> None:
        message = refused(
            write(tmp_path, "loop.yaml", "name: w\nparams:\n  a: &a [1, *a]\ntasks: []\n")
        )
        assert message == "line 3, column 6: an alias refers to a value that contains it"

    def test_a_merge_loop_is_refused(self, tmp_path: Path) -> None:
        text = "name: w\nparams:\n  a: &a {<<: *a, x: 1}\ntasks: []\n"
        assert "an alias refers to a value that contains it" in refused(
            write(tmp_path, "m.yaml", text)
        )

    def test_many_tasks_sharing_merged_defaults_load(self, tmp_path: Path) -> None:
        """Merge keys repeat a little per task: far from the limit, however many tasks."""
        lines = ["name: big", "params: {shared: &shared [1, 2, 3]}", "tasks:"]
        lines.append("  - &base {id: t0, tool: echo, retries: 2, input: {items: *shared}}")
        lines += [f"  - {{<<: *base, id: t{i}}}" for i in range(1, 5000)]
        workflow = spec.load(write(tmp_path, "big.yaml", "\n".join(lines) + "\n"))
        assert len(workflow.tasks) == 5000
        assert workflow.tasks[-1].retries == 2
        assert workflow.tasks[-1].input == {"items": [1, 2, 3]}

    def test_text_that_merely_holds_a_star_loads(self, tmp_path: Path) -> None:
        text = (
            'name: w\ntasks:\n  - {id: a, tool: echo, input: {expression: "6 * 7", glob: "*.py"}}\n'
        )
        assert spec.load(write(tmp_path, "w.yaml", text)).tasks[0].input["glob"] == "*.py"


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


class TestDepth:
    """The top-level mapping is level 1, `tasks` 2, a task 3, its `input` 4."""

    @pytest.mark.parametrize("depth", [1_000, 100_000])
    def test_very_deep_json_is_refused(self, tmp_path: Path, depth: int) -> None:
        text = (
            '{"name": "w", "tasks": [{"id": "a", "tool": "echo", "input": ' + nested(depth) + "}]}"
        )
        # Where the decoder itself gives up first (Python 3.11 at 1,000 levels) the
        # error cannot know the task; where it does not, it names it too.
        assert refused(write(tmp_path, "deep.json", text)) in (
            "nested deeper than 100 levels",
            "task 'a': field 'input': nested deeper than 100 levels",
        )

    def test_deep_json_input_names_the_task_and_field(self, tmp_path: Path) -> None:
        text = '{"name": "w", "tasks": [{"id": "a", "tool": "echo", "input": ' + nested(500) + "}]}"
        assert refused(write(tmp_path, "deep.json", text)) == (
            "task 'a': field 'input': nested deeper than 100 levels"
        )

    def test_deep_yaml_input_names_the_line(self, tmp_path: Path) -> None:
        text = "name: w\ntasks:\n  - id: a\n    tool: echo\n    input: " + nested(900) + "\n"
        assert refused(write(tmp_path, "deep.yaml", text)) == (
            "line 5: task 'a': field 'input': nested deeper than 100 levels"
        )

    def test_deep_yaml_params_are_refused(self, tmp_path: Path) -> None:
        text = "name: w\nparams:\n  p: " + nested(200) + "\ntasks: []\n"
        assert refused(write(tmp_path, "deep.yaml", text)) == (
            "line 3: field 'params.p': nested deeper than 100 levels"
        )

    def test_deep_toml_is_refused(self, tmp_path: Path) -> None:
        text = 'name = "w"\ntasks = []\n[params]\nx = ' + nested(1_000) + "\n"
        assert refused(write(tmp_path, "deep.toml", text)) == "nested deeper than 100 levels"

    def test_the_limit_itself_is_allowed(self, tmp_path: Path) -> None:
        text = "name: w\ntasks:\n  - id: a\n    tool: echo\n    input: " + nested(97) + "\n"
        assert spec.load(write(tmp_path, "ok.yaml", text)).tasks[0].input == json.loads(nested(97))
        deeper = text.replace(nested(97), nested(98))
        assert "nested deeper than 100 levels" in refused(write(tmp_path, "no.yaml", deeper))

    def test_aliases_cannot_stack_shallow_values_into_a_deep_one(self, tmp_path: Path) -> None:
        lines = ["name: w", "params:", "  l0: &l0 " + nested(40)]
        lines += ["  l1: &l1 " + nested(40, "*l0"), "  l2: " + nested(40, "*l1"), "tasks: []"]
        assert "nested deeper than 100 levels" in refused(
            write(tmp_path, "a.yaml", "\n".join(lines))
        )

    def test_deep_data_built_in_code(self) -> None:
        value: list = []
        for _ in range(5_000):
            value = [value]
        with pytest.raises(SpecError, match="nested deeper than 100 levels"):
            spec.from_data({"name": "w", "tasks": [{"id": "a", "tool": "echo", "input": value}]})


class TestNumbersARunCannotKeep:
    """A run keeps its workflow as JSON and its work as msgpack: an integer over 64 bits
    crashed the run that fingerprinted it (and every resume), and infinity came back
    from the journal as null, so a resumed run handed its tool other input."""

    BIG = "100000000000000000000000"

    @pytest.mark.parametrize(
        ("value", "problem"),
        [
            (BIG, "an integer outside 64 bits"),
            ("-9223372036854775809", "an integer outside 64 bits"),
            (".inf", "inf is no number a run can keep"),
            ("-.inf", "-inf is no number a run can keep"),
            (".nan", "nan is no number a run can keep"),
            (f"{{deep: [1, [2, {BIG}]]}}", "an integer outside 64 bits"),
        ],
    )
    def test_input_is_refused_naming_the_task_and_line(
        self, tmp_path: Path, value: str, problem: str
    ) -> None:
        text = f"name: w\ntasks:\n  - id: a\n    tool: echo\n    input: {{n: {value}}}\n"
        assert refused(write(tmp_path, "w.yaml", text)).startswith(
            f"line 5: task 'a': field 'input': {problem}"
        )

    def test_params_and_foreach_are_refused_too(self, tmp_path: Path) -> None:
        params = f"name: w\nparams:\n  p: [{self.BIG}]\ntasks: []\n"
        assert refused(write(tmp_path, "p.yaml", params)).startswith(
            "line 3: field 'params.p': an integer outside 64 bits"
        )
        foreach = 'name = "w"\n[[tasks]]\nid = "a"\ntool = "echo"\nforeach = [1.0, inf]\n'
        assert refused(write(tmp_path, "f.toml", foreach)).startswith(
            "task 'a': field 'foreach': inf is no number a run can keep"
        )

    def test_the_64_bit_bounds_themselves_load(self, tmp_path: Path) -> None:
        text = (
            "name: w\ntasks:\n  - {id: a, tool: echo, "
            "input: [18446744073709551615, -9223372036854775808, 1.5e+300]}\n"
        )
        assert spec.load(write(tmp_path, "w.yaml", text)).tasks[0].input == [
            2**64 - 1,
            -(2**63),
            1.5e300,
        ]

    @pytest.mark.parametrize("field", ["retry_delay", "timeout", "cache_ttl"])
    def test_an_endless_time_is_refused(self, tmp_path: Path, field: str) -> None:
        text = f"name: w\ntasks:\n  - {{id: a, tool: echo, {field}: .inf}}\n"
        with pytest.raises(ValidationError) as info:
            plan_file(write(tmp_path, "w.yaml", text))
        assert f"line 3: task 'a': field '{field}': expected `float` <= 1000000000.0" in str(
            info.value
        )


class TestEncoding:
    @pytest.mark.parametrize("suffix", [".yaml", ".json", ".toml"])
    def test_latin1_is_refused_with_the_byte_and_its_place(
        self, tmp_path: Path, suffix: str
    ) -> None:
        text = {
            ".yaml": 'name: w\ntasks: [{id: a, tool: echo, input: "caf\xe9"}]\n',
            ".json": '{"name": "w",\n "tasks": [{"id": "a", "tool": "echo", "input": "caf\xe9"}]}',
            ".toml": 'name = "w"\ntasks = [{id = "a", tool = "echo", input = "caf\xe9"}]\n',
        }[suffix]
        path = write(tmp_path, "latin1" + suffix, text.encode("latin-1"))
        column = text.splitlines()[1].index("\xe9") + 1
        assert refused(path) == f"not UTF-8 text: invalid byte 0xe9 at line 2, column {column}"

    def test_column_counts_characters_not_bytes(self, tmp_path: Path) -> None:
        path = write(
            tmp_path, "w.json", '{"name": "żółw\xff"}'.encode().replace(b"\xc3\xbf", b"\xff")
        )
        assert refused(path) == "not UTF-8 text: invalid byte 0xff at line 1, column 15"

    def test_utf16_is_refused(self, tmp_path: Path) -> None:
        path = write(tmp_path, "w.yaml", "name: w\ntasks: []\n".encode("utf-16"))
        assert refused(path).startswith("not UTF-8 text: invalid byte 0xff at line 1, column 1")

    @pytest.mark.parametrize(
        ("suffix", "text"),
        [
            (".yaml", "name: w\ntasks: []\n"),
            (".json", '{"name": "w", "tasks": []}'),
            (".toml", 'name = "w"\ntasks = []\n'),
        ],
    )
    def test_a_utf8_byte_order_mark_is_ignored(
        self, tmp_path: Path, suffix: str, text: str
    ) -> None:
        path = write(tmp_path, "bom" + suffix, b"\xef\xbb\xbf" + text.encode())
        assert spec.load(path).name == "w"


class TestDecoderMessages:
    def test_json_error_has_line_and_column_not_a_byte_offset(self, tmp_path: Path) -> None:
        path = write(tmp_path, "w.json", '{"name": "w",\n "tasks": [}')
        assert refused(path) == "not valid JSON: line 2, column 12: invalid character"

    def test_truncated_json(self, tmp_path: Path) -> None:
        path = write(tmp_path, "w.json", '{"name": "w",\n "tasks": [')
        assert refused(path) == "not valid JSON: line 2, column 12: the file ends too soon"

    def test_json_number_out_of_range(self, tmp_path: Path) -> None:
        message = refused(
            write(tmp_path, "w.json", '{"name": "w", "tasks": [], "params": {"x": 1e999}}')
        )
        assert message.startswith("not valid JSON: ")
        assert "out of range" in message

    def test_yaml_error_names_line_and_column_without_library_internals(
        self, tmp_path: Path
    ) -> None:
        message = refused(write(tmp_path, "w.yaml", "name: w\ntasks: [\n  {id: a\n"))
        assert "<byte string>" not in message and " in " not in message
        assert message.startswith("not valid YAML: line 4, column 1: ")

    def test_yaml_duplicate_key(self, tmp_path: Path) -> None:
        message = refused(write(tmp_path, "w.yaml", "name: a\ntasks: []\nname: b\n"))
        assert message == "not valid YAML: line 3, column 1: duplicate key 'name' (first at line 1)"

    def test_yaml_control_character(self, tmp_path: Path) -> None:
        message = refused(write(tmp_path, "w.yaml", "name: w\ntasks: [\x07]\n"))
        assert message.startswith("not valid YAML: line 2, column 9: unacceptable character #x0007")

    @pytest.mark.parametrize(
        "value",
        ["!!int 0x", "!!float ''", "!!bool maybe", "2021-13-45", "!!int 1:x", "!!set [1]"],
    )
    def test_yaml_values_that_cannot_be_constructed(self, tmp_path: Path, value: str) -> None:
        message = refused(write(tmp_path, "w.yaml", f"name: w\nparams:\n  x: {value}\ntasks: []\n"))
        assert message.startswith("not valid YAML: line 3, column ")

    @pytest.mark.parametrize("key", ["null", "[1, 2]", "true", "2021-01-01"])
    def test_yaml_keys_must_be_text_or_numbers(self, tmp_path: Path, key: str) -> None:
        text = f"name: w\ntasks:\n  - id: a\n    tool: echo\n    input: {{{key}: 1}}\n"
        message = refused(write(tmp_path, "w.yaml", text))
        assert message.startswith(
            "not valid YAML: line 5, column 13: a key must be text or a number"
        )

    def test_toml_integer_too_long_for_python(self, tmp_path: Path) -> None:
        message = refused(
            write(tmp_path, "w.toml", 'name = "w"\ntasks = []\n[params]\nx = ' + "9" * 5000 + "\n")
        )
        assert message.startswith("not valid TOML: ")

    def test_expression_does_not_print_python_warnings(self, tmp_path: Path) -> None:
        """Python warns "invalid decimal literal" on its way to the syntax error; users saw it."""
        text = 'name: w\ntasks:\n  - {id: a, tool: echo, when: "1e9not false"}\n'
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ValidationError, match="syntax error"):
                plan_file(write(tmp_path, "w.yaml", text))
        assert [str(w.message) for w in caught] == []


def test_a_workflow_built_in_code_nested_too_deep_is_refused_without_a_traceback(
    tmp_path: Path,
) -> None:
    """Data built in code can nest as deep as Python allows, past msgspec's own limit."""
    import durable

    deep: object = 1
    for _ in range(3000):
        deep = [deep]
    workflow = durable.Workflow(name="deep", tasks=[durable.Task(id="a", tool="echo", input=deep)])
    # Named down to its field where Python's recursion limit lets the walk get there (3.13).
    with pytest.raises(
        SpecError,
        match=r"^workflow 'deep': (task 'a': field 'input': )?nested deeper than 100 levels$",
    ):
        durable.run(workflow, db=tmp_path / "j.db")
    assert not (tmp_path / "j.db").exists()
