"""Co-tuning's secure FedAvg at the coordinator, with real SQLite and the real protocol: the
coordinator stores only masked vectors, learns the average, survives a dropout, and drops a
hostile member instead of the group."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from lada_client.common.secagg import (
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    Roster,
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggFailure,
    SecAggResult,
)
from lada_client.common.wire import Capabilities, FeatureUpload, SecAggUpload, secagg_round_id
from lada_coordinator.aggregation.secure import NotNow, SecAggSettings, SecureAggregation, group_id
from lada_coordinator.store import ClientRecord, Store

MODEL = "llama-h64-l2-a4-v384"
GROUP = f"default/{MODEL}"


def _clients(n: int, group: str = "default", model: str = MODEL) -> list[ClientRecord]:
    return [
        ClientRecord(
            f"{group}-c{i}", f"{group}-c{i}", "k", "k", "add", model, Capabilities(), 0, 0, 0, secagg_group=group
        )
        for i in range(n)
    ]


def _advert(keys: AdvertiseKeys, adapter_size: int) -> FeatureUpload:
    """A feature upload as far as key advertisement reads it."""
    return FeatureUpload(
        round=1, feature_names=["x"], sample_ids=[], features=[], secagg_keys=keys, adapter_size=adapter_size
    )


def _put(store: Store, t: int, cid: str, step: str, body: dict) -> None:
    with store.transaction() as db:
        store.put_upload(db, t, cid, f"secagg.{step}", SecAggUpload(round=t, step=step, body=body).model_dump_json())


class Group:
    """One group's round at the coordinator, every client message checked as the HTTP layer does."""

    def __init__(self, tmp_path, n: int, size: int = 200, settings: SecAggSettings = SecAggSettings(clip=4.0)) -> None:
        self.store = Store(tmp_path / "db.sqlite")
        self.offenders: dict[str, str] = {}
        self.secure = SecureAggregation(
            self.store, settings, on_offender=lambda t, c, stage, why: self.offenders.setdefault(c, why)
        )
        self.clients = _clients(n)
        self.configs = self.secure.configs(self.clients)
        self.t, self.size = 1, size
        rng = np.random.default_rng(0)
        self.vectors = {c.client_id: rng.normal(0, 0.3, size) for c in self.clients}
        cfg = SecAggConfig.from_dict(self.configs[GROUP])
        self.parties = {
            c.client_id: SecAggClient(c.client_id, secagg_round_id(self.t, GROUP), cfg) for c in self.clients
        }

    def setup(self) -> Roster:
        adverts = {cid: _advert(p.advertise(), self.size) for cid, p in self.parties.items()}
        assert self.secure.setup(self.t, adverts, self.clients, self.configs) == {GROUP: sorted(self.parties)}
        roster = self.store.secagg(self.t, GROUP, "roster")
        assert roster is not None
        return roster

    def check(self, cid: str, step: str, body: dict) -> None:
        """Parse as the HTTP layer does, then check against the round."""
        self.secure.check(self.t, GROUP, cid, step, SecAggUpload(round=self.t, step=step, body=body).body)

    def send(self, cid: str, step: str, body: dict) -> None:
        self.check(cid, step, body)
        _put(self.store, self.t, cid, step, body)

    def share(self, roster: Roster, skip=()) -> dict[str, tuple[EncryptedShare, ...]]:
        for cid, p in self.parties.items():
            if cid not in skip:
                self.send(cid, "shares", p.share_keys(roster).to_dict())
        self.secure.route(self.t, GROUP)
        return dict(self.store.secagg(self.t, GROUP, "routed").inbox)

    def mask(self, inbox: dict[str, tuple[EncryptedShare, ...]], skip=()) -> None:
        for cid, p in self.parties.items():
            if cid not in skip and cid in inbox:
                masked = p.masked_input(self.vectors[cid], list(inbox[cid]))
                self.send(cid, "masked", masked.to_dict())
        self.secure.request_unmask(self.t, GROUP)

    def unmask(self) -> SecAggResult:
        request = self.store.secagg(self.t, GROUP, "unmask_request")
        for cid in request.survivors:
            self.send(cid, "unmask", self.parties[cid].unmask(request.survivors, request.dropped).to_dict())
        self.secure.finish(self.t, GROUP)
        result = self.store.secagg(self.t, GROUP, "result")
        assert isinstance(result, SecAggResult)
        return result


