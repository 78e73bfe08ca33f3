"""examples/jetson/run_client.py: provider choice, device settings, and a CPU run of --check."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "jetson"
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def run_client() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lada_jetson_run_client", EXAMPLE / "run_client.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_provider_selection_falls_back_to_cpu(run_client, caplog):
    import onnxruntime as ort

    if GPU_PROVIDERS & set(ort.get_available_providers()):
        pytest.skip("this onnxruntime has GPU providers; the fallback cannot be observed")
    with caplog.at_level(logging.INFO):
        chosen = run_client.choose_providers(run_client.DeviceSettings())
    assert chosen == ["CPUExecutionProvider"]
    logged = [r.getMessage() for r in caplog.records if r.name == "lada_jetson"]
    assert any("using ['CPUExecutionProvider']" in m and "TensorrtExecutionProvider" in m for m in logged), logged


def test_example_config_parses(run_client):
    config, device = run_client.load_settings(EXAMPLE / "jetson.json")
    assert config.name and config.coordinator_url.startswith("https://")
    assert str(config.scoring_model).endswith("model.onnx") and config.base_model_dir is None
    assert device.providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert device.memory_limit_mb == 3072 and device.gpu_limit_mb == 1536
    assert device.intra_op_threads == 4 and isinstance(device.power_mode, int)

    trt, cuda, cpu = run_client.provider_options(device.providers, device)
    assert trt["trt_fp16_enable"] == "True" and trt["trt_engine_cache_path"] == device.trt_engine_cache_dir
    assert int(trt["trt_max_workspace_size"]) == 1024 * MIB  # capped below the arena
    assert int(cuda["gpu_mem_limit"]) == 1536 * MIB and cuda["arena_extend_strategy"] == "kSameAsRequested"
    assert cpu == {}


def test_the_systemd_unit_matches_the_example_config():
    unit = (EXAMPLE / "lada-client.service").read_text()
    device = json.loads((EXAMPLE / "jetson.json").read_text())["device"]
    assert f"nvpmodel -m {device['power_mode']}" in unit
    assert f"MemoryHigh={device['memory_limit_mb']}M" in unit
    assert "run_client.py --config /etc/lada/jetson.json" in unit


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ({"memory_limit": 100}, "unknown device setting"),
        ({"memory_limit_mb": -1}, "memory_limit_mb"),
        ({"memory_limit_mb": 1024, "gpu_mem_limit_mb": 2048}, "cannot exceed"),
        ({"providers": []}, "providers"),
        ({"providers": "CPUExecutionProvider"}, "providers must be a list"),
    ],
)
def test_bad_device_settings_are_explained(run_client, tmp_path, device, message):
    path = tmp_path / "jetson.json"
    client = {"coordinator_url": "http://x", "name": "c", "state_dir": "s", "data_dir": "d", "scoring_model": "m.onnx"}
    path.write_text(json.dumps({"client": client, "device": device}))
    with pytest.raises(ValueError, match=message):
        run_client.load_settings(path)


def test_a_bad_client_section_names_the_file_and_the_field(run_client, tmp_path):
    path = tmp_path / "jetson.json"
    client = {
        "coordinator_url": "http://x",
        "name": "c",
        "state_dir": "s",
        "data_dir": "d",
        "scoring_model": "m.onnx",
        "batch_size": "16",
    }
    path.write_text(json.dumps({"client": client, "device": {}}))
    with pytest.raises(ValueError, match=f"^{path}: client section: batch_size: must be an integer, got '16'"):
        run_client.load_settings(path)


@pytest.fixture(scope="module")
def device_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained SLM and one client's data, as they would sit under /var/lib/lada."""
    pytest.importorskip("torch")
    pytest.importorskip("optimum.exporters.onnx")
    from lada_client.common.reasoning import format_prompt, format_target
    from lada_client.models.export import export_scoring_model
    from lada_coordinator.simulation.domains import make_federation
    from lada_coordinator.simulation.factory import create_model
    from lada_coordinator.simulation.tokenizer import build_tokenizer, save_tokenizer

    root = tmp_path_factory.mktemp("jetson")
    federation = make_federation(["mul"], n_train=8, n_test=4, n_public=8, seed=1)
    federation.save(root / "data")
    samples = federation.public + federation.clients[0].train
    texts = [format_prompt(s.question) + format_target(s.rationale) for s in samples]
    save_tokenizer(build_tokenizer(texts), root / "tokenizer")
    create_model("slm-small", root / "tokenizer", root / "base")
    export_scoring_model(root / "base", root / "model" / "model.onnx")
    return root


def test_check_and_client_run_on_cpu_with_device_settings(run_client, device_files, tmp_path, capsys):
    settings = json.loads((EXAMPLE / "jetson.json").read_text())
    settings["client"].update(
        name="client0",
        state_dir=str(tmp_path / "state"),
        data_dir=str(device_files / "data"),
        scoring_model=str(device_files / "model" / "model.onnx"),
    )
    settings["device"]["trt_engine_cache_dir"] = str(tmp_path / "trt")
    path = tmp_path / "jetson.json"
    path.write_text(json.dumps(settings))

    assert run_client.main(["--config", str(path), "--check"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["providers"] == ["CPUExecutionProvider"] and summary["first_score_tokens"] > 0
    assert summary["memory"]["budget_mb"] == 3072

    config, device = run_client.load_settings(path)
    with run_client.JetsonClient(config, device) as client:
        assert isinstance(client.slm, run_client.TunedOnnxSLM)
        assert client.slm.providers == ["CPUExecutionProvider"]
        # the budget in jetson.json turns the CPU arena off, through OnnxSLM's public options
        assert client.slm.session.get_session_options().enable_cpu_mem_arena is False
        assert client.slm.session.get_session_options().intra_op_num_threads == device.intra_op_threads
        assert client.slm.max_new_tokens == config.max_new_tokens
        # LadaClient reloads its model through load_slm after every adapter refresh.
        reloaded = client.load_slm(device_files / "model" / "model.onnx")
        assert isinstance(reloaded, run_client.TunedOnnxSLM) and reloaded.providers == ["CPUExecutionProvider"]
        assert 0.0 <= client.evaluate() <= 1.0
