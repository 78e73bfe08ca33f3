"""Tests that fail if the distillation objective is wrong."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lada_client.scoring.reward import relative_drop  # noqa: E402
from lada_client.training.losses import contrastive_distillation_loss, sequence_logprob, sft_loss, token_logprobs  # noqa: E402


def test_cd_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([-10.0, -12.0], requires_grad=True)
    rejected = torch.tensor([-9.0, -8.0], requires_grad=True)
    ref_c, ref_r = torch.tensor([-10.0, -12.0]), torch.tensor([-9.0, -8.0])
    loss = contrastive_distillation_loss(chosen, rejected, ref_c, ref_r, beta=0.1)
    loss.backward()
    # gradient descent moves along -grad: chosen log-prob must go up, rejected down
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())  # margin 0 at π = π_ref


def test_cd_loss_falls_as_margin_grows_and_beta_scales_it():
    ref = torch.zeros(1)
    small = contrastive_distillation_loss(torch.tensor([1.0]), torch.tensor([0.0]), ref, ref, beta=0.1)
    large = contrastive_distillation_loss(torch.tensor([5.0]), torch.tensor([0.0]), ref, ref, beta=0.1)
    sharper = contrastive_distillation_loss(torch.tensor([5.0]), torch.tensor([0.0]), ref, ref, beta=1.0)
    assert large < small and sharper < large


def test_reference_cancels_a_prior_preference():
    """What counts is the change relative to π_ref, not the absolute log-probs."""
    a = contrastive_distillation_loss(
        torch.tensor([-5.0]), torch.tensor([-1.0]), torch.tensor([-5.0]), torch.tensor([-1.0]), 0.1
    )
    assert a.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_sequence_logprob_and_sft_use_only_completion_tokens():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    assert sequence_logprob(lp, mask).tolist() == [-5.0, -6.0]
    assert sft_loss(lp, mask).item() == pytest.approx((2 + 3 + 6) / 3)


def test_reward_sign():
    assert relative_drop(10.0, 8.0) == pytest.approx(0.2)
    assert relative_drop(10.0, 12.0) == 0.0  # got worse: no reward, never negative
    assert relative_drop(10.0, 0.0) == 1.0
    with pytest.raises(ValueError):
        relative_drop(0.0, 1.0)


def test_path_weights_give_summed_or_mean_token_logprobs():
    import numpy as np

    from lada_client.training.backend import path_weights

    lp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    mask = np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    assert sequence_logprob(lp, torch.from_numpy(path_weights(mask, "sum"))).tolist() == [-5.0, -6.0]
    assert sequence_logprob(lp, torch.from_numpy(path_weights(mask, "mean"))).tolist() == [-2.5, -6.0]
    assert path_weights(np.zeros((1, 3), dtype=np.float32), "mean").tolist() == [[0.0, 0.0, 0.0]]  # no NaN
    with pytest.raises(ValueError, match="mean"):
        path_weights(mask, "max")


def test_beta_default_follows_the_path_score():
    from lada_client.config import DistillSettings

    assert DistillSettings().cd_logprob == "mean" and DistillSettings().cd_beta == 1.0
    assert DistillSettings(cd_logprob="sum").cd_beta == 0.1  # the method's β for joint log-probs
    assert DistillSettings(cd_logprob="sum", beta=0.3).cd_beta == 0.3
    with pytest.raises(ValueError, match="cd_logprob"):
        DistillSettings(cd_logprob="max")
    with pytest.raises(ValueError, match="beta"):
        DistillSettings(beta=0.0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_token_logprobs_of_a_padded_batch_equal_each_row_alone(side):
    """The hand-built causal + padding bias must mask exactly like an unpadded forward."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lada_client.training.losses import token_logprobs

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    ).eval()
    rows = [torch.randint(1, 40, (n,)) for n in (9, 5, 2)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[b, sl], mask[b, sl] = r, 1
    with torch.no_grad():
        batch = token_logprobs(model, ids, mask)
        for b, r in enumerate(rows):
            alone = token_logprobs(model, r[None], torch.ones(1, len(r), dtype=torch.long))[0]
            got = batch[b, : len(r) - 1] if side == "right" else batch[b, width - len(r) :]
            assert torch.isfinite(batch[b]).all()
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)


def test_token_logprobs_at_the_needed_positions_equal_the_full_computation(tiny_world):
    """The LM head on completion positions only gives the same log-probs there (and gradients)."""
    from lada_client.models.checkpoint import load_causal_lm
    from lada_client.models.encoding import encode_pairs

    model, tok = load_causal_lm(tiny_world["client0"] / "base")
    enc = encode_pairs(
        tok, ["Q: 1+1?\nA:", "Q: what is 12 - 5?\nA:"], [" 1 + 1 = 2. The answer is 2.", " The answer is 7."], 64
    )
    ids, mask, cmask = (torch.from_numpy(a) for a in (enc.input_ids, enc.attention_mask, enc.completion_mask))
    full = token_logprobs(model, ids, mask)
    part = token_logprobs(model, ids, mask, cmask)
    torch.testing.assert_close(part[cmask > 0], full[cmask > 0], atol=1e-5, rtol=1e-5)
    assert (part[cmask == 0] == 0).all()
    (g_full,) = torch.autograd.grad(sft_loss(full, cmask), [next(model.parameters())])
    (g_part,) = torch.autograd.grad(sft_loss(part, cmask), [next(model.parameters())])
    torch.testing.assert_close(g_part, g_full, atol=1e-6, rtol=1e-4)
