"""The mobile bridge, driven with JSON strings exactly as the Android app sends them."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from lada_client.bridge import ERROR_CODES, Bridge

REPO = Path(__file__).resolve().parents[2]
CPU = "CPUExecutionProvider"


@pytest.fixture(scope="module")
def device_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phone's files, laid out as the app lays them out: model/, data/ (state/ is per test)."""
    pytest.importorskip("torch")
    pytest.importorskip("optimum.exporters.onnx")
    from lada_client.common.reasoning import format_prompt, format_target
    from lada_client.models.export import export_scoring_model
    from lada_coordinator.simulation.domains import make_federation
    from lada_coordinator.simulation.factory import create_model
    from lada_coordinator.simulation.tokenizer import build_tokenizer, save_tokenizer

    root = tmp_path_factory.mktemp("phone")
    federation = make_federation(["add"], n_train=16, n_test=4, n_public=16, seed=0)
    federation.save(root / "data")
    samples = federation.public + federation.clients[0].train
    texts = [format_prompt(s.question) + format_target(s.rationale) for s in samples]
    save_tokenizer(build_tokenizer(texts), root / "build" / "tokenizer")
    create_model("slm-small", root / "build" / "tokenizer", root / "build" / "base")
    export_scoring_model(root / "build" / "base", root / "model" / "model.onnx")
    return root


def configure_json(root: Path, state_dir: Path, coordinator_url: str = "http://127.0.0.1:9", **extra: object) -> str:
    """What LadaBridge.configure sends (see examples/android_bridge/.../LadaBridge.kt)."""
    params = {
        "coordinator_url": coordinator_url,
        "name": "client0",
        "state_dir": str(state_dir),
        "data_dir": str(root / "data"),
        "scoring_model": str(root / "model" / "model.onnx"),
        "batch_size": 4,
        "eval_size": 16,
        "max_offers": 8,
        "request_timeout_s": 30.0,
        "poll_interval_s": 2.0,
        "max_wait_s": 480.0,
        "runtime": {"intra_op_threads": 2},
        **extra,
    }
    return json.dumps({"method": "configure", "params": params})


def send(bridge: Bridge, request: str) -> dict:
    reply = bridge.call(request)
    assert isinstance(reply, str) and "Traceback" not in reply
    parsed = json.loads(reply)
    if not parsed["ok"]:
        assert parsed["error"]["code"] in ERROR_CODES and parsed["error"]["message"]
    return parsed


def error_code(reply: dict) -> str:
    assert reply["ok"] is False, reply
    return reply["error"]["code"]


def test_configure_score_status(device_root, tmp_path):
    bridge = Bridge()
    configured = send(bridge, configure_json(device_root, tmp_path / "state"))
    assert configured["ok"], configured
    result = configured["result"]
    assert result["configured"] and not result["enrolled"] and result["client_id"] is None
    assert result["providers"] == [CPU] and result["model_path"].endswith("model.onnx")

    request = (
        '{"method": "score", "params": {"candidates": ['
        '{"question": "Mia has 12 stickers and gives away 5. How many stickers does Mia have left?",'
        ' "path": "12 - 5 = 7. The answer is 7.", "llm_logprob": -3.2, "llm_tokens": 14},'
        '{"question": "Ben has 3 coins and finds 4 more. How many coins does Ben have now?",'
        ' "path": "3 + 4 = 7. The answer is 7.", "llm_logprob": -2.5, "llm_tokens": 12, "sample_id": "q-2"}]}}'
    )
    scored = send(bridge, request)
    assert scored["ok"], scored
    rows, names = scored["result"]["rows"], scored["result"]["feature_names"]
    assert names == [
        "slm_path_nll",
        "slm_answer_nll",
        "logp_gap",
        "path_tokens",
        "slm_greedy_correct",
        "local_similarity",
    ]
    assert len(rows) == 2 and all(len(r) == len(names) for r in rows)
    assert all(isinstance(v, float) and math.isfinite(v) for r in rows for v in r)
    assert all(r[0] > 0 and r[3] >= 1 for r in rows)  # an NLL and a token count
    assert all(0 < r[5] <= 1 for r in rows)  # the device's own questions are word problems like these
    assert scored["result"]["sample_ids"] == ["local-0", "q-2"]

    subset = send(
        bridge,
        json.dumps(
            {
                "method": "score",
                "id": 41,
                "params": {
                    "candidates": [
                        {
                            "question": "What is 2 + 2?",
                            "path": "2 + 2 = 4. The answer is 4.",
                            "llm_logprob": -1.0,
                            "llm_tokens": 9,
                        }
                    ],
                    "feature_names": ["logp_gap", "path_tokens"],
                },
            }
        ),
    )
    assert subset["ok"] and subset["id"] == 41 and len(subset["result"]["rows"][0]) == 2

    status = send(bridge, '{"method": "status", "params": {}}')
    assert status["ok"]
    s = status["result"]
    assert s["configured"] and not s["busy"] and s["client_name"] == "client0" and not s["enrolled"]
    assert s["providers"] == [CPU] and s["bytes_sent"] == 0 and s["bytes_received"] == 0
    assert s["last_round"] is None and s["rounds_completed"] == []

    assert send(bridge, '{"method": "shutdown", "params": {}}')["result"] == {"closed": True}
    assert error_code(send(bridge, request)) == "not_configured"


@pytest.mark.parametrize(
    "request_json",
    [
        "{not json",
        "",
        "[1, 2]",
        '{"params": {}}',
        '{"method": 3}',
        '{"method": "status", "params": [1]}',
        '{"method": "status", "extra": 1}',
        '{"method": "status", "params": {"x": NaN}}',
    ],
)
def test_malformed_requests_are_bad_request(request_json):
    assert error_code(send(Bridge(), request_json)) == "bad_request"


def test_non_string_request_and_unknown_method():
    bridge = Bridge()
    assert error_code(json.loads(bridge.call(None))) == "bad_request"  # type: ignore[arg-type]
    reply = send(bridge, '{"method": "fly", "params": {}}')
    assert error_code(reply) == "unknown_method" and "score" in reply["error"]["message"]


def test_methods_before_configure():
    bridge = Bridge()
    for method in ("score", "enroll", "round_step", "train"):
        params = {"candidates": []} if method == "score" else {}
        assert error_code(send(bridge, json.dumps({"method": method, "params": params}))) == "not_configured"
    assert send(bridge, '{"method": "status"}')["result"] == {"configured": False, "busy": False}
    assert send(bridge, '{"method": "shutdown"}')["result"] == {"closed": False}


def test_bad_params_and_config(device_root, tmp_path):
    bridge = Bridge()
    for bad, message in (
        ({"batch_size": "16"}, "batch_size: must be an integer, got '16'"),
        ({"scorer_refresh": "swapp"}, "scorer_refresh: must be 'swap' or 'export'"),
        ({"lora": {"r": 0}}, "lora.r: must be >= 1"),
        ({"poll_interval_s": -1}, "poll_interval_s: must be > 0"),
    ):
        reply = send(bridge, configure_json(device_root, tmp_path / "s1", **bad))
        assert error_code(reply) == "bad_config" and message in reply["error"]["message"], reply
    assert error_code(send(bridge, configure_json(device_root, tmp_path / "s2", colour="blue"))) == "bad_config"
    missing = send(bridge, configure_json(device_root, tmp_path / "s3", scoring_model=str(tmp_path / "none.onnx")))
    assert error_code(missing) == "model_load_failed" and "none.onnx" in missing["error"]["message"]
    assert error_code(send(bridge, configure_json(device_root, tmp_path / "s4", name="client7"))) == "bad_config"

    assert send(bridge, configure_json(device_root, tmp_path / "state"))["ok"]
    no_tokens = '{"method": "score", "params": {"candidates": [{"question": "q", "path": "p", "llm_logprob": -1}]}}'
    reply = send(bridge, no_tokens)
    assert error_code(reply) == "bad_request" and "candidates[0]" in reply["error"]["message"]
    assert "llm_tokens" in reply["error"]["message"]
    reply = send(bridge, '{"method": "score", "params": {"candidates": [], "feature_names": ["nope"]}}')
    assert error_code(reply) == "bad_request" and "nope" in reply["error"]["message"]
    assert error_code(send(bridge, '{"method": "score", "params": {"candidates": "all"}}')) == "bad_request"
    assert error_code(send(bridge, '{"method": "round_step", "params": {"now": true}}')) == "bad_request"


