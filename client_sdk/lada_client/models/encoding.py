"""Turning (prompt, completion) text pairs into padded id batches, identically on every backend.

The ONNX scorer (numpy) and the torch trainer must agree token for token on what a "sequence
log-prob of a reasoning path" is, so both build batches here: ``<s> prompt completion </s>``,
prompt and completion tokenised separately so the boundary never depends on BPE merges across it,
right-padded with the pad id. Log-probs are summed over completion tokens (and ``</s>``) only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np

from lada_client.models.tokenizer import SpecialTokens


class _Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> object: ...


@dataclass(frozen=True)
class EncodedBatch:
    """Right-padded ids with masks; ``completion_mask[b, j]`` marks target token ``j + 1``."""

    input_ids: np.ndarray  # int64 [B, T]
    attention_mask: np.ndarray  # int64 [B, T]
    completion_mask: np.ndarray  # float32 [B, T-1], aligned with next-token log-probs

    @property
    def position_ids(self) -> np.ndarray:
        return np.maximum(np.cumsum(self.attention_mask, axis=1) - 1, 0).astype(np.int64)


def _ids(tokenizer: _Tokenizer, text: str) -> list[int]:
    enc = tokenizer.encode(text, add_special_tokens=False)
    ids = enc.ids if hasattr(enc, "ids") else enc  # tokenizers.Encoding or transformers list
    return list(cast("Iterable[int]", ids))


def encode_pairs(
    tokenizer: _Tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int,
    special: SpecialTokens = SpecialTokens(),
    add_eos: bool = True,
) -> EncodedBatch:
    """Encode pairs; an over-long pair is cut from the *left* of the prompt to keep the path."""
    if len(prompts) != len(completions):
        raise ValueError("prompts and completions must have the same length")
    rows: list[tuple[list[int], int]] = []
    for prompt, completion in zip(prompts, completions):
        p = _bos(special) + _ids(tokenizer, prompt)
        c = _ids(tokenizer, completion) + ([special.eos] if add_eos else [])
        if len(c) >= max_length:
            c = c[: max_length - 1]
        p = p[max(0, len(p) + len(c) - max_length) :]
        rows.append((p + c, len(p)))
    width = max(len(ids) for ids, _ in rows)
    input_ids = np.full((len(rows), width), special.pad, dtype=np.int64)
    attention = np.zeros((len(rows), width), dtype=np.int64)
    completion_mask = np.zeros((len(rows), max(width - 1, 1)), dtype=np.float32)
    for b, (ids, n_prompt) in enumerate(rows):
        input_ids[b, : len(ids)] = ids
        attention[b, : len(ids)] = 1
        completion_mask[b, n_prompt - 1 : len(ids) - 1] = 1.0
    return EncodedBatch(input_ids, attention, completion_mask)


def encode_prompts(
    tokenizer: _Tokenizer, prompts: Sequence[str], max_length: int, special: SpecialTokens = SpecialTokens()
) -> list[list[int]]:
    """Prompt ids (with BOS) for generation, cut from the left to fit ``max_length``."""
    return [(_bos(special) + _ids(tokenizer, p))[-max_length:] for p in prompts]


def _bos(special: SpecialTokens) -> list[int]:
    return [] if special.bos is None else [special.bos]
