"""The transport's chunked uploads against a real coordinator server (uvicorn, SQLite, real crypto):
bodies over the chunk threshold go in chunks, an interrupted upload resumes with the missing chunks
only, lost replies cause no re-sends, and a repeated commit is answered "already stored"."""

from __future__ import annotations

import logging
import random

import httpx
import pytest

from lada_client.common.crypto import Identity
from lada_client.common.wire import Ack, Candidate, FeatureUpload, RoundInfo
from lada_client.config import ClientConfig
from lada_client.transport import DEFAULT_UPLOAD_CHUNK_BYTES, CoordinatorError, RetryPolicy, Transport

CHUNK = 16_384
FAST_RETRY = RetryPolicy(attempts=4, initial_backoff_s=0.01, max_backoff_s=0.02)


@pytest.fixture()
def coordinator(tmp_path, tiny_world, free_port, serve_coordinator):
    """A real coordinator HTTP server with a small max_body_bytes, the round engine not started."""
    from lada_coordinator.config import CoordinatorConfig

    config = CoordinatorConfig(
        db_path=tmp_path / "c.sqlite",
        state_dir=tmp_path / "state",
        llm_dir=tiny_world["llm"],
        public_data=tiny_world["data"],
        port=free_port,
        max_body_bytes=32_768,
        rounds=2,
    )
    with serve_coordinator(config) as (url, store):
        candidates = [
            Candidate(
                sample_id=f"p{i:05d}",
                question="1+1?",
                path="1 + 1 = 2. The answer is 2.",
                llm_logprob=-3.0,
                llm_tokens=9,
            )
            for i in range(1500)
        ]
        info = RoundInfo(
            round=1, phase="features", total_rounds=2, candidates=candidates, feature_names=["a", "b", "c", "d"]
        )
        store.open_round(1, info)
        yield url, store, info, config


def _client(coordinator, retry: RetryPolicy = FAST_RETRY) -> Transport:
    from lada_coordinator.credentials import issue_tokens, load_identity

    url, store, _, config = coordinator
    t = Transport(url, Identity.generate(), retry=retry, upload_chunk_bytes=CHUNK)
    t.enroll(issue_tokens(store, load_identity(config.state_dir), 1)[0], f"dev{random.randrange(10**6)}")
    return t


def _features(info: RoundInfo, seed: int = 0) -> FeatureUpload:
    rng = random.Random(seed)
    return FeatureUpload(
        round=1,
        feature_names=info.feature_names,
        sample_ids=[c.sample_id for c in info.candidates],
        features=[[rng.uniform(0, 3) for _ in info.feature_names] for _ in info.candidates],
    )


class Network:
    """Wraps the transport's HTTP client: counts requests per path and injects faults.

    ``faults[(path, n)] = "down"`` fails the n-th request to ``path`` before it leaves (connection
    refused); ``"lost"`` delivers it and then loses the reply (read error).
    """

    def __init__(self, t: Transport) -> None:
        self.counts: dict[str, int] = {}
        self.delivered: dict[str, int] = {}
        self.faults: dict[tuple[str, int], str] = {}
        self._post = t._http.post
        t._http.post = self.post

    def post(self, path, **kw):
        n = self.counts[path] = self.counts.get(path, 0) + 1
        fault = self.faults.get((path, n))
        if fault == "down":
            raise httpx.ConnectError("connection refused (injected)")
        response = self._post(path, **kw)
        self.delivered[path] = self.delivered.get(path, 0) + 1
        if fault == "lost":
            raise httpx.ReadError("connection reset while reading the reply (injected)")
        return response


