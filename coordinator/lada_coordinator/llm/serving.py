"""The LLM on a serving engine: the OpenAI-compatible completions API, over HTTP.

:class:`OpenAICompletionsBackend` is an :class:`~lada_coordinator.llm.backend.InferenceBackend`
for any engine that serves ``POST /v1/completions``: vLLM in production (tensor parallel across
GPUs, the LLM's LoRA adapter loaded after each update through its dynamic LoRA endpoint), a
llama.cpp server on a CPU. ``docs/serving.md`` gives the commands and versions.

Generation
    ``/v1/completions`` with the prompts, ``n``, ``temperature`` (0: greedy), ``max_tokens``,
    ``stop=["\\n"]`` and ``seed``; top-k, top-p, min-p and repetition penalty are switched off
    explicitly (``top_k=0`` disables it on vLLM >= 0.9 and llama.cpp), because engines apply
    their own or the model's generation-config defaults otherwise, and the in-process model
    samples from the plain softmax. Each choice is cut to its first line and stripped, as the
    in-process generation is. Choices are matched to prompts by their ``index`` (prompt ``i``,
    sample ``j`` is ``i * n + j``), never by the order they arrive in.

Scoring
    The log-prob of a completion after its prompt is read from the engine's *prompt* log-probs of
    ``prompt + completion``: vLLM's ``prompt_logprobs=0`` (``"vllm"``) or the OpenAI ``echo`` +
    ``logprobs=0`` (``"echo"``), each with ``max_tokens=1`` (``max_tokens=0`` means "unlimited"
    on llama-cpp-python). The engine tokenises the text itself, so where the completion starts is
    found in character offsets (:func:`completion_logprob`): a token belongs to the completion
    when it carries any of the completion's characters, and the count is the engine's number of
    such tokens. Unlike the in-process scorer (``models/encoding.py``), no end-of-sequence token
    is added after the completion (the text API cannot say "this token id", and an engine's own
    text for it differs between tokenizers): engine log-probs are the completion's tokens only.
    One run uses one scorer, so features and path scores stay comparable within it.

    llama.cpp cannot be trusted here: llama-cpp-python's echo log-probs are wrong (its OpenAI
    server included) and llama-server returns no prompt log-probs (``shared/docs/cpu-engines.md``,
    ggml-org/llama.cpp#27174, abetlen/llama-cpp-python#349). Use ``prompt_logprobs="none"``
    there: the engine generates, and the in-process model scores.

Errors
    Whatever goes wrong talking to the engine (unreachable, an HTTP error, a reply of the wrong
    shape) is one :class:`EngineError` naming the URL and what failed. Connection failures and
    502/503/504 replies are retried ``retries`` times with exponential backoff (0.5 s, 1 s, 2 s,
    … at most 8 s); a timeout is not retried (a request that ran past ``timeout_s`` would only
    run again).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from lada_coordinator.config import LLMServerSettings

log = logging.getLogger(__name__)

#: replies retried like a failed connection (the engine restarting or overloaded)
RETRY_STATUS = frozenset({502, 503, 504})
#: sampling as the in-process model does it: the plain softmax at ``temperature``. Both engines'
#: names for the repetition penalty are sent (vLLM ignores llama-cpp-python's, and logs it).
NEUTRAL_SAMPLING: dict[str, Any] = {
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "repeat_penalty": 1.0,
}


class EngineError(RuntimeError):
    """The inference engine at ``url`` could not do what was asked (``what`` says why)."""

    def __init__(self, url: str, what: str) -> None:
        self.url = url
        self.what = what
        super().__init__(f"LLM server {url}: {what}")

    def __reduce__(self) -> tuple[type[EngineError], tuple[str, str]]:
        return type(self), (self.url, self.what)


def server_root(url: str) -> str:
    """``http://host:8000`` for ``http://host:8000``, ``…/``, ``…/v1`` or ``…/v1/``."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


