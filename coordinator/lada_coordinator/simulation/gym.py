"""Client domains and a public pool from reasoning-gym's procedural task families, offline.

reasoning-gym (on PyPI) generates reasoning problems from a seed with verified answers, across
about a hundred families (``chain_sum``, ``basic_arithmetic``, ``leg_counting``, ``gsm_symbolic``,
...). Giving each client one family makes the non-IID federation LaDa is built for; the public
pool mixes families, and its questions get their reasoning from the teacher: the problems carry
answers only (``Sample.rationale`` is empty), as a user's own private data often does.

:data:`EASY` holds the difficulty this project uses by default for small students (fewer terms,
smaller numbers than reasoning-gym's defaults), so that a 135M-parameter model can learn a family
within a few rounds; any other family runs with reasoning-gym's own defaults, and every setting can
be overridden (``family:key=value,key=value``).
"""

from __future__ import annotations

import ast
import hashlib
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from lada_client.data.federation import ClientData, FederationData
from lada_client.data.samples import Sample

__all__ = ["EASY", "FamilySpec", "gym_samples", "make_gym_federation", "parse_family"]

#: reasoning-gym settings for small students, per family (the rest use reasoning-gym's defaults)
EASY: dict[str, dict[str, Any]] = {
    "chain_sum": {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2},
    "basic_arithmetic": {
        "min_terms": 2,
        "max_terms": 3,
        "min_digits": 1,
        "max_digits": 2,
        "operators": ("+", "-", "*"),
        "allow_negation": False,
    },
    "leg_counting": {"min_animals": 1, "max_animals": 3, "max_instances": 5},
    "products": {"min_digits": 1, "max_digits": 2},
    "simple_equations": {"min_terms": 2, "max_terms": 2, "max_value": 20},
    "gcd": {"min_numbers": 2, "max_numbers": 2, "max_value": 100},
}

FamilySpec = tuple[str, dict[str, Any]]


def parse_family(text: str) -> FamilySpec:
    """``"chain_sum"`` or ``"chain_sum:max_terms=3,max_digits=1"`` → (family, settings over :data:`EASY`)."""
    name, _, rest = text.strip().partition(":")
    settings = dict(EASY.get(name, {}))
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"family setting {item!r} in {text!r} must be key=value")
        try:
            settings[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            settings[key.strip()] = value.strip()
    _dataset(name, 1, 0, settings)  # unknown families and settings fail here, with reasoning-gym's message
    return name, settings


def _dataset(name: str, size: int, seed: int, settings: Mapping[str, Any]) -> Any:
    try:
        import reasoning_gym
    except ImportError as exc:
        raise ImportError("reasoning-gym task families need: pip install reasoning-gym==0.1.25") from exc
    if name not in reasoning_gym.factory.DATASETS:
        raise ValueError(f"unknown reasoning-gym family {name!r}; some: {', '.join(sorted(EASY))}")
    try:
        return reasoning_gym.create_dataset(name, size=size, seed=seed, **settings)
    except (TypeError, AssertionError, ValueError) as exc:
        raise ValueError(f"reasoning-gym family {name!r} refuses settings {dict(settings)}: {exc}") from exc


def gym_samples(family: FamilySpec, n: int, seed: int) -> list[Sample]:
    """``n`` distinct problems of a family (answers only); the same seed gives the same problems."""
    name, settings = family
    out: dict[str, Sample] = {}
    size = n
    for attempt in range(4):  # small settings repeat questions: draw more until n distinct ones
        data = _dataset(name, size, seed + 7919 * attempt, settings)
        for entry in data:
            question, answer = str(entry["question"]).strip(), entry["answer"]
            if answer is None or question in out:
                continue
            sid = f"{name}-{hashlib.sha1(question.encode()).hexdigest()[:12]}"
            out[question] = Sample(
                sample_id=sid, domain=name, question=question, rationale="", answer=str(answer).strip()
            )
            if len(out) == n:
                return list(out.values())
        size *= 2
    raise ValueError(
        f"family {name!r} with settings {settings} has fewer than {n} distinct problems; widen its settings"
    )


def make_gym_federation(
    client_families: Sequence[str | FamilySpec],
    n_train: int,
    n_test: int,
    n_public: int,
    seed: int = 0,
    public_families: Sequence[str | FamilySpec] | None = None,
    public_seed: int | None = None,
) -> FederationData:
    """One client per entry of ``client_families`` (named ``client0``, ...), each with ``n_train`` +
    ``n_test`` private problems of its family; a public pool of ``n_public`` problems spread evenly
    over ``public_families`` (default: the clients' families). No question is in two splits.

    ``public_seed`` (default ``seed``) fixes the public pool alone: runs with other seeds then draw
    other private shards around the same public questions, whose teacher paths are computed once."""
    specs = [parse_family(f) if isinstance(f, str) else f for f in client_families]
    public_specs = [parse_family(f) if isinstance(f, str) else f for f in (public_families or client_families)]
    if not specs or not public_specs:
        raise ValueError("at least one client family and one public family are needed")
    families = dict([*specs, *public_specs])
    for name, settings in [*specs, *public_specs]:
        if families[name] != settings:
            raise ValueError(f"family {name!r} appears with two different settings")
    public_names = list(dict.fromkeys(name for name, _ in public_specs))
    per_public = {
        name: n_public // len(public_names) + (i < n_public % len(public_names)) for i, name in enumerate(public_names)
    }
    clients_of = {name: [i for i, (n, _) in enumerate(specs) if n == name] for name in families}
    pools: dict[str, list[Sample]] = {}
    public_seed = seed if public_seed is None else public_seed
    public: list[Sample] = []
    for name in public_names:
        public.extend(
            gym_samples((name, families[name]), per_public[name], zlib.crc32(f"public/{public_seed}/{name}".encode()))
        )
    taken = {s.question for s in public}
    for name, settings in families.items():
        need = len(clients_of[name]) * (n_train + n_test)
        if need:
            drawn = gym_samples((name, settings), need + per_public.get(name, 0), zlib.crc32(f"{seed}/{name}".encode()))
            pools[name] = [s for s in drawn if s.question not in taken][:need]
            if len(pools[name]) < need:
                raise ValueError(f"family {name!r} cannot give {need} private problems apart from the public ones")
    # a slot per client, each filled by its family's loop below
    clients: list[ClientData] = [None] * len(specs)  # type: ignore[list-item]
    for name, pool in pools.items():
        at = 0
        for i in clients_of[name]:
            train, test = pool[at : at + n_train], pool[at + n_train : at + n_train + n_test]
            clients[i] = ClientData(name=f"client{i}", domain=name, train=train, test=test)
            at += n_train + n_test
    return FederationData(clients=clients, public=public, seed=seed)
