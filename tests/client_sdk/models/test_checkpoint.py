"""A device's checkpoint: its architecture id (what co-tuning groups by) needs config.json only."""

from __future__ import annotations

import json
import logging
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


def test_a_large_vocabulary_tokenizer_loads_as_the_scorer_reads_it_without_false_warnings(tmp_path: Path) -> None:
    """A Gemma-like checkpoint (over 100k tokens, its own tokenizer class named, config written by
    transformers 4.57.x) made transformers print two warnings that ask the user to act; neither
    applies. The ids must be those of the device's ``tokenizers`` reading of tokenizer.json."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from lada_client.models.checkpoint import load_hf_tokenizer
    from lada_client.models.tokenizer import load_tokenizer

    vocab = {f"w{i}": i for i in range(100_010)} | {"<unk>": 100_010}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GemmaTokenizer"}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "transformers_version": "4.57.6"}))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    source = logging.getLogger("transformers.tokenization_utils_base")  # transformers' own, not propagated
    source.addHandler(handler)
    try:
        tokenizer = load_hf_tokenizer(tmp_path)
    finally:
        source.removeHandler(handler)

    printed = " ".join(r.getMessage() for r in records)
    assert "incorrect regex pattern" not in printed
    assert "tokenizer class you load" not in printed
    text = "w1 w99999 w7 nope"
    device_ids = load_tokenizer(tmp_path, strict=False).encode(text, add_special_tokens=False).ids
    assert tokenizer.encode(text, add_special_tokens=False) == device_ids == [1, 99_999, 7, 100_010]
