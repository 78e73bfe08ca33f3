"""Optional differential privacy: clipping + Gaussian noise, with a zCDP budget per device.

Two things a device releases are derived from its private data: learnability features (computed by
an SLM trained on private data) and, in co-tuning, LoRA adapter updates. Both go through the
Gaussian mechanism here before they are sealed:

* features: each row is mapped to [0, 1] per feature with fixed, public bounds, its L2 norm clipped
  to ``clip``, noise N(0, (σ·clip)²) added, then mapped back. Every row is one release.
* adapter updates: the flattened update is clipped to L2 norm ``clip`` and noised the same way;
  one release per round.

Accounting uses zero-concentrated DP: one Gaussian release with noise multiplier σ costs
ρ = 1 / (2σ²), releases add up, and the spent budget is reported as (ε, δ) with
ε = ρ + 2·sqrt(ρ·ln(1/δ)) (Bun & Steinke 2016). The unit of privacy is the device's whole
dataset (user-level), the conservative choice for federated learning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from pydantic import Field

from lada_client.common.config_io import NonNegativeFloat, NonNegativeInt, PositiveFloat, settings

# Public bounds of the default features: values outside are clipped before noise.
FEATURE_BOUNDS: Mapping[str, tuple[float, float]] = {
    "slm_path_nll": (0.0, 10.0),
    "slm_answer_nll": (0.0, 10.0),
    "logp_gap": (-10.0, 10.0),
    "path_tokens": (0.0, 256.0),
    "slm_greedy_correct": (0.0, 1.0),
    "local_similarity": (0.0, 1.0),
}


@settings
class DPSettings:
    """``noise_multiplier`` = σ; 0 disables DP. ``clip`` is the L2 bound of one release,
    ``delta`` the δ of the reported (ε, δ), ``seed`` the noise RNG's (None: fresh entropy)."""

    noise_multiplier: NonNegativeFloat = 0.0
    clip: PositiveFloat = 1.0
    delta: Annotated[PositiveFloat, Field(lt=1)] = 1e-5
    seed: NonNegativeInt | None = None

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0


@dataclass
class PrivacyAccountant:
    """Running zCDP budget of one device."""

    delta: float
    rho: float = 0.0
    releases: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def charge(self, noise_multiplier: float, count: int, kind: str) -> None:
        self.rho += count / (2.0 * noise_multiplier**2)
        self.releases += count
        self.by_kind[kind] = self.by_kind.get(kind, 0) + count

    @property
    def epsilon(self) -> float:
        if self.rho == 0:
            return 0.0
        return self.rho + 2.0 * math.sqrt(self.rho * math.log(1.0 / self.delta))


class GaussianMechanism:
    def __init__(self, settings: DPSettings) -> None:
        self.settings = settings
        self.accountant = PrivacyAccountant(settings.delta)
        self._rng = np.random.default_rng(settings.seed)

    def _clip_and_noise(self, rows: np.ndarray) -> np.ndarray:
        s = self.settings
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        clipped = rows * np.minimum(1.0, s.clip / np.maximum(norms, 1e-12))
        return clipped + self._rng.normal(0.0, s.noise_multiplier * s.clip, size=rows.shape)

    def privatize_features(self, z: np.ndarray, names: list[str]) -> np.ndarray:
        """Noised copy of the feature matrix (no-op when DP is off)."""
        if not self.settings.enabled or z.size == 0:
            return z
        missing = [n for n in names if n not in FEATURE_BOUNDS]
        if missing:
            raise ValueError(f"no public DP bounds for feature(s) {missing}")
        lo = np.array([FEATURE_BOUNDS[n][0] for n in names])
        hi = np.array([FEATURE_BOUNDS[n][1] for n in names])
        unit = (np.clip(z, lo, hi) - lo) / (hi - lo)
        noised = self._clip_and_noise(unit)
        self.accountant.charge(self.settings.noise_multiplier, z.shape[0], "features")
        return lo + noised * (hi - lo)

    def privatize_update(self, update: np.ndarray) -> np.ndarray:
        """Clip a flattened adapter update to L2 ``clip`` and add noise (no-op when DP is off)."""
        if not self.settings.enabled:
            return update
        out = self._clip_and_noise(update.reshape(1, -1)).reshape(update.shape)
        self.accountant.charge(self.settings.noise_multiplier, 1, "adapter_update")
        return out
