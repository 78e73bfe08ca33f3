"""JSON config files become typed config objects on both sides, and bad ones get clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lada_client.config import ClientConfig, DistillSettings, LoraSettings
from lada_coordinator.allocation.eenet import FilterConfig
from lada_coordinator.config import CoordinatorConfig

CLIENT = {"coordinator_url": "http://127.0.0.1:1", "name": "c", "state_dir": "s", "data_dir": "d", "scoring_model": "m.onnx"}
COORD = {"db_path": "db.sqlite", "state_dir": "s", "llm_dir": "llm", "public_data": "data"}


def test_client_config_round_trips_through_json(tmp_path: Path) -> None:
    cfg = ClientConfig.from_dict(
        {**CLIENT, "base_model_dir": "base", "features": ["slm_path_nll"], "lora": {"r": 4, "target_modules": ["q_proj"]},
         "distill": {"alpha": 0.0}}
    )
    assert cfg.state_dir == Path("s") and cfg.base_model_dir == Path("base") and cfg.ca_cert is None
    assert cfg.features == ("slm_path_nll",)
    assert cfg.lora == LoraSettings(r=4, target_modules=("q_proj",))
    assert cfg.distill == DistillSettings(alpha=0.0)
    path = tmp_path / "client.json"
    path.write_text(cfg.to_json())
    assert ClientConfig.load(path) == cfg


def test_coordinator_config_round_trips_through_json(tmp_path: Path) -> None:
    cfg = CoordinatorConfig.from_dict({**COORD, "slm_filter": {"budget": 4}, "llm_lora": {"target_modules": ["q_proj"]}})
    assert cfg.slm_filter == FilterConfig(budget=4) and cfg.llm_lora.target_modules == ("q_proj",)
    path = tmp_path / "coordinator.json"
    path.write_text(cfg.to_json())
    assert CoordinatorConfig.load(path) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**CLIENT, "bogus": 1}, "unknown client config key(s): ['bogus']"),
        ({k: v for k, v in CLIENT.items() if k != "name"}, "client config is missing: ['name']"),
        ({**CLIENT, "distill": {"alpah": 0.5}}, "unknown client config 'distill' key(s): ['alpah']"),
        ({**CLIENT, "distill": {"alpha": -1}}, "alpha must be >= 0"),
        ({**CLIENT, "train_backend": "tf"}, "train_backend must be 'torch' or 'ort'"),
    ],
)
def test_bad_client_configs_name_the_problem(data: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        ClientConfig.from_dict(data)
    assert message in str(info.value)


def test_unreadable_or_invalid_files_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read coordinator config"):
        CoordinatorConfig.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is invalid"):
        ClientConfig.load(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="must be a JSON object"):
        CoordinatorConfig.load(bad)
    bad.write_text(json.dumps({**COORD, "slm_filter": {"budget": 0}}))
    with pytest.raises(ValueError, match="budget must be a positive integer"):
        CoordinatorConfig.load(bad)
