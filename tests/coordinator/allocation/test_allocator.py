"""The allocator: LaDa vs the baselines under the same seed, persisted filters."""

from __future__ import annotations

import numpy as np

from lada_client.common.wire import Capabilities
from lada_coordinator.allocation.allocator import LLM, SLM, Allocator
from lada_coordinator.allocation.eenet import FilterConfig
from lada_coordinator.store import ClientRecord, Store


def _configs() -> dict[str, FilterConfig]:
    return {SLM: FilterConfig(budget=16, seed=3), LLM: FilterConfig(budget=8, seed=3)}


def _round(rng: np.random.Generator, n: int = 128) -> tuple[list[str], np.ndarray]:
    z = rng.normal(size=(n, 5))
    return [f"s{i}" for i in range(n)], z


def test_lada_selection_learns_and_differs_from_random(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    lada = Allocator(store, "lada", _configs(), seed=0)
    random_ = Allocator(store, "random", _configs(), seed=0)
    rng = np.random.default_rng(0)
    true_reward = lambda z: 1 / (1 + np.exp(-3 * z[:, 0]))  # noqa: E731 - learnable iff z0 is high
    gains = []
    for t in range(1, 7):
        ids, z = _round(rng)
        picked, reason = lada.allocate(t, SLM, "c1", ids, z)
        baseline, why = random_.allocate(t, SLM, "c1", ids, z)
        assert why == "random" and len(baseline) == 16
        assert reason == ("cold_start" if t == 1 else reason)
        rows = [ids.index(s) for s in picked]
        base_rows = [ids.index(s) for s in baseline]
        assert set(picked) != set(baseline)
        gains.append(true_reward(z[rows]).mean() - true_reward(z[base_rows]).mean())
        for k, r in enumerate(rows):  # per-sample rewards (one pseudo-round each): tests the filter, not noise
            lada.reward(1000 * t + k, SLM, "c1", z[[r]], float(true_reward(z[[r]])[0]))
    assert np.mean(gains[-3:]) > 0.15, gains

    # the learned filter survives a coordinator restart (persisted in SQLite)
    ids, z = _round(np.random.default_rng(99))
    again = Allocator(Store(tmp_path / "db.sqlite"), "lada", _configs(), seed=0)
    assert again.allocate(9, SLM, "c1", ids, z) == lada.allocate(9, SLM, "c1", ids, z)


def test_all_and_empty(tmp_path):
    alloc = Allocator(Store(tmp_path / "db.sqlite"), "all", _configs(), seed=0)
    ids, z = _round(np.random.default_rng(1), n=40)
    assert alloc.allocate(1, SLM, "c1", ids, z) == (ids, "all")
    assert alloc.allocate(1, SLM, "c1", [], z[:0]) == ([], "empty")
    assert alloc.reward(1, SLM, "c1", z[:3], 0.5) == {}  # baselines learn nothing


def test_a_round_reward_counts_once(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    alloc = Allocator(store, "lada", _configs(), seed=0)
    _ids, z = _round(np.random.default_rng(3), n=40)
    assert alloc.reward(1, SLM, "c1", z[:4], 0.5)  # refit happened
    assert alloc.reward(1, SLM, "c1", z[:4], 0.5) == {}  # replayed after a restart: ignored
    assert alloc.reward(2, SLM, "c1", z[:4], 0.5)


def test_random_is_reproducible_per_seed(tmp_path):
    ids, z = _round(np.random.default_rng(2))
    a = Allocator(Store(tmp_path / "a.sqlite"), "random", _configs(), seed=5).allocate(1, SLM, "c1", ids, z)
    b = Allocator(Store(tmp_path / "b.sqlite"), "random", _configs(), seed=5).allocate(1, SLM, "c1", ids, z)
    c = Allocator(Store(tmp_path / "c.sqlite"), "random", _configs(), seed=6).allocate(1, SLM, "c1", ids, z)
    assert a == b and a != c


def test_random_draw_follows_the_client_name_not_its_enrollment(tmp_path):
    """Enrolling again gives a client a new id; its random baseline must draw the same samples."""
    ids, z = _round(np.random.default_rng(4))
    draws = []
    for run, client_id in enumerate(("client0-1a2b3c4d", "client0-9f8e7d6c")):
        store = Store(tmp_path / f"run{run}.sqlite")
        for cid in (client_id, f"client1-{run}"):
            store.add_client(
                ClientRecord(cid, cid.split("-")[0], f"k{cid}", f"k{cid}", "add", "m", Capabilities(), 0, 0, 0)
            )
        alloc = Allocator(store, "random", _configs(), seed=5)
        draws.append((alloc.allocate(1, SLM, client_id, ids, z), alloc.allocate(1, SLM, f"client1-{run}", ids, z)))
    (first, other), (again, _) = draws
    assert first == again and first != other


def test_a_round_close_writes_every_refit_filter_in_one_commit(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    alloc = Allocator(store, "lada", _configs(), seed=0)
    _ids, z = _round(np.random.default_rng(4), n=40)
    before = dict(store.stats)
    with alloc.saving_together():
        for k in range(5):
            assert alloc.reward(1, SLM, f"c{k}", z[:4], 0.5)
        assert alloc.reward(1, SLM, "c0", z[:4], 0.5) == {}  # once per round, also before the write
        assert store.load_filter("c0", SLM) is None  # nothing written inside the block
    assert store.stats["commits"] - before["commits"] == 1
    assert all(store.filter_updated(1, f"c{k}", SLM) for k in range(5))
    restarted = Allocator(Store(tmp_path / "db.sqlite"), "lada", _configs(), seed=0)
    ids, z2 = _round(np.random.default_rng(5))
    assert restarted.allocate(2, SLM, "c3", ids, z2) == alloc.allocate(2, SLM, "c3", ids, z2)


def test_a_failed_round_close_counts_no_reward_twice(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    alloc = Allocator(store, "lada", _configs(), seed=0)
    _ids, z = _round(np.random.default_rng(6), n=40)
    try:
        with alloc.saving_together():
            assert alloc.reward(1, SLM, "c1", z[:4], 0.5)
            raise RuntimeError("the close failed after the refit")
    except RuntimeError:
        pass
    assert store.load_filter("c1", SLM) is None and not store.filter_updated(1, "c1", SLM)
    # closed again: the reward counts (the refit filter was dropped from memory, not kept observed)
    with alloc.saving_together():
        assert alloc.reward(1, SLM, "c1", z[:4], 0.5)
    fresh = Allocator(Store(tmp_path / "other.sqlite"), "lada", _configs(), seed=0)
    fresh.reward(1, SLM, "c1", z[:4], 0.5)
    ids, z2 = _round(np.random.default_rng(7))
    assert alloc.allocate(2, SLM, "c1", ids, z2) == fresh.allocate(2, SLM, "c1", ids, z2)


def test_allocate_many_decides_as_allocate_does_client_by_client(tmp_path):
    """Cold, warm in memory and warm after a restart; a client whose upload or stored filter is
    bad gets its own error back and the others their allocations."""
    store = Store(tmp_path / "db.sqlite")
    alloc = Allocator(store, "lada", _configs(), seed=0)
    rng = np.random.default_rng(8)
    clients = [f"c{k}" for k in range(12)]

    def requests() -> dict[str, tuple[list[str], np.ndarray]]:
        return {c: _round(rng, n=(128, 60)[k % 2]) for k, c in enumerate(clients)}

    cold = requests()
    got = Allocator(store, "lada", _configs(), seed=0).allocate_many(1, SLM, cold)
    assert list(got) == clients
    assert got == {c: alloc.allocate(1, SLM, c, ids, z) for c, (ids, z) in cold.items()}
    assert {why for _, why in got.values()} == {"cold_start"}
    with alloc.saving_together():
        for c, (picked, _) in got.items():
            ids, z = cold[c]
            alloc.reward(1, SLM, c, z[[ids.index(s) for s in picked]], float(rng.uniform(0.1, 0.9)))

    warm = requests()
    expected = {c: alloc.allocate(2, SLM, c, ids, z) for c, (ids, z) in warm.items()}
    assert "cold_start" not in {why for _, why in expected.values()}

    def as_sets(allocations):  # ordered by score: equal scores may swap (tests/.../test_select_many.py)
        return {c: (set(ids), why) for c, (ids, why) in allocations.items()}

    assert as_sets(alloc.allocate_many(2, SLM, warm)) == as_sets(expected)
    restarted = Allocator(Store(tmp_path / "db.sqlite"), "lada", _configs(), seed=0)
    assert as_sets(restarted.allocate_many(2, SLM, warm)) == as_sets(expected)

    store.save_filter("c3", SLM, b"LADAEEN2 not a filter", 1)
    ids, z = warm["c5"]
    odd = {**warm, "c5": (ids, z[:, :4]), "c7": ([], z[:0])}
    got = Allocator(Store(tmp_path / "db.sqlite"), "lada", _configs(), seed=0).allocate_many(2, SLM, odd)
    assert isinstance(got.pop("c3"), ValueError) and isinstance(got.pop("c5"), ValueError)
    assert got.pop("c7") == ([], "empty")
    assert as_sets(got) == as_sets({c: v for c, v in expected.items() if c in got})


def test_allocate_many_in_the_baseline_modes(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    ids, z = _round(np.random.default_rng(9), n=50)
    requests = {"c1": (ids, z), "c2": (ids[:10], z[:10]), "c3": ([], z[:0])}
    for mode in ("random", "all", "none"):
        alloc = Allocator(store, mode, _configs(), seed=4)
        assert alloc.allocate_many(3, SLM, requests) == {
            c: alloc.allocate(3, SLM, c, i, zz) for c, (i, zz) in requests.items()
        }
