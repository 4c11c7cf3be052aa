"""refs.py: parsing `${...}`, and substituting values into task inputs."""

from __future__ import annotations

import re

import pytest

from durable.errors import ReferenceSyntaxError, ResolutionError
from durable.refs import (
    Ref,
    Scope,
    Template,
    as_text,
    find_refs,
    instance_id,
    is_one_reference,
    parse_ref,
    resolve,
    split_instance,
)

OUTPUTS = {
    "search": {"items": [{"title": "first"}, {"title": "second"}], "count": 2, "none": None},
    "calc": {"value": 42},
    "numbers": [1, 2, 3],
    "text": "plain",
    "skipped": None,
    "spaced": {"key with space": "yes", "it's": "quoted"},
}
SCOPE = Scope(
    params={"query": "durable", "n": 3, "flags": [True, False]}, run_id="run-7", outputs=OUTPUTS
)


def render(value: object, scope: Scope = SCOPE) -> object:
    return Template(value).render(scope)


class TestParseRef:
    @pytest.mark.parametrize(
        ("inner", "expected"),
        [
            ("params.query", Ref("param", "query", (), "params.query")),
            ("run.id", Ref("run", "id", (), "run.id")),
            ("task_1.output", Ref("task", "task_1", (), "task_1.output")),
            ("a.output.key.sub", Ref("task", "a", ("key", "sub"), "a.output.key.sub")),
            ("a.output.items[0]", Ref("task", "a", ("items", 0), "a.output.items[0]")),
            ("a.output[2][-1]", Ref("task", "a", (2, -1), "a.output[2][-1]")),
            (
                'a.output["key with space"]',
                Ref("task", "a", ("key with space",), 'a.output["key with space"]'),
            ),
            ("a.output['k']", Ref("task", "a", ("k",), "a.output['k']")),
            ("a.output[ 1 ]", Ref("task", "a", (1,), "a.output[ 1 ]")),
            ("  params.query  ", Ref("param", "query", (), "params.query")),
            ("my-task.output", Ref("task", "my-task", (), "my-task.output")),
            ("params.x.y[0]", Ref("param", "x", ("y", 0), "params.x.y[0]")),
        ],
    )
    def test_valid(self, inner: str, expected: Ref) -> None:
        assert parse_ref(inner) == expected

    def test_str_is_the_reference_as_written(self) -> None:
        assert str(parse_ref("a.output.items[0]")) == "${a.output.items[0]}"

    @pytest.mark.parametrize(
        ("inner", "reason"),
        [
            ("", "expected params.NAME, run.id, TASK.output[.key], item or index"),
            ("task_1", "expected params.NAME, run.id, TASK.output[.key], item or index"),
            ("params", "expected params.NAME, run.id, TASK.output[.key], item or index"),
            ("1abc.output", "expected params.NAME, run.id, TASK.output[.key], item or index"),
            ("task_1.outputs", "a task reference reads 'task_1.output', not 'task_1.outputs'"),
            ("task_1.result", "a task reference reads 'task_1.output', not 'task_1.result'"),
            ("run.idx", "the only run field is run.id"),
            ("run.id.x", "the only run field is run.id"),
            ("a.output.", "cannot parse '.'"),
            ("a.output[x]", "cannot parse '[x]'"),
            ("a.output.0", "cannot parse '.0'"),
            ("a.output[0", "cannot parse '[0'"),
            ("a.output + 1", "cannot parse '+ 1'"),
        ],
    )
    def test_malformed(self, inner: str, reason: str) -> None:
        with pytest.raises(ReferenceSyntaxError) as info:
            parse_ref(inner)
        assert str(info.value) == f"bad reference '${{{inner}}}': {reason}"


class TestWholeValue:
    """A string that is exactly one reference becomes the value itself, type and all."""

    def test_list_stays_a_list(self) -> None:
        assert render("${search.output.items}") == [{"title": "first"}, {"title": "second"}]

    def test_dict_stays_a_dict(self) -> None:
        assert render("${calc.output}") == {"value": 42}

    def test_int_stays_an_int(self) -> None:
        assert render("${calc.output.value}") == 42
        assert render("${params.n}") == 3

    def test_null_stays_null(self) -> None:
        assert render("${skipped.output}") is None
        assert render("${search.output.none}") is None

    def test_value_is_the_same_object(self) -> None:
        assert render("${search.output}") is OUTPUTS["search"]

    def test_run_id(self) -> None:
        assert render("${run.id}") == "run-7"

    def test_params(self) -> None:
        assert render("${params.query}") == "durable"
        assert render("${params.flags[1]}") is False

    def test_inside_containers(self) -> None:
        value = {"a": ["${calc.output.value}", {"b": "${numbers.output}"}], "c": "const"}
        assert render(value) == {"a": [42, {"b": [1, 2, 3]}], "c": "const"}


class TestPaths:
    def test_key(self) -> None:
        assert render("${calc.output.value}") == 42

    def test_index(self) -> None:
        assert render("${search.output.items[1].title}") == "second"
        assert render("${numbers.output[0]}") == 1

    def test_negative_index(self) -> None:
        assert render("${numbers.output[-1]}") == 3

    def test_quoted_key_with_space(self) -> None:
        assert render('${spaced.output["key with space"]}') == "yes"
        assert render('${spaced.output["it\'s"]}') == "quoted"

    def test_index_into_a_string(self) -> None:
        assert render("${text.output[0]}") == "p"


