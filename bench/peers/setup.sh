#!/usr/bin/env bash
# Install each peer into a virtualenv of its own, so that their dependencies
# (SQLAlchemy, langchain-core, ...) never touch durable's environment:
#
#   bench/peers/setup.sh          # then: bench/peers/compare.py (README.md beside this file)
#
# PEERS_VENVS    where the virtualenvs go (default bench/peers/.venvs, gitignored):
#                $PEERS_VENVS/dbos and $PEERS_VENVS/langgraph
# PYTHON         the interpreter to make them with (default python3; 3.11+)
# DURABLE        the `durable` command to measure; if unset and none is found next
#                to $PYTHON or on PATH, $PEERS_VENVS/durable is made with
#                `pip install -e REPO[fast]` and its `durable` is used.
#
# The versions below are the ones README.md's figures were measured with.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
VENVS="${PEERS_VENVS:-$here/.venvs}"
PYTHON="${PYTHON:-python3}"
DBOS_VERSION="${DBOS_VERSION:-3.4.0}"
LANGGRAPH_VERSION="${LANGGRAPH_VERSION:-1.2.22}"
LANGGRAPH_SQLITE_VERSION="${LANGGRAPH_SQLITE_VERSION:-3.1.2}"

make_venv() {  # make_venv NAME PACKAGE...
    local venv="$VENVS/$1"; shift
    if [ ! -x "$venv/bin/python" ]; then
        "$PYTHON" -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet "$@"
    "$venv/bin/pip" freeze --all > "$venv/frozen.txt"
    echo "$venv: $*"
}

mkdir -p "$VENVS"
make_venv dbos "dbos==$DBOS_VERSION"
make_venv langgraph "langgraph==$LANGGRAPH_VERSION" "langgraph-checkpoint-sqlite==$LANGGRAPH_SQLITE_VERSION"

if [ -n "${DURABLE:-}" ]; then
    echo "durable: $DURABLE (from DURABLE)"
elif found="$(dirname "$(command -v "$PYTHON")")/durable" && [ -x "$found" ]; then
    echo "durable: $found"
elif found="$(command -v durable)"; then
    echo "durable: $found"
else
    make_venv durable -e "$repo[fast]"
fi
