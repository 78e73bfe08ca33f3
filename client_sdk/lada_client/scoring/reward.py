"""How a device scores what an allocation did for *its own task* (``RewardSettings``, method step 5).

The held-out probe keeps a few private training samples out of training and measures, with the ONNX
SLM alone (no torch), how likely the gold answer is after the SLM's own reasoning: for each held-out
question the SLM reasons greedily, its text is cut before its last "The answer is", and the NLL of
" The answer is <gold>." is taken after that prefix. This follows accuracy (the answer the SLM would
give after its own reasoning) while staying smooth enough to move with one round of training, and
it needs answers only, not rationales. The same pairs are the reference of the per-sample gradient
credit (:meth:`lada_client.training.lora.LoraTrainer.gradient_alignment`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lada_client.common.reasoning import ANSWER_PHRASE, answer_target, format_prompt, format_target
from lada_client.data.samples import Sample
from lada_client.scoring.onnx_slm import OnnxSLM

__all__ = ["HeldoutProbe", "relative_drop", "sample_rewards"]


class HeldoutProbe:
    def __init__(self, samples: Sequence[Sample], batch_size: int = 16) -> None:
        if not samples:
            raise ValueError("a held-out probe needs at least one sample")
        self.samples = list(samples)
        self.batch_size = batch_size

    def pairs(self, slm: OnnxSLM) -> list[tuple[str, str]]:
        """(prompt + the SLM's own reasoning, " The answer is <gold>.") per held-out sample."""
        prompts = [format_prompt(s.question) for s in self.samples]
        own = slm.generate(prompts, batch_size=self.batch_size)
        out = []
        for prompt, text, sample in zip(prompts, own, self.samples):
            cut = text.rfind(ANSWER_PHRASE)
            reasoning = (text[:cut] if cut >= 0 else text).rstrip()
            out.append((prompt + reasoning, format_target(answer_target(sample.answer))))
        return out

    def nll(self, slm: OnnxSLM, pairs: Sequence[tuple[str, str]]) -> float:
        """Mean over the pairs of the answer sentence's mean token NLL."""
        lps = slm.completion_logprobs([p for p, _ in pairs], [c for _, c in pairs], self.batch_size)
        return float(np.mean([-lp.mean() for lp in lps]))

    def measure(self, slm: OnnxSLM) -> tuple[list[tuple[str, str]], float]:
        pairs = self.pairs(slm)
        return pairs, self.nll(slm, pairs)


def relative_drop(before: float, after: float) -> float:
    """clip((before − after) / before, 0, 1): the share of a loss (or perplexity) an update removed;
    learning gives a positive reward, getting worse none (method step 5)."""
    if not (before > 0 and np.isfinite(before) and np.isfinite(after)):
        raise ValueError(f"losses must be finite and the first positive (got {before}, {after})")
    return float(np.clip((before - after) / before, 0.0, 1.0))


def sample_rewards(cosines: np.ndarray, temperature: float) -> list[float]:
    """Per-sample rewards in (0, 1) from gradient cosines: 0.5 for an orthogonal sample, towards 1
    for one whose step lowers the held-out loss, towards 0 for one that raises it."""
    z = np.clip(np.asarray(cosines, dtype=np.float64) / temperature, -50.0, 50.0)
    return [float(v) for v in np.clip(1.0 / (1.0 + np.exp(-z)), 0.0, 1.0)]
