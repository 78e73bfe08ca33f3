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


def test_a_large_vocabulary_tokenizer_loads_as_the_scorer_reads_it_without_false_warnings(
    large_vocab_checkpoint: Path, tokenizer_warnings: list[str]
) -> None:
    """A Gemma-like checkpoint (over 100k tokens, its own tokenizer class named, config written by
    transformers 4.57.x) made transformers print two warnings that ask the user to act; neither
    applies. The ids must be those of the device's ``tokenizers`` reading of tokenizer.json."""
    from lada_client.models.checkpoint import load_hf_tokenizer
    from lada_client.models.tokenizer import load_tokenizer

    tokenizer = load_hf_tokenizer(large_vocab_checkpoint)

    printed = " ".join(tokenizer_warnings)
    assert "incorrect regex pattern" not in printed
    assert "tokenizer class you load" not in printed
    text = "w1 w99999 w7 nope"
    device_ids = load_tokenizer(large_vocab_checkpoint, strict=False).encode(text, add_special_tokens=False).ids
    assert tokenizer.encode(text, add_special_tokens=False) == device_ids == [1, 99_999, 7, 100_010]
