"""The LoRA step on a real tiny SLM: adapters learn, save/load symmetrically, base stays intact."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lada_client.common.reasoning import format_prompt, format_target  # noqa: E402
from lada_client.config import ComputeSettings, ConfigError, DistillSettings  # noqa: E402
from lada_client.data.federation import load_client  # noqa: E402
from lada_client.training.lora import LoraTrainer, PreferencePair, placement  # noqa: E402


def test_lora_round_raises_chosen_over_rejected_and_round_trips(tiny_world, tmp_path):
    data = load_client(tiny_world["data"], "client1")
    samples = data.train[:8]
    prompts = [format_prompt(s.question) for s in samples]
    chosen = [format_target(s.rationale) for s in samples]
    rejected = [format_target(s.rationale.replace("The answer is", "So it is 0. The answer is 0 and")) for s in samples]
    trainer = LoraTrainer(tiny_world["client1"] / "base")
    before_c = trainer.sequence_logprobs(prompts, chosen)
    before_r = trainer.sequence_logprobs(prompts, rejected)
    settings = DistillSettings(alpha=1.0, beta=0.5, lr=5e-3, epochs=6, batch_size=8)
    report = trainer.train_round(
        list(zip(prompts, chosen)),
        [PreferencePair(p, c, r) for p, c, r in zip(prompts, chosen, rejected)],
        [],
        settings,
    )
    assert report.steps == 6 and report.n_pairs == 8
    after_c = trainer.sequence_logprobs(prompts, chosen)
    after_r = trainer.sequence_logprobs(prompts, rejected)
    assert ((after_c - before_c) - (after_r - before_r)).mean() > 0

    trainer.save(tmp_path / "adapter")
    reloaded = LoraTrainer(tiny_world["client1"] / "base", tmp_path / "adapter")
    torch.testing.assert_close(reloaded.sequence_logprobs(prompts, chosen), after_c)
    fresh = LoraTrainer(tiny_world["client1"] / "base")  # base checkpoint untouched by training
    torch.testing.assert_close(fresh.sequence_logprobs(prompts, chosen), before_c)


def test_gradient_alignment_credits_samples_that_teach_the_reference(tiny_world):
    """A sample equal to the reference set's items aligns with its gradient; a sample of another
    domain aligns less; the weights are left as they were."""
    own = load_client(tiny_world["data"], "client0")
    other = load_client(tiny_world["data"], "client2")
    pair = lambda s: (format_prompt(s.question), format_target(s.rationale))  # noqa: E731
    trainer = LoraTrainer(tiny_world["client0"] / "base")
    trainer.load_adapter_vector(
        trainer.adapter_vector() + 0.01
    )  # off the zero init of lora_B: gradients reach both factors
    before = trainer.adapter_vector()
    reference = [pair(s) for s in own.train[:6]]
    cos = trainer.gradient_alignment(
        [reference[0], *(pair(s) for s in own.train[6:10]), *(pair(s) for s in other.train[:5])], reference
    )
    assert cos.shape == (10,) and ((-1 <= cos) & (cos <= 1)).all()
    assert cos[0] > 0.2 and cos[0] == cos.max()
    assert cos[1:5].mean() > cos[5:].mean()
    assert (trainer.adapter_vector() == before).all()
    assert trainer.gradient_alignment([], reference).shape == (0,)


def test_per_sample_gradients_from_one_batch_equal_one_backward_per_sample(tiny_world):
    """The hooked batched computation gives each sample's own gradient, as a pass per sample does."""
    from lada_client.training.losses import sft_loss, token_logprobs

    data = load_client(tiny_world["data"], "client1")
    pairs = [(format_prompt(s.question), format_target(s.rationale)) for s in data.train[:5]]
    trainer = LoraTrainer(tiny_world["client1"] / "base")
    trainer.load_adapter_vector(trainer.adapter_vector() + 0.02)
    reference = [(format_prompt(s.question), format_target(s.rationale)) for s in data.train[5:9]]
    fast = trainer.gradient_alignment(pairs, reference, batch_size=8)
    params = trainer._lora_parameters()
    ids, mask, cmask = trainer._batch([p for p, _ in reference], [c for _, c in reference], 256)
    ref = torch.cat(
        [
            g.reshape(-1)
            for g in torch.autograd.grad(sft_loss(token_logprobs(trainer.model, ids, mask, cmask), cmask), params)
        ]
    )
    slow = []
    for pair in pairs:
        ids, mask, cmask = trainer._batch([pair[0]], [pair[1]], 256)
        g = torch.cat(
            [
                x.reshape(-1)
                for x in torch.autograd.grad(sft_loss(token_logprobs(trainer.model, ids, mask, cmask), cmask), params)
            ]
        )
        slow.append(float(g @ ref / (g.norm() * ref.norm())))
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(slow, dtype=torch.float64), atol=1e-5, rtol=1e-4)


