"""A small byte-level BPE tokenizer trained locally on the federation's own text.

Tiny LMs need a tiny vocabulary, and nothing may be fetched from a model hub, so the tokenizer is
trained from the generated problems. Digits are always split one per token: with multi-digit
merges "47" and "74" would be unrelated symbols and column arithmetic could not be learned.
Byte-level pre-tokenization makes every string encodable and decoding exact, which the grader
relies on when it reads the answer back out of generated text.

The saved directory also loads with ``transformers.PreTrainedTokenizerFast.from_pretrained``
(pad/bos/eos set), which is how the coordinator uses it; this module itself needs only
``tokenizers``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = [
    "BOS_ID",
    "BOS_TOKEN",
    "DEFAULT_VOCAB_SIZE",
    "EOS_ID",
    "EOS_TOKEN",
    "PAD_ID",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "UNK_TOKEN",
    "build_tokenizer",
    "load_tokenizer",
    "save_tokenizer",
]

logger = logging.getLogger(__name__)

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
TOKENIZER_FILE = "tokenizer.json"

# Specials + the 256 byte symbols; a smaller vocabulary could not hold every byte.
_MIN_VOCAB = len(SPECIAL_TOKENS) + 256


# 512 leaves 252 merges after the byte symbols: enough for the template words of the generated
# problems, so a prompt is ~33 tokens instead of ~44 at 384 (targets, digit by digit, stay ~21).
# Shorter sequences made the teacher's warm-up step 21 % and slm-large's 17 % cheaper; the larger
# embedding and output layers cost far less than that.
DEFAULT_VOCAB_SIZE = 512


def build_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts`` with specials at ids 0-3.

    No BOS/EOS are added by ``encode``; callers place them explicitly so prompt and target can be
    tokenized separately and concatenated.
    """
    if vocab_size < _MIN_VOCAB:
        raise ValueError(f"vocab_size must be at least {_MIN_VOCAB}, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    _check_special_ids(tokenizer)
    logger.info("trained BPE tokenizer with %d tokens", tokenizer.get_vocab_size())
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> Path:
    """Write ``tokenizer.json`` plus the configs ``PreTrainedTokenizerFast`` expects; return dir."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / TOKENIZER_FILE))
    special_map = {
        "pad_token": PAD_TOKEN,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": UNK_TOKEN,
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        # The default clean-up rewrites " ." and " 's", which would break exact round trips.
        "clean_up_tokenization_spaces": False,
        "padding_side": "right",
    }
    for name, content in (
        ("tokenizer_config.json", config),
        ("special_tokens_map.json", special_map),
    ):
        (directory / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return directory


def load_tokenizer(path: Path | str, strict: bool | None = None) -> Tokenizer:
    """Load from a directory written by :func:`save_tokenizer` or from a ``tokenizer.json`` file.

    ``strict`` enforces this project's special-token layout (``<pad>``, ``<s>``, ``</s>``,
    ``<unk>`` at ids 0-3). By default (``None``) it is enforced only when no
    ``special_tokens.json`` lies beside the file: without one, scoring falls back to the project's
    ids, and a tokenizer of another family would be fed the wrong framing tokens. An exported model
    of another family (SmolLM2 frames with ``<|im_start|>`` = 1 and ``<|im_end|>`` = 2 and has no
    ``<pad>``) declares its ids in that file instead, and they are checked to exist in the
    vocabulary.
    """
    from lada_client.models.encoding import SPECIAL_TOKENS_FILE, SpecialTokens  # imports this module

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
        _check_special_ids(tokenizer)
    if declared:
        special = SpecialTokens.load(file.parent)
        for role, token_id in (("bos", special.bos), ("eos", special.eos), ("pad", special.pad)):
            if token_id is not None and tokenizer.id_to_token(token_id) is None:
                raise ValueError(
                    f"{file.parent / SPECIAL_TOKENS_FILE} gives {role} id {token_id}, "
                    f"which is not in the vocabulary of {file}"
                )
    return tokenizer


def _check_special_ids(tokenizer: Tokenizer) -> None:
    """Models hard-code PAD_ID/BOS_ID/EOS_ID, so a tokenizer that disagrees must be rejected."""
    for token, expected in zip(SPECIAL_TOKENS, (PAD_ID, BOS_ID, EOS_ID, UNK_ID), strict=True):
        actual = tokenizer.token_to_id(token)
        if actual != expected:
            raise ValueError(f"special token {token!r} has id {actual}, expected {expected}")
