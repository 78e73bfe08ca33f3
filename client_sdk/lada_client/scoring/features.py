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
``local_similarity``   how close the candidate's question is to this device's own questions:
                       the mean of the 5 largest cosine similarities between its TF-IDF vector
                       of SLM token ids and those of the private training questions, in [0, 1]
=====================  ================================================================

``local_similarity`` is what lets a filter tell the device's own task from the rest of the pool:
the other features say how hard a candidate is for this SLM, not whether it is the kind of
problem the device has to solve. It is one scalar per public candidate; the private questions stay
on the device (DP noise applies to it like to every feature).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lada_client.common.reasoning import extract_answer, format_prompt, format_target, is_correct
from lada_client.common.wire import Candidate
from lada_client.config import FEATURE_NAMES  # the one list of feature names, re-exported here
from lada_client.progress import ProgressFn, bind
from lada_client.scoring.onnx_slm import OnnxSLM

__all__ = ["FEATURE_NAMES", "learnability_features", "local_similarity", "perplexity"]

_TOP_K = 5


def local_similarity(tokenizer: Any, questions: Sequence[str], local: Sequence[str], top_k: int = _TOP_K) -> np.ndarray:
    """For each of ``questions``: mean of its ``top_k`` largest cosine similarities to ``local``
    (TF-IDF over token ids, IDF from ``local``); zeros when there are no local questions."""
    if not local:
        return np.zeros(len(questions))

    def bag(text: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        for token in tokenizer.encode(text, add_special_tokens=False).ids:
            counts[token] = counts.get(token, 0) + 1
        return counts

    local_bags = [bag(q) for q in local]
    df: dict[int, int] = {}
    for b in local_bags:
        for token in b:
            df[token] = df.get(token, 0) + 1
    vocab = {token: i for i, token in enumerate(sorted(df))}
    idf = np.log((1 + len(local_bags)) / (1 + np.array([df[t] for t in sorted(df)], dtype=np.float64))) + 1.0

    def matrix(bags: list[dict[int, int]]) -> np.ndarray:
        m = np.zeros((len(bags), len(vocab)))
        for row, b in enumerate(bags):
            for token, count in b.items():
                if token in vocab:  # tokens the device never saw weigh nothing
                    m[row, vocab[token]] = count
        m *= idf
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        return np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)

    sims = matrix([bag(q) for q in questions]) @ matrix(local_bags).T
    k = min(top_k, sims.shape[1])
    return np.sort(sims, axis=1)[:, -k:].mean(axis=1)


def learnability_features(
    slm: OnnxSLM,
    candidates: Sequence[Candidate],
    names: Sequence[str] = FEATURE_NAMES,
    batch_size: int = 16,
    local_questions: Sequence[str] = (),
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Feature matrix ``[len(candidates), len(names)]`` in the order of ``names``;
    ``local_questions`` (the device's private training questions) feed ``local_similarity``;
    ``progress`` hears each pass over the candidates (:mod:`lada_client.progress`)."""
    unknown = set(names) - set(FEATURE_NAMES)
    if unknown:
        raise ValueError(f"unknown feature(s) {sorted(unknown)}; available: {list(FEATURE_NAMES)}")
    if not candidates:
        return np.zeros((0, len(names)), dtype=np.float64)
    prompts = [format_prompt(c.question) for c in candidates]
    columns: dict[str, np.ndarray] = {}
    path_lp = slm.completion_logprobs(
        prompts, [format_target(c.path) for c in candidates], batch_size, bind(progress, "score: paths")
    )
    columns["slm_path_nll"] = np.array([-lp.mean() for lp in path_lp])
    columns["path_tokens"] = np.array([float(len(lp)) for lp in path_lp])
    columns["logp_gap"] = np.array([c.llm_logprob / c.llm_tokens - lp.mean() for c, lp in zip(candidates, path_lp)])
    if "slm_answer_nll" in names:
        answers = [f" The answer is {extract_answer(c.path) or ''}." for c in candidates]
        ans_lp = slm.completion_logprobs(prompts, answers, batch_size, bind(progress, "score: answers"))
        columns["slm_answer_nll"] = np.array([-lp.mean() for lp in ans_lp])
    if "local_similarity" in names:
        columns["local_similarity"] = local_similarity(slm.tokenizer, [c.question for c in candidates], local_questions)
    if "slm_greedy_correct" in names:
        own = slm.generate(prompts, batch_size=batch_size, progress=bind(progress, "score: greedy answers"))
        gold = [extract_answer(c.path) or "" for c in candidates]
        columns["slm_greedy_correct"] = np.array([float(is_correct(o, g)) for o, g in zip(own, gold)])
    return np.stack([columns[n] for n in names], axis=1)


def perplexity(token_logprobs: Sequence[np.ndarray]) -> float:
    """Mean over samples of exp(mean token NLL): the reward's PPL (method step 5)."""
    if not token_logprobs:
        raise ValueError("perplexity of an empty set is undefined")
    return float(np.mean([np.exp(-lp.mean()) for lp in token_logprobs]))
