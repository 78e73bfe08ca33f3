"""Where the coordinator's LLM runs inference: the interface, and its in-process implementation.

:class:`~lada_coordinator.llm.host.LLMHost` needs two things from an LLM besides its LoRA step:
"sample ``n`` continuations of each prompt" (the teacher's reasoning paths, its own greedy answers)
and "the summed log-prob and token count of each completion after its prompt" (path scores,
features, perplexity). :class:`InferenceBackend` is exactly that, so the same host runs on the
in-process transformers model (:class:`TransformersBackend`, the embedded default) or on a serving
engine over HTTP (:class:`~lada_coordinator.llm.serving.OpenAICompletionsBackend`: vLLM past one
GPU). Training is not part of the interface: the LoRA step stays in-process with peft, and
:meth:`InferenceBackend.adapter_updated` tells a backend that the adapter it should serve changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from lada_client.training.lora import LoraTrainer


class InferenceBackend(Protocol):
    """Generation and completion scoring for one LLM (its current adapter included).

    ``scores_prompts`` is False for an engine that can only generate: the host then scores with
    its in-process model, and says so at start-up when there is none.
    """

    @property
    def scores_prompts(self) -> bool: ...

    def generate(
        self, prompts: Sequence[str], n: int, temperature: float, max_new_tokens: int, seed: int
    ) -> list[list[str]]:
        """``n`` continuations per prompt, in prompt order; each is its first line, stripped
        (generation stops at a newline). ``temperature == 0``: greedy."""
        ...

    def sequence_logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(summed log-prob, token count) of each completion after its prompt, as float and int arrays."""
        ...

    def adapter_updated(self, adapter_dir: Path) -> None:
        """The LLM's LoRA adapter in ``adapter_dir`` (peft format) changed: serve it from now on."""
        ...


class TransformersBackend:
    """The LLM in this process (transformers + peft, the weights :class:`LoraTrainer` trains).

    This is the behaviour :class:`LLMHost` always had: prompts are cut from the left to
    ``max_length`` tokens, BOS added as the model's tokenizer says, and log-probs cover the
    completion's tokens and the end-of-sequence token after them (``models/encoding.py``).
    """

    scores_prompts = True

    def __init__(self, trainer: LoraTrainer, max_length: int = 256, batch_size: int = 64) -> None:
        self.trainer = trainer
        self.max_length = max_length
        self.batch_size = batch_size

    def generate(
        self, prompts: Sequence[str], n: int, temperature: float, max_new_tokens: int, seed: int
    ) -> list[list[str]]:
        import torch

        from lada_client.models.encoding import encode_prompts

        model, tokenizer, special = self.trainer.model, self.trainer.tokenizer, self.trainer.special
        torch.manual_seed(seed)
        model.eval()
        out: list[list[str]] = []
        newline = tokenizer.encode("\n", add_special_tokens=False)
        for start in range(0, len(prompts), self.batch_size):
            rows = encode_prompts(tokenizer, prompts[start : start + self.batch_size], self.max_length, special)
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), special.pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, r in enumerate(rows):  # left padding for generation
                ids[b, width - len(r) :] = torch.tensor(r)
                mask[b, width - len(r) :] = 1
            with torch.no_grad():
                gen = model.generate(
                    input_ids=ids.to(self.trainer.device),
                    attention_mask=mask.to(self.trainer.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_k=None,
                    top_p=None,
                    num_return_sequences=n,
                    pad_token_id=special.pad,
                    eos_token_id=[special.eos, *newline],
                )
            texts = tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
            for b in range(len(rows)):
                out.append([t.split("\n")[0].strip() for t in texts[b * n : (b + 1) * n]])
        return out

    def sequence_logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        from lada_client.models.encoding import encode_pairs

        sums, counts = [], []
        for start in range(0, len(prompts), self.batch_size):
            p, c = prompts[start : start + self.batch_size], completions[start : start + self.batch_size]
            sums.append(self.trainer.sequence_logprobs(p, c, self.max_length).numpy())
            counts.append(
                encode_pairs(self.trainer.tokenizer, p, c, self.max_length, self.trainer.special).completion_mask.sum(
                    axis=1
                )
            )
        if not sums:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        return np.concatenate(sums), np.concatenate(counts)

    def adapter_updated(self, adapter_dir: Path) -> None:
        """Nothing to do: the adapter was trained on these very weights."""
