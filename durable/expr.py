"""The `when` language: a small, safe expression language. Never `eval`.

What it has: literals (numbers, strings, `true`/`false`/`null`, lists), references
(`${task.output.n}`), comparisons (`== != < <= > >=`, chained), `in` / `not in`,
`and` / `or` / `not`, arithmetic (`+ - * / // % **`) and parentheses.

What it refuses, at parse time: names, attribute access, calls, subscripts, lambdas,
comprehensions, f-strings, anything else Python's grammar allows. The text is parsed
with `ast` and compiled into a tree of closures from a whitelist of node types, so
there is no path to Python's internals. Arithmetic is on numbers only (plus string
concatenation), and `**` is refused when the result would exceed 10,000 bits.
Sub-expressions without references are evaluated at parse time, so `9**9**9`, or
`${a.output} > 1/0`, is a validation error, not a hung or failed run.
Expressions nested deeper than `MAX_DEPTH` are refused too, so evaluating one can
never exhaust the stack.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import warnings
from collections.abc import Callable
from typing import Any

from durable.errors import EvaluationError, ExpressionError, ReferenceSyntaxError
from durable.refs import _REF, Ref, Scope, as_text, parse_ref, resolve

MAX_LENGTH = 2000
MAX_POWER_BITS = 10_000
# Evaluation recurses once per level; a shallow cap keeps it far from Python's limit
# wherever the engine happens to evaluate it.
MAX_DEPTH = 100

_PLACEHOLDER = "_durable_ref_{}_"
_PLACEHOLDER_RE = re.compile(r"_durable_ref_(\d+)_")
_WORDS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_EMPTY_SCOPE = Scope(params={}, run_id="", outputs={})

Node = Callable[[Scope], Any]


class Expression:
    """A parsed `when` expression. `refs` are the references it reads."""

    __slots__ = ("_node", "refs", "source")

    def __init__(self, source: str, node: Node, refs: tuple[Ref, ...]) -> None:
        self.source = source
        self._node = node
        self.refs = refs

    def evaluate(self, scope: Scope | None = None) -> Any:
        return self._node(scope or _EMPTY_SCOPE)

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def parse(source: str) -> Expression:
    """Parse and compile an expression; raise `ExpressionError` naming what is refused."""
    if not isinstance(source, str):
        raise ExpressionError(f"expression must be text, got {type(source).__name__}")
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    if _PLACEHOLDER_RE.search(source):
        raise ExpressionError(f"'{source}': names are not allowed")
    refs: list[Ref] = []

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            raise ExpressionError(f"'{source}': '$${{' escapes are not allowed in expressions")
        try:
            refs.append(parse_ref(match.group(2)))
        except ReferenceSyntaxError as exc:
            raise ExpressionError(str(exc)) from None
        return _PLACEHOLDER.format(len(refs) - 1)

    python = _REF.sub(substitute, source)
    if "${" in python:
        raise ExpressionError(f"'{source}': '${{' is never closed")
    try:
        with warnings.catch_warnings():  # Python's own SyntaxWarnings ("invalid decimal
            warnings.simplefilter("ignore")  # literal") would reach the user's stderr
            tree = ast.parse(python.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"'{source}': syntax error ({exc.msg})") from None
    except (RecursionError, MemoryError, ValueError):
        raise ExpressionError(f"'{source}': too deeply nested or not parseable") from None
    if _depth(tree.body) > MAX_DEPTH:
        raise ExpressionError(f"'{source}': nested deeper than {MAX_DEPTH} levels")
    compiler = _Compiler(source, tuple(refs))
    try:
        node = compiler.compile(tree.body)
    except RecursionError:
        raise ExpressionError(f"'{source}': too deeply nested") from None
    return Expression(source, node, tuple(refs))


_BINARY: dict[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", operator.pow),
}

_COMPARE: dict[type[ast.cmpop], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Eq: ("==", operator.eq),
    ast.NotEq: ("!=", operator.ne),
    ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge),
    ast.In: ("in", lambda a, b: operator.contains(b, a)),
    ast.NotIn: ("not in", lambda a, b: not operator.contains(b, a)),
}

_REFUSED: dict[type[ast.AST], str] = {
    ast.Call: "function calls",
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts (write ${task.output.items[0]} instead)",
    ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.JoinedStr: "f-strings",
    ast.NamedExpr: "assignment expressions",
    ast.IfExp: "conditional expressions",
    ast.Starred: "starred expressions",
    ast.Dict: "dict literals",
    ast.Set: "set literals",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.Slice: "slices",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Compiler:
    def __init__(self, source: str, refs: tuple[Ref, ...]) -> None:
        self.source = source
        self.refs = refs

    def refuse(self, what: str) -> ExpressionError:
        return ExpressionError(f"'{self.source}': {what} are not allowed")

    def compile(self, node: ast.AST) -> Node:
        return self._compile(node)[0]

    def _compile(self, node: ast.AST) -> tuple[Node, bool]:
        """Return (closure, is_constant). Every constant part is folded now, whatever
        holds references beside it, so that `9**9**9` or `${a.output} > 1/0` fails
        validation, not the run."""
        compiled, constant = self._compile_node(node)
        if constant and not isinstance(node, ast.Constant | ast.Name):
            try:
                value = compiled(_EMPTY_SCOPE)
            except EvaluationError as exc:
                raise ExpressionError(exc.message) from None
            return (lambda scope: value), True
        return compiled, constant

    def _compile_node(self, node: ast.AST) -> tuple[Node, bool]:
        match node:
            case ast.Constant(value=value):
                if value is not None and not isinstance(value, bool | int | float | str):
                    raise self.refuse(f"{type(value).__name__} literals")
                if isinstance(value, str) and _PLACEHOLDER_RE.search(value):
                    return self._interpolated(value), False
                return (lambda scope: value), True
            case ast.Name(id=name):
                if name in _WORDS:
                    word = _WORDS[name]
                    return (lambda scope: word), True
                match = _PLACEHOLDER_RE.fullmatch(name)
                if not match:
                    raise ExpressionError(
                        f"'{self.source}': unknown name '{name}' (use a reference like ${{task.output}}, "
                        "or quote text)"
                    )
                ref = self.refs[int(match.group(1))]
                return (lambda scope: resolve(ref, scope)), False
            case ast.BoolOp(op=op, values=values):
                parts = [self._compile(v) for v in values]
                nodes = [p for p, _ in parts]
                if isinstance(op, ast.And):
                    return self._and(nodes), all(c for _, c in parts)
                return self._or(nodes), all(c for _, c in parts)
            case ast.UnaryOp(op=op, operand=operand):
                inner, constant = self._compile(operand)
                if isinstance(op, ast.Not):
                    return (lambda scope: not inner(scope)), constant
                if isinstance(op, ast.USub | ast.UAdd):
                    sign = -1 if isinstance(op, ast.USub) else 1
                    return self._signed(inner, sign), constant
                raise self.refuse("bitwise operators")
            case ast.BinOp(left=left, op=op, right=right):
                if type(op) not in _BINARY:
                    raise self.refuse("bitwise and matrix operators")
                symbol, function = _BINARY[type(op)]
                (lhs, lc), (rhs, rc) = self._compile(left), self._compile(right)
                return self._binary(symbol, function, lhs, rhs), lc and rc
            case ast.Compare(left=left, ops=ops, comparators=comparators):
                first, constant = self._compile(left)
                chain = []
                for op, right in zip(ops, comparators, strict=True):
                    if type(op) not in _COMPARE:
                        raise self.refuse("identity comparisons ('is', 'is not')")
                    symbol, function = _COMPARE[type(op)]
                    rhs, rc = self._compile(right)
                    constant = constant and rc
                    chain.append((symbol, function, rhs))
                return self._compare(first, chain), constant
            case ast.List(elts=elements) | ast.Tuple(elts=elements):
                parts = [self._compile(e) for e in elements]
                items = [p for p, _ in parts]
                return (lambda scope: [item(scope) for item in items]), all(c for _, c in parts)
        for kind, what in _REFUSED.items():
            if isinstance(node, kind):
                raise self.refuse(what)
        raise self.refuse(f"{type(node).__name__} expressions")

    def _interpolated(self, text: str) -> Node:
        pieces = _PLACEHOLDER_RE.split(text)
        refs = self.refs

        def render(scope: Scope) -> str:
            out = []
            for i, piece in enumerate(pieces):
                out.append(as_text(resolve(refs[int(piece)], scope)) if i % 2 else piece)
            return "".join(out)

        return render

    @staticmethod
    def _and(nodes: list[Node]) -> Node:
        def evaluate(scope: Scope) -> Any:
            value: Any = True
            for node in nodes:
                value = node(scope)
                if not value:
                    return value
            return value

        return evaluate

    @staticmethod
    def _or(nodes: list[Node]) -> Node:
        def evaluate(scope: Scope) -> Any:
            value: Any = False
            for node in nodes:
                value = node(scope)
                if value:
                    return value
            return value

        return evaluate

    def _signed(self, inner: Node, sign: int) -> Node:
        def evaluate(scope: Scope) -> Any:
            value = inner(scope)
            if not _is_number(value):
                raise EvaluationError(f"'{self.source}': cannot negate a {type(value).__name__}")
            return sign * value

        return evaluate

    def _binary(
        self, symbol: str, function: Callable[[Any, Any], Any], lhs: Node, rhs: Node
    ) -> Node:
        source = self.source

        def evaluate(scope: Scope) -> Any:
            a, b = lhs(scope), rhs(scope)
            numbers = _is_number(a) and _is_number(b)
            if not numbers and not (symbol == "+" and isinstance(a, str) and isinstance(b, str)):
                raise EvaluationError(
                    f"'{source}': cannot apply '{symbol}' to {type(a).__name__} and {type(b).__name__}"
                )
            if symbol == "**":
                _check_power(source, a, b)
            try:
                result = function(a, b)
            except ZeroDivisionError:
                raise EvaluationError(f"'{source}': division by zero") from None
            except OverflowError:
                raise EvaluationError(f"'{source}': number too large") from None
            if isinstance(result, complex):
                raise EvaluationError(f"'{source}': {a} {symbol} {b} is not a real number")
            return result

        return evaluate

    def _compare(
        self, first: Node, chain: list[tuple[str, Callable[[Any, Any], Any], Node]]
    ) -> Node:
        source = self.source

        def evaluate(scope: Scope) -> bool:
            left = first(scope)
            for symbol, function, rhs in chain:
                right = rhs(scope)
                try:
                    if not function(left, right):
                        return False
                except TypeError:
                    raise EvaluationError(
                        f"'{source}': cannot compare {type(left).__name__} {symbol} {type(right).__name__}"
                    ) from None
                left = right
            return True

        return evaluate


def _depth(tree: ast.AST) -> int:
    """How deeply the syntax tree nests, counted without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _check_power(source: str, base: Any, exponent: Any) -> None:
    if abs(exponent) <= 1 or abs(base) <= 1:
        return
    bits = abs(exponent) * math.log2(abs(base))
    if bits > MAX_POWER_BITS:
        raise EvaluationError(f"'{source}': exponent too large ({base} ** {exponent})")
