"""Tests for the EE-Net learnability filter."""

from __future__ import annotations

import io
import json
import math
import struct

import numpy as np
import pytest
import torch

from lada_coordinator.allocation.eenet import FilterConfig, LearnabilityFilter, Selection, within_round_ranks

D = 5


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (continuous data, so no ties to handle)."""
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def _ids(n: int) -> list[str]:
    return [f"x{i}" for i in range(n)]


def _reward_z0(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-3.0 * z[:, 0]))


def _reward_neg_z3(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(3.0 * z[:, 3]))


def _trained(
    config: FilterConfig | None = None,
    reward_fn=_reward_z0,
    rounds: int = 6,
    seed: int = 0,
) -> tuple[LearnabilityFilter, np.random.Generator]:
    """Run the select -> observe -> refit loop on a synthetic bandit. Its reward is the same function
    every round, so credits of different rounds compare as they are: ``credit_scale="raw"``."""
    flt = LearnabilityFilter(D, config or FilterConfig(credit_scale="raw"))
    rng = np.random.default_rng(seed)
    for t in range(1, rounds + 1):
        z = rng.normal(size=(256, D))
        sel = flt.select(z, _ids(256), round_index=t)
        flt.observe(z[sel.indices], reward_fn(z[sel.indices]))
        flt.refit()
    return flt, rng


def _fit_constant(reward: float, config: FilterConfig | None = None) -> LearnabilityFilter:
    flt = LearnabilityFilter(D, config or FilterConfig(threshold_scale="absolute"))
    z = np.random.default_rng(11).normal(size=(512, D))
    flt.observe(z, reward)
    flt.refit()
    return flt


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize("explore_on", ["last_layer", "all"])
@pytest.mark.parametrize("reward_fn", [_reward_z0, _reward_neg_z3])
def test_bandit_beats_random_and_ranks_by_reward(explore_on: str, reward_fn) -> None:
    flt, rng = _trained(FilterConfig(explore_on=explore_on, credit_scale="raw"), reward_fn)
    z = rng.normal(size=(256, D))
    true = reward_fn(z)

    sel = flt.select(z, _ids(256), round_index=7)
    assert sel.reason != "cold_start"
    random_idx = np.random.default_rng(0).choice(256, size=len(sel.indices), replace=False)
    assert true[sel.indices].mean() > true[random_idx].mean() + 0.2

    assert spearman(flt.score(z), true) > 0.5


def _with_weight(flt: LearnabilityFilter, weight: float) -> LearnabilityFilter:
    """Same trained networks, different exploration weight."""
    state = flt.state_dict()
    state["config"] = {**state["config"], "exploration_weight": weight}
    out = LearnabilityFilter(D, FilterConfig.from_dict(state["config"]))
    out.load_state_dict(state)
    return out


def test_score_is_exploit_plus_weighted_explore() -> None:
    flt, _ = _trained(rounds=3)
    z = np.random.default_rng(5).normal(size=(64, D))
    exploit = _with_weight(flt, 0.0).score(z)
    bonus = flt.score(z) - exploit
    assert np.abs(bonus).max() > 0
    np.testing.assert_allclose(_with_weight(flt, 2.5).score(z) - exploit, 2.5 * bonus, atol=1e-5)
    assert np.all((exploit >= 0) & (exploit <= 1))  # sigmoid ExploitNet
    assert np.all(np.abs(bonus) <= 1)  # tanh ExploreNet


@pytest.mark.parametrize("explore_on", ["last_layer", "all"])
def test_explore_net_learns_residual(explore_on: str) -> None:
    # With few epochs ExploitNet underfits a non-monotone reward; ExploreNet, trained on the
    # residual r - f1, must close much of the gap on held-out data.
    flt = LearnabilityFilter(D, FilterConfig(refit_epochs=3, explore_on=explore_on))
    rng = np.random.default_rng(3)
    z = rng.normal(size=(512, D))
    flt.observe(z, np.exp(-(z[:, 0] ** 2)))
    flt.refit()
    z_test = rng.normal(size=(512, D))
    r_test = np.exp(-(z_test[:, 0] ** 2))
    exploit_mse = np.mean((_with_weight(flt, 0.0).score(z_test) - r_test) ** 2)
    combined_mse = np.mean((flt.score(z_test) - r_test) ** 2)
    assert combined_mse < 0.6 * exploit_mse


@pytest.mark.parametrize("explore_on", ["last_layer", "all"])
def test_explore_input_is_per_sample_gradient_of_exploit(explore_on: str) -> None:
    flt, _ = _trained(FilterConfig(explore_on=explore_on), rounds=2)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(6, D)).astype(np.float32))
    out, g = flt._gradients(x)
    net = flt._exploit
    params = [net.fc2.weight, net.fc2.bias]
    if explore_on == "all":
        params = [net.fc1.weight, net.fc1.bias, *params]
    assert g.shape == (6, flt.gradient_dim)
    for i in range(6):
        yi = net(x[i : i + 1]).squeeze()
        expected = torch.cat([p.flatten() for p in torch.autograd.grad(yi, params)])
        torch.testing.assert_close(out[i], yi.detach())
        torch.testing.assert_close(g[i], expected)


# --------------------------------------------------------------------------- selection rules


def test_cold_start_covers_every_cluster() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, D)) * 10.0
    labels = np.arange(200) % 4
    z = centers[labels] + rng.normal(scale=0.3, size=(200, D))
    flt = LearnabilityFilter(D, FilterConfig(budget=4))
    sel = flt.select(z, _ids(200), round_index=1)
    assert sel.reason == "cold_start"
    assert sorted(labels[sel.indices].tolist()) == [0, 1, 2, 3]
    assert sel.sample_ids == [f"x{i}" for i in sel.indices]
    assert sel.scores.shape == (4,)


def test_cold_start_until_first_refit() -> None:
    flt = LearnabilityFilter(D, FilterConfig(budget=32))
    z = np.random.default_rng(0).normal(size=(256, D))
    assert len(flt.select(z, _ids(256), 1).sample_ids) == 32
    flt.observe(z[:32], 0.3)
    assert flt.select(z, _ids(256), 1).reason == "cold_start"  # observed but not yet fitted
    assert flt.select(z[:10], _ids(10), 1).indices.tolist() == list(range(10))
    flt.refit()
    assert flt.has_history
    assert flt.select(z, _ids(256), 2).reason != "cold_start"


def test_many_passing_are_capped_at_budget() -> None:
    flt = _fit_constant(1.0)
    z = np.random.default_rng(1).normal(size=(256, D))
    scores = flt.score(z)
    assert (scores > 0.5).sum() > 32
    sel = flt.select(z, _ids(256), round_index=2)
    assert sel.reason == "cap"
    assert len(sel.sample_ids) == 32
    np.testing.assert_array_equal(np.sort(sel.scores)[::-1], np.sort(scores)[::-1][:32])


def test_none_passing_are_floored() -> None:
    flt = _fit_constant(0.0)
    z = np.random.default_rng(1).normal(size=(256, D))
    scores = flt.score(z)
    assert (scores > 0.5).sum() == 0
    sel = flt.select(z, _ids(256), round_index=2)
    assert sel.reason == "floor"
    assert len(sel.sample_ids) == math.ceil(32 * 0.25) == 8
    np.testing.assert_array_equal(sel.indices, np.argsort(-scores, kind="stable")[:8])


def test_threshold_on_the_reward_scale() -> None:
    """With rewards far below 0.5, the default threshold follows the largest reward seen, so a
    filter that predicts its usual reward selects up to the budget instead of falling to the floor."""
    z = np.random.default_rng(1).normal(size=(256, D))
    relative = _fit_constant(0.2, FilterConfig())
    absolute = _fit_constant(0.2, FilterConfig(threshold_scale="absolute"))
    assert relative.effective_threshold == pytest.approx(0.5 * 0.2)
    assert absolute.effective_threshold == 0.5
    assert relative.select(z, _ids(256), round_index=2).reason == "cap"
    assert absolute.select(z, _ids(256), round_index=2).reason == "floor"


def _with_scores(monkeypatch: pytest.MonkeyPatch, scores: np.ndarray) -> LearnabilityFilter:
    flt = _fit_constant(0.5, FilterConfig(budget=10, floor_fraction=0.3, threshold_scale="absolute"))
    monkeypatch.setattr(flt, "score", lambda z: scores.copy())
    return flt


def test_threshold_rule_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = np.linspace(0.0, 0.99, 100)[np.random.default_rng(0).permutation(100)]
    scores[scores > 0.5] -= 0.5  # nothing above the threshold yet
    top = [3, 50, 71, 90, 12]
    scores[top] = [0.9, 0.8, 0.7, 0.6, 0.51]
    flt = _with_scores(monkeypatch, scores)
    sel = flt.select(np.zeros((100, D)), _ids(100), round_index=3)
    assert isinstance(sel, Selection)
    assert sel.reason == "threshold"
    assert sel.indices.tolist() == top  # highest score first
    assert sel.sample_ids == [f"x{i}" for i in top]
    np.testing.assert_array_equal(sel.scores, scores[top])


def test_floor_fills_by_top_score(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = np.full(100, 0.1)
    scores[7] = 0.9
    scores[[20, 30, 40]] = [0.45, 0.4, 0.35]
    flt = _with_scores(monkeypatch, scores)
    sel = flt.select(np.zeros((100, D)), _ids(100), round_index=3)
    assert sel.reason == "floor"
    assert sel.indices.tolist() == [7, 20, 30]  # floor = ceil(10 * 0.3) = 3


def test_cap_keeps_top_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = np.linspace(0.6, 0.95, 30)
    flt = _with_scores(monkeypatch, scores)
    sel = flt.select(np.zeros((30, D)), _ids(30), round_index=3)
    assert sel.reason == "cap"
    assert sel.indices.tolist() == list(range(29, 19, -1))


def test_floor_never_exceeds_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    flt = _with_scores(monkeypatch, np.array([0.1, 0.2]))
    sel = flt.select(np.zeros((2, D)), ["a", "b"], round_index=3)
    assert sel.reason == "floor"
    assert sel.sample_ids == ["b", "a"]


def test_coverage_spreads_part_of_the_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The best scores are all in one corner of feature space; coverage gives part of the budget
    to k-means representatives of the rest, so the selection reaches the other corner too."""
    from lada_coordinator.allocation.cold_start import kmeans_representatives

    rng = np.random.default_rng(4)
    z = np.concatenate([rng.normal(0.0, 0.1, size=(50, D)), rng.normal(5.0, 0.1, size=(50, D))])
    scores = np.concatenate([np.linspace(0.9, 0.6, 50), np.linspace(0.59, 0.55, 50)])
    flt = _fit_constant(0.5, FilterConfig(budget=10, threshold_scale="absolute", coverage_fraction=0.4))
    monkeypatch.setattr(flt, "score", lambda z: scores.copy())
    sel = flt.select(z, _ids(100), round_index=3)
    assert sel.reason == "cap" and len(sel.indices) == 10 == len(set(sel.indices.tolist()))
    assert sel.indices[:6].tolist() == list(range(6))  # the best scores first, as without coverage
    rest = np.arange(6, 100)
    assert sel.indices[6:].tolist() == rest[kmeans_representatives(z[rest], 4, seed=0 + 3)].tolist()
    assert (sel.indices[6:] >= 50).any()  # the other corner, which no top-10 score reaches
    np.testing.assert_array_equal(sel.scores, scores[sel.indices])

    monkeypatch.setattr(flt, "config", FilterConfig(budget=10, threshold_scale="absolute"))
    assert flt.select(z, _ids(100), round_index=3).indices.tolist() == list(range(10))  # coverage 0: by score


