"""Tests for round-1 k-means representatives."""

from __future__ import annotations

import numpy as np
import pytest

from lada_coordinator.allocation import cold_start
from lada_coordinator.allocation.cold_start import kmeans_representatives, kmeans_representatives_many


def _blobs(seed: int, n: int = 200, k: int = 4, d: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 10.0
    labels = rng.permutation(np.arange(n) % k)
    return centers[labels] + rng.normal(scale=0.3, size=(n, d)), labels


@pytest.mark.parametrize("seed", range(5))
def test_one_representative_per_blob(seed: int) -> None:
    z, labels = _blobs(seed)
    idx = kmeans_representatives(z, 4, seed=seed)
    assert idx.shape == (4,)
    assert sorted(labels[idx].tolist()) == [0, 1, 2, 3]


def test_representative_is_nearest_to_its_blob_centroid() -> None:
    z, labels = _blobs(0)
    x = (z - z.mean(axis=0)) / z.std(axis=0)
    for i in kmeans_representatives(z, 4, seed=0):
        members = np.flatnonzero(labels == labels[i])
        centroid = x[members].mean(axis=0)
        nearest = members[np.argmin(((x[members] - centroid) ** 2).sum(axis=1))]
        assert i == nearest


def test_unique_sorted_and_length_min_k_n() -> None:
    z = np.random.default_rng(1).normal(size=(50, 5))
    idx = kmeans_representatives(z, 32, seed=3)
    assert idx.dtype == np.int64
    assert len(idx) == 32 == len(set(idx.tolist()))
    assert np.all(np.diff(idx) > 0)
    assert kmeans_representatives(z[:10], 32, seed=3).tolist() == list(range(10))


def test_duplicate_rows_still_fill_budget() -> None:
    z = np.vstack([np.zeros((20, 3)), np.ones((20, 3))])
    idx = kmeans_representatives(z, 5, seed=0)
    assert len(set(idx.tolist())) == 5
    # Both distinct points are covered before any duplicate is taken.
    assert {0.0, 1.0} <= set(z[idx, 0].tolist())


def test_deterministic_given_seed() -> None:
    z = np.random.default_rng(2).normal(size=(256, 5))
    a = kmeans_representatives(z, 32, seed=7)
    b = kmeans_representatives(z, 32, seed=7)
    np.testing.assert_array_equal(a, b)


def test_invariant_to_feature_scale() -> None:
    z, _ = _blobs(4)
    scaled = z * np.array([1.0, 1000.0, 0.001, 50.0, 1.0]) + 7.0
    np.testing.assert_array_equal(kmeans_representatives(z, 4, seed=0), kmeans_representatives(scaled, 4, seed=0))


def test_empty_input_gives_empty_selection() -> None:
    assert kmeans_representatives(np.empty((0, 5)), 4, seed=0).shape == (0,)


@pytest.mark.parametrize(
    ("z", "k"),
    [
        (np.zeros(5), 2),
        (np.array([[0.0, np.nan]]), 1),
        (np.array([[0.0, np.inf]]), 1),
        (np.zeros((4, 2)), 0),
        (np.zeros((4, 2)), True),
    ],
)
def test_bad_input_raises(z: np.ndarray, k: int) -> None:
    with pytest.raises(ValueError):
        kmeans_representatives(z, k, seed=0)


# ---------------------------------------------------------------------------- many at once


def _matrices(kind: str, count: int, n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.normal(size=(count, n, d)) * rng.uniform(0.1, 50.0, size=(count, 1, d))
    if kind == "raw":  # the allocator's features: NLLs, a gap, path lengths, a 0/1 flag (float32)
        cols = [
            rng.uniform(0.5, 4.0, (count, n)),
            rng.uniform(0.3, 6.0, (count, n)),
            rng.normal(1.0, 1.0, (count, n)),
            rng.integers(20, 120, (count, n)).astype(np.float64),
            (rng.random((count, n)) < 0.3).astype(np.float64),
        ]
        return np.stack(cols[:d], axis=2).astype(np.float32)
    if kind == "blobs":
        centers = rng.normal(size=(count, 6, d)) * 10.0
        return centers[np.arange(count)[:, None], rng.integers(0, 6, (count, n))] + rng.normal(
            scale=0.3, size=(count, n, d)
        )
    if kind == "grid":  # few distinct values: ties, emptied clusters, re-seeding
        return np.round(rng.normal(size=(count, n, d)), 0)
    if kind == "dupes":  # fewer distinct rows than k: degenerate seeding, farthest-point fill
        return rng.normal(size=(count, 5, d))[:, rng.integers(0, 5, n)]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "count", "n", "d", "k"),
    [
        ("raw", 150, 256, 5, 32),
        ("normal", 100, 256, 5, 32),
        ("normal", 70, 64, 3, 16),
        ("blobs", 70, 200, 4, 32),
        ("grid", 70, 256, 5, 32),
        ("grid", 40, 100, 2, 50),
        ("dupes", 10, 64, 5, 32),
        ("normal", 5, 20, 5, 32),  # k >= n: every row
        ("normal", 3, 1, 5, 4),
    ],
)
def test_many_pick_exactly_what_one_by_one_picks(kind: str, count: int, n: int, d: int, k: int) -> None:
    """The same representatives, index for index, on 615 matrices: the batched seeding and Lloyd
    iterations make the per-client computation's own numpy calls per client."""
    zs = _matrices(kind, count, n, d, seed=count + n)
    for seed in (0, 11):
        got = kmeans_representatives_many(zs, k, seed=seed)
        assert len(got) == count
        for z, idx in zip(zs, got):
            expected = kmeans_representatives(z, k, seed=seed)
            assert idx.dtype == np.int64
            np.testing.assert_array_equal(idx, expected)


def test_many_with_few_iterations_and_no_clients() -> None:
    zs = _matrices("normal", 9, 128, 5, seed=3)
    for z, idx in zip(zs, kmeans_representatives_many(zs, 16, seed=2, max_iter=2)):
        np.testing.assert_array_equal(idx, kmeans_representatives(z, 16, seed=2, max_iter=2))
    assert kmeans_representatives_many(np.empty((0, 10, 5)), 4, seed=0) == []
    assert [i.size for i in kmeans_representatives_many(np.empty((2, 0, 5)), 4, seed=0)] == [0, 0]


@pytest.mark.parametrize(
    ("zs", "k"),
    [
        (np.zeros((4, 5)), 2),  # not [clients, n, d]
        (np.array([[[np.nan, 1.0]]]), 1),
        (np.zeros((2, 4, 2)), 0),
        (np.zeros((2, 4, 2)), True),
    ],
)
def test_many_bad_input_raises(zs: np.ndarray, k: int) -> None:
    with pytest.raises(ValueError):
        kmeans_representatives_many(zs, k, seed=0)


def test_many_lloyd_reseeds_emptied_clusters_as_one_by_one() -> None:
    """Lloyd's re-seeding of an emptied cluster (rare after k-means++ seeding, which never picks a
    point twice): start from centres that repeat a point, so the repeats own nothing at first."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, 90, 3))
    x_sq = np.einsum("bij,bij->bi", x, x)
    picks = np.stack([rng.choice(90, size=10, replace=False) for _ in range(12)])
    picks[:, 7:] = picks[:, :3]  # three centres twice
    dist = cold_start._lloyd_many(x, x_sq, x[np.arange(12)[:, None], picks], 50)
    for b in range(12):
        expected = cold_start._lloyd(x[b], x_sq[b], x[b][picks[b]], 50)[2]
        np.testing.assert_array_equal(dist[b], expected)
