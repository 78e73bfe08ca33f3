from __future__ import annotations

import re
from collections import Counter

import pytest

from lada_client.common.reasoning import extract_answer, is_correct
from lada_client.data.domains import DOMAINS, Sample, generate

STEP = re.compile(r"(-?\d+) ([-+*]) (-?\d+) = (-?\d+)\.")
EXPECTED_OPS = {"add": ["+"], "sub": ["-"], "mul": ["*"]}


@pytest.fixture(scope="module")
def samples() -> dict[str, list[Sample]]:
    return {domain: generate(domain, 300, seed=11, id_prefix=f"t-{domain}") for domain in DOMAINS}


def test_domains_constant() -> None:
    assert set(DOMAINS) == {"add", "sub", "mul", "two_step"}


def test_generation_is_deterministic_per_seed() -> None:
    for domain in DOMAINS:
        assert generate(domain, 50, 5, "a") == generate(domain, 50, 5, "a")
        assert generate(domain, 50, 5, "a") != generate(domain, 50, 6, "a")


def test_same_seed_gives_unrelated_domains() -> None:
    add = {s.question for s in generate("add", 50, 0, "x")}
    sub = {s.question for s in generate("sub", 50, 0, "x")}
    assert add.isdisjoint(sub)


def test_rationales_are_correct_arithmetic(samples: dict[str, list[Sample]]) -> None:
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    for domain, batch in samples.items():
        for sample in batch:
            assert sample.domain == domain
            assert extract_answer(sample.rationale) == sample.answer
            assert is_correct(sample.rationale, sample.answer)
            assert 0 <= int(sample.answer) < 1000
            assert len(sample.rationale) <= 80
            steps = STEP.findall(sample.rationale)
            assert steps, sample.rationale
            previous = None
            for left, op, right, result in steps:
                assert ops[op](int(left), int(right)) == int(result), sample.rationale
                if previous is not None:
                    assert int(left) == previous, "steps must chain"
                previous = int(result)
            assert str(previous) == sample.answer
            # Every operand the rationale uses comes from the question.
            question_numbers = set(re.findall(r"\d+", sample.question))
            operands = [steps[0][0]] + [step[2] for step in steps]
            assert set(operands) <= question_numbers, (sample.question, sample.rationale)
            if domain in EXPECTED_OPS:
                assert [step[1] for step in steps] == EXPECTED_OPS[domain]
            else:
                assert len(steps) == 2


def test_questions_use_several_templates(samples: dict[str, list[Sample]]) -> None:
    for batch in samples.values():
        endings = Counter(" ".join(s.question.split()[-3:]) for s in batch)
        assert len(endings) >= 4


def test_questions_and_ids_are_unique(samples: dict[str, list[Sample]]) -> None:
    for domain, batch in samples.items():
        assert len({s.question for s in batch}) == len(batch)
        assert len({s.sample_id for s in batch}) == len(batch)
        assert all(s.sample_id.startswith(f"t-{domain}-") for s in batch)


def test_exclude_skips_known_questions() -> None:
    first = generate("mul", 100, 1, "a")
    again = generate("mul", 100, 1, "b", exclude={s.question for s in first})
    assert {s.question for s in first}.isdisjoint(s.question for s in again)
    assert len(again) == 100


def test_unknown_domain_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="add, sub, mul, two_step"):
        generate("division", 3, 0, "x")


def test_negative_arguments_rejected() -> None:
    with pytest.raises(ValueError):
        generate("add", -1, 0, "x")
    with pytest.raises(ValueError):
        generate("add", 1, -1, "x")


def test_sample_dict_round_trip() -> None:
    sample = generate("two_step", 1, 0, "x")[0]
    assert Sample.from_dict(sample.to_dict()) == sample
    broken = sample.to_dict()
    del broken["answer"]
    with pytest.raises(ValueError, match="answer"):
        Sample.from_dict(broken)
