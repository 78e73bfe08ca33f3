"""The operator CLI against a real coordinator process on 127.0.0.1: ``status`` and ``clients`` (JSON
and tables), ``issue-token``/``tokens``/``revoke`` with ``--json``, and one-line errors for a
coordinator that is not running, a wrong operator token and a state directory that does not exist."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lada_client.common.crypto import Identity
from lada_client.common.wire import Candidate, RoundInfo, RoundQuery
from lada_client.transport import Transport
from lada_coordinator.simulation.domains import DOMAINS, make_federation

pytestmark = pytest.mark.e2e  # a real coordinator process


def _cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "lada_coordinator.cli", *args], capture_output=True, text=True, timeout=120
    )
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """A refused operator command: exit code 2, one ``lada-coordinator: error:`` line, no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("lada-coordinator: error: ")
    for word in words:
        assert word in err, err
    return err


@pytest.fixture()
def coordinator(tmp_path: Path, free_port: int):
    """``lada-coordinator serve`` on a fresh state directory; min_clients is never reached, so the
    round engine waits and the test shapes the round itself (no LLM is ever loaded)."""
    make_federation(DOMAINS[:2], 8, 4, 16, 0).save(tmp_path / "data")
    config = tmp_path / "c.json"
    config.write_text(
        json.dumps(
            {
                "db_path": str(tmp_path / "c.sqlite"),
                "state_dir": str(tmp_path / "state"),
                "llm_dir": str(tmp_path / "no-llm"),
                "public_data": str(tmp_path / "data"),
                "port": free_port,
                "min_clients": 9,
                "rounds": 2,
            }
        )
    )
    tokens = json.loads(
        _cli("issue-token", "--config", str(config), "--count", "3", "--ttl-hours", "2", "--json").stdout
    )
    assert len(tokens["tokens"]) == 3 and tokens["group"] == "default" and tokens["ttl_hours"] == 2
    assert 7100 < tokens["expires_at"] - time.time() <= 7200
    log = open(tmp_path / "coordinator.log", "w")  # noqa: SIM115 - the server process writes to it
    proc = subprocess.Popen(
        [sys.executable, "-m", "lada_coordinator.cli", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{free_port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "coordinator.log").read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    try:
        yield config, url, tokens["tokens"], proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)
        log.close()


def test_status_and_clients_show_rounds_phases_and_devices(coordinator, tmp_path):
    from lada_coordinator.store import Store

    config, url, tokens, _ = coordinator
    devices = [Transport(url, Identity.generate(), timeout_s=10) for _ in tokens]
    ids = [t.enroll(token, f"d{i}", model_name="slm-s") for i, (t, token) in enumerate(zip(devices, tokens))]
    store = Store(tmp_path / "c.sqlite")  # the round, as the engine would open it; then one device is set aside
    try:
        info = RoundInfo(
            round=1,
            phase="features",
            total_rounds=2,
            feature_names=["slm_path_nll"],
            candidates=[
                Candidate(
                    sample_id="p1", question="1+1?", path="1 + 1 = 2. The answer is 2.", llm_logprob=-3.0, llm_tokens=9
                )
            ],
        )
        store.open_round(1, info)
        store.quarantine(1, ids[1], "features.put", "bad_features: NaN in row 0")
    finally:
        store.close()
    time.sleep(0.05)
    assert devices[0].call("round.get", RoundQuery(), 1, RoundInfo).round == 1  # d0 calls in: seen just now
    assert json.loads(_cli("revoke", "--config", str(config), "d2", "--json").stdout) == {"revoked": "d2"}

    status = json.loads(_cli("status", "--config", str(config), "--json").stdout)
    assert (status["round"], status["phase"], status["total_rounds"], status["clients"]) == (1, "features", 2, 2)
    assert status["arrived"] == {"features": 0, "rewards": 0, "expected": 1}  # d1 is set aside, d2 revoked
    assert [r["round"] for r in status["rounds"]] == [1] and status["rounds"][0]["closed_at"] is None
    assert status["engine"]["error"] == ""

    listed = json.loads(_cli("clients", "--config", str(config), "--json").stdout)
    assert [(d["name"], d["client_id"]) for d in listed] == [(f"d{i}", ids[i]) for i in range(3)]
    d0, d1, d2 = listed
    assert (d0["revoked"], d0["quarantined"]) == (False, None) and d0["last_seen"] > d0["enrolled_at"]
    assert d1["quarantined"] == "features.put: bad_features: NaN in row 0" and not d1["revoked"]
    assert d2["revoked"] and d2["last_seen"] == d2["enrolled_at"]  # never called in after enrolling
    assert all(d["model_name"] == "slm-s" and status["now"] >= d["last_seen"] for d in listed)

    table = _cli("clients", "--config", str(config)).stdout  # captured: not a terminal, so plain lines
    assert "\x1b[" not in table
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith("d")}
    assert "active" in rows["d0"] and "s ago" in rows["d0"]
    assert "set aside in round 1: features.put: bad_features" in rows["d1"] and "revoked" in rows["d2"]
    view = _cli("status", "--config", str(config)).stdout
    assert view.splitlines()[0].startswith("round 1/2 · features · 0/1 uploaded · engine: ok"), view
    assert any(line.split()[:2] == ["1", "features"] for line in view.splitlines()), view

    tokens_listed = json.loads(_cli("tokens", "--config", str(config), "--json").stdout)
    assert sorted(t["used_by"] for t in tokens_listed) == sorted(ids)
    assert all(t["state"].startswith("used by ") for t in tokens_listed)


def test_operator_errors_are_one_line(coordinator, tmp_path):
    config, url, _, proc = coordinator
    token_file = tmp_path / "state" / "operator.token"
    right = token_file.read_text()
    token_file.write_text("not-the-token\n")
    _one_line_error(_cli("status", "--config", str(config), "--json", ok=False), "refused the operator token")
    token_file.write_text(right)
    assert _cli("status", "--config", str(config), "--json").returncode == 0

    _one_line_error(_cli("clients", "--config", str(config), "--url", "https://127.0.0.1:1", ok=False), "cannot reach")
    proc.terminate()
    proc.wait(15)
    _one_line_error(_cli("status", "--config", str(config), ok=False), "cannot reach the coordinator", url)

    elsewhere = json.loads(config.read_text()) | {"state_dir": str(tmp_path / "missing")}
    (tmp_path / "other.json").write_text(json.dumps(elsewhere))
    _one_line_error(
        _cli("clients", "--config", str(tmp_path / "other.json"), ok=False), "no coordinator state directory"
    )
    assert not (tmp_path / "missing").exists()  # asking created nothing
    _one_line_error(_cli("status", "--config", str(tmp_path / "absent.json"), ok=False), "absent.json")
