#!/usr/bin/env bash
# Mutation testing of durable's core with mutmut: does the suite notice when the
# code is changed? Not part of CI (the six core modules take tens of minutes on two
# cores); run it by hand after changing the core or its tests. tests/README.md
# records the last scores and the survivors judged harmless.
#
#   pip install -e '.[mutation]'  # mutmut 3.x
#   tests/mutation.sh                     # state refs expr graph engine journal
#   tests/mutation.sh state expr          # just these modules
#   MUTATION_JOBS=2 tests/mutation.sh     # parallel mutants (default 1: a shared machine)
#   MUTATION_TIMEOUT_MULTIPLIER=15 ...    # more patience with slow mutants (default 2)
#
# It works on a fresh copy (MUTATION_DIR, default $TMPDIR/durable-mutation) so that
# the working tree never sees a mutant. (mutmut can re-test only what changed, but it
# keeps stale copies of the modules it does not mutate; a fresh start is cheaper than
# a wrong score.) Each module is tested with
# its own unit tests (fast) plus tests/unit/test_mutation_kills.py, never the e2e
# suite. Prints the score per module, then the surviving mutants; read one with
# `cd $MUTATION_DIR && mutmut show NAME`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${MUTATION_DIR:-${TMPDIR:-/tmp}/durable-mutation}
jobs=${MUTATION_JOBS:-1}
# A mutant that makes a run wait forever is a timeout (counted as killed) after this
# many times the duration of its tests, plus a constant: mutmut's default (15x) spends
# minutes on each hanging engine mutant.
timeout_multiplier=${MUTATION_TIMEOUT_MULTIPLIER:-2}
if [ $# -gt 0 ]; then modules=("$@"); else modules=(state refs expr graph engine journal); fi

# The unit tests that exercise each module.
declare -A tests_for=(
    [state]="tests/unit/test_state.py"
    [refs]="tests/unit/test_refs.py"
    [expr]="tests/unit/test_expr.py"
    [graph]="tests/unit/test_graph.py tests/unit/test_graph_trusted.py"
    [engine]="tests/unit/test_engine.py tests/unit/test_guarantees.py"
    [journal]="tests/unit/test_journal.py tests/unit/test_journal_integrity.py tests/unit/test_guarantees.py"
)

only=()
selection=()
for module in "${modules[@]}"; do
    if [ -z "${tests_for[$module]+x}" ]; then
        echo "unknown module '$module' (known: ${!tests_for[*]})" >&2
        exit 2
    fi
    if [ -d "$repo/durable/$module" ]; then
        only+=("durable/$module/*.py")  # a package: every module of it
    else
        only+=("durable/$module.py")
    fi
    for test in ${tests_for[$module]}; do selection+=("$test"); done
done
selection+=(tests/unit/test_mutation_kills.py)
mapfile -t selection < <(printf '%s\n' "${selection[@]}" | sort -u)

if [ -e "$work" ] && [ ! -e "$work/.durable-mutation" ]; then
    echo "$work exists and is not a copy made by this script; set MUTATION_DIR" >&2
    exit 2
fi
rm -rf "$work"
mkdir -p "$work"
touch "$work/.durable-mutation"
# The CLI package is `durable_cli` (the folder `cli`); make the copy's importable as such.
ln -s cli "$work/durable_cli"
rsync -a --exclude .git --exclude .venv --exclude '.*cache' --exclude mutants "$repo/" "$work/"

# mutmut runs each test many times in one process: hypothesis must not mind that, and
# must draw the same examples every time, or a score would be luck. Loaded in
# pytest_configure, after tests/conftest.py has chosen its own profile.
cat >"$work/conftest.py" <<'PY'
from hypothesis import HealthCheck, settings


def pytest_configure(config):
    settings.register_profile(
        "mutation",
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.differing_executors, HealthCheck.too_slow],
    )
    settings.load_profile("mutation")
PY

{
    echo "[mutmut]"
    echo "source_paths = durable"
    echo "also_copy ="
    echo "    examples"
    echo "    durable_cli"
    echo "    conftest.py"
    echo "only_mutate ="
    printf '    %s\n' "${only[@]}"
    echo "timeout_multiplier = $timeout_multiplier"
    echo "timeout_constant = 3"
    echo "pytest_add_cli_args_test_selection ="
    printf '    %s\n' "${selection[@]}"
    echo "pytest_add_cli_args ="
    echo "    -p no:cacheprovider"
    echo "    -x"
    echo "    -q"
} >"$work/setup.cfg"

cd "$work"
# The copy's `durable` must win over the editable install of the working tree.
export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"
nice -n 10 python -m mutmut run --max-children "$jobs" || true

echo
echo "== score per module (killed + timeout) / (all - skipped) =="
python -m mutmut results --all true 2>/dev/null >results.txt || true
python - "${modules[@]}" <<'EOF'
import collections
import re
import sys

counts = collections.defaultdict(collections.Counter)
survivors = []
for line in open("results.txt"):
    found = re.match(r"\s*(durable\.(\w+)\.\S+): (.+)", line)
    if found:
        name, module, status = found.groups()
        counts[module][status.strip()] += 1
        if status.strip() == "survived":
            survivors.append(name)
for module in sys.argv[1:]:
    c = counts[module]
    tested = sum(c.values()) - c["skipped"]
    score = 100 * (c["killed"] + c["timeout"]) / tested if tested else 0.0
    detail = ", ".join(f"{n} {status}" for status, n in sorted(c.items()))
    print(f"{module:8} {score:5.1f}%  ({detail})")
print()
print("== survivors ==")
print("\n".join(survivors) or "none")
EOF
