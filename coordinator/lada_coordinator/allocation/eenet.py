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
  ``allocation/batched.py`` refits many filters at once (a round close) and allocates for many
  at once (a round's allocation), with the same semantics per filter and the same results up to
  float32 rounding.
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

from .cold_start import kmeans_representatives
from .filter_config import FilterConfig

__all__ = [
    "FilterConfig",
    "LearnabilityFilter",
    "Selection",
    "SelectionReason",
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
        """One network's (fc1.weight, fc1.bias, fc2.weight row, fc2.bias), as the batched code
        (``allocation/batched.py``) stacks them: views of the saved arrays while the network is not
        built, so scoring many filters builds no module."""
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

        :func:`~lada_coordinator.allocation.batched.refit_many` does the same for many filters at once.
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
