"""A model checkpoint on the device: loading it for LoRA training, and naming its architecture.

A checkpoint is a regular Hugging Face directory (``config.json``, safetensors, tokenizer files),
imported (:mod:`lada_client.models.importer`) or built by the simulation. Loading needs the
``train`` extra; :func:`architecture_id` reads ``config.json`` only.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["architecture_id", "load_causal_lm", "load_hf_tokenizer", "mistral_regex_options"]

#: model types whose tokenizers transformers' Mistral pre-tokenizer repair is meant for (its own list)
_MISTRAL_TYPES = frozenset({"mistral", "mistral3", "voxtral", "ministral", "pixtral"})
_CLASS_MISMATCH = "The tokenizer class you load from this checkpoint is not the same type"
_MISTRAL_REGEX = "The tokenizer you are loading from"  # "... with an incorrect regex pattern"


def architecture_id(model_dir: Path) -> str:
    """A short name of a checkpoint's architecture: clients with equal ids can average adapters."""
    try:
        c = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{model_dir} has no readable config.json") from exc
    return "{}-h{}-l{}-a{}-v{}".format(
        c.get("model_type", "model"),
        c.get("hidden_size"),
        c.get("num_hidden_layers"),
        c.get("num_attention_heads"),
        c.get("vocab_size"),
    )


def load_causal_lm(model_dir: Path, adapter_dir: Path | None = None, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a local checkpoint (and an optional peft LoRA adapter), its weights in
    ``dtype`` (a torch dtype; default float32, for CPU work)."""
    import torch
    from transformers import AutoModelForCausalLM

    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} is not a model checkpoint directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype or torch.float32)
    tokenizer = load_hf_tokenizer(model_dir)
    if adapter_dir is not None and (adapter_dir / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True), tokenizer
    return model, tokenizer


def load_hf_tokenizer(model_dir: Path) -> Any:
    """The checkpoint's ``tokenizer.json`` as a transformers fast tokenizer, without false alarms.

    It is loaded as the generic ``PreTrainedTokenizerFast`` whatever class ``tokenizer_config.json``
    names, because ``tokenizer.json`` is what the device's torch-free scorer reads
    (:func:`lada_client.models.tokenizer.load_tokenizer`): training and scoring must tokenise alike.
    transformers warns about that class difference; the warning is dropped here, for this call only.
    transformers 4.57.3 and later also warn of a Mistral "incorrect regex pattern" for *every* local
    checkpoint with more than 100k tokens written by those versions (Gemma-3, Qwen2.5); for a model
    type that is not Mistral's the repair does not apply, which is said explicitly
    (``fix_mistral_regex=False``) instead of leaving the user a warning to act on.
    """
    from transformers import PreTrainedTokenizerFast

    model_dir = Path(model_dir)
    try:
        model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        model_type = None
    with _dropping_warnings(_CLASS_MISMATCH):
        return PreTrainedTokenizerFast.from_pretrained(str(model_dir), **mistral_regex_options(model_type))


def mistral_regex_options(model_type: str | None) -> dict[str, Any]:
    """Tokenizer-loading options that decline transformers' Mistral pre-tokenizer repair for every
    model type that is not Mistral's (see :func:`load_hf_tokenizer`)."""
    return {} if model_type in _MISTRAL_TYPES else {"fix_mistral_regex": False}


def unused_tokenizer_warnings_dropped() -> contextlib.AbstractContextManager[None]:
    """For code that makes transformers load a tokenizer LaDa never uses (optimum's ONNX export
    saves one beside the graph; the scorer's ``tokenizer.json`` is copied from the checkpoint):
    drops the two warnings above while the block runs, as they concern that unused copy."""
    return _dropping_warnings(_CLASS_MISMATCH, _MISTRAL_REGEX)


@contextlib.contextmanager
def _dropping_warnings(*prefixes: str) -> Iterator[None]:
    """Drop transformers' tokenizer-loading records that start with one of ``prefixes`` while the
    block runs."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefixes)

    logger = logging.getLogger("transformers.tokenization_utils_base")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
