"""The sample record and its JSON form."""

from __future__ import annotations

import pytest

from lada_client.data.samples import Sample


def test_sample_dict_round_trip() -> None:
    sample = Sample(
        "x-000000", "two_step", "Ana has 3 apples and buys 2 more. How many?", "3 + 2 = 5. The answer is 5.", "5"
    )
    assert Sample.from_dict(sample.to_dict()) == sample
    broken = sample.to_dict()
    del broken["answer"]
    with pytest.raises(ValueError, match="answer"):
        Sample.from_dict(broken)
    with pytest.raises(ValueError, match="JSON object"):
        Sample.from_dict([1, 2])  # type: ignore[arg-type]


def test_target_is_the_rationale_or_the_bare_answer() -> None:
    assert Sample("a", "d", "q?", "1 + 1 = 2. The answer is 2.", "2").target == "1 + 1 = 2. The answer is 2."
    assert Sample("a", "d", "q?", "", "2").target == "The answer is 2."
