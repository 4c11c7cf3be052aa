"""spec.py: the workflow Structs, loading them from files, and decode errors for people."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from durable import spec
from durable.errors import DurableError, SpecError
from durable.spec import Task, Workflow

YAML = """\
name: research
max_concurrency: 8
params:
  query: durable execution
imports: [tools]
limits:
  web_search: 2
tasks:
  - id: task_1
    tool: web_search
    input: {query: "${params.query}"}
  - id: task_2
    tool: calculate
    input: {expression: "6 * 7"}
  - id: task_3
    tool: summarize_results
    dependencies: [task_1, task_2]
    input:
      results: "${task_1.output}"
      note: "total is ${task_2.output.value}"
    when: "${task_2.output.value} > 40"
    retries: 2
    retry_delay: 0.5
    timeout: 30
    trigger: none_failed
"""

DATA = {
    "name": "research",
    "max_concurrency": 8,
    "params": {"query": "durable execution"},
    "imports": ["tools"],
    "limits": {"web_search": 2},
    "tasks": [
        {"id": "task_1", "tool": "web_search", "input": {"query": "${params.query}"}},
        {"id": "task_2", "tool": "calculate", "input": {"expression": "6 * 7"}},
        {
            "id": "task_3",
            "tool": "summarize_results",
            "dependencies": ["task_1", "task_2"],
            "input": {
                "results": "${task_1.output}",
                "note": "total is ${task_2.output.value}",
            },
            "when": "${task_2.output.value} > 40",
            "retries": 2,
            "retry_delay": 0.5,
            "timeout": 30,
            "trigger": "none_failed",
        },
    ],
}

TOML = """\
name = "research"
max_concurrency = 8
imports = ["tools"]

[params]
query = "durable execution"

[limits]
web_search = 2

[[tasks]]
id = "task_1"
tool = "web_search"
input = { query = "${params.query}" }

[[tasks]]
id = "task_2"
tool = "calculate"
input = { expression = "6 * 7" }

[[tasks]]
id = "task_3"
tool = "summarize_results"
dependencies = ["task_1", "task_2"]
when = "${task_2.output.value} > 40"
retries = 2
retry_delay = 0.5
timeout = 30
trigger = "none_failed"

