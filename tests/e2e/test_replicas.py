"""Two ``lada-coordinator serve`` replicas share one PostgreSQL database; devices alternate between
them request by request (chunked uploads included). The replica whose round engine runs is
SIGKILLed mid-round: the other one's engine takes over, the federation finishes, and every upload
that was acknowledged (by either replica) is in the database. Real PostgreSQL (tests/conftest.py)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from lada_client.common import wire
from lada_client.common.crypto import Identity
from lada_client.transport import CoordinatorError, RetryPolicy, Transport
from lada_coordinator.config import CoordinatorConfig
from lada_coordinator.credentials import issue_tokens, load_identity, operator_token
from lada_coordinator.stores import open_store

pytestmark = pytest.mark.e2e  # real coordinator processes on a real PostgreSQL server

ROUNDS = 2


class Alternating(Transport):
    """A device behind a round-robin balancer: each request goes to the next replica's URL; one that
    refused a connection is passed over for 5 s (as nginx's ``max_fails=1 fail_timeout=5s``)."""

    def __init__(self, urls: list[str], identity: Identity, acked: list[tuple[int, str]]) -> None:
        super().__init__(
            urls[0],
            identity,
            timeout_s=10,
            retry=RetryPolicy(attempts=30, initial_backoff_s=0.2, max_backoff_s=1.0),
            upload_chunk_bytes=1024,  # every feature upload goes in chunks, to both replicas
        )
        self._urls = itertools.cycle(urls)
        self._down: dict[str, float] = {}  # URL -> until when it is passed over
        self._n = len(urls)
        self.acked = acked  # (round, kind) of every upload the coordinator acknowledged
        self.hook = lambda path: None  # called after each answered request

    def _post(self, path: str, body: bytes | None = None, content_type: str = wire.SEALED_MEDIA_TYPE) -> httpx.Response:
        for _ in range(self._n):
            url = next(self._urls)
            if self._down.get(url, 0.0) <= time.monotonic():
                break
        self._http.base_url = httpx.URL(url)
        try:
            response = super()._post(path, body, content_type)
        except CoordinatorError as exc:
            if exc.error == "unreachable":
                self._down[url] = time.monotonic() + 5.0
            raise
        self.hook(path)
        return response

    def upload(self, kind: str, payload, round_index: int) -> None:
        assert self.call(kind, payload, round_index, wire.Ack).ok
        self.acked.append((round_index, kind))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(urls: list[str], state_dir: Path) -> dict:
    """The operator's view from whichever replica answers."""
    headers = {"Authorization": f"Bearer {operator_token(state_dir)}"}
    for url in urls:
        try:
            return httpx.get(f"{url}/v1/status", headers=headers, timeout=5).json()
        except httpx.HTTPError:
            continue
    raise AssertionError("no replica answers")


def _wait_round(urls: list[str], state_dir: Path, t: int, phase: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = _status(urls, state_dir)
            if status["round"] == t and status["phase"] == phase:
                return status
        except AssertionError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"round {t} never reached phase {phase}")


def test_two_replicas_on_postgres_survive_the_leaders_sigkill_mid_round(tiny_world, tmp_path, postgres_url):
    ports = [_free_port(), _free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    state = tmp_path / "state"  # shared by the replicas: one identity, one operator token
    cfg = {
        "database_url": postgres_url,
        "state_dir": str(state),
        "llm_dir": str(tiny_world["llm"]),
        "public_data": str(tiny_world["data"]),
        "port": ports[0],
        "rounds": ROUNDS,
        "min_clients": 3,
        "candidates_per_round": 8,
        "offer_questions": 0,
        "slm_filter": {"budget": 4},
        "train_llm": False,
    }
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    config = CoordinatorConfig.from_dict(cfg)
    store = open_store(config)
    tokens = issue_tokens(store, load_identity(state), 3)
    operator_token(state)  # before the replicas start, so all read one file
    log = open(tmp_path / "replicas.log", "a")  # noqa: SIM115 - the replicas write to it until the end

    def start(port: int) -> subprocess.Popen:
        command = ["serve", "--config", str(tmp_path / "c.json"), "--port", str(port)]
        return subprocess.Popen([sys.executable, "-m", "lada_coordinator.cli", *command], stdout=log, stderr=log)

    procs = {port: start(port) for port in ports}
    acked: list[tuple[int, str]] = []
    try:
        clients = [Alternating(urls, Identity.generate(), acked) for _ in tokens]
        for i, (client, token) in enumerate(zip(clients, tokens)):
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.enroll(token, f"d{i}")
                    break
                except Exception:  # noqa: BLE001 - the replicas are still starting
                    assert time.monotonic() < deadline, (tmp_path / "replicas.log").read_text()[-3000:]
                    time.sleep(0.3)
        status = _wait_round(urls, state, 1, "features")
        leader = status["leadership"]["leader_replica"]
        leader_port = int(leader.split(":")[1].split("/")[0])
        follower_port = next(p for p in ports if p != leader_port)
        views = [
            httpx.get(f"{u}/v1/status", headers={"Authorization": f"Bearer {operator_token(state)}"}).json()
            for u in urls
        ]
        assert sorted(v["leadership"]["leader"] for v in views) == [False, True]  # one engine runs
        assert all(v["leadership"]["database"] == "postgresql" for v in views)

        rng = np.random.default_rng(0)

        def features(client: Alternating, t: int) -> None:
            info = client.call("round.get", wire.RoundQuery(), t, wire.RoundInfo)
            z = rng.uniform(0, 3, size=(len(info.candidates), len(info.feature_names))).tolist()
            ids = [c.sample_id for c in info.candidates]
            upload = wire.FeatureUpload(round=t, feature_names=info.feature_names, sample_ids=ids, features=z)
            client.upload("features.put", upload, t)

        def reward(client: Alternating, t: int) -> None:
            allocation = client.call("allocation.get", wire.AllocationQuery(round=t), t, wire.Allocation)
            assert allocation.status == "ready"
            report = wire.RewardReport(
                round=t,
                reward=0.2,
                ppl_before=3.0,
                ppl_after=2.4,
                n_allocated=len(allocation.sample_ids),
                test_accuracy=0.1,
                bytes_sent=1,
                bytes_received=1,
            )
            client.upload("reward.put", report, t)

        features(clients[0], 1)
        features(clients[1], 1)
        chunks = 0

        def kill_the_leader_mid_upload(path: str) -> None:
            nonlocal chunks
            if path == "/v1/upload/chunk":
                chunks += 1
                if chunks == 2:  # two chunks of the third upload acknowledged (one by each replica)
                    os.kill(procs[leader_port].pid, signal.SIGKILL)
                    procs[leader_port].wait(10)

        clients[2].hook = kill_the_leader_mid_upload
        features(clients[2], 1)  # finishes on the surviving replica
        clients[2].hook = lambda path: None
        assert procs[leader_port].poll() is not None and chunks >= 2
        status = _wait_round(urls, state, 1, "training", timeout=120)  # the survivor's engine took over
        assert status["leadership"]["leader_replica"].split(":")[1].startswith(str(follower_port))
        for client in clients:
            reward(client, 1)
        _wait_round(urls, state, 2, "features")
        for client in clients:
            features(client, 2)
        _wait_round(urls, state, 2, "training")
        for client in clients:
            reward(client, 2)
        status = _wait_round(urls, state, 2, "finished")
        assert [r["phase"] for r in status["rounds"]] == ["closed", "finished"]
        assert all(sorted(r["clients"]) == ["d0", "d1", "d2"] for r in status["rounds"])
        # every acknowledged upload is stored, whichever replica acknowledged it
        assert len(acked) == 3 * 2 * ROUNDS
        by_client = {c.client_id: c for c in clients}
        for t, kind in set(acked):
            assert store.uploaders(t, kind) == set(by_client), (t, kind)
        assert store.uploads(1, "features.put")[clients[2].client_id].round == 1
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        store.close()
        log.close()
