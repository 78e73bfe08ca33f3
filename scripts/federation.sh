#!/usr/bin/env bash
# Set up a fresh machine and run a local federation: coordinator + 3 clients on 127.0.0.1.
# Extra arguments go to `lada-coordinator federation` (see --help), e.g. --rounds 5 --allocation random.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lada-coordinator federation "$@"
