"""Tests for round-1 k-means representatives."""

from __future__ import annotations

import numpy as np
import pytest

from lada_coordinator.allocation.cold_start import kmeans_representatives


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