def test_micro_batches_change_memory_not_the_step(tiny_world):
    """Gradient accumulation over micro-batches (L_SFT and L_CD) gives the full batch's update."""
    data = load_client(tiny_world["data"], "client1")
    samples = data.train[:8]
    prompts = [format_prompt(s.question) for s in samples]
    chosen = [format_target(s.rationale) for s in samples]
    rejected = [format_target(s.rationale.replace("The answer is", "So it is 1. The answer is")) for s in samples]
    pairs = [PreferencePair(p, c, r) for p, c, r in zip(prompts, chosen, rejected)]
    vectors = []
    for micro in (8, 3, 1):
        trainer = LoraTrainer(tiny_world["client1"] / "base")
        settings = DistillSettings(alpha=1.0, lr=5e-3, epochs=1, batch_size=8, micro_batch_size=micro)
        trainer.train_round(list(zip(prompts, chosen)), pairs, [], settings)
        vectors.append(torch.from_numpy(trainer.adapter_vector()))
    assert (vectors[0] != torch.from_numpy(LoraTrainer(tiny_world["client1"] / "base").adapter_vector())).any()
    for other in vectors[1:]:
        torch.testing.assert_close(other, vectors[0], atol=1e-5, rtol=1e-4)


def test_bfloat16_base_trains_a_float32_adapter_and_hands_out_float32(tiny_world, tmp_path):
    """What a GPU coordinator runs by default (bfloat16 base weights), on the CPU: the adapter stays
    float32, learns, and saves to an adapter a float32 trainer loads unchanged."""
    data = load_client(tiny_world["data"], "client1")
    samples = data.train[:8]
    pairs = [(format_prompt(s.question), format_target(s.rationale)) for s in samples]
    trainer = LoraTrainer(tiny_world["client1"] / "base", compute=ComputeSettings(device="cpu", dtype="bfloat16"))
    assert (trainer.device.type, trainer.dtype) == ("cpu", torch.bfloat16)
    lora = {n: p.dtype for n, p in trainer.model.named_parameters() if "lora_" in n}
    base = {n: p.dtype for n, p in trainer.model.named_parameters() if "lora_" not in n}
    assert lora and set(lora.values()) == {torch.float32} and set(base.values()) == {torch.bfloat16}
    prompts, targets = [p for p, _ in pairs], [t for _, t in pairs]
    before = trainer.sequence_logprobs(prompts, targets)
    assert before.dtype == torch.float32 and before.device.type == "cpu"
    report = trainer.train_round(pairs, [], [], DistillSettings(lr=5e-3, epochs=4, batch_size=8))
    assert report.steps == 4
    assert trainer.sequence_logprobs(prompts, targets).mean() > before.mean()
    assert trainer.adapter_vector().dtype == "float64" and trainer.lora_factors()
    assert trainer.gradient_alignment(pairs[:2], pairs[2:4]).shape == (2,)

    trainer.save(tmp_path / "adapter")
    float32 = ComputeSettings(dtype="float32")
    reloaded = LoraTrainer(tiny_world["client1"] / "base", tmp_path / "adapter", compute=float32)
    assert reloaded.dtype == torch.float32
    assert (reloaded.adapter_vector() == trainer.adapter_vector()).all()


def test_placement_says_what_this_machine_lacks():
    assert placement(ComputeSettings(device="cpu", dtype="auto")) == (torch.device("cpu"), torch.float32)
    if not torch.cuda.is_available():
        assert placement(ComputeSettings()) == (torch.device("cpu"), torch.float32)
        with pytest.raises(ValueError, match="sees 0 CUDA device"):
            placement(ComputeSettings(device="cuda:1"))
    with pytest.raises(ConfigError, match="device"):
        ComputeSettings(device="gpu")
