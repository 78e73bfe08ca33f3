"""LadaClient: the trainer is built in the background and handed over (or its error raised) at first use."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from lada_client.client import LadaClient
from lada_client.config import ClientConfig


def _config(world: dict[str, Path], tmp_path: Path, base_model_dir: Path) -> ClientConfig:
    return ClientConfig(
        coordinator_url="http://127.0.0.1:9",  # never contacted by these tests
        name="client0",
        state_dir=tmp_path / "state",
        data_dir=world["data"],
        scoring_model=world["client0"] / "onnx" / "model.onnx",
        base_model_dir=base_model_dir,
    )


def test_trainer_is_loaded_in_a_background_thread_and_reused(tiny_world, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import lada_client.training.trainers as trainers

    loaded_in: list[str] = []
    real = trainers.trainer_for

    def recording(config, adapter_dir):
        loaded_in.append(threading.current_thread().name)
        return real(config, adapter_dir)

    monkeypatch.setattr(trainers, "trainer_for", recording)
    with LadaClient(_config(tiny_world, tmp_path, tiny_world["client0"] / "base")) as client:
        future = client._start_loading_trainer()
        trainer = client.trainer
        assert trainer is future.result() and client.trainer is trainer
        assert loaded_in == ["client0-trainer-load"]  # built once, off the caller's thread
        assert trainer.adapter_vector().size > 0


def test_a_trainer_that_fails_to_load_raises_at_first_use(tiny_world, tmp_path):
    pytest.importorskip("torch")
    broken = tmp_path / "broken-checkpoint"
    shutil.copytree(tiny_world["client0"] / "base", broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with LadaClient(_config(tiny_world, tmp_path, broken)) as client:  # construction reads only config.json
        future = client._start_loading_trainer()
        with pytest.raises(Exception) as raised:
            _ = client.trainer
        assert raised.value is future.exception()  # the loader's own error, raised in the caller's thread
        assert client._trainer is None and client._trainer_future is None  # the next use tries again
