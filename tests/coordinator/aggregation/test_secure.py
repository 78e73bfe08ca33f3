"""Co-tuning's secure FedAvg at the coordinator, with real SQLite and the real protocol: the
coordinator stores only masked vectors, learns the average, and survives a dropout."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from lada_client.common.secagg import EncryptedShare, Roster, SecAggClient, SecAggConfig
from lada_client.common.wire import SecAggUpload, secagg_round_id
from lada_coordinator.aggregation.secure import SecAggSettings, SecureAggregation
from lada_coordinator.store import ClientRecord, Store

GROUP = "llama-h64-l2-a4-v384"


def _clients(n: int) -> list[ClientRecord]:
    return [ClientRecord(f"c{i}", f"c{i}", "k", "k", "add", GROUP, {"can_train": True}, 0, 0, 0) for i in range(n)]


def _put(store: Store, t: int, cid: str, step: str, body: dict) -> None:
    with store.transaction() as db:
        store.put_upload(db, t, cid, f"secagg.{step}", SecAggUpload(round=t, step=step, body=body).model_dump_json())


@pytest.mark.parametrize("drop", [0, 1])
def test_group_average_through_the_store(tmp_path, drop):
    store = Store(tmp_path / "db.sqlite")
    secure = SecureAggregation(store, SecAggSettings(clip=4.0))
    clients = _clients(5)
    configs = secure.configs(clients)
    assert configs[GROUP]["threshold"] == 3  # ceil(0.67 * 4 neighbours)
    t, size = 1, 2000
    rng = np.random.default_rng(0)
    vectors = {c.client_id: rng.normal(0, 0.3, size) for c in clients}
    parties = {c.client_id: SecAggClient(c.client_id, secagg_round_id(t, GROUP), SecAggConfig.from_dict(configs[GROUP])) for c in clients}
    features = {cid: {"secagg_keys": p.advertise().to_dict(), "adapter_size": size} for cid, p in parties.items()}
    assert secure.setup(t, features, clients, configs) == {GROUP: sorted(parties)}

    roster = Roster.from_dict(store.secagg(t, GROUP, "roster"))
    for cid, p in parties.items():
        _put(store, t, cid, "shares", p.share_keys(roster).to_dict())
    secure.route(t, GROUP)
    inbox = store.secagg(t, GROUP, "routed")["inbox"]
    dropped = sorted(parties)[:drop]  # vanish after sharing, before sending their adapter
    for cid, p in parties.items():
        if cid not in dropped:
            masked = p.masked_input(vectors[cid], [EncryptedShare.from_dict(s) for s in inbox[cid]])
            _put(store, t, cid, "masked", masked.to_dict())
    expected, arrived = secure.progress(t, GROUP, "masked")
    assert expected - arrived == set(dropped)
    secure.request_unmask(t, GROUP)
    request = store.secagg(t, GROUP, "unmask_request")
    assert request["dropped"] == dropped
    for cid in request["survivors"]:
        _put(store, t, cid, "unmask", parties[cid].unmask(request["survivors"], request["dropped"]).to_dict())
    summary = secure.finish(t, GROUP)

    survivors = [cid for cid in parties if cid not in dropped]
    assert summary["contributors"] == len(survivors)
    result = store.secagg(t, GROUP, "result")
    average = np.frombuffer(base64.b64decode(result["vector"]), dtype=np.float32)
    np.testing.assert_allclose(average, np.mean([vectors[c] for c in survivors], axis=0), atol=1e-4)

    # What the coordinator stored about one client's adapter is a masked vector, unrelated to it.
    for cid in survivors:
        stored = store.uploads(t, "secagg.masked")[cid]
        masked = np.frombuffer(base64.b64decode(stored["body"]["vector"]), dtype=np.uint32).astype(np.int64)
        signed = np.where(masked >= 2**31, masked - 2**32, masked) / 2**16
        assert abs(np.corrcoef(signed, vectors[cid])[0, 1]) < 0.1
        assert np.abs(signed).mean() > 100 * np.abs(vectors[cid]).mean()

    # A restarted coordinator rebuilds the protocol from the store and gets the same sum.
    again = SecureAggregation(Store(tmp_path / "db.sqlite"), SecAggSettings(clip=4.0))
    assert again.finish(t, GROUP) == summary


def test_small_or_mixed_groups_are_skipped(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    secure = SecureAggregation(store, SecAggSettings())
    lone = _clients(1)
    assert secure.configs(lone) == {}
    clients = _clients(3)
    configs = secure.configs(clients)
    parties = {c.client_id: SecAggClient(c.client_id, secagg_round_id(1, GROUP), SecAggConfig.from_dict(configs[GROUP])) for c in clients}
    features = {cid: {"secagg_keys": p.advertise().to_dict(), "adapter_size": 10 + i} for i, (cid, p) in enumerate(parties.items())}
    assert secure.setup(1, features, clients, configs) == {}  # adapter sizes disagree: not one architecture
