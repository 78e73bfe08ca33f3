"""Learnability features: how far *this* SLM is from the teacher on each candidate.

Computed on the device from the ONNX SLM and sent instead of the SLM. Default features (see
``docs/method.md``):

=====================  ================================================================
``slm_path_nll``       SLM mean token NLL of the teacher path r^L
``slm_answer_nll``     SLM mean token NLL of the final-answer sentence alone
``logp_gap``           per-token gap: LLM mean token log-prob − SLM mean token log-prob
                       (each normalised by its own token count, because tokenizers differ)
``path_tokens``        length of r^L in SLM tokens
``slm_greedy_correct`` 1.0 if the SLM's own greedy answer is already right (costs generation)
=====================  ================================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lada_client.common.reasoning import extract_answer, format_prompt, format_target, is_correct
from lada_client.common.wire import Candidate
from lada_client.scoring.onnx_slm import OnnxSLM

FEATURE_NAMES: tuple[str, ...] = ("slm_path_nll", "slm_answer_nll", "logp_gap", "path_tokens", "slm_greedy_correct")


def learnability_features(
    slm: OnnxSLM,
    candidates: Sequence[Candidate],
    names: Sequence[str] = FEATURE_NAMES,
    batch_size: int = 16,
) -> np.ndarray:
    """Feature matrix ``[len(candidates), len(names)]`` in the order of ``names``."""
    unknown = set(names) - set(FEATURE_NAMES)
    if unknown:
        raise ValueError(f"unknown feature(s) {sorted(unknown)}; available: {list(FEATURE_NAMES)}")
    if not candidates:
        return np.zeros((0, len(names)), dtype=np.float64)
    prompts = [format_prompt(c.question) for c in candidates]
    columns: dict[str, np.ndarray] = {}
    path_lp = slm.completion_logprobs(prompts, [format_target(c.path) for c in candidates], batch_size)
    columns["slm_path_nll"] = np.array([-lp.mean() for lp in path_lp])
    columns["path_tokens"] = np.array([float(len(lp)) for lp in path_lp])
    columns["logp_gap"] = np.array(
        [c.llm_logprob / c.llm_tokens - lp.mean() for c, lp in zip(candidates, path_lp)]
    )
    if "slm_answer_nll" in names:
        answers = [f" The answer is {extract_answer(c.path) or ''}." for c in candidates]
        ans_lp = slm.completion_logprobs(prompts, answers, batch_size)
        columns["slm_answer_nll"] = np.array([-lp.mean() for lp in ans_lp])
    if "slm_greedy_correct" in names:
        own = slm.generate(prompts, batch_size=batch_size)
        gold = [extract_answer(c.path) or "" for c in candidates]
        columns["slm_greedy_correct"] = np.array([float(is_correct(o, g)) for o, g in zip(own, gold)])
    return np.stack([columns[n] for n in names], axis=1)


def perplexity(token_logprobs: Sequence[np.ndarray]) -> float:
    """Mean over samples of exp(mean token NLL): the reward's PPL (method step 5)."""
    if not token_logprobs:
        raise ValueError("perplexity of an empty set is undefined")
    return float(np.mean([np.exp(-lp.mean()) for lp in token_logprobs]))


def relative_ppl_reward(ppl_before: float, ppl_after: float) -> float:
    """Method step 5: clip((PPL_before − PPL_after) / PPL_before, 0, 1). Learning → positive."""
    if not (ppl_before > 0 and np.isfinite(ppl_before) and np.isfinite(ppl_after)):
        raise ValueError(f"perplexities must be finite and positive (got {ppl_before}, {ppl_after})")
    return float(np.clip((ppl_before - ppl_after) / ppl_before, 0.0, 1.0))
