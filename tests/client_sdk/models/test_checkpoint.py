"""A device's checkpoint: its architecture id (what co-tuning groups by) needs config.json only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lada_client.models.checkpoint import architecture_id, load_causal_lm


def test_architecture_id_names_the_shape(tmp_path: Path) -> None:
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 512}))
    assert architecture_id(tmp_path) == "llama-h64-l2-a4-v512"
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        architecture_id(tmp_path / "absent")


def test_loading_a_directory_without_a_checkpoint_names_it(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_causal_lm(tmp_path)