[tasks.input]
results = "${task_1.output}"
note = "total is ${task_2.output.value}"
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def spec_error(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        spec.load(path)
    assert info.value.path == str(path)
    assert info.value.exit_code == 2
    return str(info.value)


class TestFormats:
    def test_yaml_json_and_toml_load_the_same_workflow(self, tmp_path: Path) -> None:
        from_yaml = spec.load(write(tmp_path, "w.yaml", YAML))
        from_yml = spec.load(write(tmp_path, "w.yml", YAML))
        from_json = spec.load(write(tmp_path, "w.json", json.dumps(DATA)))
        from_toml = spec.load(write(tmp_path, "w.toml", TOML))
        assert from_yaml == from_yml == from_json == from_toml
        assert from_yaml == spec.from_data(DATA)

    def test_fields_are_decoded_with_their_types(self, tmp_path: Path) -> None:
        workflow = spec.load(write(tmp_path, "w.yaml", YAML))
        assert workflow.name == "research"
        assert workflow.max_concurrency == 8
        assert workflow.params == {"query": "durable execution"}
        assert workflow.imports == ["tools"]
        assert workflow.limits == {"web_search": 2}
        assert [t.id for t in workflow.tasks] == ["task_1", "task_2", "task_3"]
        last = workflow.tasks[2]
        assert last.dependencies == ["task_1", "task_2"]
        assert last.input == {
            "results": "${task_1.output}",
            "note": "total is ${task_2.output.value}",
        }
        assert last.when == "${task_2.output.value} > 40"
        assert last.retries == 2
        assert last.retry_delay == 0.5
        assert last.timeout == 30.0
        assert isinstance(last.timeout, float)
        assert last.trigger == "none_failed"

    def test_extension_is_case_insensitive(self, tmp_path: Path) -> None:
        assert spec.load(write(tmp_path, "w.YAML", YAML)).name == "research"

    def test_input_may_be_any_value(self) -> None:
        workflow = spec.from_data(
            {"name": "w", "tasks": [{"id": "a", "tool": "echo", "input": [1, "two", None]}]}
        )
        assert workflow.tasks[0].input == [1, "two", None]


class TestDefaults:
    def test_workflow_defaults(self) -> None:
        workflow = spec.from_data({"name": "w", "tasks": []})
        assert workflow.max_concurrency == 16
        assert workflow.params == {}
        assert workflow.imports == []
        assert workflow.limits == {}
        assert workflow.tasks == []

    def test_task_defaults(self) -> None:
        task = spec.from_data({"name": "w", "tasks": [{"id": "a", "tool": "echo"}]}).tasks[0]
        assert task.input is None
        assert task.dependencies == []
        assert task.when is None
        assert task.retries == 0
        assert task.retry_delay == 1.0
        assert task.timeout is None
        assert task.trigger == "all_success"

    def test_structs_built_in_code_have_the_same_defaults(self) -> None:
        built = Workflow(name="w", tasks=[Task(id="a", tool="echo")])
        assert built == spec.from_data({"name": "w", "tasks": [{"id": "a", "tool": "echo"}]})

    def test_ids_may_hold_dashes_and_underscores(self) -> None:
        workflow = spec.from_data({"name": "w", "tasks": [{"id": "_a-1_b", "tool": "echo"}]})
        assert workflow.tasks[0].id == "_a-1_b"


class TestFrozen:
    def test_workflow_is_frozen(self) -> None:
        workflow = spec.from_data({"name": "w", "tasks": []})
        with pytest.raises(AttributeError):
            workflow.name = "other"  # type: ignore[misc]

    def test_task_is_frozen(self) -> None:
        task = Task(id="a", tool="echo")
        with pytest.raises(AttributeError):
            task.retries = 3  # type: ignore[misc]
        assert task == Task(id="a", tool="echo")

    def test_mutable_defaults_are_not_shared(self) -> None:
        first, second = Task(id="a", tool="echo"), Task(id="b", tool="echo")
        assert first.dependencies is not second.dependencies


class TestEncoding:
    def test_round_trip_through_json(self) -> None:
        workflow = spec.from_data(DATA)
        assert spec.decode(spec.encode(workflow)) == workflow

    def test_hash_is_stable_and_sensitive(self) -> None:
        workflow = spec.from_data(DATA)
        assert spec.spec_hash(workflow) == spec.spec_hash(spec.from_data(DATA))
        assert len(spec.spec_hash(workflow)) == 16
        changed = spec.from_data({**DATA, "max_concurrency": 9})
        assert spec.spec_hash(changed) != spec.spec_hash(workflow)

    def test_defaults_are_omitted(self) -> None:
        encoded = msgspec.json.decode(spec.encode(spec.from_data({"name": "w", "tasks": []})))
        assert encoded == {"name": "w", "tasks": []}


class TestUnknownKeys:
    def test_unknown_top_level_key(self, tmp_path: Path) -> None:
        path = write(tmp_path, "w.yaml", "name: w\ncolour: red\ntasks: []\n")
        assert spec_error(path) == f"{path}: line 2: field 'colour': unknown field"

    def test_unknown_task_key_names_the_task(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            "w.yaml",
            "name: w\ntasks:\n  - id: a\n    tool: echo\n  - id: b\n    tool: echo\n    colr: 1\n",
        )
        assert spec_error(path) == f"{path}: line 7: task 'b': field 'colr': unknown field"

    def test_unknown_key_in_json_has_no_line(self, tmp_path: Path) -> None:
        text = json.dumps({"name": "w", "tasks": [{"id": "a", "tool": "echo", "bogus": 1}]})
        path = write(tmp_path, "w.json", text)
        assert spec_error(path) == f"{path}: task 'a': field 'bogus': unknown field"

    def test_unknown_key_in_toml(self, tmp_path: Path) -> None:
        path = write(tmp_path, "w.toml", 'name = "w"\nfoo = 1\ntasks = []\n')
        assert spec_error(path) == f"{path}: field 'foo': unknown field"


class TestErrorRewriting:
    @pytest.mark.parametrize(
        ("task_yaml", "expected"),
        [
            ("retries: -1", "line 5: task 'a': field 'retries': expected `int` >= 0"),
            ("retries: '3'", "line 5: task 'a': field 'retries': expected `int`, got `str`"),
            ("retries: 1.5", "line 5: task 'a': field 'retries': expected `int`, got `float`"),
            ("retry_delay: -1", "line 5: task 'a': field 'retry_delay': expected `float` >= 0.0"),
            ("timeout: 0", "line 5: task 'a': field 'timeout': expected `float` > 0.0"),
            ("timeout: -2", "line 5: task 'a': field 'timeout': expected `float` > 0.0"),
            ("when: 5", "line 5: task 'a': field 'when': expected `str | null`, got `int`"),
            (
                "dependencies: b",
                "line 5: task 'a': field 'dependencies': expected `array`, got `str`",
            ),
        ],
    )
    def test_task_field_errors(self, tmp_path: Path, task_yaml: str, expected: str) -> None:
        path = write(
            tmp_path, "w.yaml", f"name: w\ntasks:\n  - id: a\n    tool: echo\n    {task_yaml}\n"
        )
        assert spec_error(path) == f"{path}: {expected}"

    def test_list_item_field_names_its_index(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            "w.yaml",
            "name: w\ntasks:\n  - id: a\n    tool: echo\n    dependencies: [1x]\n",
        )
        message = spec_error(path)
        assert message.startswith(f"{path}: line 5: task 'a': field 'dependencies[0]': ")
        assert "must start with a letter or '_'" in message

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ('name: ""\ntasks: []\n', "line 1: field 'name': expected `str` of length >= 1"),
            ("tasks: []\n", "line 1: field 'name': required field is missing"),
            ("name: w\n", "line 1: field 'tasks': required field is missing"),
            (
                "name: w\nmax_concurrency: 0\ntasks: []\n",
                "line 2: field 'max_concurrency': expected `int` >= 1",
            ),
            (
                "name: w\nmax_concurrency: true\ntasks: []\n",
                "line 2: field 'max_concurrency': expected `int`, got `bool`",
            ),
            ("name: w\ntasks: {a: 1}\n", "line 2: field 'tasks': expected `array`, got `object`"),
            (
                "name: w\nparams: [1]\ntasks: []\n",
                "line 2: field 'params': expected `object`, got `array`",
            ),
        ],
    )
    def test_top_level_errors(self, tmp_path: Path, text: str, expected: str) -> None:
        path = write(tmp_path, "w.yaml", text)
        assert spec_error(path) == f"{path}: {expected}"

    def test_task_without_id_is_named_by_position(self, tmp_path: Path) -> None:
        path = write(
            tmp_path, "w.yaml", "name: w\ntasks:\n  - id: a\n    tool: echo\n  - tool: echo\n"
        )
        assert spec_error(path) == f"{path}: line 5: task #2: field 'id': required field is missing"

    def test_bad_id_is_named(self, tmp_path: Path) -> None:
        path = write(tmp_path, "w.yaml", "name: w\ntasks:\n  - id: 1st\n    tool: echo\n")
        assert spec_error(path) == (
            f"{path}: line 3: task '1st': field 'id': "
            "must start with a letter or '_' and hold only letters, digits, '_' and '-'"
        )

    def test_task_that_is_not_a_mapping(self, tmp_path: Path) -> None:
        path = write(tmp_path, "w.yaml", "name: w\ntasks:\n  - 5\n")
        assert spec_error(path) == f"{path}: line 3: task #1: expected `object`, got `int`"

    def test_limit_below_one_is_reported_with_its_tool(self, tmp_path: Path) -> None:
        # Decoding accepts it; validation names the tool (a decode error could not).
        from durable import graph, tools
        from durable.errors import ValidationError

        path = write(
            tmp_path, "w.yaml", "name: w\nlimits:\n  echo: 0\ntasks: [{id: a, tool: echo}]\n"
        )
        with pytest.raises(ValidationError) as info:
            graph.build(spec.load(path), tools.REGISTRY.resolve, str(path))
        assert info.value.problems == [
            "field 'limits': tool 'echo': limit must be at least 1, got 0"
        ]

    def test_from_data_names_its_source(self) -> None:
        with pytest.raises(SpecError) as info:
            spec.from_data(
                {"name": "w", "tasks": [{"id": "a", "tool": "echo", "retries": -1}]}, "mine"
            )
        assert str(info.value) == "mine: task 'a': field 'retries': expected `int` >= 0"

    def test_from_data_default_source(self) -> None:
        with pytest.raises(
            SpecError, match=r"^<workflow>: field 'tasks': required field is missing$"
        ):
            spec.from_data({"name": "w"})

    def test_describe_validation_error_without_text(self) -> None:
        raw = {"tasks": [{"id": "x"}, {"id": "y"}]}
        message = spec.describe_validation_error(
            "Expected `int` - at `$.tasks[1].retries`", raw, None
        )
        assert message == "task 'y': field 'retries': expected `int`"


