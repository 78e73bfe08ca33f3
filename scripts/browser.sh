#!/usr/bin/env bash
# Debian's headless Chromium for the dashboard's browser test (tests/coordinator/server/test_dashboard.py).
# Installed when missing and this user can install Debian packages; otherwise that one test skips.
set -uo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (Debian) for the dashboard browser test" >&2
    apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }
fi
command -v chromium >/dev/null 2>&1 || echo "chromium not available: the dashboard browser test will be skipped" >&2
exit 0
