"""The distillation losses: supervised fine-tuning plus contrastive reasoning distillation (L_CD).

L_CD is DPO-shaped over path scores, with the model frozen at the start of the round as the
reference; a path's score is its mean token log-prob (``DistillSettings.cd_logprob="mean"``,
default) or its summed one, the joint probability of the path (``"sum"``, as the method is
written; :func:`~lada_client.training.backend.path_weights` applies the choice):

    L_CD = -log σ(β [(log πθ(r⁺|x) - log π_ref(r⁺|x)) - (log πθ(r⁻|x) - log π_ref(r⁻|x))])

where r⁺ is the teacher's verified path and r⁻ the learner's own path. Minimising it raises the
learner's likelihood of the teacher's reasoning *relative to* its own mistakes, which plain SFT on
r⁺ does not do.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The causal + padding mask as the additive ``[B, 1, T, T]`` bias transformers accepts as is.

    transformers builds the same mask from the 2-D one on every forward with a vmapped
    predicate; this is a few tensor ops, and a LoRA round of ``slm-large`` runs ~9 % faster.
    A padding query also sees itself, so no row is fully masked (it would give NaN in softmax);
    its outputs are never read."""
    length, device = attention_mask.shape[1], attention_mask.device
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    itself = torch.eye(length, dtype=torch.bool, device=device)[None]
    allowed = (causal[None] & attention_mask[:, None, :].bool()) | itself
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    needed: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log p(x_t | x_<t)`` for t = 1..T-1, shape ``[B, T-1]`` (left or right padding).

    With ``needed`` (``[B, T-1]``, nonzero where a log-prob is used, e.g. a completion mask) the
    LM head and the log-softmax run on those positions only and the others are 0: the ``[B, T, V]``
    logits of a whole batch (~240 MB for 8 × 150 tokens of a 49k vocabulary, several times that in
    backward) are what made a LoRA step slow and a device's memory peak at gigabytes, and only the
    completion tokens are ever read.
    """
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    bias = attention_bias(attention_mask, next(model.parameters()).dtype)
    if needed is None:
        logits = model(input_ids=input_ids, attention_mask=bias, position_ids=position_ids).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        return torch.gather(logp, 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    # a transformers causal LM, or a peft model around one (torch types both as a bare Module)
    lm: Any = model
    causal_lm = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    hidden = causal_lm.get_decoder()(
        input_ids=input_ids, attention_mask=bias, position_ids=position_ids
    ).last_hidden_state
    rows, cols = torch.nonzero(needed > 0, as_tuple=True)
    logits = causal_lm.get_output_embeddings()(hidden[rows, cols]).float()
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:  # Gemma's soft cap on the logits, as its forward applies it
        logits = cap * torch.tanh(logits / cap)
    picked = torch.log_softmax(logits, dim=-1).gather(1, input_ids[rows, cols + 1].unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(needed.shape, dtype=picked.dtype, device=picked.device)
    return out.index_put((rows, cols), picked)


def sequence_logprob(token_lp: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of token log-probs per row: with the completion mask as weights, the path's
    joint log-probability; with :func:`~lada_client.training.backend.path_weights`, L_CD's score."""
    return (token_lp * weights).sum(dim=1)


def sft_loss(token_lp: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over all completion tokens of the batch."""
    return -(token_lp * completion_mask).sum() / completion_mask.sum().clamp(min=1.0)


def contrastive_distillation_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """L_CD averaged over pairs; all inputs are per-pair path scores ``[N]``."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin).mean()