def test_enroll_without_coordinator(device_root, tmp_path, free_port):
    bridge = Bridge()
    url = f"http://127.0.0.1:{free_port}"
    assert send(bridge, configure_json(device_root, tmp_path / "state", coordinator_url=url))["ok"]

    no_token = send(bridge, '{"method": "enroll", "params": {}}')
    assert error_code(no_token) == "bad_request" and "token" in no_token["error"]["message"]
    reply = send(bridge, '{"method": "enroll", "params": {"token": "tok-0123456789abcdef"}}')
    assert error_code(reply) == "bad_request" and "not an enrollment token" in reply["error"]["message"]
    token = "lada1-" + "0" * 32 + "-" + "1" * 48  # well formed: it names a coordinator key
    reply = send(bridge, json.dumps({"method": "enroll", "params": {"token": token}}))
    assert error_code(reply) == "coordinator_unreachable"
    assert url in reply["error"]["message"] and "cannot reach" in reply["error"]["message"]
    # The token is kept, so a worker can retry the enrollment once the network is back.
    assert error_code(send(bridge, '{"method": "enroll", "params": {}}')) == "coordinator_unreachable"
    assert error_code(send(bridge, '{"method": "round_step", "params": {}}')) == "not_enrolled"
    # The device still scores without its coordinator.
    scored = send(
        bridge,
        '{"method": "score", "params": {"candidates": [{"question": "What is 1 + 1?",'
        ' "path": "1 + 1 = 2. The answer is 2.", "llm_logprob": -2.0, "llm_tokens": 10}]}}',
    )
    assert scored["ok"] and len(scored["result"]["rows"]) == 1


def test_stored_enrollment_is_restored_offline(device_root, tmp_path, free_port):
    from lada_client.common.crypto import Identity

    state = tmp_path / "state"
    state.mkdir()
    coordinator = Identity.generate().public.to_b64()
    (state / "enrollment.json").write_text(json.dumps({"client_id": "c-42", **coordinator}))
    bridge = Bridge()
    url = f"http://127.0.0.1:{free_port}"
    configured = send(bridge, configure_json(device_root, state, coordinator_url=url))
    assert configured["ok"] and configured["result"]["enrolled"] and configured["result"]["client_id"] == "c-42"
    assert send(bridge, '{"method": "enroll", "params": {}}')["result"] == {"enrolled": True, "client_id": "c-42"}
    # Enrolled, so round_step goes to the coordinator (which is down) instead of asking for a token.
    assert error_code(send(bridge, '{"method": "round_step", "params": {}}')) == "coordinator_unreachable"


def test_local_training_updates_the_scoring_model(device_root, tmp_path):
    bridge = Bridge()
    extra = {"base_model_dir": str(device_root / "build" / "base")}
    assert send(bridge, configure_json(device_root, tmp_path / "state", **extra))["ok"]
    reply = send(bridge, '{"method": "train", "params": {"epochs": 1, "max_samples": 4}}')
    assert reply["ok"], reply
    result = reply["result"]
    assert result["steps"] >= 1 and result["n_samples"] == 4 and result["exported"]
    assert math.isfinite(result["ppl_before"]) and math.isfinite(result["ppl_after"])
    assert result["model_path"] == str(tmp_path / "state" / "model.onnx")
    status = send(bridge, '{"method": "status"}')["result"]
    assert status["model_path"] == result["model_path"] and status["last_train"]["steps"] == result["steps"]
    assert (tmp_path / "state" / "adapter" / "adapter_config.json").exists()
    # The refreshed model still runs with the app's runtime options (configure_json pins 2 threads).
    assert bridge._client.slm.session.get_session_options().intra_op_num_threads == 2

    # A device configured without a trainable checkpoint says so instead of failing.
    other = Bridge()
    assert send(other, configure_json(device_root, tmp_path / "other"))["ok"]
    assert error_code(send(other, '{"method": "train", "params": {}}')) == "unsupported"


@pytest.mark.parametrize("missing", ["torch", "peft"])
def test_training_without_the_train_extra_is_unsupported(device_root, tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # `import <missing>` now raises ImportError
    bridge = Bridge()
    extra = {"base_model_dir": str(device_root / "build" / "base")}
    configured = send(bridge, configure_json(device_root, tmp_path / "state", **extra))
    assert configured["ok"] and configured["result"]["can_train"] is False
    assert configured["result"]["torch_available"] is (missing != "torch")
    reply = send(bridge, '{"method": "train", "params": {}}')
    assert error_code(reply) == "unsupported" and f"missing: {missing}" in reply["error"]["message"]
    assert not (tmp_path / "state" / "adapter").exists()


def test_drive_bridge_script_runs_offline(device_root, free_port):
    script = REPO / "examples" / "android_bridge" / "drive_bridge.py"
    spec = importlib.util.spec_from_file_location("drive_bridge", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["drive_bridge"] = module
    try:
        spec.loader.exec_module(module)
        url = f"http://127.0.0.1:{free_port}"
        code = module.main(["--root", str(device_root), "--coordinator-url", url, "--train"])
    finally:
        sys.modules.pop("drive_bridge", None)
    assert code == 0
