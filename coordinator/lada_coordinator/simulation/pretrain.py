"""Full-parameter warm start of a freshly initialised tiny model on reasoning text.

Federated distillation assumes the parties already *are* language models: a teacher LLM that can
reason about the public pool, and SLMs with some competence on their own domain. The models this
project builds offline start from random weights, so the federation set-up runs this short
supervised pass first (cached on disk, never repeated for the same inputs).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from lada_client.models.checkpoint import load_causal_lm
from lada_client.models.encoding import encode_pairs
from lada_client.models.tokenizer import SpecialTokens
from lada_client.training.losses import sft_loss, token_logprobs

log = logging.getLogger(__name__)


#: fraction of the warm start spent raising the learning rate to its peak
PCT_START = 0.1


def warm_start_schedule(
    optimizer: torch.optim.Optimizer, steps: int, lr: float, pct_start: float = PCT_START
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of a ``steps``-step warm start peaking at ``lr``.

    torch's one-cycle schedule (up for ``pct_start`` of the steps, cosine down after) when its
    rising phase spans more than one step. For shorter runs (``steps * pct_start <= 1``: at most
    10 steps with the default) OneCycleLR divides by the zero length of that phase, or runs it
    backwards; those start at the peak instead and anneal with the same cosine to the same floor
    (``lr / 25 / 1e4``, OneCycleLR's defaults)."""
    if steps * pct_start > 1:
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=pct_start)
    for group in optimizer.param_groups:
        group["lr"] = lr
    floor = 1.0 / 25.0 / 1e4
    last = max(steps - 1, 1)

    def factor(step: int) -> float:
        done = min(step, last) / last
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * done))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def pretrain(
    model_dir: Path,
    examples: Sequence[tuple[str, str]],
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    max_length: int = 256,
    on_step: Callable[[int], None] | None = None,
) -> float:
    """Train all weights of the checkpoint in ``model_dir`` in place; returns the last loss.

    ``steps`` = 0 leaves the checkpoint as it is (no warm start; the loss is NaN); any positive
    count trains that many steps with :func:`warm_start_schedule`. ``on_step(done)`` is called after
    each step, so a caller can show how far a warm start got."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"warm-start steps must be an integer >= 0 (0 = no warm start), got {steps!r}")
    if not examples:
        raise ValueError("pretrain needs at least one example")
    if steps == 0:
        log.info("warm start %s: 0 steps, checkpoint left as it is", model_dir.name)
        return float("nan")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, tokenizer = load_causal_lm(model_dir)
    special = SpecialTokens.from_model_config(model.config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = warm_start_schedule(optimizer, steps, lr)
    model.train()
    loss_value = float("nan")
    started = time.perf_counter()
    for step in range(steps):
        batch = rng.sample(list(examples), min(batch_size, len(examples)))
        enc = encode_pairs(tokenizer, [p for p, _ in batch], [c for _, c in batch], max_length, special)
        ids, mask = torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)
        cmask = torch.from_numpy(enc.completion_mask)
        loss = sft_loss(token_logprobs(model, ids, mask, cmask), cmask)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        loss_value = loss.item()
        if on_step is not None:
            on_step(step + 1)
        if (step + 1) % max(1, steps // 5) == 0:
            log.info(
                "warm start %s: step %d/%d loss %.3f (%.0fs)",
                model_dir.name,
                step + 1,
                steps,
                loss_value,
                time.perf_counter() - started,
            )
    model.eval()
    model.save_pretrained(str(model_dir))
    return loss_value
