#!/usr/bin/env bash
# Debian's PostgreSQL server binaries for the PostgreSQL store's tests (tests/conftest.py starts and
# stops a server of its own in a temporary directory; no system service is used).
# Installed when missing and this user can install Debian packages; otherwise those tests skip.
set -uo pipefail
have_server() {
    command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
if have_server; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing postgresql (Debian) for the PostgreSQL store tests" >&2
    # the package would start its own cluster: the tests do not need it, so no service starts here
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq postgresql >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq postgresql >/dev/null 2>&1; }
fi
have_server || echo "PostgreSQL server not available: the PostgreSQL store tests will be skipped" >&2
exit 0
