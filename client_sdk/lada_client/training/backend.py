"""What the client needs from a training backend (:class:`TrainerBackend`) and what both share.

Two backends implement :class:`TrainerBackend` (:mod:`lada_client.training.trainers` picks one by
name):

* ``"torch"`` — :class:`~lada_client.training.lora.LoraTrainer`: torch + transformers + peft on
  the base checkpoint (the ``train`` extra).
* ``"ort"`` — :class:`~lada_client.training.ort_backend.OrtTrainer`: ONNX Runtime training
  artifacts built once off the device (:mod:`~lada_client.training.ort_artifacts`) and trained
  with ``onnxruntime.training.api``; no torch on the device.

Both take the same round (:meth:`TrainerBackend.train_round`) with the same batching, expose the
LoRA weights as one flat vector in the same order (co-tuning averages it) and as merged projection
weights (the ONNX scorer's weight swap writes them), and save a peft-format adapter directory that
either backend loads. This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lada_client.config import DistillSettings

__all__ = ["BackendUnavailable", "PreferencePair", "TrainReport", "TrainerBackend", "batch_schedule", "path_weights"]


@dataclass(frozen=True)
class PreferencePair:
    """chosen = the teacher's verified path; rejected = the learner's own (wrong) path."""

    prompt: str
    chosen: str
    rejected: str


def path_weights(completion_mask: np.ndarray, cd_logprob: str) -> np.ndarray:
    """Per-token weights that turn a row's summed log-probs into L_CD's path score: the
    completion mask itself (``"sum"``) or the mask over its row's token count (``"mean"``).
    Both backends score paths as ``sum(token_logprob * weights)``, so one helper decides it."""
    if cd_logprob == "sum":
        return completion_mask
    if cd_logprob == "mean":
        return completion_mask / np.maximum(completion_mask.sum(axis=1, keepdims=True), 1.0)
    raise ValueError(f"unknown cd_logprob {cd_logprob!r}; choose 'mean' or 'sum'")


@dataclass
class TrainReport:
    steps: int = 0
    sft_loss: float = float("nan")
    cd_loss: float = float("nan")
    n_pairs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@runtime_checkable
class TrainerBackend(Protocol):
    """The LoRA trainer as :class:`~lada_client.client.LadaClient` uses it."""

    def train_round(
        self,
        teacher: Sequence[tuple[str, str]],
        pairs: Sequence[PreferencePair],
        private: Sequence[tuple[str, str]],
        settings: DistillSettings,
        progress: Callable[[int, int], None] | None = None,
    ) -> TrainReport:
        """One round: L_SFT on teacher + private (prompt, completion) pairs, α·L_CD on ``pairs``;
        ``progress(done, total)`` before each optimiser step and after the last."""
        ...

    def sequence_logprobs(self, prompts: Sequence[str], completions: Sequence[str], max_length: int = 256) -> Any:
        """Summed completion-token log-probs per row under the current weights ([N], array-like)."""
        ...

    def adapter_vector(self) -> np.ndarray:
        """All LoRA weights flattened (float64), parameters sorted by their peft name."""
        ...

    def load_adapter_vector(self, vector: np.ndarray) -> None: ...

    def save(self, adapter_dir: Path) -> Path:
        """Write a peft-format adapter (``adapter_config.json`` + weights) to ``adapter_dir``."""
        ...

    def projection_weights(self, merged: bool = True) -> dict[str, np.ndarray]:
        """The LoRA-adapted projections by checkpoint name: base ``W`` or ``W + scale·B·A``."""
        ...

    def merged_checkpoint(self, out_dir: Path) -> Path:
        """A merged Hugging Face checkpoint for a full ONNX re-export (torch backend only)."""
        ...


def batch_schedule(
    teacher: Sequence[tuple[str, str]],
    pairs: Sequence[PreferencePair],
    private: Sequence[tuple[str, str]],
    settings: DistillSettings,
    with_pairs: bool,
) -> Iterator[tuple[list[tuple[str, str]], list[int] | None]]:
    """The batches of one round, as :meth:`LoraTrainer.train_round` draws them: per step the
    L_SFT items and (when ``with_pairs``) the indices of the pairs for L_CD.

    Every epoch is one shuffled pass over teacher + private items in ``batch_size`` batches; the
    pairs are shuffled too and spread evenly over the epoch's batches, each pair once per epoch
    (with fewer pairs than batches, some steps have no L_CD term). Same seed, same RNG calls,
    same batches on every backend (``tests/client_sdk/training/test_ort_backend.py`` compares).
    """
    rng = random.Random(settings.seed)
    items_all = list(teacher) + list(private)
    n_batches = max(1, (len(items_all) + settings.batch_size - 1) // settings.batch_size)
    pair_order = list(range(len(pairs)))
    for _ in range(settings.epochs):
        order = list(range(len(items_all)))
        rng.shuffle(order)
        rng.shuffle(pair_order)
        for b in range(n_batches):
            items = [items_all[i] for i in order[b * settings.batch_size : (b + 1) * settings.batch_size]]
            sel = None
            if with_pairs:  # each pair once per epoch, like each L_SFT item; None: no L_CD this step
                sel = pair_order[b * len(pairs) // n_batches : (b + 1) * len(pairs) // n_batches] or None
            yield items, sel


class BackendUnavailable(ImportError):
    """The requested training backend's packages are not installed here."""
