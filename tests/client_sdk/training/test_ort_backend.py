"""The ONNX Runtime training backend: selection, artifacts, and equivalence with torch + peft.

Three kinds of tests:

* backend selection and the torch-free helpers run everywhere (no torch, no onnxruntime-training);
* the exported loss graph is checked against LoraTrainer with plain onnxruntime inference
  wherever torch is installed (the main environment, CI);
* real ORT training runs only where onnxruntime-training is installed *and* torch is there to build
  the tiny SLM and to compare (``.venv-ort`` set up with ``scripts/setup_ort_training.sh --build``):
  ``.venv-ort/bin/python -m pytest -q tests/client_sdk/training/test_ort_backend.py``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lada_client.config import ClientConfig, DistillSettings
from lada_client.training import backend, trainers
from lada_client.training.backend import BackendUnavailable, PreferencePair, batch_schedule
from lada_client.training.ort_backend import read_safetensors, write_safetensors
from lada_client.training.trainers import make_trainer, trainer_for

REPO = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------- selection (everywhere)
def _config(tmp_path: Path, **extra) -> ClientConfig:
    return ClientConfig.from_dict(
        {
            "coordinator_url": "http://127.0.0.1:1",
            "name": "c0",
            "state_dir": str(tmp_path / "state"),
            "data_dir": str(tmp_path / "data"),
            "scoring_model": str(tmp_path / "model.onnx"),
            **extra,
        }
    )


def test_asking_for_ort_without_onnxruntime_training_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(trainers, "can_train_ort", lambda: False)  # as in the main environment
    with pytest.raises(BackendUnavailable) as info:
        make_trainer("ort", artifacts_dir=tmp_path)
    message = str(info.value)
    assert (
        "onnxruntime.training" in message and "setup_ort_training.sh" in message and "onnxruntime-training" in message
    )
    assert isinstance(info.value, ImportError)  # the bridge reports ImportErrors as "unsupported"

    cfg = _config(tmp_path, train_backend="ort", ort_artifacts=str(tmp_path / "artifacts"))
    assert cfg.ort_artifacts == tmp_path / "artifacts"
    with pytest.raises(BackendUnavailable, match=r"onnxruntime\.training"):
        trainer_for(cfg, None)


def test_backend_names_and_capability(tmp_path):
    with pytest.raises(ValueError, match="unknown training backend 'tensorflow'"):
        make_trainer("tensorflow")
    with pytest.raises(ValueError, match=r"train_backend: must be .torch. or .ort."):
        _config(tmp_path, train_backend="tensorflow")
    cfg = _config(tmp_path, train_backend="ort")
    assert cfg.can_train is False  # no artifacts configured
    assert cfg.can_train_ort == trainers.can_train_ort()
    assert trainers.available_backends()["ort"] == trainers.can_train_ort()
    from lada_client.common.wire import Capabilities

    assert Capabilities().can_train_ort is False and Capabilities(can_train_ort=True).can_train_ort
    if trainers.can_train_ort():
        with pytest.raises(ValueError, match="needs ort_artifacts"):
            make_trainer("ort")
    else:
        assert "onnxruntime.training" not in sys.modules or not hasattr(sys.modules["onnxruntime.training"], "api")


def test_batch_schedule_covers_every_item_each_epoch():
    teacher = [(f"t{i}", "x") for i in range(5)]
    private = [(f"p{i}", "y") for i in range(6)]
    pairs = [PreferencePair(f"q{i}", "a", "b") for i in range(3)]
    settings = DistillSettings(epochs=2, batch_size=4, seed=3)
    steps = list(batch_schedule(teacher, pairs, private, settings, with_pairs=True))
    assert len(steps) == 2 * 3
    for epoch in (steps[:3], steps[3:]):
        assert sorted(p for items, _ in epoch for p, _ in items) == sorted(p for p, _ in teacher + private)
        assert sorted(i for _, sel in epoch for i in sel) == [0, 1, 2]
    assert steps == list(batch_schedule(teacher, pairs, private, settings, with_pairs=True))  # seeded
    # fewer pairs than batches: each pair still once per epoch, the other steps carry no L_CD
    few = list(batch_schedule(teacher, pairs[:2], private, settings, with_pairs=True))
    for epoch in (few[:3], few[3:]):
        assert sorted(i for _, sel in epoch for i in (sel or [])) == [0, 1]
        assert sum(sel is None for _, sel in epoch) == 1
    assert all(sel is None for _, sel in batch_schedule(teacher, pairs, private, settings, with_pairs=False))


def test_safetensors_round_trip(tmp_path):
    tensors = {
        "b.lora_A.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "a.lora_B.weight": np.ones((3, 2), np.float32),
    }
    path = write_safetensors(tmp_path / "adapter_model.safetensors", tensors, {"format": "pt"})
    back = read_safetensors(path)
    assert set(back) == set(tensors) and all(np.array_equal(back[k], tensors[k]) for k in tensors)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert json.loads(path.read_bytes()[8 : 8 + header_len])["__metadata__"] == {"format": "pt"}


# --------------------------------------------------------------- a tiny SLM (needs torch)
def _tiny_slm(root: Path) -> tuple[Path, list[tuple[str, str]]]:
    from lada_client.common.reasoning import format_prompt, format_target
    from lada_coordinator.simulation.domains import DOMAINS, generate
    from lada_coordinator.simulation.factory import create_model
    from lada_coordinator.simulation.tokenizer import build_tokenizer, save_tokenizer

    samples = generate(DOMAINS[0], 48, 0, "ort")
    pairs = [(format_prompt(s.question), format_target(s.rationale)) for s in samples]
    save_tokenizer(build_tokenizer([p + c for p, c in pairs]), root / "tokenizer")
    create_model("slm-small", root / "tokenizer", root / "base", seed=1)
    return root / "base", pairs


def _preference_pairs(pairs: list[tuple[str, str]]) -> list[PreferencePair]:
    return [PreferencePair(p, c, c.replace("The answer is", "So it is 0. The answer is 0 and")) for p, c in pairs]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny SLM and its exported loss graph (torch side only)."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from lada_client.training.ort_artifacts import export_training_graph

    root = tmp_path_factory.mktemp("ort")
    base, pairs = _tiny_slm(root)
    export_training_graph(base, root / "artifacts")
    return {"base": base, "pairs": pairs, "artifacts": root / "artifacts"}


def test_exported_loss_graph_computes_lora_trainers_losses(exported):
    """Run the exported forward+loss graph with plain onnxruntime and compare with torch."""
    import onnxruntime as ort
    import torch

    from lada_client.training.lora import LoraTrainer
    from lada_client.training.losses import contrastive_distillation_loss, sequence_logprob, sft_loss, token_logprobs
    from lada_client.training.ort_artifacts import MANIFEST, TRAINING_GRAPH

    manifest = json.loads((exported["artifacts"] / MANIFEST).read_text())
    trainer = LoraTrainer(exported["base"])
    assert [t["name"].removeprefix("model.") for t in manifest["trainable"]] == [
        n for n, p in sorted(trainer.model.named_parameters()) if "lora_" in n
    ]
    # a non-zero adapter, so the LoRA path of the graph matters
    rng = np.random.default_rng(0)
    vector = rng.normal(0, 0.05, trainer.adapter_vector().size)
    trainer.load_adapter_vector(vector)
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(exported["artifacts"] / TRAINING_GRAPH))
    offset, by_name = 0, {}
    for t in manifest["trainable"]:
        size = int(np.prod(t["shape"]))
        by_name[t["name"]] = vector[offset : offset + size].reshape(t["shape"]).astype(np.float32)
        offset += size
    for i, init in enumerate(model.graph.initializer):
        if init.name in by_name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(by_name[init.name], init.name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    from lada_client.models.encoding import encode_pairs

    sft_rows = exported["pairs"][:5]
    prefs = _preference_pairs(exported["pairs"][5:8])
    rows = sft_rows + [(p.prompt, p.chosen) for p in prefs] + [(p.prompt, p.rejected) for p in prefs]
    enc = encode_pairs(trainer.tokenizer, [p for p, _ in rows], [c for _, c in rows], 256, trainer.special)
    expected_seq = trainer.sequence_logprobs([p for p, _ in rows], [c for _, c in rows]).numpy()
    ref_c = (expected_seq[5:8] + np.array([2.0, -3.0, 0.5])).astype(np.float32)  # margins of a few nats
    ref_r = (expected_seq[8:11] + np.array([-1.0, 4.0, 0.0])).astype(np.float32)
    feeds = {
        "input_ids": enc.input_ids,
        "attention_mask": enc.attention_mask,
        "completion_mask": enc.completion_mask,
        "sft_weight": np.array([1.0] * 5 + [0.0] * 6, np.float32),
        "chosen_index": np.array([5, 6, 7], np.int64),
        "rejected_index": np.array([8, 9, 10], np.int64),
        "ref_chosen": ref_c,
        "ref_rejected": ref_r,
        "alpha": np.array(0.7, np.float32),
        "beta": np.array(0.3, np.float32),
    }
    loss, l_sft, l_cd, seq = session.run(None, feeds)

    trainer.model.eval()
    with torch.no_grad():

        def batch(items):
            return trainer._batch([p for p, _ in items], [c for _, c in items], 256)

        ids, mask, cmask = batch(sft_rows)
        t_sft = sft_loss(token_logprobs(trainer.model, ids, mask), cmask)
        c = sequence_logprob(
            token_logprobs(trainer.model, *batch([(p.prompt, p.chosen) for p in prefs])[:2]),
            batch([(p.prompt, p.chosen) for p in prefs])[2],
        )
        r = sequence_logprob(
            token_logprobs(trainer.model, *batch([(p.prompt, p.rejected) for p in prefs])[:2]),
            batch([(p.prompt, p.rejected) for p in prefs])[2],
        )
        t_cd = contrastive_distillation_loss(c, r, torch.from_numpy(ref_c), torch.from_numpy(ref_r), 0.3)
    assert float(l_sft) == pytest.approx(float(t_sft), rel=1e-4)
    assert float(l_cd) == pytest.approx(float(t_cd), rel=1e-4)
    assert float(loss) == pytest.approx(float(t_sft) + 0.7 * float(t_cd), rel=1e-4)
    np.testing.assert_allclose(seq, expected_seq, atol=2e-3)

    # far-off references: L_CD stays finite (a plain Log(Sigmoid) would give inf) and matches torch
    for shift in (1e4, -1e4):
        feeds["ref_chosen"] = ref_c + np.float32(shift)
        _, _, l_cd, _ = session.run(None, feeds)
        expected = contrastive_distillation_loss(
            c, r, torch.from_numpy(feeds["ref_chosen"]), torch.from_numpy(ref_r), 0.3
        )
        assert math.isfinite(float(l_cd)) and float(l_cd) == pytest.approx(float(expected), rel=1e-4, abs=1e-6)


# ------------------------------------------------- real ORT training (onnxruntime-training)
@pytest.fixture(scope="module")
def artifacts(exported):
    pytest.importorskip("onnxruntime.training")
    from lada_client.training.ort_artifacts import generate_training_artifacts

    generate_training_artifacts(exported["artifacts"])
    return exported


def test_ort_training_matches_torch_and_lowers_the_loss(artifacts, tmp_path):
    from lada_client.training.lora import LoraTrainer
    from lada_client.training.ort_backend import OrtTrainer

    pairs = artifacts["pairs"]
    prompts, chosen = [p for p, _ in pairs[:8]], [c for _, c in pairs[:8]]
    prefs = _preference_pairs(pairs[:8])
    ort_trainer = make_trainer("ort", artifacts_dir=artifacts["artifacts"])
    assert isinstance(ort_trainer, OrtTrainer) and isinstance(ort_trainer, backend.TrainerBackend)
    torch_trainer = LoraTrainer(artifacts["base"])  # same LoRA seed → same initial adapter
    np.testing.assert_array_equal(ort_trainer.adapter_vector(), torch_trainer.adapter_vector())
    np.testing.assert_allclose(
        ort_trainer.sequence_logprobs(prompts, chosen),
        torch_trainer.sequence_logprobs(prompts, chosen).numpy(),
        atol=1e-3,
    )

    settings = DistillSettings(alpha=1.0, beta=0.5, lr=5e-3, epochs=3, batch_size=4)
    private = pairs[20:28]
    o = ort_trainer.train_round(pairs[:8], prefs, private, settings)
    t = torch_trainer.train_round(pairs[:8], prefs, private, settings)
    assert o.steps == t.steps == 12 and o.n_pairs == 8
    sft = [h["sft"] for h in o.history]
    cd = [h["cd"] for h in o.history]
    assert np.mean(sft[-3:]) < sft[0] and np.mean(cd[-3:]) < cd[0] == pytest.approx(math.log(2), abs=1e-4)
    for a, b in zip(o.history, t.history):  # the same steps, step by step
        assert a["sft"] == pytest.approx(b["sft"], rel=1e-4) and a["cd"] == pytest.approx(b["cd"], rel=1e-3, abs=1e-5)
    np.testing.assert_allclose(ort_trainer.adapter_vector(), torch_trainer.adapter_vector(), atol=2e-4)

    # a second round: fresh AdamW on both sides, no pairs (α·L_CD off), private data only
    o2 = ort_trainer.train_round([], [], private, DistillSettings(epochs=2, batch_size=4, lr=5e-3))
    t2 = torch_trainer.train_round([], [], private, DistillSettings(epochs=2, batch_size=4, lr=5e-3))
    assert o2.steps == t2.steps == 4 and math.isnan(o2.cd_loss)
    assert [h["sft"] for h in o2.history] == pytest.approx([h["sft"] for h in t2.history], rel=1e-4)

    # what the ORT backend learned, loaded into torch + peft, scores the same
    torch_trainer.load_adapter_vector(ort_trainer.adapter_vector())
    np.testing.assert_allclose(
        ort_trainer.sequence_logprobs(prompts, chosen),
        torch_trainer.sequence_logprobs(prompts, chosen).numpy(),
        atol=1e-3,
    )
    ours, theirs = ort_trainer.projection_weights(), torch_trainer.projection_weights()
    assert set(ours) == set(theirs)
    assert max(np.abs(ours[k] - theirs[k]).max() for k in ours) < 1e-5
    base = ort_trainer.projection_weights(merged=False)
    assert max(np.abs(base[k] - theirs[k]).max() for k in base) > 1e-4  # the adapter is in the merge


def test_ort_adapter_saves_in_peft_format_and_reloads(artifacts, tmp_path):
    from lada_client.training.lora import LoraTrainer
    from lada_client.training.ort_backend import OrtTrainer

    pairs = artifacts["pairs"]
    trainer = OrtTrainer(artifacts["artifacts"])
    trainer.train_round(pairs[:8], [], [], DistillSettings(epochs=1, batch_size=4, lr=1e-2))
    vector = trainer.adapter_vector()
    trainer.save(tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    np.testing.assert_array_equal(OrtTrainer(artifacts["artifacts"], tmp_path / "adapter").adapter_vector(), vector)
    np.testing.assert_allclose(LoraTrainer(artifacts["base"], tmp_path / "adapter").adapter_vector(), vector, atol=0)
    trainer.save_checkpoint(tmp_path / "ort_checkpoint")
    np.testing.assert_array_equal(
        OrtTrainer(artifacts["artifacts"], checkpoint=tmp_path / "ort_checkpoint").adapter_vector(), vector
    )
    with pytest.raises(ValueError, match="adapter vector has"):
        trainer.load_adapter_vector(vector[:-1])
    with pytest.raises(NotImplementedError, match="swap"):
        trainer.merged_checkpoint(tmp_path / "merged")


def test_ort_backend_trains_without_torch(artifacts, tmp_path):
    """On a device: torch, transformers and peft cannot be imported at all."""
    script = textwrap.dedent(
        f"""
        import json, sys
        for name in ("torch", "transformers", "peft", "optimum"):
            sys.modules[name] = None  # any import of them raises ImportError
        from pathlib import Path
        from lada_client.config import DistillSettings
        from lada_client.training.backend import PreferencePair
        from lada_client.training.trainers import make_trainer
        pairs = json.loads(sys.argv[1])
        trainer = make_trainer("ort", artifacts_dir=Path({str(artifacts["artifacts"])!r}))
        prefs = [PreferencePair(p, c, c + " No.") for p, c in pairs[:4]]
        teacher, private = [tuple(x) for x in pairs[:4]], [tuple(x) for x in pairs[4:8]]
        report = trainer.train_round(teacher, prefs, private, DistillSettings(epochs=2, batch_size=4))
        trainer.save(Path({str(tmp_path / "adapter")!r}))
        loaded = sorted(
            m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("torch", "transformers", "peft")
        )
        weights = len(trainer.projection_weights())
        print(json.dumps({{"steps": report.steps, "history": report.history, "loaded": loaded, "weights": weights}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(artifacts["pairs"][:8])],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["steps"] == 4 and out["loaded"] == [] and out["weights"] == 14
    assert all(math.isfinite(h["sft"]) and math.isfinite(h["cd"]) for h in out["history"])
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
