"""The coordinator's side of secure aggregation: one round's :class:`SecAggServer`.

The protocol, its messages, primitives and client side are in :mod:`lada_client.common.secagg`
(shared with the devices); this module collects the clients' messages, routes their encrypted
shares, fixes who survived and removes the masks from the sum. The checks a message must pass are
functions of their own, so :mod:`lada_coordinator.aggregation.secure` can refuse a message on
arrival with exactly the rules the server applies when it replays the round.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from lada_client.common.secagg import (
    MASK_KEY,
    SELF_MASK_SEED,
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    Roster,
    SecAggConfig,
    SecAggError,
    Share,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    check_id,
    commit_self_mask,
    dequantize,
    is_mask_key,
    pair_mask,
    self_mask,
    shamir_reconstruct,
)

__all__ = ["Aggregate", "SecAggServer", "check_masked_peers", "check_share_bundle", "check_unmask_response"]

logger = logging.getLogger(__name__)


class Aggregate(NamedTuple):
    """The decoded sum of the contributors' updates, and who contributed."""

    total: npt.NDArray[np.float64]
    contributors: list[str]


# --------------------------------------------------------- checks shared with aggregation/secure.py
def check_share_bundle(message: ShareKeys, roster: Roster) -> None:
    """A share bundle must come from a roster member and hold one share per neighbour."""
    sender = message.client_id
    if sender not in roster.keys:
        raise SecAggError(f"{sender} is not in the roster")
    if message.round_id != roster.round_id:
        raise SecAggError(f"share bundle from {sender} is for round {message.round_id!r}, not {roster.round_id!r}")
    if len(message.self_mask_commitment) != 32:
        raise SecAggError(f"malformed share bundle from {sender}: bad commitment")
    recipients = [s.recipient for s in message.shares]
    if any(s.sender != sender for s in message.shares) or sorted(recipients) != sorted(roster.graph[sender]):
        raise SecAggError(f"malformed share bundle from {sender}: must hold one share per neighbour")


def check_unmask_response(message: UnmaskResponse, request: UnmaskRequest, roster: Roster) -> None:
    """An unmask response reveals, for the sender's neighbours, self-mask shares of survivors and
    mask-key shares of dropped clients only, never both kinds for one client, each a valid share."""
    sender = message.client_id
    if sender not in request.survivors:
        raise SecAggError(f"unmask response from {sender}, which is not a survivor")
    if message.round_id != roster.round_id:
        raise SecAggError(f"unmask response from {sender} is for round {message.round_id!r}, not {roster.round_id!r}")
    neighbours = roster.graph[sender]
    seeds, keys = set(message.self_mask_shares), set(message.mask_key_shares)
    if seeds & keys:
        raise SecAggError(f"{sender} revealed both share kinds of {', '.join(sorted(seeds & keys))}")
    if not seeds <= set(request.survivors) & neighbours or not keys <= set(request.dropped) & neighbours:
        raise SecAggError(f"malformed unmask response from {sender}: shares for the wrong clients")
    x = roster.index[sender]
    for value in [*message.self_mask_shares.values(), *message.mask_key_shares.values()]:
        Share.from_bytes(x, value)


def check_masked_peers(peers: Iterable[str], allowed: Iterable[str], threshold: int, sender: str) -> None:
    """A masked input may leave out neighbours whose shares did not open, never add any, and must
    keep at least ``threshold`` of them (fewer could not be unmasked)."""
    got, ok = set(peers), set(allowed)
    if len(got) != len(tuple(peers)) or not got <= ok:
        raise SecAggError(f"{sender} masked against {sorted(got)}; only {sorted(ok)} shared keys with it")
    if len(got) < threshold:
        raise SecAggError(f"{sender} masked against {len(got)} neighbours; threshold is {threshold}")


