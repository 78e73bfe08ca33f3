"""The ONNX scoring export: what it prints for a large-vocabulary checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_exporting_a_large_vocabulary_model_prints_no_false_tokenizer_warnings(
    large_vocab_model: Path, tokenizer_warnings: list[str], tmp_path: Path
) -> None:
    """optimum loads the checkpoint's tokenizer to save a copy LaDa never reads (the scorer's
    tokenizer.json is copied from the checkpoint); transformers' warnings about it would ask the
    user to act on nothing."""
    pytest.importorskip("optimum")
    from lada_client.models.export import export_scoring_model

    out = export_scoring_model(large_vocab_model, tmp_path / "onnx" / "model.onnx")

    assert (
        out.is_file()
        and (out.parent / "tokenizer.json").read_bytes() == (large_vocab_model / "tokenizer.json").read_bytes()
    )
    printed = " ".join(tokenizer_warnings)
    assert "incorrect regex pattern" not in printed and "tokenizer class you load" not in printed
