"""A small byte-level BPE tokenizer trained locally on the federation's own text.

Tiny LMs need a tiny vocabulary, and nothing may be fetched from a model hub, so the tokenizer is
trained from the generated problems. Digits are always split one per token: with multi-digit
merges "47" and "74" would be unrelated symbols and column arithmetic could not be learned.
Byte-level pre-tokenization makes every string encodable and decoding exact, which the grader
relies on when it reads the answer back out of generated text.

The saved directory loads on a device with :func:`lada_client.models.tokenizer.load_tokenizer`
and with ``transformers.PreTrainedTokenizerFast.from_pretrained`` (pad/bos/eos set), which is how
the teacher uses it; this module itself needs only ``tokenizers``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lada_client.models.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    UNK_TOKEN,
    check_special_ids,
)

__all__ = ["DEFAULT_VOCAB_SIZE", "build_tokenizer", "save_tokenizer"]

logger = logging.getLogger(__name__)

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
    check_special_ids(tokenizer)
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
