"""What the coordinator stores, as the rest of the code sees it: one record type per table row
(devices, tokens, rounds, quarantines, secure-aggregation outputs) and the store's two errors.
Every backend (``sqlite.py``, ``postgres.py``) returns these; nothing here touches a database."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from lada_client.common.secagg import EncryptedShare, Roster, SecAggFailure, SecAggResult, UnmaskRequest
from lada_client.common.wire import Capabilities, Phase

#: the stored kinds of secure-aggregation messages (``secagg.put`` by step)
SecAggKind = Literal["secagg.shares", "secagg.masked", "secagg.unmask"]

#: The secure-aggregation group of devices whose token names none.
DEFAULT_GROUP = "default"


#: What the store reads for a device whose capability record is missing, unreadable or silent on
#: training: it is never sent work it did not declare it can do (fail closed).
UNDECLARED = Capabilities(can_score=False, can_train=False)


def _capabilities(stored: str) -> Capabilities:
    """A device's declared capabilities as stored; :data:`UNDECLARED` unless they parse and say
    whether it can train (the model's ``can_train=True`` default is for a device's own declaration)."""
    try:
        declared = json.loads(stored)
        capabilities = Capabilities.model_validate(declared)
    except ValueError:  # bad JSON, or not a capability record (pydantic's ValidationError included)
        return UNDECLARED
    return capabilities if "can_train" in declared else UNDECLARED


@dataclass(frozen=True)
class ClientRecord:
    client_id: str
    name: str
    sign_key: str
    kex_key: str
    domain: str
    model_name: str
    capabilities: Capabilities
    last_seq: int
    bytes_in: int
    bytes_out: int
    secagg_group: str = DEFAULT_GROUP  # set by the operator through the enrollment token
    revoked: bool = False
    # what the operator sees (``lada-coordinator clients``); nothing in a round depends on them
    enrolled_at: float | None = field(default=None, compare=False)
    last_seen_at: float | None = field(default=None, compare=False)  # last accepted sealed request


@dataclass(frozen=True)
class TokenRecord:
    token_id: str  # the first 12 hex digits of the secret's hash: names the token, reveals nothing
    created_at: float
    expires_at: float | None
    used_by: str | None
    revoked: bool
    secagg_group: str


class PathProvenance(BaseModel):
    """The coordinator's own record of a round's teacher paths (never sent): where each
    candidate's path came from (``llm``, ``gold``, ``store``) and how many of each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path_sources: dict[str, str] = {}
    path_stats: dict[str, int] = {}


@dataclass(frozen=True)
class RoundMetrics:
    """One round as the operator sees it: when it opened and closed (``closed_at`` None while it
    runs) and what the engine recorded when it closed (``metrics``: empty before)."""

    round: int
    phase: Phase
    opened_at: float
    closed_at: float | None
    metrics: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The flat form of ``/v1/status``'s ``rounds``: the metrics beside the round's times."""
        return {
            "round": self.round,
            "phase": self.phase,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            **self.metrics,
        }


@dataclass(frozen=True)
class QuarantineEntry:
    """A device set aside for the rest of a round: at which stage, why and when."""

    round: int
    client_id: str
    stage: str
    error: str
    at: float


class RoutedShares(BaseModel):
    """A group's routed shares (secure aggregation): who shared keys, and the encrypted shares
    routed to each recipient (what its ``secagg.get`` ``inbox`` poll returns)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sharers: tuple[str, ...]
    inbox: dict[str, tuple[EncryptedShare, ...]]


#: what the coordinator stores per round and group in the ``secagg`` table, by item
SecAggItem = Literal["roster", "routed", "unmask_request", "result"]
SecAggRecord = Roster | RoutedShares | UnmaskRequest | SecAggResult | SecAggFailure


class EnrollmentRefused(Exception):
    """An enrollment the store refuses: ``reason`` is ``bad_token`` or ``duplicate_client``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class StoreError(RuntimeError):
    """The database could not commit: every request in the failed commit gets this."""


class LeadershipLost(StoreError):
    """A write of a round engine whose replica no longer leads (``postgres.py``): another replica's
    engine has taken over, so this one's writes are refused and it goes back to waiting."""
