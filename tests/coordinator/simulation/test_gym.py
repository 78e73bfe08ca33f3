"""reasoning-gym task families as client domains and a public pool (offline, seeded)."""

from __future__ import annotations

import pytest

pytest.importorskip("reasoning_gym")

from lada_client.common.reasoning import is_correct
from lada_coordinator.simulation.gym import EASY, gym_samples, make_gym_federation, parse_family


def test_family_settings_parse_over_the_easy_defaults():
    name, settings = parse_family("chain_sum:max_terms=3,max_digits=1")
    assert name == "chain_sum" and settings == {**EASY["chain_sum"], "max_terms": 3, "max_digits": 1}
    assert parse_family("gsm_symbolic") == ("gsm_symbolic", {})  # reasoning-gym's own defaults
    with pytest.raises(ValueError, match="unknown reasoning-gym family"):
        parse_family("no_such_family")
    with pytest.raises(ValueError, match="refuses settings"):
        parse_family("chain_sum:no_such_setting=1")
    with pytest.raises(ValueError, match="key=value"):
        parse_family("chain_sum:max_terms")


def test_samples_are_distinct_seeded_and_answer_only():
    a = gym_samples(parse_family("simple_equations"), 30, seed=5)
    assert len({s.question for s in a}) == 30 and a == gym_samples(parse_family("simple_equations"), 30, seed=5)
    assert a != gym_samples(parse_family("simple_equations"), 30, seed=6)
    assert all(
        s.rationale == "" and s.domain == "simple_equations" and s.sample_id.startswith("simple_equations-") for s in a
    )
    assert all(is_correct(s.target, s.answer) for s in a)  # the bare-answer target grades as right


def test_federation_has_one_family_per_client_a_mixed_pool_and_no_shared_question():
    fed = make_gym_federation(
        ["chain_sum", "leg_counting"], 20, 10, 30, seed=1, public_families=["chain_sum", "leg_counting", "gcd"]
    )
    assert [(c.name, c.domain, len(c.train), len(c.test)) for c in fed.clients] == [
        ("client0", "chain_sum", 20, 10),
        ("client1", "leg_counting", 20, 10),
    ]
    assert sorted({s.domain for s in fed.public}) == ["chain_sum", "gcd", "leg_counting"] and len(fed.public) == 30
    splits = [fed.public] + [c.train for c in fed.clients] + [c.test for c in fed.clients]
    questions = [s.question for split in splits for s in split]
    assert len(questions) == len(set(questions))
    other_seed = make_gym_federation(
        ["chain_sum", "leg_counting"],
        20,
        10,
        30,
        seed=2,
        public_families=["chain_sum", "leg_counting", "gcd"],
        public_seed=1,
    )
    assert other_seed.public == fed.public  # the public pool (and its teacher paths) stays across seeds
    assert other_seed.clients[0].train != fed.clients[0].train
