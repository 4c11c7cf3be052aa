"""The research_foreach example's tools: plan, search, summarise, write a report.

Everything is offline and deterministic: the planner splits the question with a few
rules, the search scores the Markdown notes in `corpus/` by keyword counts, and the
summariser only quotes sentences of the notes it was given. The same question always
gives the same report, byte for byte.

Set `RESEARCH_SLOW=SECONDS` to make each search take that long (spread over the
notes, with progress reported as it goes): time enough to watch the `search`
instances run, or to interrupt the run and resume it.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import durable

CORPUS = Path(__file__).resolve().parent / "corpus"

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# "Explain A, B and C" -> A, B, C: a lead-in verb is dropped, the rest split on lists.
_LEAD_IN = re.compile(r"^\s*(?:explain|compare|describe|what (?:is|are)|how do(?:es)?)\s+", re.I)
_LIST = re.compile(r"\s*(?:,|;|\band\b|\bvs\.?|\bversus\b)\s*", re.I)
_STOPWORD_TEXT = "a about an and are as be by do does for how in is it known of on or the to what"
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def words(text: str) -> list[str]:
    """Lowercase words and numbers, without the stopwords."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def _progress(fraction: float, message: str) -> None:
    """Report progress when called by durable; do nothing when called directly (a test)."""
    try:
        context = durable.current_context()
    except RuntimeError:
        return
    context.progress(fraction, message)  # shown live by `durable run` and `durable watch`


@durable.tool
def plan(question: str, max_questions: int = 6) -> dict[str, Any]:
    """Split a question into sub-questions, one per topic it lists: `{"questions": [...]}`.

    "Explain write-ahead logging, event sourcing and fan-out" gives three. A question
    that lists nothing is its own only sub-question.
    """
    text = _LEAD_IN.sub("", question.strip().rstrip("?."))
    topics: list[str] = []
    for topic in _LIST.split(text):
        if topic and topic.lower() not in (t.lower() for t in topics):
            topics.append(topic)
    questions = [f"What is known about {topic}?" for topic in topics[:max_questions]]
    return {"questions": questions or [question]}


@durable.tool
def search_corpus(query: str, position: int, top_k: int = 2) -> dict[str, Any]:
    """The `top_k` notes of the corpus that best match `query`, best first.

    A note scores one point per occurrence of a query word, three in its title. Returns
    `{"position", "question", "hits": [{"title", "path", "score", "text"}]}`; no hit is
    an answer (an empty list), not a failure.
    """
    paths = sorted(CORPUS.glob("*.md"))
    terms = set(words(query))
    pause = float(os.environ.get("RESEARCH_SLOW", "0") or 0) / max(len(paths), 1)
    hits = []
    for number, path in enumerate(paths):
        _progress(number / len(paths), f"reading {path.name}")
        time.sleep(pause)
        title, _, body = path.read_text(encoding="utf-8").partition("\n")
        title = title.removeprefix("# ").strip()
        title_words, body_words = words(title), words(body)
        score = sum(3 * title_words.count(t) + body_words.count(t) for t in terms)
        if score:
            text = " ".join(body.split())
            hits.append(
                {"title": title, "path": f"corpus/{path.name}", "score": score, "text": text}
            )
    hits.sort(key=lambda hit: (-hit["score"], hit["path"]))
    return {"position": position, "question": query, "hits": hits[:top_k]}


@durable.tool
def summarise(
    position: int, question: str, hits: list[dict[str, Any]], max_sentences: int = 2
) -> dict[str, Any]:
    """Quote the `max_sentences` sentences of the hits that share most words with the
    question, in the order they come: `{"position", "question", "summary", "sources"}`.
    """
    terms = set(words(question))
    found = [s for hit in hits for s in _SENTENCE_END.split(hit["text"]) if s]
    ranked = sorted(range(len(found)), key=lambda i: (-len(terms & set(words(found[i]))), i))
    chosen = sorted(ranked[:max_sentences])
    return {
        "position": position,
        "question": question,
        "summary": " ".join(found[i] for i in chosen) or "Nothing in the corpus answers this.",
        "sources": [f"{hit['title']} ({hit['path']})" for hit in hits],
    }


@durable.tool
def write_report(question: str, parts: list[dict[str, Any]], path: str) -> dict[str, Any]:
    """Write the summaries as a Markdown report, one section per sub-question.

    Returns `{"path", "sections"}`. The file is written whole or not at all (a temporary
    file renamed over it), so a run interrupted here and resumed never leaves half a
    report.
    """
    lines = [f"# {question}", ""]
    for part in parts:
        lines += [f"## {part['position'] + 1}. {part['question']}", "", part["summary"], ""]
        if part["sources"]:
            lines += ["Sources: " + "; ".join(part["sources"]), ""]
    target = Path(path).resolve()
    partial = target.with_name(target.name + ".partial")
    partial.write_text("\n".join(lines), encoding="utf-8")
    partial.replace(target)
    return {"path": str(target), "sections": len(parts)}
