"""What replicas sharing one PostgreSQL database rely on: a sequence number is accepted once across
connections, chunks of one upload may reach different replicas, and exactly one replica leads the
round engine until its session ends. Real PostgreSQL (``tests/conftest.py``); skipped, saying why,
where no server can start."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from lada_client.common.crypto import Direction, Identity, seal
from lada_client.common.wire import (
    Ack,
    Capabilities,
    EnvelopeHeader,
    SealedEnvelope,
    UploadBegin,
    UploadChunk,
    UploadCommit,
    UploadStatusQuery,
)
from lada_coordinator.server.errors import ApiError
from lada_coordinator.server.uploads import UploadSessions
from lada_coordinator.stores.postgres import PostgresLease, PostgresStore
from lada_coordinator.stores.records import ClientRecord, LeadershipLost

CID = "phone-0001"


@pytest.fixture()
def replicas(postgres_url: str) -> Iterator[Callable[[], PostgresStore]]:
    """``replica()``: another store on the test's database, as another coordinator replica has."""
    opened: list[PostgresStore] = []

    def replica() -> PostgresStore:
        opened.append(PostgresStore(postgres_url))
        return opened[-1]

    yield replica
    for store in opened:
        store.close()


def _device(store: PostgresStore) -> ClientRecord:
    keys = Identity.generate().public.to_b64()
    record = ClientRecord(CID, "phone", keys["sign_key"], keys["kex_key"], "add", "m", Capabilities(), 0, 0, 0)
    store.add_client(record)
    return record


def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_sequence_number_is_accepted_once_across_connections(replicas) -> None:
    """Two replicas race for the same sequence number: the second waits for the first's row lock,
    then finds the number used. Its upload, stored in the same transaction, is rolled back."""
    a, b = replicas(), replicas()
    _device(a)
    first_in, release = threading.Event(), threading.Event()
    results: dict[str, bool] = {}

    def first() -> None:
        with a.transaction() as db:
            results["a"] = a.accept(db, CID, 5, 1, 1)
            first_in.set()
            release.wait(10)

    def second() -> None:
        with contextlib.suppress(LookupError), b.transaction() as db:
            b.put_upload(db, 1, CID, "reward.put", '{"from": "b"}')
            results["b"] = b.accept(db, CID, 5, 1, 1)
            if not results["b"]:
                raise LookupError("replay")  # as the server refuses it: the transaction rolls back

    t1 = threading.Thread(target=first)
    t1.start()
    assert first_in.wait(10)
    t2 = threading.Thread(target=second)
    t2.start()
    time.sleep(0.5)
    assert "b" not in results  # waiting for the first transaction's row lock
    release.set()
    t1.join(10)
    t2.join(10)
    assert results == {"a": True, "b": False}
    assert a.client(CID).last_seq == 5 and a.raw_uploads(1, "reward.put") == {}


