"""The coordinator's side of secure aggregation in the co-tuning host framework.

Who aggregates with whom is the operator's decision, not the device's: a device's group is the
secure-aggregation group named by its enrollment token (``issue-token --group``), split by the
architecture it declares (only adapters of one shape can be averaged). Each round a group's LoRA
adapters are averaged (FedAvg) through secure aggregation (the protocol in
:mod:`lada_client.common.secagg`, its server side in :mod:`.secagg_server`), so the coordinator only
holds masked vectors and the group's sum.

Every client message is stored in SQLite (uploads, kinds ``secagg.shares|masked|unmask``) after
:meth:`SecureAggregation.check` accepted it against the group's roster and protocol state, and
every coordinator output in the ``secagg`` table; the protocol server is rebuilt by replaying them
(a restarted coordinator continues where it stopped; nothing here holds state between calls).
Replay checks each message again and leaves out, as a dropout, any member whose message fails
or who was quarantined before the step closed; members whose shares did not open for a peer, or
who reveal a wrong unmask share, are left out of the sum by the protocol itself
(``SecAggServer.offenders``). Each such member is reported through ``on_offender`` (the round
engine quarantines it), and a group that cannot finish gets a terminal ``result`` with the reason.

What a member can learn: the group's average (hence, with its own update, the sum of the others').
With groups of at least ``min_group`` (default 3) members, one member, or the coordinator, learns
only a sum over at least two other devices. A coalition of all but one member learns the last one's
update; Sybils need enrollment tokens of the same group, which only the operator issues.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, TypeVar, cast

import numpy as np
from pydantic import Field, Strict

from lada_client.common.config_io import NonNegativeInt, PositiveFloat, PositiveInt, settings
from lada_client.common.secagg import (
    AdvertiseKeys,
    MaskedInput,
    Roster,
    SecAggConfig,
    SecAggError,
    SecAggFailure,
    SecAggResult,
    ShareKeys,
    UnmaskResponse,
)
from lada_client.common.wire import FeatureUpload, secagg_round_id
from lada_coordinator.aggregation.secagg_server import (
    SecAggServer,
    check_masked_peers,
    check_share_bundle,
    check_unmask_response,
)
from lada_coordinator.stores import CoordinatorStore
from lada_coordinator.stores.records import ClientRecord, RoutedShares, SecAggKind

log = logging.getLogger(__name__)
T = TypeVar("T")

#: (round, client id, stage, reason): called for each member left out for what it sent
OffenderHook = Callable[[int, str, str, str], None]


@settings
class SecAggSettings:
    """Group parameters.

    The threshold (neighbours needed to rebuild a member's secrets) is the smallest integer
    ≥ ``threshold_fraction`` × degree, capped at degree − ``dropout_tolerance`` so that every
    allowed group still finishes when that many members drop out. Above half the degree a lying
    coordinator cannot collect both share kinds of one member from honest neighbours; the cap wins
    over that in groups of 3 (threshold 1, logged). ``neighbours`` = None pairs everyone (SecAgg),
    k uses a k-regular graph (SecAgg+). ``min_group`` ≥ ``dropout_tolerance`` + 2, and ≥ 3 by
    default: in a group of 2 each member recovers the other's adapter exactly (2·avg − own).
    """

    threshold_fraction: Annotated[float, Strict(), Field(gt=0, le=1)] = 0.67
    neighbours: PositiveInt | None = None
    scale: PositiveFloat = 2.0**16
    clip: PositiveFloat = 4.0
    min_group: PositiveInt = 3
    dropout_tolerance: NonNegativeInt = 1

    def __post_init__(self) -> None:
        if self.min_group < self.dropout_tolerance + 2:
            raise ValueError("secagg.min_group must be at least dropout_tolerance + 2")
        if self.neighbours is not None and self.neighbours < self.dropout_tolerance + 1:
            raise ValueError("secagg.neighbours must exceed dropout_tolerance")

    def config_for(self, group_size: int) -> SecAggConfig:
        degree = group_size - 1 if self.neighbours is None else min(self.neighbours, group_size - 1)
        threshold = max(1, min(degree - self.dropout_tolerance, math.ceil(self.threshold_fraction * degree)))
        return SecAggConfig(threshold=threshold, neighbours=self.neighbours, scale=self.scale, clip=self.clip)


class NotNow(Exception):
    """A secure-aggregation message that arrives before its step opened or after it closed."""


def _required(found: T | None, t: int, group: str, what: str) -> T:
    """A stored protocol output a step needs; :class:`NotNow` while it is not there yet."""
    if found is None:
        raise NotNow(f"round {t} group {group} has no {what} yet")
    return found


def group_id(client: ClientRecord) -> str:
    """The operator's group of the device, split by the architecture it declares."""
    return f"{client.secagg_group}/{client.model_name or 'any'}"


def groups(clients: Iterable[ClientRecord], settings: SecAggSettings) -> dict[str, list[str]]:
    """Training clients by group; only groups big enough to aggregate."""
    by: dict[str, list[str]] = {}
    for c in clients:
        if c.capabilities.can_train:
            by.setdefault(group_id(c), []).append(c.client_id)
    return {g: sorted(ids) for g, ids in by.items() if len(ids) >= settings.min_group}


class SecureAggregation:
    def __init__(
        self, store: CoordinatorStore, settings: SecAggSettings, on_offender: OffenderHook | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self._on_offender = on_offender or (lambda t, cid, stage, why: None)

    def configs(self, clients: Iterable[ClientRecord]) -> dict[str, SecAggConfig]:
        """Per-group protocol parameters published with the round."""
        return {g: self.settings.config_for(len(ids)) for g, ids in groups(clients, self.settings).items()}

    def setup(
        self,
        t: int,
        features: Mapping[str, FeatureUpload],
        clients: list[ClientRecord],
        configs: Mapping[str, SecAggConfig],
    ) -> dict[str, list[str]]:
        """Close key advertisement: store each group's roster. Returns group → participants.

        ``features`` maps client id → its feature upload, whose ``secagg_keys`` (as they arrived)
        are checked again here.
        Members declaring another adapter length than the group's majority are left out (logged);
        with no majority, or too few members left, the group does not aggregate this round."""
        members: dict[str, list[str]] = {}
        by_id = {c.client_id: c for c in clients}
        for group, cfg in configs.items():
            adverts: list[tuple[str, AdvertiseKeys, int]] = []
            for cid, up in sorted(features.items()):
                if cid not in by_id or group_id(by_id[cid]) != group or up.secagg_keys is None:
                    continue
                try:
                    adverts.append((cid, self.check_advert(t, group, cid, up.secagg_keys), up.adapter_size))
                except SecAggError as exc:
                    self._offender(t, cid, "secagg.keys", str(exc))
            sizes = Counter(size for _, _, size in adverts).most_common()
            if not sizes or (len(sizes) > 1 and sizes[0][1] == sizes[1][1]):
                log.warning(
                    "round %d group %s: no majority adapter size among %d advertisers (%s); no secure aggregation",
                    t,
                    group,
                    len(adverts),
                    dict(sizes),
                )
                continue
            size = sizes[0][0]
            for cid, _, other in adverts:
                if other != size:
                    log.warning(
                        "round %d group %s: %s declares adapter size %d, the group %d; left out",
                        t,
                        group,
                        cid,
                        other,
                        size,
                    )
            keep = [a for cid, a, other in adverts if other == size]
            if len(keep) < self.settings.min_group:
                log.warning(
                    "round %d group %s: %d members (need %d); no secure aggregation",
                    t,
                    group,
                    len(keep),
                    self.settings.min_group,
                )
                continue
            server = SecAggServer(secagg_round_id(t, group), cfg, size)
            try:
                for advert in keep:
                    server.receive_advertise(advert)
                roster = server.roster()
            except SecAggError as exc:
                log.warning("round %d group %s: cannot form a roster (%s); no secure aggregation", t, group, exc)
                continue
            self.store.put_secagg(t, group, "roster", roster)
            members[group] = [p.client_id for p in roster.participants]
        return members

    def group_of(self, t: int, client: ClientRecord) -> str | None:
        """The client's group if it is on that group's roster this round."""
        group = group_id(client)
        roster = self.store.secagg(t, group, "roster")
        return group if roster is not None and client.client_id in roster.keys else None

    # --------------------------------------------------------------------------------- checks
    @staticmethod
    def check_advert(t: int, group: str, client_id: str, advert: AdvertiseKeys) -> AdvertiseKeys:
        if advert.client_id != client_id or advert.round_id != secagg_round_id(t, group):
            raise SecAggError("secagg keys must name this client and its group's round")
        if advert.channel_key is None:
            raise SecAggError("secagg keys must carry a channel key")
        return advert

    def check(
        self, t: int, group: str, client_id: str, step: str, message: ShareKeys | MaskedInput | UnmaskResponse
    ) -> None:
        """Everything the protocol will require of this message when its step closes, checked now
        (its own form was checked when it was parsed, :class:`~lada_client.common.wire.SecAggUpload`).

        Raises :class:`NotNow` when the step is not open (too early or too late), and
        :class:`SecAggError` when the message itself is wrong."""
        roster = self._roster(t, group)
        routed = self.store.secagg(t, group, "routed")
        request = self.store.secagg(t, group, "unmask_request")
        if step == "shares" and isinstance(message, ShareKeys):
            if routed is not None:
                raise NotNow("the shares of this round were already routed")
            self._check_ids(message, client_id, roster)
            check_share_bundle(message, roster)
        elif step == "masked" and isinstance(message, MaskedInput):
            if routed is None or request is not None:
                raise NotNow("masked inputs are taken after the shares are routed and before the unmask request")
            if client_id not in routed.sharers:
                raise NotNow("this client's shares were not routed this round")
            self._check_ids(message, client_id, roster)
            if message.vector.shape != (roster.vector_length,):
                raise SecAggError(
                    f"the masked input must hold {roster.vector_length} values, not {message.vector.size}"
                )
            check_masked_peers(
                message.peers, roster.graph[client_id] & set(routed.sharers), roster.config.threshold, client_id
            )
        elif step == "unmask" and isinstance(message, UnmaskResponse):
            if request is None:
                raise NotNow("no unmask request yet")
            self._check_ids(message, client_id, roster)
            check_unmask_response(message, request, roster)
        else:
            raise SecAggError(f"step {step!r} does not take a {type(message).__name__}")

    @staticmethod
    def _check_ids(message: ShareKeys | MaskedInput | UnmaskResponse, client_id: str, roster: Roster) -> None:
        if message.client_id != client_id or message.round_id != roster.round_id:
            raise SecAggError("message must come from this client for its group's round")

    def _roster(self, t: int, group: str) -> Roster:
        return _required(self.store.secagg(t, group, "roster"), t, group, "roster")

    def _offender(self, t: int, client_id: str, stage: str, why: str) -> None:
        log.warning("round %d: %s left out of secure aggregation (%s): %s", t, client_id, stage, why)
        self._on_offender(t, client_id, stage, why)

    # -------------------------------------------------------------------------------- replay
    def _server(self, t: int, group: str, upto: str) -> SecAggServer:
        """Rebuild the protocol server from stored messages, up to and including step ``upto``.

        Before a step closes, a message that fails its check, or whose sender was quarantined,
        is left out (a dropout); once a step closed, its stored participants must replay, or the
        group fails (:class:`SecAggError`)."""
        roster = self._roster(t, group)
        server = SecAggServer(roster.round_id, roster.config, roster.vector_length)
        for p in roster.participants:
            server.receive_advertise(p)
        server.roster()
        aside = set(self.store.quarantined(t))
        routed = self.store.secagg(t, group, "routed")
        self._replay(
            t,
            "shares",
            routed.sharers if routed is not None else None,
            roster.keys,
            aside,
            server.receive_shares,
        )
        if upto == "shares":
            return server
        server.route_shares()
        request = self.store.secagg(t, group, "unmask_request")
        self._replay(
            t,
            "masked",
            request.survivors if request is not None else None,
            set(server.sharers),
            aside,
            server.receive_masked_input,
        )
        if upto == "masked":
            return server
        server.unmask_request()
        self._replay(t, "unmask", None, set(server.survivors), aside, server.receive_unmask)
        return server

    def _replay(
        self,
        t: int,
        step: str,
        fixed: Iterable[str] | None,
        allowed: Iterable[str],
        aside: set[str],
        receive: Callable[[Any], None],
    ) -> None:
        """Feed one step's stored messages to the server. ``fixed``: who the closed step kept."""
        messages = self._uploads(t, step)
        if fixed is not None:
            for cid in sorted(fixed):
                if cid not in messages:
                    raise SecAggError(f"the stored {step} message of {cid} is missing", cid)
                receive(messages[cid])
            return
        allowed = set(allowed)
        for cid, message in sorted(messages.items()):
            if cid not in allowed or cid in aside:
                continue
            try:
                receive(message)
            except SecAggError as exc:
                self._offender(t, cid, f"secagg.{step}", str(exc))

    def _uploads(self, t: int, step: str) -> dict[str, ShareKeys | MaskedInput | UnmaskResponse]:
        """The step's stored messages by sender (each was checked on arrival; a row that no longer
        parses, which only damage to the database causes, is left out by the store)."""
        kind = cast(SecAggKind, f"secagg.{step}")
        return {cid: up.body for cid, up in self.store.uploads(t, kind).items()}

    # --------------------------------------------------------------------------------- steps
    def route(self, t: int, group: str) -> None:
        server = self._server(t, group, "shares")
        routed = server.route_shares()
        self.store.put_secagg(
            t,
            group,
            "routed",
            RoutedShares(sharers=tuple(server.sharers), inbox={r: tuple(shares) for r, shares in routed.items()}),
        )

    def request_unmask(self, t: int, group: str) -> None:
        server = self._server(t, group, "masked")
        request = server.unmask_request()
        for cid, why in sorted(server.offenders.items()):
            self._offender(t, cid, "secagg.masked", why)
        self.store.put_secagg(t, group, "unmask_request", request)
        log.info("round %d group %s: %d survivors, %d dropped", t, group, len(request.survivors), len(request.dropped))

    def finish(self, t: int, group: str) -> dict:
        """Unmask and store the group's average adapter; returns a summary for the round metrics."""
        server = self._server(t, group, "unmask")
        try:
            total, contributors = server.aggregate()
        except SecAggError as exc:
            if exc.suspect is not None:
                self._offender(t, exc.suspect, "secagg.unmask", str(exc))
            raise
        finally:
            for cid, why in sorted(server.offenders.items()):
                self._offender(t, cid, "secagg.unmask", why)
        average = (total / len(contributors)).astype(np.float32)
        self.store.put_secagg(t, group, "result", SecAggResult(contributors=tuple(contributors), average=average))
        return {"contributors": len(contributors), "vector_length": int(average.size)}

    def fail(self, t: int, group: str, why: str) -> None:
        """Record that the group cannot finish this round: members get ``failed``, not ``pending``."""
        log.warning("round %d group %s: secure aggregation failed: %s", t, group, why)
        self.store.put_secagg(t, group, "result", SecAggFailure(error=why))

    def progress(self, t: int, group: str, step: str) -> tuple[set[str], set[str]]:
        """(expected, arrived) client ids for a protocol step of a group; quarantined members are
        not expected."""
        if step == "shares":
            expected = set(self._roster(t, group).keys)
        elif step == "masked":
            expected = set(_required(self.store.secagg(t, group, "routed"), t, group, "routed shares").sharers)
        else:
            request = _required(self.store.secagg(t, group, "unmask_request"), t, group, "unmask request")
            expected = set(request.survivors)
        expected -= set(self.store.quarantined(t))
        return expected, expected & self.store.uploaders(t, f"secagg.{step}")
