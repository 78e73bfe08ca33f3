"""Secure aggregation, whole rounds: the devices' clients (lada_client.common.secagg) and the server."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lada_client.common import secagg
from lada_client.common.secagg import (
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    Roster,
    SecAggClient,
    SecAggConfig,
    SecAggError,
    Share,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    fedavg,
    quantize,
    self_mask,
    shamir_reconstruct,
)
from lada_coordinator.aggregation import secagg_server
from lada_coordinator.aggregation.secagg_server import SecAggServer

ROUND = "round-7"
LENGTH = 10_000
# chi-square critical values at p = 1e-6, so a correct implementation fails about once a million runs
CHI2_63_P1E6 = 131.37


def _wire(message, cls):
    """Send a message through JSON, as the coordinator and client do."""
    return cls.from_dict(json.loads(json.dumps(message.to_dict())))


class Round:
    """A whole round driven message by message, with every message crossing JSON."""

    def __init__(self, n: int, config: SecAggConfig, length: int = LENGTH, seed: int = 0) -> None:
        self.config = config
        self.ids = [f"c{i}" for i in range(n)]
        self.rng = np.random.default_rng(seed)
        self.inputs = {c: self.rng.uniform(-0.5, 0.5, length) for c in self.ids}
        self.clients = {c: SecAggClient(c, ROUND, config) for c in self.ids}
        self.server = SecAggServer(ROUND, config, length)
        self.masked: dict[str, MaskedInput] = {}
        self.routed: dict[str, list[EncryptedShare]] = {}
        self.responses: dict[str, UnmaskResponse] = {}

    def setup(self, drop_before_sharing: Iterable[str] = ()) -> Roster:
        for client in self.clients.values():
            self.server.receive_advertise(_wire(client.advertise(), AdvertiseKeys))
        roster = _wire(self.server.roster(), Roster)
        for cid, client in self.clients.items():
            if cid not in drop_before_sharing:  # each client gets its own view, as the coordinator sends it
                self.server.receive_shares(_wire(client.share_keys(_wire(roster.view_for(cid), Roster)), ShareKeys))
        self.routed = {
            c: [_wire(s, EncryptedShare) for s in shares] for c, shares in self.server.route_shares().items()
        }
        return roster

    def mask(self, drop: Iterable[str] = ()) -> None:
        for cid in self.routed:
            if cid not in drop:
                self.masked[cid] = self.clients[cid].masked_input(self.inputs[cid], self.routed[cid])
                self.server.receive_masked_input(_wire(self.masked[cid], MaskedInput))

    def unmask(self, silent: Iterable[str] = ()) -> UnmaskRequest:
        request = _wire(self.server.unmask_request(), UnmaskRequest)
        for cid in request.survivors:
            if cid not in silent:
                self.responses[cid] = self.clients[cid].unmask(request.survivors, request.dropped)
                self.server.receive_unmask(_wire(self.responses[cid], UnmaskResponse))
        return request

    def run(self, drop_after_sharing: Iterable[str] = (), silent_at_unmask: Iterable[str] = ()):
        self.setup()
        self.mask(drop_after_sharing)
        self.unmask(silent_at_unmask)
        return self.server.aggregate()

    def tolerance(self, n: int) -> float:
        return n / (2 * self.config.scale) + 1e-9


# --------------------------------------------------------------------------------- correctness
@pytest.mark.parametrize(
    ("n", "neighbours", "threshold"), [(5, None, 3), (5, 2, 2), (8, 4, 3), (9, 3, 3)], ids=["all", "k2", "k4", "k3odd"]
)
def test_sum_of_clients_is_recovered(n, neighbours, threshold):
    rnd = Round(n, SecAggConfig(threshold=threshold, neighbours=neighbours))
    total, contributors = rnd.run()
    assert contributors == rnd.ids
    expected = np.sum([rnd.inputs[c] for c in rnd.ids], axis=0)
    assert np.max(np.abs(total - expected)) <= rnd.tolerance(n)


@pytest.mark.parametrize("dropped", [("c1",), ("c2", "c5")])
@pytest.mark.parametrize(("neighbours", "threshold"), [(None, 3), (4, 2)])
def test_dropout_after_sharing_gives_survivors_sum(dropped, neighbours, threshold):
    # with k=4 both dropped clients may neighbour one survivor, which then keeps only 2 share holders
    rnd = Round(6, SecAggConfig(threshold=threshold, neighbours=neighbours))
    total, contributors = rnd.run(drop_after_sharing=dropped)
    survivors = [c for c in rnd.ids if c not in dropped]
    assert contributors == survivors
    expected = np.sum([rnd.inputs[c] for c in survivors], axis=0)
    assert np.max(np.abs(total - expected)) <= rnd.tolerance(len(survivors))


def test_survivor_silent_at_unmask_still_counts():
    rnd = Round(6, SecAggConfig(threshold=3))
    total, contributors = rnd.run(drop_after_sharing=["c0"], silent_at_unmask=["c3"])
    assert contributors == ["c1", "c2", "c3", "c4", "c5"]
    expected = np.sum([rnd.inputs[c] for c in contributors], axis=0)
    assert np.max(np.abs(total - expected)) <= rnd.tolerance(5)


def test_too_few_survivors_for_the_threshold_is_refused():
    rnd = Round(6, SecAggConfig(threshold=3), length=100)
    rnd.setup()
    rnd.mask(drop=["c0", "c1", "c2", "c3"])
    with pytest.raises(SecAggError, match="only 2 survivors"):
        rnd.server.unmask_request()


def test_too_few_unmask_shares_is_refused_until_enough_arrive():
    rnd = Round(6, SecAggConfig(threshold=3), length=100)
    rnd.setup()
    rnd.mask(drop=["c0", "c1", "c2"])  # 3 survivors: each has only 2 surviving share holders
    rnd.unmask()
    with pytest.raises(SecAggError, match="only 2 shares"):
        rnd.server.aggregate()


def test_round_aborts_when_a_client_lacks_neighbours_that_shared():
    rnd = Round(5, SecAggConfig(threshold=2, neighbours=2), length=100)
    for client in rnd.clients.values():
        rnd.server.receive_advertise(client.advertise())
    roster = rnd.server.roster()
    victim = "c0"
    for cid in sorted(roster.graph[victim]):  # both neighbours of c0 drop before sharing
        rnd.clients.pop(cid)
    for client in rnd.clients.values():
        rnd.server.receive_shares(client.share_keys(roster))
    with pytest.raises(SecAggError, match="c0"):
        rnd.server.route_shares()


# ------------------------------------------------------------------------------------- privacy
def _chi_square_top_bits(values: np.ndarray, bits: int = 6) -> float:
    counts = np.bincount((values >> (32 - bits)).astype(np.int64), minlength=2**bits)
    expected = values.size / 2**bits
    return float(np.sum((counts - expected) ** 2 / expected))


def test_masked_input_is_statistically_unrelated_to_the_update():
    rnd = Round(5, SecAggConfig(threshold=3))
    ramp = np.linspace(-0.9, 0.9, LENGTH)  # a highly structured update, far from uniform
    rnd.inputs["c2"] = ramp
    rnd.run()
    masked = rnd.masked["c2"].vector
    plain = quantize(ramp, rnd.config)
    # the test has power: the plain quantised update fails it badly
    assert _chi_square_top_bits(plain) > 10 * CHI2_63_P1E6
    assert abs(np.corrcoef(plain.view(np.int32), ramp)[0, 1]) > 0.99
    # what the coordinator stores is uniform over Z/2^32 and uncorrelated with the update
    assert _chi_square_top_bits(masked) < CHI2_63_P1E6
    for view in (masked.astype(np.float64), masked.view(np.int32).astype(np.float64)):
        assert abs(np.corrcoef(view, ramp)[0, 1]) < 5 / np.sqrt(LENGTH)


def test_masked_input_stays_hidden_after_the_coordinator_removes_the_self_mask():
    """A survivor's self-mask seed is legitimately revealed; its pair masks still hide the update."""
    rnd = Round(5, SecAggConfig(threshold=3))
    rnd.inputs["c1"] = np.full(LENGTH, 0.25)
    rnd.run()
    roster = rnd.server.roster()
    shares = [
        Share(roster.index[r], int.from_bytes(resp.self_mask_shares["c1"], "big"))
        for r, resp in rnd.responses.items()
        if "c1" in resp.self_mask_shares
    ]
    seed = shamir_reconstruct(shares, 3)
    unmasked_self = rnd.masked["c1"].vector - self_mask(seed, ROUND, "c1", LENGTH)
    assert _chi_square_top_bits(unmasked_self) < CHI2_63_P1E6
    assert np.count_nonzero(unmasked_self == quantize(rnd.inputs["c1"], rnd.config)) < 5


