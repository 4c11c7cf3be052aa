"""Print the DBOS figures of results_dbos.jsonl (run_dbos.sh's output) as README's tables.

    python bench/peers_pg/summarize.py [bench/peers_pg/results_dbos.jsonl]

A configuration measured more than once (a rerun) shows its last line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def variant(r: dict) -> str:
    parts = [f"poll {r['poll']:g} s"]
    if r.get("prefill"):
        parts.append("prefilled, drain only")
    elif r["enqueue_batch"] > 1:
        parts.append(f"enqueue {r['enqueue_batch']}/tx")
    else:
        parts.append("enqueue 1/tx")
    if r.get("submit_threads", 1) > 1:
        parts.append(f"{r['submit_threads']} submit threads")
    if r.get("async"):
        parts.append("async")
    if r.get("step"):
        parts.append("+ step")
    return ", ".join(parts)


def main() -> None:
    path = Path(
        sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("results_dbos.jsonl")
    )
    rows: dict[tuple, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[(r["workload"], variant(r), r["workers"])] = r
    for workload in ("wide", "io"):
        print(f"\n{workload}:\n")
        print(
            "| configuration | workers | slots | median s | tasks/s | rounds (s) | enqueue s | xacts/task | per worker |"
        )
        print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |")
        for (w, v, n), r in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][2])):
            if w != workload:
                continue
            rounds = ", ".join(f"{s:.2f}" for s in r["rounds"])
            per = " / ".join(str(c) for c in r["per_executor"].values())
            print(
                f"| {v} | {n} | {r['slots']} | {r['seconds']:.2f} | {r['tasks_per_s']:.0f} "
                f"| {rounds} | {r['enqueue_s']:.2f} | {r['commits_per_task']:.2f} | {per} |"
            )


if __name__ == "__main__":
    main()
