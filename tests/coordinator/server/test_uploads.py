"""Chunked uploads on a real uvicorn server with a real SQLite store and real crypto: a body over
``max_body_bytes`` goes through, bad chunk requests get a clear 4xx and change nothing, sessions
expire, and a SIGKILLed coordinator keeps every chunk it acknowledged."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from lada_client.common.crypto import Direction, Identity, open_envelope, seal
from lada_client.common.wire import (
    Ack,
    Candidate,
    EnvelopeHeader,
    FeatureUpload,
    RoundInfo,
    RoundQuery,
    UploadAbort,
    UploadBegin,
    UploadChunk,
    UploadCommit,
    UploadCommitted,
    UploadStatus,
    UploadStatusQuery,
    max_chunk_bytes,
)
from lada_client.transport import CoordinatorError, RetryPolicy, Transport
from lada_coordinator.config import CoordinatorConfig

MAX_BODY = 32_768
CHUNK = 16_384


@pytest.fixture()
def start_server(tmp_path, tiny_world, free_port, serve_coordinator):
    """Start a real coordinator server (engine not started) with config overrides."""
    with contextlib.ExitStack() as running:

        def start(**overrides):
            config = CoordinatorConfig(
                db_path=tmp_path / "c.sqlite",
                state_dir=tmp_path / "state",
                llm_dir=tiny_world["llm"],
                public_data=tiny_world["data"],
                port=free_port,
                rounds=2,
                **{"max_body_bytes": MAX_BODY, **overrides},
            )
            url, store = running.enter_context(serve_coordinator(config))
            return url, store, config

        yield start


def _open_round(store, n: int = 1500) -> RoundInfo:
    candidates = [
        Candidate(
            sample_id=f"p{i:05d}", question="1+1?", path="1 + 1 = 2. The answer is 2.", llm_logprob=-3.0, llm_tokens=9
        )
        for i in range(n)
    ]
    info = RoundInfo(
        round=1, phase="features", total_rounds=2, candidates=candidates, feature_names=["a", "b", "c", "d"]
    )
    store.open_round(1, info)
    return info


def _features(info: RoundInfo, seed: int = 0) -> FeatureUpload:
    rng = random.Random(seed)
    return FeatureUpload(
        round=1,
        feature_names=info.feature_names,
        sample_ids=[c.sample_id for c in info.candidates],
        features=[[rng.uniform(0, 3) for _ in info.feature_names] for _ in info.candidates],
    )


def _count_posts(t: Transport) -> dict[str, int]:
    counts: dict[str, int] = {}
    post = t._http.post

    def counting(path, **kw):
        counts[path] = counts.get(path, 0) + 1
        return post(path, **kw)

    t._http.post = counting
    return counts


def _sessions(db: Path) -> list[tuple]:
    conn = sqlite3.connect(str(db))
    try:
        return conn.execute(
            "SELECT s.session_id, s.committed_at IS NOT NULL, COUNT(c.idx) FROM upload_sessions s"
            " LEFT JOIN upload_chunks c USING (session_id) GROUP BY s.session_id"
        ).fetchall()
    finally:
        conn.close()


class Manual:
    """Drive an upload session request by request (real sealing), to reach every rejection."""

    def __init__(self, t: Transport, payload: FeatureUpload, chunk: int = CHUNK) -> None:
        self.t, self.chunk = t, chunk
        self.header, self.body = t._seal("features.put", payload.model_dump_json().encode(), 1)
        self.n = -(-len(self.body) // chunk)

    def begin(self, **changes) -> UploadStatus:
        fields = {
            "target": self.header,
            "total_bytes": len(self.body),
            "sha256": hashlib.sha256(self.body).hexdigest(),
            "chunk_bytes": self.chunk,
            **changes,
        }
        return self.t._call_once("upload.begin", UploadBegin(**fields), 1, UploadStatus)

    def put(self, sid: str, i: int, data: bytes | None = None) -> Ack:
        data = self.body[i * self.chunk : (i + 1) * self.chunk] if data is None else data
        return self.t._call_once("upload.chunk", UploadChunk(session_id=sid, index=i, data=data), 1, Ack)

    def status(self, sid: str) -> UploadStatus:
        return self.t._call_once("upload.status", UploadStatusQuery(session_id=sid), 1, UploadStatus)

    def abort(self, sid: str) -> Ack:
        return self.t._call_once("upload.abort", UploadAbort(session_id=sid), 1, Ack)

    def commit(self, sid: str) -> Ack:
        committed = self.t._call_once("upload.commit", UploadCommit(session_id=sid), 1, UploadCommitted)
        return self.t._open_reply("features.put", committed.reply, self.header, Ack)


def _one_upload(start_server, enroll) -> tuple[Manual, object, object]:
    """A server, one enrolled client and its manual upload of the round's features."""
    server = _url, store, config = start_server()
    return Manual(enroll(server), _features(_open_round(store))), store, config


