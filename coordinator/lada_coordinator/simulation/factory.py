"""Build the models a simulated federation needs, offline: a tiny Llama-style LLM and smaller SLMs.

Needs the ``train`` extra (torch + transformers). Every model is saved as a regular Hugging Face
checkpoint directory (config, safetensors, tokenizer files), which is exactly the loading path a
real deployment uses for a downloaded model; nothing here touches a model hub.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from lada_client.models.tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = ["PRESETS", "ModelSpec", "copy_checkpoint", "create_model", "resolve_spec"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """Size of a Llama-style decoder. Presets in :data:`PRESETS`."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_positions: int = 256


PRESETS: dict[str, ModelSpec] = {
    "llm-tiny": ModelSpec(hidden_size=192, intermediate_size=512, num_layers=4, num_heads=6),
    "slm-large": ModelSpec(hidden_size=128, intermediate_size=320, num_layers=3, num_heads=4),
    "slm-medium": ModelSpec(hidden_size=96, intermediate_size=256, num_layers=2, num_heads=4),
    "slm-small": ModelSpec(hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4),
}


def resolve_spec(name_or_spec: str | ModelSpec) -> ModelSpec:
    if isinstance(name_or_spec, ModelSpec):
        return name_or_spec
    try:
        return PRESETS[name_or_spec]
    except KeyError:
        raise ValueError(f"unknown model preset {name_or_spec!r}; choose one of {sorted(PRESETS)}") from None


def create_model(spec: str | ModelSpec, tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Initialise a fresh Llama-style model and save it with the tokenizer to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    s = resolve_spec(spec)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_heads,
        max_position_embeddings=s.max_positions,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("created %s (%s, %.2fM params) in %s", out_dir.name, asdict(s), n_params / 1e6, out_dir)
    return out_dir


def copy_checkpoint(src: Path, dst: Path) -> Path:
    """Copy a checkpoint directory (e.g. to give each client its own SLM)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst
