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
machine, same selections; ``benchmarks/bench_allocation.py``). A round of many clients runs
:func:`kmeans_representatives_many`: the same computation for all of them in stacked arrays, with the
same selections index for index.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["kmeans_representatives", "kmeans_representatives_many"]

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


# ---------------------------------------------------------------------------- many clients at once

# Clients per chunk of kmeans_representatives_many: [chunk, trials, n] distance blocks of a few
# hundred KiB (n = 256) stay in cache, and the per-chunk numpy calls are shared by enough clients.
_CHUNK = 64
# Clients per Lloyd block: its [clients, n, k] distances (512 KiB at n = 256, k = 32) stay in cache.
_LLOYD_CHUNK = 8


def kmeans_representatives_many(zs: np.ndarray, k: int, seed: int, *, max_iter: int = 50) -> list[np.ndarray]:
    """:func:`kmeans_representatives` (``n_init=1``) for many feature matrices of one shape at once.

    ``zs`` is ``[C, n, d]``: C clients' candidates. Every client gets what
    ``kmeans_representatives(zs[c], k, seed, max_iter=max_iter)`` returns, the same indices: the
    k-means++ seeding and the Lloyd iterations run for a chunk of clients in stacked arrays, with
    the same numpy operations per client (each matrix product of a stack is the same BLAS call on
    the same operands as the per-client one, reductions run along the same axes), and with the
    random draws the per-client generator would make (one seed for all: the draws are made once).
    A client whose seeding meets the duplicate-points branch (the generator then draws
    differently) or whose final clustering leaves a cluster empty (farthest-point fill) is
    computed by :func:`kmeans_representatives` itself.

    Raises ``ValueError`` as :func:`kmeans_representatives` does, for the whole stack: the caller
    checks each client's features first.
    """
    z = np.asarray(zs, dtype=np.float64)
    if z.ndim != 3:
        raise ValueError(f"zs must be a 3-D array [clients, n, d], got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("zs contains NaN or infinite values")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    n_clients, n = z.shape[0], z.shape[1]
    if n == 0:
        return [np.empty(0, dtype=np.int64) for _ in range(n_clients)]
    k = min(int(k), n)
    if k == n:
        return [np.arange(n, dtype=np.int64) for _ in range(n_clients)]
    # kmeans_representatives' generator: integers(n) for the first pick, then random(trials) per
    # further pick (the same stream as one random((k - 1, trials)) draw)
    rng = np.random.default_rng(seed)
    first = int(rng.integers(n))
    uniforms = rng.random((k - 1, 2 + int(np.log(k))))
    out: list[np.ndarray] = []
    for start in range(0, n_clients, _CHUNK):
        chunk = z[start : start + _CHUNK]
        picked = _representatives_chunk(chunk, k, first, uniforms, max_iter)
        for c, idx in enumerate(picked):
            out.append(idx if idx is not None else kmeans_representatives(chunk[c], k, seed, max_iter=max_iter))
    return out


def _representatives_chunk(
    z: np.ndarray, k: int, first: int, uniforms: np.ndarray, max_iter: int
) -> list[np.ndarray | None]:
    """Representatives of a chunk ``z`` [B, n, d]; None for a client to compute on its own."""
    mean = z.mean(axis=1, keepdims=True)
    std = z.std(axis=1, keepdims=True)
    x = (z - mean) / np.where(std < _STD_FLOOR, 1.0, std)
    x_sq = np.einsum("bij,bij->bi", x, x)
    picks, odd = _kmeans_pp_init_many(x, x_sq, first, uniforms)
    out: list[np.ndarray | None] = []
    for start in range(0, z.shape[0], _LLOYD_CHUNK):  # [B, n, k] blocks: fewer clients, to stay in cache
        part = slice(start, start + _LLOYD_CHUNK)
        xp = x[part]
        dist = _lloyd_many(xp, x_sq[part], xp[np.arange(xp.shape[0])[:, None], picks[part]], max_iter)
        # per cluster, its first member at the least distance to its centre: kmeans_representatives'
        # masked argmin, from each point's distance to its own centre ([b, n], not [b, n, k])
        n_p, n = dist.shape[0], dist.shape[1]
        labels = dist.argmin(axis=2)
        slot = (labels + (np.arange(n_p) * k)[:, None]).ravel()  # point's (client, cluster)
        own = np.take_along_axis(dist, labels[:, :, None], axis=2).ravel()
        least = np.full(n_p * k, np.inf)
        np.minimum.at(least, slot, own)
        at_least = own == least[slot]
        nearest = np.full(n_p * k, n, dtype=np.int64)  # n: an empty cluster
        np.minimum.at(nearest, slot[at_least], np.tile(np.arange(n), n_p)[at_least])
        nearest = nearest.reshape(n_p, k)
        full = (nearest < n).all(axis=1) & ~odd[part]
        out += [np.sort(nearest[i]) if full[i] else None for i in range(n_p)]
    return out


def _kmeans_pp_init_many(
    x: np.ndarray, x_sq: np.ndarray, first: int, uniforms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_kmeans_pp_init` for B clients; returns the picks [B, k] and which clients met a step
    with every point on a chosen centre (their picks are not the per-client ones)."""
    n_b, n, _ = x.shape
    k = uniforms.shape[0] + 1
    rows = np.arange(n_b)
    ones = np.ones((n_b, n, 1))
    lhs = np.concatenate([-2.0 * x, x_sq[:, :, None], ones], axis=2)  # [B, n, d + 2]
    rhs = np.concatenate([x, ones, x_sq[:, :, None]], axis=2).transpose(0, 2, 1).copy()  # [B, d + 2, n]
    picks = np.empty((n_b, k), dtype=np.int64)
    picks[:, 0] = first
    closest = np.maximum(np.matmul(lhs[:, first : first + 1], rhs)[:, 0], 0.0)  # [B, n]
    odd = np.zeros(n_b, dtype=bool)
    for c in range(1, k):
        cum = np.cumsum(closest, axis=1)
        total = cum[:, -1]
        odd |= total <= 0.0
        # searchsorted(side="right") in a nondecreasing row is the count of values <= the target
        targets = uniforms[c - 1][None, :] * total[:, None]  # [B, trials]
        cand = np.minimum(np.count_nonzero(cum[:, None, :] <= targets[:, :, None], axis=2), n - 1)
        cand_dist = np.matmul(lhs[rows[:, None], cand], rhs)  # [B, trials, n]
        np.clip(cand_dist, 0.0, closest[:, None, :], out=cand_dist)  # max(., 0), then min(., closest)
        best = cand_dist.sum(axis=2).argmin(axis=1)
        picks[:, c] = cand[rows, best]
        closest = cand_dist[rows, best]
    return picks, odd


def _lloyd_many(x: np.ndarray, x_sq: np.ndarray, centers: np.ndarray, max_iter: int) -> np.ndarray:
    """:func:`_lloyd` for B clients ([B, n, d] points, [B, k, d] first centres); a client leaves the
    stacked arrays once its labels stop changing. Returns the point-to-centre distances [B, n, k]."""
    n_b, n, _ = x.shape
    k = centers.shape[1]
    centers = centers.copy()
    labels = np.full((n_b, n), -1, dtype=np.int64)
    minus_2x = -2.0 * x
    points = np.arange(n)
    onehot = np.zeros((n_b, k, n))  # scattered into and cleared again at the same places
    active = np.arange(n_b)
    for _ in range(max_iter):
        cen = centers[active]
        rel = np.matmul(minus_2x[active], cen.transpose(0, 2, 1))  # [A, n, k]
        rel += np.einsum("bij,bij->bi", cen, cen)[:, None, :]
        new_labels = rel.argmin(axis=2)
        moved = np.flatnonzero((new_labels != labels[active]).any(axis=1))
        if moved.size < active.size:
            active, new_labels = active[moved], new_labels[moved]
            if active.size == 0:
                break
        labels[active] = new_labels
        n_a = active.size
        slot = new_labels + (np.arange(n_a) * k)[:, None]  # [A, n]: a's cluster c is row a * k + c
        counts = np.bincount(slot.ravel(), minlength=n_a * k).reshape(n_a, k).astype(x.dtype)
        flat = onehot[:n_a].reshape(-1)
        hot = (slot * n + points).ravel()
        flat[hot] = 1.0
        sums = np.matmul(onehot[:n_a], x[active])  # [A, k, d]: the same product as _lloyd's onehot @ x
        flat[hot] = 0.0
        filled = counts.all(axis=1)
        if filled.all():
            centers[active] = sums / counts[:, :, None]
            continue
        centers[active[filled]] = sums[filled] / counts[filled][:, :, None]
        for a in np.flatnonzero(~filled):  # as _lloyd: empty clusters re-seeded at the worst-fit points
            b = active[a]
            nonempty = counts[a] > 0
            centers[b, nonempty] = sums[a, nonempty] / counts[a, nonempty, None]
            point_cost = rel[moved[a], points, new_labels[a]] + x_sq[b]
            for c in np.flatnonzero(~nonempty):
                worst = int(point_cost.argmax())
                centers[b, c] = x[b, worst]
                point_cost[worst] = -np.inf
    # _sq_distances(x, centers, x_sq), in place
    dist = np.matmul(x, centers.transpose(0, 2, 1))
    dist *= 2.0
    np.subtract(x_sq[:, :, None], dist, out=dist)
    dist += np.einsum("bij,bij->bi", centers, centers)[:, None, :]
    return np.maximum(dist, 0.0, out=dist)
