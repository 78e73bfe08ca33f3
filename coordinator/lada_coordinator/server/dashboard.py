"""The operator's live dashboard: one static page (``dashboard.html``, no build step) whose script
polls ``/v1/status`` with the operator token and draws rounds, phases, devices and per-round plots.

The page holds no data, so serving it needs no token; the data stays behind the operator token,
which the page keeps in the tab's session storage. Its Content-Security-Policy allows exactly the
inline script and style shipped here (by hash) and requests to this origin only, so nothing a device
sends (a name, a domain) can run as script even if it got past the status view's validation.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

__all__ = ["DASHBOARD_CSP", "DASHBOARD_HTML"]


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _csp(html: str) -> str:
    (script,) = re.findall(r"<script>(.*?)</script>", html, re.S)
    (style,) = re.findall(r"<style>(.*?)</style>", html, re.S)
    return (
        f"default-src 'none'; script-src {_hash(script)}; style-src {_hash(style)}; connect-src 'self'; "
        "img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    )


DASHBOARD_HTML: str = resources.files("lada_coordinator.server").joinpath("dashboard.html").read_text("utf-8")
DASHBOARD_CSP: str = _csp(DASHBOARD_HTML)
