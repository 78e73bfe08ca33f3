"""Batched selection (``select_many``, ``Allocator.allocate_many``) against one ``select`` per filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lada_coordinator.allocation import batched, eenet
from lada_coordinator.allocation.batched import refit_many, select_many
from lada_coordinator.allocation.eenet import FilterConfig, LearnabilityFilter

TOL = 1e-5  # scores: the batched products add in another order (float32; measured ~2e-7)

CONFIGS = [
    FilterConfig(budget=16, seed=3),
    FilterConfig(budget=8, explore_on="all", exploration_weight=0.3, seed=1),
    FilterConfig(budget=24, threshold=0.2, threshold_scale="absolute", floor_fraction=0.5),
]


def _features(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return rng.normal(size=(n, d)) * rng.uniform(0.5, 20.0, d) + rng.normal(size=d) * 5.0


def _trained(config: FilterConfig, d: int, seed: int, rounds: int = 1) -> LearnabilityFilter:
    flt = LearnabilityFilter(d, config)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        rows = int(rng.integers(4, 90))
        flt.observe(_features(rng, rows, d), rng.uniform(0.0, rng.uniform(0.05, 1.0), rows))
    refit_many([flt])
    return flt


def _requests(seed: int) -> list[tuple[LearnabilityFilter, np.ndarray, list[str]]]:
    """Filters with and without history, of three configs, two widths and three pool sizes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(36):
        config, d, n = CONFIGS[i % 3], (5, 3)[i % 2], (256, 100, 40)[i % 4 % 3]
        flt = _trained(config, d, seed=1000 * seed + i, rounds=1 + i % 2) if i % 5 else LearnabilityFilter(d, config)
        out.append((flt, _features(rng, n, d), [f"s{i}-{j}" for j in range(n)]))
    return out


def assert_same_selection(got: object, expected: eenet.Selection) -> None:
    """``select``'s selection: the same reason and candidates; the same order too, except that two
    candidates whose scores are equal (within TOL) may come in either order (the batched scores
    differ by float32 rounding, and ``select`` orders by score)."""
    assert isinstance(got, eenet.Selection)
    assert got.reason == expected.reason
    if expected.reason == "cold_start":  # k-means: the very same indices
        assert got.sample_ids == expected.sample_ids
        np.testing.assert_array_equal(got.indices, expected.indices)
        assert np.isnan(got.scores).all() and got.scores.shape == expected.scores.shape
        return
    assert set(got.sample_ids) == set(expected.sample_ids)
    by_id = dict(zip(expected.sample_ids, expected.scores))
    in_got_order = np.array([by_id[i] for i in got.sample_ids])
    assert (np.diff(in_got_order) <= TOL).all()  # by score, highest first
    np.testing.assert_allclose(got.scores, in_got_order, rtol=0, atol=TOL)
    assert [got.sample_ids[k] for k in np.argsort(got.indices)] == [
        expected.sample_ids[k] for k in np.argsort(expected.indices)
    ]


def _blob_copies(requests):
    return [(LearnabilityFilter.from_bytes(f.to_bytes()), z, ids) for f, z, ids in requests]


@pytest.mark.parametrize("seed", [0, 1])
def test_select_many_makes_selects_selections(seed: int) -> None:
    requests = _requests(seed)
    batched = select_many(_blob_copies(requests), round_index=4)
    assert len(batched) == len(requests)
    for (flt, z, ids), got in zip(requests, batched):
        assert_same_selection(got, flt.select(z, ids, round_index=4))


def test_batched_scores_equal_score_and_build_no_network() -> None:
    requests = [r for r in _requests(2) if r[0].has_history]
    for config in CONFIGS:
        for d in (5, 3):
            group = [(f, z) for f, z, _ in requests if f.config == config and f.n_features == d and z.shape[0] == 100]
            if not group:
                continue
            unbuilt = [LearnabilityFilter.from_bytes(f.to_bytes()) for f, _ in group]
            z = np.stack([z.astype(np.float32) for _, z in group])
            got = batched._score_many(unbuilt, z)
            assert all(f._nets is None for f in unbuilt)  # scored from the saved arrays
            for (flt, rows), scores in zip(group, got):
                np.testing.assert_allclose(scores, flt.score(rows), rtol=0, atol=TOL)
            np.testing.assert_allclose(batched._score_many([f for f, _ in group], z), got, rtol=0, atol=TOL)


