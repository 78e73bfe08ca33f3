"""Import a pretrained model — a GGUF file or a transformers checkpoint — as what LaDa runs.

* **As an SLM** (a device's model, :func:`import_slm`): a float32 Hugging Face checkpoint, which
  LoRA training loads as ``base_model_dir``, and its ONNX scoring graph with ``tokenizer.json`` and
  ``special_tokens.json`` beside it, which the device scores with (``scoring_model``).
* **As the coordinator's LLM** (:func:`import_checkpoint`): the checkpoint alone (``llm_dir``).

GGUF files are dequantised by transformers' GGUF loader (needs the ``gguf`` package). What that
loader gets wrong is repaired here, per family:

* the end token: a converted checkpoint can name the wrong one (SmolLM2 and Qwen2.5 came out with
  ``<|im_start|>`` / ``<|endoftext|>`` instead of the ``<|im_end|>`` their instruct models end with).
  The end token is taken from the model's generation config where one exists (a transformers
  checkpoint's ``generation_config.json``), else from the GGUF metadata
  (``tokenizer.ggml.eos_token_id``), and written to the config, the generation config and the
  tokenizer alike, so training targets, generation and the ONNX graph agree;
* whether a sequence starts with a BOS token (``tokenizer.ggml.add_bos_token``: Gemma yes, Qwen no);
* SmolLM2's byte-level tokenizer, which the loader rebuilds with SentencePiece rules
  (:func:`repair_smollm_tokenizer`).

Families checked here: ``llama`` (SmolLM2-135M-Instruct), ``qwen2`` (Qwen2.5-Coder-0.5B/1.5B-Instruct)
and ``gemma3`` (Gemma-3-270M base). Every step is cached on disk, keyed by the SHA-256 of the source
(the GGUF file, or the checkpoint's files) and this module's version: importing again is free, and a
changed source is imported anew. Output is staged and renamed into place, so an interrupted import
never leaves a directory that looks complete. Needs the ``export`` extra.

Command line: ``lada-client import-model SOURCE --out DIR`` (SLM), ``lada-coordinator import-llm
SOURCE --out DIR`` (LLM).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lada_client.models.checkpoint import mistral_regex_options

log = logging.getLogger(__name__)

IMPORT_VERSION = 1
MARKER_FILE = ".lada-import.json"
FAMILIES = ("llama", "qwen2", "gemma3")
_CHECKPOINT_FILES = ("config.json", "tokenizer.json")


@dataclass(frozen=True)
class ImportedSLM:
    checkpoint: Path  # a client's base_model_dir
    scoring_model: Path  # a client's scoring_model (model.onnx, tokenizer.json and special_tokens.json beside it)


def source_digest(source: Path) -> str:
    """SHA-256 of a GGUF file, or of a checkpoint directory's files (names and contents)."""
    source = Path(source)
    digest = hashlib.sha256()
    files = (
        [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file() and p.name != MARKER_FILE)
    )
    for path in files:
        if source.is_dir():
            digest.update(str(path.relative_to(source)).encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _marker(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(directory) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _replace_dir(staged: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staged, out_dir)


def gguf_metadata(gguf: Path) -> dict[str, Any]:
    """The GGUF fields the import uses (architecture, tokenizer model and pre-tokenizer, special ids)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields
    wanted = {
        "architecture": "general.architecture",
        "name": "general.name",
        "tokenizer": "tokenizer.ggml.model",
        "pre": "tokenizer.ggml.pre",
        "bos": "tokenizer.ggml.bos_token_id",
        "eos": "tokenizer.ggml.eos_token_id",
        "pad": "tokenizer.ggml.padding_token_id",
        "add_bos": "tokenizer.ggml.add_bos_token",
    }
    return {key: fields[name].contents() if name in fields else None for key, name in wanted.items()}


def import_checkpoint(source: Path, out_dir: Path) -> Path:
    """A float32 transformers checkpoint of ``source`` (a ``.gguf`` file or a checkpoint directory)
    in ``out_dir``, with the end token and BOS use repaired; cached. Returns ``out_dir``."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise FileNotFoundError(f"no model at {source}")
    if source.is_dir() and not (source / "config.json").is_file():
        raise ValueError(f"{source} is neither a .gguf file nor a transformers checkpoint directory (no config.json)")
    if source.is_file() and source.suffix != ".gguf":
        raise ValueError(
            f"{source}: a model file must be GGUF (.gguf); for a transformers checkpoint give its directory"
        )
    key = {
        "source": source_digest(source),
        "kind": "gguf" if source.is_file() else "checkpoint",
        "version": IMPORT_VERSION,
    }
    if _marker(out_dir) == key and all((out_dir / f).is_file() for f in _CHECKPOINT_FILES):
        log.info("reusing the imported checkpoint in %s", out_dir)
        return out_dir
    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-", dir=out_dir.parent) as tmp:
        staged = Path(tmp) / "checkpoint"
        if source.is_file():
            _from_gguf(source, staged)
        else:
            _from_checkpoint(source, staged)
        (staged / MARKER_FILE).write_text(json.dumps(key))
        _replace_dir(staged, out_dir)
    log.info("imported %s to %s in %.0fs", source, out_dir, time.perf_counter() - started)
    return out_dir


def _specials(model: Any, tokenizer: Any, bos: int | None, eos: int, pad: int | None) -> None:
    """Make config, generation config and tokenizer agree on the special tokens."""
    pad = eos if pad is None else pad
    for config in (model.config, model.generation_config):
        config.bos_token_id, config.eos_token_id, config.pad_token_id = bos, eos, pad
    vocab = tokenizer.backend_tokenizer

    def token(token_id: int | None) -> str | None:
        return None if token_id is None else vocab.id_to_token(int(token_id))

    tokenizer.eos_token, tokenizer.pad_token = token(eos), token(pad)
    if bos is not None:
        tokenizer.bos_token = token(bos)


def _from_gguf(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = gguf_metadata(gguf)
    family = meta["architecture"]
    if family not in FAMILIES:
        log.warning("GGUF architecture %r is not one of %s; importing it as transformers loads it", family, FAMILIES)
    source = {"gguf_file": gguf.name, "local_files_only": True}
    log.info("dequantising %s (%s, %.0f MB) to float32", gguf.name, meta["name"] or family, gguf.stat().st_size / 1e6)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **source)
    # transformers' Llama tokenizer asks for an explicit ``legacy`` flag and, without one, warns that a
    # GGUF user may ignore the message; the flag only affects conversions from SentencePiece files,
    # never a GGUF load, so its default is stated instead of printing that warning on every import.
    legacy = {"legacy": True} if family == "llama" else {}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **source, **legacy)
    eos = meta["eos"] if meta["eos"] is not None else model.config.eos_token_id
    if eos is None:
        raise ValueError(f"{gguf}: neither the GGUF metadata nor the loaded config names an end token")
    bos = meta["bos"] if meta["add_bos"] in (True, None) and meta["bos"] is not None else None
    if family == "llama" and meta["pre"] == "smollm":
        _specials(model, tokenizer, bos, int(eos), meta["pad"])
        tokenizer = repair_smollm_tokenizer(tokenizer, model.config, meta["pre"])
    _specials(model, tokenizer, bos, int(eos), meta["pad"])
    tokenizer.padding_side = "right"
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))


