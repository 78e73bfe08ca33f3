"""The end-of-run report: the dashboard page with the final status embedded, opened from disk in a
real browser (headless Chromium) with no server: devices, rounds and plots are drawn from the file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from lada_coordinator.report import render_report, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _status() -> dict:
    rounds = []
    for t, accs in ((1, (0.1, 0.2)), (2, (0.3, 0.25))):
        rounds.append(
            {
                "round": t,
                "phase": "finished" if t == 2 else "closed",
                "opened_at": 100.0 * t,
                "closed_at": 100.0 * t + 42,
                "clients": {
                    f"c{i}": {
                        "test_accuracy": a,
                        "reward": 0.5,
                        "n_allocated": 4 + i,
                        "bytes_client_sent": 10,
                        "bytes_client_received": 20,
                    }
                    for i, a in enumerate(accs)
                },
                "llm": {"accuracy": 0.4 + 0.1 * t, "n_trained": 3},
            }
        )
    devices = [
        {
            "name": f"c{i}",
            "client_id": f"id{i}",
            "domain": d,
            "model_name": "slm",
            "capabilities": {"can_score": True},
            "bytes_in": 10,
            "bytes_out": 20,
            "enrolled_at": 90.0,
            "last_seen": 240.0,
            "revoked": False,
            "quarantined": None,
            "uploaded": {"features": True, "rewards": True},
        }
        for i, d in enumerate(("add", "mul"))
    ]
    return {
        "now": 250.0,
        "round": 2,
        "phase": "finished",
        "total_rounds": 2,
        "phase_timeout_s": 600.0,
        "engine": {"phase": "finished", "round": 2, "phase_since": 245.0, "error": "", "errors": []},
        "clients": 2,
        "arrived": {"features": 2, "rewards": 2, "expected": 2},
        "devices": devices,
        "quarantine": [],
        "rounds": rounds,
        "note": "</script><script>alert(1)</script>",
    }


def test_the_embedded_status_cannot_end_its_block_early():
    page = render_report(_status(), title="run <1>")
    (block,) = re.findall(r'<script type="application/json" id="lada-status">(.*?)</script>', page, re.S)
    assert json.loads(block)["note"] == "</script><script>alert(1)</script>"
    assert "<title>run &lt;1&gt;</title>" in page


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium) for the browser test")
def test_report_renders_from_disk_in_a_real_browser(tmp_path):
    path = write_report(_status(), tmp_path / "report.html", title="test run")
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", proc.stdout))
    assert "test run" in text and "round 2/2" in text and "2 of 2 closed" in text, text
    assert "0.300" in text and "0.600" in text and "42" in text  # round 2's accuracy, the LLM's, seconds per round
    assert proc.stdout.count("<polyline") == 3 + 2  # accuracy: 2 clients + LLM; allocation: 2 clients
    assert "Operator token" not in text or 'id="login" hidden' in proc.stdout
