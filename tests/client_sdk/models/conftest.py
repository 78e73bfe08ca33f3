"""A checkpoint with a vocabulary over 100k tokens, the size at which transformers 4.57 checks a
tokenizer for Mistral's pre-tokenizer (Gemma-3: 262k, Qwen2.5: 151k), and what transformers logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

LARGE_VOCAB = 100_010


@pytest.fixture
def large_vocab_checkpoint(tmp_path: Path) -> Path:
    """Tokenizer files naming Gemma's tokenizer class and a config written by transformers 4.57.6
    (no weights: :func:`large_vocab_model` adds a one-layer model)."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(LARGE_VOCAB)} | {"<unk>": LARGE_VOCAB}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="w2").save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GemmaTokenizer"}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "transformers_version": "4.57.6"}))
    return tmp_path


@pytest.fixture
def large_vocab_model(large_vocab_checkpoint: Path) -> Path:
    """:func:`large_vocab_checkpoint` with a one-layer Llama model of that vocabulary."""
    pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=LARGE_VOCAB + 1,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(str(large_vocab_checkpoint))
    return large_vocab_checkpoint


@pytest.fixture
def tokenizer_warnings() -> Iterator[list[str]]:
    """What transformers' tokenizer loading logs during the test (its loggers do not propagate, so
    neither caplog nor the captured streams see it reliably)."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    source = logging.getLogger("transformers.tokenization_utils_base")
    source.addHandler(handler)
    try:
        yield messages
    finally:
        source.removeHandler(handler)
