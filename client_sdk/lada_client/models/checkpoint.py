"""A model checkpoint on the device: loading it for LoRA training, and naming its architecture.

A checkpoint is a regular Hugging Face directory (``config.json``, safetensors, tokenizer files),
imported (:mod:`lada_client.models.importer`) or built by the simulation. Loading needs the
``train`` extra; :func:`architecture_id` reads ``config.json`` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["architecture_id", "load_causal_lm"]


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
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} is not a model checkpoint directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype or torch.float32)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    if adapter_dir is not None and (adapter_dir / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True), tokenizer
    return model, tokenizer
