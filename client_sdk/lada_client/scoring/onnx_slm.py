"""The SLM as the device runs it: an ONNX scoring graph in onnxruntime, no torch.

Two operations are all the client needs from its model on the scoring path:

* :meth:`OnnxSLM.completion_logprobs`: per-token log-probs of a completion given a prompt
  (learnability features, perplexities, rewards);
* :meth:`OnnxSLM.generate`: greedy or sampled continuation (the SLM's own reasoning path and its
  test accuracy).

Current scoring graphs (``lada_client.models.export``, version 3) take the real tokens and the
positions to score as inputs, so padding is skipped outside attention and the last layer, the
vocabulary projection and the log-softmax run only on the completion tokens; they also carry a KV
cache, so generation feeds one new token per step instead of re-running the whole prefix. Graphs
of the first export format (log-probs of every position, no cache) still load: they are scored
and generated with the old full-sequence path.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lada_client.models.encoding import EncodedBatch, encode_pairs, encode_prompts
from lada_client.models.tokenizer import SpecialTokens, load_tokenizer

log = logging.getLogger(__name__)

#: inputs of the current log-prob head (``lada_client.models.export.HEAD_INPUTS``; repeated here
#: so the client does not import the exporter module)
_HEAD_INPUTS = ("token_index", "score_index", "score_targets", "next_index")
_PAST_PREFIX = "past_key_values."


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


def _position_ids(attention_mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0).astype(np.int64)


class OnnxSLM:
    """An SLM loaded from ``model.onnx`` (+ ``tokenizer.json``) for scoring and generation.

    ``providers`` are onnxruntime execution providers in order of preference (those not available
    here are skipped, see :func:`select_providers`); ``provider_options`` maps a provider name to
    its options (onnxruntime takes them as strings: a CUDA arena cap, a TensorRT engine cache);
    ``cpu_mem_arena=False`` gives memory back after each run instead of keeping every peak
    allocation, for devices with a memory budget. ``logits_budget_bytes`` bounds one scoring call's
    vocabulary-wide log-probs (scored tokens × vocabulary × 4 bytes): a batch over it is halved until
    it fits. A 262k-token vocabulary (Gemma 3) otherwise takes gigabytes for 16 paths, which an
    onnxruntime arena keeps; the 1 GiB default never splits a batch of 16 × 256 tokens of a
    49k-token vocabulary (SmolLM2). Subclasses may override
    :meth:`session_options` to tune the session further.
    """

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path | None = None,
        providers: Sequence[str] | None = None,
        max_length: int = 256,
        intra_op_threads: int = 0,
        max_new_tokens: int = 48,
        provider_options: Mapping[str, Mapping[str, str]] | None = None,
        cpu_mem_arena: bool = True,
        logits_budget_bytes: int = 1 << 30,
    ) -> None:
        import onnxruntime as ort

        model_path = Path(model_path)
        if not model_path.is_file():
            raise ModelLoadError(f"scoring model not found: {model_path}")
        chosen = select_providers(providers)
        per_provider = [dict((provider_options or {}).get(name, {})) for name in chosen]
        try:
            self._session = ort.InferenceSession(
                str(model_path),
                sess_options=self.session_options(intra_op_threads, cpu_mem_arena),
                providers=chosen,
                provider_options=per_provider,
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelLoadError(f"{model_path} is not a valid ONNX model, or cannot start on {chosen}: {exc}") from exc
        outputs = {o.name for o in self._session.get_outputs()}
        if not {"token_logprobs", "next_logprobs"} <= outputs:
            raise ModelLoadError(
                f"{model_path} is an ONNX model but not a LaDa scoring graph "
                f"(outputs {sorted(outputs)}); export it with lada_client.models.export"
            )
        inputs = {i.name: i for i in self._session.get_inputs()}
        self._inputs = set(inputs)
        #: current head: log-probs only at requested positions
        self._head = set(_HEAD_INPUTS) <= self._inputs
        unknown = self._inputs - {"input_ids", "attention_mask", "position_ids", *_HEAD_INPUTS}
        unknown = {n for n in unknown if not n.startswith(_PAST_PREFIX)}
        if unknown or (self._inputs & set(_HEAD_INPUTS) and not self._head):
            raise ModelLoadError(
                f"{model_path} is a LaDa scoring graph of an unsupported layout (inputs {sorted(self._inputs)}); "
                "export it again with lada_client.models.export"
            )
        #: KV cache: (input name, output name, heads, head size) per past tensor
        self._past: list[tuple[str, str, int, int]] = []
        for name, meta in inputs.items():
            if name.startswith(_PAST_PREFIX):
                heads, size = meta.shape[1], meta.shape[3]
                present = "present." + name[len(_PAST_PREFIX) :]
                if not (isinstance(heads, int) and isinstance(size, int)) or present not in outputs:
                    raise ModelLoadError(f"{model_path}: cannot use KV-cache input {name} {meta.shape}")
                self._past.append((name, present, heads, size))
        #: generate with the graph's KV cache when it has one (False: re-run the prefix each step)
        self.kv_cache = bool(self._past)
        self.tokenizer = load_tokenizer(tokenizer_path or model_path.parent / "tokenizer.json")
        self.special = SpecialTokens.load(model_path.parent)
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        self.model_path = model_path
        self.logits_budget_bytes = logits_budget_bytes

    def session_options(self, intra_op_threads: int = 0, cpu_mem_arena: bool = True) -> Any:
        """The ``onnxruntime.SessionOptions`` the scoring session is built with: all graph
        optimisations, sequential execution (one inter-op thread: the pool would only idle)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        options.enable_cpu_mem_arena = cpu_mem_arena
        return options

    @property
    def session(self) -> Any:
        """The ``onnxruntime.InferenceSession`` (for inspection: providers, options, metadata)."""
        return self._session

    @property
    def providers(self) -> list[str]:
        """The execution providers the session really uses (onnxruntime falls back silently when
        one fails to start)."""
        return list(self._session.get_providers())

    # ------------------------------------------------------------------ graph calls

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        return {name: np.zeros((batch, heads, 0, size), dtype=np.float32) for name, _, heads, size in self._past}

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Version-1 graphs: log-probs of every position and after the last real token."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "position_ids" in self._inputs:
            feeds["position_ids"] = _position_ids(attention_mask)
        token_lp, next_lp = self._session.run(["token_logprobs", "next_logprobs"], feeds)
        return token_lp, next_lp

    def _head_feeds(
        self,
        ids: np.ndarray,
        mask: np.ndarray,
        positions: np.ndarray,
        next_col: np.ndarray,
        score_index: np.ndarray | None = None,
        score_targets: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Inputs of a current graph: ``mask`` covers past + current tokens, ``ids`` the current
        ones; ``next_col`` is each row's position (in ``ids``) whose distribution is wanted."""
        rows = ids.shape[0]
        if score_index is None:  # generation: one dummy scored row (any valid position)
            score_index = np.zeros((1, 2), dtype=np.int64)
            score_targets = np.zeros(1, dtype=np.int64)
        assert score_targets is not None, "score_index comes with its score_targets"
        feeds = {
            "input_ids": ids,
            "attention_mask": mask,
            "token_index": np.argwhere(mask[:, mask.shape[1] - ids.shape[1] :] > 0).astype(np.int64),
            "score_index": score_index,
            "score_targets": score_targets,
            "next_index": np.stack([np.arange(rows, dtype=np.int64), next_col.astype(np.int64)], axis=1),
        }
        if "position_ids" in self._inputs:
            feeds["position_ids"] = positions
        return feeds

    def _score_batch(self, batch: EncodedBatch) -> list[np.ndarray]:
        """Current graphs: the real tokens and the completion positions go in, one log-prob per
        completion token comes out."""
        ids = batch.input_ids
        rows, width = ids.shape
        completion = batch.completion_mask[:, : max(width - 1, 0)] > 0
        score_index = np.argwhere(completion).astype(np.int64)  # row-major: pair by pair, in order
        if score_index.shape[0] == 0:  # nothing to score (every completion cut away)
            return [np.zeros(0, dtype=np.float64) for _ in range(rows)]
        targets = ids[score_index[:, 0], score_index[:, 1] + 1]
        feeds = self._head_feeds(
            ids, batch.attention_mask, batch.position_ids, np.zeros(rows, dtype=np.int64), score_index, targets
        )
        feeds.update(self._empty_past(rows))
        (token_lp,) = self._session.run(["token_logprobs"], feeds)
        splits = np.cumsum(completion.sum(axis=1))[:-1]
        return [lp.astype(np.float64) for lp in np.split(token_lp, splits)]

    # ------------------------------------------------------------------ scoring

    def completion_logprobs(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        batch_size: int = 16,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[np.ndarray]:
        """Log-probs of each completion token (incl. ``</s>``) given its prompt, one array per pair;
        ``progress(done, total)`` after each batch (see :mod:`lada_client.progress`)."""
        order = np.argsort([len(p) + len(c) for p, c in zip(prompts, completions)])
        results: dict[int, np.ndarray] = {}
        if progress is not None:
            progress(0, len(order))
        for start in range(0, len(order), batch_size):
            if progress is not None and start:
                progress(start, len(order))
            self._score_within_budget(prompts, completions, order[start : start + batch_size], results)
        if progress is not None:
            progress(len(order), len(order))
        return [results[i] for i in range(len(prompts))]

    def _score_within_budget(
        self, prompts: Sequence[str], completions: Sequence[str], idx: np.ndarray, results: dict[int, np.ndarray]
    ) -> None:
        """Score the pairs ``idx`` into ``results``, in halves while their vocabulary-wide
        log-probs would exceed ``logits_budget_bytes`` (one pair is scored whatever its size)."""
        batch = encode_pairs(
            self.tokenizer, [prompts[i] for i in idx], [completions[i] for i in idx], self.max_length, self.special
        )
        # the rows the graph takes a log-softmax over: the completion tokens (current graphs), or
        # every position (version-1 graphs)
        rows = int((batch.completion_mask > 0).sum()) if self._head else batch.input_ids.size
        if len(idx) > 1 and rows * self.vocab_size * 4 > self.logits_budget_bytes:
            half = len(idx) // 2
            self._score_within_budget(prompts, completions, idx[:half], results)
            self._score_within_budget(prompts, completions, idx[half:], results)
            return
        if self._head:
            for i, lp in zip(idx, self._score_batch(batch)):
                results[int(i)] = lp
            return
        token_lp, _ = self._run(batch.input_ids, batch.attention_mask)
        for row, i in enumerate(idx):
            mask = batch.completion_mask[row, : token_lp.shape[1]] > 0
            results[int(i)] = token_lp[row][mask].astype(np.float64)

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary, added tokens included (what one log-softmax row spans)."""
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        batch_size: int = 16,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[str]:
        """Continue each prompt; ``temperature == 0`` is greedy. Stops at EOS, a newline or
        ``max_new_tokens`` (default: the instance's, sized to the longest useful reasoning path).
        ``progress(done, total)`` after each batch of prompts."""
        rng = np.random.default_rng(seed)
        steps = max_new_tokens or self.max_new_tokens
        newline_ids = self._newline_ids
        texts: list[str] = []
        for start in range(0, len(prompts), batch_size):
            if progress is not None:
                progress(start, len(prompts))
            rows = encode_prompts(self.tokenizer, prompts[start : start + batch_size], self.max_length, self.special)
            if self._head and self._past and self.kv_cache:
                generated = self._generate_cached(rows, steps, temperature, rng, newline_ids)
            else:
                generated = self._generate_full(rows, steps, temperature, rng, newline_ids)
            texts.extend(self.tokenizer.decode(g, skip_special_tokens=True).split("\n")[0] for g in generated)
        if progress is not None:
            progress(len(prompts), len(prompts))
        return texts

    @functools.cached_property
    def _newline_ids(self) -> set[int]:
        """Every token whose text holds a newline (not just the id of "\n": Gemma's vocabulary has
        "\n\n" and longer runs as tokens of their own), found once by decoding the vocabulary."""
        vocab = self.tokenizer.get_vocab_size()
        texts = self.tokenizer.decode_batch([[i] for i in range(vocab)], skip_special_tokens=False)
        return {i for i, text in enumerate(texts) if "\n" in text}

    def _pick(self, next_lp: np.ndarray, temperature: float, rng: np.random.Generator) -> list[int]:
        if temperature > 0:
            logits = next_lp / temperature
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            return [int(rng.choice(probs.shape[1], p=p)) for p in probs]
        return [int(t) for t in next_lp.argmax(axis=1)]

    def _stops(self, token: int, length: int, newline_ids: set[int]) -> bool:
        return token == self.special.eos or token in newline_ids or length >= self.max_length

    def _generate_cached(
        self, rows: list[list[int]], steps: int, temperature: float, rng: np.random.Generator, newline_ids: set[int]
    ) -> list[list[int]]:
        """KV-cache decoding: the prompts once (left-padded, so every row's last token is the
        last column), then one token per step; finished rows leave the batch."""
        n, width = len(rows), max(len(r) for r in rows)
        ids = np.full((n, width), self.special.pad, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for b, r in enumerate(rows):
            ids[b, width - len(r) :] = r
            mask[b, width - len(r) :] = 1
        positions = _position_ids(mask)
        next_position = positions[:, -1:] + 1  # position id of the token fed at the next step
        active = np.arange(n)
        generated: list[list[int]] = [[] for _ in rows]
        feeds = self._head_feeds(ids, mask, positions, np.full(n, width - 1))
        feeds.update(self._empty_past(n))
        present_names = [present for _, present, _, _ in self._past]
        for step in range(steps):
            next_lp, *present = self._session.run(["next_logprobs", *present_names], feeds)
            keep = []
            for j, token in enumerate(self._pick(next_lp, temperature, rng)):
                b = int(active[j])
                if not self._stops(token, len(rows[b]) + len(generated[b]), newline_ids):
                    generated[b].append(token)
                    keep.append(j)
            if not keep or step == steps - 1:
                break
            if len(keep) < len(active):
                sel = np.asarray(keep)
                active, mask, next_position = active[sel], mask[sel], next_position[sel]
                present = [p[sel] for p in present]
            m = len(active)
            mask = np.concatenate([mask, np.ones((m, 1), dtype=np.int64)], axis=1)
            step_ids = np.array([[generated[b][-1]] for b in active], dtype=np.int64)
            feeds = self._head_feeds(step_ids, mask, next_position, np.zeros(m))
            feeds.update({name: p for (name, _, _, _), p in zip(self._past, present)})
            next_position = next_position + 1
        return generated

    def _generate_full(
        self, rows: list[list[int]], steps: int, temperature: float, rng: np.random.Generator, newline_ids: set[int]
    ) -> list[list[int]]:
        """Without a KV cache: re-run the whole (right-padded) prefix each step."""
        generated: list[list[int]] = [[] for _ in rows]
        done = np.zeros(len(rows), dtype=bool)
        for _ in range(steps):
            seqs = [r + g for r, g in zip(rows, generated)]
            width = max(len(s) for s in seqs)
            ids = np.full((len(seqs), width), self.special.pad, dtype=np.int64)
            mask = np.zeros_like(ids)
            for b, s in enumerate(seqs):
                ids[b, : len(s)] = s
                mask[b, : len(s)] = 1
            if self._head:
                feeds = self._head_feeds(ids, mask, _position_ids(mask), mask.sum(axis=1) - 1)
                feeds.update(self._empty_past(len(seqs)))
                (next_lp,) = self._session.run(["next_logprobs"], feeds)
            else:
                _, next_lp = self._run(ids, mask)
            for b, tok in enumerate(self._pick(next_lp, temperature, rng)):
                if done[b]:
                    continue
                if self._stops(tok, len(seqs[b]), newline_ids):
                    done[b] = True
                else:
                    generated[b].append(tok)
            if done.all():
                break
        return generated
