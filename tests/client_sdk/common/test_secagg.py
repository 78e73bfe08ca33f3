"""The secure-aggregation core both roles share: primitives, messages and configuration.

Whole rounds, client and server together, are tested beside the server
(tests/coordinator/aggregation/test_secagg_server.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from lada_client.common import secagg
from lada_client.common.secagg import (
    SecAggConfig,
    SecAggError,
    Share,
    check_id,
    commit_self_mask,
    dequantize,
    fedavg,
    is_mask_key,
    neighbour_graph,
    pair_mask,
    quantize,
    self_mask,
    shamir_reconstruct,
    shamir_split,
)

ROUND = "round-7"


def test_neighbour_graph_is_regular_symmetric_and_seeded():
    ids = [f"c{i}" for i in range(12)]
    for k in (2, 3, 4, 6):
        graph = neighbour_graph(ids, k, b"seed")
        assert {len(peers) for peers in graph.values()} == {k}
        assert all(a in graph[b] for a in ids for b in graph[a])
    assert neighbour_graph(ids, 4, b"seed") == neighbour_graph(ids, 4, b"seed")
    assert neighbour_graph(ids, 4, b"seed") != neighbour_graph(ids, 4, b"other")
    assert {len(p) for p in neighbour_graph(ids[:11], 3, b"s").values()} == {4}  # odd k, odd n: rounds up
    assert neighbour_graph(ids[:4], 5, b"s") == {c: frozenset(ids[:4]) - {c} for c in ids[:4]}


# -------------------------------------------------------------------------------------- Shamir
@dataclass(frozen=True)
class _Point:
    x: int
    y: int


def test_shamir_needs_exactly_threshold_shares():
    secret = bytes(range(32))
    shares = shamir_split(secret, 4, [3, 5, 8, 9, 11, 20])
    assert shamir_reconstruct(shares[:4], 4) == secret
    assert shamir_reconstruct(shares[2:], 4) == secret
    with pytest.raises(SecAggError, match="at least 4"):
        shamir_reconstruct(shares[:3], 4)
    # three shares are consistent with *any* secret: forge a fourth point for a different one
    fake = b"\xff" * 32
    points = [_Point(0, int.from_bytes(fake, "big")), *shares[:3]]
    forged = Share(42, secagg._interpolate(points, 42))
    assert shamir_reconstruct([*shares[:3], forged], 4) == fake
    # interpolating too few shares as if the threshold were lower does not give the secret
    assert secagg._interpolate(shares[:3]) != int.from_bytes(secret, "big")


def test_shamir_detects_tampered_and_malformed_shares():
    shares = shamir_split(b"k" * 32, 3, [1, 2, 3])
    garbled = [shares[0], shares[1], Share(3, shares[2].y ^ (1 << 300))]
    with pytest.raises(SecAggError, match="inconsistent"):
        shamir_reconstruct(garbled, 3)
    with pytest.raises(SecAggError, match="same x"):
        shamir_reconstruct([shares[0], shares[0], shares[1]], 3)
    with pytest.raises(SecAggError, match="malformed share"):
        Share.from_bytes(1, b"\x00" * 10)


def _interpolate_per_point(points, at: int = 0) -> int:
    """The interpolation shamir_reconstruct used before the basis was cached: one inverse per point."""
    p = secagg.SHAMIR_PRIME
    total = 0
    for i, pi in enumerate(points):
        num, den = 1, 1
        for j, pj in enumerate(points):
            if i != j:
                num = num * (at - pj.x) % p
                den = den * (pi.x - pj.x) % p
        total = (total + pi.y * num * pow(den, -1, p)) % p
    return total


@pytest.mark.parametrize("holders", ["roster", "field"])
def test_cached_basis_interpolates_exactly_as_per_point_lagrange(holders):
    """Random share sets, subsets of holders, threshold 1 to n, any x in the field, evaluated at 0
    (the secret), at a random point and at a node: the same field element as the per-point formula."""
    rng = np.random.default_rng(7)
    p = secagg.SHAMIR_PRIME
    for trial in range(60):
        n = int(rng.integers(1, 25))
        if holders == "roster":
            xs = [int(x) for x in rng.choice(np.arange(1, 200), n, replace=False)]
        else:
            xs = list({int.from_bytes(rng.bytes(66), "big") % (p - 1) + 1 for _ in range(n)})
        threshold = [1, len(xs), int(rng.integers(1, len(xs) + 1))][trial % 3]
        secret = rng.bytes(32)
        shares = shamir_split(secret, threshold, xs)
        subset = [
            shares[int(i)]
            for i in rng.choice(len(shares), int(rng.integers(threshold, len(shares) + 1)), replace=False)
        ]
        assert shamir_reconstruct(subset, threshold) == secret
        points = sorted(subset, key=lambda s: s.x)[:threshold]
        assert secagg._interpolate(points) == _interpolate_per_point(points) == int.from_bytes(secret, "big")
        for at in (int.from_bytes(rng.bytes(66), "big") % p, points[-1].x):
            assert secagg._interpolate(points, at) == _interpolate_per_point(points, at)
        # fewer shares than the threshold interpolate to the same wrong value both ways
        if threshold > 1:
            assert secagg._interpolate(points[:-1]) == _interpolate_per_point(points[:-1])


def test_lagrange_coefficients_are_cached_per_x_set_and_refuse_duplicates():
    xs = (2, 3, 5, 7)
    first = secagg.lagrange_coefficients(xs)
    assert secagg.lagrange_coefficients(xs) is first  # computed once per x set
    assert sum(first) % secagg.SHAMIR_PRIME == 1  # the basis reproduces constants
    assert secagg.lagrange_coefficients((3, 2, 5, 7)) == (first[1], first[0], *first[2:])
    assert secagg.lagrange_coefficients((4,)) == (1,)
    with pytest.raises(SecAggError, match="same x"):
        secagg.lagrange_coefficients((2, 3, 2))
    with pytest.raises(SecAggError, match="same x"):
        secagg.lagrange_coefficients((2, 2 + secagg.SHAMIR_PRIME))
    shares = shamir_split(b"s" * 32, 2, [1, 2, 3])
    with pytest.raises(SecAggError, match="same x"):
        shamir_reconstruct([shares[0], Share(1, shares[1].y)], 2)
    with pytest.raises(SecAggError, match="at least 2"):
        shamir_reconstruct(shares[:1], 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0},
        {"threshold": 3, "neighbours": 2},
        {"threshold": 2, "scale": -1.0},
        {"threshold": 2, "clip": float("nan")},
        {"threshold": 2, "clip": 2.0**20, "scale": 2.0**16},
    ],
)
def test_bad_config_is_refused(kwargs):
    with pytest.raises(SecAggError):
        SecAggConfig(**kwargs)


# ------------------------------------------------------------------------------- quantisation
def test_quantisation_precision_clipping_and_capacity():
    config = SecAggConfig(threshold=2, scale=2.0**16, clip=1.0)
    rng = np.random.default_rng(1)
    xs = [rng.uniform(-1, 1, 1000) for _ in range(7)]
    total = np.zeros(1000, dtype=np.uint32)
    for x in xs:
        total += quantize(x, config)
    assert np.max(np.abs(dequantize(total, 7, config) - np.sum(xs, axis=0))) <= 7 / (2 * config.scale)
    assert dequantize(quantize(np.array([5.0, -5.0]), config), 1, config).tolist() == [1.0, -1.0]
    assert config.max_clients() == 32767
    with pytest.raises(SecAggError, match="wrap-around"):
        dequantize(total, 40_000, config)
    with pytest.raises(SecAggError, match="NaN"):
        quantize(np.array([np.nan]), config)


def test_plain_fedavg_is_the_weighted_mean():
    rng = np.random.default_rng(0)
    plain = [rng.uniform(-0.5, 0.5, 50) for _ in range(4)]
    weights = [1.0, 2.0, 3.0, 4.0]
    expected = sum(w * x for w, x in zip(weights, plain, strict=True)) / sum(weights)
    assert np.allclose(fedavg(plain, weights), expected)
    assert np.allclose(fedavg(plain), np.mean(plain, axis=0))
    with pytest.raises(SecAggError):
        fedavg(plain, [1.0, -1.0, 1.0, 1.0])
    with pytest.raises(SecAggError):
        fedavg([np.zeros(2), np.zeros(3)])


# ------------------------------------------------------------------------------- mask streams
def test_pair_masks_agree_from_both_sides_and_self_masks_are_bound_to_their_owner():
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    a_pub, b_pub = (
        k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) for k in (a, b)
    )
    a_raw = a.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    from_a = pair_mask(a, b_pub, ROUND, "c0", "c1", 64)
    assert from_a.dtype == np.uint32 and from_a.shape == (64,)
    np.testing.assert_array_equal(from_a, pair_mask(b, a_pub, ROUND, "c1", "c0", 64))
    np.testing.assert_array_equal(from_a, pair_mask(a_raw, b_pub, ROUND, "c0", "c1", 64))  # raw bytes work alike
    assert not np.array_equal(from_a, pair_mask(a, b_pub, "round-8", "c0", "c1", 64))
    assert is_mask_key(a_raw, a_pub) and not is_mask_key(a_raw, b_pub)
    seed = bytes(32)
    assert not np.array_equal(self_mask(seed, ROUND, "c0", 64), self_mask(seed, ROUND, "c1", 64))
    assert commit_self_mask(seed, ROUND, "c0") != commit_self_mask(seed, ROUND, "c1")
    with pytest.raises(SecAggError, match="round id"):
        check_id("", "round id")
