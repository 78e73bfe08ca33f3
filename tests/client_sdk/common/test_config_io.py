"""JSON config files become typed config objects on both sides, and bad ones get clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lada_client.config import FEATURE_NAMES, ClientConfig, ConfigError, DistillSettings, LoraSettings
from lada_coordinator.allocation.eenet import FilterConfig
from lada_coordinator.config import CoordinatorConfig

CLIENT = {
    "coordinator_url": "http://127.0.0.1:1",
    "name": "c",
    "state_dir": "s",
    "data_dir": "d",
    "scoring_model": "m.onnx",
}
COORD = {"db_path": "db.sqlite", "state_dir": "s", "llm_dir": "llm", "public_data": "data"}


def test_client_config_round_trips_through_json(tmp_path: Path) -> None:
    cfg = ClientConfig.from_dict(
        {
            **CLIENT,
            "base_model_dir": "base",
            "features": ["slm_path_nll"],
            "lora": {"r": 4, "target_modules": ["q_proj"]},
            "distill": {"alpha": 0.0},
        }
    )
    assert cfg.state_dir == Path("s") and cfg.base_model_dir == Path("base") and cfg.ca_cert is None
    assert cfg.features == ("slm_path_nll",)
    assert cfg.lora == LoraSettings(r=4, target_modules=("q_proj",))
    assert cfg.distill == DistillSettings(alpha=0.0)
    path = tmp_path / "client.json"
    path.write_text(cfg.to_json())
    assert ClientConfig.load(path) == cfg


def test_coordinator_config_round_trips_through_json(tmp_path: Path) -> None:
    cfg = CoordinatorConfig.from_dict(
        {**COORD, "slm_filter": {"budget": 4}, "llm_lora": {"target_modules": ["q_proj"]}}
    )
    # a partial section keeps the coordinator's own defaults for the rest (the SLM filters' coverage)
    assert cfg.slm_filter == FilterConfig(budget=4, coverage_fraction=0.25)
    assert cfg.llm_lora.target_modules == ("q_proj",)
    partial = CoordinatorConfig.from_dict({**COORD, "llm_filter": {"seed": 3}, "llm_distill": {"epochs": 4}})
    assert partial.llm_filter == FilterConfig(budget=16, seed=3)
    assert (partial.llm_distill.epochs, partial.llm_distill.lr) == (4, 1e-3)
    path = tmp_path / "coordinator.json"
    path.write_text(cfg.to_json())
    assert CoordinatorConfig.load(path) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**CLIENT, "bogus": 1}, "client config: bogus: unknown field"),
        ({k: v for k, v in CLIENT.items() if k != "name"}, "client config: name: is required"),
        ({**CLIENT, "distill": {"alpah": 0.5}}, "distill.alpah: unknown field (did you mean 'alpha'?)"),
        ({**CLIENT, "distill": {"alpha": -1}}, "distill.alpha: must be >= 0, got -1"),
        ({**CLIENT, "train_backend": "tf"}, "train_backend: must be 'torch' or 'ort', got 'tf'"),
        # the cases that used to be accepted and failed later, deep inside a round
        ({**CLIENT, "batch_size": "16"}, "batch_size: must be an integer, got '16' (a string)"),
        ({**CLIENT, "scorer_refresh": "swapp"}, "scorer_refresh: must be 'swap' or 'export', got 'swapp'"),
        ({**CLIENT, "lora": {"r": 0}}, "lora.r: must be >= 1, got 0"),
        ({**CLIENT, "poll_interval_s": -1}, "poll_interval_s: must be > 0, got -1"),
        ({**CLIENT, "threads": True}, "threads: must be an integer, got True (a boolean)"),
        ({**CLIENT, "distill": {"lr": "0.01"}}, "distill.lr: must be a number, got '0.01'"),
        ({**CLIENT, "distill": {"cd_logprob": "max"}}, "distill.cd_logprob: must be 'mean' or 'sum'"),
        ({**CLIENT, "reward": {"kind": "ppl"}}, "reward.kind: must be 'heldout' or 'ppl_drop'"),
        ({**CLIENT, "dp": {"delta": 1.5}}, "dp.delta: must be < 1, got 1.5"),
        ({**CLIENT, "features": ["slm_path_nll", "slm_iq"]}, "features[1]: must be 'slm_path_nll', "),
        ({**CLIENT, "features": []}, "features: must have at least 1 item"),
        ({**CLIENT, "features": ["logp_gap", "logp_gap"]}, "features: lists logp_gap more than once"),
        ({**CLIENT, "private_sft": "some"}, "private_sft: must be 'all' or 'with_rationale'"),
        ({**CLIENT, "coordinator_url": "127.0.0.1:8765"}, "coordinator_url: must be an http:// or https:// URL"),
        ({**CLIENT, "name": "my phone"}, "name: must match"),
        ({**CLIENT, "state_dir": 3}, "state_dir: must be a path (a string), got 3"),
        ({**CLIENT, "lora": 8}, "lora: must be an object, got 8"),
        ({**CLIENT, "upload_chunk_bytes": 10}, "upload_chunk_bytes: must be >= 1024"),
        ({**CLIENT, "compute": {"device": "gpu"}}, "compute.device: must match"),
        (
            {**CLIENT, "compute": {"dtype": "bfloat16"}},
            "compute.dtype 'bfloat16' with scorer_refresh 'swap' would write rounded base weights",
        ),
        (
            {**CLIENT, "train_backend": "ort", "scorer_refresh": "export"},
            "scorer_refresh: 'export' needs train_backend 'torch'",
        ),
    ],
)
def test_bad_client_configs_name_the_field(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ClientConfig.from_dict(data)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)  # what callers (CLI, bridge) catch
    assert "pydantic" not in str(info.value) and "errors.pydantic.dev" not in str(info.value)


def test_every_bad_field_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "client.json"
    path.write_text(
        json.dumps({**CLIENT, "batch_size": "16", "scorer_refresh": "swapp", "lora": {"r": 0}, "poll_interval_s": -1})
    )
    with pytest.raises(ConfigError) as info:
        ClientConfig.load(path)
    message = str(info.value)
    assert message.splitlines()[0] == f"client config {path} has 4 invalid fields:"
    # in the order of the fields
    assert [f for f, _ in info.value.problems] == ["scorer_refresh", "batch_size", "poll_interval_s", "lora.r"]
    assert len(message.splitlines()) == 5


def test_python_construction_and_replace_validate_too() -> None:
    with pytest.raises(ConfigError, match=r"^DistillSettings: batch_size: must be an integer, got '16'"):
        DistillSettings(batch_size="16")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="r: must be >= 1"):
        LoraSettings(r=0)
    cfg = ClientConfig(**CLIENT)  # type: ignore[arg-type]  # paths as strings are fine
    assert cfg.state_dir == Path("s") and cfg.features == FEATURE_NAMES
    assert dataclasses.replace(cfg, batch_size=4).batch_size == 4
    with pytest.raises(ConfigError, match="poll_interval_s: must be > 0"):
        dataclasses.replace(cfg, poll_interval_s=-1)
    with pytest.raises(ConfigError, match="scorer_refresh"):
        cfg.with_overrides(scorer_refresh="swapp")
    assert cfg.with_overrides(token=None, coordinator_url="https://example.org") == dataclasses.replace(
        cfg, coordinator_url="https://example.org"
    )
    # the dataclass protocol the benchmarks and the bridge rely on
    defaults = {f.name: f.default for f in dataclasses.fields(ClientConfig)}
    assert defaults["max_new_tokens"] == 48 and defaults["batch_size"] == 16
    assert DistillSettings(lr=1).lr == 1.0  # an integer is a number, as in JSON


def test_coordinator_config_nests_the_client_settings_with_their_checks(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"coordinator config: llm_distill.alpah: unknown field \(did you mean 'alpha'\?\)"
    ):
        CoordinatorConfig.from_dict({**COORD, "llm_distill": {"alpah": 1.0}})
    path = tmp_path / "coordinator.json"
    path.write_text(json.dumps({**COORD, "llm_lora": {"r": "8"}}))
    with pytest.raises(ConfigError, match=rf"coordinator config {path}: llm_lora.r: must be an integer"):
        CoordinatorConfig.load(path)


def test_a_bad_coordinator_config_names_every_bad_field_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.json"
    bad = {"rounds": "3", "allocation": "lad", "port": 70000, "quorum_fraction": 0, "group_comit": False}
    path.write_text(json.dumps({**COORD, **bad}))
    with pytest.raises(ConfigError) as caught:
        CoordinatorConfig.load(path)
    assert caught.value.what == f"coordinator config {path}"
    assert dict(caught.value.problems) == {
        "rounds": "must be an integer, got '3' (a string)",
        "allocation": "must be 'lada', 'random', 'all' or 'none', got 'lad' (a string)",
        "port": "must be <= 65535, got 70000 (an integer)",
        "quorum_fraction": "must be > 0, got 0 (an integer)",
        "group_comit": "unknown field (did you mean 'group_commit'?)",
    }
    with pytest.raises(ConfigError, match="score_only_update='server' needs slm_checkpoints"):
        CoordinatorConfig.from_dict({**COORD, "score_only_update": "server"})  # across fields


def test_a_coordinator_keeps_its_state_in_one_database(tmp_path: Path) -> None:
    """SQLite's ``db_path`` or PostgreSQL's ``database_url``: one of them, never both."""
    shared = {k: v for k, v in COORD.items() if k != "db_path"}
    url = "postgresql://lada@db.internal:5432/lada"
    assert CoordinatorConfig.from_dict({**shared, "database_url": url}).db_path is None
    with pytest.raises(ConfigError, match="db_path and database_url name two databases"):
        CoordinatorConfig.from_dict({**COORD, "database_url": url})
    with pytest.raises(ConfigError, match=r"db_path \(a SQLite file\) or database_url .* is required"):
        CoordinatorConfig.from_dict(shared)
    with pytest.raises(ConfigError) as caught:
        CoordinatorConfig.from_dict({**shared, "database_url": "mysql://db/lada"})
    assert [field for field, _ in caught.value.problems] == ["database_url"]
    path = tmp_path / "coordinator.json"
    path.write_text(json.dumps(shared))
    assert CoordinatorConfig.load(path, database_url=url).database_url == url  # a flag completes the file
    path.write_text(json.dumps(COORD))
    with pytest.raises(ConfigError, match="not both"):  # or contradicts it
        CoordinatorConfig.load(path, database_url=url)


def test_the_cli_reports_a_bad_file_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lada_client.cli import main

    path = tmp_path / "client.json"
    path.write_text(json.dumps({**CLIENT, "batch_size": "16"}))
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"lada-client: error: client config {path}: batch_size: must be an integer, got '16' (a string)\n"


def test_a_bad_flag_value_is_a_usage_error_naming_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lada_client.cli import main

    path = tmp_path / "client.json"
    path.write_text(json.dumps(CLIENT))
    with pytest.raises(SystemExit) as exited:
        main(["run", "--config", str(path), "--coordinator-url", "127.0.0.1:8765"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "lada-client run: error: argument --coordinator-url: must be an http:// or https:// URL, got '127.0.0.1:8765'"
    )
    assert "Traceback" not in err


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
    with pytest.raises(ValueError, match=r"slm_filter.budget: must be >= 1, got 0"):
        CoordinatorConfig.load(bad)


def test_one_bad_item_of_a_list_is_one_problem() -> None:
    """pydantic also calls a one-item list with a bad item too short; only the item is reported."""
    with pytest.raises(ConfigError) as info:
        ClientConfig.from_dict({**CLIENT, "features": ["slm_iq"]})
    assert [f for f, _ in info.value.problems] == ["features[0]"]
