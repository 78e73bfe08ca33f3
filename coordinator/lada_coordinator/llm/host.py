"""The coordinator's LLM: reasoning paths for candidates, LLM-side features, and its LoRA step.

Inference (sampling paths, greedy answers, path log-probs) goes through an
:class:`~lada_coordinator.llm.backend.InferenceBackend`: by default the model in this process
(transformers + peft on one device), or a serving engine over the OpenAI-compatible completions API
(``llm/serving.py``: vLLM past one GPU, ``docs/serving.md``). The LoRA step always runs here with
peft on the weights of ``llm_dir``; after each one the backends are told to serve the new adapter.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lada_client.common.reasoning import format_prompt, format_target, is_correct
from lada_client.config import ComputeSettings, DistillSettings, LoraSettings
from lada_client.data.samples import Sample
from lada_client.training.lora import LoraTrainer, PreferencePair, TrainReport
from lada_coordinator.llm.backend import InferenceBackend, TransformersBackend

log = logging.getLogger(__name__)

LLM_FEATURE_NAMES: tuple[str, ...] = ("llm_path_nll", "llm_correct", "agreement", "path_tokens")


@dataclass(frozen=True)
class TeacherPath:
    sample: Sample
    path: str
    logprob: float
    tokens: int
    source: str  # "llm" or "gold" (fallback when no sampled path was right)


class LLMHost:
    """The LLM with its adapter in ``adapter_dir``.

    ``backend`` (default: the in-process model) generates; it also scores unless it cannot
    (``scores_prompts`` False: an engine without prompt log-probs), in which case the in-process
    model scores. ``llm_dir`` may be None only with a backend that does both: then nothing is
    loaded here and :meth:`train` is unavailable.
    """

    def __init__(
        self,
        llm_dir: Path | None,
        adapter_dir: Path,
        lora: LoraSettings,
        max_length: int = 256,
        max_new_tokens: int = 48,
        backend: InferenceBackend | None = None,
        compute: ComputeSettings = ComputeSettings(),
    ) -> None:
        self.adapter_dir = adapter_dir
        self.trainer: LoraTrainer | None = (
            LoraTrainer(llm_dir, adapter_dir, lora, compute=compute) if llm_dir is not None else None
        )
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        local = TransformersBackend(self.trainer, max_length) if self.trainer is not None else None
        generator = backend or local
        if generator is None:
            raise ValueError("the LLM host needs llm_dir (the in-process LLM) or an inference backend (llm_server)")
        scorer = generator if generator.scores_prompts else local
        if scorer is None:
            raise ValueError(
                "the LLM server cannot score prompts (llm_server.prompt_logprobs='none', --llm-server-logprobs"
                " none) and there is no in-process LLM (llm_dir) to score them"
            )
        self.generator: InferenceBackend = generator
        self.scorer: InferenceBackend = scorer
        check = getattr(generator, "check", None)
        if callable(check):  # an engine: a wrong URL or model name is said now, not mid-round
            check()
        if (adapter_dir / "adapter_config.json").is_file():  # a restart: serve the adapter trained so far
            self._adapter_updated()
        # Greedy accuracy depends only on the weights and the questions; rounds in which the LLM
        # does not train reuse the last figure instead of generating all test answers again.
        self._weights_version = 0
        self._accuracy_memo: dict[tuple[int, tuple[tuple[str, str], ...], int], list[bool]] = {}

    @property
    def model(self) -> Any:
        """The in-process model (with its adapter)."""
        if self.trainer is None:
            raise ValueError("this coordinator runs no LLM in-process (no llm_dir)")
        return self.trainer.model

    @property
    def tokenizer(self) -> Any:
        if self.trainer is None:
            raise ValueError("this coordinator runs no LLM in-process (no llm_dir)")
        return self.trainer.tokenizer

    def _adapter_updated(self) -> None:
        for backend in dict.fromkeys([self.generator, self.scorer]):
            backend.adapter_updated(self.adapter_dir)

    def _generate(
        self, prompts: Sequence[str], n: int, temperature: float, max_new_tokens: int, seed: int
    ) -> list[list[str]]:
        return self.generator.generate(prompts, n, temperature, max_new_tokens, seed)

    def sequence_logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(summed log-prob, token count) of each completion under the LLM (adapter included)."""
        return self.scorer.sequence_logprobs(prompts, completions)

    def reasoning_paths(
        self, samples: Sequence[Sample], n: int, temperature: float, fallback: str, seed: int
    ) -> tuple[list[TeacherPath], dict[str, int]]:
        """Sample ``n`` paths per question and keep one whose answer matches gold (method step 1)."""
        prompts = [format_prompt(s.question) for s in samples]
        sampled = self._generate(prompts, n, temperature, max_new_tokens=self.max_new_tokens, seed=seed)
        chosen: list[tuple[Sample, str, str]] = []
        stats = {"llm": 0, "gold": 0, "dropped": 0}
        for s, paths in zip(samples, sampled):
            good = next((p for p in paths if is_correct(p, s.answer)), None)
            if good is not None:
                chosen.append((s, good, "llm"))
            elif fallback == "gold":
                chosen.append((s, s.target, "gold"))
            else:
                stats["dropped"] += 1
                continue
            stats[chosen[-1][2]] += 1
        if not chosen:
            return [], stats
        lp, tok = self.sequence_logprobs(
            [format_prompt(s.question) for s, _, _ in chosen], [format_target(p) for _, p, _ in chosen]
        )
        return [TeacherPath(s, p, float(lp_i), int(t), src) for (s, p, src), lp_i, t in zip(chosen, lp, tok)], stats

    def offer_features(
        self, samples: Sequence[Sample], paths: Sequence[str], seed: int
    ) -> tuple[np.ndarray, list[str]]:
        """LLM-side features of SLM-offered paths (method step 6), and the LLM's own greedy paths.

        The LLM's own path is generated once per distinct question: every client is offered the
        same questions, so a round's offers repeat each one once per client, and generation is
        the expensive part."""
        if not samples:
            return np.zeros((0, len(LLM_FEATURE_NAMES))), []
        prompts = [format_prompt(s.question) for s in samples]
        lp, tok = self.sequence_logprobs(prompts, [format_target(p) for p in paths])
        distinct = list(dict.fromkeys(prompts))
        generated = self._generate(distinct, 1, 0.0, max_new_tokens=self.max_new_tokens, seed=seed)
        by_prompt = {q: g[0] for q, g in zip(distinct, generated, strict=True)}
        own = [by_prompt[q] for q in prompts]
        correct = np.array([float(is_correct(o, s.answer)) for o, s in zip(own, samples)])
        agreement = np.array([difflib.SequenceMatcher(None, o, p).ratio() for o, p in zip(own, paths)])
        z = np.stack([-lp / np.maximum(tok, 1), correct, agreement, tok.astype(float)], axis=1)
        return z, own

    def perplexity(self, samples: Sequence[Sample], paths: Sequence[str]) -> float:
        lp, tok = self.sequence_logprobs(
            [format_prompt(s.question) for s in samples], [format_target(p) for p in paths]
        )
        return float(np.mean(np.exp(-lp / np.maximum(tok, 1))))

    def train(
        self,
        samples: Sequence[Sample],
        slm_paths: Sequence[str],
        own_paths: Sequence[str],
        settings: DistillSettings,
        rehearsal: Sequence[tuple[str, str]] = (),
    ) -> TrainReport:
        """Mirrored loss: chosen = the SLM's verified path, rejected = the LLM's own wrong path;
        ``rehearsal`` (question, path) pairs of the LLM's own verified paths join L_SFT."""
        prompts = [format_prompt(s.question) for s in samples]
        teacher = [(p, format_target(path)) for p, path in zip(prompts, slm_paths)]
        pairs = [
            PreferencePair(p, format_target(path), format_target(own))
            for p, path, own, s in zip(prompts, slm_paths, own_paths, samples)
            if own and not is_correct(own, s.answer)
        ]
        if self.trainer is None:
            raise ValueError("the LLM trains in-process: train_llm needs llm_dir")
        rehearsed = [(format_prompt(q), format_target(path)) for q, path in rehearsal]
        report = self.trainer.train_round(teacher, pairs, rehearsed, settings)
        self._weights_version += 1
        self.trainer.save(self.adapter_dir)
        self._adapter_updated()
        return report

    def accuracy(self, samples: Sequence[Sample], seed: int = 0) -> float:
        """Exact-match accuracy of greedy answers (memoised until the next :meth:`train`)."""
        return float(np.mean(self.correct(samples, seed))) if samples else 0.0

    def correct(self, samples: Sequence[Sample], seed: int = 0) -> list[bool]:
        """Whether each greedy answer is right (memoised until the next :meth:`train`), so that
        accuracies over parts of one evaluation set cost one generation."""
        if not samples:
            return []
        key = (self._weights_version, tuple((s.question, s.answer) for s in samples), seed)
        if key not in self._accuracy_memo:
            own = self._generate([format_prompt(s.question) for s in samples], 1, 0.0, self.max_new_tokens, seed)
            self._accuracy_memo = {key: [is_correct(o[0], s.answer) for o, s in zip(own, samples)]}
        return self._accuracy_memo[key]