def test_racing_requests_of_one_device_on_two_replicas_are_each_accepted_once(replicas) -> None:
    a, b = replicas(), replicas()
    _device(a)
    accepted: list[tuple[str, int]] = []
    rounds = 40
    barrier = threading.Barrier(2)

    def replica(name: str, store: PostgresStore) -> None:
        for seq in range(1, rounds + 1):
            barrier.wait(10)
            try:
                with store.transaction() as db:
                    store.lock_client(db, CID)  # as every sealed request does (server/app.py)
                    store.put_upload(db, seq, CID, "reward.put", f'{{"from": "{name}"}}')
                    if not store.accept(db, CID, seq, 1, 1):
                        raise LookupError("replay")
                accepted.append((name, seq))
            except LookupError:
                pass

    threads = [threading.Thread(target=replica, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(seq for _, seq in accepted) == list(range(1, rounds + 1))  # each once, none twice
    stored = {seq: a.raw_upload(seq, CID, "reward.put") for seq in range(1, rounds + 1)}
    assert stored == {seq: f'{{"from": "{name}"}}' for name, seq in accepted}  # the accepted request's upload
    assert a.client(CID).last_seq == rounds


def test_chunks_of_one_upload_may_reach_different_replicas(replicas) -> None:
    a, b = replicas(), replicas()
    client = _device(a)
    device, coordinator = Identity.generate(), Identity.generate()
    processed: list[int] = []

    def run_target(db, owner, envelope: SealedEnvelope) -> SealedEnvelope:
        processed.append(envelope.header.seq)
        return envelope

    sessions = {
        store: UploadSessions(store, 16_384, 60.0, 10**6, run_target, lambda c, header, reply: body_envelope)
        for store in (a, b)
    }
    seq = iter(range(11, 1000))

    def call(store: PostgresStore, kind: str, payload):
        header = EnvelopeHeader(client_id=CID, round=1, seq=next(seq), kind=kind, sent_at=time.time())
        handler = getattr(sessions[store], kind.split(".")[1])
        with store.transaction() as db:
            store.lock_client(db, CID)
            reply = handler(db, client, header, payload)
            if not store.accept(db, CID, header.seq, 1, 1):
                raise LookupError("replay")  # as the server refuses it: the transaction rolls back
        return reply

    target = EnvelopeHeader(client_id=CID, round=1, seq=10, kind="features.put", sent_at=time.time())
    body_envelope = seal(b"z" * 6000, target, device, coordinator.public, Direction.TO_COORDINATOR)
    body = body_envelope.to_bytes()
    begin = UploadBegin(target=target, total_bytes=len(body), sha256=hashlib.sha256(body).hexdigest(), chunk_bytes=1024)
    status = call(a, "upload.begin", begin)
    chunks = [body[i : i + 1024] for i in range(0, len(body), 1024)]
    assert status.n_chunks == len(chunks) > 4
    for i, data in enumerate(chunks[1:], 1):  # every other chunk to the other replica
        ack = call(
            a if i % 2 else b,
            "upload.chunk",
            UploadChunk(session_id=status.session_id, index=i, data=data),
        )
        assert ack == Ack(message="stored")
    # chunk 0 sent to both replicas at once (a retry racing the original): held once. The two carry
    # consecutive sequence numbers; if the later one commits first, the earlier one is a replay.
    racing: list[str] = []
    message = UploadChunk(session_id=status.session_id, index=0, data=chunks[0])

    def race(store: PostgresStore) -> None:
        try:
            racing.append(call(store, "upload.chunk", message).message)
        except LookupError as exc:
            racing.append(str(exc))

    threads = [threading.Thread(target=race, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(racing) in (["already stored", "stored"], ["replay", "stored"])
    held = call(b, "upload.status", UploadStatusQuery(session_id=status.session_id))
    assert held.received == list(range(len(chunks))) and not held.committed
    assert call(b, "upload.commit", UploadCommit(session_id=status.session_id)).session_id == status.session_id
    call(a, "upload.commit", UploadCommit(session_id=status.session_id))  # a retried commit: "already stored"
    assert processed == [10]  # the body was handled once
    with pytest.raises(ApiError, match="already committed"):
        call(a, "upload.chunk", message)


@pytest.fixture()
def contenders(replicas) -> Iterator[tuple[list[PostgresStore], list[PostgresLease]]]:
    """Two replicas contending for leadership (retrying every 0.2 s), until one leads."""
    stores = [replicas(), replicas()]
    leases = [PostgresLease(store, f"r{i}", retry_s=0.2) for i, store in enumerate(stores)]
    for lease in leases:
        lease.start()
    try:
        _until(lambda: any(lease.leading for lease in leases))
        yield stores, leases
    finally:
        for lease in leases:
            lease.close()


def _holder(leases: list[PostgresLease]) -> int:
    return next(i for i, lease in enumerate(leases) if lease.leading)


def test_exactly_one_replica_leads_and_another_takes_over_when_its_session_ends(contenders) -> None:
    stores, leases = contenders
    for _ in range(10):  # and it stays one
        assert sum(lease.leading for lease in leases) == 1
        time.sleep(0.1)
    holder = _holder(leases)
    other = 1 - holder
    described = leases[other].describe()
    assert described["leader_replica"] == f"r{holder}" and described["leader"] is False
    # the holder's engine thread (here: this one) writes under its lease
    assert leases[holder].wait(threading.Event())
    stores[holder].add_token("a" * 64, expires_at=None)

    leases[holder].close()  # its process ends: its session ends, the lock frees
    _until(lambda: leases[other].leading)
    assert leases[other].describe()["leader_replica"] == f"r{other}"
    with pytest.raises(LeadershipLost):  # the old engine's writes are refused from now on
        stores[holder].add_token("b" * 64, expires_at=None)
    assert [t.token_id for t in stores[other].tokens()] == ["a" * 12]


def test_a_leader_whose_session_is_killed_stops_leading_and_its_engine_is_fenced(contenders, postgres_url) -> None:
    """The server ends the leader's session (as when its host vanishes): within a few seconds some
    replica leads again under a new epoch, and a write of the old leader's engine is refused."""
    import psycopg

    stores, leases = contenders
    holder = _holder(leases)
    assert leases[holder].wait(threading.Event())
    (epoch,) = stores[holder]._one("SELECT epoch FROM leadership")
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
            " AND pid <> pg_backend_pid()",
            ("lada-coordinator leadership",),
        )  # both sessions: the follower's only tried the lock
    _until(lambda: (stores[0]._one("SELECT epoch FROM leadership") or (0,))[0] > epoch)
    _until(lambda: sum(lease.leading for lease in leases) == 1)
    with pytest.raises(LeadershipLost):
        stores[holder].add_token("c" * 64, expires_at=None)  # this thread still holds the old epoch


def test_the_operator_commands_and_the_preflight_use_the_database_url(postgres_url, tmp_path, capsys) -> None:
    from lada_coordinator.cli import main
    from lada_coordinator.config import CoordinatorConfig
    from lada_coordinator.preflight import _database

    cfg = {"state_dir": str(tmp_path / "state"), "llm_dir": "llm", "public_data": "data"}  # no db_path
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    config = CoordinatorConfig.from_dict({**cfg, "database_url": postgres_url})
    status, text = _database(config)
    assert status == "ok" and text.startswith("postgresql lada@") and text.endswith("(tables made on first start)")
    flags = ["--config", str(path), "--database-url", postgres_url]
    assert main(["issue-token", *flags, "--count", "2"]) == 0
    issued = capsys.readouterr().out.split()
    assert main(["tokens", *flags, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(issued) == 2 and [t["state"].split(",")[0] for t in listed] == ["open", "open"]
    assert _database(config)[1].endswith("(0 rounds, 0 devices so far)")
    gone = CoordinatorConfig.from_dict({**cfg, "database_url": postgres_url.rsplit("/", 1)[0] + "/missing"})
    status, text = _database(gone)
    assert status == "fail" and "missing" in text
    path.write_text(json.dumps({**cfg, "db_path": str(tmp_path / "c.sqlite")}))  # a file for one process
    assert main(["tokens", *flags]) == 2
    assert "give db_path (SQLite, one coordinator process) or database_url" in capsys.readouterr().err
