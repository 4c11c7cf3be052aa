#!/usr/bin/env bash
# The DBOS figures of README.md: every configuration, 1, 2 and 4 workers, one JSON
# line each (the median of its rounds) appended to $OUT; the rounds go to stderr.
#
#   bench/peers_pg/setup.sh && bench/peers_pg/run_dbos.sh
#
# ROUNDS (default 3) rounds per line; the default-polling wide runs are one round
# each (their time is set by the polling interval, 64 x N tasks per second).
# Each invocation is bounded by `timeout`; a killed one still drops its database
# and stops its workers.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="$here/.venv-dbos/bin/python"
OUT="${OUT:-$here/results_dbos.jsonl}"
ROUNDS="${ROUNDS:-3}"
Q="--quiet-wait ${QUIET_WAIT:-30}"
TUNED="--poll 0.05"

run() {  # run LIMIT_SECONDS ARGS...
    local limit=$1; shift
    echo "+ dbos_queue.py $*" >&2
    timeout "$limit" "$PY" "$here/dbos_queue.py" "$@" $Q | tee -a "$OUT"
}

drop_leftovers() {  # databases of rounds whose cleanup could not reach the server
    "$PY" - <<'PYEOF'
import os, psycopg
server = os.environ.get("PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
with psycopg.connect(f"{server}/postgres", autocommit=True) as c:
    for (name,) in c.execute("SELECT datname FROM pg_database WHERE datname LIKE 'dbos\\_bench\\_%'").fetchall():
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        print("dropped leftover", name)
PYEOF
}
trap drop_leftovers EXIT

for n in 1 2 4; do
    run 900 wide --workers "$n" --tasks 10000 $TUNED --rounds "$ROUNDS"
    run 900 wide --workers "$n" --tasks 10000 $TUNED --enqueue-batch 1000 --rounds "$ROUNDS"
    run 900 wide --workers "$n" --tasks 10000 $TUNED --enqueue-batch 1000 --prefill --rounds "$ROUNDS"
    run 600 io --workers "$n" --slots 50 --tasks 2000 --sleep 0.1 $TUNED --rounds "$ROUNDS"
    run 600 io --workers "$n" --slots 50 --tasks 2000 --sleep 0.1 $TUNED --enqueue-batch 1000 --rounds "$ROUNDS"
    run 600 io --workers "$n" --slots 50 --tasks 2000 --sleep 0.1 $TUNED --enqueue-batch 1000 --prefill --rounds "$ROUNDS"
    run 600 io --workers "$n" --slots 50 --tasks 2000 --sleep 0.1 --poll 1.0 --rounds "$ROUNDS"
done
for n in 4 2 1; do
    run 900 wide --workers "$n" --tasks 10000 --poll 1.0 --rounds 1
done
# A shorter polling interval, 0.01 s (README: "The polling interval").
for n in 1 2 4; do
    run 900 wide --workers "$n" --tasks 10000 --poll 0.01 --enqueue-batch 1000 --rounds "$ROUNDS"
done
for n in 1 4; do
    run 600 io --workers "$n" --slots 50 --tasks 2000 --sleep 0.1 --poll 0.01 --enqueue-batch 1000 --rounds "$ROUNDS"
done
# Variants, 4 workers: async workflows (asyncio.sleep on DBOS's event loop), and the
# body as a @DBOS.step (one more checkpoint row per task).
run 600 io --workers 4 --slots 50 --tasks 2000 --sleep 0.1 $TUNED --async --rounds "$ROUNDS"
run 600 io --workers 4 --slots 50 --tasks 2000 --sleep 0.1 $TUNED --enqueue-batch 1000 --async --rounds "$ROUNDS"
run 900 wide --workers 4 --tasks 10000 $TUNED --enqueue-batch 1000 --step --rounds "$ROUNDS"