def test_routed_shares_cannot_be_opened_with_the_coordinators_knowledge():
    rnd = Round(4, SecAggConfig(threshold=2), length=10)
    roster = rnd.setup()
    share = rnd.routed["c1"][0]
    sender, recipient = roster.keys[share.sender], roster.keys[share.recipient]
    # an impostor with the recipient's name but not its channel private key
    impostor = SecAggClient("c1", ROUND, rnd.config)
    forged = tuple(impostor.advertise() if p.client_id == "c1" else p for p in roster.participants)
    impostor.share_keys(Roster(round_id=ROUND, config=rnd.config, vector_length=10, participants=forged))
    with pytest.raises(SecAggError, match="only 0 neighbours"):  # not one share opens
        impostor.masked_input(np.zeros(10), rnd.routed["c1"])
    # keys derived from any public material fail too
    public = [sender.channel_key, recipient.channel_key, sender.mask_key, recipient.mask_key]
    for a in public:
        for b in public:
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"lada/secagg/v1", info=b).derive(a)
            with pytest.raises(InvalidTag):
                AESGCM(key).decrypt(share.nonce, share.ciphertext, None)
    # the intended recipient opens it
    rnd.clients["c1"].masked_input(np.zeros(10), rnd.routed["c1"])


def test_client_refuses_to_reveal_both_share_kinds_of_one_client():
    rnd = Round(5, SecAggConfig(threshold=3), length=10)
    rnd.setup()
    rnd.mask()
    client = rnd.clients["c0"]
    with pytest.raises(SecAggError, match="both"):
        client.unmask(["c0", "c1", "c2", "c3"], ["c3", "c4"])
    client.unmask(["c0", "c1", "c2", "c3"], ["c4"])
    with pytest.raises(SecAggError, match="already revealed"):  # a second request flipping c3 to dropped
        client.unmask(["c0", "c1", "c2", "c4"], ["c3"])
    with pytest.raises(SecAggError, match="not listed as a survivor"):
        client.unmask(["c1", "c2", "c3", "c4"], ["c0"])


