"""explain.py: what `durable run --dry-run` says of a plan, before anything runs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from durable import graph, spec
from durable.explain import WIDTH, Explanation, explain, render, to_dict


def task(task_id: str, tool: str = "echo", **fields: Any) -> dict[str, Any]:
    return {"id": task_id, "tool": tool, **fields}


def after(task_id: str, *deps: str, tool: str = "echo", **fields: Any) -> dict[str, Any]:
    return task(task_id, tool, dependencies=list(deps), **fields)


def plan(*tasks: dict[str, Any], **fields: Any) -> graph.Plan:
    return graph.build(spec.from_data({"name": "w", "tasks": list(tasks), **fields}), None)


def lines(explanation: Explanation) -> list[str]:
    text = render(explanation).splitlines()
    assert all(len(line) <= WIDTH for line in text), text
    assert text[-1] == "nothing runs: this was a dry run"
    return text


def level_line(explanation: Explanation, number: int) -> str:
    return next(line for line in lines(explanation) if line.startswith(f"level {number}:"))


def test_a_chain_runs_one_task_per_level() -> None:
    e = explain(plan(task("a"), after("b", "a"), after("c", "b"), max_concurrency=4))
    assert [level.tasks for level in e.levels] == [["a"], ["b"], ["c"]]
    assert [(level.width, level.runs, level.at_once) for level in e.levels] == [(1, 1, 1)] * 3
    assert e.critical_path == ["a", "b", "c"]
    assert render(e) == "\n".join(
        [
            "w: 3 tasks in 3 levels, at most 4 at once",
            "to run: 3 tasks",
            "level 0: a  1 task",
            "level 1: b  1 task",
            "level 2: c  1 task",
            "critical path: a -> b -> c (3 tasks)",
            "nothing runs: this was a dry run",
        ]
    )


def test_references_are_edges_too() -> None:
    e = explain(plan(task("a"), task("b", input="${a.output}")))
    assert [level.tasks for level in e.levels] == [["a"], ["b"]]


def test_a_level_wider_than_max_concurrency() -> None:
    wide = [task(f"t{n:02}") for n in range(20)]
    e = explain(plan(*wide, after("end", *(t["id"] for t in wide)), max_concurrency=8))
    level = e.levels[0]
    assert (level.width, level.runs, level.at_once, level.bound_by) == (
        20,
        20,
        8,
        ["max_concurrency"],
    )
    line = level_line(e, 0)
    assert line.startswith("level 0: t00, t01, t02, t03, t04, and 15 more  20 tasks")
    assert line.endswith("  20 tasks, 8 at once (max_concurrency)")
    assert level_line(e, 1) == "level 1: " + "end".ljust(36) + "  1 task"
    assert e.critical_path == ["t00", "end"]


def test_max_concurrency_given_overrides_the_workflows() -> None:
    e = explain(plan(task("a"), task("b"), task("c"), max_concurrency=8), max_concurrency=2)
    assert (e.concurrency, e.workflow_concurrency) == (2, 8)
    assert lines(e)[0] == "w: 3 tasks in 1 level, at most 2 at once (the workflow says 8)"
    assert level_line(e, 0) == "level 0: a, b, c  3 tasks, 2 at once (max_concurrency)"
    with pytest.raises(ValueError, match="at least 1"):
        explain(plan(task("a")), max_concurrency=0)


def test_a_tool_limit_holds_a_level_back() -> None:
    searches = [task(f"s{n}", "web_search") for n in range(10)]
    e = explain(plan(*searches, limits={"web_search": 2}, max_concurrency=8))
    assert lines(e)[0] == "w: 10 tasks in 1 level, at most 8 at once, web_search: 2 at once"
    assert (e.levels[0].at_once, e.levels[0].bound_by) == (2, ["web_search"])
    assert level_line(e, 0).endswith("  10 tasks, 2 at once (web_search limit)")


def test_a_tool_limit_with_other_tools_beside_it() -> None:
    searches = [task(f"s{n}", "web_search") for n in range(10)]
    others = [task(f"e{n}", "shell") for n in range(3)]
    e = explain(plan(*searches, *others, limits={"web_search": 2}, max_concurrency=8))
    assert (e.levels[0].at_once, e.levels[0].bound_by) == (5, ["web_search"])
    # With more of the other tool, max_concurrency is what binds.
    more = [task(f"e{n}", "shell") for n in range(9)]
    e = explain(plan(*searches, *more, limits={"web_search": 2}, max_concurrency=8))
    assert (e.levels[0].at_once, e.levels[0].bound_by) == (8, ["max_concurrency"])
    # A limit above the level's count holds nothing back.
    e = explain(plan(*others, limits={"shell": 5}))
    assert (e.levels[0].at_once, e.levels[0].bound_by) == (3, [])
    assert level_line(e, 0) == "level 0: e0, e1, e2  3 tasks"


def test_two_tool_limits() -> None:
    tasks = [task(f"s{n}", "web_search") for n in range(4)] + [
        task(f"f{n}", "fetch") for n in range(4)
    ]
    e = explain(plan(*tasks, limits={"web_search": 2, "fetch": 1}))
    assert (e.levels[0].at_once, e.levels[0].bound_by) == (3, ["web_search", "fetch"])
    assert level_line(e, 0).endswith("8 tasks, 3 at once (web_search, fetch limits)")


def test_foreach_over_a_literal_list_is_counted() -> None:
    e = explain(
        plan(
            task("tags", "web_search", foreach=["a", "b", "c"], input="${item}"),
            task("report", input="${tags.output}"),
            limits={"web_search": 2},
        )
    )
    (f,) = e.foreach
    assert (f.id, f.over, f.items, f.max_items) == ("tags", None, 3, 10_000)
    assert (e.runs, e.per_item) == (4, [])
    assert (e.levels[0].runs, e.levels[0].at_once) == (3, 2)
    text = lines(e)
    assert "level 0: tags[*]  3 tasks, 2 at once (web_search limit)" in text
    assert "foreach: tags[*] over a list of 3 items" in text
    assert "critical path: tags[*] -> report (2 tasks)" in text


def test_foreach_by_reference_is_counted_at_run_time() -> None:
    e = explain(
        plan(
            task("plan"),
            task("search", "web_search", foreach="${plan.output.queries}", input="${item}"),
            task("note", input="${plan.output}"),
            limits={"web_search": 2},
            max_concurrency=8,
        )
    )
    (f,) = e.foreach
    assert (f.over, f.items) == ("${plan.output.queries}", None)
    assert (e.runs, e.per_item) == (2, ["search"])
    level = e.levels[1]
    assert (level.runs, level.per_item, level.at_once, level.bound_by) == (
        1,
        ["search"],
        3,
        ["web_search"],
    )
    text = lines(e)
    assert text[1] == "to run: 2 tasks + one per item of search[*]"
    assert (
        "level 1: search[*], note  1 task + one per item of search[*], "
        "up to 3 at once (web_search limit)"
    ) in text
    assert (
        "foreach: search[*] over ${plan.output.queries}: count known at run time (max_items 10000)"
    ) in text


def test_a_level_of_only_foreach_by_reference() -> None:
    e = explain(
        plan(task("plan"), task("search", foreach="${plan.output}", input="${item}")),
        max_concurrency=4,
    )
    assert (
        level_line(e, 1)
        == "level 1: search[*]  one task per item, up to 4 at once (max_concurrency)"
    )


def test_when_may_skip_and_so_may_what_needs_it() -> None:
    e = explain(
        plan(
            task("a"),
            task("maybe", input="${a.output}", when="${a.output.deep}"),
            after("needs", "maybe"),
            after("still", "maybe", trigger="none_failed"),
            after("last", "needs"),
        )
    )
    assert (e.when, e.after_when) == (["maybe"], ["needs", "last"])
    text = lines(e)
    assert "may be skipped (when): maybe" in text
    assert "  and so may what needs them: needs, last" in text


def test_retries_and_timeouts() -> None:
    e = explain(plan(task("a", retries=3, timeout=30), task("b", timeout=1.5), task("c")))
    assert (e.retries, e.timeouts) == ({"a": 3}, {"a": 30.0, "b": 1.5})
    text = lines(e)
    assert "retries: a (3)" in text
    assert "timeouts: a (30 s), b (1.5 s)" in text


def test_critical_path_of_a_diamond_and_a_longer_branch() -> None:
    diamond = [task("a"), after("b", "a"), after("c", "a"), after("d", "b", "c")]
    e = explain(plan(*diamond))
    assert e.critical_path == ["a", "b", "d"]  # of equals, the first in the file
    branch = [after("e", "a"), after("f", "e"), after("g", "f"), after("h", "g")]
    e = explain(plan(*diamond, *branch))
    assert e.critical_path == ["a", "e", "f", "g", "h"]
    assert "critical path: a -> e -> f -> g -> h (5 tasks)" in lines(e)


def test_a_long_critical_path_is_cut_to_fit() -> None:
    chain = [task("step_000")] + [after(f"step_{n:03}", f"step_{n - 1:03}") for n in range(1, 60)]
    e = explain(plan(*chain))
    assert len(e.critical_path) == 60
    line = next(line for line in lines(e) if line.startswith("critical path: "))
    assert line.startswith("critical path: step_000 -> step_001 -> ")
    assert line.endswith(" -> ... (55 more) -> step_059 (60 tasks)")


def test_cached_tasks_are_not_work() -> None:
    p = plan(
        task("a"),
        after("b", "a"),
        after("c", "a"),
        after("d", "b", "c"),
        task("tags", foreach=["x", "y", "z"], input="${item}"),
        max_concurrency=8,
    )
    e = explain(
        p,
        cached={
            "d": "run 3f9a attempt 1",
            "b": "run 3f9a attempt 2",
            "tags[2]": "run 77 attempt 1",
        },
    )
    assert list(e.cached) == ["b", "d", "tags[2]"]  # plan order
    assert e.runs == 2 + 2
    assert [(level.runs, level.cached) for level in e.levels] == [
        (1 + 2, ["tags[2]"]),
        (1, ["b"]),
        (0, ["d"]),
    ]
    assert e.critical_path == ["a", "c"]
    assert e.foreach[0].cached == 1
    text = lines(e)
    assert text[1] == "to run: 4 tasks; 3 from cache"
    assert "level 1: b, c        1 task; 1 from cache" in text
    assert "level 2: d           nothing to run; 1 from cache" in text
    assert "foreach: tags[*] over a list of 3 items; 1 from cache" in text
    assert text[-5:] == [
        "from cache, not run:",
        "  b: run 3f9a attempt 2",
        "  d: run 3f9a attempt 1",
        "  tags[2]: run 77 attempt 1",
        "nothing runs: this was a dry run",
    ]


def test_cached_foreach_task_and_its_instances() -> None:
    p = plan(task("plan"), task("search", foreach="${plan.output}", input="${item}"))
    whole = explain(p, cached={"search": "run 1 attempt 1", "search[0]": "run 1 attempt 1"})
    assert whole.cached == {"search": "run 1 attempt 1"}  # the instance is in it
    assert (whole.per_item, whole.foreach[0].from_cache) == ([], True)
    assert "foreach:" not in render(whole)
    assert "  search[*]: run 1 attempt 1" in lines(whole)
    some = explain(p, cached={"search[4]": "run 1 attempt 1"})
    assert (some.per_item, some.foreach[0].cached) == (["search"], 1)


def test_every_task_cached() -> None:
    e = explain(plan(task("a"), after("b", "a")), cached={"a": "x", "b": "y"})
    assert (e.runs, e.critical_path) == (0, [])
    text = lines(e)
    assert text[1] == "to run: nothing to run; 2 from cache"
    assert "critical path: none (nothing to run)" in text


def test_cached_ids_must_be_tasks_of_the_plan() -> None:
    p = plan(task("a"), task("tags", foreach=[1, 2], input="${item}"))
    with pytest.raises(ValueError, match="'zz' is no task"):
        explain(p, cached={"zz": "x"})
    with pytest.raises(ValueError, match="'a\\[0\\]' is no task"):
        explain(p, cached={"a[0]": "x"})  # no foreach, so no instances
    with pytest.raises(ValueError, match="has 2 items"):
        explain(p, cached={"tags[2]": "x"})


def test_many_cached_tasks_are_counted_past_ten() -> None:
    p = plan(*(task(f"t{n:02}") for n in range(13)))
    e = explain(p, cached={f"t{n:02}": f"run r attempt {n}" for n in range(13)})
    text = lines(e)
    assert text[-3:] == [
        "  t09: run r attempt 9",
        "  and 3 more",
        "nothing runs: this was a dry run",
    ]


def test_levels_align_past_ten() -> None:
    chain = [task("s0")] + [after(f"s{n}", f"s{n - 1}") for n in range(1, 11)]
    text = lines(explain(plan(*chain)))
    assert "level 0:  s0   1 task" in text
    assert "level 10: s10  1 task" in text


def test_many_levels_are_cut() -> None:
    chain = [task("s0")] + [after(f"s{n}", f"s{n - 1}") for n in range(1, 100)]
    text = lines(explain(plan(*chain)))
    levels = [line for line in text if line.startswith("level ")]
    assert len(levels) == 40
    assert levels[34] == "level 34: s34  1 task"
    assert text[text.index(levels[34]) + 1] == "... and 60 more levels"
    assert levels[35] == "level 95: s95  1 task"
    assert levels[39] == "level 99: s99  1 task"


def test_to_dict_for_json() -> None:
    p = plan(
        task("plan"),
        task("search", "web_search", foreach="${plan.output}", input="${item}", retries=2),
        after("report", "search", when="${search.output}"),
        limits={"web_search": 2},
        max_concurrency=4,
    )
    data = to_dict(explain(p, cached={"plan": "run 3f9a attempt 1"}))
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "workflow": "w",
        "concurrency": 4,
        "workflow_concurrency": 4,
        "limits": {"web_search": 2},
        "tasks": 3,
        "runs": 1,
        "per_item": ["search"],
        "levels": [
            {
                "index": 0,
                "tasks": ["plan"],
                "width": 1,
                "runs": 0,
                "per_item": [],
                "cached": ["plan"],
                "at_once": 0,
                "bound_by": [],
            },
            {
                "index": 1,
                "tasks": ["search"],
                "width": 1,
                "runs": 0,
                "per_item": ["search"],
                "cached": [],
                "at_once": 2,
                "bound_by": ["web_search"],
            },
            {
                "index": 2,
                "tasks": ["report"],
                "width": 1,
                "runs": 1,
                "per_item": [],
                "cached": [],
                "at_once": 1,
                "bound_by": [],
            },
        ],
        "critical_path": ["search", "report"],
        "foreach": [
            {
                "id": "search",
                "over": "${plan.output}",
                "items": None,
                "max_items": 10_000,
                "cached": 0,
                "from_cache": False,
            }
        ],
        "when": ["report"],
        "after_when": [],
        "retries": {"search": 2},
        "timeouts": {},
        "cached": {"plan": "run 3f9a attempt 1"},
    }
