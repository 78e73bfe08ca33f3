"""Round-1 allocation: cluster representatives in learnability-feature space.

In the first round no filter has seen a reward, so any learned score would be noise. Instead the
coordinator spreads the budget over the candidate pool: k-means on the (standardised) feature
vectors z and, for every cluster, the candidate nearest its centroid. Covering the feature space
means the first common reward is measured on a varied set, which gives the bandit's first refit
examples from many regions rather than one arbitrary corner.

The implementation is plain numpy (k-means++ seeding, Lloyd iterations) rather than scikit-learn:
the coordinator runs this for every client in round 1 (e.g. 1,000 clients x 256 candidates x 32
clusters), and a fixed-size numpy loop costs about a millisecond per call where a general-purpose
estimator costs tens. At this size the cost is the number of numpy calls, not arithmetic, so the
seeding gets a candidate's distances to all points from one matmul of augmented rows, and Lloyd
assigns points by ``-2 x.c + ||c||^2`` (about 1.3 ms per call instead of 2.4 ms on the benchmark
machine, same selections; ``benchmarks/bench_allocation.py``).
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["kmeans_representatives"]

logger = logging.getLogger(__name__)

_STD_FLOOR = 1e-8


def _standardise(z: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance columns so no feature (e.g. path length) dominates distances."""
    mean = z.mean(axis=0)
    std = z.std(axis=0)
    std = np.where(std < _STD_FLOOR, 1.0, std)
    return (z - mean) / std


def _sq_distances(x: np.ndarray, centers: np.ndarray, x_sq: np.ndarray | None = None) -> np.ndarray:
    """Squared Euclidean distances, shape [n, k], clipped at 0 against rounding."""
    if x_sq is None:
        x_sq = np.einsum("ij,ij->i", x, x)
    c_sq = np.einsum("ij,ij->i", centers, centers)
    return np.maximum(x_sq[:, None] - 2.0 * (x @ centers.T) + c_sq[None, :], 0.0)


