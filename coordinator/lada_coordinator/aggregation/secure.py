"""The coordinator's side of secure aggregation in the co-tuning host framework.

Clients that share an SLM architecture form a group; each round their LoRA adapters are averaged
(FedAvg) through :mod:`lada_client.common.secagg`, so the coordinator only ever holds masked
vectors and the group's sum. Every client message is already stored in SQLite (uploads table,
kinds ``secagg.shares|masked|unmask``) and every coordinator output in the ``secagg`` table, and
the protocol server is rebuilt by replaying them: a restarted coordinator continues the protocol
where it stopped, and nothing here holds state between calls.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from lada_client.common.secagg import (
    AdvertiseKeys,
    MaskedInput,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    ShareKeys,
    UnmaskResponse,
)
from lada_client.common.wire import secagg_round_id
from lada_coordinator.store import ClientRecord, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecAggSettings:
    """``threshold_fraction`` of a client's neighbours must answer to rebuild its secrets (> 0.5 so
    a lying coordinator cannot collect both share kinds); ``neighbours`` = None pairs everyone
    (SecAgg), k uses a k-regular graph (SecAgg+)."""

    threshold_fraction: float = 0.67
    neighbours: int | None = None
    scale: float = 2.0**16
    clip: float = 4.0
    min_group: int = 2

    def config_for(self, group_size: int) -> SecAggConfig:
        degree = group_size - 1 if self.neighbours is None else min(self.neighbours, group_size - 1)
        threshold = max(1, min(degree, math.ceil(self.threshold_fraction * degree)))
        return SecAggConfig(threshold=threshold, neighbours=self.neighbours, scale=self.scale, clip=self.clip)


def groups(clients: Iterable[ClientRecord], settings: SecAggSettings) -> dict[str, list[str]]:
    """Training clients by architecture; only groups big enough to aggregate."""
    by: dict[str, list[str]] = {}
    for c in clients:
        if c.capabilities.get("can_train", True):
            by.setdefault(c.model_name, []).append(c.client_id)
    return {g: sorted(ids) for g, ids in by.items() if len(ids) >= settings.min_group}


class SecureAggregation:
    def __init__(self, store: Store, settings: SecAggSettings) -> None:
        self.store = store
        self.settings = settings

    def configs(self, clients: Iterable[ClientRecord]) -> dict[str, dict]:
        """Per-group protocol parameters published with the round."""
        return {g: self.settings.config_for(len(ids)).to_dict() for g, ids in groups(clients, self.settings).items()}

    def setup(self, t: int, features: dict[str, dict], clients: list[ClientRecord], configs: dict[str, dict]) -> dict[str, list[str]]:
        """Close key advertisement: store each group's roster. Returns group → participants."""
        members: dict[str, list[str]] = {}
        by_id = {c.client_id: c for c in clients}
        for group, cfg in configs.items():
            adverts = [
                (cid, up) for cid, up in features.items()
                if up.get("secagg_keys") and by_id.get(cid) is not None and by_id[cid].model_name == group
            ]
            lengths = {up["adapter_size"] for _, up in adverts}
            if len(adverts) < self.settings.min_group or len(lengths) != 1:
                log.warning("round %d group %s: %d advertisers (adapter sizes %s); no secure aggregation", t, group, len(adverts), lengths)
                continue
            server = SecAggServer(secagg_round_id(t, group), SecAggConfig.from_dict(cfg), lengths.pop())
            try:
                for _, up in adverts:
                    server.receive_advertise(AdvertiseKeys.from_dict(up["secagg_keys"]))
                roster = server.roster()
            except SecAggError as exc:
                log.warning("round %d group %s: cannot form a roster (%s); no secure aggregation", t, group, exc)
                continue
            self.store.put_secagg(t, group, "roster", roster.to_dict())
            members[group] = [p.client_id for p in roster.participants]
        return members

    def group_of(self, t: int, client_id: str, model_name: str) -> str | None:
        roster = self.store.secagg(t, model_name, "roster")
        if roster and any(p["client_id"] == client_id for p in roster["participants"]):
            return model_name
        return None

    def _server(self, t: int, group: str, upto: str) -> SecAggServer:
        """Rebuild the protocol server from stored messages, up to and including step ``upto``."""
        from lada_client.common.secagg import Roster

        roster = Roster.from_dict(self.store.secagg(t, group, "roster"))
        server = SecAggServer(roster.round_id, roster.config, roster.vector_length)
        for p in roster.participants:
            server.receive_advertise(p)
        server.roster()
        members = {p.client_id for p in roster.participants}
        shares = {c: b for c, b in self._uploads(t, "shares").items() if c in members}
        routed = self.store.secagg(t, group, "routed")
        for cid in sorted(routed["sharers"] if routed else shares):
            server.receive_shares(ShareKeys.from_dict(shares[cid]))
        if upto == "shares":
            return server
        server.route_shares()
        request = self.store.secagg(t, group, "unmask_request")
        masked = self._uploads(t, "masked")
        for cid in sorted(request["survivors"] if request else (set(masked) & set(server.sharers))):
            server.receive_masked_input(MaskedInput.from_dict(masked[cid]))
        if upto == "masked":
            return server
        server.unmask_request()
        for cid, body in sorted(self._uploads(t, "unmask").items()):
            if cid in server.survivors:
                server.receive_unmask(UnmaskResponse.from_dict(body))
        return server

    def _uploads(self, t: int, step: str) -> dict[str, dict]:
        return {cid: up["body"] for cid, up in self.store.uploads(t, f"secagg.{step}").items()}

    def route(self, t: int, group: str) -> None:
        server = self._server(t, group, "shares")
        routed = server.route_shares()
        self.store.put_secagg(t, group, "routed", {
            "sharers": list(server.sharers),
            "inbox": {r: [s.to_dict() for s in shares] for r, shares in routed.items()},
        })

    def request_unmask(self, t: int, group: str) -> None:
        request = self._server(t, group, "masked").unmask_request()
        self.store.put_secagg(t, group, "unmask_request", request.to_dict())
        log.info("round %d group %s: %d survivors, %d dropped", t, group, len(request.survivors), len(request.dropped))

    def finish(self, t: int, group: str) -> dict:
        """Unmask and store the group's average adapter; returns a summary for the round metrics."""
        total, contributors = self._server(t, group, "unmask").aggregate()
        average = (total / len(contributors)).astype(np.float32)
        self.store.put_secagg(t, group, "result", {
            "contributors": contributors,
            "vector": base64.b64encode(average.tobytes()).decode(),
        })
        return {"contributors": len(contributors), "vector_length": int(average.size)}

    def progress(self, t: int, group: str, step: str) -> tuple[set[str], set[str]]:
        """(expected, arrived) client ids for a protocol step of a group."""
        if step == "shares":
            expected = {p["client_id"] for p in self.store.secagg(t, group, "roster")["participants"]}
        elif step == "masked":
            expected = set(self.store.secagg(t, group, "routed")["sharers"])
        else:
            expected = set(self.store.secagg(t, group, "unmask_request")["survivors"])
        return expected, expected & set(self._uploads(t, step))
