"""The batched refit (``refit_many``) against per-filter refits, and the allocator's round close."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from lada_coordinator.allocation import allocator as allocator_module
from lada_coordinator.allocation import batched
from lada_coordinator.allocation.allocator import SLM, Allocator
from lada_coordinator.allocation.batched import refit_many
from lada_coordinator.allocation.eenet import FilterConfig, LearnabilityFilter
from lada_coordinator.store import Store

# Not bit for bit: batched products and masked sums add in another order (float32 rounding), and
# Adam divides by the root of the squared gradient, so a weight whose gradient is rounding noise
# (a hidden unit almost never active, say) can step by another amount. The filter's function is
# what allocation uses: scores must agree to TOL (measured: ~2e-7); weights to TOL except a few
# (measured: at most a handful in ~17k, at most ~2e-4 apart), and all within LOOSE.
TOL = 1e-5
LOOSE = 1e-3
STRAY = 1e-3  # fraction of a network's weights allowed beyond TOL


def _filter(n_rows: int, config: FilterConfig, seed: int, n_features: int = 5) -> LearnabilityFilter:
    flt = LearnabilityFilter(n_features, config)
    rng = np.random.default_rng(seed)
    if n_rows:
        z = rng.normal(size=(n_rows, n_features)) * rng.uniform(0.5, 20.0, n_features)
        flt.observe(z, rng.uniform(0.0, 1.0, n_rows))
    return flt


def _assert_same(a: LearnabilityFilter, b: LearnabilityFilter) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["fit_count"] == sb["fit_count"]
    for key in ("scaler_mean", "scaler_std", "buffer_z", "buffer_r"):
        np.testing.assert_array_equal(sa[key], sb[key])
    for net in ("exploit", "explore"):
        wa = np.concatenate([v.ravel() for v in sa[net].values()])
        wb = np.concatenate([v.ravel() for v in sb[net].values()])
        diff = np.abs(wa - wb)
        assert diff.max() <= LOOSE, (net, diff.max())
        assert np.count_nonzero(diff > TOL) <= STRAY * diff.size, (net, np.sort(diff)[-5:])
    z = np.random.default_rng(9).normal(size=(64, a.n_features)) * 5.0
    np.testing.assert_allclose(a.score(z), b.score(z), rtol=0, atol=TOL)


def _assert_losses(per: dict[str, float], batched: dict[str, float]) -> None:
    assert per["n_samples"] == batched["n_samples"]
    for key in ("exploit_loss", "explore_loss"):
        if math.isnan(per[key]):
            assert math.isnan(batched[key])
        else:
            assert batched[key] == pytest.approx(per[key], rel=1e-4, abs=1e-6)


# sizes below, at and above the batch size (64), not multiples of it, and one row
SIZES = [1, 5, 63, 64, 65, 130, 257, 700]


@pytest.mark.parametrize("explore_on", ["last_layer", "all"])
def test_refit_many_equals_per_filter_refits(explore_on: str) -> None:
    # raw: the tolerances above were measured on uniform rewards
    config = FilterConfig(explore_on=explore_on, seed=4, credit_scale="raw")
    batched = [_filter(n, config, seed=k) for k, n in enumerate(SIZES)]
    single = copy.deepcopy(batched)
    expected = [f.refit() for f in single]
    got = refit_many(batched)
    for a, b, pe, pg in zip(single, batched, expected, got):
        _assert_same(a, b)
        _assert_losses(pe, pg)


def test_refit_many_over_several_rounds_keeps_each_filters_refit_count() -> None:
    """Warm starts and the shuffling of later refits (seed, refit count) follow each filter's own history."""
    config = FilterConfig(seed=1, batch_size=16)
    batched = [_filter(n, config, seed=k) for k, n in enumerate([3, 20, 40])]
    batched.append(_filter(0, config, seed=7))  # joins a round later: a different refit count
    single = copy.deepcopy(batched)
    for t in range(3):
        rng = np.random.default_rng(100 + t)
        for a, b in zip(single, batched):
            rows = int(rng.integers(1, 30))
            z, r = rng.normal(size=(rows, 5)), rng.uniform(0.0, 1.0, rows)
            a.observe(z, r)
            b.observe(z, r)
        for pe, pg in zip([f.refit() for f in single], refit_many(batched)):
            _assert_losses(pe, pg)
        for a, b in zip(single, batched):
            _assert_same(a, b)
    assert [f.fit_count for f in batched] == [3, 3, 3, 3]


