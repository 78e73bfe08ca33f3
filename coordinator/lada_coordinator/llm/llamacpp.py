"""The teacher on llama.cpp: verified reasoning paths from a GGUF file, 5–15× faster on a CPU.

``llama-cpp-python`` runs the GGUF file as shipped (no dequantisation); on 2 cores Qwen2.5-Coder-1.5B
generates ~20–30 tokens/s against ~2 in transformers (``../shared/docs/cpu-engines.md``). It builds
from source with the machine's compiler and cmake::

    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36     # ~5 min on 2 cores

Paths are generated after a few-shot prefix (:data:`DEFAULT_PROMPT`) that shows the one-line format
the students learn ("step. step. The answer is X."), cut after the answer sentence, and verified
against the gold answer. Each path's log-prob is computed by evaluating ``format_prompt(question) +
format_target(path)`` and taking the log-softmax of llama.cpp's logits at the path's tokens (the
``eval`` + ``scores`` route; its completion API's own echo log-probs are wrong, see cpu-engines.md),
so it is the teacher's zero-shot log-prob, as the in-process LLM computes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from lada_client.common.reasoning import ANSWER_PHRASE, format_prompt, format_target, is_correct
from lada_client.data.samples import Sample
from lada_coordinator.llm.paths import PathRecord, PathStore

log = logging.getLogger(__name__)

INSTALL = 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36'

#: one exemplar per problem style the default task families use; the question then follows
DEFAULT_PROMPT = (
    "Answer each question with short reasoning steps on one line, then state the answer once.\n\n"
    "Q: State the final answer to the following arithmetic problem: 12 + 7 - 5 =\n"
    "A: 12 + 7 = 19. 19 - 5 = 14. The answer is 14.\n\n"
    "Q: Calculate 6 * 3 - 4.\nA: 6 * 3 = 18. 18 - 4 = 14. The answer is 14.\n\n"
    "Q: Solve for x: 7*x + 5 = 40\n"
    "A: Subtract 5 from both sides: 7*x = 40 - 5 = 35. Divide by 7: x = 35 / 7 = 5. The answer is 5.\n\n"
    "Q: How many legs are there in total if you have 2 cats, 3 spiders?\n"
    "A: A cat has 4 legs, so 2 cats have 2 * 4 = 8 legs. A spider has 8 legs, so 3 spiders have 3 * 8 = 24 legs. "
    "8 + 24 = 32. The answer is 32.\n\n"
)


def file_digest(path: Path) -> str:
    """SHA-256 of a (large) file, cached beside it by size and modification time."""
    path = Path(path)
    st = path.stat()
    sidecar = path.with_name(path.name + ".digest")
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    if sidecar.exists():
        saved_stamp, _, saved = sidecar.read_text().strip().partition(" ")
        if saved_stamp == stamp and len(saved) == 64:
            return saved
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    with contextlib.suppress(OSError):  # a read-only location: hash again next time
        sidecar.write_text(f"{stamp} {h.hexdigest()}\n")
    return h.hexdigest()


_ANSWER_SENTENCE = re.compile(re.escape(ANSWER_PHRASE) + r"[^\n]*?\.(?=\s|$)")


def cut_after_answer(text: str) -> str:
    """The text up to the end of its first answer sentence ("... The answer is 5."), or all of it.
    Small teachers tend to repeat the answer sentence until the token limit; the first one counts."""
    text = text.strip()
    match = _ANSWER_SENTENCE.search(text)
    return text[: match.end()] if match else text


class LlamaCppTeacher:
    def __init__(
        self,
        gguf: Path,
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int = 160,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        seed: int = 0,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ImportError(f"the llama.cpp teacher needs llama-cpp-python: {INSTALL}") from exc
        self.gguf = Path(gguf)
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.digest = file_digest(self.gguf)
        threads = n_threads or os.cpu_count() or 2
        # Two contexts on one set of weights' files: generation keeps the few-shot prefix in its KV
        # cache from question to question; scoring needs every position's logits (logits_all).
        self._llm = Llama(model_path=str(self.gguf), n_ctx=n_ctx, n_threads=threads, seed=seed, verbose=False)
        self._scorer = Llama(model_path=str(self.gguf), n_ctx=1024, n_threads=threads, logits_all=True, verbose=False)

    def generate(self, question: str, temperature: float = 0.0, seed: int = 0) -> str:
        """One path, stopped as soon as its answer sentence is complete (or at a newline)."""
        from llama_cpp import StoppingCriteriaList

        prompt = self.prompt + format_prompt(question)
        n_prompt = len(self._llm.tokenize(prompt.encode(), add_bos=False, special=False))

        def answered(input_ids: np.ndarray, logits: np.ndarray) -> bool:  # llama-cpp-python's signature
            text = self._llm.detokenize(list(input_ids[n_prompt:])).decode("utf-8", errors="ignore")
            return _ANSWER_SENTENCE.search(text) is not None

        # without stream=True the call returns one completion (a dict), not an iterator of chunks
        out = cast(
            "dict[str, Any]",
            self._llm(
                prompt,
                max_tokens=self.max_new_tokens,
                temperature=temperature,
                top_k=0 if temperature > 0 else 40,
                top_p=1.0,
                seed=seed,
                stop=["\n", " Q:"],
                stopping_criteria=StoppingCriteriaList([answered]),
            ),
        )
        return cut_after_answer(out["choices"][0]["text"])

    def logprob(self, question: str, path: str) -> tuple[float, int]:
        """(summed log-prob, token count) of ``format_target(path)`` after ``format_prompt(question)``."""
        prompt_ids = self._scorer.tokenize(format_prompt(question).encode(), add_bos=False, special=False)
        target_ids = self._scorer.tokenize(format_target(path).encode(), add_bos=False, special=False)
        ids = prompt_ids + target_ids
        self._scorer.reset()
        self._scorer.eval(ids)
        logits = np.asarray(self._scorer.scores[: len(ids)], dtype=np.float64)
        rows = logits[len(prompt_ids) - 1 : len(ids) - 1]
        rows = rows - rows.max(axis=1, keepdims=True)
        logp = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
        return float(logp[np.arange(len(target_ids)), target_ids].sum()), len(target_ids)

    def verified_path(self, sample: Sample, attempts: int = 2, temperature: float = 0.7, seed: int = 0) -> PathRecord:
        """Greedy first, then up to ``attempts - 1`` samples at ``temperature``: the first path whose
        answer is the gold one, with its log-prob; ``path=""`` if none was right."""
        for attempt in range(attempts):
            path = self.generate(sample.question, 0.0 if attempt == 0 else temperature, seed + attempt)
            if path and is_correct(path, sample.answer):
                logprob, tokens = self.logprob(sample.question, path)
                return PathRecord("", sample.sample_id, path, logprob, tokens, True, attempt + 1)
        return PathRecord("", sample.sample_id, "", 0.0, 0, False, attempts)


def fill_store(
    teacher: LlamaCppTeacher,
    store: PathStore,
    samples: Sequence[Sample],
    attempts: int = 2,
    temperature: float = 0.7,
    seed: int = 0,
    progress: Callable[[int, int, int], None] | None = None,
    flush_every: int = 8,
) -> dict[str, int]:
    """Compute the store's missing paths for ``samples``; appends every ``flush_every`` (resumable).
    ``progress(done, total, verified)`` is called after each question."""
    todo = store.missing(samples)
    started, done, verified, pending = time.perf_counter(), 0, 0, []
    for sample in todo:
        record = teacher.verified_path(sample, attempts, temperature, seed)
        pending.append(dataclasses.replace(record, key=store.key(sample)))
        done += 1
        verified += record.correct
        if len(pending) >= flush_every:
            store.add(pending)
            pending = []
        if progress is not None:
            progress(done, len(todo), verified)
    if pending:
        store.add(pending)
    seconds = time.perf_counter() - started
    if todo:
        log.info("teacher paths: %d new (%d verified) in %.0fs (%.1f s each)", done, verified, seconds, seconds / done)
    return {"new": done, "verified": verified, "cached": len(samples) - len(todo)}