class TestInterpolation:
    """A reference inside longer text: strings as they are, everything else as JSON."""

    def test_string_as_is(self) -> None:
        assert render("q=${params.query}!") == "q=durable!"

    def test_int_as_json(self) -> None:
        assert render("total is ${calc.output.value}") == "total is 42"

    def test_list_and_dict_as_json(self) -> None:
        assert render("n=${numbers.output}") == "n=[1,2,3]"
        assert render("c=${calc.output}") == 'c={"value":42}'

    def test_null_and_bools_as_json(self) -> None:
        assert render("s=${skipped.output}") == "s=null"
        assert render("${params.flags[0]}/${params.flags[1]}") == "true/false"

    def test_float_as_json(self) -> None:
        scope = Scope(params={"x": 1.5}, run_id="r", outputs={})
        assert render("x=${params.x}", scope) == "x=1.5"

    def test_two_adjacent_references(self) -> None:
        assert render("${params.query}${params.n}") == "durable3"

    def test_run_id_in_text(self) -> None:
        assert render("run ${run.id} done") == "run run-7 done"

    def test_quoted_strings_are_not_escaped(self) -> None:
        scope = Scope(params={"s": 'say "hi"'}, run_id="r", outputs={})
        assert render("<${params.s}>", scope) == '<say "hi">'

    def test_as_text(self) -> None:
        assert as_text("x") == "x"
        assert as_text(None) == "null"
        assert as_text({"a": [1, True]}) == '{"a":[1,true]}'


class TestEscape:
    def test_double_dollar_is_a_literal(self) -> None:
        template = Template("$${params.query}")
        assert template.refs == ()
        assert template.render(SCOPE) == "${params.query}"

    @pytest.mark.parametrize(
        ("text", "rendered"),
        [("cost $${x", "cost ${x"), ("${params.n} $${", "3 ${"), ("$${a $${b}", "${a ${b}")],
    )
    def test_double_dollar_never_closed_is_a_literal_too(self, text: str, rendered: str) -> None:
        """It was refused as a `${` never closed, though `$${` is a literal `${`."""
        assert Template(text).render(SCOPE) == rendered

    def test_escape_next_to_a_reference(self) -> None:
        template = Template("$${params.query} is ${params.query}")
        assert [str(r) for r in template.refs] == ["${params.query}"]
        assert template.render(SCOPE) == "${params.query} is durable"

    def test_escape_does_not_need_a_valid_reference(self) -> None:
        assert render("$${not a ref}") == "${not a ref}"

    def test_lone_dollars_are_text(self) -> None:
        assert render("cost: $5 $ {x}") == "cost: $5 $ {x}"


class TestConstant:
    def test_constant_dict_renders_the_same_object(self) -> None:
        value = {"a": [1, 2], "b": {"c": "text"}}
        template = Template(value)
        assert template.is_constant
        assert template.render(SCOPE) is value
        assert template.render(SCOPE) is value

    def test_constant_list_and_scalars(self) -> None:
        value = [1, "two", None]
        assert Template(value).render(SCOPE) is value
        assert Template(None).render(SCOPE) is None
        assert Template(5).render(SCOPE) == 5

    def test_constant_subtree_is_shared(self) -> None:
        inner = {"fixed": [1]}
        rendered = render({"ref": "${params.n}", "inner": inner})
        assert rendered == {"ref": 3, "inner": {"fixed": [1]}}
        assert rendered["inner"] is inner

    def test_template_with_refs_is_not_constant(self) -> None:
        assert not Template({"x": "${params.n}"}).is_constant


class TestMappings:
    """A mapping with references renders as a fresh dict, its keys in the order written,
    whichever of them are references (one or several) and whichever constants."""

    def test_keys_keep_their_order_around_references(self) -> None:
        value = {"a": 1, "b": "${calc.output.value}", "c": [1], "d": "${params.n}", "e": "x"}
        rendered = render(value)
        assert list(rendered) == ["a", "b", "c", "d", "e"]  # type: ignore[arg-type]
        assert rendered == {"a": 1, "b": 42, "c": [1], "d": 3, "e": "x"}

    def test_one_reference_among_constants(self) -> None:
        template = Template({"first": "${search.output.items[1].title}", "then": 2})
        one, two = template.render(SCOPE), template.render(SCOPE)
        assert one == {"first": "second", "then": 2}
        assert list(one) == ["first", "then"]
        assert one is not two  # each render its own dict: a tool may not share another's

    def test_a_render_changes_nothing_for_the_next(self) -> None:
        template = Template({"n": "${calc.output.value}", "k": "const"})
        first = template.render(SCOPE)
        first["n"] = "changed"
        other = Scope(params={}, run_id="r", outputs={"calc": {"value": 7}})
        assert template.render(other) == {"n": 7, "k": "const"}
        assert template.render(SCOPE) == {"n": 42, "k": "const"}