def test_coverage_as_select() -> None:
    """With coverage, a batched selection holds the same candidates as ``select``'s (the k-means
    part is computed per filter from the same rows)."""
    config = FilterConfig(budget=12, coverage_fraction=0.5, seed=2)
    flts = [_trained(config, 4, seed=s) for s in range(6)]
    rng = np.random.default_rng(3)
    requests = [(f, _features(rng, 80, 4), [f"c{j}" for j in range(80)]) for f in flts]
    for (flt, z, ids), got in zip(requests, select_many(_blob_copies(requests), round_index=5)):
        expected = flt.select(z, ids, round_index=5)
        assert isinstance(got, eenet.Selection) and got.reason == expected.reason
        assert set(got.sample_ids) == set(expected.sample_ids)
        assert len(got.sample_ids) == len(expected.sample_ids) > config.coverage(len(expected.sample_ids)) > 0


@pytest.mark.parametrize(("threshold", "reason"), [(-1.0, "cap"), (0.5, "threshold"), (2.0, "floor")])
def test_threshold_cap_and_floor_as_select(threshold: float, reason: str) -> None:
    config = FilterConfig(budget=40, threshold=threshold, threshold_scale="absolute", floor_fraction=0.25)
    flts = [_trained(config, 4, seed=s) for s in range(12)]
    rng = np.random.default_rng(7)
    requests = [(f, _features(rng, 64, 4), [f"c{j}" for j in range(64)]) for f in flts]
    if reason == "threshold":  # a threshold inside each filter's scores: between cap and floor
        scores = [np.sort(f.score(z))[::-1] for f, z, _ in requests]
        requests = [(f, z, ids) for (f, z, ids), s in zip(requests, scores) if s[30] < s[20]]
        scores = [s for s in scores if s[30] < s[20]]
        assert len(requests) >= 6
        for (f, _, _), s in zip(requests, scores):
            f.config = FilterConfig(budget=40, threshold=float(s[20] + s[21]) / 2, threshold_scale="absolute")
    got = select_many(requests, round_index=2)
    for (flt, z, ids), selection in zip(requests, got):
        expected = flt.select(z, ids, round_index=2)
        assert expected.reason == reason
        assert_same_selection(selection, expected)


def test_a_bad_request_fails_alone_with_selects_error() -> None:
    good = _requests(3)[:6]
    flt = LearnabilityFilter(5, CONFIGS[0])
    z = np.random.default_rng(0).normal(size=(20, 5))
    ids = [f"x{j}" for j in range(20)]
    bad = [
        (LearnabilityFilter(5, CONFIGS[0]), z[:, :4], ids),  # wrong width
        (LearnabilityFilter(5, CONFIGS[0]), np.where(np.eye(20, 5) > 0, np.nan, z), ids),
        (LearnabilityFilter(5, CONFIGS[0]), z * 1e39, ids),  # beyond float32
        (LearnabilityFilter(5, CONFIGS[0]), z, ids[:-1]),
        (LearnabilityFilter(5, CONFIGS[0]), z, ["same"] * 20),
        (flt, np.array([["a"] * 5] * 20), ids),
    ]
    requests = good[:3] + bad + good[3:]
    got = select_many(requests, round_index=1)
    for (f, z_, i_), result in zip(requests, got):
        try:
            expected = f.select(z_, i_, round_index=1)
        except ValueError as exc:
            assert isinstance(result, ValueError) and str(result) == str(exc)
        else:
            assert_same_selection(result, expected)
    assert all(isinstance(r, ValueError) for r in select_many(good, round_index=-1))


def test_a_failing_batch_is_decided_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    requests = _requests(4)
    expected = [f.select(z, ids, round_index=3).sample_ids for f, z, ids in requests]

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("batched code failed")

    monkeypatch.setattr(batched, "_score_many", broken)
    monkeypatch.setattr(batched, "kmeans_representatives_many", broken)
    got = select_many(_blob_copies(requests), round_index=3)
    assert [g.sample_ids for g in got if isinstance(g, eenet.Selection)] == expected  # select's own


