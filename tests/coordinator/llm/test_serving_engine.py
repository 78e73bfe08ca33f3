"""The LLM on a real serving engine: llama-cpp-python's OpenAI server on the SmolLM2 GGUF.

The server (``python -m llama_cpp.server``, the ``[server]`` extra of ``llama-cpp-python``) runs in
a subprocess for this module, on one thread. What it can show on a CPU: generation end to end
(greedy equals llama.cpp's own completion, ``n`` samples per prompt in order, the teacher's
reasoning-path flow), the errors, and the shape of its ``echo`` log-probs reply. What it cannot:
the log-prob VALUES, which llama-cpp-python computes wrongly (``shared/docs/cpu-engines.md``,
abetlen/llama-cpp-python#349): no test here asserts one. vLLM serves correct prompt log-probs; its
own parts (LoRA loading, tensor parallelism) are behind the same interface and documented in
``docs/serving.md``.

``-m 'not engine'`` leaves these tests out; without the server extra or the model wheel they skip.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

try:
    import llama_cpp.server.app  # noqa: F401  (the [server] extra: fastapi, sse-starlette, starlette-context)
except ImportError as exc:
    pytest.skip(
        f"needs llama-cpp-python's OpenAI server: pip install 'llama-cpp-python[server]==0.3.36' ({exc})",
        allow_module_level=True,
    )

from lada_client.common.reasoning import format_prompt
from lada_client.config import LoraSettings
from lada_client.data.samples import Sample
from lada_client.models import smollm2
from lada_coordinator.config import LLMServerSettings
from lada_coordinator.llm.host import LLMHost, TeacherPath
from lada_coordinator.llm.serving import EngineError, OpenAICompletionsBackend

try:
    GGUF = smollm2.locate_gguf()
except FileNotFoundError as exc:
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = pytest.mark.engine

MODEL = "smollm2"
QUESTIONS = ["What is 2 + 3?", "What is 12 + 30?", "How many legs do 2 cats have?"]
# the reply captured in test_serving.py (LLAMA_CPP_ECHO), checked here against the live server
TEXT = "Q: What is 2 + 3?\nA: 2 + 3 = 5."
ECHO_TOKENS = ["Q", ":", " What", " is", " ", "2", " +", " ", "3", "?", "\n", "A", ":"]
ECHO_TOKENS += [" ", "2", " +", " ", "3", " =", " ", "5", "."]
ECHO_OFFSETS = [0, 1, 2, 7, 10, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 24, 25, 26, 28, 29, 30]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("engine") / "llama_cpp_server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(GGUF), "--model_alias", MODEL]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after 120 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _backend(url: str, **settings: object) -> OpenAICompletionsBackend:
    fields = {"url": url, "model": MODEL, "batching": "single", "prompt_logprobs": "echo", "retries": 1, **settings}
    return OpenAICompletionsBackend(LLMServerSettings(**fields), sleep=lambda s: None)  # type: ignore[arg-type]


def test_greedy_generation_is_llama_cpps_own(engine_url: str) -> None:
    from llama_cpp import Llama

    prompts = [format_prompt(q) for q in QUESTIONS]
    served = _backend(engine_url).generate(prompts, 1, 0.0, 24, seed=0)
    llm = Llama(model_path=str(GGUF), n_ctx=1024, n_threads=1, verbose=False)
    own = [
        llm(p, max_tokens=24, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, stop=["\n"])
        for p in prompts
    ]
    expected = [[out["choices"][0]["text"].split("\n")[0].strip()] for out in own]  # type: ignore[index]
    assert served == expected and all(s[0] for s in served)
    assert "5" in served[0][0]  # "2 + 3 = 5" here


def test_samples_are_n_per_prompt_in_order_and_reproducible(engine_url: str) -> None:
    backend = _backend(engine_url)
    prompts = [format_prompt(q) for q in QUESTIONS[:2]]
    out = backend.generate(prompts, 3, 0.7, 16, seed=1)
    assert [len(paths) for paths in out] == [3, 3]
    assert backend.generate(prompts[1:], 3, 0.7, 16, seed=1) == out[1:]  # the second prompt's, by itself
    assert len({tuple(paths) for paths in out}) == 2 and len(set(out[0])) > 1  # samples differ


def test_teacher_reasoning_paths_through_the_engine(engine_url: str, tmp_path: Path) -> None:
    """The host with no model in-process: paths sampled and scored by the engine. Its scores are
    llama-cpp-python's (wrong) echo log-probs; only their shape is checked."""
    host = LLMHost(None, tmp_path / "adapter", LoraSettings(), max_new_tokens=24, backend=_backend(engine_url))
    samples = [Sample(f"q{i}", "arith", q, "", a) for i, (q, a) in enumerate(zip(QUESTIONS, ["5", "42", "8"]))]
    paths, stats = host.reasoning_paths(samples, 2, 0.7, "gold", seed=0)
    assert len(paths) == 3 and stats["llm"] + stats["gold"] == 3 and stats["dropped"] == 0
    assert all(isinstance(p, TeacherPath) and p.tokens > 0 and math.isfinite(p.logprob) for p in paths)
    assert 0.0 <= host.accuracy(samples) <= 1.0


