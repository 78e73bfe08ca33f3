"""The HTTP API on a real uvicorn server with a real SQLite store: bad input gets a clear 4xx and
changes nothing in the database."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from lada_client.common.crypto import Direction, Identity
from lada_client.common.wire import Ack, Candidate, Capabilities, FeatureUpload, RoundInfo, RoundQuery
from lada_client.transport import CoordinatorError, Transport


def _open_round(store) -> None:
    info = RoundInfo(
        round=1,
        phase="features",
        total_rounds=2,
        candidates=[
            Candidate(
                sample_id="p1", question="1+1?", path="1 + 1 = 2. The answer is 2.", llm_logprob=-3.0, llm_tokens=9
            )
        ],
        feature_names=["slm_path_nll"],
    )
    store.open_round(1, info)


def test_round_trip_and_status(server, enroll):
    url, store, _ = server
    t = enroll(server)
    info = t.call("round.get", RoundQuery(), 0, RoundInfo)
    assert info.phase == "waiting"
    _open_round(store)
    info = t.call("round.get", RoundQuery(), 0, RoundInfo)
    assert info.round == 1 and info.candidates[0].sample_id == "p1"
    ack = t.call(
        "features.put",
        FeatureUpload(round=1, feature_names=["slm_path_nll"], sample_ids=["p1"], features=[[1.5]]),
        1,
        Ack,
    )
    assert ack.message == "stored"
    assert store.uploads(1, "features.put")[t.client_id].features == [[1.5]]
    # stored beside the payload as the engine reads it: one float32 row per candidate
    (matrix,) = store.feature_matrices(1).values()
    assert matrix.dtype == np.float32 and matrix.tolist() == [[1.5]]
    assert httpx.get(f"{url}/v1/status").status_code == 401  # the operator's view needs its token
    status = httpx.get(f"{url}/v1/status", headers=_operator(server)).json()
    assert status["clients"] == 1 and status["round"] == 1 and status["total_rounds"] == 2
    assert [d["name"] for d in status["devices"]] == ["dev1"]
    (device,) = status["devices"]
    assert device["enrolled_at"] < device["last_seen"] <= status["now"]  # seen at its last request
    assert (device["revoked"], device["quarantined"]) == (False, None)
    assert status["arrived"] == {"features": 1, "rewards": 0, "expected": 1}
    assert status["rounds"][0]["opened_at"] <= status["now"] and status["rounds"][0]["closed_at"] is None
    store.quarantine(1, t.client_id, "features.put", "bad_features: test")
    store.revoke_client("dev1")
    status = httpx.get(f"{url}/v1/status", headers=_operator(server)).json()
    assert status["clients"] == 0 and status["arrived"]["expected"] == 0
    (device,) = status["devices"]  # a revoked device stays in the operator's list, marked
    assert device["revoked"] and device["quarantined"] == "features.put: bad_features: test"
    assert device["capabilities"] == Capabilities().model_dump()  # what it declared at enrollment
    (entry,) = status["quarantine"]
    assert {**entry, "at": 0} == {
        "round": 1,
        "client_id": t.client_id,
        "stage": "features.put",
        "error": "bad_features: test",
        "at": 0,
        "name": "dev1",
    }
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}  # public: nothing per client


def _operator(server) -> dict[str, str]:
    from lada_coordinator.credentials import operator_token

    return {"Authorization": f"Bearer {operator_token(server[2].state_dir)}"}


def test_enrollment_tokens_are_one_time(server, issue, db_dump):
    url, _store, config = server
    token = issue(config)
    assert Transport(url, Identity.generate()).enroll(token, "a").startswith("a-")
    before = db_dump(Path(config.db_path))
    with pytest.raises(CoordinatorError) as exc:
        Transport(url, Identity.generate()).enroll(token, "b")
    assert exc.value.status == 401 and exc.value.error == "bad_token" and "already used" in str(exc.value)
    from lada_client.common.enrollment import EnrollmentToken

    never = EnrollmentToken.new(EnrollmentToken.parse(token).fingerprint)  # names this coordinator, never issued
    with pytest.raises(CoordinatorError, match="unknown enrollment token"):
        Transport(url, Identity.generate()).enroll(str(never), "c")
    assert db_dump(Path(config.db_path)) == before


def test_overlong_client_name_is_a_clear_error(server, issue, db_dump):
    url, _store, config = server
    token = issue(config)
    before = db_dump(Path(config.db_path))
    with pytest.raises(ValueError, match="client_name"):  # refused before anything is sent
        Transport(url, Identity.generate()).enroll(token, "n" * 56)
    assert db_dump(Path(config.db_path)) == before
    assert Transport(url, Identity.generate()).enroll(
        issue(config), "n" * 55
    )  # the longest name whose client id still fits


@pytest.mark.parametrize(
    "attack",
    [
        "unknown_client",
        "bad_signature",
        "malformed",
        "replay",
        "wrong_round",
        "oversized",
        "wrong_kind",
        "nan_features",
        "truncated",
    ],
)
def test_bad_requests_get_4xx_and_change_nothing(server, attack, enroll, db_dump):
    url, store, config = server
    t = enroll(server)
    _open_round(store)
    t.call("round.get", RoundQuery(), 1, RoundInfo)  # a first accepted request
    payload = FeatureUpload(round=1, feature_names=["slm_path_nll"], sample_ids=["p1"], features=[[1.0]])
    from lada_client.common.crypto import seal
    from lada_client.common.wire import EnvelopeHeader

    def envelope(round_index=1, seq=None, kind="features.put", client_id=None, signer=None, body=None):
        header = EnvelopeHeader(
            client_id=client_id or t.client_id,
            round=round_index,
            seq=seq or t._seq.next(),
            kind=kind,
            sent_at=time.time(),
        )
        env = seal(
            body or payload.model_dump_json().encode(),
            header,
            signer or t._identity,
            t.coordinator,
            Direction.TO_COORDINATOR,
        )
        return env

    path = "/v1/features"
    if attack == "unknown_client":
        body, want = envelope(client_id="ghost"), 401
    elif attack == "bad_signature":
        body, want = envelope(signer=Identity.generate()), 401
    elif attack == "malformed":
        body, want = b'{"header": {"client_id": "' + t.client_id.encode() + b'"}, "nonce": 3}', 422
    elif attack == "replay":
        body = envelope()
        assert httpx.post(url + path, content=body.to_bytes()).status_code == 200
        want = 409
    elif attack == "wrong_round":
        p2 = payload.model_copy(update={"round": 2})
        body, want = envelope(round_index=2, body=p2.model_dump_json().encode()), 409
    elif attack == "oversized":
        body, want = b"x" * (config.max_body_bytes + 1), 413
    elif attack == "wrong_kind":
        body, want = envelope(kind="reward.put"), 400
    elif attack == "nan_features":
        raw = payload.model_dump_json().replace("1.0", "NaN").encode()
        body, want = envelope(body=raw), 422
    else:  # truncated ciphertext
        good = envelope()
        body, want = good.model_copy(update={"ciphertext": good.ciphertext[:-8]}), 401
    before = db_dump(Path(config.db_path))
    wire = body if isinstance(body, bytes) else body.to_bytes()
    r = httpx.post(url + path, content=wire, headers={"content-type": "application/octet-stream"})
    assert r.status_code == want, r.text
    err = r.json()
    assert err["error"] and err["detail"]  # a message a user can act on
    after = db_dump(Path(config.db_path))
    if attack == "nan_features":  # authenticated but unusable: the device is set aside for the round
        assert "finite" in store.quarantined(1)[t.client_id]
        after = [line for line in after if not line.startswith('INSERT INTO "quarantine"')]
    else:
        assert store.quarantined(1) == {}
    assert after == before  # no round data changed


def test_transport_surfaces_server_errors(server, enroll):
    _url, store, _ = server
    t = enroll(server)
    _open_round(store)
    with pytest.raises(CoordinatorError, match=r"wrong_phase|wrong_round|no_allocation"):
        from lada_client.common.wire import RewardReport

        t.call(
            "reward.put",
            RewardReport(
                round=1,
                reward=0.1,
                ppl_before=2,
                ppl_after=1.8,
                n_allocated=1,
                test_accuracy=0,
                bytes_sent=0,
                bytes_received=0,
            ),
            1,
            Ack,
        )
    with pytest.raises(CoordinatorError, match="cannot reach"):
        Transport("http://127.0.0.1:9", Identity.generate(), timeout_s=2)._post("/healthz", b"")


def test_score_only_device_contributes_features_but_gets_no_allocation(server, enroll):
    """Capabilities declared at enrollment are respected by the round engine."""
    from lada_client.common.wire import Allocation, AllocationQuery

    _url, store, config = server
    transports = [
        enroll(server, name, capabilities=Capabilities(can_train=can_train))
        for name, can_train in (("phone", False), ("laptop", True))
    ]
    _open_round(store)
    for t in transports:
        t.call(
            "features.put",
            FeatureUpload(round=1, feature_names=["slm_path_nll"], sample_ids=["p1"], features=[[1.0]]),
            1,
            Ack,
        )
    from lada_coordinator.server.run import build  # the same engine class the server runs

    _, engine, engine_store = build(config)
    engine._allocate(1)
    phone, laptop = (t.call("allocation.get", AllocationQuery(round=1), 1, Allocation) for t in transports)
    assert (phone.sample_ids, phone.reason) == ([], "score_only")
    assert phone.server_update is None
    assert laptop.sample_ids == ["p1"]
    engine_store.close()


def test_score_only_device_gets_an_adapter_trained_server_side_when_configured(server, enroll, tiny_world, tmp_path):
    """score_only_update='server': the coordinator trains the device's adapter from its model's
    checkpoint on the allocated teacher paths, and the device merges it without torch."""
    import dataclasses

    from lada_client.common.wire import Allocation, AllocationQuery
    from lada_client.models.weight_swap import apply_lora_factors
    from lada_client.scoring.onnx_slm import OnnxSLM
    from lada_coordinator.server.run import build

    _url, store, config = server
    phone = enroll(server, "phone", model_name="slm-small", capabilities=Capabilities(can_train=False))
    _open_round(store)
    phone.call(
        "features.put",
        FeatureUpload(round=1, feature_names=["slm_path_nll"], sample_ids=["p1"], features=[[1.0]]),
        1,
        Ack,
    )
    device_model = tiny_world["client2"]  # slm-small, as the phone declared
    server_side = dataclasses.replace(
        config, score_only_update="server", slm_checkpoints={"slm-small": device_model / "base"}
    )
    _, engine, engine_store = build(server_side)
    engine._allocate(1)
    engine_store.close()
    got = phone.call("allocation.get", AllocationQuery(round=1), 1, Allocation)
    _, engine, engine_store = build(server_side)  # a coordinator restarted while allocating round 1
    engine._allocate(1)
    engine_store.close()
    again = phone.call("allocation.get", AllocationQuery(round=1), 1, Allocation)
    assert again.server_update == got.server_update  # trained from the same start, not twice
    assert got.sample_ids == ["p1"] and got.server_update
    assert (
        config.state_dir / "score_only" / phone.client_id / "round1" / "adapter_config.json"
    ).exists()  # next round starts from it

    merged = apply_lora_factors(device_model / "onnx" / "model.onnx", tmp_path / "model.onnx", got.server_update)
    (tmp_path / "tokenizer.json").write_bytes((device_model / "onnx" / "tokenizer.json").read_bytes())
    before = OnnxSLM(device_model / "onnx" / "model.onnx").completion_logprobs(
        ["1+1?"], [" 1 + 1 = 2. The answer is 2."]
    )
    after = OnnxSLM(merged).completion_logprobs(["1+1?"], [" 1 + 1 = 2. The answer is 2."])
    assert after[0].sum() > before[0].sum()  # trained on that path: it became more likely

    with pytest.raises(ValueError, match="slm_checkpoints"):
        dataclasses.replace(config, score_only_update="server")
    with pytest.raises(ValueError, match=r"no config\.json"):  # caught at start-up, not mid-round
        build(dataclasses.replace(server_side, slm_checkpoints={"slm-small": tmp_path}))


def test_every_route_of_the_shared_route_table_is_served(server):
    """The transport posts kind k to ROUTES[k] and the server mounts a handler at each of them; the
    unsealed endpoints are served where the same table puts them."""
    from lada_client.common.wire import KIND_PAYLOADS, ROUTES

    url, _, _ = server
    json_body = {"content": b"{}", "headers": {"Content-Type": "application/json"}}
    for kind in KIND_PAYLOADS:
        reply = httpx.post(f"{url}{ROUTES[kind]}", **json_body)
        assert reply.status_code not in (404, 405) and 400 <= reply.status_code < 500, (kind, reply.status_code)
    assert set(ROUTES) - set(KIND_PAYLOADS) == {"health", "identity", "enroll", "status", "dashboard"}
    assert httpx.get(f"{url}{ROUTES['health']}").json() == {"status": "ok"}
    assert set(httpx.get(f"{url}{ROUTES['identity']}").json()) == {"sign_key", "kex_key", "fingerprint"}
    assert httpx.get(f"{url}{ROUTES['status']}").status_code == 401  # the operator's, with its token
    assert httpx.get(f"{url}{ROUTES['dashboard']}").status_code == 200
    assert httpx.post(f"{url}{ROUTES['enroll']}", **json_body).status_code == 422  # served; {} is no enrollment
