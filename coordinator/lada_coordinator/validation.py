"""What a device's round upload must satisfy before the round engine uses it — in one place.

Each check mirrors what the engine later does with the field, so an upload that passes cannot
make the engine raise: feature rows become one float32 matrix per client whose rows are the
round's candidates (the filters refuse duplicates, NaN/inf and values beyond float32: the wire
bounds values to ±``FEATURE_ABS_MAX``); offers become one LLM-side selection whose ids must be
unique and offered this round; secure-aggregation messages are checked against the group's
roster and protocol state in :mod:`lada_coordinator.aggregation.secure`.

The HTTP handlers run these checks before storing (a refusal is a 422, and the device is set
aside for the round: ``quarantined``). An accepted feature upload is stored with its features as
the engine uses them (:func:`feature_matrix`: float32, one row per candidate in the round's order),
so the engine reads that matrix instead of parsing the JSON again; it checks the matrix against
the round (:func:`matrix_fits`), and an upload stored without one (by an older coordinator), or
whose matrix does not fit, is parsed and checked again from its JSON, so a row edited by hand
quarantines its device instead of stopping the round (``rounds.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from lada_client.common import attachments
from lada_client.common.wire import FEATURE_ABS_MAX, FeatureUpload, RewardReport, RoundInfo

__all__ = [
    "RoundContext",
    "UploadRejected",
    "check_features",
    "check_reward",
    "feature_matrix",
    "matrix_fits",
    "parse_payload",
    "problem",
]

M = TypeVar("M", bound=BaseModel)


class UploadRejected(Exception):
    """An upload the engine could not use: ``error`` is the wire error code, the message says why."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


@dataclass(frozen=True)
class RoundContext:
    """The parts of a stored round that uploads are checked against."""

    candidate_ids: tuple[str, ...]
    offer_ids: frozenset[str]
    feature_names: tuple[str, ...]

    @classmethod
    def of(cls, info: RoundInfo) -> RoundContext:
        return cls(
            tuple(c.sample_id for c in info.candidates),
            frozenset(q.sample_id for q in info.offer_questions),
            tuple(info.feature_names),
        )


def problem(exc: ValueError, *where: str) -> str:
    """One line for refused input: a pydantic error's first problem as ``field.path: message``
    (``where`` before the path), any other ``ValueError`` as its text."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(map(str, (*where, *first['loc'])))}: {first['msg']}"
    return str(exc)


def parse_payload(model: type[M], raw: str | bytes) -> M:
    """Parse a stored (JSON) or received (``attachments.dump``) payload; a schema violation or a
    bad frame becomes :class:`UploadRejected`."""
    try:
        return attachments.load(model, raw)
    except ValueError as exc:  # pydantic's ValidationError included
        raise UploadRejected("malformed_payload", problem(exc)) from exc


def check_features(up: FeatureUpload, ctx: RoundContext) -> None:
    """Features over exactly this round's candidates; offers only for offered questions, once each."""
    if tuple(up.feature_names) != ctx.feature_names:
        raise UploadRejected("bad_features", f"feature_names must be {list(ctx.feature_names)}")
    if tuple(up.sample_ids) != ctx.candidate_ids:
        raise UploadRejected("bad_features", "sample_ids must list this round's candidates in order")
    width = len(ctx.feature_names)
    if len(up.features) != len(ctx.candidate_ids) or any(len(row) != width for row in up.features):
        raise UploadRejected("bad_features", "features must be one row per candidate, one column per feature name")
    offered = [o.sample_id for o in up.offers]
    if len(offered) > len(ctx.offer_ids):
        raise UploadRejected("bad_offer", f"at most {len(ctx.offer_ids)} offers (one per offer question)")
    if len(set(offered)) != len(offered):
        raise UploadRejected("bad_offer", "each offer question may be answered once")
    if not set(offered) <= ctx.offer_ids:
        raise UploadRejected("bad_offer", "offers must answer this round's offer questions")
    if up.secagg_keys is not None and up.adapter_size < 1:
        raise UploadRejected("bad_secagg", "adapter_size is required with secagg keys")


def feature_matrix(up: FeatureUpload) -> np.ndarray:
    """A checked upload's features as the engine uses them: float32 ``[candidates, features]``.

    The filters compute in float32 (``LearnabilityFilter`` casts what it is given), so rounding
    the wire's float64 values here gives the engine the very numbers it used before; the wire
    bounds them to ±``FEATURE_ABS_MAX``, far inside float32's range."""
    return np.asarray(up.features, dtype=np.float32).reshape(len(up.features), len(up.feature_names))


def matrix_fits(z: np.ndarray, ctx: RoundContext) -> bool:
    """Whether a stored feature matrix is one :func:`feature_matrix` makes of an upload that passes
    :func:`check_features` in this round: its shape, dtype, and finite values within the bound."""
    return (
        z.dtype == np.float32
        and z.shape == (len(ctx.candidate_ids), len(ctx.feature_names))
        and bool(np.abs(z).max(initial=0.0) <= FEATURE_ABS_MAX)  # NaN compares False: refused too
    )


def check_reward(report: RewardReport, n_allocated: int) -> None:
    """A reward report feeds the filter (one scalar, or one per allocated sample in allocation
    order) and the metrics; the wire bounds the values. ``n_allocated`` cannot exceed what was
    allocated (it is shown to the operator), and per-sample rewards must match the allocation."""
    if report.n_allocated > n_allocated:
        raise UploadRejected(
            "bad_reward", f"n_allocated {report.n_allocated} is above the {n_allocated} samples allocated"
        )
    if report.sample_rewards is not None and len(report.sample_rewards) != n_allocated:
        raise UploadRejected(
            "bad_reward",
            f"{len(report.sample_rewards)} per-sample rewards for the {n_allocated} samples allocated "
            "(one each, in allocation order)",
        )
