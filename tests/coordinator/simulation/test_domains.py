from __future__ import annotations

import re
from collections import Counter
from itertools import chain

import pytest

from lada_client.common.reasoning import extract_answer, is_correct
from lada_client.data.federation import FederationData
from lada_client.data.samples import Sample
from lada_coordinator.simulation.domains import DOMAIN_SETS, DOMAINS, RULE_DOMAINS, generate, make_federation

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


# ------------------------------------------------------------------------------ make_federation
@pytest.fixture(scope="module")
def federation() -> FederationData:
    return make_federation(["add", "mul", "two_step"], n_train=40, n_test=10, n_public=42, seed=3)


def _all_samples(fed: FederationData) -> list:
    return list(chain(fed.public, *([*c.train, *c.test] for c in fed.clients)))


def test_clients_get_their_own_domain(federation: FederationData) -> None:
    assert [(c.name, c.domain) for c in federation.clients] == [
        ("client0", "add"),
        ("client1", "mul"),
        ("client2", "two_step"),
    ]
    for client in federation.clients:
        assert len(client.train) == 40 and len(client.test) == 10
        assert {s.domain for s in client.train + client.test} == {client.domain}


def test_public_pool_mixes_all_domains_evenly(federation: FederationData) -> None:
    counts = Counter(s.domain for s in federation.public)
    assert len(federation.public) == 42
    assert set(counts) == set(DOMAINS)
    assert max(counts.values()) - min(counts.values()) <= 1
    # Shuffled, not grouped by domain.
    assert [s.domain for s in federation.public[:10]] != [federation.public[0].domain] * 10


def test_ids_unique_and_prefixed_by_split(federation: FederationData) -> None:
    ids = [s.sample_id for s in _all_samples(federation)]
    assert len(ids) == len(set(ids))
    assert all(s.sample_id.startswith("public-") for s in federation.public)
    for client in federation.clients:
        assert all(s.sample_id.startswith(f"{client.name}-train-") for s in client.train)
        assert all(s.sample_id.startswith(f"{client.name}-test-") for s in client.test)


def test_splits_are_disjoint_by_question() -> None:
    # Two clients on the same domain are the hardest case for collisions.
    fed = make_federation(["mul", "mul"], n_train=300, n_test=100, n_public=400, seed=0)
    questions = [s.question for s in _all_samples(fed)]
    assert len(questions) == len(set(questions))


def test_deterministic_per_seed(federation: FederationData) -> None:
    again = make_federation(["add", "mul", "two_step"], n_train=40, n_test=10, n_public=42, seed=3)
    other = make_federation(["add", "mul", "two_step"], n_train=40, n_test=10, n_public=42, seed=4)
    assert again == federation
    assert other != federation


def test_unknown_domain_rejected() -> None:
    with pytest.raises(ValueError, match="valid domains"):
        make_federation(["add", "nope"], 1, 1, 4, seed=0)


# ------------------------------------------------------------------------------ rule domains


def _recount(question: str, domain: str) -> int:
    """Solve a rule question from its text alone, independently of the generator."""
    if domain == "lookup":
        asked = re.search(r"How many (\w+)", question).group(1)
        return int(re.search(rf"(\d+) {asked}\b", question).group(1))
    if domain == "count":
        return len(re.findall(r"\ba (?:cat|dog|cow|hen|pig|fox|owl|bee|bat)\b", question))
    return sum(int(n) for n in re.findall(r"\d+", question))  # digit_sum


@pytest.mark.parametrize("domain", RULE_DOMAINS)
def test_rule_domains_answer_what_the_question_asks_and_say_how(domain: str) -> None:
    batch = generate(domain, 200, seed=3, id_prefix=domain)
    assert len({s.question for s in batch}) == 200
    for sample in batch:
        assert sample.domain == domain
        assert extract_answer(sample.rationale) == sample.answer
        assert sample.rationale.count(".") >= 2, "a step before the answer sentence"
        if domain != "largest":
            assert int(sample.answer) == _recount(sample.question, domain), sample
    if domain == "largest":  # the question's listed numbers (after the colon or before " in ")
        for sample in batch:
            listed = sample.question.split(":")[-1] if ":" in sample.question else sample.question.split(" in ")[0]
            listed = listed.split(" are ")[-1]
            assert int(sample.answer) == max(int(n) for n in re.findall(r"\d+", listed)), sample


def test_a_rules_federation_pools_every_rule_domain_and_keeps_splits_disjoint() -> None:
    fed = make_federation(["lookup", "count", "largest"], 30, 10, 40, seed=1, pool=DOMAIN_SETS["rules"])
    assert Counter(s.domain for s in fed.public) == dict.fromkeys(RULE_DOMAINS, 10)
    questions = [s.question for s in chain(fed.public, *(c.train + c.test for c in fed.clients))]
    assert len(questions) == len(set(questions))
    assert [c.domain for c in fed.clients] == ["lookup", "count", "largest"]
    with pytest.raises(ValueError, match="unknown domains"):
        make_federation(["lookup"], 1, 1, 4, seed=0, pool=("lookup", "nope"))


def test_rule_domains_keep_their_calibrated_sizes() -> None:
    """The sizes that put warm-started students at 0.2-0.6 (docs/benchmarks.md): a change here
    moves every toy-benchmark figure, so it must be deliberate."""
    for sample in generate("lookup", 100, seed=5, id_prefix="l"):
        counts = [int(n) for n in re.findall(r"\d+", sample.question)]
        assert len(counts) == 2 and all(2 <= c <= 19 for c in counts), sample.question
    for sample in generate("count", 100, seed=5, id_prefix="c"):
        assert 6 <= int(sample.answer) <= 14
    for sample in generate("largest", 100, seed=5, id_prefix="g"):
        steps = sample.rationale.count("max ")
        assert steps in (2, 3) and 1 <= int(sample.answer) <= 20, sample.rationale
