"""durable beside DBOS and LangGraph on SQLite: four workloads, interleaved rounds, medians.

    bench/peers/setup.sh                 # once: each peer in a virtualenv of its own
    python3 bench/peers/compare.py       # 5 rounds, a few minutes; --quick: a smoke test

Every measurement is a fresh process on a fresh database file in a fresh folder.
Each round runs every workload once for every tool, one after the other (durable
normal, durable full, DBOS, LangGraph, then the next workload), so a change in the
machine's load touches every tool alike; the tables are the medians over rounds.

Workloads (README.md beside this file says how each tool writes them):

- wide: 1,000 no-op tasks, at most 16 at a time;
- chain: 200 tasks, each taking the previous one's output;
- io: 200 tasks that each sleep 50 ms, at most 50 at a time (ideal 0.2 s);
- crash: 1,000 tasks, at most 16 at a time, each appending its line to a file; the
  process group is SIGKILLed when the file has 500 lines, then the tool's own
  recovery finishes the work. Reported: the recovery's time from process start to
  done, the lines appended twice, and whether all 1,000 lines are there.

Seconds for wide, chain and io are each tool's own run, timed inside its process
after set-up (`durable bench`'s `seconds`; around `graph.invoke` for LangGraph; from
starting the workflow to its result for DBOS). Process start-to-exit times are kept
in the JSON lines too (`wall`); for durable they include `durable bench`'s no-journal
baseline run.

This is a tool for people, not part of CI (no file here is collected by pytest).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from workloads import JOBS, SIZES, SLEEP, WORKLOADS

HERE = Path(__file__).resolve().parent
TOOLS = ("durable-normal", "durable-full", "dbos", "langgraph")
# Measured only when named in --tools: DBOS on a file put in WAL mode first.
EXTRA_TOOLS = ("dbos-wal",)
# A peer: (its virtualenv and script, extra arguments).
PEERS = {"dbos": ("dbos", []), "dbos-wal": ("dbos", ["--wal"]), "langgraph": ("langgraph", [])}
QUICK_SIZES = {"wide": 100, "chain": 20, "io": 20, "crash": 100}
LINE_BYTES = 5  # "0042\n": every tool appends the same fixed-width line


# --------------------------------------------------------------------------- finding things


def find_durable(given: str | None, venvs: Path) -> str:
    """The `durable` command to measure: --durable, $DURABLE, beside this Python, on
    PATH, or the one setup.sh installed into VENVS/durable."""
    candidates = [
        given,
        os.environ.get("DURABLE"),
        str(Path(sys.executable).parent / "durable"),
        shutil.which("durable"),
        str(venvs / "durable" / "bin" / "durable"),
    ]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    sys.exit("no durable command found: give --durable PATH or run bench/peers/setup.sh")


def peer_python(venvs: Path, peer: str) -> str:
    python = venvs / peer / "bin" / "python"
    if not os.access(python, os.X_OK):
        sys.exit(f"no {python}: run bench/peers/setup.sh first (or give --venvs)")
    return str(python)


def versions(durable: str, venvs: Path, tools: list[str]) -> dict[str, str]:
    found = {"python": platform.python_version()}
    out = subprocess.run([durable, "--version"], capture_output=True, text=True).stdout
    found["durable"] = out.strip().rsplit(" ", 1)[-1]
    packages = {
        "dbos": ["dbos", "SQLAlchemy"],
        "langgraph": ["langgraph", "langgraph-checkpoint", "langgraph-checkpoint-sqlite"],
    }
    for peer in ("dbos", "langgraph"):
        if not any(t in PEERS and PEERS[t][0] == peer for t in tools):
            continue
        script = "import importlib.metadata as m, sys; print(' '.join(m.version(p) for p in sys.argv[1:]))"
        got = subprocess.run(
            [peer_python(venvs, peer), "-c", script, *packages[peer]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        found.update(dict(zip(packages[peer], got, strict=True)))
    import sqlite3

    found["sqlite"] = sqlite3.sqlite_version
    return found


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat (zeros where there is none)."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def busy_percent(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[1] - before[1]
    return round(100.0 * (after[0] - before[0]) / total, 1) if total else None


# --------------------------------------------------------------------------- one measurement


class Failed(Exception):
    """A measurement that did not complete (non-zero exit, timeout, wrong output)."""


def run_process(cmd: list[str], cwd: Path, timeout: float) -> tuple[float, str]:
    """Run cmd to completion; (seconds from start to exit, its stdout)."""
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failed(f"timed out after {timeout:g} s: {' '.join(cmd)}") from None
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-5:]
        raise Failed(f"exit {done.returncode}: {' '.join(cmd)}\n  " + "\n  ".join(tail))
    return wall, done.stdout


def last_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise Failed(f"no JSON line in the output: {stdout[-500:]!r}")


def durable_bench(durable: str, durability: str, workload: str, n: int) -> list[str]:
    cmd = [durable, "bench", "--tasks", str(n), "--durability", durability, "--json"]
    if workload == "wide":
        return [*cmd, "--shape", "wide", "-j", str(JOBS["wide"])]
    if workload == "chain":
        return [*cmd, "--shape", "chain"]
    return [*cmd, "--shape", "wide", "-j", str(JOBS["io"]), "--sleep", str(SLEEP)]


def crash_workflow(folder: Path, n: int, lines: Path) -> Path:
    """durable's crash workflow: N independent `append` tasks, in FOLDER with its tools module."""
    shutil.copy(HERE / "durable_append.py", folder / "durable_append.py")
    workflow = {
        "name": "peers-crash",
        "max_concurrency": JOBS["crash"],
        "imports": ["durable_append"],
        "params": {"lines": str(lines)},
        "tasks": [
            {"id": f"a{i:04d}", "tool": "append", "input": {"path": "${params.lines}", "i": i}}
            for i in range(n)
        ],
    }
    path = folder / "crash.json"
    path.write_text(json.dumps(workflow))
    return path