@pytest.mark.parametrize("drop", [0, 1])
def test_group_average_through_the_store(tmp_path, drop):
    g = Group(tmp_path, 5, size=2000)
    assert g.configs[GROUP].threshold == 3  # ceil(0.67 * 4 neighbours), within 4 - 1 (one dropout)
    inbox = g.share(g.setup())
    dropped = sorted(g.parties)[:drop]  # vanish after sharing, before sending their adapter
    for cid in dropped:
        g.parties.pop(cid)
    expected_before, _ = g.secure.progress(g.t, GROUP, "masked")
    g.mask(inbox)
    expected, arrived = g.secure.progress(g.t, GROUP, "masked")
    assert expected == expected_before and expected - arrived == set(dropped)
    assert list(g.store.secagg(g.t, GROUP, "unmask_request").dropped) == dropped
    result = g.unmask()
    survivors = sorted(g.parties)
    assert list(result.contributors) == survivors and not g.offenders
    np.testing.assert_allclose(result.average, np.mean([g.vectors[c] for c in survivors], axis=0), atol=1e-4)

    # What the coordinator stored about one client's adapter is a masked vector, unrelated to it.
    for cid in survivors:
        stored = g.store.uploads(g.t, "secagg.masked")[cid]
        masked = stored.body.vector.astype(np.int64)
        signed = np.where(masked >= 2**31, masked - 2**32, masked) / 2**16
        assert abs(np.corrcoef(signed, g.vectors[cid])[0, 1]) < 0.1
        assert np.abs(signed).mean() > 100 * np.abs(g.vectors[cid]).mean()

    # A restarted coordinator rebuilds the protocol from the store and gets the same sum.
    again = SecureAggregation(Store(tmp_path / "db.sqlite"), SecAggSettings(clip=4.0))
    assert again.finish(g.t, GROUP)["contributors"] == len(survivors)


@pytest.mark.parametrize("n", range(3, 11))
def test_default_threshold_survives_one_dropout_in_every_allowed_group_size(tmp_path, n):
    g = Group(tmp_path, n, size=20)
    inbox = g.share(g.setup())
    last = sorted(g.parties)[-1]
    g.mask(inbox, skip=[last])  # one member drops after sharing its keys
    result = g.unmask()
    assert list(result.contributors) == sorted(set(g.parties) - {last})


