"""``benchmarks/llm_uptake.py``'s arm specifications (its run is in test_quality_quick.py)."""

from __future__ import annotations

import pytest


def test_arms_parse_rounds_sizes_and_rehearsal(load_benchmark) -> None:
    uptake = load_benchmark("llm_uptake")
    arms = uptake.parse_arms("16x8, 250x4+r")
    assert [(a.per_round, a.rounds, a.rehearsal) for a in arms] == [(16, 8, False), (250, 4, True)]
    assert [a.name for a in arms] == ["16x8", "250x4+r"]


@pytest.mark.parametrize("text", ["16", "0x4", "16x0", "16x8+x", "x8", ""])
def test_a_malformed_arm_is_named_in_the_error(load_benchmark, text: str) -> None:
    uptake = load_benchmark("llm_uptake")
    with pytest.raises(SystemExit, match="--arms"):
        uptake.parse_arms(text)
