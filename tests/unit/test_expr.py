"""expr.py: the `when` language. What it computes, and everything it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from durable import expr
from durable.errors import EvaluationError, ExpressionError, ResolutionError
from durable.expr import parse
from durable.refs import Scope

SCOPE = Scope(
    params={"limit": 10, "mode": "fast", "tags": ["a", "b"]},
    run_id="run-1",
    outputs={
        "a": {"output": "text", "n": 5, "items": [1, 2, 3], "flag": True, "none": None},
        "s": "a string",
        "zero": 0,
        "skipped": None,
    },
)


def evaluate(source: str, scope: Scope = SCOPE) -> Any:
    return parse(source).evaluate(scope)


def refused(source: str) -> str:
    with pytest.raises(ExpressionError) as info:
        parse(source)
    return str(info.value)


class TestLiterals:
    @pytest.mark.parametrize(
        ("source", "value"),
        [
            ("1", 1),
            ("-2.5", -2.5),
            ("+3", 3),
            ("'text'", "text"),
            ('"text"', "text"),
            ("true", True),
            ("false", False),
            ("null", None),
            ("True", True),
            ("None", None),
            ("[1, 'two', null]", [1, "two", None]),
            ("(1, 2)", [1, 2]),
            ("[]", []),
        ],
    )
    def test_literal(self, source: str, value: Any) -> None:
        assert evaluate(source) == value
        assert type(evaluate(source)) is type(value)

    def test_evaluate_without_scope(self) -> None:
        assert parse("1 + 1").evaluate() == 2


class TestOperators:
    @pytest.mark.parametrize(
        ("source", "value"),
        [
            ("1 < 2", True),
            ("2 <= 2", True),
            ("3 > 4", False),
            ("3 >= 4", False),
            ("1 == 1.0", True),
            ("'a' != 'b'", True),
            ("null == null", True),
            ("[1, 2] == [1, 2]", True),
            ("1 < 2 < 3", True),
            ("1 < 3 < 2", False),
            ("3 > 2 > 2", False),
            ("1 == 1 == 1", True),
            ("1 < 2 > 0", True),
            ("true and false", False),
            ("true or false", True),
            ("not true", False),
            ("not 0", True),
            ("1 and 2", 2),
            ("0 or 'x'", "x"),
            ("not (1 < 2 and 2 < 1)", True),
            ("1 + 2 * 3", 7),
            ("(1 + 2) * 3", 9),
            ("7 - 10", -3),
            ("7 / 2", 3.5),
            ("7 // 2", 3),
            ("7 % 3", 1),
            ("2 ** 10", 1024),
            ("2 ** -1", 0.5),
            ("-(3 - 5)", 2),
            ("'ab' + 'cd'", "abcd"),
            ("1 in [1, 2]", True),
            ("3 not in [1, 2]", True),
            ("'ell' in 'hello'", True),
            ("'z' not in 'hello'", True),
            ("((((1))))", 1),
        ],
    )
    def test_operator(self, source: str, value: Any) -> None:
        assert evaluate(source) == value

    def test_and_short_circuits_before_an_error(self) -> None:
        assert evaluate("false and ${a.output.missing}") is False

    def test_or_short_circuits_before_an_error(self) -> None:
        assert evaluate("true or ${a.output.missing}") is True

    def test_chained_comparison_stops_at_first_false(self) -> None:
        assert evaluate("2 < 1 < ${a.output.missing}") is False


class TestReferences:
    def test_reference_values(self) -> None:
        assert evaluate("${a.output.n} > 4") is True
        assert evaluate("${a.output.n} * 2 == 10") is True
        assert evaluate("${a.output.flag}") is True
        assert evaluate("${params.mode} == 'fast'") is True
        assert evaluate("${run.id} == 'run-1'") is True

    def test_in_with_references(self) -> None:
        assert evaluate("2 in ${a.output.items}") is True
        assert evaluate("'c' in ${params.tags}") is False
        assert evaluate("'n' in ${a.output}") is True

    def test_skipped_output_is_null(self) -> None:
        assert evaluate("${skipped.output} == null") is True

    def test_refs_are_recorded(self) -> None:
        expression = parse("${a.output.n} > ${params.limit} or ${b.output}")
        assert [str(r) for r in expression.refs] == [
            "${a.output.n}",
            "${params.limit}",
            "${b.output}",
        ]
        assert [r.name for r in expression.refs] == ["a", "limit", "b"]

    def test_reference_inside_quotes_is_interpolated(self) -> None:
        assert evaluate("'n=${a.output.n}' == 'n=5'") is True
        assert evaluate("'${params.mode}-${a.output.items}'") == "fast-[1,2,3]"
        assert evaluate("'${a.output.none}' == 'null'") is True

    def test_same_reference_twice(self) -> None:
        assert evaluate("${a.output.n} + ${a.output.n}") == 10

    def test_evaluates_against_each_scope(self) -> None:
        expression = parse("${x.output} > 1")
        assert expression.evaluate(Scope(params={}, run_id="r", outputs={"x": 2})) is True
        assert expression.evaluate(Scope(params={}, run_id="r", outputs={"x": 0})) is False

    def test_missing_reference_is_a_resolution_error(self) -> None:
        with pytest.raises(ResolutionError, match=r"missing key 'nope'"):
            evaluate("${a.output.nope} == 1")

    def test_source_is_kept(self) -> None:
        assert parse("1 < 2").source == "1 < 2"
        assert repr(parse("1 < 2")) == "Expression('1 < 2')"


class TestRefused:
    @pytest.mark.parametrize(
        ("source", "reason"),
        [
            ("__import__('os')", "function calls are not allowed"),
            ("len([1])", "function calls are not allowed"),
            ("().__class__", "attribute access are not allowed"),
            ("().__class__.__bases__[0].__subclasses__()", "function calls are not allowed"),
            ("x.y", "attribute access are not allowed"),
            ("${a.output}.upper", "attribute access are not allowed"),
            ("lambda: 1", "lambdas are not allowed"),
            ("(lambda: 1) == 1", "lambdas are not allowed"),
            ("[x for x in [1]]", "comprehensions are not allowed"),
            ("{x for x in [1]}", "comprehensions are not allowed"),
            ("{x: 1 for x in [1]}", "comprehensions are not allowed"),
            ("(x for x in [1])", "comprehensions are not allowed"),
            ("[1][0]", "subscripts"),
            ('"a"["__class__"]', "subscripts"),
            ("${a.output.items}[0]", "subscripts"),
            ("[1, 2][0:1]", "subscripts"),
            ("x", "unknown name 'x'"),
            ("__builtins__", "unknown name '__builtins__'"),
            ('f"{1}"', "f-strings are not allowed"),
            ("(y := 1)", "assignment expressions are not allowed"),
            ("1 if true else 2", "conditional expressions are not allowed"),
            ("{1: 2}", "dict literals are not allowed"),
            ("{1}", "set literals are not allowed"),
            ("[*[1]]", "starred expressions are not allowed"),
            ("~1", "bitwise operators are not allowed"),
            ("1 & 2", "bitwise and matrix operators are not allowed"),
            ("1 << 2", "bitwise and matrix operators are not allowed"),
            ("1 is 1", "identity comparisons"),
            ("${a.output} is not null", "identity comparisons"),
            ("b'x'", "bytes literals are not allowed"),
            ("1j", "complex literals are not allowed"),
            ("...", "ellipsis literals are not allowed"),
            ("_durable_ref_0_", "names are not allowed"),
            ("$${a.output}", "'$${' escapes are not allowed"),
            ("${a.output", "'${' is never closed"),
            ("${a.outputs} > 1", "a task reference reads 'a.output', not 'a.outputs'"),
            ("1 <", "syntax error"),
            ("import os", "syntax error"),
            ("1; 2", "syntax error"),
            ("", "syntax error"),
        ],
    )
    def test_refused_at_parse_time(self, source: str, reason: str) -> None:
        assert reason in refused(source)

    def test_message_quotes_the_source(self) -> None:
        assert refused("__import__('os')") == "'__import__('os')': function calls are not allowed"

    @pytest.mark.parametrize("source", ["9**9**9", "2**100000", "10 ** 10 ** 10", "(-3) ** 99999"])
    def test_huge_powers_fail_fast(self, source: str) -> None:
        assert "exponent too large" in refused(source)

    def test_power_at_the_limit_is_allowed(self) -> None:
        assert evaluate("2 ** 10000") == 2**10000
        assert "exponent too large" in refused("2 ** 10001")

    def test_float_overflow(self) -> None:
        assert "number too large" in refused("2.0 ** 10000")

    @pytest.mark.parametrize(
        ("source", "reason"),
        [
            ("${a.output.n} > 2 ** 20000", "exponent too large"),
            ("${a.output.n} > 1 / 0", "division by zero"),
            ("${a.output.n} > 'x' + 1", "cannot apply '+' to str and int"),
            ("[${a.output.n}, -'x']", "cannot negate a str"),
        ],
    )
    def test_a_constant_part_beside_a_reference_is_folded_at_parse_time(
        self, source: str, reason: str
    ) -> None:
        """Only a whole expression without references was folded: these passed
        validation and failed the run."""
        assert reason in refused(source)

    def test_a_folded_part_keeps_its_value(self) -> None:
        assert parse("${a.output.n} < 2 ** 3 + 1").evaluate(SCOPE) is True

    def test_huge_power_of_a_reference_fails_at_run_time(self) -> None:
        expression = parse("${a.output.n} ** 100000 > 1")
        with pytest.raises(EvaluationError, match="exponent too large"):
            expression.evaluate(SCOPE)

    def test_too_long(self) -> None:
        source = "1 + " * (expr.MAX_LENGTH // 4) + "1"
        assert len(source) > expr.MAX_LENGTH
        assert refused(source) == f"expression is longer than {expr.MAX_LENGTH} characters"

    def test_deeply_nested_parentheses(self) -> None:
        assert "too many nested parentheses" in refused("(" * 500 + "1" + ")" * 500)

    @pytest.mark.parametrize(
        "source",
        [
            "not " * 150 + "${a.output.n}",
            "-" * 500 + "${a.output.n}",
            "1 + " * 400 + "1",
            "[" * 150 + "1" + "]" * 150,
        ],
    )
    def test_deep_nesting_is_refused(self, source: str) -> None:
        message = refused(source)
        assert "nested" in message

    def test_moderate_nesting_is_fine(self) -> None:
        assert evaluate("not " * 40 + "${a.output.flag}") is True
        assert evaluate("1 + " * 50 + "1") == 51

    def test_not_text(self) -> None:
        with pytest.raises(ExpressionError, match="expression must be text, got int"):
            parse(5)  # type: ignore[arg-type]


class TestConstantFolding:
    """Sub-expressions without references are computed at parse time."""

    @pytest.mark.parametrize(
        ("source", "reason"),
        [
            ("1 / 0", "division by zero"),
            ("1 // 0", "division by zero"),
            ("1 % 0", "division by zero"),
            ("'a' * 3", "cannot apply '*' to str and int"),
            ("'a' + 1", "cannot apply '+' to str and int"),
            ("-'a'", "cannot negate a str"),
            ("'a' < 1", "cannot compare str < int"),
            ("true + 1", "cannot apply '+' to bool and int"),
        ],
    )
    def test_constant_errors_are_parse_errors(self, source: str, reason: str) -> None:
        assert refused(source) == f"'{source}': {reason}"


class TestEvaluationErrors:
    """Errors that depend on the values references resolve to surface at run time."""

    def error(self, source: str) -> str:
        expression = parse(source)
        with pytest.raises(EvaluationError) as info:
            expression.evaluate(SCOPE)
        return str(info.value)

    def test_compare_string_with_number(self) -> None:
        assert self.error("${a.output} > 1") == "'${a.output} > 1': cannot compare dict > int"
        assert self.error("${s.output} > 1") == "'${s.output} > 1': cannot compare str > int"

    def test_division_by_zero(self) -> None:
        assert self.error("1 / ${zero.output}") == "'1 / ${zero.output}': division by zero"

    def test_string_times_number(self) -> None:
        assert self.error("${s.output} * 2") == "'${s.output} * 2': cannot apply '*' to str and int"

    def test_arithmetic_on_null(self) -> None:
        assert self.error("${skipped.output} + 1") == (
            "'${skipped.output} + 1': cannot apply '+' to NoneType and int"
        )

    def test_list_concatenation_is_refused(self) -> None:
        assert "cannot apply '+' to list and list" in self.error("${a.output.items} + [4]")

    def test_in_on_a_number(self) -> None:
        assert self.error("1 in ${a.output.n}") == "'1 in ${a.output.n}': cannot compare int in int"

    def test_negate_a_string(self) -> None:
        assert self.error("-${s.output}") == "'-${s.output}': cannot negate a str"

    def test_complex_result_is_refused(self) -> None:
        assert "is not a real number" in self.error("(0 - ${a.output.n}) ** 0.5")

    def test_evaluation_error_is_not_an_expression_error(self) -> None:
        assert not issubclass(EvaluationError, ExpressionError)