def test_groups_are_the_operators_and_small_ones_are_skipped(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    secure = SecureAggregation(store, SecAggSettings())
    assert secure.configs(_clients(2)) == {}  # two members would each learn the other's adapter exactly
    ward, clinic = _clients(3, "ward"), _clients(3, "clinic")
    assert set(secure.configs(ward + clinic)) == {f"ward/{MODEL}", f"clinic/{MODEL}"}
    # a device of another operator group declaring the same architecture does not join this one
    intruder = _clients(1, "clinic")[0]
    assert group_id(intruder) != group_id(ward[0])
    with pytest.raises(ValueError, match="min_group"):
        SecAggSettings(min_group=2)


def test_a_member_declaring_another_adapter_size_is_left_out_not_the_group(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    secure = SecureAggregation(store, SecAggSettings())
    clients = _clients(4)
    configs = secure.configs(clients)
    cfg = SecAggConfig.from_dict(configs[GROUP])
    parties = {c.client_id: SecAggClient(c.client_id, secagg_round_id(1, GROUP), cfg) for c in clients}
    sizes = dict(zip(parties, (10, 10, 10, 99)))
    features = {cid: _advert(p.advertise(), sizes[cid]) for cid, p in parties.items()}
    assert secure.setup(1, features, clients, configs) == {GROUP: sorted(parties)[:3]}
    tie = dict(zip(parties, (10, 10, 99, 99)))
    features = {cid: _advert(p.advertise(), tie[cid]) for cid, p in parties.items()}
    assert secure.setup(2, features, clients, configs) == {}  # no majority: no aggregation this round


def test_invalid_member_messages_are_refused_when_sent(tmp_path):
    g = Group(tmp_path, 4)
    roster = g.setup()
    a, b = sorted(g.parties)[:2]
    bundle = g.parties[a].share_keys(roster).to_dict()
    with pytest.raises(SecAggError, match="one share per neighbour"):
        g.check(a, "shares", {**bundle, "shares": bundle["shares"][:1]})
    with pytest.raises(SecAggError, match="this client"):
        g.check(b, "shares", bundle)  # a's bundle sent as b's
    with pytest.raises(NotNow):
        early = MaskedInput(client_id=a, round_id=roster.round_id, peers=(), vector=np.zeros(g.size, dtype=np.uint32))
        g.secure.check(g.t, GROUP, a, "masked", early)  # before the shares are routed
    g.send(a, "shares", bundle)
    for cid in sorted(g.parties)[1:]:
        g.send(cid, "shares", g.parties[cid].share_keys(roster).to_dict())
    g.secure.route(g.t, GROUP)
    with pytest.raises(NotNow):
        g.check(a, "shares", bundle)  # after
    inbox = g.store.secagg(g.t, GROUP, "routed").inbox
    masked = g.parties[a].masked_input(g.vectors[a], list(inbox[a])).to_dict()
    short = {**masked, "vector": base64.b64encode(b"\0" * 40).decode()}
    with pytest.raises(SecAggError, match=f"must hold {g.size} values"):
        g.check(a, "masked", short)
    with pytest.raises(SecAggError, match="shared keys"):
        g.check(a, "masked", {**masked, "peers": [*masked["peers"], "stranger"]})


def test_shares_that_do_not_open_drop_their_sender_and_the_rest_aggregate(tmp_path):
    g = Group(tmp_path, 5)
    inbox = g.share(g.setup())
    liar = sorted(g.parties)[2]
    victim = sorted(g.parties)[0]
    inbox[victim] = tuple(
        s.model_copy(update={"ciphertext": bytes(148)}) if s.sender == liar else s for s in inbox[victim]
    )
    g.mask(inbox)
    result = g.unmask()
    assert liar not in result.contributors and len(result.contributors) == 4
    assert liar in g.offenders and "did not open" in g.offenders[liar]
    honest = result.contributors
    np.testing.assert_allclose(result.average, np.mean([g.vectors[c] for c in honest], axis=0), atol=1e-4)


def test_a_stored_bad_message_is_skipped_on_replay_not_fatal(tmp_path):
    """A message that bypassed the HTTP checks (older coordinator, edited row) is left out at replay."""
    g = Group(tmp_path, 4)
    roster = g.setup()
    bad = sorted(g.parties)[1]
    for cid, p in g.parties.items():
        body = p.share_keys(roster).to_dict()
        if cid == bad:
            body["shares"] = body["shares"][:1]  # stored without the checks
            _put(g.store, g.t, cid, "shares", body)
        else:
            g.send(cid, "shares", body)
    g.secure.route(g.t, GROUP)
    assert bad in g.offenders and bad not in g.store.secagg(g.t, GROUP, "routed").sharers
    g.parties.pop(bad)
    g.mask(dict(g.store.secagg(g.t, GROUP, "routed").inbox))
    assert list(g.unmask().contributors) == sorted(g.parties)


def test_a_group_that_cannot_finish_gets_a_terminal_result(tmp_path):
    g = Group(tmp_path, 3)
    roster = g.setup()
    first = sorted(g.parties)[0]
    g.send(first, "shares", g.parties[first].share_keys(roster).to_dict())  # the other two never share
    with pytest.raises(SecAggError):
        g.secure.route(g.t, GROUP)
    g.secure.fail(g.t, GROUP, "too few members shared keys")
    assert g.store.secagg(g.t, GROUP, "result") == SecAggFailure(error="too few members shared keys")


def test_an_advert_without_a_channel_key_is_refused() -> None:
    """A roster view leaves out channel keys; a device's own advert must carry one."""
    advert = SecAggClient("c0", secagg_round_id(2, "g"), SecAggConfig(threshold=1)).advertise()
    assert SecureAggregation.check_advert(2, "g", "c0", advert) is advert
    with pytest.raises(SecAggError, match="channel key"):
        SecureAggregation.check_advert(2, "g", "c0", advert.model_copy(update={"channel_key": None}))
