"""One answer to "can this device train?": the config, enrollment, the trainer factory and the bridge agree.

Missing packages are simulated as Python itself blocks an import: ``sys.modules[name] = None``
makes ``import name`` raise ImportError (and ``importlib.util.find_spec`` return None).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from lada_client.capabilities import (
    TORCH_MODULES,
    can_train_ort,
    can_train_torch,
    has_module,
    missing_modules,
    training_support,
)
from lada_client.client import LadaClient
from lada_client.config import ClientConfig
from lada_client.training.backend import BackendUnavailable
from lada_client.training.trainers import make_trainer

BASE = {
    "coordinator_url": "http://127.0.0.1:1",
    "name": "c0",
    "state_dir": "s",
    "data_dir": "d",
    "scoring_model": "m.onnx",
}


def _config(**extra: object) -> ClientConfig:
    return ClientConfig.from_dict({**BASE, **extra})


def _declared(config: ClientConfig):
    """What LadaClient.enroll sends as capabilities (no model or coordinator needed for it)."""
    client = LadaClient.__new__(LadaClient)
    client.config = config
    return client.capabilities()


def test_torch_without_peft_declares_itself_score_only(monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError):
        importlib.import_module("peft")  # the simulation is the real thing for an importer

    assert has_module("torch") and not has_module("peft")
    assert missing_modules() == ["peft"] and not can_train_torch()
    cfg = _config(base_model_dir=str(tmp_path / "base"))
    support = cfg.training_support()
    assert not support and support.can_train is False and "peft" in support.reason
    assert cfg.can_train is False
    declared = _declared(cfg)
    assert declared.can_score is True and declared.can_train is False
    with pytest.raises(BackendUnavailable, match="missing: peft"):
        make_trainer("torch", base_dir=tmp_path / "base")


def test_a_complete_train_extra_and_a_checkpoint_can_train(tmp_path: Path) -> None:
    if missing_modules(TORCH_MODULES):
        pytest.skip(f"not installed here: {missing_modules(TORCH_MODULES)}")
    cfg = _config(base_model_dir=str(tmp_path / "base"))
    assert cfg.training_support().can_train and cfg.can_train and _declared(cfg).can_train


def test_no_checkpoint_means_score_only_whatever_is_installed() -> None:
    cfg = _config()
    assert cfg.can_train is False and "base_model_dir" in cfg.training_support().reason
    assert _declared(cfg).can_train is False


def test_the_ort_backend_needs_artifacts_and_onnxruntime_training(monkeypatch, tmp_path: Path) -> None:
    assert "ort_artifacts" in training_support("ort", None, None).reason
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert not can_train_ort()
    cfg = _config(train_backend="ort", ort_artifacts=str(tmp_path / "artifacts"))
    support = cfg.training_support()
    assert not support and "onnxruntime.training" in support.reason and "setup_ort_training.sh" in support.reason
    assert cfg.can_train is False and cfg.can_train_ort is False
    assert _declared(cfg).can_train is False and _declared(cfg).can_train_ort is False


def test_a_missing_parent_package_is_just_missing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert has_module("onnxruntime.training") is False
    assert has_module("no_such_package_here.sub") is False