class TestUnreadable:
    def test_missing_file(self, tmp_path: Path) -> None:
        message = spec_error(tmp_path / "nope.yaml")
        assert message == f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"

    def test_unknown_extension(self, tmp_path: Path) -> None:
        path = write(tmp_path, "w.txt", "name: w\ntasks: []\n")
        assert spec_error(path) == (
            f"{path}: unknown file type (expected .yaml, .yml, .json or .toml)"
        )

    def test_invalid_yaml(self, tmp_path: Path) -> None:
        message = spec_error(write(tmp_path, "w.yaml", "name: [\n"))
        assert ": not valid YAML: " in message
        assert "line 2" in message

    def test_invalid_json(self, tmp_path: Path) -> None:
        assert ": not valid JSON: " in spec_error(write(tmp_path, "w.json", '{"name": '))

    def test_invalid_toml(self, tmp_path: Path) -> None:
        message = spec_error(write(tmp_path, "w.toml", 'name = "w"\n[[tasks]\n'))
        assert ": not valid TOML: " in message
        assert "line 2" in message

    @pytest.mark.parametrize(
        ("text", "kind"),
        [
            ("", "nothing (the file is empty)"),
            ("# only a comment\n", "nothing (the file is empty)"),
            ("- 1\n", "a list"),
            ("7\n", "a number"),
            ("hello\n", "a string"),
            ("true\n", "true or false"),
        ],
    )
    def test_document_that_is_not_a_mapping(self, tmp_path: Path, text: str, kind: str) -> None:
        path = write(tmp_path, "w.yaml", text)
        assert (
            spec_error(path) == f"{path}: a workflow must be a mapping (name:, tasks:), got {kind}"
        )

    def test_yaml_python_tags_are_refused(self, tmp_path: Path) -> None:
        path = write(tmp_path, "w.yaml", "name: !!python/object/apply:os.system [id]\ntasks: []\n")
        assert ": not valid YAML: " in spec_error(path)

    def test_spec_error_is_a_durable_error(self) -> None:
        assert issubclass(SpecError, DurableError)


