"""Loading a scoring model's tokenizer on the device, and the special-token ids beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models

from lada_client.models.tokenizer import SPECIAL_TOKENS_FILE, SpecialTokens, load_tokenizer


def _word_level(directory: Path, vocab: dict[str, int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(directory / "tokenizer.json"))
    return directory


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path)


def test_project_layout_is_enforced_unless_the_model_declares_its_ids(tmp_path: Path) -> None:
    ours = _word_level(tmp_path / "ours", {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "hi": 4})
    assert load_tokenizer(ours).token_to_id("hi") == 4
    other = _word_level(tmp_path / "other", {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "hi": 3})
    with pytest.raises(ValueError, match="special token"):
        load_tokenizer(other)
    SpecialTokens(bos=1, eos=2, pad=2).save(other)
    assert (other / SPECIAL_TOKENS_FILE).is_file()
    assert load_tokenizer(other).token_to_id("hi") == 3
    assert SpecialTokens.load(other) == SpecialTokens(bos=1, eos=2, pad=2)
    SpecialTokens(bos=None, eos=99, pad=2).save(other)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        load_tokenizer(other)


def test_special_tokens_default_to_the_projects_ids(tmp_path: Path) -> None:
    assert SpecialTokens.load(tmp_path) == SpecialTokens() == SpecialTokens(bos=1, eos=2, pad=0)
    (tmp_path / SPECIAL_TOKENS_FILE).write_text("{broken")
    with pytest.raises(ValueError, match="special-tokens file"):
        SpecialTokens.load(tmp_path)
