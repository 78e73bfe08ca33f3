from __future__ import annotations

import math

import numpy as np
import pytest

from lada_client.privacy.dp import DPSettings, GaussianMechanism

NAMES = ["slm_path_nll", "slm_answer_nll", "logp_gap", "path_tokens", "slm_greedy_correct"]


def _z(n: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack(
        [
            rng.uniform(0, 5, n),
            rng.uniform(0, 5, n),
            rng.normal(0, 1, n),
            rng.integers(10, 60, n),
            rng.integers(0, 2, n),
        ],
        1,
    )


def test_off_is_identity_and_costs_nothing():
    mech = GaussianMechanism(DPSettings())
    z = _z(10)
    assert mech.privatize_features(z, NAMES) is z
    assert mech.accountant.epsilon == 0.0


def test_noise_scale_and_budget():
    mech = GaussianMechanism(DPSettings(noise_multiplier=2.0, clip=1.0, delta=1e-5, seed=1))
    unit = np.full((5000, 3), 0.01)  # tiny rows: clipping inactive, only noise
    noised = mech._clip_and_noise(unit)
    assert np.std(noised - unit) == pytest.approx(2.0, rel=0.05)
    z = _z()
    out = mech.privatize_features(z, NAMES)
    assert out.shape == z.shape and np.isfinite(out).all()
    assert not np.allclose(out, z)
    rho = len(z) / (2 * 2.0**2)
    assert mech.accountant.epsilon == pytest.approx(rho + 2 * math.sqrt(rho * math.log(1e5)))
    before = mech.accountant.epsilon
    mech.privatize_update(np.ones(100))
    assert mech.accountant.epsilon > before and mech.accountant.by_kind == {"features": len(z), "adapter_update": 1}


def test_update_is_clipped():
    mech = GaussianMechanism(DPSettings(noise_multiplier=1e-6, clip=0.5, seed=0))
    out = mech.privatize_update(np.full(400, 3.0))
    assert np.linalg.norm(out) == pytest.approx(0.5, rel=1e-3)


def test_bad_settings_and_unknown_feature():
    with pytest.raises(ValueError):
        DPSettings(noise_multiplier=-1)
    with pytest.raises(ValueError, match="bounds"):
        GaussianMechanism(DPSettings(noise_multiplier=1.0)).privatize_features(np.ones((2, 1)), ["mystery"])


def test_every_feature_has_public_bounds():
    """A feature without bounds would stop every DP-enabled device at its first round."""
    from lada_client.privacy.dp import FEATURE_BOUNDS
    from lada_client.scoring.features import FEATURE_NAMES

    assert set(FEATURE_NAMES) <= set(FEATURE_BOUNDS)