def crash(
    first: list[str], again: list[str], cwd: Path, lines: Path, n: int, timeout: float
) -> dict[str, Any]:
    """Start FIRST, SIGKILL its process group once LINES has n/2 lines, run AGAIN to
    the end; what the file says about it."""
    kill_at = n // 2
    with open(cwd / "first.stderr", "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            first, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
        killed = False
        while proc.poll() is None:
            if lines.exists() and lines.stat().st_size >= kill_at * LINE_BYTES:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            if time.perf_counter() - started > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                raise Failed(f"timed out after {timeout:g} s before {kill_at} lines: {first}")
            time.sleep(0.0005)
        proc.wait()
        to_kill = time.perf_counter() - started
    if not killed:
        # It finished (or failed) before the file reached kill_at lines.
        raise Failed(f"exit {proc.returncode} before {kill_at} lines; see {cwd / 'first.stderr'}")
    at_kill = lines.stat().st_size // LINE_BYTES
    wall, stdout = run_process(again, cwd, timeout)
    found = lines.read_text().split()
    distinct = set(found)
    row: dict[str, Any] = {
        "wall": round(wall, 4),
        "to_kill": round(to_kill, 4),
        "lines_at_kill": at_kill,
        "lines": len(found),
        "distinct": len(distinct),
        "duplicated": len(found) - len(distinct),
        "complete": distinct == {f"{i:04d}" for i in range(n)},
    }
    if "{" in stdout:  # a peer's script: its own time, after set-up
        row["seconds"] = last_json(stdout)["seconds"]
    return row


def measure(
    tool: str,
    workload: str,
    n: int,
    durable: str,
    venvs: Path,
    folder: Path,
    timeout: float,
) -> dict[str, Any]:
    """One measurement of one tool on one workload, in FOLDER (fresh and empty)."""
    lines = folder / "lines.txt"
    if tool.startswith("durable-"):
        durability = tool.split("-", 1)[1]
        if workload != "crash":
            wall, stdout = run_process(
                durable_bench(durable, durability, workload, n), folder, timeout
            )
            got = last_json(stdout)
            return {
                "seconds": got["seconds"],
                "wall": round(wall, 4),
                "commits": got["commits"],
                "loop": got["loop"],
            }
        journal = folder / "journal.db"
        common = ["--db", str(journal), "--durability", durability, "-q"]
        workflow = crash_workflow(folder, n, lines)
        return crash(
            [durable, "run", str(workflow), "--run-id", "peers-crash", *common],
            [durable, "resume", "peers-crash", *common],
            folder,
            lines,
            n,
            timeout,
        )
    venv, extra = PEERS[tool]
    cmd = [
        peer_python(venvs, venv),
        str(HERE / f"{venv}_side.py"),
        *extra,
        workload,
        "--db",
        str(folder / f"{tool}.sqlite"),
        "--tasks",
        str(n),
    ]
    if workload == "crash":
        cmd += ["--lines", str(lines)]
        return crash(cmd, cmd, folder, lines, n, timeout)
    wall, stdout = run_process(cmd, folder, timeout)
    got = last_json(stdout)
    return {"seconds": got["seconds"], "wall": round(wall, 4), "pragmas": got["pragmas"]}


# --------------------------------------------------------------------------- the tables


def label(tool: str) -> str:
    return {
        "durable-normal": "durable, normal",
        "durable-full": "durable, full",
        "dbos": "DBOS",
        "dbos-wal": "DBOS, WAL",
        "langgraph": "LangGraph",
    }[tool]


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarize(rows: list[dict[str, Any]], out: Callable[[str], None] = print) -> None:
    """Print the medians, the ratios and the crash figures of ROWS as Markdown tables."""
    # The closing line (with the CPU load) where the run got that far.
    meta = next((r for r in reversed(rows) if r.get("kind") in ("meta", "meta_end")), {})
    measured = [r for r in rows if r.get("kind") == "measurement"]
    if meta:
        v = meta["versions"]
        out(
            f"{meta['date']}, {meta['machine']}, {meta['rounds']} round(s){' (quick)' if meta['quick'] else ''}; "
            f"durable {v['durable']}, "
            + ", ".join(
                f"{p} {v[p]}"
                for p in ("dbos", "langgraph", "langgraph-checkpoint-sqlite")
                if p in v
            )
            + f"; Python {v['python']}, SQLite {v['sqlite']}"
        )
        if meta.get("busy_percent") is not None:
            out(
                f"CPU busy during the comparison (all processes, ours included): "
                f"{meta['busy_percent']}% of {meta['cpus']} cores"
            )
    order = ("durable-normal", "durable-full", "dbos", "dbos-wal", "langgraph")
    tools = [t for t in order if any(r["tool"] == t for r in measured)]

    def ok(tool: str, workload: str) -> list[dict[str, Any]]:
        return [
            r
            for r in measured
            if r["tool"] == tool and r["workload"] == workload and "error" not in r
        ]

    failures = [r for r in measured if "error" in r]
    medians: dict[tuple[str, str], float] = {}
    out("")
    out("| workload | tool | median s | tasks/s | rounds (s) |")
    out("| --- | --- | ---: | ---: | --- |")
    for workload in ("wide", "chain", "io"):
        for tool in tools:
            got = ok(tool, workload)
            if not got:
                continue
            seconds = [r["seconds"] for r in got]
            m = median(seconds)
            medians[tool, workload] = m
            n = got[0]["tasks"]
            out(
                f"| {workload} ({n}) | {label(tool)} | {m:.3f} | {n / m:,.0f} | "
                + ", ".join(f"{s:.3f}" for s in seconds)
                + " |"
            )
    peers = [p for p in PEERS if p in tools]
    durables = [t for t in ("durable-normal", "durable-full") if t in tools]
    if peers and durables:
        out("")
        out(
            "durable / peer: durable's tasks/s over the peer's (the peer's seconds over "
            "durable's); above 1, durable is faster. Like for like (an fsync per commit on "
            "both sides): durable full."
        )
        out("")
        out("| workload | peer | " + " | ".join(f"{label(d)} / peer" for d in durables) + " |")
        out("| --- | --- |" + " ---: |" * len(durables))
        for workload in ("wide", "chain", "io"):
            for p in peers:
                if (p, workload) not in medians:
                    continue
                cells = [
                    f"{medians[p, workload] / medians[d, workload]:,.1f}x"
                    if (d, workload) in medians
                    else "-"
                    for d in durables
                ]
                out(f"| {workload} | {label(p)} | " + " | ".join(cells) + " |")
    crash_rows = {tool: ok(tool, "crash") for tool in tools}
    if any(crash_rows.values()):
        out("")
        out(
            "crash: SIGKILL at half the lines, then the tool's own recovery; "
            "recovery s is process start to done."
        )
        out("")
        out(
            "| tool | lines at kill (median) | recovery s (median) | rounds (s) "
            "| lines appended twice (median; each round) | all lines there |"
        )
        out("| --- | ---: | ---: | --- | --- | --- |")
        for tool, got in crash_rows.items():
            if not got:
                continue
            walls = [r["wall"] for r in got]
            dup = [r["duplicated"] for r in got]
            complete = sum(r["complete"] for r in got)
            out(
                f"| {label(tool)} | {median([r['lines_at_kill'] for r in got]):.0f} "
                f"| {median(walls):.2f} | {', '.join(f'{w:.2f}' for w in walls)} "
                f"| {median(dup):.0f}; {', '.join(str(d) for d in dup)} "
                f"| {complete} of {len(got)} rounds |"
            )
    pragmas = {r["tool"]: r["pragmas"] for r in measured if "pragmas" in r}
    if pragmas:
        out("")
        for tool, p in pragmas.items():
            out(
                f"{label(tool)}'s SQLite connection: " + ", ".join(f"{k}={v}" for k, v in p.items())
            )
    for r in failures:
        out(f"FAILED: {label(r['tool'])} {r['workload']} round {r['round']}: {r['error']}")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds (default 5; 1 with --quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: one round at a tenth of the sizes"
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--tools",
        default=",".join(TOOLS),
        help=f"comma list of {', '.join((*TOOLS, *EXTRA_TOOLS))} (default: all but "
        + ", ".join(EXTRA_TOOLS)
        + ")",
    )
    parser.add_argument(
        "--venvs",
        type=Path,
        default=Path(os.environ.get("PEERS_VENVS", HERE / ".venvs")),
        help="where setup.sh put the peers' virtualenvs (default $PEERS_VENVS or bench/peers/.venvs)",
    )
    parser.add_argument("--durable", help="the durable command (default: $DURABLE, or found)")
    parser.add_argument(
        "--out", type=Path, help="also write every measurement to this JSON-lines file (replaced)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per process")
    parser.add_argument(
        "--summarize",
        type=Path,
        metavar="FILE",
        help="print the tables of a saved --out file and exit",
    )
    args = parser.parse_args()

    if args.summarize:
        summarize(
            [json.loads(line) for line in args.summarize.read_text().splitlines() if line.strip()]
        )
        return
    workloads = [w for w in args.workloads.split(",") if w]
    tools = [t for t in args.tools.split(",") if t]
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w!r}: choose from {', '.join(WORKLOADS)}")
    for t in tools:
        if t not in (*TOOLS, *EXTRA_TOOLS):
            sys.exit(f"unknown tool {t!r}: choose from {', '.join((*TOOLS, *EXTRA_TOOLS))}")
    rounds = args.rounds or (1 if args.quick else 5)
    sizes = QUICK_SIZES if args.quick else SIZES
    durable = find_durable(args.durable, args.venvs)
    for tool in tools:
        if tool in PEERS:
            peer_python(args.venvs, PEERS[tool][0])

    meta = {
        "kind": "meta",
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "quick": args.quick,
        "durable_command": durable,
        "versions": versions(durable, args.venvs, tools),
        "sizes": sizes,
        "jobs": JOBS,
    }
    rows: list[dict[str, Any]] = [meta]
    sink = open(args.out, "w") if args.out else None  # noqa: SIM115 - open through the rounds

    def emit(row: dict[str, Any]) -> None:
        if sink:
            sink.write(json.dumps(row) + "\n")
            sink.flush()

    emit(meta)
    before = cpu_times()
    with tempfile.TemporaryDirectory(prefix="durable-peers-") as scratch:
        for r in range(1, rounds + 1):
            for workload in workloads:
                for tool in tools:
                    folder = Path(scratch, f"r{r}-{workload}-{tool}")
                    folder.mkdir()
                    row: dict[str, Any] = {
                        "kind": "measurement",
                        "round": r,
                        "workload": workload,
                        "tool": tool,
                        "tasks": sizes[workload],
                    }
                    try:
                        row.update(
                            measure(
                                tool,
                                workload,
                                sizes[workload],
                                durable,
                                args.venvs,
                                folder,
                                args.timeout,
                            )
                        )
                    except Failed as e:
                        row["error"] = str(e)
                    rows.append(row)
                    emit(row)
                    shown = {k: v for k, v in row.items() if k not in ("kind", "pragmas")}
                    print(json.dumps(shown), file=sys.stderr, flush=True)
                    shutil.rmtree(folder, ignore_errors=True)
    meta["busy_percent"] = busy_percent(before, cpu_times())
    emit({**meta, "kind": "meta_end"})
    if sink:
        sink.close()
    summarize(rows)


if __name__ == "__main__":
    main()