class TestRefs:
    def test_refs_in_order(self) -> None:
        value = {"a": "${b.output}", "c": ["x ${params.p} ${run.id}", "${d.output.k[0]}"]}
        assert [str(r) for r in find_refs(value)] == [
            "${b.output}",
            "${params.p}",
            "${run.id}",
            "${d.output.k[0]}",
        ]


class TestSyntaxErrors:
    @pytest.mark.parametrize(
        "text",
        ["${task_1.outputs}", "x ${a}", "${params}", "${run.name}", "${a.output[}"],
    )
    def test_malformed_reference_in_input(self, text: str) -> None:
        with pytest.raises(ReferenceSyntaxError, match=r"^bad reference '\$\{"):
            Template({"deep": [text]})

    @pytest.mark.parametrize("text", ["${", "search ${params.query", "${params.q} and ${"])
    def test_unclosed(self, text: str) -> None:
        with pytest.raises(ReferenceSyntaxError) as info:
            Template(text)
        assert str(info.value) == f"bad reference in '{text}': '${{' is never closed"


class TestResolutionErrors:
    def error(self, text: str, scope: Scope = SCOPE) -> str:
        with pytest.raises(ResolutionError) as info:
            render(text, scope)
        return str(info.value)

    def test_missing_key_names_reference_and_keys(self) -> None:
        assert self.error("${calc.output.total}") == (
            "${calc.output.total}: missing key 'total' (keys: value)"
        )

    def test_index_out_of_range(self) -> None:
        assert self.error("${search.output.items[5]}") == (
            "${search.output.items[5]}: index 5 out of range (length 2)"
        )

    def test_key_of_null(self) -> None:
        assert self.error("${skipped.output.x}") == "${skipped.output.x}: cannot read 'x' of null"

    def test_key_of_a_list(self) -> None:
        assert self.error("${numbers.output.x}") == (
            "${numbers.output.x}: cannot read key 'x' of a list"
        )

    def test_index_of_an_int(self) -> None:
        assert self.error("${calc.output.value[0]}") == (
            "${calc.output.value[0]}: cannot index a int with [0]"
        )

    def test_index_of_a_dict(self) -> None:
        assert self.error("${calc.output[0]}") == "${calc.output[0]}: cannot index a dict with [0]"

    def test_missing_param(self) -> None:
        assert self.error("${params.nope}") == "${params.nope}: no param 'nope'"

    def test_task_without_output(self) -> None:
        assert self.error("x ${ghost.output}") == (
            "${ghost.output}: task 'ghost' has no committed output"
        )

    def test_resolve_directly(self) -> None:
        assert resolve(parse_ref("search.output.items[0].title"), SCOPE) == "first"
        with pytest.raises(ResolutionError):
            resolve(parse_ref("search.output.items[0].nope"), SCOPE)


@pytest.mark.parametrize("index", [0, 7, 12345])
def test_split_instance_undoes_instance_id(index: int) -> None:
    assert split_instance(instance_id("fetch-2", index)) == ("fetch-2", index)


@pytest.mark.parametrize(
    "task_id", ["fetch", "fetch[]", "fetch[01]", "fetch[-1]", "fetch[x]", "[3]", "a[1][2]", "a[1"]
)
def test_split_instance_refuses_what_instance_id_never_writes(task_id: str) -> None:
    assert split_instance(task_id) is None


@pytest.mark.parametrize("text", ["${search.output.urls}", "${ search.output }", "${params.n}"])
def test_one_reference_is_the_whole_text(text: str) -> None:
    assert is_one_reference(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain",
        "x ${a.output}",
        "${a.output} ${b.output}",
        "${a.output}!",
        "${a.{b}}",
        "  ${a.output}\n",  # spaces are text: the value would be interpolated into them
        "$${a.output}",  # an escape is the literal text
    ],
)
def test_text_around_or_between_references_is_not_one_reference(text: str) -> None:
    assert not is_one_reference(text)


@pytest.mark.parametrize(
    "text", ["${numbers.output}", " ${numbers.output}", "${numbers.output} ", "$${numbers.output}"]
)
def test_one_reference_is_what_the_renderer_gives_its_value_for(text: str) -> None:
    """The checks (a `foreach`, a shell command's split) ask `is_one_reference`; the
    renderer decides the same thing on its own. They must agree, or validate passes
    what the run then fails."""
    assert is_one_reference(text) == (render(text) == [1, 2, 3])


class TestKeys:
    """Keys are taken as written, never substituted: a key that holds a reference is
    refused (it was taken for a dependency by the scan a resume plans with)."""

    def test_a_key_that_holds_a_reference_is_refused(self) -> None:
        with pytest.raises(ReferenceSyntaxError, match=re.escape("key 'x ${a.output}' holds a")):
            Template({"n": 1, "deep": [{"x ${a.output}": "${b.output}"}]})

    def test_escaped_and_plain_keys_are_kept_as_written(self) -> None:
        value = {"$${a.output}": "${numbers.output}", "cost $": 1, 7: "${params.n}"}
        assert render(value) == {"$${a.output}": [1, 2, 3], "cost $": 1, 7: 3}