class TestDuplicateYamlKeys:
    """Plain YAML keeps the last of two equal keys; durable refuses them."""

    def test_top_level_duplicate_is_refused_with_both_lines(self, tmp_path: Path) -> None:
        path = write(tmp_path, "w.yaml", "name: a\ntasks: []\nname: b\n")
        message = spec_error(path)
        assert "duplicate key 'name' (first at line 1)" in message
        assert "line 3" in message

    def test_nested_duplicate_in_an_input_is_refused(self, tmp_path: Path) -> None:
        text = "name: w\ntasks:\n  - id: a\n    tool: echo\n    input: {x: 1, x: 2}\n"
        assert "duplicate key 'x'" in spec_error(write(tmp_path, "w.yaml", text))

    def test_merge_keys_still_work(self, tmp_path: Path) -> None:
        text = "name: w\nbase: &base {tool: echo, retries: 2}\ntasks:\n  - {<<: *base, id: a}\n"
        # `base` is not a workflow field, so the merged task is checked via the error
        # for the unknown key, after the merge itself succeeded.
        assert "unknown field" in spec_error(write(tmp_path, "w.yaml", text))
        ok = "name: w\ntasks:\n  - &t {id: a, tool: echo, retries: 2}\n  - {<<: *t, id: b}\n"
        workflow = spec.load(write(tmp_path, "ok.yaml", ok))
        assert [(t.id, t.retries) for t in workflow.tasks] == [("a", 2), ("b", 2)]


