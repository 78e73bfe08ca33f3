"""The coordinator's LLM: reasoning paths for candidates, LLM-side features, and its LoRA step.

Runs with transformers + peft on one device (CPU or one GPU). Past one GPU, the path generation
in :meth:`LLMHost.reasoning_paths` is the part to hand to a serving engine such as vLLM: it is a
pure batch "sample n continuations" call, and everything else here is small.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lada_client.common.reasoning import format_prompt, format_target, is_correct
from lada_client.config import DistillSettings, LoraSettings
from lada_client.data.samples import Sample
from lada_client.models.encoding import encode_pairs, encode_prompts
from lada_client.training.lora import LoraTrainer, PreferencePair, TrainReport

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
    def __init__(
        self, llm_dir: Path, adapter_dir: Path, lora: LoraSettings, max_length: int = 256, max_new_tokens: int = 48
    ) -> None:
        self.adapter_dir = adapter_dir
        self.trainer = LoraTrainer(llm_dir, adapter_dir, lora)
        self.model = self.trainer.model
        self.tokenizer = self.trainer.tokenizer
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        # Greedy accuracy depends only on the weights and the questions; rounds in which the LLM
        # does not train reuse the last figure instead of generating all test answers again.
        self._weights_version = 0
        self._accuracy_memo: dict[tuple[int, tuple[tuple[str, str], ...], int], list[bool]] = {}

    def _generate(
        self, prompts: Sequence[str], n: int, temperature: float, max_new_tokens: int, seed: int, batch_size: int = 64
    ) -> list[list[str]]:
        torch.manual_seed(seed)
        self.model.eval()
        out: list[list[str]] = []
        newline = self.tokenizer.encode("\n", add_special_tokens=False)
        for start in range(0, len(prompts), batch_size):
            special = self.trainer.special
            rows = encode_prompts(self.tokenizer, prompts[start : start + batch_size], self.max_length, special)
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), special.pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, r in enumerate(rows):  # left padding for generation
                ids[b, width - len(r) :] = torch.tensor(r)
                mask[b, width - len(r) :] = 1
            with torch.no_grad():
                gen = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_k=None,
                    top_p=None,
                    num_return_sequences=n,
                    pad_token_id=special.pad,
                    eos_token_id=[special.eos, *newline],
                )
            texts = self.tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
            for b in range(len(rows)):
                out.append([t.split("\n")[0].strip() for t in texts[b * n : (b + 1) * n]])
        return out

    def sequence_logprobs(
        self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        """(summed log-prob, token count) of each completion under the LLM (adapter included)."""
        sums, counts = [], []
        for start in range(0, len(prompts), batch_size):
            p, c = prompts[start : start + batch_size], completions[start : start + batch_size]
            sums.append(self.trainer.sequence_logprobs(p, c, self.max_length).numpy())
            counts.append(
                encode_pairs(self.tokenizer, p, c, self.max_length, self.trainer.special).completion_mask.sum(axis=1)
            )
        return np.concatenate(sums), np.concatenate(counts)

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
        """LLM-side features of SLM-offered paths (method step 6), and the LLM's own greedy paths."""
        if not samples:
            return np.zeros((0, len(LLM_FEATURE_NAMES))), []
        prompts = [format_prompt(s.question) for s in samples]
        lp, tok = self.sequence_logprobs(prompts, [format_target(p) for p in paths])
        own = [g[0] for g in self._generate(prompts, 1, 0.0, max_new_tokens=self.max_new_tokens, seed=seed)]
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
        self, samples: Sequence[Sample], slm_paths: Sequence[str], own_paths: Sequence[str], settings: DistillSettings
    ) -> TrainReport:
        """Mirrored loss: chosen = the SLM's verified path, rejected = the LLM's own wrong path."""
        prompts = [format_prompt(s.question) for s in samples]
        teacher = [(p, format_target(path)) for p, path in zip(prompts, slm_paths)]
        pairs = [
            PreferencePair(p, format_target(path), format_target(own))
            for p, path, own, s in zip(prompts, slm_paths, own_paths, samples)
            if own and not is_correct(own, s.answer)
        ]
        report = self.trainer.train_round(teacher, pairs, [], settings)
        self._weights_version += 1
        self.trainer.save(self.adapter_dir)
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
