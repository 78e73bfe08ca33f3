"""Importing a pretrained model as an SLM or an LLM: checkpoint, ONNX scorer, special tokens, caching."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("optimum.exporters.onnx")

from lada_client.models.importer import MARKER_FILE, import_checkpoint, import_slm, source_digest
from lada_client.models.tokenizer import SpecialTokens


def test_a_checkpoint_imports_as_an_slm_with_the_end_token_of_its_generation_config(tiny_world, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(tiny_world["client2"] / "base", source)
    (source / "generation_config.json").write_text(json.dumps({"eos_token_id": [3, 2]}))  # the end token it really uses
    imported = import_slm(source, tmp_path / "slm")
    assert json.loads((imported.checkpoint / "config.json").read_text())["eos_token_id"] == 3
    assert SpecialTokens.load(imported.scoring_model.parent).eos == 3
    assert imported.scoring_model.is_file() and (imported.scoring_model.parent / "tokenizer.json").is_file()
    marker = json.loads((imported.checkpoint / MARKER_FILE).read_text())
    assert marker["kind"] == "checkpoint" and marker["source"] == source_digest(source)
    stamp = imported.scoring_model.stat().st_mtime_ns
    assert (
        import_slm(source, tmp_path / "slm") == imported and imported.scoring_model.stat().st_mtime_ns == stamp
    )  # cached
    (source / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))  # the source changed: imported anew
    assert (
        json.loads((import_checkpoint(source, tmp_path / "slm" / "checkpoint") / "config.json").read_text())[
            "eos_token_id"
        ]
        == 2
    )


def test_what_is_not_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="must be GGUF"):
        import_checkpoint(tmp_path / "notes.txt", tmp_path / "out")
    with pytest.raises(ValueError, match=r"no config\.json"):
        import_checkpoint(tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        import_checkpoint(tmp_path / "missing.gguf", tmp_path / "out")


def test_import_model_command_prints_the_config_lines(tiny_world, tmp_path, capsys):
    from lada_client.cli import main

    assert main(["import-model", str(tiny_world["client2"] / "base"), "--out", str(tmp_path / "slm")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scoring_model"].endswith("onnx/model.onnx") and out["base_model_dir"].endswith("checkpoint")
    assert main(["import-model", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


def test_a_checkpoint_without_tokenizer_json_gets_one_without_false_warnings(tmp_path, tokenizer_warnings):
    """A Qwen2-like checkpoint that ships only the slow BPE files (vocab.json, merges.txt) and more
    than 100k tokens: the import writes the fast tokenizer.json the device scorer needs, without
    transformers' Mistral "incorrect regex pattern" warning, which concerns Mistral models only."""
    source = tmp_path / "source"
    source.mkdir()
    alphabet = [chr(c) for c in range(33, 127)]  # printable bytes of GPT-2's byte-level alphabet
    vocab = {t: i for i, t in enumerate(alphabet + [f"w{i}" for i in range(100_010 - len(alphabet))])}
    vocab["<|endoftext|>"] = len(vocab)
    (source / "vocab.json").write_text(json.dumps(vocab))
    (source / "merges.txt").write_text("#version: 0.2\nw 1\n")
    (source / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
    )
    (source / "config.json").write_text(
        json.dumps({"model_type": "qwen2", "transformers_version": "4.57.6", "eos_token_id": len(vocab) - 1})
    )

    out = import_checkpoint(source, tmp_path / "checkpoint")

    assert (out / "tokenizer.json").is_file()
    assert "incorrect regex pattern" not in " ".join(tokenizer_warnings)
