"""The tokenizer the simulation trains for its tiny models, and how a device loads it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from lada_client.common.reasoning import format_prompt, format_target
from lada_client.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, load_tokenizer
from lada_coordinator.simulation.domains import DOMAINS, generate
from lada_coordinator.simulation.tokenizer import DEFAULT_VOCAB_SIZE, build_tokenizer, save_tokenizer

ODD_TEXTS = [
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "tabs\tand\nnewlines\n",
    "unicode: é ü 漢字 😀",
    "The answer is -12.5.",
    "",
]


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str]]:
    return [
        (format_prompt(s.question), format_target(s.rationale))
        for domain in DOMAINS
        for s in generate(domain, 150, seed=2, id_prefix=domain)
    ]


@pytest.fixture(scope="module")
def tokenizer(pairs: list[tuple[str, str]]) -> Tokenizer:
    return build_tokenizer(prompt + target for prompt, target in pairs)


def test_special_token_ids(tokenizer: Tokenizer) -> None:
    assert (PAD_ID, BOS_ID, EOS_ID) == (0, 1, 2)
    assert tokenizer.token_to_id("<pad>") == PAD_ID
    assert tokenizer.token_to_id("<s>") == BOS_ID
    assert tokenizer.token_to_id("</s>") == EOS_ID
    assert 260 < tokenizer.get_vocab_size() <= DEFAULT_VOCAB_SIZE


def test_round_trip_is_exact(tokenizer: Tokenizer, pairs: list[tuple[str, str]]) -> None:
    texts = [p + t for p, t in pairs] + [t for _, t in pairs] + ODD_TEXTS
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_encode_adds_no_specials(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Q: hi\nA:").ids
    assert not {PAD_ID, BOS_ID, EOS_ID} & set(ids)


def test_digits_are_single_tokens(tokenizer: Tokenizer) -> None:
    encoding = tokenizer.encode("12 + 345 = 357. The answer is 357.")
    digit_tokens = [t for t in encoding.tokens if any(ch.isdigit() for ch in t)]
    assert digit_tokens == list("12345357357")


def test_prompt_and_target_tokenize_independently(tokenizer: Tokenizer, pairs: list[tuple[str, str]]) -> None:
    # Training tokenizes prompt and target separately to mask the prompt; that must agree with
    # tokenizing the full example, or the model learns a split it never sees at generation time.
    for prompt, target in pairs[::10]:
        joint = tokenizer.encode(prompt + target).ids
        assert tokenizer.encode(prompt).ids + tokenizer.encode(target).ids == joint


def test_save_and_load(tokenizer: Tokenizer, pairs: list[tuple[str, str]], tmp_path: Path) -> None:
    directory = save_tokenizer(tokenizer, tmp_path / "tok")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (directory / name).is_file()
    text = pairs[0][0] + pairs[0][1]
    for source in (directory, directory / "tokenizer.json", str(directory)):
        assert load_tokenizer(source).encode(text).ids == tokenizer.encode(text).ids


def test_vocab_too_small_rejected() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(["a"], vocab_size=100)


def test_transformers_loads_saved_directory(tokenizer: Tokenizer, pairs: list[tuple[str, str]], tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    directory = save_tokenizer(tokenizer, tmp_path / "tok")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(directory))
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    short, long = pairs[0][1], pairs[0][0] + pairs[0][1]
    assert hf(long)["input_ids"] == tokenizer.encode(long).ids
    assert hf.decode(hf(long)["input_ids"]) == long
    batch = hf([short, long], padding=True)["input_ids"]
    assert len(batch[0]) == len(batch[1])
    assert batch[0][-1] == PAD_ID