# ------------------------------------------------------------------------ scoring: pure parts
def completion_logprob(
    text: str,
    prompt_chars: int,
    tokens: Sequence[str | None],
    logprobs: Sequence[float | None],
    offsets: Sequence[int] | None = None,
) -> tuple[float, int]:
    """(summed log-prob, token count) of ``text[prompt_chars:]`` from an engine's token log-probs of ``text``.

    ``tokens`` are the engine's tokens as text, ``logprobs`` their log-probs (``None`` where the
    engine gives none: the first token). With ``offsets`` (OpenAI ``echo``: each token's
    ``text_offset``), the tokens may run past ``text`` (the token generated after an echoed
    prompt is dropped) and may start with one the text does not hold (vLLM counts the BOS
    token's text in its offsets): the first token from which the tokens spell ``text`` anchors
    the offsets. Without offsets (vLLM's ``prompt_logprobs``: no generated token, the first
    token's text unknown), the tokens are aligned from the end of ``text``.

    A token is the completion's when it holds any of its characters; the tokens from the first
    of those to the end of ``text`` must spell the completion's end of ``text`` exactly, else
    the alignment is refused (``ValueError``): a wrong count is worse than none.
    """
    if len(tokens) != len(logprobs) or (offsets is not None and len(offsets) != len(tokens)):
        raise ValueError(
            f"{len(tokens)} tokens, {len(logprobs)} log-probs"
            + (f", {len(offsets)} offsets" if offsets is not None else "")
            + ": the lists must be as long"
        )
    if not 0 <= prompt_chars < len(text):
        raise ValueError(f"the completion is empty or out of range ({prompt_chars} prompt characters of {len(text)})")
    starts = _offsets_from_end(text, tokens) if offsets is None else _anchored(text, tokens, offsets)
    picked = [
        i
        for i, start in enumerate(starts)
        if start is not None and start < len(text) and start + len(tokens[i] or "") > prompt_chars
    ]
    if not picked:
        raise ValueError("no token of the completion in the engine's reply")
    first = starts[picked[0]]
    assert first is not None
    spelled = "".join(tokens[i] or "" for i in picked)
    if spelled != text[first : first + len(spelled)] or first + len(spelled) < len(text):
        raise ValueError(
            f"the engine's tokens {spelled!r} do not spell the end of the text {text[first:]!r}"
            " (tokens as raw vocabulary entries, or bytes split across tokens)"
        )
    values = [logprobs[i] for i in picked]
    if any(v is None for v in values):
        raise ValueError("the engine gave no log-prob for a token of the completion")
    return float(sum(float(v) for v in values if v is not None)), len(picked)


def _anchored(text: str, tokens: Sequence[str | None], offsets: Sequence[int]) -> list[int | None]:
    """Each token's start in ``text``: offsets shifted so that the first token from which the
    tokens spell ``text`` starts at 0 (tokens before it, e.g. BOS, get ``None``)."""
    for anchor in range(len(tokens)):
        if "".join(t or "" for t in tokens[anchor:]).startswith(text):
            shift = offsets[anchor]
            return [None if i < anchor else int(offsets[i]) - shift for i in range(len(tokens))]
    raise ValueError(f"the engine's tokens do not spell the scored text {text[:60]!r}…")


def _offsets_from_end(text: str, tokens: Sequence[str | None]) -> list[int | None]:
    """Each token's start in ``text`` when the tokens (after an unknown first one) end it."""
    starts: list[int | None] = [None] * len(tokens)
    end = len(text)
    for i in range(len(tokens) - 1, -1, -1):
        token = tokens[i]
        if token is None:
            break
        end -= len(token)
        if end < 0:
            break
        starts[i] = end
    return starts


def parse_prompt_logprobs(entries: object) -> tuple[list[str | None], list[float | None]]:
    """Tokens and log-probs from a vLLM choice's ``prompt_logprobs``: one entry per prompt token,
    ``null`` or ``{token_id: {"logprob", "rank", "decoded_token"}}``. With ``prompt_logprobs=0``
    an entry holds the prompt token only (vLLM puts it first when there are more)."""
    if not isinstance(entries, list):
        raise ValueError(f"prompt_logprobs is {type(entries).__name__}, not a list")
    tokens: list[str | None] = []
    values: list[float | None] = []
    for entry in entries:
        if entry is None:
            tokens.append(None)
            values.append(None)
            continue
        if not isinstance(entry, dict) or not entry:
            raise ValueError(f"a prompt_logprobs entry is {entry!r}")
        info = next(iter(entry.values()))
        if not isinstance(info, dict) or not isinstance(info.get("logprob"), (int, float)):
            raise ValueError(f"a prompt_logprobs entry is {entry!r}")
        decoded = info.get("decoded_token")
        tokens.append(decoded if isinstance(decoded, str) else None)
        values.append(float(info["logprob"]))
    return tokens, values


