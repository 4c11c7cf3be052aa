#!/usr/bin/env bash
# Create bench/peers_pg/.venv-dbos: a virtualenv of its own for DBOS, so that its
# dependencies (SQLAlchemy, psycopg 3, ...) never touch durable's environment.
#
#   bench/peers_pg/setup.sh            # then: bench/peers_pg/.venv-dbos/bin/python bench/peers_pg/dbos_queue.py ...
#
# DBOS_VERSION pins the version the figures in README.md were measured with.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DBOS_VERSION="${DBOS_VERSION:-3.4.0}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$here/.venv-dbos/bin/python" ]; then
    "$PYTHON" -m venv "$here/.venv-dbos"
fi
"$here/.venv-dbos/bin/pip" install --quiet "dbos==$DBOS_VERSION"
"$here/.venv-dbos/bin/python" -c 'import importlib.metadata as m; print("dbos", m.version("dbos"), "installed in", __import__("sys").prefix)'
