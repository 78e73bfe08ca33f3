"""The allocation replay: a filter refit on a recorded history."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def replay_module(load_benchmark):
    return load_benchmark("replay_allocation")


def _round(rng: np.random.Generator, t: int, allocated_own: int, credit_own: float, credit_other: float) -> dict:
    """48 candidates, a quarter of the client's family (high similarity); 12 allocated."""
    families = ["own" if i % 4 == 0 else "other" for i in range(48)]
    ids = [f"r{t}-{i}" for i in range(48)]
    sim = np.where(np.array(families) == "own", 0.8, 0.3) + rng.normal(0, 0.05, 48)
    tokens = rng.integers(20, 60, 48).astype(float)
    own_ids = [i for i, f in zip(ids, families) if f == "own"][:allocated_own]
    other_ids = [i for i, f in zip(ids, families) if f == "other"][: 12 - allocated_own]
    allocated = own_ids + other_ids
    credits = [credit_own] * len(own_ids) + [credit_other] * len(other_ids)
    credits = (np.array(credits) + rng.normal(0, 0.02, 12)).tolist()
    return {
        "feature_names": ["local_similarity", "path_tokens"],
        "sample_ids": ids,
        "families": families,
        "features": np.stack([sim, tokens], axis=1).tolist(),
        "allocated": allocated,
        "credits": credits,
    }


def test_a_history_that_credits_the_own_family_steers_the_next_round_to_it(replay_module) -> None:
    from lada_coordinator.allocation.filter_config import FilterConfig

    rng = np.random.default_rng(0)
    trace = {"client0": {"family": "own", "1": _round(rng, 1, 3, 0.9, 0.4), "2": _round(rng, 2, 3, 0.9, 0.4)}}
    out = replay_module.replay(trace, FilterConfig(budget=12), "raw")["client0"][2]
    assert out["candidates"] == 0.25 and out["allocated"] == 0.25
    assert out["variant"] > 0.5  # the filter learnt the own family from round 1's credits