def _kmeans_pp_init(x: np.ndarray, x_sq: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (as in scikit-learn): spread centres by squared distance.

    Each step draws ``2 + ln k`` candidates proportionally to squared distance and keeps the one
    that lowers the total cost most, which makes a single seeding reliable enough to skip restarts.
    Returns the indices of the picked rows. The loop runs ``k`` times per client, so each step is
    kept to a dozen small numpy calls on preallocated buffers.
    """
    n = x.shape[0]
    trials = 2 + int(np.log(k))
    # ||x_i - x_j||^2 = [-2 x_j, ||x_j||^2, 1] . [x_i, 1, ||x_i||^2]: a candidate's distances to
    # every point are one small matmul (the loop runs k times per client, so each call counts)
    ones = np.ones((n, 1))
    lhs = np.hstack([-2.0 * x, x_sq[:, None], ones])
    rhs = np.hstack([x, ones, x_sq[:, None]]).T.copy()
    picks = np.empty(k, dtype=np.int64)
    picks[0] = rng.integers(n)
    closest = np.maximum(lhs[picks[0]] @ rhs, 0.0)
    for c in range(1, k):
        cum = np.cumsum(closest)
        total = float(cum[-1])
        if total <= 0.0:
            # Every point coincides with a chosen centre (duplicates): any point will do.
            picks[c] = rng.integers(n)
            continue
        cand = np.minimum(cum.searchsorted(rng.random(trials) * total, side="right"), n - 1)
        cand_dist = lhs[cand] @ rhs  # [trials, n]
        np.maximum(cand_dist, 0.0, out=cand_dist)
        np.minimum(cand_dist, closest, out=cand_dist)
        best = int(cand_dist.sum(axis=1).argmin())
        picks[c] = cand[best]
        closest = cand_dist[best]
    return picks


def _lloyd(
    x: np.ndarray, x_sq: np.ndarray, centers: np.ndarray, max_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Lloyd iterations; an emptied cluster is re-seeded at the worst-fit point.

    Returns the centres, the labels, the point-to-centre distances ``[n, k]`` and the inertia.
    """
    n, k = x.shape[0], centers.shape[0]
    rows = np.arange(n)
    cluster_ids = np.arange(k)
    labels = np.full(n, -1, dtype=np.int64)
    minus_2x = -2.0 * x
    for _ in range(max_iter):
        # ||x||^2 is the same for every centre, so the assignment needs only -2 x.c + ||c||^2
        rel = minus_2x @ centers.T
        rel += np.einsum("ij,ij->i", centers, centers)
        new_labels = rel.argmin(axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        onehot = (labels[None, :] == cluster_ids[:, None]).astype(x.dtype)
        counts = onehot.sum(axis=1)
        sums = onehot @ x
        if counts.all():
            centers = sums / counts[:, None]
            continue
        nonempty = counts > 0
        centers = centers.copy()
        centers[nonempty] = sums[nonempty] / counts[nonempty, None]
        point_cost = rel[rows, labels] + x_sq
        for c in np.flatnonzero(~nonempty):
            worst = int(point_cost.argmax())
            centers[c] = x[worst]
            point_cost[worst] = -np.inf
    dist = _sq_distances(x, centers, x_sq)
    labels = dist.argmin(axis=1)
    inertia = float(dist[rows, labels].sum())
    return centers, labels, dist, inertia


def kmeans_representatives(
    z: np.ndarray,
    k: int,
    seed: int,
    *,
    n_init: int = 1,
    max_iter: int = 50,
) -> np.ndarray:
    """Indices of one representative candidate per k-means cluster of ``z``.

    Args:
        z: Feature matrix, shape ``[n, d]``, finite values.
        k: Number of clusters wanted (the round budget); capped at ``n``.
        seed: Seed for k-means++ seeding, so allocation is reproducible.
        n_init: Independent seedings; the lowest-inertia clustering is kept. One greedy
            k-means++ seeding is usually enough for representatives and keeps round 1 cheap.
        max_iter: Cap on Lloyd iterations per seeding.

    Returns:
        Sorted, unique ``int64`` indices into ``z`` of length ``min(k, n)``. Each is the member
        nearest its cluster's centroid; if duplicate rows leave fewer non-empty clusters than
        requested, the remainder is filled by farthest-point selection so the budget is still met.

    Raises:
        ValueError: on a non-2-D or non-finite ``z``, or non-positive ``k``/``n_init``/``max_iter``.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"z must be a 2-D array [n, d], got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("z contains NaN or infinite values")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be >= 1, got {n_init}, {max_iter}")
    n = z.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    k = min(int(k), n)
    if k == n:
        return np.arange(n, dtype=np.int64)

    x = _standardise(z)
    x_sq = np.einsum("ij,ij->i", x, x)
    rng = np.random.default_rng(seed)
    best: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None
    for _ in range(n_init):
        result = _lloyd(x, x_sq, x[_kmeans_pp_init(x, x_sq, k, rng)], max_iter)
        if best is None or result[3] < best[3]:
            best = result
    assert best is not None
    _, labels, dist, _ = best

    # per cluster, the member nearest the centroid (one masked argmin over all clusters)
    member = labels[:, None] == np.arange(k)[None, :]
    nearest = np.where(member, dist, np.inf).argmin(axis=0)
    chosen: list[int] = nearest[member.any(axis=0)].tolist()

    if len(chosen) < k:
        # Farthest-point fill: with duplicate rows some clusters end up empty.
        logger.debug("k-means left %d empty clusters; filling by farthest point", k - len(chosen))
        taken = np.zeros(n, dtype=bool)
        taken[chosen] = True
        nearest_d = _sq_distances(x, x[chosen], x_sq).min(axis=1)
        while len(chosen) < k:
            cand = np.where(taken, -np.inf, nearest_d)
            idx = int(cand.argmax())
            chosen.append(idx)
            taken[idx] = True
            nearest_d = np.minimum(nearest_d, _sq_distances(x, x[idx : idx + 1], x_sq)[:, 0])

    return np.array(sorted(chosen), dtype=np.int64)