def test_body_over_max_body_bytes_goes_through_in_chunks(start_server, enroll):
    server = url, store, config = start_server()
    t = enroll(server)
    t.upload_chunk_bytes = CHUNK
    info = _open_round(store)
    payload = _features(info)
    _header, body = t._seal("features.put", payload.model_dump_json().encode(), 1)
    assert len(body) > 3 * MAX_BODY
    r = httpx.post(f"{url}/v1/features", content=body, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    counts = _count_posts(t)
    ack = t.call("features.put", payload, 1, Ack)
    assert ack.message == "stored"
    n = -(-(len(body)) // CHUNK)
    assert counts["/v1/upload/begin"] == 1 and counts["/v1/upload/commit"] == 1
    assert counts["/v1/upload/chunk"] in (n, n + 1)  # sealed length differs by a few bytes from the probe
    assert "/v1/upload/status" not in counts and "/v1/features" not in counts
    assert store.uploads(1, "features.put")[t.client_id].features == payload.features
    matrix = store.feature_matrices(1)[t.client_id]  # a chunked upload's matrix is stored too
    assert np.array_equal(matrix, np.asarray(payload.features, dtype=np.float32))
    [(sid, committed, chunks)] = _sessions(config.db_path)
    assert committed and chunks == 0  # chunks are dropped once the body is committed

    # committing again is idempotent: the answer of a retried upload, nothing applied twice
    again = t._call_once("upload.commit", UploadCommit(session_id=sid), 1, UploadCommitted)
    assert again.reply.header.kind == "features.put"
    assert again.reply.header.client_id == t.client_id
    plain = json.loads(open_envelope(again.reply, t.coordinator, t._identity, Direction.TO_CLIENT))
    assert plain["message"] == "already stored"
    assert len(store.uploads(1, "features.put")) == 1


def test_largest_chunk_fits_in_max_body(start_server, enroll):
    server = _url, store, _ = start_server()
    t = enroll(server, name="n" * 55)  # the longest client id (64 characters): the largest header
    info = _open_round(store, 400)
    big = max_chunk_bytes(MAX_BODY)
    m = Manual(t, _features(info), chunk=big)
    s = m.begin()
    for i in range(s.n_chunks):  # the sealed chunk request of a max-size chunk is under max_body_bytes
        assert m.put(s.session_id, i).message == "stored"
    assert m.commit(s.session_id).message == "stored"
    with pytest.raises(CoordinatorError) as exc:
        Manual(t, _features(info, 1), chunk=big + 1).begin()
    assert exc.value.status == 413 and exc.value.error == "chunk_too_large"


BAD = [
    "unknown_session",
    "index_out_of_range",
    "wrong_size",
    "last_chunk_wrong_size",
    "conflicting_chunk",
    "incomplete_commit",
    "other_clients_session",
    "bad_chunk_signature",
    "replayed_chunk",
    "target_kind",
    "target_not_fresh",
    "target_of_other_client",
    "quota",
    "forged_body",
    "wrong_phase",
    "round_mismatch",
    "attachment_outside",
]


@pytest.mark.parametrize("attack", BAD)
def test_bad_upload_requests_get_4xx_and_change_nothing(start_server, enroll, db_dump, attack):
    server = _url, store, config = start_server(upload_max_client_bytes=500_000)
    t = enroll(server)
    other = enroll(server, name="dev2")
    info = _open_round(store)
    m = Manual(t, _features(info))

    if attack == "target_not_fresh":
        t.call("round.get", RoundQuery(), 1, RoundInfo)
        action, want = m.begin, (409, "replay")  # the body was sealed before a later accepted request
    elif attack == "target_kind":
        action, want = (lambda: m.begin(target=m.header.model_copy(update={"kind": "round.get"}))), (422, "bad_upload")
    elif attack == "target_of_other_client":
        action, want = (
            (lambda: m.begin(target=m.header.model_copy(update={"client_id": other.client_id}))),
            (422, "bad_upload"),
        )
    elif attack == "quota":
        action, want = (lambda: m.begin(total_bytes=600_000)), (413, "upload_quota")
    else:
        s = m.begin()
        sid = s.session_id
        m.put(sid, 0)
        if attack == "unknown_session":
            action, want = (lambda: m.put("0" * 32, 1)), (404, "unknown_upload")
        elif attack == "index_out_of_range":
            action, want = (lambda: m.put(sid, s.n_chunks, b"x" * CHUNK)), (422, "bad_chunk")
        elif attack == "wrong_size":
            action, want = (lambda: m.put(sid, 1, m.body[CHUNK : 2 * CHUNK - 1])), (422, "bad_chunk")
        elif attack == "last_chunk_wrong_size":
            action, want = (lambda: m.put(sid, s.n_chunks - 1, b"x" * CHUNK)), (422, "bad_chunk")
        elif attack == "attachment_outside":  # the chunk's reference points past the attachments

            def action():
                text = json.dumps({"session_id": sid, "index": 1, "data": {"$blob": [0, CHUNK]}}).encode()
                framed = b"LDP1" + len(text).to_bytes(4, "big") + text + b"x" * 100
                return t._call_once("upload.chunk", framed, 1, Ack)

            want = (422, "malformed_payload")
        elif attack == "conflicting_chunk":
            action, want = (lambda: m.put(sid, 0, b"y" * CHUNK)), (409, "chunk_conflict")
        elif attack == "other_clients_session":
            om = Manual(other, _features(info, 1))  # t's session is invisible to another client
            action, want = (lambda: om.put(sid, 1, m.body[CHUNK : 2 * CHUNK])), (404, "unknown_upload")
        elif attack == "incomplete_commit":
            action, want = (lambda: m.commit(sid)), (409, "upload_incomplete")
        elif attack == "round_mismatch":

            def action():
                msg = UploadChunk(session_id=sid, index=1, data=m.body[CHUNK : 2 * CHUNK])
                return t._call_once("upload.chunk", msg, 2, Ack)

            want = (400, "round_mismatch")
        elif attack in ("bad_chunk_signature", "replayed_chunk"):
            msg = UploadChunk(session_id=sid, index=1, data=m.body[CHUNK : 2 * CHUNK])
            signer = Identity.generate() if attack == "bad_chunk_signature" else t._identity
            seq = t._seq.next() if attack == "bad_chunk_signature" else t._seq.next() - 1
            header = EnvelopeHeader(client_id=t.client_id, round=1, seq=seq, kind="upload.chunk", sent_at=time.time())
            env = seal(msg.model_dump_json().encode(), header, signer, t.coordinator, Direction.TO_COORDINATOR)

            def action():
                return t._post("/v1/upload/chunk", env.to_bytes())

            want = (401, "unauthenticated") if attack == "bad_chunk_signature" else (409, "replay")
        else:  # forged_body, wrong_phase: every chunk is there, the target endpoint refuses the body
            if attack == "forged_body":  # a body whose inner envelope is not signed by the client
                forged = t._identity
                t._identity = Identity.generate()
                m2 = Manual(t, _features(info, 2))
                t._identity = forged
            else:
                m2 = Manual(t, _features(info, 3))
            s2 = m2.begin()
            for i in range(s2.n_chunks):
                m2.put(s2.session_id, i)
            if attack == "wrong_phase":
                store.set_phase(1, "training")
            action = lambda: m2.commit(s2.session_id)  # noqa: E731
            want = (401, "unauthenticated") if attack == "forged_body" else (409, "wrong_phase")

    before = db_dump(Path(config.db_path))
    with pytest.raises(CoordinatorError) as exc:
        action()
    assert (exc.value.status, exc.value.error) == want, str(exc.value)
    assert str(exc.value).split(": ", 2)[-1]  # a detail a user can act on
    assert db_dump(Path(config.db_path)) == before
    assert not store.uploads(1, "features.put")


def test_commit_with_wrong_declared_hash_is_refused(start_server, enroll, db_dump):
    m, store, config = _one_upload(start_server, enroll)
    s = m.begin(sha256=hashlib.sha256(b"something else").hexdigest())
    for i in range(s.n_chunks):
        m.put(s.session_id, i)
    before = db_dump(Path(config.db_path))
    with pytest.raises(CoordinatorError) as exc:
        m.commit(s.session_id)
    assert (exc.value.status, exc.value.error) == (422, "hash_mismatch")
    assert db_dump(Path(config.db_path)) == before and not store.uploads(1, "features.put")


def test_begin_again_resumes_and_repeated_chunks_are_noops(start_server, enroll):
    m, _, _ = _one_upload(start_server, enroll)
    s = m.begin()
    for i in (0, 2, 3):
        assert m.put(s.session_id, i).message == "stored"
    assert m.put(s.session_id, 2).message == "already stored"
    again = m.begin()  # e.g. after a reconnect: the same session and what it holds
    assert again.session_id == s.session_id and again.received == [0, 2, 3]
    assert m.status(s.session_id).received == [0, 2, 3]
    with pytest.raises(CoordinatorError) as exc:  # a different body under the same sequence number
        m.begin(sha256="1" * 64)
    assert exc.value.status == 409 and exc.value.error == "upload_conflict"


def test_abort_drops_the_session_and_its_chunks(start_server, enroll):
    server = _url, store, config = start_server()
    t, other = enroll(server), enroll(server, "dev2")
    info = _open_round(store)
    m = Manual(t, _features(info))
    s = m.begin()
    m.put(s.session_id, 0)
    o = Manual(other, _features(info, 2))
    theirs = o.begin()
    assert o.abort(s.session_id).message == "no such session"  # not theirs to drop
    assert m.abort(s.session_id).message == "aborted"
    assert [r[0] for r in _sessions(config.db_path)] == [theirs.session_id]  # chunks gone with the session
    with pytest.raises(CoordinatorError) as exc:
        m.put(s.session_id, 1)
    assert exc.value.status == 404 and exc.value.error == "unknown_upload"
    assert m.abort(s.session_id).message == "no such session"  # idempotent


def test_abort_refuses_a_committed_session(start_server, enroll):
    m, _, _ = _one_upload(start_server, enroll)
    s = m.begin()
    for i in range(m.n):
        m.put(s.session_id, i)
    assert m.commit(s.session_id).message == "stored"
    with pytest.raises(CoordinatorError) as exc:
        m.abort(s.session_id)
    assert exc.value.status == 409 and exc.value.error == "upload_committed"


def test_quota_is_freed_by_abort(start_server, enroll):
    server = _url, store, _config = start_server(upload_max_client_bytes=250_000)
    t = enroll(server)
    info = _open_round(store)
    first = Manual(t, _features(info, 1))
    s = first.begin()
    second = Manual(t, _features(info, 2))  # sealed after the first began (sequence numbers)
    assert 125_000 < len(first.body) <= 250_000 and 125_000 < len(second.body) <= 250_000  # room for one, not two
    with pytest.raises(CoordinatorError) as exc:
        second.begin()
    assert exc.value.status == 413 and exc.value.error == "upload_quota"
    first.abort(s.session_id)
    again = Manual(t, _features(info, 2))  # sealed anew: the abort request advanced the sequence number
    assert again.begin().received == []


def test_transport_aborts_an_upload_the_coordinator_refuses(start_server, enroll):
    server = _url, store, config = start_server()
    t = enroll(server)
    info = _open_round(store)
    t.upload_chunk_bytes = CHUNK
    with pytest.raises(CoordinatorError) as exc:  # sealed for round 1, but the payload says round 2
        t.call("features.put", _features(info).model_copy(update={"round": 2}), 1, Ack)
    assert exc.value.status == 400 and exc.value.error == "round_mismatch"
    assert _sessions(config.db_path) == []  # the refused session was aborted, not left to expire


def test_sessions_expire_and_are_cleaned_up(start_server, enroll):
    server = _url, store, config = start_server(upload_ttl_s=0.6)
    t = enroll(server)
    info = _open_round(store)
    m = Manual(t, _features(info))
    s = m.begin()
    m.put(s.session_id, 0)
    time.sleep(0.8)
    with pytest.raises(CoordinatorError) as exc:
        m.put(s.session_id, 1)
    assert exc.value.status == 404 and exc.value.error == "unknown_upload" and "expired" in str(exc.value)
    assert [r[0] for r in _sessions(config.db_path)] == [s.session_id]  # still on disk, no longer usable
    m2 = Manual(t, _features(info, 1))
    s2 = m2.begin()  # a new session sweeps expired ones away, chunks included
    assert [r[0] for r in _sessions(config.db_path)] == [s2.session_id]
    # the transport notices the expired session and starts over with a fresh seal
    t.upload_chunk_bytes = CHUNK
    assert t.call("features.put", _features(info, 1), 1, Ack).message == "stored"


def test_abandoned_sessions_are_swept_without_another_upload(start_server, enroll):
    """Expired sessions and their chunks go on the server's own schedule (upload_sweep_s), not only
    when some later session begins."""
    server = _url, store, config = start_server(upload_ttl_s=0.5, upload_sweep_s=0.3)
    t = enroll(server)
    m = Manual(t, _features(_open_round(store)))
    s = m.begin()
    m.put(s.session_id, 0)
    assert [r[0] for r in _sessions(config.db_path)] == [s.session_id]
    deadline = time.monotonic() + 10
    while _sessions(config.db_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sessions(config.db_path) == []


@pytest.mark.e2e
def test_sigkilled_coordinator_keeps_received_chunks(tiny_world, tmp_path, free_port, issue):
    """A real ``lada-coordinator serve`` process is SIGKILLed mid-upload and restarted: the chunks it
    acknowledged are still there, the client resumes with the missing ones only."""
    from lada_coordinator.store import Store

    url = f"http://127.0.0.1:{free_port}"
    cfg = {
        "db_path": str(tmp_path / "c.sqlite"),
        "state_dir": str(tmp_path / "state"),
        "llm_dir": str(tiny_world["llm"]),
        "public_data": str(tiny_world["data"]),
        "port": free_port,
        "min_clients": 99,
        "max_body_bytes": MAX_BODY,  # the engine idles: the test drives the round
    }
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    token = issue(CoordinatorConfig.from_dict(cfg))
    store = Store(tmp_path / "c.sqlite")
    info = _open_round(store)
    log = open(tmp_path / "coordinator.log", "a")  # noqa: SIM115 - the servers started below write to it

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "lada_coordinator.cli", "serve", "--config", str(tmp_path / "c.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    proc = start()
    try:
        ident = Identity.generate()
        t = Transport(
            url,
            ident,
            timeout_s=10,
            retry=RetryPolicy(attempts=60, initial_backoff_s=0.2, max_backoff_s=0.5),
            upload_chunk_bytes=CHUNK,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                t.enroll(token, "d0")
                break
            except CoordinatorError:
                assert time.monotonic() < deadline, (tmp_path / "coordinator.log").read_text()[-2000:]
                time.sleep(0.3)
        counts = {"ok": 0, "failed": 0}
        post = t._http.post
        kill_after = 4

        def post_and_kill(path, **kw):
            nonlocal proc
            try:
                response = post(path, **kw)
            except httpx.HTTPError:
                if path == "/v1/upload/chunk":
                    counts["failed"] += 1
                raise
            if path == "/v1/upload/chunk" and response.status_code == 200:
                counts["ok"] += 1
                if counts["ok"] == kill_after:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                    proc = start()
            return response

        t._http.post = post_and_kill
        payload = _features(info)
        n = -(-len(t._seal("features.put", payload.model_dump_json().encode(), 1)[1]) // CHUNK)
        assert t.call("features.put", payload, 1, Ack).message == "stored"
        assert counts["failed"] >= 1  # the coordinator was down for a while
        assert counts["ok"] == n  # no acknowledged chunk had to be sent again
        assert store.uploads(1, "features.put")[t.client_id].features == payload.features
    finally:
        proc.terminate()
        proc.wait(10)
        store.close()
        log.close()