# ---------------------------------------------------------------------------------- the server
class SecAggServer:
    """The coordinator's side of one round: collects messages and sums what survives.

    Phases close in order (``roster``, ``route_shares``, ``unmask_request``); a message for a
    closed phase is refused, above all a masked input arriving after the drop list was fixed.
    """

    def __init__(self, round_id: str, config: SecAggConfig, vector_length: int) -> None:
        self.round_id = check_id(round_id, "round id")
        self.config = config
        if isinstance(vector_length, bool) or not isinstance(vector_length, int) or vector_length < 1:
            raise SecAggError("vector_length must be a positive integer")
        self.vector_length = vector_length
        self._adverts: dict[str, AdvertiseKeys] = {}
        self._roster: Roster | None = None
        self._share_keys: dict[str, ShareKeys] = {}
        self._routed: dict[str, list[EncryptedShare]] | None = None
        self._inputs: dict[str, MaskedInput] = {}
        self._request: UnmaskRequest | None = None
        self._responses: dict[str, UnmaskResponse] = {}
        #: members left out of the sum, and why (shares that did not open, a wrong unmask share)
        self.offenders: dict[str, str] = {}

    def _check_round(self, round_id: str, sender: str) -> None:
        if round_id != self.round_id:
            raise SecAggError(f"message from {sender} is for round {round_id!r}, not {self.round_id!r}")

    @property
    def sharers(self) -> tuple[str, ...]:
        """Clients whose shares were routed (U2)."""
        return tuple(sorted(self._share_keys)) if self._routed is not None else ()

    @property
    def survivors(self) -> tuple[str, ...]:
        """Clients whose masked input counts (U3); final once :meth:`unmask_request` was called."""
        return tuple(sorted(self._inputs))

    def receive_advertise(self, message: AdvertiseKeys) -> None:
        self._check_round(message.round_id, message.client_id)
        if self._roster is not None:
            raise SecAggError(f"keys from {message.client_id} arrived after the roster was sent")
        if message.channel_key is None:
            raise SecAggError(f"keys from {message.client_id} carry no channel key", message.client_id)
        if message.client_id in self._adverts and self._adverts[message.client_id] != message:
            raise SecAggError(f"{message.client_id} advertised two different key sets")
        self._adverts[message.client_id] = message

    def roster(self) -> Roster:
        """Close key advertisement and return the roster to broadcast (same object on every call)."""
        if self._roster is None:
            participants = tuple(self._adverts[c] for c in sorted(self._adverts))
            self._roster = Roster(
                round_id=self.round_id, config=self.config, vector_length=self.vector_length, participants=participants
            )
            degree = min(len(p) for p in self._roster.graph.values())
            if 2 * self.config.threshold <= degree:
                logger.warning(
                    "secagg %s: threshold %d is at most half the neighbourhood (%d); a lying coordinator could "
                    "collect both share kinds of one client",
                    self.round_id,
                    self.config.threshold,
                    degree,
                )
            logger.info("secagg %s: roster of %d clients", self.round_id, len(participants))
        return self._roster

    def receive_shares(self, message: ShareKeys) -> None:
        roster = self._roster
        sender = message.client_id
        self._check_round(message.round_id, sender)
        if roster is None or self._routed is not None:
            raise SecAggError(f"shares from {sender} arrived outside the share phase")
        if sender not in roster.keys:
            raise SecAggError(f"{sender} is not in the roster")
        if sender in self._share_keys:
            raise SecAggError(f"{sender} already sent its shares")
        check_share_bundle(message, roster)
        self._share_keys[sender] = message

    def route_shares(self) -> dict[str, list[EncryptedShare]]:
        """Close the share phase; return, per client that shared, the shares addressed to it."""
        if self._roster is None:
            raise SecAggError("route_shares before the roster was sent")
        if self._routed is None:
            graph = self._roster.graph
            sharers = set(self._share_keys)
            short = sorted(c for c in sharers if len(graph[c] & sharers) < self.config.threshold)
            if short:
                raise SecAggError(
                    f"fewer than {self.config.threshold} neighbours of {', '.join(short)} shared keys; round aborted"
                )
            routed: dict[str, list[EncryptedShare]] = {c: [] for c in sorted(sharers)}
            for bundle in self._share_keys.values():
                for share in bundle.shares:
                    if share.recipient in routed:
                        routed[share.recipient].append(share)
            self._routed = routed
            logger.info("secagg %s: routed shares of %d clients", self.round_id, len(sharers))
        return {c: list(v) for c, v in self._routed.items()}

    def receive_masked_input(self, message: MaskedInput) -> None:
        sender = message.client_id
        self._check_round(message.round_id, sender)
        if self._routed is None or self._roster is None:
            raise SecAggError(f"masked input from {sender} arrived before the shares were routed")
        if self._request is not None:
            raise SecAggError(f"masked input from {sender} arrived after the drop list was fixed; discarded")
        if sender not in self._share_keys:
            raise SecAggError(f"{sender} did not share keys this round")
        if sender in self._inputs:
            raise SecAggError(f"{sender} already sent a masked input")
        vector = np.asarray(message.vector)
        if vector.dtype != np.uint32 or vector.shape != (self.vector_length,):
            raise SecAggError(f"masked input from {sender} must be {self.vector_length} uint32 values")
        check_masked_peers(
            message.peers, self._roster.graph[sender] & set(self._share_keys), self.config.threshold, sender
        )
        self._inputs[sender] = message

    def unmask_request(self) -> UnmaskRequest:
        """Fix the survivor and drop lists (same object on every call) and return them to send.

        A sharer that some survivor masked without (its shares to that survivor did not open) is
        dropped, not summed: its pair mask with that survivor could not cancel. Recorded in
        :attr:`offenders`."""
        if self._routed is None or self._roster is None:
            raise SecAggError("unmask_request before the shares were routed")
        if self._request is None:
            graph, sharers = self._roster.graph, set(self._share_keys)
            for client, message in sorted(self._inputs.items()):
                for accused in sorted((graph[client] & sharers) - set(message.peers)):
                    self.offenders.setdefault(accused, f"its key shares to {client} did not open")
            survivors = tuple(sorted(set(self._inputs) - set(self.offenders)))
            if len(survivors) < self.config.threshold:
                raise SecAggError(f"only {len(survivors)} survivors; threshold is {self.config.threshold}")
            dropped = tuple(sorted(set(self._share_keys) - set(survivors)))
            self._request = UnmaskRequest(round_id=self.round_id, survivors=survivors, dropped=dropped)
            logger.info("secagg %s: %d survivors, %d dropped", self.round_id, len(survivors), len(dropped))
        return self._request

    def receive_unmask(self, message: UnmaskResponse) -> None:
        request, roster = self._request, self._roster
        sender = message.client_id
        self._check_round(message.round_id, sender)
        if request is None or roster is None:
            raise SecAggError(f"unmask response from {sender} arrived before the unmask request")
        if sender in self._responses:
            if self._responses[sender] != message:
                raise SecAggError(f"{sender} sent two different unmask responses")
            return
        check_unmask_response(message, request, roster)
        self._responses[sender] = message

    def aggregate(self) -> Aggregate:
        """Remove every mask and decode the sum; raises while too few shares have arrived."""
        request, roster = self._request, self._roster
        if request is None or roster is None:
            raise SecAggError("aggregate before the unmask request")
        t, n = self.config.threshold, self.vector_length
        total = np.zeros(n, dtype=np.uint32)
        for client in request.survivors:
            total += self._inputs[client].vector
        for client in request.survivors:
            commitment = self._share_keys[client].self_mask_commitment

            def is_self_mask_seed(seed: bytes, c: str = client, k: bytes = commitment) -> bool:
                return hmac.compare_digest(commit_self_mask(seed, self.round_id, c), k)

            seed = self._reconstruct(client, "self_mask_shares", SELF_MASK_SEED, is_self_mask_seed)
            total -= self_mask(seed, self.round_id, client, n)
        for client in request.dropped:
            affected = [s for s in request.survivors if client in self._inputs[s].peers]
            if not affected:
                continue

            its_key = functools.partial(is_mask_key, public=roster.keys[client].mask_key)
            raw = self._reconstruct(client, "mask_key_shares", MASK_KEY, its_key)
            for survivor in affected:
                stream = pair_mask(raw, roster.keys[survivor].mask_key, self.round_id, client, survivor, n)
                if survivor < client:
                    total -= stream
                else:
                    total += stream
        logger.info("secagg %s: aggregated %d clients (threshold %d)", self.round_id, len(request.survivors), t)
        return Aggregate(dequantize(total, len(request.survivors), self.config), list(request.survivors))

    def _reconstruct(self, owner: str, field: str, what: str, valid: Callable[[bytes], bool]) -> bytes:
        """Rebuild a secret of ``owner`` from the responders' shares and check it with ``valid``.

        The first ``threshold`` responders (by id, so by x coordinate) are used. Owners rebuilt from
        the same responders share one set of Lagrange coefficients
        (:func:`~lada_client.common.secagg.lagrange_coefficients`, cached per x set), so each further
        owner costs a dot product, not an interpolation.

        Any ``threshold`` consistent shares rebuild it; a wrong share (a responder lying) gives a
        secret that fails the check. Then each responder is left out in turn: the first whose
        absence gives a valid secret is recorded in :attr:`offenders` and its shares are ignored
        from now on, so one bad responder cannot stop the round while ``threshold`` honest ones answer.
        """
        assert self._roster is not None
        t, index = self.config.threshold, self._roster.index
        # raw shares, checked on arrival (check_unmask_response); only those an attempt uses are parsed
        held = {
            responder: getattr(response, field)[owner]
            for responder, response in sorted(self._responses.items())
            if owner in getattr(response, field) and responder not in self.offenders
        }
        if len(held) < t:
            raise SecAggError(f"only {len(held)} shares of the {what} of {owner} so far; threshold is {t}")

        def attempt(responders: list[str]) -> bytes | None:
            try:
                secret = shamir_reconstruct([Share.from_bytes(index[r], held[r]) for r in responders[:t]], t)
            except SecAggError:
                return None
            return secret if valid(secret) else None

        order = list(held)
        secret = attempt(order)
        if secret is not None:
            return secret
        for suspect in order:
            secret = attempt([r for r in order if r != suspect]) if len(order) > t else None
            if secret is not None:
                self.offenders[suspect] = f"it revealed a wrong share of the {what} of {owner}"
                logger.warning(
                    "secagg %s: %s revealed a wrong share of the %s of %s; ignoring its shares",
                    self.round_id,
                    suspect,
                    what,
                    owner,
                )
                return secret
        raise SecAggError(
            f"cannot rebuild the {what} of {owner}: its shares are inconsistent (did {owner} share garbage?)", owner
        )
