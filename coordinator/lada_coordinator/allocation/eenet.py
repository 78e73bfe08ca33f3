"""EE-Net style learnability filter: one bandit per (client, direction).

Each round the coordinator must decide which public candidates a client (or, in the LLM direction,
the LLM) should learn from, seeing only a small feature vector z(x) per candidate (the learnability
gap) and, after training, one *common* reward for the whole allocated set. The filter follows EE-Net
(Ban et al., ICLR 2022):

* **ExploitNet** f1: MLP ``d -> hidden -> 1`` with a sigmoid output, so predictions live in [0, 1]
  like the rewards (relative perplexity drops clipped to [0, 1]).
* **ExploreNet** f2: MLP ``g -> explore_hidden -> 1`` with a tanh output, fed the gradient of f1's
  output with respect to f1's parameters and trained to predict the residual ``r - f1(z)`` (which
  lies in [-1, 1]). The gradient encodes where f1 is sensitive, i.e. how much a reward there would
  move it, which is what makes f2 an exploration bonus rather than a second regressor on z.
* ``score(x) = f1(z) + lambda * f2(grad f1(z))``.

Design decisions (all configurable through :class:`FilterConfig`):

* ``explore_on="last_layer"`` (default) feeds f2 only the gradient w.r.t. f1's output layer
  (``hidden + 1`` values, ``sigma'(a) * [h, 1]``), which keeps f2 small and is enough signal when
  f1 has a reasonably wide hidden layer. ``"all"`` uses every parameter of f1
  (``d*hidden + 2*hidden + 1`` values), closer to the original EE-Net at a higher cost. Both are
  computed in closed form for the whole batch: f1 has two layers, so this is exact and far cheaper
  than per-sample autograd (scoring 256 candidates is a handful of small matrix products).
* The raw gradient is fed to f2 without normalisation: f2 is refit against the current f1 after
  every round, so it never sees gradients from a stale f1.
* **Feature standardisation.** Raw features have very different scales (NLLs ~1-10, lengths ~50),
  so inputs are standardised with a per-feature mean/std. The statistics are re-estimated from the
  replay buffer (which includes the batch just observed) at every :meth:`LearnabilityFilter.refit`
  and then frozen until the next refit, so training and scoring always use the same transform and a
  candidate's score never depends on which other candidates share its batch. Before the first refit
  the transform is the identity; scores are uninformative then anyway and selection uses k-means.
* Refits warm-start from the previous weights (the bandit keeps learning across rounds) with a
  fresh Adam state, so the persisted state is weights + buffer + statistics only.
  :func:`refit_many` refits many filters at once (a round close), with the same semantics per
  filter and the same result up to float32 rounding; :func:`select_many` allocates for many
  filters at once (a round's allocation), with ``select``'s selections.
* The networks are built when first needed: a filter read from its blob keeps its weights as
  arrays, which batched scoring reads directly, and a fresh filter draws its initial weights
  (from ``seed``, so always the same) only when it scores or is refit.
* Determinism: weights are initialised from a generator seeded with ``seed``; the shuffling of
  each refit uses a generator derived from ``(seed, refit count)``; cold-start k-means uses
  ``seed + round_index``. The process-global torch/numpy RNGs are never touched.
* Threads are the caller's choice. The matrices here are tiny, so a multi-threaded BLAS/OpenMP pool
  only adds latency and, on a loaded host, can stall a call by a whole scheduler slice (~10 ms);
  a coordinator scoring many clients should run with ``torch.set_num_threads(1)`` (and
  ``OMP_NUM_THREADS=1``) and parallelise across clients instead.

A filter is not thread-safe; the coordinator should use one instance per (client, direction) and
serialise access to it.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .cold_start import kmeans_representatives, kmeans_representatives_many
from .filter_config import FilterConfig

__all__ = [
    "FilterConfig",
    "LearnabilityFilter",
    "Selection",
    "SelectionReason",
    "refit_many",
    "select_many",
    "within_round_ranks",
]

logger = logging.getLogger(__name__)

SelectionReason = Literal["cold_start", "threshold", "floor", "cap"]
# one network's parameters as the batched code stacks them: fc1.weight [h, k], fc1.bias [h],
# fc2.weight's one row [h], fc2.bias [1]
_Layers = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


_FORMAT_VERSION = 1
_STD_FLOOR = 1e-6
_META_KEY = "__meta__"
_BLOB_MAGIC = b"LADAEEN2"  # to_bytes layout 2 (layout 1 was an npz archive)


def within_round_ranks(credits: np.ndarray) -> np.ndarray:
    """Each credit's rank among ``credits`` (one round's), scaled to [0, 1]; ties share their mean
    rank, a single credit is 0.5 (``FilterConfig.credit_scale``)."""
    n = len(credits)
    if n < 2:
        return np.full(n, 0.5)
    order = credits.argsort(kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(n, dtype=np.float64)
    values, inverse = np.unique(credits, return_inverse=True)
    if len(values) < n:  # ties: the mean of their ranks
        ranks = (np.bincount(inverse, weights=ranks) / np.bincount(inverse))[inverse]
    return ranks / (n - 1)


def _config_from_dict(data: Mapping[str, Any]) -> FilterConfig:
    """``FilterConfig.from_dict``, remembered: a coordinator's filters share one or two configs, and
    validating one costs more than a tenth of reading a filter. Keyed by each value's type too, so
    a value the strict validation rejects (``32.0`` for ``32``, ``True`` for ``1``) is still
    rejected."""
    try:
        key = tuple(sorted((k, type(v).__name__, v) for k, v in data.items()))
        hash(key)
    except TypeError:  # unhashable or unorderable: validated (and rejected) the long way
        return FilterConfig.from_dict(data)
    return _cached_config(key)


@functools.lru_cache(maxsize=64)
def _cached_config(key: tuple[tuple[Any, str, Any], ...]) -> FilterConfig:
    return FilterConfig.from_dict({k: v for k, _, v in key})


@dataclass
class Selection:
    """Outcome of one allocation decision.

    Attributes:
        sample_ids: selected candidates, highest score first (cluster order for cold start).
        scores: filter scores of the selected candidates, aligned with ``sample_ids``. During
            cold start they come from untrained networks and carry no information.
        reason: which rule determined the set size: ``"cold_start"`` (k-means, no reward history),
            ``"threshold"`` (all candidates above the threshold), ``"cap"`` (more passed than the
            budget; top ``budget`` kept) or ``"floor"`` (fewer passed than the floor; filled by
            top score).
        indices: positions of the selected candidates in the scored matrix, so the caller can pass
            ``z[indices]`` to :meth:`LearnabilityFilter.observe` once the reward is known.
    """

    sample_ids: list[str]
    scores: np.ndarray
    reason: SelectionReason
    indices: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


class _Dense(nn.Module):
    """Affine layer initialised from a private generator.

    ``nn.Linear`` draws its initial weights from the process-global RNG; building the weights here
    keeps filters deterministic and independent of whatever else the process does with torch.
    """

    def __init__(self, n_in: int, n_out: int, generator: torch.Generator | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in))
        self.bias = nn.Parameter(torch.empty(n_out))
        if generator is not None:  # None: the caller loads saved weights next
            bound = 1.0 / math.sqrt(n_in)  # PyTorch's default Linear bounds
            with torch.no_grad():
                self.weight.uniform_(-bound, bound, generator=generator)
                self.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class _ExploitNet(nn.Module):
    """f1: predicts the reward of a candidate from its standardised features."""

    def __init__(self, n_in: int, hidden: int, generator: torch.Generator | None) -> None:
        super().__init__()
        self.fc1 = _Dense(n_in, hidden, generator)
        self.fc2 = _Dense(hidden, 1, generator)

    def hidden_and_output(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.fc1(x))
        return h, torch.sigmoid(self.fc2(h)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden_and_output(x)[1]


class _ExploreNet(nn.Module):
    """f2: predicts f1's residual from f1's parameter gradient."""

    def __init__(self, n_in: int, hidden: int, generator: torch.Generator | None) -> None:
        super().__init__()
        self.fc1 = _Dense(n_in, hidden, generator)
        self.fc2 = _Dense(hidden, 1, generator)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc2(torch.relu(self.fc1(g)))).squeeze(-1)


def _train(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """Minibatch Adam on MSE; returns the mean loss of the last epoch."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    n = inputs.shape[0]
    last = float("nan")
    model.train()
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                loss = torch.mean((model(inputs[idx]) - targets[idx]) ** 2)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * idx.numel()
            last = total / n
    model.eval()
    return last