def test_refit_many_groups_configs_and_widths_and_keeps_the_order() -> None:
    mixed = [
        _filter(40, FilterConfig(seed=1), seed=0),
        _filter(0, FilterConfig(seed=1), seed=1),  # empty buffer: skipped as by refit()
        _filter(70, FilterConfig(seed=2, hidden=8, explore_hidden=12), seed=2),
        _filter(33, FilterConfig(seed=1), seed=3, n_features=3),
        _filter(90, FilterConfig(seed=1), seed=4),
        _filter(10, FilterConfig(seed=2, hidden=8, explore_hidden=12, explore_on="all"), seed=5, n_features=2),
    ]
    single = copy.deepcopy(mixed)
    expected = [f.refit() for f in single]
    got = refit_many(mixed)
    assert len(got) == len(mixed)
    for a, b, pe, pg in zip(single, mixed, expected, got):
        _assert_same(a, b)
        _assert_losses(pe, pg)
    assert got[1]["n_samples"] == 0.0 and mixed[1].fit_count == 0
    assert refit_many([]) == []


def test_refit_many_in_chunks_equals_one_chunk(monkeypatch) -> None:
    config = FilterConfig(seed=2)
    whole = [_filter(n, config, seed=k) for k, n in enumerate(SIZES)]
    chunked = copy.deepcopy(whole)
    refit_many(whole)
    monkeypatch.setattr(batched, "_CHUNK_ELEMENTS", 2_000)  # a few filters per chunk
    refit_many(chunked)
    for a, b in zip(whole, chunked):
        _assert_same(a, b)


def test_refit_many_rejects_a_filter_twice_and_other_objects() -> None:
    flt = _filter(10, FilterConfig(), seed=0)
    with pytest.raises(ValueError, match="more than once"):
        refit_many([flt, flt])
    with pytest.raises(ValueError, match="LearnabilityFilter"):
        refit_many([flt, object()])  # type: ignore[list-item]
    assert flt.fit_count == 0


# --------------------------------------------------------------------------- the allocator


def _configs() -> dict[str, FilterConfig]:
    return {SLM: FilterConfig(budget=16, seed=3)}


def test_a_round_close_refits_every_filter_at_once_and_counts_a_reward_once(tmp_path) -> None:
    store = Store(tmp_path / "db.sqlite")
    alloc = Allocator(store, "lada", _configs(), seed=0)
    each = Allocator(Store(tmp_path / "each.sqlite"), "lada", _configs(), seed=0, batched_refit=False)
    rng = np.random.default_rng(5)
    zs = {f"c{k}": rng.normal(size=(int(rng.integers(1, 40)), 5)) for k in range(6)}
    before = dict(store.stats)
    with alloc.saving_together(), each.saving_together():
        for cid, z in zs.items():
            assert alloc.reward(1, SLM, cid, z, 0.4) == {"n_samples": float(len(z))}  # observed only
            assert set(each.reward(1, SLM, cid, z, 0.4)) == {"exploit_loss", "explore_loss", "n_samples"}
            assert alloc._filters[(cid, SLM)].fit_count == 0  # refit at the block's end
        assert alloc.reward(1, SLM, "c0", zs["c0"], 0.4) == {}  # once per round, also before the write
        assert store.load_filter("c0", SLM) is None
    assert store.stats["commits"] - before["commits"] == 1
    assert all(store.filter_updated(1, cid, SLM) for cid in zs)
    assert set(alloc.last_refits) == {(cid, SLM) for cid in zs}
    for cid, z in zs.items():
        assert alloc._filters[(cid, SLM)].fit_count == 1
        assert alloc.last_refits[(cid, SLM)]["n_samples"] == float(len(z))
        _assert_same(each._filters[(cid, SLM)], alloc._filters[(cid, SLM)])
    # replayed after the close (a resumed round): ignored
    assert alloc.reward(1, SLM, "c0", zs["c0"], 0.4) == {}
    # what was written is what is in memory
    restarted = Allocator(Store(tmp_path / "db.sqlite"), "lada", _configs(), seed=0)
    ids = [f"s{i}" for i in range(64)]
    z2 = np.random.default_rng(6).normal(size=(64, 5))
    assert restarted.allocate(2, SLM, "c3", ids, z2) == alloc.allocate(2, SLM, "c3", ids, z2)
    # outside the block a reward refits and saves at once, as before
    assert set(alloc.reward(2, SLM, "c0", zs["c0"], 0.4)) == {"exploit_loss", "explore_loss", "n_samples"}
    assert store.filter_updated(2, "c0", SLM)