def test_select_many_edge_cases() -> None:
    flt = _trained(CONFIGS[0], 5, seed=1)
    with pytest.raises(ValueError, match="more than once"):
        select_many([(flt, np.zeros((3, 5)), ["a", "b", "c"])] * 2, round_index=1)
    empty = select_many([(flt, np.zeros((0, 5)), []), (LearnabilityFilter(5), np.zeros((0, 5)), [])], round_index=1)
    assert [(s.sample_ids, s.reason) for s in empty if isinstance(s, eenet.Selection)] == [
        ([], "threshold"),
        ([], "cold_start"),
    ]
    assert select_many([], round_index=0) == []
    (wrong,) = select_many([("not a filter", np.zeros((1, 5)), ["a"])], round_index=0)  # type: ignore[list-item]
    assert isinstance(wrong, ValueError)


def test_an_unbuilt_filter_saves_loads_and_refits_as_a_built_one() -> None:
    """A filter read from its blob keeps its weights as arrays until a network is needed; what it
    saves, scores and learns is the built filter's."""
    flt = _trained(CONFIGS[1], 5, seed=8, rounds=2)
    blob = flt.to_bytes()
    unbuilt = LearnabilityFilter.from_bytes(blob)
    assert unbuilt._nets is None
    assert unbuilt.to_bytes() == blob
    state = unbuilt.state_dict()
    for net in ("exploit", "explore"):
        for name, value in flt.state_dict()[net].items():
            np.testing.assert_array_equal(state[net][name], value)
    assert unbuilt._nets is None
    z = _features(np.random.default_rng(1), 30, 5)
    np.testing.assert_array_equal(unbuilt.score(z), flt.score(z))  # builds it
    assert unbuilt._nets is not None
    again = LearnabilityFilter.from_bytes(blob)
    for f in (flt, again):
        f.observe(z[:6], 0.4)
    assert refit_many([again]) == refit_many([flt])
    assert again.to_bytes() == flt.to_bytes()
    # loading into a built filter keeps its networks (and their parameters' identity)
    built = LearnabilityFilter(5, CONFIGS[1])
    exploit = built._exploit
    built.load_state_dict(state)
    assert built._exploit is exploit
    np.testing.assert_array_equal(built.score(z), unbuilt.score(z))


def test_a_fresh_filter_draws_its_initial_weights_when_first_used() -> None:
    a, b = LearnabilityFilter(5, CONFIGS[0]), LearnabilityFilter(5, CONFIGS[0])
    assert a._nets is None
    z = _features(np.random.default_rng(3), 10, 5)
    torch.manual_seed(123)  # the global generator is not what draws them
    np.testing.assert_array_equal(a.score(z), b.score(z))
    assert a.to_bytes() == LearnabilityFilter(5, CONFIGS[0]).to_bytes()


@pytest.mark.parametrize("history", [False, True])
def test_extreme_features_change_nobody_elses_selection(history: bool) -> None:
    """Finite but hostile rows (huge, constant, all equal) are decided in the same batch as honest
    ones: each request gets what its own ``select`` gives, the honest ones included."""
    rng = np.random.default_rng(6)
    honest = [_features(rng, 64, 5) for _ in range(6)]
    hostile = [np.full((64, 5), 3e38), np.full((64, 5), 7.0), honest[0] * 1e30, np.tile(honest[1][:1], (64, 1))]
    zs = honest[:3] + hostile + honest[3:]
    flts = [_trained(CONFIGS[0], 5, seed=40) if history else LearnabilityFilter(5, CONFIGS[0]) for _ in zs]
    ids = [f"s{j}" for j in range(64)]
    got = select_many([(f, z, ids) for f, z in zip(flts, zs)], round_index=5)
    for flt, z, result in zip(flts, zs, got):
        try:
            expected = flt.select(z, ids, round_index=5)
        except ValueError as exc:
            assert isinstance(result, ValueError) and str(result) == str(exc)
        else:
            assert_same_selection(result, expected)