def test_server_refuses_a_response_revealing_both_share_kinds():
    rnd = Round(5, SecAggConfig(threshold=3), length=10)
    rnd.setup()
    rnd.mask(drop=["c4"])
    rnd.server.unmask_request()
    honest = rnd.clients["c0"].unmask(["c0", "c1", "c2", "c3"], ["c4"])
    forged = UnmaskResponse(
        client_id="c0",
        round_id=ROUND,
        self_mask_shares=dict(honest.self_mask_shares),
        mask_key_shares={**honest.mask_key_shares, "c1": honest.self_mask_shares["c1"]},
    )
    with pytest.raises(SecAggError, match="both share kinds"):
        rnd.server.receive_unmask(forged)


# ---------------------------------------------------------------------------- protocol errors
def test_vector_length_mismatch_is_refused():
    rnd = Round(4, SecAggConfig(threshold=2), length=50)
    rnd.setup()
    with pytest.raises(SecAggError, match="expects 50"):
        rnd.clients["c0"].masked_input(np.zeros(49), rnd.routed["c0"])
    bad = MaskedInput(client_id="c0", round_id=ROUND, peers=("c1", "c2", "c3"), vector=np.zeros(49, dtype=np.uint32))
    with pytest.raises(SecAggError, match="50 uint32"):
        rnd.server.receive_masked_input(bad)


def test_share_that_does_not_open_drops_its_sender_not_the_group():
    """A sender whose share to c2 does not open (garbage, or tampered on the way) is left out of
    c2's masks; the server then drops that sender from the sum and the rest still aggregate."""
    rnd = Round(5, SecAggConfig(threshold=2), length=10)
    rnd.setup()
    share = rnd.routed["c2"][0]
    flipped = bytes([share.ciphertext[0] ^ 1]) + share.ciphertext[1:]
    rnd.routed["c2"] = [share.model_copy(update={"ciphertext": flipped}), *rnd.routed["c2"][1:]]
    rnd.mask()
    assert share.sender not in rnd.masked["c2"].peers
    request = rnd.unmask()
    assert share.sender in request.dropped and share.sender in rnd.server.offenders
    total, contributors = rnd.server.aggregate()
    assert contributors == sorted(set(rnd.ids) - {share.sender})
    np.testing.assert_allclose(total, sum(rnd.inputs[c] for c in contributors), atol=rnd.tolerance(4))
    with pytest.raises(SecAggError, match="malformed share"):
        EncryptedShare.from_dict({**share.to_dict(), "ciphertext": "AAAA"})


def test_masked_input_may_omit_but_never_add_peers():
    rnd = Round(4, SecAggConfig(threshold=2), length=10)
    rnd.setup()
    masked = rnd.clients["c0"].masked_input(rnd.inputs["c0"], rnd.routed["c0"])
    for peers in (("c1", "c9"), ("c1",), ("c1", "c1", "c2")):
        with pytest.raises(SecAggError):
            rnd.server.receive_masked_input(
                MaskedInput(client_id="c0", round_id=ROUND, peers=peers, vector=masked.vector)
            )


