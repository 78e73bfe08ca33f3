"""Reward reports are checked at upload against what the filter will do with them."""

from __future__ import annotations

import pytest

from lada_client.common.wire import RewardReport
from lada_coordinator.validation import UploadRejected, check_reward


def _report(**kw) -> RewardReport:
    base = {
        "round": 1,
        "reward": 0.2,
        "ppl_before": 2.0,
        "ppl_after": 1.5,
        "n_allocated": 3,
        "test_accuracy": 0.1,
        "bytes_sent": 1,
        "bytes_received": 1,
    }
    return RewardReport(**{**base, **kw})


def test_one_reward_per_allocated_sample_or_none_is_accepted():
    check_reward(_report(sample_rewards=[0.1, 0.5, 1.0]), 3)
    check_reward(_report(), 3)


@pytest.mark.parametrize("rewards", [[0.5, 0.5], [0.5] * 4, []])
def test_per_sample_rewards_that_do_not_match_the_allocation_are_refused(rewards):
    with pytest.raises(UploadRejected, match="per-sample rewards for the 3 samples allocated") as err:
        check_reward(_report(sample_rewards=rewards), 3)
    assert err.value.error == "bad_reward"


def test_more_allocated_than_sent_is_refused():
    with pytest.raises(UploadRejected, match="above the 2 samples allocated"):
        check_reward(_report(), 2)