def test_coverage_of_a_selection_of_the_whole_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = np.array([0.1, 0.9, 0.5])
    flt = _fit_constant(0.5, FilterConfig(budget=10, threshold_scale="absolute", coverage_fraction=1.0))
    monkeypatch.setattr(flt, "score", lambda z: scores.copy())
    assert flt.select(np.zeros((3, D)), _ids(3), round_index=1).indices.tolist() == [1, 2, 0]


@pytest.mark.parametrize(
    ("take", "fraction", "spread"), [(16, 0.25, 4), (3, 0.5, 2), (10, 0.0, 0), (7, 1.0, 7), (10, 0.3, 3)]
)
def test_coverage_size(take: int, fraction: float, spread: int) -> None:
    assert FilterConfig(coverage_fraction=fraction).coverage(take) == spread


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5"])
def test_coverage_fraction_is_a_fraction(bad: object) -> None:
    with pytest.raises(ValueError, match="coverage_fraction"):
        FilterConfig(coverage_fraction=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- buffer, state


@pytest.mark.parametrize(
    ("budget", "fraction", "floor"),
    [(32, 0.25, 8), (10, 0.3, 3), (3, 0.1, 1), (7, 0.0, 0), (5, 1.0, 5)],
)
def test_floor_size(budget: int, fraction: float, floor: int) -> None:
    assert FilterConfig(budget=budget, floor_fraction=fraction).floor == floor


def test_replay_buffer_is_bounded_fifo() -> None:
    flt = LearnabilityFilter(D, FilterConfig(replay_capacity=10))
    z = np.arange(15 * D, dtype=np.float64).reshape(15, D)
    flt.observe(z[:8], 0.2)
    flt.observe(z[8:], np.linspace(0, 1, 7))
    state = flt.state_dict()
    assert flt.replay_size == 10
    np.testing.assert_array_equal(state["buffer_z"], z[5:].astype(np.float32))
    np.testing.assert_allclose(state["buffer_r"][:3], 0.2)


def test_within_round_ranks() -> None:
    assert within_round_ranks(np.array([0.9, 0.1, 0.5])).tolist() == [1.0, 0.0, 0.5]
    assert within_round_ranks(np.array([0.2, 0.2, 0.8])).tolist() == [0.25, 0.25, 1.0]  # ties: mean rank
    assert within_round_ranks(np.array([0.7])).tolist() == [0.5]
    assert within_round_ranks(np.array([0.3, 0.3])).tolist() == [0.5, 0.5]


@pytest.mark.parametrize("scale", ["round_rank", "raw"])
def test_per_sample_credits_are_kept_as_the_config_says(scale: str) -> None:
    flt = LearnabilityFilter(D, FilterConfig(credit_scale=scale))
    z = np.random.default_rng(3).normal(size=(4, D))
    flt.observe(z[:2], 0.3)  # a common reward is kept as it is, whatever the scale
    flt.observe(z, [0.2, 0.9, 0.4, 0.1])
    expected = [0.3, 0.3] + ([1 / 3, 1.0, 2 / 3, 0.0] if scale == "round_rank" else [0.2, 0.9, 0.4, 0.1])
    np.testing.assert_allclose(flt.state_dict()["buffer_r"], expected, rtol=1e-6)


def _family_rounds(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two rounds of (features, credits): feature 0 marks the client's own family. Round 1 (an
    untrained SLM) credits own 0.9 and others 0.6; round 2 (the SLM has learnt its family, most of
    the allocation is own) credits own 0.45 and others 0.35 - own is the better half both times."""
    rounds = []
    for n_own, n_other, own, other in ((4, 12, 0.9, 0.6), (15, 1, 0.45, 0.35)):
        marks = np.r_[np.ones(n_own), np.zeros(n_other)]
        z = np.c_[marks, rng.normal(size=(n_own + n_other, D - 1))]
        rounds.append((z, np.r_[np.full(n_own, own), np.full(n_other, other)] + rng.normal(0, 0.01, n_own + n_other)))
    return rounds


@pytest.mark.parametrize(("scale", "prefers_own"), [("round_rank", True), ("raw", False)])
def test_round_ranks_keep_the_own_family_once_it_is_learnt(scale: str, prefers_own: bool) -> None:
    rng = np.random.default_rng(5)
    flt = LearnabilityFilter(D, FilterConfig(credit_scale=scale, exploration_weight=0.0))
    for z, credits in _family_rounds(rng):
        flt.observe(z, credits)
        flt.refit()
    own, other = (np.c_[np.full(64, mark), rng.normal(size=(64, D - 1))] for mark in (1.0, 0.0))
    assert bool(flt.score(own).mean() > flt.score(other).mean()) is prefers_own


def test_refit_on_empty_buffer_is_a_noop() -> None:
    flt = LearnabilityFilter(D)
    losses = flt.refit()
    assert losses["n_samples"] == 0 and math.isnan(losses["exploit_loss"])
    assert not flt.has_history


def test_refit_reports_losses() -> None:
    flt, _ = _trained(rounds=2)
    losses = flt.refit()
    assert set(losses) == {"exploit_loss", "explore_loss", "n_samples"}
    assert losses["n_samples"] == 64
    assert 0 <= losses["exploit_loss"] < 0.1


@pytest.mark.parametrize("explore_on", ["last_layer", "all"])
def test_bytes_round_trip_is_exact_and_continues_identically(explore_on: str) -> None:
    flt, rng = _trained(FilterConfig(explore_on=explore_on), rounds=2)
    z = rng.normal(size=(256, D))
    clone = LearnabilityFilter.from_bytes(flt.to_bytes())
    np.testing.assert_array_equal(clone.score(z), flt.score(z))
    assert clone.fit_count == flt.fit_count and clone.replay_size == flt.replay_size

    for f in (flt, clone):
        sel = f.select(z, _ids(256), round_index=3)
        f.observe(z[sel.indices], 0.4)
        f.refit()
    np.testing.assert_array_equal(clone.score(z), flt.score(z))


def test_state_dict_round_trip_into_fresh_filter() -> None:
    flt, rng = _trained(rounds=2)
    fresh = LearnabilityFilter(D, flt.config)
    fresh.load_state_dict(flt.state_dict())
    z = rng.normal(size=(32, D))
    np.testing.assert_array_equal(fresh.score(z), flt.score(z))


def test_bytes_need_no_pickle() -> None:
    """A JSON header and one float32 buffer: nothing to unpickle, one decode per filter."""
    flt, _ = _trained(rounds=1)
    blob = flt.to_bytes()
    magic = b"LADAEEN2"
    assert blob.startswith(magic)
    (size,) = struct.unpack_from("<I", blob, len(magic))
    header = json.loads(blob[len(magic) + 4 : len(magic) + 4 + size])
    n_floats = sum(math.prod(shape) for _, shape in header["arrays"])
    assert len(blob) == len(magic) + 4 + size + 4 * n_floats
    with pytest.raises(ValueError, match="sizes"):
        LearnabilityFilter.from_bytes(blob[:-4])


def test_bytes_of_the_npz_layout_still_load() -> None:
    """Filters saved by the first format (an np.savez archive) load into the same filter."""
    flt, rng = _trained(rounds=2)
    state = flt.state_dict()
    meta = {k: state[k] for k in ("format_version", "n_features", "config", "fit_count")}
    arrays = {"__meta__": np.asarray(json.dumps(meta, sort_keys=True))}
    arrays.update({k: state[k] for k in ("scaler_mean", "scaler_std", "buffer_z", "buffer_r")})
    for prefix in ("exploit", "explore"):
        arrays.update({f"{prefix}.{name}": value for name, value in state[prefix].items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    old = LearnabilityFilter.from_bytes(buf.getvalue())
    z = rng.normal(size=(64, D))
    np.testing.assert_array_equal(old.score(z), flt.score(z))
    assert old.fit_count == flt.fit_count and old.replay_size == flt.replay_size


def test_deterministic_given_seed_and_seed_matters() -> None:
    z = np.random.default_rng(9).normal(size=(64, D))
    a, _ = _trained(FilterConfig(seed=3), rounds=2)
    b, _ = _trained(FilterConfig(seed=3), rounds=2)
    c, _ = _trained(FilterConfig(seed=4), rounds=2)
    np.testing.assert_array_equal(a.score(z), b.score(z))
    assert not np.array_equal(a.score(z), c.score(z))


def test_global_rngs_untouched() -> None:
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    _trained(rounds=2)
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)


def test_standardisation_statistics_come_from_replay_buffer() -> None:
    flt = LearnabilityFilter(D)
    raw = np.random.default_rng(2).normal(size=(300, D)) * [3, 1, 0.1, 100, 1] + [5, 2, 0, 250, 0]
    flt.observe(raw, 0.5)
    flt.refit()
    state = flt.state_dict()
    np.testing.assert_allclose(state["scaler_mean"], raw.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(state["scaler_std"], raw.std(axis=0), rtol=1e-4)


def test_standardisation_handles_raw_feature_scales() -> None:
    # Raw features like NLL (~1-10) and path length (~50-500) next to each other.
    rng = np.random.default_rng(0)
    scale = np.array([3.0, 1.0, 0.1, 100.0, 1.0])
    offset = np.array([5.0, 2.0, 0.0, 250.0, 0.5])

    def reward(raw: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-3.0 * (raw[:, 3] - 250.0) / 100.0))

    flt = LearnabilityFilter(D)
    for t in range(1, 5):
        raw = rng.normal(size=(256, D)) * scale + offset
        sel = flt.select(raw, _ids(256), t)
        flt.observe(raw[sel.indices], reward(raw[sel.indices]))
        flt.refit()
    raw = rng.normal(size=(256, D)) * scale + offset
    assert spearman(flt.score(raw), reward(raw)) > 0.5


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def flt() -> LearnabilityFilter:
    return LearnabilityFilter(D)


@pytest.mark.parametrize(
    "z",
    [
        np.zeros((4, D + 1)),
        np.zeros((4, D, 1)),
        np.array([[np.nan] * D]),
        np.array([[np.inf] + [0.0] * (D - 1)]),
        np.array([["a"] * D]),
        np.array([[1e39] + [0.0] * (D - 1)]),
    ],
)
def test_bad_features_raise(flt: LearnabilityFilter, z: np.ndarray) -> None:
    with pytest.raises(ValueError):
        flt.score(z)
    with pytest.raises(ValueError):
        flt.select(z, _ids(len(z)), 1)
    with pytest.raises(ValueError):
        flt.observe(z, 0.5)


@pytest.mark.parametrize("reward", [1.5, -0.1, float("nan"), float("inf"), [0.2, 0.3]])
def test_bad_reward_raises(flt: LearnabilityFilter, reward) -> None:
    with pytest.raises(ValueError, match="reward"):
        flt.observe(np.zeros((3, D)), reward)
    assert flt.replay_size == 0


def test_bad_selection_arguments_raise(flt: LearnabilityFilter) -> None:
    z = np.zeros((3, D))
    with pytest.raises(ValueError, match="sample_ids"):
        flt.select(z, ["a", "b"], 1)
    with pytest.raises(ValueError, match="duplicates"):
        flt.select(z, ["a", "a", "b"], 1)
    with pytest.raises(ValueError, match="round_index"):
        flt.select(z, ["a", "b", "c"], -1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"exploration_weight": -1.0},
        {"exploration_weight": float("nan")},
        {"threshold": float("inf")},
        {"budget": 0},
        {"budget": 2.5},
        {"floor_fraction": 1.5},
        {"hidden": 0},
        {"refit_epochs": 0},
        {"lr": 0.0},
        {"replay_capacity": 0},
        {"batch_size": True},
        {"seed": -1},
        {"explore_on": "first_layer"},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="FilterConfig"):
        FilterConfig(**kwargs)


def test_corrupt_or_mismatched_state_raises(flt: LearnabilityFilter) -> None:
    with pytest.raises(ValueError):
        LearnabilityFilter.from_bytes(b"not a filter")
    with pytest.raises(ValueError, match="features"):
        LearnabilityFilter(D + 1).load_state_dict(flt.state_dict())
    state = flt.state_dict()
    state["exploit"]["fc1.weight"] = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        LearnabilityFilter(D).load_state_dict(state)
    with pytest.raises(ValueError, match="n_features"):
        LearnabilityFilter(0)
