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
