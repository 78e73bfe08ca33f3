"""The device's reward on its own task: the held-out probe, per-sample credit, the locality feature."""

from __future__ import annotations

import numpy as np
import pytest

from lada_client.common.reasoning import ANSWER_PHRASE
from lada_client.data.federation import load_client
from lada_client.scoring.features import local_similarity
from lada_client.scoring.onnx_slm import OnnxSLM
from lada_client.scoring.reward import HeldoutProbe, relative_drop, sample_rewards


def test_heldout_probe_scores_the_gold_answer_after_the_slms_own_reasoning(tiny_world):
    data = load_client(tiny_world["data"], "client0")
    slm = OnnxSLM(tiny_world["client0"] / "onnx" / "model.onnx")
    probe = HeldoutProbe(data.train[:6], batch_size=4)
    pairs, nll = probe.measure(slm)
    own = slm.generate([p.split("\nA:")[0] + "\nA:" for p, _ in pairs], batch_size=4)
    for (prompt, completion), sample, text in zip(pairs, data.train[:6], own):
        assert prompt.startswith(f"Q: {sample.question}\nA:") and ANSWER_PHRASE not in prompt[len(sample.question) :]
        assert completion == f" {ANSWER_PHRASE} {sample.answer}."
        cut = text.rfind(ANSWER_PHRASE)
        assert prompt.endswith((text[:cut] if cut >= 0 else text).rstrip())  # the SLM's own reasoning, up to its answer
    assert nll > 0 and np.isfinite(nll) and nll == probe.nll(slm, pairs)
    with pytest.raises(ValueError):
        HeldoutProbe([])


def test_rewards_map_alignment_and_loss_drops_into_0_1():
    r = sample_rewards(np.array([-1.0, -0.05, 0.0, 0.05, 1.0]), temperature=0.05)
    assert r[2] == 0.5 and r[0] < 1e-6 and r[4] > 1 - 1e-6 and r[1] < 0.5 < r[3] and abs(r[1] + r[3] - 1) < 1e-9
    assert relative_drop(2.0, 1.5) == 0.25 and relative_drop(2.0, 3.0) == 0.0
    with pytest.raises(ValueError):
        relative_drop(float("nan"), 1.0)


def test_local_similarity_ranks_the_devices_own_kind_of_question_first(tiny_world):
    slm = OnnxSLM(tiny_world["client0"] / "onnx" / "model.onnx")
    mine = load_client(tiny_world["data"], "client0")  # each toy client has one arithmetic domain
    other = load_client(tiny_world["data"], "client2")
    local = [s.question for s in mine.train[:20]]
    own_q, other_q = [s.question for s in mine.test[:10]], [s.question for s in other.test[:10]]
    sims = local_similarity(slm.tokenizer, own_q + other_q, local)
    assert sims.shape == (20,) and ((0 <= sims) & (sims <= 1 + 1e-9)).all()
    assert sims[:10].mean() > sims[10:].mean()
    assert (local_similarity(slm.tokenizer, own_q, []) == 0).all()
