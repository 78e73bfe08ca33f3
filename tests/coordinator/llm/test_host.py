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


def test_offers_of_several_clients_generate_the_llms_own_path_once_per_question(
    tiny_world: dict[str, Path], tmp_path: Path
) -> None:
    fed = FederationData.load(tiny_world["data"])
    host = LLMHost(tiny_world["llm"], tmp_path / "adapter", LoraSettings(), max_new_tokens=8)
    questions = fed.public[:3]
    generated: list[int] = []
    real_generate = host._generate
    host._generate = lambda prompts, *a, **k: generated.append(len(prompts)) or real_generate(prompts, *a, **k)

    # three clients offer paths for the same three questions, as every client is offered the round's
    samples = [s for _ in range(3) for s in questions]
    paths = [f"{s.rationale} ({client})" for client in range(3) for s in questions]
    z, own = host.offer_features(samples, paths, seed=1)
    assert generated == [3]  # one generation per distinct question
    assert own == own[:3] * 3 and z.shape == (9, 4)
    alone, own_alone = host.offer_features(samples[3:6], paths[3:6], seed=1)  # one client's offers alone
    assert own_alone == own[3:6]
    assert abs(alone - z[3:6]).max() < 1e-4  # the same features batched or not
