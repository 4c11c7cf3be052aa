"""The example tools do real work: search ranks, calculate is safe, summaries quote sources.

Both example folders have a `tools.py`, so each is loaded from its path under a
module name of its own rather than imported by name.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from durable.errors import ExpressionError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_tools(example: str) -> ModuleType:
    name = f"_durable_example_{example}_tools"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / example / "tools.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def research() -> ModuleType:
    return load_tools("research")


@pytest.fixture(scope="module")
def branching() -> ModuleType:
    return load_tools("branching")


# web_search


@pytest.mark.parametrize(
    ("query", "expected_title"),
    [
        ("durable execution", "Durable execution"),
        ("sqlite WAL write-ahead log", "SQLite write-ahead logging"),
        ("idempotency key", "Idempotency keys"),
        ("asyncio semaphore", "Concurrency with asyncio"),
        ("exponential backoff jitter", "Retries and exponential backoff"),
    ],
)
def test_web_search_ranks_the_obvious_document_first(
    research: ModuleType, query: str, expected_title: str
) -> None:
    hits = research.web_search(query)
    assert hits, query
    assert hits[0]["title"] == expected_title


def test_web_search_returns_top_k_hits_best_first(research: ModuleType) -> None:
    hits = research.web_search("durable workflow tasks commit checkpoint", top_k=4)
    assert len(hits) == 4
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(score, float) and score > 0 for score in scores)
    for hit in hits:
        assert set(hit) == {"title", "path", "score", "snippet"}
        assert hit["path"].startswith("corpus/") and hit["path"].endswith(".md")
        assert (EXAMPLES / "research" / hit["path"]).is_file()
        assert hit["snippet"]


def test_web_search_top_k_limits_the_count(research: ModuleType) -> None:
    assert len(research.web_search("the", top_k=1)) <= 1
    assert len(research.web_search("durable workflow tasks commit", top_k=2)) == 2
    assert research.web_search("durable execution", top_k=0) == []


def test_web_search_snippet_is_the_paragraph_about_the_query(research: ModuleType) -> None:
    hit = research.web_search("exponential backoff jitter", top_k=1)[0]
    assert "jitter" in hit["snippet"]


@pytest.mark.parametrize("query", ["", "   ", "zzzqqq xyzzy", "!!! ???"])
def test_web_search_with_nothing_to_match_returns_an_empty_list(
    research: ModuleType, query: str
) -> None:
    assert research.web_search(query) == []


def test_web_search_output_is_serialisable(research: ModuleType) -> None:
    import msgspec

    hits = research.web_search("durable execution")
    assert msgspec.json.decode(msgspec.json.encode(hits)) == hits


# calculate


def test_calculate_evaluates_arithmetic(research: ModuleType) -> None:
    assert research.calculate("6 * 7") == {"expression": "6 * 7", "value": 42}
    assert research.calculate("(1 + 2) ** 3 / 2")["value"] == 13.5
    assert research.calculate("-7 // 2")["value"] == -4


@pytest.mark.parametrize(
    "expression",
    ["__import__('os')", "open('/etc/passwd')", "(1).__class__", "[x for x in [1]]", "9**9**9"],
)
def test_calculate_refuses_anything_but_arithmetic(research: ModuleType, expression: str) -> None:
    with pytest.raises(ExpressionError):
        research.calculate(expression)


@pytest.mark.parametrize("expression", ["${params.x} * 2", "1 < 2", "'a' + 'b'"])
def test_calculate_refuses_references_and_non_numbers(
    research: ModuleType, expression: str
) -> None:
    with pytest.raises(ValueError):
        research.calculate(expression)


# summarize_results


def sentences_of(hits: list[dict[str, Any]]) -> str:
    return " ".join(hit["snippet"] for hit in hits)


def test_summary_quotes_sentences_from_the_results(research: ModuleType) -> None:
    hits = research.web_search("durable execution checkpoint commit", top_k=4)
    result = research.summarize_results(hits, note="total is 42")
    assert result["note"] == "total is 42"
    assert result["summary"]
    source_text = sentences_of(hits)
    quoted = research.sentences(result["summary"])
    assert 1 <= len(quoted) <= 3
    for sentence in quoted:
        assert sentence in source_text
    assert result["sources"] == [hit["title"] for hit in hits]


def test_summary_keeps_the_sentences_on_the_shared_theme(research: ModuleType) -> None:
    hits = [
        {"title": "A", "snippet": "Journals make workflows durable. Cats sleep a lot."},
        {"title": "B", "snippet": "A durable journal survives crashes. Bananas are yellow."},
        {"title": "A", "snippet": "Durable workflows resume from the journal."},
    ]
    result = research.summarize_results(hits, max_sentences=2)
    assert "Cats" not in result["summary"] and "Bananas" not in result["summary"]
    assert result["sources"] == ["A", "B"]


def test_summary_of_no_results_is_empty(research: ModuleType) -> None:
    assert research.summarize_results([]) == {"summary": "", "sources": [], "note": ""}
    assert research.summarize_results(None, note="n")["note"] == "n"


# branching tools


@pytest.mark.parametrize(("size", "n"), [(120, 120), ("50", 50), ("2.5", 2.5), (100.0, 100)])
def test_measure_returns_a_number(branching: ModuleType, size: Any, n: float) -> None:
    assert branching.measure(size) == {"n": n}
    assert type(branching.measure(size)["n"]) is type(n)


def test_report_names_the_branch_that_ran(branching: ModuleType) -> None:
    out = branching.report(big=None, small={"branch": "small", "items": 50})
    assert out["branch"] == "small" and out["items"] == 50
    assert "small" in out["text"]


def test_report_refuses_when_no_branch_ran(branching: ModuleType) -> None:
    with pytest.raises(ValueError, match="exactly one branch"):
        branching.report(big=None, small=None)


def test_example_tools_are_registered(research: ModuleType, branching: ModuleType) -> None:
    from durable.tools import REGISTRY

    for name in ("web_search", "calculate", "summarize_results", "measure", "report"):
        assert name in REGISTRY
