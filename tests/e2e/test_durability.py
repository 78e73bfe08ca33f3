"""The coordinator is SIGKILLed mid-round and restarted: no accepted upload is lost, the round resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from lada_client.common.crypto import Identity
from lada_client.common.wire import (
    Ack,
    Allocation,
    AllocationQuery,
    FeatureUpload,
    RewardReport,
    RoundInfo,
    RoundQuery,
)
from lada_client.transport import Transport
from lada_coordinator.config import CoordinatorConfig
from lada_coordinator.credentials import issue_tokens, load_identity, operator_token

pytestmark = pytest.mark.e2e  # a real coordinator process, killed and restarted


def _start(config_path, log_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lada_coordinator.cli", "serve", "--config", str(config_path)],
        stdout=open(log_path, "a"),
        stderr=subprocess.STDOUT,
    )


def _status(url: str, state_dir) -> dict:
    """The operator's view (it needs the coordinator's operator token)."""
    headers = {"Authorization": f"Bearer {operator_token(state_dir)}"}
    return httpx.get(f"{url}/v1/status", headers=headers, timeout=5).json()


def _wait_round(url: str, state_dir, t: int, phase: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            s = _status(url, state_dir)
            if s["round"] == t and s["phase"] == phase:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"round {t} never reached phase {phase}")


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _coordinator_with_clients(tiny_world, tmp_path, port: int, n: int = 3, **overrides):
    """Start ``lada-coordinator serve`` on a fresh database and enroll ``n`` sealed clients."""
    from lada_coordinator.store import Store

    cfg = {
        "db_path": str(tmp_path / "c.sqlite"),
        "state_dir": str(tmp_path / "state"),
        "llm_dir": str(tiny_world["llm"]),
        "public_data": str(tiny_world["data"]),
        "port": port,
        "min_clients": n,
        "candidates_per_round": 8,
        "offer_questions": 0,
        "slm_filter": {"budget": 4},
        "train_llm": False,
        **overrides,
    }
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    store = Store(tmp_path / "c.sqlite")
    tokens = issue_tokens(store, load_identity(CoordinatorConfig.from_dict(cfg).state_dir), n)
    store.close()
    operator_token(tmp_path / "state")  # before the coordinator starts, so both read one file
    log = tmp_path / "coordinator.log"
    proc = _start(tmp_path / "c.json", log)
    clients = []
    for i, token in enumerate(tokens):
        t = Transport(f"http://127.0.0.1:{port}", Identity.generate(), timeout_s=10)
        deadline = time.monotonic() + 120
        while True:
            try:
                t.enroll(token, f"d{i}")
                break
            except Exception:  # noqa: BLE001 - the coordinator is still starting: retry until the deadline
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.3)
        clients.append(t)
    return proc, clients, log


def test_sigkill_mid_round_loses_nothing(tiny_world, tmp_path, free_port):
    url = f"http://127.0.0.1:{free_port}"
    proc, clients, log = _coordinator_with_clients(tiny_world, tmp_path, free_port, rounds=2)
    state = tmp_path / "state"
    try:
        _wait_round(url, state, 1, "features")
        info = clients[0].call("round.get", RoundQuery(), 1, RoundInfo)
        names = info.feature_names
        rng = np.random.default_rng(0)

        def upload(t: Transport) -> None:
            z = rng.uniform(0, 3, size=(len(info.candidates), len(names))).tolist()
            ack = t.call(
                "features.put",
                FeatureUpload(
                    round=1, feature_names=names, sample_ids=[c.sample_id for c in info.candidates], features=z
                ),
                1,
                Ack,
            )
            assert ack.ok

        upload(clients[0])
        upload(clients[1])
        _kill(proc)  # two uploads accepted, one missing
        proc = _start(tmp_path / "c.json", log)
        _wait_round(url, state, 1, "features")
        upload(clients[2])  # the transports retry with backoff while the coordinator restarts
        _wait_round(url, state, 1, "training")
        allocations = [t.call("allocation.get", AllocationQuery(round=1), 1, Allocation) for t in clients]
        assert all(a.status == "ready" and a.sample_ids for a in allocations)  # all 3 uploads were there

        def report(t: Transport) -> None:
            n = len(allocations[clients.index(t)].sample_ids)
            r = RewardReport(
                round=1,
                reward=0.2,
                ppl_before=3.0,
                ppl_after=2.4,
                n_allocated=n,
                test_accuracy=0.1,
                bytes_sent=1,
                bytes_received=1,
            )
            assert t.call("reward.put", r, 1, Ack).ok

        report(clients[0])
        _kill(proc)
        proc = _start(tmp_path / "c.json", log)
        _wait_round(url, state, 1, "training")
        report(clients[1])
        report(clients[2])
        _wait_round(url, state, 2, "features")
        status = _status(url, state)
        r1 = status["rounds"][0]
        assert r1["phase"] == "closed" and len(r1["clients"]) == 3  # every accepted reward survived
        # retried upload after restart is idempotent, not a duplicate
        again = clients[0].call(
            "features.put",
            FeatureUpload(
                round=2,
                feature_names=names,
                sample_ids=[c.sample_id for c in clients[0].call("round.get", RoundQuery(), 2, RoundInfo).candidates],
                features=[[0.0] * len(names)] * len(info.candidates),
            ),
            2,
            Ack,
        )
        assert again.message == "stored"
    finally:
        proc.terminate()
        proc.wait(10)


def test_vanished_client_is_timed_out_and_round_proceeds_at_quorum(tiny_world, tmp_path, free_port):
    url = f"http://127.0.0.1:{free_port}"
    proc, clients, _ = _coordinator_with_clients(
        tiny_world, tmp_path, free_port, rounds=1, phase_timeout_s=3.0, quorum_fraction=0.6
    )
    state = tmp_path / "state"
    try:
        _wait_round(url, state, 1, "features")
        info = clients[0].call("round.get", RoundQuery(), 1, RoundInfo)
        ids = [c.sample_id for c in info.candidates]
        for t in clients[:2]:  # the third device vanishes before uploading anything
            t.call(
                "features.put",
                FeatureUpload(
                    round=1,
                    feature_names=info.feature_names,
                    sample_ids=ids,
                    features=[[1.0] * len(info.feature_names)] * len(ids),
                ),
                1,
                Ack,
            )
        _wait_round(url, state, 1, "training", timeout=60)  # after the 3 s phase timeout, at quorum 2/3
        from lada_client.transport import CoordinatorError

        try:  # the late device is told clearly that the round moved on
            clients[2].call(
                "features.put",
                FeatureUpload(
                    round=1,
                    feature_names=info.feature_names,
                    sample_ids=ids,
                    features=[[1.0] * len(info.feature_names)] * len(ids),
                ),
                1,
                Ack,
            )
            raise AssertionError("a late upload was accepted")
        except CoordinatorError as exc:
            assert exc.status == 409 and exc.error == "wrong_phase"
        for t in clients[:2]:
            n = len(t.call("allocation.get", AllocationQuery(round=1), 1, Allocation).sample_ids)
            r = RewardReport(
                round=1,
                reward=0.1,
                ppl_before=2.0,
                ppl_after=1.8,
                n_allocated=n,
                test_accuracy=0.0,
                bytes_sent=1,
                bytes_received=1,
            )
            t.call("reward.put", r, 1, Ack)
        _wait_round(url, state, 1, "finished", timeout=60)
        r1 = _status(url, state)["rounds"][0]
        assert sorted(r1["clients"]) == ["d0", "d1"]
    finally:
        proc.terminate()
        proc.wait(10)