# ------------------------------------------------------------------------------------ backend
class OpenAICompletionsBackend:
    """The LLM behind an OpenAI-compatible completions endpoint (module docstring).

    ``client`` replaces the HTTP client (tests give an ``httpx.MockTransport``); ``sleep`` the
    pause between retries. :meth:`check` asks the engine which models it serves; the host calls
    it before the first request, so a wrong URL or model name is said at once.
    """

    def __init__(
        self,
        settings: LLMServerSettings,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.url = server_root(settings.url)
        headers = {}
        if settings.api_key_env is not None:
            key = os.environ.get(settings.api_key_env)
            if not key:
                raise ValueError(
                    f"llm_server.api_key_env names {settings.api_key_env}, which is not set in the environment"
                )
            headers["Authorization"] = f"Bearer {key}"
        self._client = client or httpx.Client(timeout=settings.timeout_s)
        self._client.headers.update(headers)
        self._sleep = sleep
        #: the name requests use: the base model's, or the LLM's adapter once one is loaded
        self.model = settings.model
        self._adapter_version = 0
        self._warned_base = False

    @property
    def scores_prompts(self) -> bool:
        return self.settings.prompt_logprobs != "none"

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, reply_json: bool = True) -> Any:
        """The JSON reply of ``method path`` (its text when not ``reply_json``: vLLM's LoRA endpoints)."""
        url = f"{self.url}{path}"
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                reply = self._client.request(method, url, json=body)
            except httpx.TimeoutException as exc:
                raise EngineError(
                    self.url, f"{method} {path} timed out after {self.settings.timeout_s:g} s ({exc!r})"
                ) from None
            except httpx.TransportError as exc:
                if last:
                    raise EngineError(
                        self.url, f"cannot reach the server ({type(exc).__name__}: {exc}) after {attempts} attempt(s)"
                    ) from None
                self._backoff(attempt, f"{type(exc).__name__}: {exc}")
                continue
            if reply.status_code in RETRY_STATUS and not last:
                self._backoff(attempt, f"HTTP {reply.status_code}")
                continue
            if reply.status_code >= 400:
                raise EngineError(self.url, f"{method} {path} answered HTTP {reply.status_code}: {_error_text(reply)}")
            if not reply_json:
                return reply.text
            try:
                return reply.json()
            except ValueError:
                raise EngineError(self.url, f"{method} {path} answered with no JSON: {reply.text[:200]!r}") from None
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _backoff(self, attempt: int, why: str) -> None:
        delay = min(8.0, 0.5 * 2**attempt)
        log.warning("LLM server %s: %s; retrying in %.1f s", self.url, why, delay)
        self._sleep(delay)

    def _completions(self, body: dict[str, Any], expected: int) -> list[dict[str, Any]]:
        """The choices of one completions request, in ``index`` order, checked to be ``expected``."""
        reply = self._request("POST", "/v1/completions", {"model": self.model, **body})
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise EngineError(
                self.url, f"malformed reply to POST /v1/completions (no list of choices): {_short(reply)}"
            )
        by_index: dict[int, dict[str, Any]] = {}
        for choice in choices:
            index = choice.get("index")
            if not isinstance(index, int) or isinstance(index, bool) or index in by_index:
                raise EngineError(self.url, f"malformed reply to POST /v1/completions (choice index {index!r})")
            by_index[index] = choice
        if sorted(by_index) != list(range(expected)):
            raise EngineError(
                self.url,
                f"POST /v1/completions returned choices {sorted(by_index)} for {expected} expected; an engine"
                " that takes one prompt and ignores n (llama.cpp) needs llm_server.batching='single'",
            )
        return [by_index[i] for i in range(expected)]

    def check(self) -> None:
        """The engine answers and serves :attr:`model` (``GET /v1/models``)."""
        reply = self._request("GET", "/v1/models")
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, list):
            raise EngineError(self.url, f"malformed reply to GET /v1/models: {_short(reply)}")
        served = [m.get("id") for m in data if isinstance(m, dict)]
        if self.model not in served:
            raise EngineError(self.url, f"serves no model named {self.model!r} (it serves {served})")

    # ------------------------------------------------------------------------ generation
    def generate(
        self, prompts: Sequence[str], n: int, temperature: float, max_new_tokens: int, seed: int
    ) -> list[list[str]]:
        sampling = {
            "temperature": float(temperature),
            "max_tokens": max_new_tokens,
            "stop": ["\n"],
            **NEUTRAL_SAMPLING,
        }
        out: list[list[str]] = []
        if self.settings.batching == "single":
            for prompt in prompts:
                texts: list[str] = []
                for j in range(n):
                    if temperature == 0 and j:  # greedy: every sample is the first
                        texts.append(texts[0])
                        continue
                    body = {"prompt": prompt, "n": 1, "seed": seed + j, **sampling}
                    texts.append(_first_line(self._text(self._completions(body, 1)[0])))
                out.append(texts)
            return out
        for start in range(0, len(prompts), self.settings.max_batch):
            chunk = list(prompts[start : start + self.settings.max_batch])
            choices = self._completions({"prompt": chunk, "n": n, "seed": seed, **sampling}, len(chunk) * n)
            texts = [_first_line(self._text(c)) for c in choices]
            out.extend(texts[i * n : (i + 1) * n] for i in range(len(chunk)))
        return out

    def _text(self, choice: dict[str, Any]) -> str:
        text = choice.get("text")
        if not isinstance(text, str):
            raise EngineError(self.url, f"malformed reply to POST /v1/completions (choice text {text!r})")
        return text

    # --------------------------------------------------------------------------- scoring
    def sequence_logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if len(prompts) != len(completions):
            raise ValueError("prompts and completions must have the same length")
        mode = self.settings.prompt_logprobs
        if mode == "none":
            raise EngineError(
                self.url,
                "cannot score prompts (llm_server.prompt_logprobs='none', --llm-server-logprobs none): the"
                " in-process LLM of llm_dir scores them",
            )
        if mode == "vllm":
            scoring: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
        else:
            scoring = {"max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 0}
        texts = [p + c for p, c in zip(prompts, completions)]
        size = 1 if self.settings.batching == "single" else self.settings.max_batch
        sums, counts = np.zeros(len(texts)), np.zeros(len(texts), dtype=np.int64)
        for start in range(0, len(texts), size):
            chunk = texts[start : start + size]
            choices = self._completions({"prompt": chunk[0] if size == 1 else chunk, **scoring}, len(chunk))
            for k, choice in enumerate(choices):
                i = start + k
                try:
                    sums[i], counts[i] = self._score(choice, texts[i], len(prompts[i]))
                except (ValueError, TypeError) as exc:
                    raise EngineError(
                        self.url, f"cannot read the log-probs of completion {i} ({mode!r} mode): {exc}"
                    ) from None
        return sums, counts

    def _score(self, choice: dict[str, Any], text: str, prompt_chars: int) -> tuple[float, int]:
        if self.settings.prompt_logprobs == "vllm":
            tokens, values = parse_prompt_logprobs(choice.get("prompt_logprobs"))
            return completion_logprob(text, prompt_chars, tokens, values)
        logprobs = choice.get("logprobs")
        if not isinstance(logprobs, dict):
            raise ValueError(f"the choice has no logprobs object (echo mode): {_short(choice)}")
        echoed: dict[str, Any] = {k: logprobs.get(k) for k in ("tokens", "token_logprobs", "text_offset")}
        if not all(isinstance(v, list) for v in echoed.values()):
            raise ValueError(
                f"logprobs lacks a list of {', '.join(k for k, v in echoed.items() if not isinstance(v, list))}"
            )
        return completion_logprob(text, prompt_chars, echoed["tokens"], echoed["token_logprobs"], echoed["text_offset"])

    # ------------------------------------------------------------------------ adapters
    def adapter_updated(self, adapter_dir: Path) -> None:
        """Load the adapter into vLLM under a new name (``lora_name``-``k``), serve it, and unload
        the previous one. A new name each time, because vLLM keeps a loaded adapter's weights by
        name: loading the same name again is refused or would serve the old weights. The
        path must be one the engine can read (same machine, or a shared file system)."""
        if self.settings.lora_name is None:
            if not self._warned_base:
                log.warning(
                    "LLM server %s serves %s without the LLM's LoRA updates (no llm_server.lora_name): its"
                    " generations and scores are the base model's",
                    self.url,
                    self.settings.model,
                )
                self._warned_base = True
            return
        name = f"{self.settings.lora_name}-{self._adapter_version + 1}"
        self._request(
            "POST",
            "/v1/load_lora_adapter",
            {"lora_name": name, "lora_path": str(Path(adapter_dir).resolve())},
            reply_json=False,
        )
        previous, self.model = self.model, name
        self._adapter_version += 1
        log.info("LLM server %s: serving adapter %s from %s", self.url, name, adapter_dir)
        if previous != self.settings.model:
            try:
                self._request("POST", "/v1/unload_lora_adapter", {"lora_name": previous}, reply_json=False)
            except EngineError as exc:  # the new adapter is served; an old one left loaded only costs memory
                log.warning("%s", exc)


def _first_line(text: str) -> str:
    return text.split("\n")[0].strip()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _error_text(reply: httpx.Response) -> str:
    """The engine's own error message (OpenAI ``{"error": {"message"}}``, vLLM ``{"message"}``)."""
    try:
        body = reply.json()
    except ValueError:
        return reply.text[:200] or reply.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])[:300]
    return _short(body)