def test_echo_reply_shape_and_completion_tokens(engine_url: str) -> None:
    reply = httpx.post(
        f"{engine_url}/v1/completions",
        json={"model": MODEL, "prompt": TEXT, "echo": True, "logprobs": 0, "max_tokens": 1, "temperature": 0},
        timeout=60,
    ).json()
    logprobs = reply["choices"][0]["logprobs"]
    assert logprobs["tokens"][: len(ECHO_TOKENS)] == ECHO_TOKENS
    assert logprobs["text_offset"][: len(ECHO_OFFSETS)] == ECHO_OFFSETS
    sums, counts = _backend(engine_url).sequence_logprobs(["Q: What is 2 + 3?\nA:"], [" 2 + 3 = 5."])
    assert counts.tolist() == [9] and sums[0] < 0  # the value itself is llama-cpp-python's, known wrong


def test_wrong_model_name_and_wrong_path_are_clear_errors(engine_url: str) -> None:
    with pytest.raises(EngineError, match=rf"{engine_url}: serves no model named 'nope' \(it serves \['smollm2'\]\)"):
        _backend(engine_url, model="nope").check()  # llama-cpp-python itself would answer any name
    with pytest.raises(EngineError, match=r"POST /v1/completions answered HTTP 404"):
        _backend(f"{engine_url}/not-here").generate(["Q: x\nA:"], 1, 0.0, 4, seed=0)


@pytest.mark.slow
def test_engine_token_counts_and_greedy_paths_match_in_process_transformers(engine_url: str, tmp_path: Path) -> None:
    """The same model in-process (the GGUF dequantised to a transformers checkpoint): the engine's
    completion token count is the in-process one without its end-of-sequence token, and greedy
    paths agree. ``LADA_SMOLLM2_CACHE`` keeps the conversion between runs."""
    pytest.importorskip("gguf")
    pytest.importorskip("torch")
    from lada_coordinator.simulation.domains import DOMAINS, generate

    cache = Path(os.environ.get("LADA_SMOLLM2_CACHE") or tmp_path)
    checkpoint = smollm2.convert_smollm2(cache / "checkpoint")
    local = LLMHost(checkpoint, tmp_path / "adapter", LoraSettings(), max_new_tokens=24)
    samples = [s for domain in DOMAINS for s in generate(domain, 2, seed=5, id_prefix=domain)]
    prompts = [format_prompt(s.question) for s in samples]
    completions = [" " + s.rationale for s in samples]
    _, engine_counts = _backend(engine_url).sequence_logprobs(prompts, completions)
    _, local_counts = local.sequence_logprobs(prompts, completions)
    assert engine_counts.tolist() == (local_counts - 1).astype(int).tolist()
    assert _backend(engine_url).generate(prompts[:4], 1, 0.0, 24, seed=0) == local._generate(prompts[:4], 1, 0.0, 24, 0)


def test_the_preflight_check_asks_the_engine(engine_url: str, tmp_path: Path, tiny_world: dict[str, Path]) -> None:
    import json

    from lada_coordinator.preflight import run_checks

    config = tmp_path / "coordinator.json"
    server = {"url": engine_url, "model": MODEL, "prompt_logprobs": "none", "batching": "single"}
    body = {
        "db_path": str(tmp_path / "c.sqlite"),
        "state_dir": str(tmp_path / "state"),
        "llm_dir": str(tiny_world["llm"]),
    }
    config.write_text(json.dumps({**body, "public_data": str(tiny_world["data"]), "llm_server": server}))
    checks = {c.name: c for c in run_checks(config, load_llm=False)}
    assert checks["llm server"].status == "ok" and repr(MODEL) in checks["llm server"].detail, checks["llm server"]
    config.write_text(
        json.dumps({**body, "public_data": str(tiny_world["data"]), "llm_server": {**server, "model": "x"}})
    )
    checks = {c.name: c for c in run_checks(config, load_llm=False)}
    assert checks["llm server"].status == "fail" and "serves no model named 'x'" in checks["llm server"].detail
