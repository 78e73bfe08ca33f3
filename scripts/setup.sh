#!/usr/bin/env bash
# Create .venv (if missing) and install both distributions with the test tools.
# torch is pinned to the CPU build 2.13.0; constraints.txt pins the rest to versions known to work together.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.lada-installed
want=$(cat constraints.txt client_sdk/pyproject.toml coordinator/pyproject.toml pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q torch==2.13.0
    .venv/bin/python -m pip install -q -c constraints.txt -e './client_sdk[train,export]' -e ./coordinator -e '.[test]'
    echo "$want" > "$stamp"
fi
