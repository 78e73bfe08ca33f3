"""Many learnability filters at once: a round's allocation and its close, for a whole fleet.

One :class:`~lada_coordinator.allocation.eenet.LearnabilityFilter` per client is a few dozen tiny
matrix products per round, so at thousands of clients the per-call overhead is the cost. The two
functions here do what the filter's own ``select`` and ``refit`` do, for every filter of a round
in batched products over the filters' stacked weights, with the same results up to float32
rounding (``tests/coordinator/allocation/test_select_many.py``, ``test_refit_many.py``):

* :func:`select_many` -- one round's allocation for many clients (k-means cold start or scored
  selection);
* :func:`refit_many` -- the refits of a round's close.

They read the filters' package-internal state (standardisation, stacked layers, replay buffers);
:class:`~lada_coordinator.allocation.allocator.Allocator` is their caller.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from .cold_start import kmeans_representatives_many
from .eenet import LearnabilityFilter, Selection, SelectionReason, _ExploitNet, _ExploreNet, _Layers
from .filter_config import FilterConfig

__all__ = ["refit_many", "select_many"]

logger = logging.getLogger(__name__)

# Most float32 values one chunk of select_many's batched scoring holds per layer output (filters
# x candidates x layer width): 2**20 is 4 MiB, e.g. 64 filters of 256 candidates through the
# default ExploreNet (64 wide).
_SCORE_CHUNK_ELEMENTS = 2**20


def select_many(
    requests: Sequence[tuple[LearnabilityFilter, np.ndarray, Sequence[str]]], round_index: int
) -> list[Selection | Exception]:
    """:meth:`LearnabilityFilter.select` for many (filter, z, sample ids) at once, one result per
    request, in order: its :class:`Selection`, or the exception its own ``select`` would raise.

    Allocating a round runs one selection per client, each a few small numpy/torch calls, so the
    per-call overhead dominates. Here every request's arguments are checked as ``select`` checks
    them (a bad request gets its ``ValueError`` and leaves the others alone), then the requests
    whose filters share history or not, :class:`FilterConfig`, feature width and candidate count
    are decided together:

    * without history, :func:`~lada_coordinator.allocation.cold_start.kmeans_representatives_many`
      picks the same representatives as ``select``; the untrained networks score nothing
      (``Selection.scores`` is NaN, where ``select`` returns uninformative scores);
    * with history, every candidate of every filter is scored in batched products over the
      filters' stacked weights (:func:`_stacked`, as :func:`refit_many`), without building the
      networks of a filter read from its blob; the scores equal ``score``'s up to float32 rounding
      (the products add in another order, ~1e-7), and the threshold, cap and floor are ``select``'s
      (:meth:`LearnabilityFilter._by_score`).

    A filter may appear once. If a group's batched work raises, its requests are decided one by
    one by ``select``, each failing on its own.
    """
    flts = [flt for flt, _, _ in requests]
    if len({id(f) for f in flts}) != len(flts):
        raise ValueError("select_many: a filter appears more than once")
    results: list[Selection | Exception | None] = [None] * len(flts)
    checked: list[tuple[np.ndarray, list[str]]] = []
    groups: dict[tuple[bool, FilterConfig, int, int], list[int]] = {}
    for i, (flt, z, sample_ids) in enumerate(requests):
        try:
            if not isinstance(flt, LearnabilityFilter):
                raise ValueError(f"select_many takes LearnabilityFilter objects, got {type(flt).__name__}")
            arr, ids = flt._check_selection(z, sample_ids, round_index)
        except Exception as exc:  # noqa: BLE001 - what select would raise, for this request only
            results[i] = exc
            checked.append((np.empty((0, 0), dtype=np.float32), []))
            continue
        checked.append((arr, ids))
        groups.setdefault((flt.has_history, flt.config, flt.n_features, arr.shape[0]), []).append(i)
    for (history, config, _, n), members in groups.items():
        decided: tuple[list[np.ndarray], list[np.ndarray], list[SelectionReason]] | None = None
        try:
            if n and not history:
                zs = np.stack([checked[i][0] for i in members])
                picks = kmeans_representatives_many(zs, config.budget, seed=config.seed + int(round_index))
                decided = (picks, [np.full(p.size, np.nan) for p in picks], ["cold_start"] * len(members))
            elif n:
                decided = _select_by_score([flts[i] for i in members], [checked[i][0] for i in members], round_index)
        except Exception:  # never expected: each request is then decided, or fails, on its own
            logger.warning("batched selection of %d requests failed; one by one", len(members), exc_info=True)
        if decided is None:  # (or no candidates: nothing to batch)
            for i in members:
                try:
                    results[i] = flts[i].select(checked[i][0], checked[i][1], round_index)
                except Exception as exc:  # noqa: BLE001
                    results[i] = exc
            continue
        for i, chosen, chosen_scores, reason in zip(members, *decided):
            ids = checked[i][1]
            results[i] = Selection([ids[j] for j in chosen], chosen_scores, reason, chosen)
        logger.debug("round %d: %d selections of %d candidates together", round_index, len(members), n)
    return [r if r is not None else RuntimeError("select_many: request not decided") for r in results]


def _select_by_score(
    flts: list[LearnabilityFilter], arrs: list[np.ndarray], round_index: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[SelectionReason]]:
    """The selections of filters with history, of one config, width and candidate count."""
    cfg, (n, d) = flts[0].config, arrs[0].shape
    width = max(d, cfg.hidden, flts[0].gradient_dim, cfg.explore_hidden)
    per_chunk = max(1, _SCORE_CHUNK_ELEMENTS // (n * width))
    picks: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    reasons: list[SelectionReason] = []
    for start in range(0, len(flts), per_chunk):
        part = flts[start : start + per_chunk]
        block = _score_many(part, np.stack(arrs[start : start + per_chunk]))  # [G, n]
        order = np.argsort(-block, axis=1, kind="stable")
        for flt, arr, row, row_order in zip(part, arrs[start : start + per_chunk], block, order):
            chosen, reason = flt._by_score(row, row_order, arr, round_index)
            picks.append(chosen)
            scores.append(row[chosen])
            reasons.append(reason)
    return picks, scores, reasons


def _score_many(flts: Sequence[LearnabilityFilter], z: np.ndarray) -> np.ndarray:
    """:meth:`LearnabilityFilter.score` of G filters (one config and width) on their own checked
    float32 rows ``z`` [G, n, d], in batched products over the stacked weights; float64 [G, n]."""
    cfg = flts[0].config
    mean = np.stack([f._mean for f in flts])[:, None, :]
    std = np.stack([f._std for f in flts])[:, None, :]
    x = torch.from_numpy((z - mean) / std)  # each filter's own standardisation, as _standardise
    with torch.no_grad():
        out, g = _stacked_gradients(_stacked([f._layers("exploit") for f in flts]), x, cfg.explore_on)
        _, _, logit = _forward(_stacked([f._layers("explore") for f in flts]), g)
        total = out + cfg.exploration_weight * torch.tanh(logit)
    return total.numpy().astype(np.float64)


# ---------------------------------------------------------------------------- batched refit

# Adam's defaults, as torch.optim.Adam(params, lr=lr) uses them in eenet._train
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
# Most float32 values one chunk of a batched refit stacks per network input (a filter's padded
# replay buffer times the input width): 2**23 is 32 MiB, e.g. 62 full buffers (4096 rows) of the
# default filter (ExploreNet input 33 wide), 9 of explore_on="all" (225 wide).
_CHUNK_ELEMENTS = 2**23


def refit_many(filters: Sequence[LearnabilityFilter]) -> list[dict[str, float]]:
    """:meth:`LearnabilityFilter.refit` for many filters at once; one result per filter, in order.

    Closing a round refits one filter per client, and each refit is a few dozen Adam steps on two
    tiny MLPs, so per-filter refits spend their time in per-call overhead. Here the filters that
    share a :class:`FilterConfig` and feature width are refit together: their parameters are
    stacked, both networks are trained with batched matrix products (gradients in closed form),
    and one Adam, elementwise over the stacked parameters, steps them all. Each filter keeps its
    own standardisation, its own shuffling generator (from ``(seed, refit count)``), its own
    minibatches (buffers of different sizes are padded and masked; each loss is the mean over the
    filter's own rows), its own fresh Adam state and step count (a filter with fewer minibatches
    per epoch skips the steps it does not have), and the same epochs.

    The result equals per-filter refits up to float32 rounding, not bit for bit: batched products
    and masked sums add in another order, and Adam divides by the root of the squared gradient,
    so a weight whose gradient is itself rounding noise (e.g. a unit that is almost never active)
    can take a step of another size. Scores agree to ~1e-7 and all but a handful of weights to
    1e-5 (``tests/coordinator/allocation/test_refit_many.py``).

    A filter must appear once. Filters with an empty buffer are skipped (NaN losses), as by
    ``refit``. If it raises mid-way, some filters may be left half refit: the caller should drop
    them (as ``Allocator.saving_together`` does).
    """
    flts = list(filters)
    if len({id(f) for f in flts}) != len(flts):
        raise ValueError("refit_many: a filter appears more than once")
    results: list[dict[str, float] | None] = [None] * len(flts)
    groups: dict[tuple[FilterConfig, int], list[int]] = {}
    for i, flt in enumerate(flts):
        if not isinstance(flt, LearnabilityFilter):
            raise ValueError(f"refit_many takes LearnabilityFilter objects, got {type(flt).__name__}")
        if flt.replay_size == 0:
            results[i] = flt._empty_refit()
        else:
            groups.setdefault((flt.config, flt.n_features), []).append(i)
    for (config, _), members in groups.items():
        # Similar buffer sizes together, so little is padded and few steps are skipped: a chunk
        # holds filters of at most twice its first filter's minibatches per epoch (one-minibatch
        # filters alone), and at most _CHUNK_ELEMENTS stacked input values.
        members.sort(key=lambda i: flts[i].replay_size)
        width = max(flts[members[0]].n_features, flts[members[0]].gradient_dim)
        chunks: list[list[int]] = []
        first_batches = 0
        for i in members:
            n = flts[i].replay_size
            batches = math.ceil(n / config.batch_size)
            if chunks and (
                (len(chunks[-1]) + 1) * n * width <= _CHUNK_ELEMENTS
                and (batches == first_batches or (first_batches > 1 and batches <= 2 * first_batches))
            ):
                chunks[-1].append(i)
            else:
                chunks.append([i])
                first_batches = batches
        for chunk in chunks:
            for j, res in zip(chunk, _refit_chunk([flts[j] for j in chunk])):
                results[j] = res
    return [r if r is not None else {} for r in results]


def _padded(rows: Sequence[torch.Tensor], n_max: int) -> torch.Tensor:
    """Stack tensors of different lengths along a new first axis, zero-padded to ``n_max`` rows."""
    out = torch.zeros((len(rows), n_max, *rows[0].shape[1:]), dtype=rows[0].dtype)
    for k, r in enumerate(rows):
        out[k, : r.shape[0]] = r
    return out


def _stacked(nets: Sequence[_Layers]) -> list[torch.Tensor]:
    """[fc1.weight [G, h, k], fc1.bias [G, h], fc2.weight as [G, h], fc2.bias [G, 1]] of G nets
    (each given by :meth:`LearnabilityFilter._layers`)."""
    with torch.no_grad():
        return [torch.stack([layers[i] for layers in nets]) for i in range(4)]


def _unstack(params: Sequence[torch.Tensor], modules: Sequence[_ExploitNet | _ExploreNet]) -> None:
    w1, b1, w2, b2 = params
    with torch.no_grad():
        for k, m in enumerate(modules):
            m.fc1.weight.copy_(w1[k])
            m.fc1.bias.copy_(b1[k])
            m.fc2.weight.copy_(w2[k].unsqueeze(0))
            m.fc2.bias.copy_(b2[k])


def _forward(params: Sequence[torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """G nets on their own rows ``x`` [G, B, k]: (first layer's pre-activation, hidden, logit [G, B])."""
    w1, b1, w2, b2 = params
    pre = torch.baddbmm(b1.unsqueeze(1), x, w1.transpose(1, 2))  # [G, B, h]
    hidden = torch.relu(pre)
    return pre, hidden, (hidden * w2.unsqueeze(1)).sum(-1) + b2


def _stacked_gradients(
    params: Sequence[torch.Tensor], x: torch.Tensor, explore_on: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`LearnabilityFilter._gradients` for G stacked ExploitNets on rows ``x`` [G, N, k]."""
    pre, hidden, logit = _forward(params, x)
    out = torch.sigmoid(logit)
    dsig = (out * (1.0 - out)).unsqueeze(-1)
    last = torch.cat([dsig * hidden, dsig], dim=2)
    if explore_on == "last_layer":
        return out, last
    g_b1 = dsig * params[2].unsqueeze(1) * (pre > 0).to(x.dtype)  # [G, N, h]
    g_w1 = (g_b1.unsqueeze(-1) * x.unsqueeze(2)).reshape(x.shape[0], x.shape[1], -1)
    return out, torch.cat([g_w1, g_b1, last], dim=2)


def _refit_chunk(flts: list[LearnabilityFilter]) -> list[dict[str, float]]:
    """Refit filters of one config and feature width, all with non-empty buffers, together."""
    cfg = flts[0].config
    xs, ys, gens = [], [], []
    for f in flts:
        prepared = f._prepare_refit()
        assert prepared is not None  # the caller passes non-empty buffers only
        xs.append(prepared[0])
        ys.append(prepared[1])
        gens.append(prepared[2])
    sizes = [int(x.shape[0]) for x in xs]
    x_all, y_all = _padded(xs, max(sizes)), _padded(ys, max(sizes))  # [G, N, d], [G, N]
    with torch.no_grad():
        exploit = _stacked([f._layers("exploit") for f in flts])
        exploit_losses = _train_many(exploit, "sigmoid", x_all, y_all, sizes, gens, cfg)
        _unstack(exploit, [f._exploit for f in flts])
        out, g = _stacked_gradients(exploit, x_all, cfg.explore_on)
        explore = _stacked([f._layers("explore") for f in flts])
        explore_losses = _train_many(explore, "tanh", g, y_all - out, sizes, gens, cfg)
        _unstack(explore, [f._explore for f in flts])
    return [f._finish_refit(a, b) for f, a, b in zip(flts, exploit_losses, explore_losses)]


def _train_many(
    params: list[torch.Tensor],
    output: Literal["sigmoid", "tanh"],
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    size_list: list[int],
    generators: Sequence[torch.Generator],
    config: FilterConfig,
) -> list[float]:
    """``eenet._train`` for G two-layer MLPs (``fc1 -> relu -> fc2 -> output``) of one shape at once.

    ``params`` (from :func:`_stacked`) are trained in place on each net's first ``size_list[k]``
    rows of ``x_all`` [G, N, k] / ``y_all`` [G, N]; returns each net's last-epoch mean loss. The
    gradients are computed in closed form: the output layer has one unit, so only the first
    layer needs a batched matrix product each way, and autograd's per-op overhead is avoided.
    """
    epochs, lr, batch_size = config.refit_epochs, config.lr, config.batch_size
    n_nets, n_max = len(size_list), max(size_list)
    sizes = torch.tensor(size_list, dtype=torch.int64)
    n_batches = math.ceil(n_max / batch_size)
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    steps = np.zeros(n_nets, dtype=np.int64)
    beta1, beta2 = _ADAM_BETAS
    nets = torch.arange(n_nets).unsqueeze(1)
    valid = torch.arange(n_max).unsqueeze(0) < sizes.unsqueeze(1)  # [G, N]: the rows each net has
    totals = [0.0] * n_nets

    def per_net(values: np.ndarray | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        t = values if isinstance(values, torch.Tensor) else torch.from_numpy(values.astype(np.float32))
        return t.reshape(n_nets, *([1] * (like.dim() - 1)))

    for epoch in range(epochs):
        if n_batches > 1:
            order = torch.zeros((n_nets, n_max), dtype=torch.int64)
            for k, (n, gen) in enumerate(zip(size_list, generators)):
                order[k, :n] = torch.randperm(n, generator=gen)
        # else: every net's one minibatch is its whole buffer, whatever the order (which only
        # changes the order of a sum); the generator is not used after this refit
        for b in range(n_batches):
            # no wider than the largest minibatch: a buffer smaller than batch_size pads nothing
            cols = slice(b * batch_size, min((b + 1) * batch_size, n_max))
            counts = (sizes - b * batch_size).clamp(0, batch_size)  # rows of this minibatch per net
            active = counts > 0
            if n_batches > 1:
                idx = order[:, cols]
                x, y = x_all[nets, idx], y_all[nets, idx]  # [G, B, k], [G, B]
            else:
                x, y = x_all, y_all
            pre, hidden, logit = _forward(params, x)
            out = torch.sigmoid(logit) if output == "sigmoid" else torch.tanh(logit)
            err = (out - y) * valid[:, cols]
            rows = counts.clamp(min=1).to(err.dtype).unsqueeze(1)
            # gradient of sum(losses), each net's loss the mean over its own rows
            d_logit = (2.0 * err / rows) * (out * (1.0 - out) if output == "sigmoid" else 1.0 - out * out)
            d_pre = d_logit.unsqueeze(-1) * params[2].unsqueeze(1) * (pre > 0)  # [G, B, h]
            grads = [
                torch.bmm(d_pre.transpose(1, 2), x),  # [G, h, k]
                d_pre.sum(dim=1),
                (d_logit.unsqueeze(-1) * hidden).sum(dim=1),
                d_logit.sum(dim=1, keepdim=True),
            ]
            # torch.optim.Adam's (single-tensor) update, each net with its own step count
            all_active = bool(active.all())
            steps += active.numpy()
            step = np.maximum(steps, 1).astype(np.float64)
            step_size = lr / (1 - beta1**step)
            bias_correction2_sqrt = (1 - beta2**step) ** 0.5
            for p, m, v, g in zip(params, exp_avg, exp_avg_sq, grads):
                if all_active:
                    m.lerp_(g, 1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = v.sqrt().div_(per_net(bias_correction2_sqrt, p)).add_(_ADAM_EPS)
                    p.sub_(torch.div(m, denom).mul_(per_net(step_size, p)))
                    continue
                keep = per_net(active, p)  # a net without this minibatch keeps its state
                new_m = torch.lerp(m, g, 1 - beta1)
                new_v = (v * beta2).addcmul_(g, g, value=1 - beta2)
                denom = (new_v.sqrt() / per_net(bias_correction2_sqrt, p)).add_(_ADAM_EPS)
                new_p = p - per_net(step_size, p) * (new_m / denom)
                m.copy_(torch.where(keep, new_m, m))
                v.copy_(torch.where(keep, new_v, v))
                p.copy_(torch.where(keep, new_p, p))
            if epoch == epochs - 1:
                losses = (err * err).sum(dim=1) / rows.squeeze(1)
                for k, (loss, count) in enumerate(zip(losses.tolist(), counts.tolist())):
                    if count:
                        totals[k] += loss * count
    return [total / n for total, n in zip(totals, size_list)]