def test_client_masks_once_and_late_inputs_are_discarded():
    rnd = Round(5, SecAggConfig(threshold=3), length=10)
    rnd.setup()
    rnd.mask(drop=["c4"])
    with pytest.raises(SecAggError, match="already sent"):
        rnd.clients["c0"].masked_input(np.zeros(10), rnd.routed["c0"])
    rnd.server.unmask_request()
    late = rnd.clients["c4"].masked_input(np.zeros(10), rnd.routed["c4"])
    with pytest.raises(SecAggError, match="after the drop list"):
        rnd.server.receive_masked_input(late)


def test_roster_with_other_parameters_is_refused():
    config = SecAggConfig(threshold=2)
    clients = [SecAggClient(f"c{i}", ROUND, config) for i in range(3)]
    server = SecAggServer(ROUND, SecAggConfig(threshold=2, scale=2.0**10), 10)
    for client in clients:
        server.receive_advertise(client.advertise())
    with pytest.raises(SecAggError, match="config"):
        clients[0].share_keys(server.roster())
    with pytest.raises(SecAggError, match="threshold 3 exceeds"):
        Roster(
            round_id=ROUND,
            config=SecAggConfig(threshold=3),
            vector_length=10,
            participants=tuple(c.advertise() for c in clients),
        )
    with pytest.raises(SecAggError, match="malformed message"):
        Roster.from_dict({"round_id": ROUND})


def test_fedavg_matches_weighted_mean_and_secure_sum():
    rnd = Round(4, SecAggConfig(threshold=2), length=500)
    weights = [1.0, 2.0, 3.0, 4.0]
    plain = [rnd.inputs[c] for c in rnd.ids]
    expected = sum(w * x for w, x in zip(weights, plain, strict=True)) / sum(weights)
    assert np.allclose(fedavg(plain, weights), expected)
    assert np.allclose(fedavg(plain), np.mean(plain, axis=0))
    for c, w in zip(rnd.ids, weights, strict=True):  # weighted mean under SecAgg: clients submit w * x
        rnd.inputs[c] = w * rnd.inputs[c] / sum(weights)
    total, _ = rnd.run()
    assert np.max(np.abs(total - expected)) <= rnd.tolerance(4)
    with pytest.raises(SecAggError):
        fedavg(plain, [1.0, -1.0, 1.0, 1.0])
    with pytest.raises(SecAggError):
        fedavg([np.zeros(2), np.zeros(3)])


def _unmask_with_a_lie(rnd: Round, liar: str, victim: str) -> None:
    request = rnd.server.unmask_request()
    for cid in request.survivors:
        response = rnd.clients[cid].unmask(request.survivors, request.dropped)
        if cid == liar:  # shift the victim's self-mask share: stays in range, so only the commitment notices
            bumped = (int.from_bytes(response.self_mask_shares[victim], "big") + 1).to_bytes(66, "big")
            response = response.model_copy(update={"self_mask_shares": {**response.self_mask_shares, victim: bumped}})
        rnd.server.receive_unmask(response)


def test_tampered_unmask_share_is_caught_by_the_commitment():
    """With exactly ``threshold`` shares of c1 a wrong one is caught, not summed; it cannot be outvoted."""
    rnd = Round(5, SecAggConfig(threshold=3), length=10)
    rnd.setup()
    rnd.mask(drop=["c4"])
    _unmask_with_a_lie(rnd, "c0", "c1")
    with pytest.raises(SecAggError, match="inconsistent"):
        rnd.server.aggregate()


def test_one_wrong_unmask_share_is_outvoted_and_its_sender_named():
    """With more shares than the threshold, the responder whose share is wrong is found by leaving
    each out in turn; the sum comes out right and the liar is recorded."""
    rnd = Round(5, SecAggConfig(threshold=2), length=10)
    rnd.setup()
    rnd.mask()
    _unmask_with_a_lie(rnd, "c0", "c1")
    total, contributors = rnd.server.aggregate()
    assert contributors == rnd.ids and "c0" in rnd.server.offenders
    np.testing.assert_allclose(total, sum(rnd.inputs.values()), atol=rnd.tolerance(5))


