"""The operator dashboard in a real browser (Debian's headless Chromium) against a real coordinator:
rounds, phase progress, each device's state, per-round accuracy; a wrong token gets the login form
back. The screenshot is saved in the test's tmp dir."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from lada_client.common.wire import Ack, Candidate, FeatureUpload, RoundInfo, RoundQuery

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _open(store, t: int) -> None:
    info = RoundInfo(
        round=t,
        phase="features",
        total_rounds=2,
        feature_names=["slm_path_nll"],
        candidates=[
            Candidate(
                sample_id="p1", question="1+1?", path="1 + 1 = 2. The answer is 2.", llm_logprob=-3.0, llm_tokens=9
            )
        ],
    )
    store.open_round(t, info)


def _browser(url: str, tmp_path: Path, *, screenshot: Path | None = None) -> str:
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=6000",
        "--window-size=1280,1500",
    ]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*args, url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium) for the browser test")
def test_dashboard_shows_rounds_devices_and_states_in_a_real_browser(server, enroll, tmp_path):
    from lada_coordinator.credentials import operator_token

    url, store, config = server
    done, aside, _revoked, working = (
        enroll(server, name, model_name="slm-s") for name in ("done1", "aside2", "gone3", "busy4")
    )
    _open(store, 1)
    store.set_phase(
        1,
        "closed",
        metrics={
            "clients": {
                n: {
                    "test_accuracy": acc,
                    "reward": 0.1,
                    "n_allocated": k,
                    "bytes_client_sent": 1000,
                    "bytes_client_received": 5000,
                }
                for n, acc, k in (("done1", 0.25, 8), ("aside2", 0.125, 4), ("busy4", 0.5, 6))
            },
            "llm": {"accuracy": 0.375, "n_trained": 4},
        },
    )
    _open(store, 2)
    ack = done.call(
        "features.put",
        FeatureUpload(round=2, feature_names=["slm_path_nll"], sample_ids=["p1"], features=[[1.5]]),
        2,
        Ack,
    )
    assert ack.message == "stored"
    store.quarantine(2, aside.client_id, "features.put", "bad_features: NaN in row 0")
    store.revoke_client("gone3")
    busy = working.call("round.get", RoundQuery(), 2, RoundInfo)  # it polls: seen, not yet uploaded
    assert busy.round == 2

    page = httpx.get(f"{url}/dashboard")  # the page itself carries no data: no token needed
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    assert httpx.get(f"{url}/v1/status").status_code == 401  # the data does

    html = _browser(f"{url}/dashboard#token={operator_token(config.state_dir)}", tmp_path)
    text = _text(html)
    assert "round 2/2" in text and "phase: features" in text, text
    assert "1 of 2 closed" in text and "1 of 2 devices sent features" in text, text
    states = dict(re.findall(r"<td>(\w+)</td><td><span class=\"state \w+\" data-state=\"([\w ]+)\"", html))
    assert states == {"done1": "done", "aside2": "set aside", "gone3": "revoked", "busy4": "working"}, states
    assert "bad_features: NaN in row 0" in text  # the set-aside reason
    assert "0.250" in text and "0.500" in text and "0.375" in text  # round 1's accuracies, LLM included
    assert html.count("<polyline") >= 4  # accuracy (3 clients + LLM) and allocation lines

    shot = tmp_path / "dashboard.png"
    _browser(f"{url}/dashboard#token={operator_token(config.state_dir)}", tmp_path, screenshot=shot)
    assert shot.stat().st_size > 10_000

    refused = _text(_browser(f"{url}/dashboard#token=not-the-token", tmp_path))
    assert "The coordinator refused this token." in refused and "done1" not in refused
