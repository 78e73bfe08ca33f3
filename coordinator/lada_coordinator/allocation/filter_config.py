"""The learnability filter's hyper-parameters, apart from the filter itself.

The coordinator's configuration holds a :class:`FilterConfig`, and everything that reads that
configuration (the operator CLI included) would otherwise import torch with the filter's
networks (``eenet.py``): seconds of start-up for a command that only asks a running coordinator
for its status.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, Strict

from lada_client.common.config_io import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, settings

__all__ = ["CreditScale", "ExploreOn", "FilterConfig", "Share", "ThresholdScale"]

CreditScale = Literal["round_rank", "raw"]
ExploreOn = Literal["last_layer", "all"]
ThresholdScale = Literal["absolute", "reward_max"]
_Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
#: a number in [0, 1]
Share = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]


@settings
class FilterConfig:
    """Hyper-parameters of one learnability filter (immutable: the networks' shapes depend on it).

    Attributes:
        exploration_weight: lambda, weight of ExploreNet's bonus in the score.
        threshold: candidates with score above it are selected (0.5 in the method).
        threshold_scale: ``"absolute"`` compares scores with ``threshold`` itself; ``"reward_max"``
            (default) with ``threshold`` times the largest reward in the replay buffer. The
            method's 0.5 assumes rewards spread over [0, 1], but a relative PPL drop after one
            round of LoRA steps is mostly 0.05-0.4, so with the absolute threshold nearly every
            score falls under it after the first refit and the floor, not the filter, sizes the
            allocation (measured in docs/benchmarks_quality.md). On the reward's own scale the
            threshold keeps its meaning: "at least half as learnable as the best seen so far".
        budget: B, maximum number of candidates allocated per round.
        floor_fraction: minimum allocation is ``ceil(budget * floor_fraction)`` by top score, so a
            pessimistic filter still produces a reward signal every round.
        hidden: width of ExploitNet's hidden layer.
        explore_hidden: width of ExploreNet's hidden layer.
        explore_on: which of ExploitNet's parameters ExploreNet's input gradient covers.
        refit_epochs: passes over the replay buffer per refit (each network).
        lr: Adam learning rate for both networks.
        replay_capacity: maximum (z, r) pairs kept; oldest are dropped first.
        batch_size: minibatch size during refits.
        seed: seed for initialisation, refit shuffling and cold-start clustering.
        credit_scale: what the replay buffer keeps of per-sample credits (one reward per allocated
            row; a round's common scalar reward is kept as it is). ``"round_rank"`` (default)
            keeps each credit's rank among its round's credits, in [0, 1]; ``"raw"`` the credit
            itself. Why: credits of different rounds are measured on different SLMs, and an SLM
            that has learnt its own family credits that family's samples less than an untrained
            one credited the others, so on raw credits a filter fitted over several rounds turns
            away from the client's task exactly when it has started to learn it (measured on the
            real-model benchmark: the allocation's own-family share fell from 0.94 in round 2 to
            0.21 in round 3; ranks within the round keep "which of this round's samples helped
            most", the comparison the credit is for; docs/benchmarks.md).
        coverage_fraction: share of each scored selection (after the threshold, cap and floor
            have sized it) given to k-means representatives of the candidates the score did not
            pick, instead of to the next best scores. Why: a filter fitted on its own allocations
            only learns about what it allocated; on the real-model benchmark it narrowed to the
            client's family (own-family share 0.88 in round 2) and the student, trained on one
            narrow set round after round, lost accuracy in round 3 while random allocation, which
            spreads over every family, did not. Coverage keeps part of every round spread over the
            pool, as the cold-start round is, and gives the filter rewards for the rest of the
            pool. ``0`` (this class's default, so the LLM's filter) is the method as written; the
            coordinator's SLM filters use 0.25 (``config.SLM_FILTER``).
    """

    exploration_weight: NonNegativeFloat = 1.0
    threshold: _Finite = 0.5
    threshold_scale: ThresholdScale = "reward_max"
    budget: PositiveInt = 32
    floor_fraction: Share = 0.25
    hidden: PositiveInt = 32
    explore_hidden: PositiveInt = 64
    refit_epochs: PositiveInt = 10
    lr: PositiveFloat = 1e-2
    replay_capacity: PositiveInt = 4096
    batch_size: PositiveInt = 64
    seed: NonNegativeInt = 0
    explore_on: ExploreOn = "last_layer"
    credit_scale: CreditScale = "round_rank"
    coverage_fraction: Share = 0.0

    @property
    def floor(self) -> int:
        """Minimum number of candidates allocated per round (before capping at the pool size).

        ``ceil(budget * floor_fraction)``, with a tolerance so that float products such as
        ``10 * 0.3`` or ``3 * 0.1`` do not round up past the intended integer.
        """
        return math.ceil(self.budget * self.floor_fraction - 1e-9)

    def coverage(self, take: int) -> int:
        """How many of a scored selection of ``take`` candidates go to coverage (rounded to the
        nearest integer, halves up, with the tolerance of :attr:`floor`)."""
        return math.floor(take * self.coverage_fraction + 0.5 + 1e-9)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able representation."""
        # every field is a scalar: no need for dataclasses.asdict's recursive deep copy, which
        # costs a tenth of a millisecond per filter saved
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FilterConfig:
        """Inverse of :meth:`to_dict`; unknown keys are rejected rather than silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown FilterConfig keys: {sorted(unknown)}")
        return cls(**dict(data))