def repair_smollm_tokenizer(hf_tokenizer: Any, config: Any, pre_type: str) -> Any:
    """Rebuild the tokenizer as SmolLM2 defines it from what transformers' GGUF loader produced.

    The loader keeps the vocabulary and merges but gets the rest wrong for this byte-level BPE
    model: it decodes with SentencePiece rules (``▁`` becomes a space, so decoding is not exact,
    which the grader relies on), prepends ``<|im_start|>`` whenever special tokens are added,
    names ``<|im_start|>`` as the end-of-sequence token and sets no padding token. It also drops
    the "smollm" pre-tokenizer's one-token-per-digit split; the vocabulary has no multi-digit
    tokens, so ids do not change, but it is restored to match the model's own definition. Special
    tokens are taken from the ids in the model config (from the GGUF metadata), so the tokenizer
    and :class:`~lada_client.models.tokenizer.SpecialTokens` agree by construction.
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


def _from_checkpoint(source: Path, out_dir: Path) -> None:
    """Copy a checkpoint, taking the end token from its generation config where there is one."""
    shutil.copytree(source, out_dir, ignore=shutil.ignore_patterns(MARKER_FILE, "*.onnx", "onnx"))
    gen = out_dir / "generation_config.json"
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) and eos else eos
        if isinstance(eos, int) and eos != config.get("eos_token_id"):
            log.info(
                "%s: end token %s from generation_config.json (config.json said %s)",
                source,
                eos,
                config.get("eos_token_id"),
            )
            config["eos_token_id"] = eos
            config_path.write_text(json.dumps(config, indent=2))
    if config.get("eos_token_id") is None:
        raise ValueError(f"{source}: the checkpoint names no end token (eos_token_id)")
    if not (out_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        options = mistral_regex_options(config.get("model_type"))
        AutoTokenizer.from_pretrained(str(out_dir), **options).save_pretrained(str(out_dir))  # a fast tokenizer.json
        if not (out_dir / "tokenizer.json").is_file():
            raise ValueError(f"{source}: no fast tokenizer (tokenizer.json) can be made for this checkpoint")


def import_slm(source: Path, out_dir: Path) -> ImportedSLM:
    """Import ``source`` as a device SLM under ``out_dir`` (``checkpoint/`` and ``onnx/``); cached."""
    from lada_client.models.export import SCORING_FILES, SCORING_GRAPH_VERSION, export_scoring_model

    out_dir = Path(out_dir)
    checkpoint = import_checkpoint(source, out_dir / "checkpoint")
    onnx_dir = out_dir / "onnx"
    onnx_path = onnx_dir / SCORING_FILES[0]
    key = {"checkpoint": _marker(checkpoint), "graph": SCORING_GRAPH_VERSION}
    if _marker(onnx_dir) == key and all((onnx_dir / f).is_file() for f in SCORING_FILES):
        log.info("reusing the scoring model %s", onnx_path)
        return ImportedSLM(checkpoint, onnx_path)
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=out_dir) as tmp:
        staged = Path(tmp) / "onnx"
        export_scoring_model(checkpoint, staged / SCORING_FILES[0])
        (staged / MARKER_FILE).write_text(json.dumps(key))
        _replace_dir(staged, onnx_dir)
    return ImportedSLM(checkpoint, onnx_path)
