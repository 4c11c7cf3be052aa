"""LangGraph's side of the peers comparison: one workload, one process, one fresh SQLite file.

Run it with the interpreter of LangGraph's own virtualenv (setup.sh); compare.py does:

    .venvs/langgraph/bin/python langgraph_side.py wide --db /tmp/x/langgraph.sqlite
    .venvs/langgraph/bin/python langgraph_side.py crash --db ... --lines FILE   # then again

It prints one JSON line: the workload's seconds, counted around `graph.invoke` alone
(the graph is built and compiled, and the `SqliteSaver` set up, before the clock
starts), and the PRAGMAs in force on the saver's connection.

How each workload is written, as LangGraph's docs write such work (a `StateGraph`,
checkpointed by `SqliteSaver` with `durability="sync"`: each task's writes are saved
as it finishes, and each step's checkpoint before the next step starts):

- wide, io, crash: map-reduce with `Send`. A conditional edge from START sends N
  packets to one node (`work`, `nap` or `append`), which runs once per packet, at
  most J at a time (`max_concurrency` in the config); each returns `{"done": [i]}`,
  gathered by an `operator.add` reducer. All N tasks are one superstep.
- chain: N nodes in a sequence, each returning the state's `n` plus one: one
  superstep, and so one checkpoint, per task.

Crash recovery is LangGraph's own: the same graph invoked with `None` and the same
`thread_id` continues from the last checkpoint, and a task whose writes were saved
before the kill is not run again.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import operator
import os
import sqlite3
import time
from typing import Annotated, Any, TypedDict

from workloads import side_parser, tasks_and_jobs

THREAD = "peers"


class State(TypedDict, total=False):
    n: int
    done: Annotated[list[int], operator.add]


def build(workload: str, tasks: int, sleep: float, lines: str | None) -> Any:
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    graph = StateGraph(State)
    if workload == "chain":

        def step(state: State) -> State:
            return {"n": state["n"] + 1}

        names = [f"t{i}" for i in range(tasks)]
        for name in names:
            graph.add_node(name, step)
        graph.add_edge(START, names[0])
        for a, b in itertools.pairwise(names):
            graph.add_edge(a, b)
        graph.add_edge(names[-1], END)
        return graph

    def work(packet: dict) -> State:
        return {"done": [packet["i"]]}

    def nap(packet: dict) -> State:
        time.sleep(sleep)
        return {"done": [packet["i"]]}

    def append(packet: dict) -> State:
        with open(lines, "a") as f:  # type: ignore[arg-type]
            f.write(f"{packet['i']:04d}\n")
        return {"done": [packet["i"]]}

    node = {"wide": work, "io": nap, "crash": append}[workload]

    def fan_out(state: State) -> list:  # of Send (not named: LangGraph reads the hint)
        return [Send(node.__name__, {"i": i}) for i in range(state["n"])]

    graph.add_node(node.__name__, node)
    graph.add_conditional_edges(START, fan_out, [node.__name__])
    graph.add_edge(node.__name__, END)
    return graph


def main() -> None:
    parser = side_parser(
        __doc__, db_help="the SqliteSaver's database file", jobs_help="max_concurrency"
    )
    args = parser.parse_args()
    tasks, jobs = tasks_and_jobs(args)

    from langgraph.checkpoint.sqlite import SqliteSaver

    recovering = args.workload == "crash" and os.path.exists(args.db)
    # As SqliteSaver.from_conn_string opens it.
    conn = sqlite3.connect(args.db, check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    app = build(args.workload, tasks, args.sleep, args.lines).compile(checkpointer=saver)
    config = {
        "configurable": {"thread_id": THREAD},
        "max_concurrency": jobs,
        "recursion_limit": tasks + 10,
    }
    started = time.perf_counter()
    state = app.invoke(
        None if recovering else {"n": 0 if args.workload == "chain" else tasks},
        config,
        durability="sync",
    )
    seconds = time.perf_counter() - started
    if args.workload == "chain":
        assert state["n"] == tasks, state
    else:
        assert sorted(state["done"]) == list(range(tasks)), len(state["done"])

    report = {
        "tool": "langgraph",
        "version": importlib.metadata.version("langgraph"),
        "checkpoint_sqlite_version": importlib.metadata.version("langgraph-checkpoint-sqlite"),
        "workload": args.workload,
        "tasks": tasks,
        "jobs": jobs,
        "seconds": round(seconds, 4),
        "recovered": recovering,
        "pragmas": {
            name: conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("journal_mode", "synchronous", "busy_timeout")
        },
    }
    print(json.dumps(report), flush=True)
    conn.close()


if __name__ == "__main__":
    main()
