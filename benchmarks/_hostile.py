"""The hostile-client suite: what a validly enrolled, hostile device (or a keyless one) tries.

Every attack uses the SDK's own pieces (``Identity``, ``Transport``, ``seal``: validly signed and
sealed payloads) or raw sockets, against a coordinator on 127.0.0.1, and returns an
:class:`Outcome`: whether the coordinator *held* (refused it with the expected answer, or defused
it), what it answered, and how many requests it took. Every attack is bounded in count and time.

Two drivers use this catalogue: ``tests/e2e/test_hostile.py`` (every attack must hold) and
``benchmarks/reliability.py --hostile`` (figures in ``docs/reliability.md``). Attacks of phase
``features`` need the coordinator's current round in its features phase; each of them enrolls a
fresh device, which ends quarantined for the round. :class:`HostileMember` is a co-tuning group
member that attacks secure aggregation from inside a real federation.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from lada_client.common.crypto import Direction, Identity, seal
from lada_client.common.enrollment import EnrollmentToken
from lada_client.common.secagg import Roster, SecAggClient, SecAggConfig, SecAggInbox
from lada_client.common.wire import (
    INT64_MAX,
    Ack,
    Allocation,
    AllocationQuery,
    CoordinatorKeys,
    EnrollEnvelope,
    EnrollRequest,
    EnvelopeHeader,
    FeatureUpload,
    RewardReport,
    RoundInfo,
    RoundQuery,
    SecAggQuery,
    SecAggReply,
    SecAggUpload,
    secagg_round_id,
)
from lada_client.transport import CoordinatorError, RetryPolicy, Transport

NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class Target:
    """The coordinator under attack, and the operator-side hooks an attack needs."""

    url: str
    issue: Callable[..., str]  # issue(ttl_s=None) -> a fresh one-time enrollment token
    header_timeout_s: float
    body_timeout_s: float
    max_body_bytes: int
    verify: str | bool = True
    enroll_burst: int = 10
    slow_connections: int = 50  # half-open connections the slowloris attack opens


@dataclass
class Outcome:
    attack: str
    held: bool
    answer: str
    requests: int = 1
    note: str = ""


@dataclass
class Attack:
    name: str
    phase: str  # "any" | "features" | "last" (after the others: it leaves the address rate-limited)
    run: Callable[[Target], Outcome]
    what: str


CATALOGUE: dict[str, Attack] = {}


def attack(phase: str, what: str) -> Callable[[Callable[[Target], Outcome]], Callable[[Target], Outcome]]:
    def register(fn: Callable[[Target], Outcome]) -> Callable[[Target], Outcome]:
        name = fn.__name__
        CATALOGUE[name] = Attack(name, phase, fn, what)
        return fn

    return register


def run_all(target: Target, phase: str) -> list[Outcome]:
    out = []
    for a in CATALOGUE.values():
        if a.phase == phase:
            try:
                out.append(a.run(target))
            except Exception as exc:  # noqa: BLE001 - an attack that breaks the harness counts as not held
                out.append(Outcome(a.name, False, f"harness error {type(exc).__name__}: {exc}"))
    return out


# ------------------------------------------------------------------------------------ helpers
def device(target: Target, name: str | None = None, **enroll: Any) -> Transport:
    """A freshly enrolled device (the SDK's transport), refusing nothing on its side."""
    t = Transport(target.url, Identity.generate(), timeout_s=15, retry=NO_RETRY, verify=target.verify)
    t.enroll(target.issue(), name or f"hostile-{secrets.token_hex(3)}", **enroll)
    return t


def _answer(call: Callable[[], Any]) -> tuple[int | None, str, CoordinatorError | None]:
    try:
        call()
        return 200, "accepted", None
    except CoordinatorError as exc:
        return exc.status, exc.error, exc


def _raw_call(
    t: Transport, kind: str, payload: dict[str, Any], round_index: int
) -> tuple[int | None, str, CoordinatorError | None]:
    """Seal any JSON (also one the SDK's models would refuse to build) as ``kind``."""
    return _answer(lambda: t._call_once(kind, json.dumps(payload, allow_nan=True).encode(), round_index, Ack))


def _healthy(target: Target) -> bool:
    try:
        return httpx.get(f"{target.url}/healthz", verify=target.verify, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def _round(t: Transport) -> RoundInfo:
    return t.call("round.get", RoundQuery(), 0, RoundInfo)


def _features(info: RoundInfo, **changes: Any) -> dict[str, Any]:
    body = {
        "round": info.round,
        "feature_names": list(info.feature_names),
        "sample_ids": [c.sample_id for c in info.candidates],
        "features": [[1.0] * len(info.feature_names) for _ in info.candidates],
        "offers": [],
        "secagg_keys": None,
        "adapter_size": 0,
    }
    return {**body, **changes}


def _poison_features(
    target: Target, name: str, change: Callable[[RoundInfo, Transport], dict[str, Any]], expect: str
) -> Outcome:
    """Upload one poisoned feature set from a fresh device: it must be refused (422, for the reason
    ``expect`` names) and the device quarantined for the round (its allocation query answered 409
    ``quarantined``)."""
    t = device(target)
    info = _round(t)
    return _held_for_the_round(
        t, info, name, _raw_call(t, "features.put", _features(info, **change(info, t)), info.round), expect
    )


def _held_for_the_round(
    t: Transport, info: RoundInfo, name: str, answer: tuple[int | None, str, CoordinatorError | None], expect: str
) -> Outcome:
    """A refused upload (422, for the reason ``expect`` names) whose device is quarantined for the
    round (its allocation query answered 409 ``quarantined``)."""
    status, error, exc = answer
    after, after_error, _ = _answer(
        lambda: t.call("allocation.get", AllocationQuery(round=info.round), info.round, Allocation)
    )
    held = status == 422 and expect in str(exc) and (after, after_error) == (409, "quarantined")
    return Outcome(
        name, held, f"{status} {error} ({str(exc)[-90:]}); then allocation.get {after} {after_error}", requests=4
    )


# ------------------------------------------------------------------------- any phase: no key
@attack("any", "the operator's status view without the operator token")
def status_is_operator_only(target: Target) -> Outcome:
    r = httpx.get(f"{target.url}/v1/status", verify=target.verify, timeout=10)
    health = httpx.get(f"{target.url}/healthz", verify=target.verify, timeout=10).json()
    return Outcome(
        "status_is_operator_only",
        r.status_code == 401 and health == {"status": "ok"},
        f"{r.status_code}; healthz {health}",
        2,
    )


@attack("any", "an unauthenticated enrollment body of 4× max_body_bytes, chunked (no Content-Length)")
def chunked_oversize_enroll(target: Target) -> Outcome:
    chunk, total = b"x" * (1 << 20), 4 * target.max_body_bytes
    sent = 0

    def body():
        nonlocal sent
        while sent < total:
            sent += len(chunk)
            yield chunk

    try:
        r = httpx.post(
            f"{target.url}/v1/enroll",
            content=body(),
            verify=target.verify,
            timeout=30,
            headers={"content-type": "application/json"},
        )
        answer = f"{r.status_code} {r.json().get('error', '')}"
        held = r.status_code == 413
    except httpx.HTTPError as exc:  # the server closed the connection mid-body
        answer, held = f"connection closed ({type(exc).__name__})", True
    held = held and sent < total + len(chunk) and _healthy(target)
    return Outcome("chunked_oversize_enroll", held, f"{answer} after {sent / 2**20:.0f} MiB of {total / 2**20:.0f} MiB")


@attack("any", "half-open connections that never finish their request head (slowloris)")
def slow_headers(target: Target) -> Outcome:
    n = target.slow_connections
    host, port = httpx.URL(target.url).host, httpx.URL(target.url).port
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        socks.append(s)
    alive_during = _healthy(target)
    time.sleep(target.header_timeout_s + 1.5)
    closed = 0
    for s in socks:
        s.settimeout(2)
        with contextlib.suppress(TimeoutError, OSError):
            closed += s.recv(1) == b""
        s.close()
    return Outcome(
        "slow_headers",
        closed == n and alive_during,
        f"{closed}/{n} closed by the server; served others meanwhile: {alive_during}",
        n,
    )


@attack("any", "a request whose body never finishes arriving")
def slow_body(target: Target) -> Outcome:
    host, port = httpx.URL(target.url).host, httpx.URL(target.url).port
    with socket.create_connection((host, port), timeout=target.body_timeout_s + 10) as s:
        s.sendall(
            b'POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a"'
        )
        started = time.monotonic()
        reply = s.recv(4096)
        waited = time.monotonic() - started
    held = reply.startswith(b"HTTP/1.1 408") and waited < target.body_timeout_s + 5
    first_line = reply.split(b"\r\n")[0].decode(errors="replace") or "closed"
    return Outcome("slow_body", held, f"{first_line} after {waited:.1f}s")


@attack("any", "tell an enrolled client id from an unknown one, or learn its sequence number, without its key")
def keyless_oracle(target: Target) -> Outcome:
    victim = device(target)
    victim.call("round.get", RoundQuery(), 0, RoundInfo)
    keys = CoordinatorKeys.model_validate(httpx.get(f"{target.url}/v1/identity", verify=target.verify).json())
    from lada_client.common.crypto import PublicIdentity

    coordinator = PublicIdentity.from_b64(keys.sign_key, keys.kex_key)
    attacker = Identity.generate()
    answers = set()
    for client_id, seq in ((victim.client_id, 1), (victim.client_id, INT64_MAX), ("nobody-00000000", 1)):
        header = EnvelopeHeader(client_id=client_id, round=0, seq=seq, kind="round.get", sent_at=time.time())
        env = seal(b"{}", header, attacker, coordinator, Direction.TO_COORDINATOR)
        r = httpx.post(
            f"{target.url}/v1/round",
            content=env.to_bytes(),
            verify=target.verify,
            headers={"content-type": "application/octet-stream"},
        )
        answers.add((r.status_code, r.text))
    ((status, text),) = answers if len(answers) == 1 else ((0, "different answers"),)
    return Outcome(
        "keyless_oracle",
        len(answers) == 1 and status == 401,
        f"{len(answers)} distinct answer(s): {status} {text[:60]}",
        4,
    )


@attack("last", "guess enrollment tokens as fast as possible (run last: it empties this address's bucket)")
def enroll_bruteforce(target: Target) -> Outcome:
    fingerprint = EnrollmentToken.parse(target.issue()).fingerprint
    answers: dict[str, int] = {}
    tries = 3 * target.enroll_burst
    for i in range(tries):
        t = Transport(target.url, Identity.generate(), retry=NO_RETRY, verify=target.verify)
        guess = str(EnrollmentToken(fingerprint, secrets.token_hex(24)))
        _, error, _ = _answer(lambda t=t, guess=guess, i=i: t.enroll(guess, f"guess{i}"))
        answers[error] = answers.get(error, 0) + 1
    held = answers.get("accepted", 0) == 0 and answers.get("rate_limited", 0) >= tries - target.enroll_burst - 2
    return Outcome("enroll_bruteforce", held, json.dumps(answers), tries + 1)


@attack("any", "enroll a low-order (all-zero) X25519 key")
def enroll_low_order_key(target: Target) -> Outcome:
    token = target.issue()
    ident = Identity.generate()
    keys = CoordinatorKeys.model_validate(httpx.get(f"{target.url}/v1/identity", verify=target.verify).json())
    from lada_client.common.crypto import PublicIdentity

    coordinator = PublicIdentity.from_b64(keys.sign_key, keys.kex_key)
    header = EnvelopeHeader(client_id="zero", round=0, seq=1, kind="enroll", sent_at=time.time())
    env = seal(
        EnrollRequest(token=token, client_name="zero").model_dump_json().encode(),
        header,
        ident,
        coordinator,
        Direction.TO_COORDINATOR,
    )
    body = EnrollEnvelope(
        sign_key=ident.public.to_b64()["sign_key"], kex_key=base64.b64encode(bytes(32)).decode(), envelope=env
    )
    r = httpx.post(
        f"{target.url}/v1/enroll",
        content=body.model_dump_json(),
        verify=target.verify,
        headers={"content-type": "application/json"},
    )
    unused = Transport(target.url, Identity.generate(), retry=NO_RETRY, verify=target.verify)
    still_valid = _answer(lambda: unused.enroll(token, f"after-zero-{secrets.token_hex(2)}"))[0] == 200
    held = r.status_code == 422 and r.json()["error"] == "bad_keys" and still_valid
    return Outcome(
        "enroll_low_order_key", held, f"{r.status_code} {r.json().get('error')}; token still usable: {still_valid}", 3
    )


@attack("any", "enroll one key pair under a second name")
def enroll_key_reuse(target: Target) -> Outcome:
    ident = Identity.generate()
    Transport(target.url, ident, retry=NO_RETRY, verify=target.verify).enroll(
        target.issue(), f"twin-{secrets.token_hex(2)}"
    )
    status, error, _ = _answer(
        lambda: Transport(target.url, ident, retry=NO_RETRY, verify=target.verify).enroll(
            target.issue(), f"twin-{secrets.token_hex(2)}"
        )
    )
    return Outcome("enroll_key_reuse", (status, error) == (409, "duplicate_client"), f"{status} {error}", 4)


@attack("any", "enroll with a token past its expiry")
def enroll_expired_token(target: Target) -> Outcome:
    token = target.issue(ttl_s=0.5)
    time.sleep(0.8)
    t = Transport(target.url, Identity.generate(), retry=NO_RETRY, verify=target.verify)
    status, error, exc = _answer(lambda: t.enroll(token, f"late-{secrets.token_hex(2)}"))
    return Outcome("enroll_expired_token", status == 401 and "expired" in str(exc), f"{status} {error}", 2)


@attack("any", "a device given a token for another coordinator (wrong URL, or keys swapped in between)")
def enroll_wrong_coordinator(target: Target) -> Outcome:
    real = EnrollmentToken.parse(target.issue())
    forged = EnrollmentToken(Identity.generate().public.fingerprint()[:32], real.secret)
    t = Transport(target.url, Identity.generate(), retry=NO_RETRY, verify=target.verify)
    _status, error, _ = _answer(lambda: t.enroll(str(forged), f"misled-{secrets.token_hex(2)}"))
    return Outcome(
        "enroll_wrong_coordinator",
        error == "fingerprint_mismatch",
        f"device refused: {error}",
        1,
        "the device checks the coordinator's key before sending the token",
    )


@attack("any", "signed requests with a sequence number or round at 2^63 (beyond SQLite's INTEGER)")
def integer_overflow(target: Target) -> Outcome:
    t = device(target)
    answers = []
    for field_name in ("seq", "round"):
        header = EnvelopeHeader(
            client_id=t.client_id, round=0, seq=t._seq.next(), kind="round.get", sent_at=time.time()
        )
        env = seal(b"{}", header, t._identity, t.coordinator, Direction.TO_COORDINATOR)
        doc = {**json.loads(env.header.canonical_bytes()), field_name: 2**63}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()  # the frame as to_bytes lays it out
        body = b"LDE1" + len(text).to_bytes(4, "big") + text + env.nonce + env.signature + env.ciphertext
        r = httpx.post(f"{target.url}/v1/round", content=body, verify=target.verify)
        answers.append(r.status_code)
    return Outcome("integer_overflow", answers == [422, 422], f"seq {answers[0]}, round {answers[1]}", 2)


@attack("any", "a device whose clock is an hour behind")
def clock_behind(target: Target) -> Outcome:
    t = device(target)
    t._clock_offset = -3600.0
    seen: list[str] = []
    post = t._http.post

    def record(path: str, **kw: Any) -> httpx.Response:
        r = post(path, **kw)
        seen.append(f"{r.status_code}")
        return r

    t._http.post = record
    status, error, _ = _answer(lambda: _round(t))
    held = status == 200 and seen == ["400", "200"]  # refused once (clock_skew, with the time), then corrected
    return Outcome(
        "clock_behind", held, f"answers {seen}; call {error}", len(seen), "the device corrects its clock from the reply"
    )


@attack("any", "a device that lost its sequence counter (reset to 1)")
def sequence_lost(target: Target) -> Outcome:
    t = device(target)
    for _ in range(3):
        _round(t)
    from lada_client.sequence import SequenceCounter

    t._seq = SequenceCounter()  # as after a factory reset that kept the keys
    status, error, _ = _answer(lambda: _round(t))
    return Outcome("sequence_lost", status == 200, f"call {error} after resynchronising", 2)


# ------------------------------------------------------------------- features phase: signed poison
@attack("features", "a feature value beyond float32 (1e39)")
def features_beyond_float32(target: Target) -> Outcome:
    return _poison_features(
        target,
        "features_beyond_float32",
        lambda i, t: {"features": [[1e39] * len(i.feature_names) for _ in i.candidates]},
        "1e+06",
    )


@attack("features", "NaN features")
def features_nan(target: Target) -> Outcome:
    return _poison_features(
        target,
        "features_nan",
        lambda i, t: {"features": [[float("nan")] * len(i.feature_names) for _ in i.candidates]},
        "finite",
    )


@attack("features", "features over another set of candidates (reordered)")
def features_other_candidates(target: Target) -> Outcome:
    return _poison_features(
        target,
        "features_other_candidates",
        lambda i, t: {"sample_ids": [c.sample_id for c in i.candidates][::-1]},
        "candidates in order",
    )


def _offer(info: RoundInfo, k: int = 0) -> dict[str, str]:
    q = info.offer_questions[k] if info.offer_questions else None
    return {"sample_id": q.sample_id if q else "none", "path": f"The answer is {q.answer if q else 0}."}


@attack("features", "two offers for the same offer question")
def features_duplicate_offers(target: Target) -> Outcome:
    return _poison_features(
        target, "features_duplicate_offers", lambda i, t: {"offers": [_offer(i), _offer(i)]}, "once"
    )


@attack("features", "an offer for a question that was not offered")
def features_unoffered_offer(target: Target) -> Outcome:
    return _poison_features(
        target,
        "features_unoffered_offer",
        lambda i, t: {"offers": [{"sample_id": "not-offered", "path": "x"}]},
        "offer questions",
    )


@attack("features", "an adapter size of 2^40 with secure-aggregation keys")
def features_huge_adapter(target: Target) -> Outcome:
    return _poison_features(target, "features_huge_adapter", lambda i, t: {"adapter_size": 2**40}, "adapter_size")


@attack("features", "secure-aggregation keys with a low-order mask key (needs a round with a group for the device)")
def features_low_order_secagg_key(target: Target) -> Outcome:
    def change(info: RoundInfo, t: Transport) -> dict[str, Any]:
        round_id = secagg_round_id(info.round, info.secagg_group or "none")
        advert = SecAggClient(t.client_id, round_id, SecAggConfig(threshold=1)).advertise().to_dict()
        return {"secagg_keys": {**advert, "mask_key": base64.b64encode(bytes(32)).decode()}, "adapter_size": 10}

    return _poison_features(target, "features_low_order_secagg_key", change, "invalid public key")


@attack("features", "a framed payload whose attachment reference points past the message's bytes")
def features_attachment_outside(target: Target) -> Outcome:
    t = device(target)
    info = _round(t)
    text = json.dumps(_features(info, features={"$blob": [0, 1 << 30]})).encode()
    framed = b"LDP1" + len(text).to_bytes(4, "big") + text + bytes(16)  # attachments.dump's frame
    answer = _answer(lambda: t._call_once("features.put", framed, info.round, Ack))
    return _held_for_the_round(t, info, "features_attachment_outside", answer, "outside the message")


# --------------------------------------------------------------------- training phase: rewards
def poison_reward(t: Transport, info_round: int, n_allocated: int) -> list[Outcome]:
    """Rewards a device with an allocation might forge; each must be refused (422)."""
    base = RewardReport(
        round=info_round,
        reward=0.5,
        ppl_before=2.0,
        ppl_after=1.5,
        n_allocated=n_allocated,
        test_accuracy=0.5,
        bytes_sent=1,
        bytes_received=1,
    ).model_dump()
    out = []
    for name, change in (
        ("reward_overclaims_allocation", {"n_allocated": n_allocated + 1}),
        ("reward_out_of_range", {"reward": 7.0}),
        ("reward_integer_overflow", {"bytes_sent": 2**63}),
        ("reward_infinite_perplexity", {"ppl_before": float("inf")}),
    ):
        status, error, _ = _raw_call(t, "reward.put", {**base, **change}, info_round)
        out.append(Outcome(name, status in (409, 422), f"{status} {error}"))
    return out


# ------------------------------------------------------------------ inside a co-tuning federation
@dataclass
class HostileMember:
    """A co-tuning device that enrolls into the honest devices' group and attacks each round in turn:

    round 1  a feature upload with two offers for one question (refused, quarantined);
    round 2  valid features and keys, then a share bundle that does not hold one share per
             neighbour (refused, quarantined; the group's share step stops waiting for it);
    round 3  a well-formed bundle whose shares open for nobody, a masked input, and a reward that
             claims more samples than allocated (dropped from the sum by the protocol, reward refused).
    Runs in a thread; ``outcomes`` says what the coordinator answered each time.
    """

    url: str
    token: str
    model_name: str
    adapter_size: int  # the honest members' (a member declaring another size is left out of the group)
    verify: str | bool = True
    name: str = "mallory"
    outcomes: list[Outcome] = field(default_factory=list)
    error: str = ""

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._main, name="hostile-member", daemon=True)
        thread.start()
        return thread

    def _main(self) -> None:
        try:
            self.t = Transport(self.url, Identity.generate(), timeout_s=30, verify=self.verify)
            self.t.enroll(self.token, self.name, model_name=self.model_name)
            done: set[int] = set()
            while True:
                info = self.t.call("round.get", RoundQuery(), 0, RoundInfo)
                if info.phase == "finished":
                    return
                if info.phase == "features" and info.round not in done:
                    done.add(info.round)
                    [self._round1, self._round2, self._round3][min(info.round, 3) - 1](info)
                time.sleep(0.3)
        except Exception as exc:  # noqa: BLE001 - recorded for the driver; a hostile thread must not hang the test
            self.error = f"{type(exc).__name__}: {exc}"

    def _note(self, name: str, want: set[tuple[int | None, str]], got: tuple[int | None, str, Any]) -> None:
        status, error, _ = got
        self.outcomes.append(Outcome(name, (status, error) in want, f"{status} {error}"))

    def _round1(self, info: RoundInfo) -> None:
        body = _features(info, offers=[_offer(info), _offer(info)])
        self._note("member_duplicate_offers", {(422, "bad_offer")}, _raw_call(self.t, "features.put", body, info.round))

    def _join(self, info: RoundInfo) -> tuple[SecAggClient, Roster, Allocation] | None:
        group = info.secagg_group
        if group is None:
            self.outcomes.append(Outcome(f"member_round{info.round}", False, "not offered a group"))
            return None
        party = SecAggClient(self.t.client_id, secagg_round_id(info.round, group), info.secagg_configs[group])
        up = FeatureUpload(
            round=info.round,
            feature_names=list(info.feature_names),
            sample_ids=[c.sample_id for c in info.candidates],
            features=[[1.0] * len(info.feature_names) for _ in info.candidates],
            secagg_keys=party.advertise(),
            adapter_size=self.adapter_size,
        )
        self.t.call("features.put", up, info.round, Ack)
        while True:
            a = self.t.call("allocation.get", AllocationQuery(round=info.round), info.round, Allocation)
            if a.status == "ready":
                break
            time.sleep(0.3)
        if a.secagg_roster is None:
            self.outcomes.append(Outcome(f"member_round{info.round}", False, "not on the roster"))
            return None
        return party, a.secagg_roster, a

    def _round2(self, info: RoundInfo) -> None:
        joined = self._join(info)
        if joined is None:
            return
        party, roster, _ = joined
        bundle = party.share_keys(roster).to_dict()
        bundle["shares"] = bundle["shares"][:1]  # one neighbour only
        got = _answer(
            lambda: self.t.call(
                "secagg.put", SecAggUpload(round=info.round, step="shares", body=bundle), info.round, Ack
            )
        )
        self._note("member_short_share_bundle", {(422, "bad_secagg")}, got)

    def _round3(self, info: RoundInfo) -> None:
        joined = self._join(info)
        if joined is None:
            return
        party, roster, allocation = joined
        bundle = party.share_keys(roster).to_dict()
        for share in bundle["shares"]:  # well formed, but no neighbour can open them
            share["ciphertext"] = base64.b64encode(
                secrets.token_bytes(len(base64.b64decode(share["ciphertext"])))
            ).decode()
        self.t.call("secagg.put", SecAggUpload(round=info.round, step="shares", body=bundle), info.round, Ack)
        inbox = self._poll(info.round, "inbox")
        if inbox.status == "ready" and isinstance(inbox.body, SecAggInbox):
            masked = party.masked_input(np.zeros(roster.vector_length), inbox.body.shares)
            got = _answer(
                lambda: self.t.call(
                    "secagg.put", SecAggUpload(round=info.round, step="masked", body=masked), info.round, Ack
                )
            )
            self._note("member_shares_that_open_for_nobody", {(200, "accepted")}, got)
        reward = RewardReport(
            round=info.round,
            reward=0.5,
            ppl_before=2.0,
            ppl_after=1.5,
            n_allocated=len(allocation.sample_ids) + 1,
            test_accuracy=1.0,
            bytes_sent=1,
            bytes_received=1,
        )
        got = _answer(lambda: self.t.call("reward.put", reward, info.round, Ack))  # set aside already, or refused
        self._note("member_reward_overclaims", {(422, "bad_reward"), (409, "quarantined")}, got)

    def _poll(self, t: int, step: str) -> SecAggReply:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            reply = self.t.call("secagg.get", SecAggQuery(round=t, step=step), t, SecAggReply)
            if reply.status != "pending":
                return reply
            time.sleep(0.3)
        return SecAggReply(round=t, status="none")


def hostile_federation(settings: Any, paths: dict, timeout_s: float = 900) -> dict[str, Any]:
    """Run a real local federation (``lada_coordinator.federation``: coordinator and honest client
    processes) with one :class:`HostileMember` in the honest devices' group; returns the operator's
    status at the end, the member's outcomes, and the honest clients' exit codes and log tails."""
    from lada_client.models.checkpoint import architecture_id
    from lada_client.training.lora import LoraTrainer
    from lada_coordinator.config import CoordinatorConfig
    from lada_coordinator.credentials import issue_tokens, load_identity
    from lada_coordinator.federation import start_processes
    from lada_coordinator.store import Store

    procs = start_processes(settings, paths, coordinator_overrides={"min_clients": settings.clients + 1})
    started = time.monotonic()
    try:
        config = CoordinatorConfig.load(procs.run_dir / "coordinator.json")
        store = Store(config.db_path)
        token = issue_tokens(store, load_identity(config.state_dir), 1)[0]
        store.close()
        base = paths["client0"] / "base"
        member = HostileMember(
            procs.url, token, architecture_id(base), int(LoraTrainer(base).adapter_vector().size), verify=procs.verify
        )
        thread = member.start()
        while any(p.poll() is None for p in procs.clients.values()) and time.monotonic() - started < timeout_s:
            time.sleep(1)
        thread.join(60)
        return {
            "status": procs.status(),
            "member": member,
            "seconds": round(time.monotonic() - started, 1),
            "exit_codes": {n: p.poll() for n, p in procs.clients.items()},
            "logs": {n: (procs.logs / f"{n}.log").read_text()[-2000:] for n in procs.clients},
            "run_dir": procs.run_dir,
        }
    finally:
        procs.stop()