class LearnabilityFilter:
    """Per-(client, direction) contextual bandit deciding which candidates are worth learning.

    Typical round::

        sel = flt.select(z, ids, round_index=t)        # allocate
        ...                                            # client trains, reward r is measured
        flt.observe(z[sel.indices], r)                 # common reward for the whole set
        flt.refit()                                    # retrain on the replay buffer
    """

    def __init__(self, n_features: int, config: FilterConfig | None = None, *, _random_init: bool = True) -> None:
        if not _is_int(n_features) or n_features < 1:
            raise ValueError(f"n_features must be a positive integer, got {n_features!r}")
        self.n_features = int(n_features)
        self.config = config if config is not None else FilterConfig()
        if not isinstance(self.config, FilterConfig):
            raise ValueError(f"config must be a FilterConfig, got {type(self.config).__name__}")

        # The networks are built when first used (_networks): building two nn.Modules costs more
        # than scoring, and round 1 (k-means) or batched scoring (select_many) need none. Until
        # then the weights are the seeded initial draw, or _saved_weights (from_bytes: loaded
        # right after, so nothing is drawn).
        self._nets: tuple[_ExploitNet, _ExploreNet] | None = None
        self._saved_weights: dict[str, dict[str, np.ndarray]] | None = None
        self._random_init = _random_init

        self._mean = np.zeros(self.n_features, dtype=np.float32)
        self._std = np.ones(self.n_features, dtype=np.float32)
        self._buffer_z = np.empty((0, self.n_features), dtype=np.float32)
        self._buffer_r = np.empty(0, dtype=np.float32)
        self._fit_count = 0

    # ------------------------------------------------------------------ networks

    @property
    def _exploit(self) -> _ExploitNet:
        return self._networks()[0]

    @property
    def _explore(self) -> _ExploreNet:
        return self._networks()[1]

    def _networks(self) -> tuple[_ExploitNet, _ExploreNet]:
        """The two networks, built on first use: from the saved weights if there are any, else
        drawn from a generator seeded with ``config.seed`` (the same draws whenever they are
        built)."""
        if self._nets is None:
            saved = self._saved_weights
            if saved is None and not self._random_init:
                raise RuntimeError("filter networks have neither saved nor initial weights")
            init_gen = torch.Generator().manual_seed(self.config.seed) if saved is None else None
            exploit = _ExploitNet(self.n_features, self.config.hidden, init_gen)
            explore = _ExploreNet(self.gradient_dim, self.config.explore_hidden, init_gen)
            if saved is not None:
                with torch.no_grad():  # names and shapes were checked by load_state_dict
                    for module, arrays in ((exploit, saved["exploit"]), (explore, saved["explore"])):
                        for name, param in module.named_parameters():
                            param.copy_(torch.from_numpy(arrays[name]))
            exploit.eval()
            explore.eval()
            self._nets = (exploit, explore)
            self._saved_weights = None
        return self._nets

    def _layers(self, net: Literal["exploit", "explore"]) -> _Layers:
        """One network's (fc1.weight, fc1.bias, fc2.weight row, fc2.bias), as :func:`_stacked`
        takes them: views of the saved arrays while the network is not built, so scoring many
        filters (:func:`select_many`) builds no module."""
        if self._saved_weights is not None:
            a = self._saved_weights[net]
            return (
                torch.from_numpy(a["fc1.weight"]),
                torch.from_numpy(a["fc1.bias"]),
                torch.from_numpy(a["fc2.weight"][0]),
                torch.from_numpy(a["fc2.bias"]),
            )
        m = self._exploit if net == "exploit" else self._explore
        return m.fc1.weight, m.fc1.bias, m.fc2.weight[0], m.fc2.bias

    def _net_arrays(self, net: Literal["exploit", "explore"]) -> dict[str, np.ndarray]:
        """One network's parameters by ``state_dict`` name, in its order (views, not copies)."""
        if self._saved_weights is not None:
            return self._saved_weights[net]
        m = self._exploit if net == "exploit" else self._explore
        return {k: v.detach().numpy() for k, v in m.state_dict().items()}

    def _param_shapes(self, net: Literal["exploit", "explore"]) -> dict[str, tuple[int, ...]]:
        cfg = self.config
        n_in, hidden = (self.n_features, cfg.hidden) if net == "exploit" else (self.gradient_dim, cfg.explore_hidden)
        return {"fc1.weight": (hidden, n_in), "fc1.bias": (hidden,), "fc2.weight": (1, hidden), "fc2.bias": (1,)}

    # ------------------------------------------------------------------ properties

    @property
    def gradient_dim(self) -> int:
        """Width of ExploreNet's input (size of the gradient of f1 it sees)."""
        hidden = self.config.hidden
        if self.config.explore_on == "last_layer":
            return hidden + 1
        return self.n_features * hidden + hidden + hidden + 1

    @property
    def has_history(self) -> bool:
        """Whether the networks have been fitted to at least one reward."""
        return self._fit_count > 0

    @property
    def effective_threshold(self) -> float:
        """The score a candidate must exceed, on the scale ``threshold_scale`` names."""
        cfg = self.config
        if cfg.threshold_scale == "reward_max" and self._buffer_r.size and float(self._buffer_r.max()) > 0:
            return cfg.threshold * float(self._buffer_r.max())
        return cfg.threshold

    @property
    def fit_count(self) -> int:
        """Number of refits performed on a non-empty replay buffer."""
        return self._fit_count

    @property
    def replay_size(self) -> int:
        """Number of (z, r) pairs in the replay buffer."""
        return int(self._buffer_r.shape[0])

    # ------------------------------------------------------------------ validation

    def _check_features(self, z: np.ndarray, name: str = "z") -> np.ndarray:
        arr = np.asarray(z)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
        if arr.ndim == 1 and arr.shape[0] == self.n_features:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.n_features:
            raise ValueError(f"{name} must have shape [n, {self.n_features}] (one row per candidate), got {arr.shape}")
        with np.errstate(over="ignore"):
            arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values (or values beyond float32)")
        return arr

    # ------------------------------------------------------------------ scoring

    def _standardise(self, z: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((z - self._mean) / self._std)

    def _gradients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f1(x) and the per-sample gradient of f1 w.r.t. its parameters (as configured).

        Closed form for ``f1 = sigmoid(w2 . relu(W1 x + b1) + b2)``, batched over rows; the column
        order follows ``named_parameters()`` (fc1.weight, fc1.bias, fc2.weight, fc2.bias).
        """
        net = self._exploit
        with torch.no_grad():
            pre = net.fc1(x)
            h = torch.relu(pre)
            out = torch.sigmoid(net.fc2(h)).squeeze(-1)
            dsig = (out * (1.0 - out)).unsqueeze(-1)  # sigmoid'(.)
            last = torch.cat([dsig * h, dsig], dim=1)  # d/d[w2, b2] = sigmoid' * [h, 1]
            if self.config.explore_on == "last_layer":
                return out, last
            # d/db1 = sigmoid' * w2 * 1[pre > 0];  d/dW1 = d/db1 (outer) x
            g_b1 = dsig * net.fc2.weight * (pre > 0).to(x.dtype)
            g_w1 = (g_b1.unsqueeze(-1) * x.unsqueeze(1)).reshape(x.shape[0], -1)
            return out, torch.cat([g_w1, g_b1, last], dim=1)

    def score(self, z: np.ndarray) -> np.ndarray:
        """Exploit prediction plus weighted exploration bonus per row of ``z`` (shape ``[n]``)."""
        arr = self._check_features(z)
        if arr.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        out, g = self._gradients(self._standardise(arr))
        with torch.no_grad():
            bonus = self._explore(g)
            total = out + self.config.exploration_weight * bonus
        return total.numpy().astype(np.float64)

    # ------------------------------------------------------------------ selection

    def select(self, z: np.ndarray, sample_ids: Sequence[str], round_index: int) -> Selection:
        """Choose which candidates to allocate this round.

        Without reward history (no successful refit yet) the budget is spread by k-means
        representatives. Otherwise candidates scoring above ``threshold`` are taken, capped at
        ``budget`` by top score and, if fewer than the floor pass, filled to the floor by top
        score; ``coverage_fraction`` of that set is then spread over the candidates the score did
        not pick. Never returns more candidates than supplied.
        """
        arr, ids = self._check_selection(z, sample_ids, round_index)
        cfg = self.config
        scores = self.score(arr)
        reason: SelectionReason

        if not self.has_history:
            chosen = kmeans_representatives(arr, cfg.budget, seed=cfg.seed + int(round_index))
            reason = "cold_start"
        else:
            chosen, reason = self._by_score(scores, np.argsort(-scores, kind="stable"), arr, round_index)

        logger.debug("round %d: selected %d/%d candidates (%s)", round_index, chosen.size, arr.shape[0], reason)
        return Selection(
            sample_ids=[ids[i] for i in chosen],
            scores=scores[chosen],
            reason=reason,
            indices=chosen,
        )

    def _check_selection(
        self, z: np.ndarray, sample_ids: Sequence[str], round_index: int
    ) -> tuple[np.ndarray, list[str]]:
        """:meth:`select`'s checks of its arguments: the features as float32, the ids as a list."""
        arr = self._check_features(z)
        ids = list(sample_ids)
        if len(ids) != arr.shape[0]:
            raise ValueError(f"sample_ids has {len(ids)} entries but z has {arr.shape[0]} rows")
        if len(set(ids)) != len(ids):
            raise ValueError("sample_ids contains duplicates")
        if not _is_int(round_index) or round_index < 0:
            raise ValueError(f"round_index must be a non-negative integer, got {round_index!r}")
        return arr, ids

    def _by_score(
        self, scores: np.ndarray, order: np.ndarray, z: np.ndarray, round_index: int
    ) -> tuple[np.ndarray, SelectionReason]:
        """The selection of a filter with history, from its ``scores``, their ``order`` (stable
        argsort of ``-scores``) and the checked features ``z``: above the threshold, capped at the
        budget, filled to the floor; then ``config.coverage(take)`` of those places go to k-means
        representatives of the candidates not picked by score (after the scored ones)."""
        cfg = self.config
        n_pass = int(np.count_nonzero(scores > self.effective_threshold))
        floor = min(cfg.floor, scores.shape[0])
        reason: SelectionReason
        if n_pass > cfg.budget:
            take, reason = cfg.budget, "cap"
        elif n_pass < floor:
            take, reason = floor, "floor"
        else:
            take, reason = n_pass, "threshold"
        spread = min(cfg.coverage(take), scores.shape[0] - take)
        if spread <= 0:
            return order[:take].astype(np.int64), reason
        rest = order[take - spread :]
        picked = rest[kmeans_representatives(z[rest], spread, seed=cfg.seed + int(round_index))]
        return np.concatenate([order[: take - spread], picked]).astype(np.int64), reason

    # ------------------------------------------------------------------ learning

    def observe(self, z: np.ndarray, reward: float | Sequence[float] | np.ndarray) -> None:
        """Add the allocated candidates' features with their reward to the replay buffer.

        ``reward`` is the round's common reward (a scalar shared by every row) or one credit per
        row, kept as ``config.credit_scale`` says (by default their ranks within this call, which
        is one round's). The buffer keeps the most recent ``replay_capacity`` pairs.
        """
        arr = self._check_features(z)
        r = np.asarray(reward, dtype=np.float64)
        if r.ndim == 0:
            r = np.full(arr.shape[0], float(r))
        elif r.shape != (arr.shape[0],):
            raise ValueError(f"reward must be a scalar or have shape ({arr.shape[0]},), got {r.shape}")
        if not np.isfinite(r).all():
            raise ValueError("reward contains NaN or infinite values")
        if r.size and (r.min() < 0.0 or r.max() > 1.0):
            raise ValueError(f"reward must lie in [0, 1], got values in [{r.min():.4g}, {r.max():.4g}]")
        if arr.shape[0] == 0:
            return
        if np.ndim(reward) == 1 and self.config.credit_scale == "round_rank":
            r = within_round_ranks(r)
        cap = self.config.replay_capacity
        self._buffer_z = np.concatenate([self._buffer_z, arr])[-cap:]
        self._buffer_r = np.concatenate([self._buffer_r, r.astype(np.float32)])[-cap:]

    def refit(self) -> dict[str, float]:
        """Re-estimate standardisation, then train f1 on (z, r) and f2 on (grad f1, r - f1).

        Returns:
            ``{"exploit_loss", "explore_loss", "n_samples"}`` with last-epoch mean MSEs. With an
            empty buffer nothing is trained and the losses are NaN.

        :func:`refit_many` does the same for many filters at once.
        """
        prepared = self._prepare_refit()
        if prepared is None:
            return self._empty_refit()
        x, y, gen = prepared
        cfg = self.config
        exploit_loss = _train(
            self._exploit,
            x,
            y,
            epochs=cfg.refit_epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            generator=gen,
        )
        out, g = self._gradients(x)
        explore_loss = _train(
            self._explore,
            g,
            (y - out).detach(),
            epochs=cfg.refit_epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            generator=gen,
        )
        return self._finish_refit(exploit_loss, explore_loss)

    @staticmethod
    def _empty_refit() -> dict[str, float]:
        logger.debug("refit skipped: replay buffer is empty")
        return {"exploit_loss": float("nan"), "explore_loss": float("nan"), "n_samples": 0.0}

    def _prepare_refit(self) -> tuple[torch.Tensor, torch.Tensor, torch.Generator] | None:
        """First half of a refit: new standardisation statistics, then (x, y, shuffling generator).

        None when the buffer is empty (nothing is trained then)."""
        if self.replay_size == 0:
            return None
        mean = self._buffer_z.mean(axis=0, dtype=np.float64)
        std = self._buffer_z.std(axis=0, dtype=np.float64)
        self._mean = mean.astype(np.float32)
        self._std = np.where(std < _STD_FLOOR, 1.0, std).astype(np.float32)
        seed_state = np.random.SeedSequence([self.config.seed, self._fit_count]).generate_state(1)[0]
        gen = torch.Generator().manual_seed(int(seed_state))
        return self._standardise(self._buffer_z), torch.from_numpy(self._buffer_r), gen

    def _finish_refit(self, exploit_loss: float, explore_loss: float) -> dict[str, float]:
        n = self.replay_size
        self._fit_count += 1
        logger.debug(
            "refit %d on %d samples: exploit_loss=%.4g explore_loss=%.4g",
            self._fit_count,
            n,
            exploit_loss,
            explore_loss,
        )
        return {"exploit_loss": exploit_loss, "explore_loss": explore_loss, "n_samples": float(n)}

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Plain-data snapshot: numpy arrays plus JSON-able scalars and config."""
        return {
            "format_version": _FORMAT_VERSION,
            "n_features": self.n_features,
            "config": self.config.to_dict(),
            "fit_count": self._fit_count,
            "scaler_mean": self._mean.copy(),
            "scaler_std": self._std.copy(),
            "buffer_z": self._buffer_z.copy(),
            "buffer_r": self._buffer_r.copy(),
            "exploit": {k: v.copy() for k, v in self._net_arrays("exploit").items()},
            "explore": {k: v.copy() for k, v in self._net_arrays("explore").items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the config and feature width must match this filter."""
        try:
            version = int(state["format_version"])
            n_features = int(state["n_features"])
            config = _config_from_dict(state["config"])
            fit_count = int(state["fit_count"])
            mean = np.asarray(state["scaler_mean"], dtype=np.float32)
            std = np.asarray(state["scaler_std"], dtype=np.float32)
            buffer_z = np.asarray(state["buffer_z"], dtype=np.float32)
            buffer_r = np.asarray(state["buffer_r"], dtype=np.float32)
            exploit = {k: np.asarray(v, dtype=np.float32) for k, v in state["exploit"].items()}
            explore = {k: np.asarray(v, dtype=np.float32) for k, v in state["explore"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed filter state: {exc!r}") from exc
        if version != _FORMAT_VERSION:
            raise ValueError(f"unsupported filter state version {version}")
        if n_features != self.n_features:
            raise ValueError(f"state has {n_features} features but this filter expects {self.n_features}")
        if config != self.config:
            raise ValueError("state was saved with a different FilterConfig")
        if fit_count < 0:
            raise ValueError(f"fit_count must be >= 0, got {fit_count}")
        if mean.shape != (n_features,) or std.shape != (n_features,) or (std <= 0).any():
            raise ValueError("scaler statistics have the wrong shape or non-positive std")
        if buffer_z.ndim != 2 or buffer_z.shape[1] != n_features:
            raise ValueError(f"buffer_z has shape {buffer_z.shape}, expected [m, {n_features}]")
        if buffer_r.shape != (buffer_z.shape[0],):
            raise ValueError("buffer_r and buffer_z lengths differ")
        if buffer_r.shape[0] > config.replay_capacity:
            raise ValueError("replay buffer exceeds replay_capacity")
        for arr in (mean, std, buffer_z, buffer_r):
            if not np.isfinite(arr).all():
                raise ValueError("filter state contains NaN or infinite values")

        weights = {
            "exploit": self._checked_weights(exploit, "exploit"),
            "explore": self._checked_weights(explore, "explore"),
        }
        if self._nets is not None:
            with torch.no_grad():  # names and shapes were checked: copy straight into the parameters
                for module, label in ((self._nets[0], "exploit"), (self._nets[1], "explore")):
                    for name, param in module.named_parameters():
                        param.copy_(torch.from_numpy(weights[label][name]))
        else:  # kept as arrays until the networks are needed (_networks)
            self._saved_weights = weights
        self._mean, self._std = mean.copy(), std.copy()
        self._buffer_z, self._buffer_r = buffer_z.copy(), buffer_r.copy()
        self._fit_count = fit_count

    def _checked_weights(
        self, arrays: Mapping[str, np.ndarray], label: Literal["exploit", "explore"]
    ) -> dict[str, np.ndarray]:
        """Copies of one network's parameters, in ``state_dict`` order, once their names, shapes
        and values are checked."""
        expected = self._param_shapes(label)
        if set(arrays) != set(expected):
            raise ValueError(f"{label} parameters {sorted(arrays)} do not match expected {sorted(expected)}")
        out: dict[str, np.ndarray] = {}
        for name, shape in expected.items():
            arr = arrays[name]
            if tuple(arr.shape) != shape:
                raise ValueError(f"{label}.{name} has shape {arr.shape}, expected {shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"{label}.{name} contains NaN or infinite values")
            out[name] = np.array(arr, dtype=np.float32)  # a copy: the filter owns its weights
        return out

    def to_bytes(self) -> bytes:
        """Serialise for storage as a database blob (no pickled objects).

        Layout: :data:`_BLOB_MAGIC`, a little-endian ``uint32`` header length, a JSON header
        (format version, feature width, config, fit count, and the name and shape of every
        array), then all arrays as one little-endian float32 buffer in header order. A restarted
        coordinator decodes one header and one buffer per filter (:meth:`from_bytes`) instead of a
        13-member npz archive. Blobs of the older npz layout are still read.
        """
        arrays: list[tuple[str, np.ndarray]] = [
            ("scaler_mean", self._mean),
            ("scaler_std", self._std),
            ("buffer_z", self._buffer_z),
            ("buffer_r", self._buffer_r),
        ]
        for prefix in ("exploit", "explore"):
            arrays += [(f"{prefix}.{k}", v) for k, v in self._net_arrays(prefix).items()]
        header = json.dumps(
            {
                "format_version": _FORMAT_VERSION,
                "n_features": self.n_features,
                "config": self.config.to_dict(),
                "fit_count": self._fit_count,
                "arrays": [[name, list(arr.shape)] for name, arr in arrays],
            },
            sort_keys=True,
        ).encode()
        body = b"".join(np.ascontiguousarray(arr, dtype="<f4").tobytes() for _, arr in arrays)
        return _BLOB_MAGIC + struct.pack("<I", len(header)) + header + body

    @classmethod
    def from_bytes(cls, data: bytes) -> LearnabilityFilter:
        """Rebuild a filter from :meth:`to_bytes` output; corrupt input raises ``ValueError``."""
        data = bytes(data)
        state = cls._decode_blob(data) if data.startswith(_BLOB_MAGIC) else cls._decode_npz(data)
        try:
            config = _config_from_dict(state["config"])
            flt = cls(int(state["n_features"]), config, _random_init=False)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed filter state: {exc!r}") from exc
        flt.load_state_dict(state)
        return flt

    @staticmethod
    def _decode_blob(data: bytes) -> dict[str, Any]:
        """The state dict of a :meth:`to_bytes` blob (validated later by ``load_state_dict``)."""
        try:
            start = len(_BLOB_MAGIC) + 4
            (size,) = struct.unpack_from("<I", data, len(_BLOB_MAGIC))
            meta = json.loads(data[start : start + size])
            layout = [(str(name), tuple(int(d) for d in shape)) for name, shape in meta.pop("arrays")]
            flat = np.frombuffer(data, dtype="<f4", offset=start + size).astype(np.float32)
        except (struct.error, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"cannot decode filter state: {exc}") from exc
        if not isinstance(meta, dict):
            raise ValueError("cannot decode filter state: metadata is not an object")
        if sum(math.prod(shape) for _, shape in layout) != flat.size:
            raise ValueError("cannot decode filter state: array sizes do not match the buffer")
        state: dict[str, Any] = dict(meta)
        state["exploit"], state["explore"] = {}, {}
        offset = 0
        for name, shape in layout:
            size = math.prod(shape)
            arr = flat[offset : offset + size].reshape(shape)
            offset += size
            prefix, _, param = name.partition(".")
            if prefix in ("exploit", "explore") and param:
                state[prefix][param] = arr
            else:
                state[name] = arr
        return state

    @staticmethod
    def _decode_npz(data: bytes) -> dict[str, Any]:
        """The state dict of a blob written by the first format (``np.savez``)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            meta = json.loads(str(arrays.pop(_META_KEY)[()]))
        except (OSError, KeyError, ValueError, EOFError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot decode filter state: {exc}") from exc
        if not isinstance(meta, dict):
            raise ValueError("cannot decode filter state: metadata is not an object")
        state: dict[str, Any] = dict(meta)
        state["exploit"], state["explore"] = {}, {}
        for key, value in arrays.items():
            prefix, _, name = key.partition(".")
            if prefix in ("exploit", "explore") and name:
                state[prefix][name] = value
            else:
                state[key] = value
        return state


# ---------------------------------------------------------------------------- batched selection

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

# Adam's defaults, as torch.optim.Adam(params, lr=lr) uses them in _train
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
    """:func:`_train` for G two-layer MLPs (``fc1 -> relu -> fc2 -> output``) of one shape at once.

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