def test_two_rounds_in_one_block_refit_twice(tmp_path) -> None:
    alloc = Allocator(Store(tmp_path / "db.sqlite"), "lada", _configs(), seed=0)
    plain = Allocator(Store(tmp_path / "plain.sqlite"), "lada", _configs(), seed=0)
    z = np.random.default_rng(8).normal(size=(12, 5))
    with alloc.saving_together():
        alloc.reward(1, SLM, "c1", z[:6], 0.2)
        alloc.reward(2, SLM, "c1", z[6:], 0.7)
    plain.reward(1, SLM, "c1", z[:6], 0.2)
    plain.reward(2, SLM, "c1", z[6:], 0.7)
    assert alloc._filters[("c1", SLM)].fit_count == 2
    _assert_same(plain._filters[("c1", SLM)], alloc._filters[("c1", SLM)])
    # both rounds' rewards are in the written filter, so both are marked as counted
    assert alloc._store.filter_updated(1, "c1", SLM) and alloc._store.filter_updated(2, "c1", SLM)
    assert alloc.reward(1, SLM, "c1", z[:6], 0.2) == {}


def test_a_failed_batched_refit_drops_the_filters_and_counts_no_reward_twice(tmp_path, monkeypatch) -> None:
    store = Store(tmp_path / "db.sqlite")
    alloc = Allocator(store, "lada", _configs(), seed=0)
    z = np.random.default_rng(9).normal(size=(8, 5))
    with alloc.saving_together():  # c0 has a saved filter before the failing close
        alloc.reward(1, SLM, "c0", z, 0.5)
    saved = store.load_filter("c0", SLM)

    def fail(filters):
        raise RuntimeError("the batched refit failed")

    monkeypatch.setattr(allocator_module, "refit_many", fail)
    with pytest.raises(RuntimeError, match="batched refit failed"), alloc.saving_together():
        alloc.reward(2, SLM, "c0", z, 0.5)
        alloc.reward(2, SLM, "c1", z, 0.5)
    assert ("c0", SLM) not in alloc._filters and ("c1", SLM) not in alloc._filters  # dropped from memory
    assert store.load_filter("c0", SLM) == saved and store.load_filter("c1", SLM) is None
    assert not store.filter_updated(2, "c0", SLM) and not store.filter_updated(2, "c1", SLM)
    monkeypatch.undo()
    # closed again: each reward counts once (c0 reloads its round-1 state, not the observed one)
    with alloc.saving_together():
        assert alloc.reward(2, SLM, "c0", z, 0.5) == {"n_samples": 16.0}
        assert alloc.reward(2, SLM, "c1", z, 0.5) == {"n_samples": 8.0}
    assert alloc._filters[("c0", SLM)].fit_count == 2 and alloc._filters[("c1", SLM)].fit_count == 1
    assert store.filter_updated(2, "c0", SLM) and store.filter_updated(2, "c1", SLM)
