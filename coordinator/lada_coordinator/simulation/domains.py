"""Offline generator of word problems with worked rationales, in two domain sets.

``arithmetic`` (:data:`DOMAINS`): GSM8K-style problems, one reasoning family per domain (addition,
subtraction, multiplication, two-step). Their answers are arithmetic *facts* (~800 per one-step
domain) that a tiny transformer memorises rather than computes, so extra samples of a domain help
it only through the facts they carry. ``rules`` (:data:`RULE_DOMAINS`): problems solved by a rule
that a tiny transformer can learn from a few hundred examples and then apply to questions it has
never seen (copy the count of the asked item, count a list, take the largest of a list, add two
digits), each with a step-by-step rationale, so that more samples of a client's own rule make it
better at its whole test split: the regime where what a filter allocates shows in accuracy.
Giving
every client a different domain produces the non-IID federation LaDa is built for, and generating
the problems procedurally keeps the whole pipeline runnable offline and reproducible from a seed.
Numbers stay small and rationales short ("3 + 5 = 8. The answer is 8.") so that tiny language
models can learn them on a CPU; several phrasings per domain keep the questions from collapsing
into a single template a model could memorise. :func:`make_federation` builds a whole federation
from them (the layout of :mod:`lada_client.data.federation`): one domain per client and a public
pool mixing every domain.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from lada_client.common.reasoning import ANSWER_PHRASE
from lada_client.data.federation import ClientData, FederationData
from lada_client.data.samples import Sample

__all__ = ["DOMAINS", "DOMAIN_SETS", "GENERATOR_VERSION", "RULE_DOMAINS", "generate", "make_federation"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

DOMAINS: tuple[str, ...] = ("add", "sub", "mul", "two_step")
RULE_DOMAINS: tuple[str, ...] = ("lookup", "count", "largest", "digit_sum")
_ALL_DOMAINS = DOMAINS + RULE_DOMAINS
#: The toy domain sets by name; a federation's public pool mixes every domain of its set.
DOMAIN_SETS: dict[str, tuple[str, ...]] = {"arithmetic": DOMAINS, "rules": RULE_DOMAINS}
# Bumped whenever the same seed would generate different problems, so cached data is rebuilt.
GENERATOR_VERSION = 3

_NAMES = tuple("Ana Ben Cara Dev Eli Fay Gus Hana Ivan Jo Kim Leo Mia Nia Omar Pia Raj Sam Tara Zoe".split())
_ITEMS = ("apples", "books", "coins", "stickers", "marbles", "pencils", "shells", "cards", "beads")
_ANIMALS = ("cat", "dog", "cow", "hen", "pig", "fox", "owl", "bee", "bat")


def _uniform(rng: np.random.Generator, low: int, high: int) -> int:
    return int(rng.integers(low, high + 1))


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


# Operand ranges are sized to what a tiny transformer learns in a few thousand CPU steps: a
# two-digit sum table (2..99 + 2..99, ~9,600 facts) stays near 0% accuracy after 1,200 teacher
# steps, while the 2..12 multiplication table (121 facts) reaches ~60%. With ~800 facts per
# one-step domain the teacher gets ahead of the students and the students still have something
# to learn from it, which is the regime distillation is about.
def _two_sums(rng: np.random.Generator) -> tuple[int, ...]:
    return _uniform(rng, 2, 30), _uniform(rng, 2, 30)


def _difference(rng: np.random.Generator) -> tuple[int, ...]:
    a = _uniform(rng, 10, 40)
    return a, _uniform(rng, 2, a - 1)


def _product(rng: np.random.Generator) -> tuple[int, ...]:
    return _uniform(rng, 2, 12), _uniform(rng, 2, 12)


def _add_then_mul(rng: np.random.Generator) -> tuple[int, ...]:
    return _uniform(rng, 2, 30), _uniform(rng, 2, 30), _uniform(rng, 2, 9)


def _add_then_sub(rng: np.random.Generator) -> tuple[int, ...]:
    a, b = _uniform(rng, 5, 60), _uniform(rng, 2, 40)
    return a, b, _uniform(rng, 2, a + b - 1)


def _mul_then_sub(rng: np.random.Generator) -> tuple[int, ...]:
    a, b = _uniform(rng, 2, 9), _uniform(rng, 2, 12)
    return a, b, _uniform(rng, 2, a * b - 1)


def _mul_then_add(rng: np.random.Generator) -> tuple[int, ...]:
    return _uniform(rng, 2, 12), _uniform(rng, 2, 12), _uniform(rng, 2, 30)


def _sub_then_mul(rng: np.random.Generator) -> tuple[int, ...]:
    a = _uniform(rng, 10, 50)
    return a, _uniform(rng, 2, a - 2), _uniform(rng, 2, 9)


@dataclass(frozen=True)
class _Template:
    """A phrasing plus the left-to-right operations that solve it (``a op1 b op2 c``)."""

    text: str
    ops: tuple[str, ...]
    operands: Callable[[np.random.Generator], tuple[int, ...]]


# fmt: off
_TEMPLATES: dict[str, tuple[_Template, ...]] = {
    "add": (
        _Template("{name} has {a} {item}. {name} gets {b} more {item}. "
                  "How many {item} does {name} have now?", ("+",), _two_sums),
        _Template("There are {a} {item} on a shelf and {b} {item} in a box. "
                  "How many {item} are there in all?", ("+",), _two_sums),
        _Template("{name} found {a} {item} on Monday and {b} {item} on Tuesday. "
                  "How many {item} did {name} find in total?", ("+",), _two_sums),
        _Template("A class has {a} boys and {b} girls. How many children are in the class?",
                  ("+",), _two_sums),
        _Template("{name} read {a} pages yesterday and {b} pages today. "
                  "How many pages did {name} read?", ("+",), _two_sums),
    ),
    "sub": (
        _Template("{name} had {a} {item} and gave {b} to a friend. "
                  "How many {item} does {name} have left?", ("-",), _difference),
        _Template("A bakery baked {a} muffins and sold {b} of them. How many muffins are left?",
                  ("-",), _difference),
        _Template("A bus had {a} passengers. At a stop, {b} passengers got off. "
                  "How many passengers are on the bus now?", ("-",), _difference),
        _Template("{name} has {a} {item} and loses {b} of them. "
                  "How many {item} does {name} have now?", ("-",), _difference),
        _Template("A tank holds {a} fish. {b} fish are moved to a pond. "
                  "How many fish stay in the tank?", ("-",), _difference),
    ),
    "mul": (
        _Template("There are {a} boxes with {b} {item} in each box. "
                  "How many {item} are there in total?", ("*",), _product),
        _Template("{name} buys {a} packs of {item}. Each pack has {b} {item}. "
                  "How many {item} does {name} buy?", ("*",), _product),
        _Template("A garden has {a} rows with {b} plants in each row. "
                  "How many plants are in the garden?", ("*",), _product),
        _Template("{name} saves coins for {a} days, {b} coins each day. "
                  "How many coins does {name} save?", ("*",), _product),
        _Template("Each of {a} children has {b} {item}. "
                  "How many {item} do the children have altogether?", ("*",), _product),
    ),
    "two_step": (
        _Template("A shop gets {a} crates on Monday and {b} crates on Tuesday. "
                  "Each crate holds {c} bottles. How many bottles does the shop get?",
                  ("+", "*"), _add_then_mul),
        _Template("{name} has {a} {item}, buys {b} more, then gives {c} away. "
                  "How many {item} does {name} have now?", ("+", "-"), _add_then_sub),
        _Template("{name} buys {a} bags with {b} candies in each bag and eats {c} candies. "
                  "How many candies are left?", ("*", "-"), _mul_then_sub),
        _Template("A hall has {a} rows of {b} chairs and {c} extra chairs. "
                  "How many chairs are there in total?", ("*", "+"), _mul_then_add),
        _Template("A farmer had {a} hens and sold {b}. Each hen left lays {c} eggs a week. "
                  "How many eggs are laid each week?", ("-", "*"), _sub_then_mul),
    ),
}
# fmt: on

_APPLY: dict[str, Callable[[int, int], int]] = {
    "+": lambda x, y: x + y,
    "-": lambda x, y: x - y,
    "*": lambda x, y: x * y,
}

# ------------------------------------------------------------------------------ rule domains
# Each draws (question, rationale, answer). Rationales use the same one-line step format as the
# arithmetic domains ("x op y = z.", then the answer sentence), so every domain shares a
# tokenizer and an answer extractor. Their sizes are calibrated so that students warm-started for
# 150 steps start at 0.2-0.6 on their own test split (200 private questions, seed 0: lookup 0.38,
# count 0.52, largest 0.28; 48 private questions, seeds 0-2: 0.24-0.39, 0.39-0.52, 0.12-0.24),
# with room to learn: with 3 items up to 40, lists of 2-8 animals and 3-5 numbers up to 30,
# every student solved ``count`` and none got past 0.1 on the other two (docs/benchmarks.md).


def _listing(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


# fmt: off
_LOOKUP = ("{name} has {held}. How many {item} does {name} have?",
           "In a box there are {held}. How many {item} are in the box?",
           "A shop sells {held}. How many {item} does the shop sell?")
_COUNT = ("{name} sees {seen}. How many animals does {name} see?",
          "On a farm there are {seen}. How many animals are on the farm?",
          "A picture shows {seen}. How many animals are in the picture?")
_LARGEST = ("Which number is the largest: {listed}?",
            "{name} scores {listed} in {k} games. What is the best score?",
            "The heights of {k} plants are {listed}. How tall is the tallest plant?")
_DIGIT_SUM = ("{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
              "There are {a} {item} on a desk and {b} {item} in a bag. How many {item} are there?",
              "{name} finds {a} {item} and then {b} {item}. How many {item} did {name} find?")
# fmt: on


def _lookup(rng: np.random.Generator) -> tuple[str, str, str]:
    """Two item counts in the question; the answer copies the asked one."""
    items = [_ITEMS[i] for i in rng.choice(len(_ITEMS), size=2, replace=False)]
    counts = [_uniform(rng, 2, 19) for _ in items]
    asked = int(rng.integers(len(items)))
    held = _listing([f"{c} {i}" for c, i in zip(counts, items, strict=True)])
    name = _pick(rng, _NAMES)
    question = _pick(rng, _LOOKUP).format(name=name, held=held, item=items[asked])
    answer = counts[asked]
    return question, f"{items[asked]} = {answer}. {ANSWER_PHRASE} {answer}.", str(answer)


def _count(rng: np.random.Generator) -> tuple[str, str, str]:
    """A list of 6-14 animals; the rationale counts them one by one."""
    k = _uniform(rng, 6, 14)
    animals = [_ANIMALS[int(i)] for i in rng.integers(len(_ANIMALS), size=k)]
    seen = _listing([f"a {a}" for a in animals])
    name = _pick(rng, _NAMES)
    question = _pick(rng, _COUNT).format(name=name, seen=seen)
    steps = " ".join(f"{a} {i + 1}." for i, a in enumerate(animals))
    return question, f"{steps} {ANSWER_PHRASE} {k}.", str(k)


def _largest(rng: np.random.Generator) -> tuple[str, str, str]:
    """The largest of 3-4 numbers, kept as a running maximum."""
    k = _uniform(rng, 3, 4)
    values = [_uniform(rng, 1, 20) for _ in range(k)]
    phrasing = _pick(rng, _LARGEST)
    name = _pick(rng, _NAMES) if "{name}" in phrasing else ""
    question = phrasing.format(name=name, listed=_listing([str(v) for v in values]), k=k)
    best, steps = values[0], []
    for v in values[1:]:
        steps.append(f"max {best} {v} = {max(best, v)}.")
        best = max(best, v)
    return question, f"{' '.join(steps)} {ANSWER_PHRASE} {best}.", str(best)


def _digit_sum(rng: np.random.Generator) -> tuple[str, str, str]:
    """Two one-digit numbers added (81 facts: learnable as a table, phrased three ways)."""
    a, b = _uniform(rng, 1, 9), _uniform(rng, 1, 9)
    name, item = _pick(rng, _NAMES), _pick(rng, _ITEMS)
    question = _pick(rng, _DIGIT_SUM).format(name=name, item=item, a=a, b=b)
    return question, f"{a} + {b} = {a + b}. {ANSWER_PHRASE} {a + b}.", str(a + b)


_RULES: dict[str, Callable[[np.random.Generator], tuple[str, str, str]]] = {
    "lookup": _lookup,
    "count": _count,
    "largest": _largest,
    "digit_sum": _digit_sum,
}


def _solve(ops: tuple[str, ...], operands: tuple[int, ...]) -> tuple[str, int]:
    """Chain the operations left to right, writing one short "x op y = z." step per operation."""
    value = operands[0]
    steps: list[str] = []
    for op, operand in zip(ops, operands[1:], strict=True):
        result = _APPLY[op](value, operand)
        steps.append(f"{value} {op} {operand} = {result}.")
        value = result
    steps.append(f"{ANSWER_PHRASE} {value}.")
    return " ".join(steps), value


def _draw(domain: str, rng: np.random.Generator) -> tuple[str, str, str]:
    if domain in _RULES:
        return _RULES[domain](rng)
    template = _pick(rng, _TEMPLATES[domain])
    operands = template.operands(rng)
    rationale, answer = _solve(template.ops, operands)
    if not 0 <= answer < 1000:  # the samplers' ranges guarantee this; a template edit may not
        raise AssertionError(f"{domain} template produced out-of-range answer {answer}")
    question = template.text.format(
        a=operands[0],
        b=operands[1],
        c=operands[2] if len(operands) > 2 else "",
        name=_pick(rng, _NAMES),
        item=_pick(rng, _ITEMS),
    )
    return question, rationale, str(answer)


def generate(
    domain: str,
    n: int,
    seed: int,
    id_prefix: str,
    *,
    exclude: Collection[str] = (),
) -> list[Sample]:
    """Generate ``n`` problems of ``domain`` with distinct questions, deterministically per seed.

    Questions in ``exclude`` are skipped, which is how callers keep splits disjoint. Sample ids are
    ``f"{id_prefix}-{index:06d}"``. Raises ``ValueError`` for an unknown domain, a negative
    ``n``/``seed``, or when the domain cannot supply ``n`` new distinct questions.
    """
    if domain not in _ALL_DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(_ALL_DOMAINS)}")
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be non-negative, got n={n}, seed={seed}")
    # The domain is mixed into the seed so that equal seeds still give unrelated domains.
    rng = np.random.default_rng([seed, zlib.crc32(domain.encode("utf-8"))])
    seen: set[str] = set()
    samples: list[Sample] = []
    budget = 50 * n + 1000
    while len(samples) < n:
        if budget == 0:
            raise ValueError(f"domain {domain!r} could only produce {len(samples)} of {n} distinct questions")
        budget -= 1
        question, rationale, answer = _draw(domain, rng)
        if question in seen or question in exclude:
            continue
        seen.add(question)
        sample_id = f"{id_prefix}-{len(samples):06d}"
        samples.append(Sample(sample_id, domain, question, rationale, answer))
    return samples


def make_federation(
    domains: Sequence[str],
    n_train: int,
    n_test: int,
    n_public: int,
    seed: int,
    pool: Sequence[str] = DOMAINS,
) -> FederationData:
    """Build ``client{i}`` with domain ``domains[i]`` and a public pool mixing the ``pool`` domains
    (every arithmetic domain by default; a domain set of :data:`DOMAIN_SETS` for the rules).

    Splits are generated in a fixed order (public, then each client's test, then train), each
    excluding every question generated before it, so all splits are disjoint by question text and
    the whole federation is a pure function of its arguments.
    """
    unknown = [d for d in (*domains, *pool) if d not in _ALL_DOMAINS]
    if unknown:
        raise ValueError(f"unknown domains {unknown}; valid domains: {', '.join(_ALL_DOMAINS)}")
    if not pool:
        raise ValueError("the public pool needs at least one domain")
    if min(n_train, n_test, n_public) < 0:
        raise ValueError("split sizes must be non-negative")
    used: set[str] = set()

    def split(domain: str, n: int, tag: str) -> list[Sample]:
        samples = generate(domain, n, _derive_seed(seed, tag), tag, exclude=used)
        used.update(s.question for s in samples)
        return samples

    public: list[Sample] = []
    per_domain, remainder = divmod(n_public, len(pool))
    for index, domain in enumerate(pool):
        count = per_domain + (1 if index < remainder else 0)
        public.extend(split(domain, count, f"public-{domain}"))
    # Interleave domains so any contiguous slice of the pool (a round's batch) is mixed.
    order = np.random.default_rng(_derive_seed(seed, "public-order")).permutation(len(public))
    public = [public[i] for i in order]

    clients: list[ClientData] = []
    for index, domain in enumerate(domains):
        name = f"client{index}"
        test = split(domain, n_test, f"{name}-test")
        train = split(domain, n_train, f"{name}-train")
        clients.append(ClientData(name=name, domain=domain, train=train, test=test))
    logger.info(
        "built federation: %d clients, %d train / %d test each, %d public, seed %d",
        len(clients),
        n_train,
        n_test,
        len(public),
        seed,
    )
    return FederationData(clients=clients, public=public, seed=seed)


def _derive_seed(seed: int, tag: str) -> int:
    """Independent, stable sub-seed per split, so adding a client does not reshuffle the others."""
    sequence = np.random.SeedSequence([seed, zlib.crc32(tag.encode("utf-8"))])
    return int(sequence.generate_state(1)[0])