def problems_of(path: Path) -> list[str]:
    """Every problem `durable validate` reports for a file, shape and graph together."""
    from durable.errors import ValidationError
    from durable.loader import plan_file

    with pytest.raises(ValidationError) as info:
        plan_file(path)
    assert info.value.source == str(path)
    return info.value.problems


MIXED = """\
name: demo
colour: red
tasks:
  - id: a
    tool: ehco
    retries: -1
  - id: b
    tool: echo
    dependencies: [a, nope]
    timeout: 0
    input:
      first: "${c.output}"
      second: "${d.output}"
  - id: c
    tool: echo
    colr: 1
    retries: x
  - tool: echo
  - 5
  - id: e
    tool: echo
    input: {x: "${params.p}"}
    when: "${b.output} > 1"
"""


class TestAllProblemsTogether:
    """Shape problems no longer hide graph problems: `validate` reports both in one pass."""

    def test_shape_and_graph_problems_are_reported_together_with_lines(
        self, tmp_path: Path
    ) -> None:
        assert problems_of(write(tmp_path, "w.yaml", MIXED)) == [
            "line 2: field 'colour': unknown field",
            "line 6: task 'a': field 'retries': expected `int` >= 0",
            "line 10: task 'b': field 'timeout': expected `float` > 0.0",
            "line 16: task 'c': field 'colr': unknown field",
            "line 17: task 'c': field 'retries': expected `int`, got `str`",
            "line 18: task #4: field 'id': required field is missing",
            "line 19: task #5: expected `object`, got `int`",
            "line 5: task 'a': field 'tool': unknown tool 'ehco' (did you mean 'echo'?)",
            "line 9: task 'b': field 'dependencies': unknown task 'nope'",
            "line 13: task 'b': reference ${d.output}: unknown task 'd'",
            "line 22: task 'e': reference ${params.p}: unknown param 'p' (declare it under params)",
        ]

    def test_json_reports_the_same_problems_without_lines(self, tmp_path: Path) -> None:
        import yaml

        path = write(tmp_path, "w.json", json.dumps(yaml.safe_load(MIXED)))
        expected = problems_of(write(tmp_path, "w.yaml", MIXED))
        assert problems_of(path) == [p.split(": ", 1)[1] for p in expected]

    def test_a_task_with_a_shape_problem_still_counts_as_known(self, tmp_path: Path) -> None:
        text = (
            "name: w\ntasks:\n  - {id: a, tool: echo, retries: -1}\n"
            '  - {id: b, tool: echo, dependencies: [a], input: "${a.output}"}\n'
        )
        assert problems_of(write(tmp_path, "w.yaml", text)) == [
            "line 3: task 'a': field 'retries': expected `int` >= 0"
        ]

    def test_a_task_without_a_usable_tool_is_not_graph_checked(self, tmp_path: Path) -> None:
        text = 'name: w\ntasks:\n  - {id: a, tool: "", input: "${ghost.output}"}\n'
        assert problems_of(write(tmp_path, "w.yaml", text)) == [
            "line 3: task 'a': field 'tool': expected `str` of length >= 1"
        ]

    def test_duplicate_ids_count_tasks_left_out(self, tmp_path: Path) -> None:
        text = 'name: w\ntasks:\n  - {id: a, tool: echo}\n  - {id: a, tool: ""}\n'
        assert problems_of(write(tmp_path, "w.yaml", text)) == [
            "line 4: task 'a': field 'tool': expected `str` of length >= 1",
            "task 'a': duplicate id (used 2 times)",
        ]

    def test_a_task_keeps_its_sound_fields_and_is_still_checked(self, tmp_path: Path) -> None:
        text = "name: w\ntasks:\n  - {id: a, tool: ehco, retries: -1}\n  - {id: a, tool: echo}\n"
        assert problems_of(write(tmp_path, "w.yaml", text)) == [
            "line 3: task 'a': field 'retries': expected `int` >= 0",
            "line 4: task 'a': duplicate id (used 2 times)",
            "line 3: task 'a': field 'tool': unknown tool 'ehco' (did you mean 'echo'?)",
        ]

    @pytest.mark.parametrize(
        ("field", "value"), [("params", "[1]"), ("imports", "nope"), ("tasks", "{a: 1}")]
    )
    def test_no_graph_check_when_it_would_give_false_alarms(
        self, tmp_path: Path, field: str, value: str
    ) -> None:
        fields = {
            "params": "{}",
            "imports": "[]",
            "tasks": '[{id: a, tool: echo, input: "${params.p}"}]',
            field: value,
        }
        text = "name: w\n" + "".join(f"{key}: {fields[key]}\n" for key in fields)
        found = problems_of(write(tmp_path, "w.yaml", text))
        assert len(found) == 1
        assert f"field '{field}': expected " in found[0]

    def test_spec_load_still_raises_the_first_problem(self, tmp_path: Path) -> None:
        path = write(tmp_path, "w.yaml", MIXED)
        assert spec_error(path) == f"{path}: line 2: field 'colour': unknown field"