# ------------------------------------------------------------------- unmasking: Lagrange basis reuse
def _reconstruct_per_owner(shares: Iterable[Share], threshold: int, secret_len: int = 32) -> bytes:
    """shamir_reconstruct as it was before the basis was cached: a full interpolation per owner."""
    p = secagg.SHAMIR_PRIME
    points = sorted(shares, key=lambda s: s.x)
    if len({s.x for s in points}) != len(points):
        raise SecAggError("malformed share: two shares have the same x coordinate")
    if len(points) < threshold:
        raise SecAggError(f"need at least {threshold} shares to reconstruct, got {len(points)}")
    value = 0
    for i, pi in enumerate(points[:threshold]):
        num, den = 1, 1
        for j, pj in enumerate(points[:threshold]):
            if i != j:
                num = num * -pj.x % p
                den = den * (pi.x - pj.x) % p
        value = (value + pi.y * num * pow(den, -1, p)) % p
    if value >= 1 << (8 * secret_len):
        raise SecAggError("malformed share: the shares are inconsistent")
    return value.to_bytes(secret_len, "big")


@pytest.mark.parametrize(
    ("n", "neighbours", "threshold", "drop", "lie"),
    [(8, None, 4, ["c6", "c7"], None), (9, 4, 3, ["c2"], None), (6, None, 6 - 1, [], None), (5, None, 2, [], "c0")],
    ids=["all-dropout", "k4-dropout", "threshold-n-1", "liar"],
)
def test_unmasking_is_bit_identical_to_per_owner_interpolation(monkeypatch, n, neighbours, threshold, drop, lie):
    """The same round unmasked twice, with the cached basis and with one interpolation per owner:
    the same sum to the bit, the same contributors and the same offenders."""
    rnd = Round(n, SecAggConfig(threshold=threshold, neighbours=neighbours), length=257)
    rnd.setup()
    rnd.mask(drop)
    if lie:
        _unmask_with_a_lie(rnd, lie, "c1")
    else:
        rnd.unmask()
    reference_server = copy.deepcopy(rnd.server)
    total, contributors = rnd.server.aggregate()
    monkeypatch.setattr(secagg_server, "shamir_reconstruct", _reconstruct_per_owner)
    reference_total, reference_contributors = reference_server.aggregate()
    assert np.array_equal(total, reference_total) and contributors == reference_contributors
    assert rnd.server.offenders == reference_server.offenders == ({lie: rnd.server.offenders[lie]} if lie else {})
    survivors = [c for c in rnd.ids if c not in drop]
    np.testing.assert_allclose(total, sum(rnd.inputs[c] for c in survivors), atol=rnd.tolerance(len(survivors)))


def test_unmasking_computes_the_basis_once_per_responder_set():
    """All pairs, 8 clients, threshold 4, 2 dropped: 6 self-mask seeds and 2 mask keys are rebuilt.
    A seed's owner holds no share of its own, so owners c0..c4 each use the first 4 other
    responders (5 distinct x sets), while c5 and both dropped clients use c0..c3, already computed."""
    rnd = Round(8, SecAggConfig(threshold=4), length=64)
    rnd.setup()
    rnd.mask(drop=["c6", "c7"])
    rnd.unmask()
    secagg.lagrange_coefficients.cache_clear()
    first, _ = rnd.server.aggregate()
    info = secagg.lagrange_coefficients.cache_info()
    assert (info.misses, info.hits) == (5, 3)
    again, _ = rnd.server.aggregate()  # a later unmask with the same responders computes nothing
    assert secagg.lagrange_coefficients.cache_info().misses == 5
    assert np.array_equal(first, again)


def test_a_clients_view_of_the_roster_carries_its_neighbours_channel_keys_only():
    rnd = Round(12, SecAggConfig(threshold=2, neighbours=4))
    for client in rnd.clients.values():
        rnd.server.receive_advertise(_wire(client.advertise(), AdvertiseKeys))
    roster = _wire(rnd.server.roster(), Roster)
    view = _wire(roster.view_for("c3"), Roster)
    assert view.graph == roster.graph  # every mask key is there: the client derives the graph itself
    assert {p.client_id for p in view.participants if p.channel_key is not None} == roster.graph["c3"] | {"c3"}
    assert [p.mask_key for p in view.participants] == [p.mask_key for p in roster.participants]
    assert len(json.dumps(view.to_dict())) < 0.9 * len(json.dumps(roster.to_dict()))
    rnd.clients["c3"].share_keys(view)  # enough to share with its neighbours
    neighbour = min(roster.graph["c3"])  # c3's view lacks the channel keys of its neighbour's other neighbours
    with pytest.raises(SecAggError, match="channel keys of neighbours"):
        rnd.clients[neighbour].share_keys(_wire(roster.view_for("c3"), Roster))
    full = _wire(roster.view_for("nobody"), Roster)  # a non-member's view holds no channel key
    assert all(p.channel_key is None for p in full.participants)
