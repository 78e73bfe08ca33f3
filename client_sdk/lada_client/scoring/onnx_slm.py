"""The SLM as the device runs it: an ONNX scoring graph in onnxruntime, no torch.

Two operations are all the client needs from its model on the scoring path:

* :meth:`OnnxSLM.completion_logprobs`: per-token log-probs of a completion given a prompt
  (learnability features, perplexities, rewards);
* :meth:`OnnxSLM.generate`: greedy or sampled continuation (the SLM's own reasoning path and its
  test accuracy). Generation re-runs the full prefix each step: the scoring graph has no KV cache,
  which costs O(T^2) but keeps one small file per model; paths are short (< 128 tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lada_client.models.encoding import SpecialTokens, encode_pairs, encode_prompts
from lada_client.models.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """The scoring model file is missing or is not a LaDa ONNX scoring graph."""


def select_providers(preferred: Sequence[str] | None = None) -> list[str]:
    """Pick onnxruntime execution providers by availability (TensorRT → CUDA → CPU by default)."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    order = list(preferred or ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"))
    chosen = [p for p in order if p in available] or ["CPUExecutionProvider"]
    log.info("onnxruntime providers: %s (available: %s)", chosen, sorted(available))
    return chosen


class OnnxSLM:
    """An SLM loaded from ``model.onnx`` (+ ``tokenizer.json``) for scoring and generation."""

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path | None = None,
        providers: Sequence[str] | None = None,
        max_length: int = 256,
        intra_op_threads: int = 0,
        max_new_tokens: int = 48,
    ) -> None:
        import onnxruntime as ort

        model_path = Path(model_path)
        if not model_path.is_file():
            raise ModelLoadError(f"scoring model not found: {model_path}")
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=select_providers(providers)
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelLoadError(f"{model_path} is not a valid ONNX model: {exc}") from exc
        outputs = {o.name for o in self._session.get_outputs()}
        if not {"token_logprobs", "next_logprobs"} <= outputs:
            raise ModelLoadError(
                f"{model_path} is an ONNX model but not a LaDa scoring graph "
                f"(outputs {sorted(outputs)}); export it with lada_client.models.export"
            )
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.tokenizer = load_tokenizer(tokenizer_path or model_path.parent / "tokenizer.json")
        self.special = SpecialTokens.load(model_path.parent)
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        self.model_path = model_path

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "position_ids" in self._inputs:
            feeds["position_ids"] = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0).astype(np.int64)
        token_lp, next_lp = self._session.run(["token_logprobs", "next_logprobs"], feeds)
        return token_lp, next_lp

    def completion_logprobs(
        self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 16
    ) -> list[np.ndarray]:
        """Log-probs of each completion token (incl. ``</s>``) given its prompt, one array per pair."""
        order = np.argsort([len(p) + len(c) for p, c in zip(prompts, completions)])
        results: dict[int, np.ndarray] = {}
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = encode_pairs(
                self.tokenizer, [prompts[i] for i in idx], [completions[i] for i in idx], self.max_length, self.special
            )
            token_lp, _ = self._run(batch.input_ids, batch.attention_mask)
            for row, i in enumerate(idx):
                mask = batch.completion_mask[row, : token_lp.shape[1]] > 0
                results[int(i)] = token_lp[row][mask].astype(np.float64)
        return [results[i] for i in range(len(prompts))]

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        batch_size: int = 16,
    ) -> list[str]:
        """Continue each prompt; ``temperature == 0`` is greedy. Stops at EOS, a newline or
        ``max_new_tokens`` (default: the instance's, sized to the longest useful reasoning path)."""
        rng = np.random.default_rng(seed)
        texts: list[str] = []
        newline_ids = set(self.tokenizer.encode("\n", add_special_tokens=False).ids)
        for start in range(0, len(prompts), batch_size):
            rows = encode_prompts(self.tokenizer, prompts[start : start + batch_size], self.max_length, self.special)
            generated: list[list[int]] = [[] for _ in rows]
            done = np.zeros(len(rows), dtype=bool)
            for _ in range(max_new_tokens or self.max_new_tokens):
                seqs = [r + g for r, g in zip(rows, generated)]
                width = max(len(s) for s in seqs)
                ids = np.full((len(seqs), width), self.special.pad, dtype=np.int64)
                mask = np.zeros_like(ids)
                for b, s in enumerate(seqs):
                    ids[b, : len(s)] = s
                    mask[b, : len(s)] = 1
                _, next_lp = self._run(ids, mask)
                if temperature > 0:
                    logits = next_lp / temperature
                    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
                    probs /= probs.sum(axis=1, keepdims=True)
                    tokens = [int(rng.choice(probs.shape[1], p=p)) for p in probs]
                else:
                    tokens = [int(t) for t in next_lp.argmax(axis=1)]
                for b, tok in enumerate(tokens):
                    if done[b]:
                        continue
                    if tok == self.special.eos or tok in newline_ids or len(seqs[b]) >= self.max_length:
                        done[b] = True
                    else:
                        generated[b].append(tok)
                if done.all():
                    break
            texts.extend(self.tokenizer.decode(g, skip_special_tokens=True) for g in generated)
        return texts
