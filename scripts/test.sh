#!/usr/bin/env bash
# Set up a fresh machine and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/browser.sh
exec .venv/bin/python -m pytest -q "$@"
