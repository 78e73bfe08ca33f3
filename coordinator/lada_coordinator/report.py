"""The end-of-run report: one self-contained HTML file drawn by the dashboard's own page.

A report is the dashboard (``server/dashboard.html``) with a run's final ``/v1/status`` document
embedded, so the live view and the report are one renderer: the same round table, device list and
per-round plots (accuracy per client and for the LLM, allocation sizes), opened from disk with no
server, no token and nothing fetched. ``lada-coordinator federation`` writes one next to its
metrics; the benchmarks write one per federation they run.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from lada_coordinator.server.dashboard import DASHBOARD_HTML

__all__ = ["render_report", "write_report"]

_MARK = "<script>"


def render_report(status: dict[str, Any], title: str = "LaDa run report") -> str:
    """The dashboard page with ``status`` embedded (a JSON block the page reads instead of polling)."""
    # "</" inside the JSON would end the block early; "<\/" is the same JSON string
    data = json.dumps(status, default=str).replace("</", "<\\/")
    page = DASHBOARD_HTML.replace("<title>LaDa coordinator</title>", f"<title>{html.escape(title)}</title>", 1)
    page = page.replace("<h1>LaDa coordinator</h1>", f"<h1>{html.escape(title)}</h1>", 1)
    block = f'<script type="application/json" id="lada-status">{data}</script>\n'
    head, sep, tail = page.rpartition(_MARK)
    if not sep:
        raise ValueError("dashboard page has no script block")
    return head + block + sep + tail


def write_report(status: dict[str, Any], path: Path, title: str = "LaDa run report") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(status, title), encoding="utf-8")
    return path
