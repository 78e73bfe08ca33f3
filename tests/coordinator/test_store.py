"""Durable coordinator state: enrollment tokens, one key per device, private files, old databases.

The tests that take ``store`` run on SQLite and on PostgreSQL (``conftest.py``); the file modes and
the databases of earlier versions are SQLite's."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lada_client.common.crypto import Identity
from lada_client.common.enrollment import EnrollmentToken
from lada_client.common.secagg import SecAggClient, SecAggConfig, SecAggFailure
from lada_client.common.wire import Candidate, Capabilities, LoraFactor, Phase, RoundInfo
from lada_coordinator.aggregation.secagg_server import SecAggServer
from lada_coordinator.credentials import issue_tokens
from lada_coordinator.store import (
    UNDECLARED,
    ClientRecord,
    EnrollmentRefused,
    PathProvenance,
    QuarantineEntry,
    RoundMetrics,
    Store,
)
from lada_coordinator.stores import CoordinatorStore


def _record(name: str, ident: Identity | None = None) -> ClientRecord:
    keys = (ident or Identity.generate()).public.to_b64()
    return ClientRecord(f"{name}-0000", name, keys["sign_key"], keys["kex_key"], "add", "m", Capabilities(), 0, 0, 0)


def test_tokens_are_one_time_hex_safe_on_a_command_line_and_name_the_coordinator(store: CoordinatorStore) -> None:
    ident = Identity.generate()
    tokens = issue_tokens(store, ident, 200)
    assert len(set(tokens)) == 200
    # a token starting with "-" would be parsed as an option by `lada-client run --token TOKEN`
    assert all(t[0] != "-" and set(t) <= set("lada1-" + "0123456789abcdef") for t in tokens)
    assert all(EnrollmentToken.parse(t).names(ident.public.fingerprint()) for t in tokens)
    assert not EnrollmentToken.parse(tokens[0]).names(Identity.generate().public.fingerprint())


def test_tokens_expire_can_be_revoked_and_enroll_once(store: CoordinatorStore) -> None:
    ident = Identity.generate()
    short, revoked, good = (EnrollmentToken.parse(t) for t in issue_tokens(store, ident, 3))
    with store.transaction() as db:  # the first one expired a second ago
        db.execute("UPDATE tokens SET expires_at = ? WHERE token_hash = ?", (time.time() - 1, short.secret_hash))
    with pytest.raises(EnrollmentRefused, match="expired"):
        store.enroll(short.secret_hash, _record("a"))
    assert store.revoke_token(revoked.token_id) == 1
    with pytest.raises(EnrollmentRefused, match="revoked"):
        store.enroll(revoked.secret_hash, _record("b"))
    assert store.revoke_token(revoked.token_id) == 0  # already revoked
    with pytest.raises(ValueError, match="8 hex"):
        store.revoke_token("ab")
    stored = store.enroll(good.secret_hash, _record("c"))
    assert stored.secagg_group == "default"
    with pytest.raises(EnrollmentRefused, match="already used"):
        store.enroll(good.secret_hash, _record("d"))
    states = {t.token_id: (t.used_by, t.revoked) for t in store.tokens()}
    assert states[good.token_id] == ("c-0000", False) and states[revoked.token_id] == (None, True)
    assert [c.name for c in store.clients()] == ["c"]


def test_one_key_pair_enrolls_under_one_name_only(store: CoordinatorStore) -> None:
    first, second = (
        EnrollmentToken.parse(t) for t in issue_tokens(store, Identity.generate(), 2, secagg_group="ward-7")
    )
    device = Identity.generate()
    assert store.enroll(first.secret_hash, _record("phone", device)).secagg_group == "ward-7"
    with pytest.raises(EnrollmentRefused, match="already enrolled under another name"):
        store.enroll(second.secret_hash, _record("phone-2", device))
    assert not store.tokens()[1].used_by  # the refused enrollment did not consume the token


def test_revoked_clients_are_no_longer_listed(store: CoordinatorStore) -> None:
    store.add_client(_record("a"))
    store.add_client(_record("b"))
    assert store.revoke_client("a") and not store.revoke_client("a")
    assert [c.name for c in store.clients()] == ["b"]
    assert store.client("a-0000").revoked
    assert [(c.name, c.revoked) for c in store.devices()] == [("a", True), ("b", False)]  # the operator still sees it


def test_a_device_is_seen_at_enrollment_and_at_each_accepted_request_only(store: CoordinatorStore) -> None:
    (token,) = (EnrollmentToken.parse(t) for t in issue_tokens(store, Identity.generate(), 1))
    before = time.time()
    stored = store.enroll(token.secret_hash, _record("a"))
    (seen,) = store.devices()
    assert before <= seen.enrolled_at == seen.last_seen_at == stored.last_seen_at <= time.time()
    time.sleep(0.01)
    with store.transaction() as db:
        assert store.accept(db, "a-0000", 1, 10, 20)
    assert store.client("a-0000").last_seen_at > seen.last_seen_at
    later = store.client("a-0000").last_seen_at
    with store.transaction() as db:
        assert not store.accept(db, "a-0000", 1, 10, 20)  # a replay is not a sign of life
    assert store.client("a-0000").last_seen_at == later
    store.add_client(_record("b"))  # enrolled without ever calling in
    assert store.client("b-0000").last_seen_at is None


def test_database_and_wal_are_private_even_if_created_wider(tmp_path: Path) -> None:
    db = tmp_path / "state" / "c.sqlite"
    store = Store(db)
    store.add_client(_record("a"))
    store.close()
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            os.chmod(f"{db}{suffix}", 0o644)
    store = Store(db)
    store.add_client(_record("b"))  # writes: the WAL exists now
    try:
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{db}{suffix}")
            assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600, (suffix, oct(path.stat().st_mode))
    finally:
        store.close()
    fresh = tmp_path / "fresh" / "c.sqlite"
    Store(fresh).close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600 and stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700


def test_a_database_of_the_first_release_opens_and_gains_the_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE tokens (token_hash TEXT PRIMARY KEY, created_at REAL NOT NULL, used_by TEXT, used_at REAL);"
        "CREATE TABLE clients (client_id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, sign_key TEXT NOT NULL,"
        " kex_key TEXT NOT NULL, domain TEXT NOT NULL, model_name TEXT NOT NULL, capabilities TEXT NOT NULL,"
        " enrolled_at REAL NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0, bytes_in INTEGER NOT NULL DEFAULT 0,"
        " bytes_out INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO clients VALUES ('a-1', 'a', 'k', 'k', 'add', 'm', '{}', 1.0, 1700000000000000, 5, 6);"
        "INSERT INTO tokens VALUES ('00ff', 1.0, NULL, NULL);"
    )
    conn.commit()
    conn.close()
    store = Store(db)
    (client,) = store.clients()
    assert (client.name, client.last_seq, client.secagg_group, client.revoked, client.last_seen_at) == (
        "a",
        1700000000000000,
        "default",
        False,
        None,
    )
    with pytest.raises(EnrollmentRefused, match="expired"):  # an old token has no expiry: it cannot be used
        store.enroll("00ff", _record("b"))
    assert store.quarantine(1, "a-1", "features", "bad") and store.quarantined(1) == {"a-1": "features: bad"}
    store.close()


def test_a_device_whose_capabilities_are_missing_or_unreadable_cannot_train(store: CoordinatorStore) -> None:
    """Fail closed: only a record that parses and says ``can_train`` lets the engine allocate training."""
    phone = replace(_record("phone"), capabilities=Capabilities(can_train=False, memory_mb=512))
    store.add_client(phone)
    assert store.client(phone.client_id).capabilities == phone.capabilities
    stored = {
        "old": ('{"can_score": true, "can_train": true}', True),  # before can_train_ort and memory_mb
        "silent": ('{"can_score": true}', False),
        "empty": ("{}", False),
        "wrong": ('{"can_train": "maybe"}', False),
        "unknown": ('{"can_train": true, "gpu": "yes"}', False),
        "list": ("[]", False),
        "garbled": ("{not json", False),
    }
    for name, (text, can_train) in stored.items():
        store.add_client(_record(name))
        with store.transaction() as db:
            db.execute("UPDATE clients SET capabilities = ? WHERE name = ?", (text, name))
        capabilities = store.client(f"{name}-0000").capabilities
        assert capabilities.can_train is can_train, name
        assert capabilities == (Capabilities() if can_train else UNDECLARED), name


def test_round_records_come_back_as_the_models_they_were_stored_as(store: CoordinatorStore) -> None:
    info = RoundInfo(
        round=1,
        phase=Phase.FEATURES,
        total_rounds=2,
        candidates=[Candidate(sample_id="p0", question="1 + 1?", path="2", llm_logprob=-1.0, llm_tokens=2)],
        feature_names=["nll"],
    )
    paths = PathProvenance(path_sources={"p0": "gold"}, path_stats={"gold": 1})
    store.open_round(1, info, paths, opened_at=10.0)
    assert store.round_info(1) == (info, paths)
    with pytest.raises(KeyError):
        store.round_info(2)
    assert store.round_info(1)[0] is store.round_info(1)[0]  # parsed once while the round is unchanged
    reopened = info.model_copy(update={"feature_names": ["nll", "tokens"]})
    store.open_round(1, reopened, paths, opened_at=10.0)  # a round opened again is read afresh
    assert store.round_info(1) == (reopened, paths)

    factor = LoraFactor(
        name="q_proj",
        a="AAAA",
        a_shape=(1, 1),
        b="AAAA",
        b_shape=(1, 1),
        scale=2.0,
        digest="0" * 64,
        digest_t="f" * 64,
    )
    store.put_allocations(1, "slm", {"phone-1": (["p0"], "score_only")}, {"phone-1": [factor]})
    assert store.server_update(1, "phone-1") == [factor] and store.server_update(1, "other") is None

    assert not store.has_secagg(1, "g", "result") and store.secagg(1, "g", "result") is None
    store.put_secagg(1, "g", "result", SecAggFailure(error="too few members"))
    assert store.has_secagg(1, "g", "result")
    assert store.secagg(1, "g", "result") == SecAggFailure(error="too few members")
    server = SecAggServer("r1", SecAggConfig(threshold=2), 4)
    for i in range(3):
        server.receive_advertise(SecAggClient(f"c{i}", "r1", SecAggConfig(threshold=2)).advertise())
    store.put_secagg(1, "g", "roster", server.roster())
    assert store.secagg(1, "g", "roster") == server.roster()
    assert store.secagg(1, "g", "roster") is store.secagg(1, "g", "roster")  # parsed once per stored text

    store.quarantine(1, "phone-1", "features", "bad")
    (entry,) = store.quarantine_log()
    assert isinstance(entry, QuarantineEntry) and (entry.round, entry.client_id, entry.stage) == (
        1,
        "phone-1",
        "features",
    )
    (running,) = store.round_metrics()
    assert running == RoundMetrics(1, Phase.FEATURES, 10.0, None, {})
    store.set_phase(1, Phase.FINISHED, {"clients": {}, "seconds_close": 0.5})
    (done,) = store.round_metrics()
    assert done.phase == Phase.FINISHED and done.closed_at is not None
    assert done.to_dict() == {
        "round": 1,
        "phase": "finished",
        "opened_at": 10.0,
        "closed_at": done.closed_at,
        "clients": {},
        "seconds_close": 0.5,
    }


def test_feature_matrices_come_back_as_stored_in_one_read_and_older_rows_as_none(store: CoordinatorStore) -> None:
    """A feature upload is stored with its matrix (float32, little-endian, with its shape); a round's
    matrices are read together; a row without one, or whose matrix does not decode, reads as None
    (the engine then parses its payload) and never hides the others."""
    z = np.array([[1.5, -2.25], [1e6, 3.0e-8], [0.1, 7.0]])
    with store.transaction() as db:
        assert store.put_upload(db, 1, "a-1", "features.put", "{}", z)
        assert not store.put_upload(db, 1, "a-1", "features.put", "{}", z + 1)  # once: a repeat changes nothing
        store.put_upload(db, 1, "old-1", "features.put", "{}")  # as an earlier version stored it
        store.put_upload(db, 1, "bad-1", "features.put", "{}", z)
        store.put_upload(db, 1, "empty-1", "features.put", "{}", np.zeros((0, 2)))
        store.put_upload(db, 2, "a-1", "features.put", "{}", z)
        store.put_upload(db, 1, "a-1", "reward.put", "{}")
        db.execute("UPDATE uploads SET matrix_rows = 4 WHERE client_id = 'bad-1'")  # a hand edit
    with pytest.raises(ValueError, match="two dimensions"), store.transaction() as db:
        store.put_upload(db, 1, "flat-1", "features.put", "{}", np.zeros(3))
    assert "flat-1" not in store.uploaders(1, "features.put")
    got = store.feature_matrices(1)
    assert set(got) == {"a-1", "old-1", "bad-1", "empty-1"}
    assert got["old-1"] is None and got["bad-1"] is None
    assert got["a-1"].dtype == np.float32 and not got["a-1"].flags.writeable
    assert np.array_equal(got["a-1"], z.astype(np.float32)) and got["empty-1"].shape == (0, 2)
    (blob,) = store._all("SELECT matrix FROM uploads WHERE round = 2")[0]
    assert blob == z.astype("<f4").tobytes()
    assert store.raw_upload(1, "a-1", "features.put") == "{}" and store.raw_upload(1, "x", "features.put") is None


def test_an_uploads_table_of_an_earlier_version_gains_the_matrix_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE uploads (round INTEGER NOT NULL, client_id TEXT NOT NULL, kind TEXT NOT NULL,"
        " payload TEXT NOT NULL, received_at REAL NOT NULL, PRIMARY KEY (round, client_id, kind));"
        "INSERT INTO uploads VALUES (1, 'a-1', 'features.put', '{\"x\": 1}', 1.0);"
    )
    conn.commit()
    conn.close()
    store = Store(db)
    try:
        assert store.feature_matrices(1) == {"a-1": None}
        assert store.raw_uploads(1, "features.put") == {"a-1": '{"x": 1}'}
        with store.transaction() as tx:
            store.put_upload(tx, 1, "b-1", "features.put", "{}", np.ones((2, 3)))
        assert store.feature_matrices(1)["b-1"].tolist() == [[1.0] * 3] * 2
    finally:
        store.close()
