"""A model's tokenizer on the device, and the special-token ids that frame its sequences.

:func:`load_tokenizer` reads the ``tokenizer.json`` beside a scoring model (needs only
``tokenizers``). The ids framing a sequence differ between model families, so they travel with the
model (:class:`SpecialTokens`); this project's own tiny models (trained by the simulation,
``lada_coordinator.simulation.tokenizer``) use ``<pad>``, ``<s>``, ``</s>``, ``<unk>`` at ids 0-3.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

__all__ = [
    "BOS_ID",
    "BOS_TOKEN",
    "EOS_ID",
    "EOS_TOKEN",
    "PAD_ID",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "SPECIAL_TOKENS_FILE",
    "TOKENIZER_FILE",
    "UNK_ID",
    "UNK_TOKEN",
    "SpecialTokens",
    "check_special_ids",
    "load_tokenizer",
]

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS_FILE = "special_tokens.json"


@dataclass(frozen=True)
class SpecialTokens:
    """Ids framing a sequence. Models differ (ours: <pad>=0 <s>=1 </s>=2; SmolLM2-Instruct frames
    with <|im_start|>=1 … <|im_end|>=2 and pads with EOS), so they travel with the model: in
    ``config.json`` for checkpoints and in ``special_tokens.json`` beside an ONNX scoring model."""

    bos: int | None = BOS_ID
    eos: int = EOS_ID
    pad: int = PAD_ID

    @classmethod
    def from_model_config(cls, config: Any) -> SpecialTokens:
        eos = config.eos_token_id
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        if eos is None:
            raise ValueError("the model config has no eos_token_id")
        pad = config.pad_token_id if config.pad_token_id is not None else eos
        return cls(bos=config.bos_token_id, eos=int(eos), pad=int(pad))

    def save(self, directory: Path) -> Path:
        path = Path(directory) / SPECIAL_TOKENS_FILE
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, directory: Path) -> SpecialTokens:
        """From ``special_tokens.json`` in ``directory``; the project's defaults if absent."""
        path = Path(directory) / SPECIAL_TOKENS_FILE
        if not path.exists():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path} is not a valid special-tokens file: {exc}") from exc


def load_tokenizer(path: Path | str, strict: bool | None = None) -> Tokenizer:
    """Load from a tokenizer directory (``tokenizer.json`` in it) or from a ``tokenizer.json`` file.

    ``strict`` enforces this project's special-token layout (``<pad>``, ``<s>``, ``</s>``,
    ``<unk>`` at ids 0-3). By default (``None``) it is enforced only when no
    ``special_tokens.json`` lies beside the file: without one, scoring falls back to the project's
    ids, and a tokenizer of another family would be fed the wrong framing tokens. An exported model
    of another family (SmolLM2 frames with ``<|im_start|>`` = 1 and ``<|im_end|>`` = 2 and has no
    ``<pad>``) declares its ids in that file instead, and they are checked to exist in the
    vocabulary.
    """
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {file}")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # the Rust side raises a bare Exception on malformed JSON
        raise ValueError(f"cannot parse tokenizer file {file}: {exc}") from exc
    declared = (file.parent / SPECIAL_TOKENS_FILE).is_file()
    if strict or (strict is None and not declared):
        check_special_ids(tokenizer)
    if declared:
        special = SpecialTokens.load(file.parent)
        for role, token_id in (("bos", special.bos), ("eos", special.eos), ("pad", special.pad)):
            if token_id is not None and tokenizer.id_to_token(token_id) is None:
                raise ValueError(
                    f"{file.parent / SPECIAL_TOKENS_FILE} gives {role} id {token_id}, "
                    f"which is not in the vocabulary of {file}"
                )
    return tokenizer


def check_special_ids(tokenizer: Tokenizer) -> None:
    """This project's models hard-code PAD_ID/BOS_ID/EOS_ID, so a tokenizer that disagrees is rejected."""
    for token, expected in zip(SPECIAL_TOKENS, (PAD_ID, BOS_ID, EOS_ID, UNK_ID), strict=True):
        actual = tokenizer.token_to_id(token)
        if actual != expected:
            raise ValueError(f"special token {token!r} has id {actual}, expected {expected}")
