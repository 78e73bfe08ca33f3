"""The coordinator's LLM host on a real tiny checkpoint: accuracy is reused only while the
weights it was measured on are unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from lada_client.config import DistillSettings, LoraSettings
from lada_client.data.federation import FederationData
from lada_coordinator.llm.host import LLMHost


def test_accuracy_is_recomputed_after_training_and_reused_otherwise(
    tiny_world: dict[str, Path], tmp_path: Path
) -> None:
    fed = FederationData.load(tiny_world["data"])
    host = LLMHost(tiny_world["llm"], tmp_path / "adapter", LoraSettings(), max_new_tokens=8)
    test = fed.clients[0].test[:6]
    generated: list[int] = []
    real_generate = host._generate
    host._generate = lambda prompts, *a, **k: generated.append(len(prompts)) or real_generate(prompts, *a, **k)

    first = host.accuracy(test)
    assert host.accuracy(test) == first and generated == [6]  # same weights, same questions
    host.accuracy(test[:3])
    assert generated == [6, 3]  # other questions are evaluated

    public = fed.public[:4]
    host.train(public, [s.rationale for s in public], ["" for _ in public], DistillSettings(epochs=1, alpha=0.0))
    host.accuracy(test)
    assert generated == [6, 3, 6]  # new weights: generated again