def _n_chunks(t: Transport, payload: FeatureUpload) -> int:
    return -(-len(t._seal("features.put", payload.model_dump_json().encode(), 1)[1]) // CHUNK)


def test_interrupted_upload_resumes_with_the_missing_chunks_only(coordinator):
    _url, store, info, _ = coordinator
    t = _client(coordinator, RetryPolicy(attempts=1))  # no retries: the first call fails for good
    net = Network(t)
    payload = _features(info)
    n = _n_chunks(t, payload)
    net.faults[("/v1/upload/chunk", 5)] = "down"  # the link drops after 4 chunks
    with pytest.raises(CoordinatorError, match="cannot reach"):
        t.call("features.put", payload, 1, Ack)
    assert net.delivered["/v1/upload/chunk"] == 4 and not store.uploads(1, "features.put")
    net.counts.clear(), net.delivered.clear(), net.faults.clear()

    ack = t.call("features.put", payload, 1, Ack)  # the device retries the same upload later
    assert ack.message == "stored"
    assert net.counts["/v1/upload/begin"] == 1  # which chunks do you hold? -> 0..3
    assert net.counts["/v1/upload/chunk"] == n - 4  # only the missing ones
    assert store.uploads(1, "features.put")[t.client_id].features == payload.features
    assert t._pending == {}


def test_outage_mid_upload_is_retried_per_chunk(coordinator, caplog):
    _url, _store, info, _ = coordinator
    t = _client(coordinator)
    net = Network(t)
    payload = _features(info)
    n = _n_chunks(t, payload)
    net.faults[("/v1/upload/chunk", 3)] = "down"  # refused, then the status query fails too
    net.faults[("/v1/upload/status", 1)] = "down"
    net.faults[("/v1/upload/chunk", 6)] = "lost"  # stored, but the reply is lost
    with caplog.at_level(logging.INFO, logger="lada_client.transport"):
        assert t.call("features.put", payload, 1, Ack).message == "stored"
    assert net.delivered["/v1/upload/chunk"] == n  # every chunk reached the coordinator exactly once
    assert net.counts["/v1/upload/chunk"] == n + 1  # one attempt that never left; the lost one not re-sent
    assert net.counts["/v1/upload/status"] == 2  # asked after each failure
    text = caplog.text
    assert "uploading a" in text and f"{n}/{n} chunks sent (100%)" in text and "committed" in text


def test_lost_commit_reply_is_idempotent(coordinator):
    _url, store, info, _ = coordinator
    t = _client(coordinator)
    net = Network(t)
    net.faults[("/v1/upload/commit", 1)] = "lost"  # committed, but the device never hears it
    ack = t.call("features.put", _features(info), 1, Ack)
    assert ack.message == "already stored"  # the same answer as a retried direct upload
    assert net.delivered["/v1/upload/commit"] == 2
    assert len(store.uploads(1, "features.put")) == 1


def test_small_bodies_go_in_one_request(coordinator):
    _url, _store, info, _ = coordinator
    t = _client(coordinator)
    t.upload_chunk_bytes = DEFAULT_UPLOAD_CHUNK_BYTES
    net = Network(t)
    small = FeatureUpload(
        round=1,
        feature_names=info.feature_names,
        sample_ids=[c.sample_id for c in info.candidates[:3]],
        features=[[1.0] * 4] * 3,
    )
    with pytest.raises(CoordinatorError) as exc:  # the round has 1500 candidates: refused, but in one request
        t.call("features.put", small, 1, Ack)
    assert exc.value.status == 422 and net.counts == {"/v1/features": 1}


def test_refused_commit_is_final_and_not_kept_for_resume(coordinator):
    _url, store, info, _ = coordinator
    t = _client(coordinator)
    store.set_phase(1, "training")
    with pytest.raises(CoordinatorError) as exc:
        t.call("features.put", _features(info), 1, Ack)
    assert (exc.value.status, exc.value.error) == (409, "wrong_phase")
    assert t._pending == {}


def test_chunk_size_is_configurable():
    base = {
        "coordinator_url": "http://x",
        "name": "d",
        "state_dir": "/tmp/s",
        "data_dir": "/tmp/d",
        "scoring_model": "/tmp/m",
    }
    assert ClientConfig.from_dict(base).upload_chunk_bytes == DEFAULT_UPLOAD_CHUNK_BYTES == 4 * 1024 * 1024
    assert ClientConfig.from_dict({**base, "upload_chunk_bytes": 1 << 20}).upload_chunk_bytes == 1 << 20
    with pytest.raises(ValueError):
        Transport("http://127.0.0.1:9", Identity.generate(), upload_chunk_bytes=10)