class TestGraphProblemLines:
    """Graph problems carry the YAML line of what they are about, as shape problems do."""

    def one(self, tmp_path: Path, text: str) -> str:
        (found,) = problems_of(write(tmp_path, "w.yaml", text))
        return found

    def test_unknown_tool(self, tmp_path: Path) -> None:
        text = "name: w\ntasks:\n  - id: a\n    tool: ehco\n"
        assert self.one(tmp_path, text).startswith("line 4: task 'a': field 'tool': unknown tool")

    def test_unknown_dependency_points_at_the_item(self, tmp_path: Path) -> None:
        text = "name: w\ntasks:\n  - id: a\n    tool: echo\n    dependencies:\n      - nope\n"
        assert self.one(tmp_path, text) == (
            "line 6: task 'a': field 'dependencies': unknown task 'nope'"
        )

    def test_unknown_reference_points_at_the_text_holding_it(self, tmp_path: Path) -> None:
        text = (
            "name: w\ntasks:\n  - id: a\n    tool: echo\n    input:\n"
            "      fine: 1\n      deep: {list: [1, 'x ${ghost.output.k}']}\n"
        )
        assert self.one(tmp_path, text) == (
            "line 7: task 'a': reference ${ghost.output.k}: unknown task 'ghost'"
        )

    def test_unknown_reference_in_when(self, tmp_path: Path) -> None:
        text = "name: w\ntasks:\n  - id: a\n    tool: echo\n    when: ${ghost.output}\n"
        assert self.one(tmp_path, text) == (
            "line 5: task 'a': reference ${ghost.output}: unknown task 'ghost'"
        )

    def test_bad_expression_and_trigger(self, tmp_path: Path) -> None:
        text = "name: w\ntasks:\n  - id: a\n    tool: echo\n    when: len(1)\n    trigger: x\n"
        found = problems_of(write(tmp_path, "w.yaml", text))
        assert [p.split(": task")[0] for p in found] == ["line 5", "line 6"]

    def test_duplicate_id_points_at_the_second(self, tmp_path: Path) -> None:
        text = (
            "name: w\ntasks:\n  - {id: a, tool: echo}\n"
            "  - {id: b, tool: echo}\n  - {id: a, tool: echo}\n"
        )
        assert self.one(tmp_path, text) == "line 5: task 'a': duplicate id (used 2 times)"

    def test_unused_limit(self, tmp_path: Path) -> None:
        text = "name: w\nlimits:\n  echo: 1\n  http: 2\ntasks: [{id: a, tool: echo}]\n"
        assert self.one(tmp_path, text) == "line 4: field 'limits': no task uses tool 'http'"

    def test_cycle_points_at_its_first_task(self, tmp_path: Path) -> None:
        text = (
            "name: w\ntasks:\n  - {id: x, tool: echo}\n"
            "  - {id: a, tool: echo, dependencies: [b]}\n"
            "  - {id: b, tool: echo, dependencies: [a]}\n"
        )
        assert self.one(tmp_path, text) == "line 4: cycle: a -> b -> a"

    def test_lines_follow_tasks_left_out(self, tmp_path: Path) -> None:
        text = "name: w\ntasks:\n  - {id: a, tool: echo, retries: -1}\n  - {id: b, tool: ehco}\n"
        assert problems_of(write(tmp_path, "w.yaml", text))[1].startswith(
            "line 4: task 'b': field 'tool': unknown tool 'ehco'"
        )
