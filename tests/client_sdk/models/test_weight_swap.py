"""Refreshing the ONNX scorer by weight swap gives the same model as a full re-export."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("torch")

from lada_client.common.reasoning import format_prompt, format_target
from lada_client.config import DistillSettings
from lada_client.data.federation import load_client
from lada_client.models.export import export_scoring_model
from lada_client.models.weight_swap import WeightMapError, apply_lora_factors, build_weight_map, swap_weights
from lada_client.scoring.onnx_slm import OnnxSLM
from lada_client.training.lora import LoraTrainer


def test_swap_equals_reexport(tiny_world, tmp_path):
    base = tiny_world["client1"]
    trainer = LoraTrainer(base / "base")
    data = load_client(tiny_world["data"], "client1")
    pairs = [(format_prompt(s.question), format_target(s.rationale)) for s in data.train[:12]]
    trainer.train_round(pairs, [], [], DistillSettings(epochs=3, lr=1e-2))

    mapping = build_weight_map(base / "onnx" / "model.onnx", trainer.projection_weights(merged=False))
    assert len(mapping) == 7 * 2  # q,k,v,o,gate,up,down × 2 layers (slm-medium)
    swapped = tmp_path / "swap"
    swapped.mkdir()
    for name in ("tokenizer.json",):
        shutil.copy(base / "onnx" / name, swapped / name)
    swap_weights(base / "onnx" / "model.onnx", swapped / "model.onnx", mapping, trainer.projection_weights())
    exported = export_scoring_model(trainer.merged_checkpoint(tmp_path / "merged"), tmp_path / "export" / "model.onnx")

    prompts, targets = [p for p, _ in pairs[:6]], [c for _, c in pairs[:6]]
    a = OnnxSLM(swapped / "model.onnx").completion_logprobs(prompts, targets)
    b = OnnxSLM(exported).completion_logprobs(prompts, targets)
    before = OnnxSLM(base / "onnx" / "model.onnx").completion_logprobs(prompts, targets)
    assert max(np.abs(x - y).max() for x, y in zip(a, b)) < 1e-5
    assert max(np.abs(x - y).max() for x, y in zip(before, b)) > 1e-3  # the update did change the model

    wrong = {k: v + 1.0 for k, v in trainer.projection_weights(merged=False).items()}
    with pytest.raises(WeightMapError, match="no initializer"):
        build_weight_map(base / "onnx" / "model.onnx", wrong)


def test_cached_map_is_rebuilt_after_a_reexport(tiny_world, tmp_path):
    from lada_client.models.weight_swap import WEIGHT_MAP_FILE, load_or_build_map

    base = tiny_world["client2"]
    weights = LoraTrainer(base / "base").projection_weights(merged=False)
    graph = tmp_path / "onnx" / "model.onnx"
    graph.parent.mkdir()
    shutil.copy(base / "onnx" / "model.onnx", graph)
    state = tmp_path / "state"
    state.mkdir()
    first = load_or_build_map(state, graph, weights)
    assert (state / WEIGHT_MAP_FILE).exists() and load_or_build_map(state, graph, weights) == first

    # a stale map (another export's initializer names) is refused, not applied
    stale = {k: {**v, "initializer": f"gone/{v['initializer']}"} for k, v in first.items()}
    with pytest.raises(WeightMapError, match="not in"):
        swap_weights(graph, tmp_path / "out.onnx", stale, weights)

    export_scoring_model(base / "base", graph)  # re-export: the cache must not be reused blindly
    again = load_or_build_map(state, graph, weights)
    swap_weights(graph, tmp_path / "out.onnx", again, weights)
    assert set(again) == set(first)


def test_lora_factors_applied_without_the_checkpoint_equal_the_merged_swap(tiny_world, tmp_path):
    """A score-only device merges factors sent by the coordinator into its base export, finding
    each projection by digest: same graph as swapping in the trainer's merged weights."""
    base = tiny_world["client2"]
    trainer = LoraTrainer(base / "base")
    data = load_client(tiny_world["data"], "client2")
    pairs = [(format_prompt(s.question), format_target(s.rationale)) for s in data.train[:12]]
    trainer.train_round(pairs, [], [], DistillSettings(epochs=3, lr=1e-2))
    factors = trainer.lora_factors()
    assert len(factors) == len(trainer.projection_weights())
    factors = [f.model_validate_json(f.model_dump_json()) for f in factors]  # as they travel

    onnx_path = base / "onnx" / "model.onnx"
    applied = apply_lora_factors(onnx_path, tmp_path / "applied.onnx", factors)
    mapping = build_weight_map(onnx_path, trainer.projection_weights(merged=False))
    swapped = swap_weights(onnx_path, tmp_path / "swapped.onnx", mapping, trainer.projection_weights())
    for name in ("tokenizer.json", "special_tokens.json"):
        if (base / "onnx" / name).exists():
            shutil.copy(base / "onnx" / name, tmp_path / name)
    prompts, targets = [p for p, _ in pairs[:6]], [c for _, c in pairs[:6]]
    a = OnnxSLM(applied).completion_logprobs(prompts, targets)
    b = OnnxSLM(swapped).completion_logprobs(prompts, targets)
    before = OnnxSLM(onnx_path).completion_logprobs(prompts, targets)
    assert max(np.abs(x - y).max() for x, y in zip(a, b)) < 1e-5
    assert max(np.abs(x - y).max() for x, y in zip(before, a)) > 1e-3

    other = factors[0].model_copy(update={"digest": "0" * 64, "digest_t": "1" * 64})
    with pytest.raises(WeightMapError, match="no initializer"):
        apply_lora_factors(onnx_path, tmp_path / "x.onnx", [other])
