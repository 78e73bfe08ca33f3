#!/usr/bin/env bash
# Set up a fresh machine, run the gates, then the test suite. The gates stop the run at the first
# failure: ruff's lint and formatting (the [tool.ruff] configuration), then mypy on both packages
# ([tool.mypy]). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/browser.sh
bash scripts/postgres.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
