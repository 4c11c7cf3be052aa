"""The research example's tools: an offline search, a calculator and a summariser.

They are real, not stubs, so that `durable run` does real work without a network:
`web_search` ranks a small corpus shipped next to this file with BM25, `calculate`
evaluates arithmetic with durable's own safe expression language, and
`summarize_results` builds an extractive summary from the search results. All three
are plain sync functions: durable runs them in its thread pool.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import durable
from durable.expr import parse

CORPUS = Path(__file__).resolve().parent / "corpus"

# BM25's two knobs, at the values most search engines ship with: k1 saturates the
# weight of a repeated term, b normalises for document length.
K1 = 1.5
B = 0.75

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Words too common to say what a text is about; they would otherwise dominate summaries.
_STOPWORD_TEXT = """a an and are as at be been before but by can do does each for from has have how
    if in into is it its itself more most much no not of on one only or so some such than
    that the their them then there these they this to too under until up was were what
    when where whether which while who why will with without would you your"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def tokenize(text: str) -> list[str]:
    """Lowercase words and numbers; punctuation and markdown are dropped."""
    return _WORD.findall(text.lower())


def sentences(text: str) -> list[str]:
    """Split prose into sentences at `.`, `!` or `?` followed by whitespace."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


class Document:
    """One corpus file: its title (the `# ` heading), its paragraphs and its terms."""

    def __init__(self, path: Path) -> None:
        lines = path.read_text(encoding="utf-8").strip().splitlines()
        first = lines[0] if lines else ""
        self.title = first.removeprefix("# ").strip() if first.startswith("# ") else path.stem
        body = "\n".join(lines[1:] if first.startswith("# ") else lines)
        self.paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if p.strip()]
        self.path = path.relative_to(CORPUS.parent).as_posix()
        self.terms = Counter(tokenize(self.title + " " + body))
        self.length = sum(self.terms.values())


def load_corpus(folder: Path = CORPUS) -> list[Document]:
    return [Document(path) for path in sorted(folder.glob("*.md"))]


def _context() -> durable.TaskContext | None:
    """The tool call's context, or None when a tool is called directly (in a test)."""
    try:
        return durable.current_context()
    except RuntimeError:
        return None


@durable.tool
def web_search(query: str, top_k: int = 3) -> list[dict[str, Any]]:
    """Rank the corpus against `query` with BM25; return the `top_k` best, best first.

    Each hit is `{"title", "path", "score", "snippet"}`; the snippet is the paragraph
    that matches the query best, in whole sentences, so a summariser can quote it.
    A query that matches nothing returns an empty list: no results is an answer, not
    a failure. The corpus is re-read on each call; it is small and may be edited.
    """
    documents = load_corpus()
    query_terms = set(tokenize(query))
    if not documents or not query_terms or top_k <= 0:
        return []
    count = len(documents)
    average_length = sum(d.length for d in documents) / count
    idf = {}
    for term in query_terms:
        df = sum(1 for d in documents if term in d.terms)
        idf[term] = math.log(1 + (count - df + 0.5) / (df + 0.5))

    ctx = _context()
    scored = []
    for number, doc in enumerate(documents):
        if ctx is not None:
            ctx.progress(number / count, f"ranking {doc.title}")  # shown live by `durable run`
        score = 0.0
        for term in query_terms:
            tf = doc.terms.get(term, 0)
            if tf:
                norm = K1 * (1 - B + B * doc.length / average_length)
                score += idf[term] * tf * (K1 + 1) / (tf + norm)
        if score > 0:
            scored.append((score, doc))
    scored.sort(key=lambda hit: (-hit[0], hit[1].title))
    if ctx is not None:
        ctx.log.info("%d of %d notes match %r", len(scored), count, query)  # `durable log --task`
    return [
        {
            "title": doc.title,
            "path": doc.path,
            "score": round(score, 4),
            "snippet": _best_paragraph(doc, idf),
        }
        for score, doc in scored[:top_k]
    ]


def _best_paragraph(doc: Document, idf: dict[str, float]) -> str:
    """The paragraph with the most query weight; the first one breaks ties."""
    if not doc.paragraphs:
        return ""
    weights = [sum(idf.get(term, 0.0) for term in tokenize(p)) for p in doc.paragraphs]
    return doc.paragraphs[weights.index(max(weights))]


@durable.tool
def calculate(expression: str) -> dict[str, Any]:
    """Evaluate arithmetic such as `6 * 7` and return `{"expression", "value"}`.

    It uses durable's `when` language rather than `eval`, so `__import__('os')` is
    refused with an `ExpressionError` instead of being run. References are refused
    too (`ValueError`): durable substitutes them before the tool is called, so a
    `${` that reaches here was escaped on purpose and is not arithmetic. So are
    results that are not numbers (comparisons, text).
    """
    if "${" in expression:
        raise ValueError(f"calculate: references are not arithmetic: {expression!r}")
    value = parse(expression).evaluate()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"calculate: {expression!r} is not arithmetic (got {value!r})")
    return {"expression": expression, "value": value}


@durable.tool
def summarize_results(
    results: list[dict[str, Any]] | None, note: str = "", max_sentences: int = 3
) -> dict[str, Any]:
    """An extractive summary of search results: `{"summary", "sources", "note"}`.

    Extractive because it only quotes: the sentences of the results' snippets are
    scored by how many of the results' most frequent content words they contain
    (normalised by length, so long sentences do not win by size), and the best
    `max_sentences` are kept in their original order. It never invents text, so
    every sentence of the summary can be traced to a source. `results` may be null
    (the search was skipped); the summary is then empty.
    """
    results = results or []
    passages: list[str] = []
    sources: list[str] = []
    for hit in results:
        title = str(hit.get("title", "")).strip()
        if title and title not in sources:
            sources.append(title)
        for sentence in sentences(str(hit.get("snippet", ""))):
            if sentence not in passages:
                passages.append(sentence)

    content = [[w for w in tokenize(s) if w not in STOPWORDS and len(w) > 2] for s in passages]
    frequency = Counter(word for words in content for word in set(words))
    keywords = {word for word, _ in frequency.most_common(10)}

    def score(index: int) -> float:
        words = content[index]
        if not words:
            return 0.0
        return sum(frequency[w] for w in words if w in keywords) / math.sqrt(len(words))

    ranked = sorted(range(len(passages)), key=lambda i: (-score(i), i))
    chosen = sorted(ranked[: max(max_sentences, 0)])
    return {
        "summary": " ".join(passages[i] for i in chosen),
        "sources": sources,
        "note": note,
    }
