"""The coordinator's HTTP API (FastAPI/ASGI).

Handlers authenticate, decrypt, validate and record; the round engine decides. Every rejection is
a 4xx with an :class:`~lada_client.common.wire.ErrorBody` saying why, raised before or inside the
database transaction, so a rejected request changes no round data.

Order of checks on a sealed request (``authenticate``): the signature and decryption come first,
against the enrolled key (a decoy key for unknown or revoked clients), and every failure there is
the same 401 ``unauthenticated``; only then are kind, clock (``clock_skew``) and sequence number
(``replay``) consulted, so nothing about a client's state is revealed to someone without its key.

A round upload (features, reward, secure aggregation) that fails what the engine will require of
it (``validation.py``) is refused with 422 and sets its device aside for the round
(``quarantined``): the engine stops waiting for it and its later requests in the round get 409
``quarantined`` with the reason. The operator sees it in ``/v1/status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from lada_client.common import attachments
from lada_client.common.crypto import CryptoError, Direction, Identity, PublicIdentity, open_envelope, seal
from lada_client.common.enrollment import EnrollmentToken, TokenFormatError
from lada_client.common.secagg import SecAggError, SecAggFailure, SecAggInbox
from lada_client.common.wire import (
    KIND_PAYLOADS,
    READ_KINDS,
    ROUTES,
    SEALED_MEDIA_TYPE,
    UPLOAD_KINDS,
    Ack,
    Allocation,
    AllocationQuery,
    CoordinatorKeys,
    EnrollEnvelope,
    EnrollRequest,
    EnrollResponse,
    EnvelopeHeader,
    ErrorBody,
    FeatureUpload,
    Phase,
    RewardReport,
    RoundInfo,
    RoundQuery,
    SealedEnvelope,
    SecAggQuery,
    SecAggReply,
    SecAggUpload,
)
from lada_coordinator.aggregation.secure import NotNow, group_id
from lada_coordinator.allocation.allocator import SLM
from lada_coordinator.config import CoordinatorConfig
from lada_coordinator.credentials import check_operator
from lada_coordinator.rounds import RoundEngine
from lada_coordinator.server.dashboard import DASHBOARD_CSP, DASHBOARD_HTML
from lada_coordinator.server.errors import ApiError
from lada_coordinator.server.limits import RateLimiter, RequestLimits
from lada_coordinator.server.uploads import UploadSessions
from lada_coordinator.stores import Connection, CoordinatorStore
from lada_coordinator.stores.records import ClientRecord, EnrollmentRefused
from lada_coordinator.validation import (
    RoundContext,
    UploadRejected,
    check_features,
    check_reward,
    feature_matrix,
    parse_payload,
    problem,
)

log = logging.getLogger(__name__)

UNAUTHENTICATED = (
    "the request could not be authenticated: the client is not enrolled (or was revoked), or the signature or "
    "ciphertext does not verify against its enrolled key"
)

# the payload is the model of the message's kind (``KIND_PAYLOADS``), parsed before the handler runs
Handler = Callable[[Connection, ClientRecord, EnvelopeHeader, Any], BaseModel]
#: the API docs' view of a sealed body (``SealedEnvelope.to_bytes``)
SEALED_SCHEMA: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}
SEALED_REPLY: dict[str, Any] = {"description": "the sealed reply", "content": {SEALED_MEDIA_TYPE: SEALED_SCHEMA}}


def create_app(
    store: CoordinatorStore,
    identity: Identity,
    engine: RoundEngine,
    config: CoordinatorConfig,
    operator_token: str,
) -> FastAPI:
    uploads = UploadSessions(
        store,
        config.max_body_bytes,
        config.upload_ttl_s,
        config.upload_max_client_bytes,
        lambda db, client, envelope: run_target(db, client, envelope),
        lambda client, header, reply: seal_reply(
            header, reply, PublicIdentity.from_b64(client.sign_key, client.kex_key)
        ),
    )
    uploads.cleanup()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def sweep() -> None:  # abandoned chunks go at expiry, not at the next session
            while True:
                await asyncio.sleep(config.upload_sweep_s)
                try:
                    await asyncio.to_thread(uploads.cleanup)
                except Exception:  # the sweep must outlive a busy or failing database
                    log.exception("upload sweep failed")

        task = asyncio.create_task(sweep())
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(
        title="LaDa coordinator",
        version="1",
        lifespan=lifespan,
        description="Federated reasoning distillation with learnability-aware data allocation.",
    )
    app.add_middleware(
        RequestLimits,
        max_bytes=config.max_body_bytes,
        timeout_s=config.body_timeout_s,
        max_in_flight=config.max_concurrent_requests,
    )
    app.state.uploads = uploads
    decoy = Identity.generate().public  # unknown clients are verified against it: same work, same answer
    enroll_failures = RateLimiter(config.enroll_failures_per_s, config.enroll_burst)
    own_keys = identity.public.to_b64()
    fingerprint = identity.public.fingerprint()

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return ApiError(422, "malformed", f"{where}: {first.get('msg', 'invalid body')}").response()

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Any:
        return exc.response()

    def current() -> tuple[int, Phase]:
        return store.current_round() or (0, Phase.WAITING)

    # ------------------------------------------------------------------------ authentication
    def authenticate(
        kind: str, envelope: SealedEnvelope, fresh: bool = True
    ) -> tuple[ClientRecord, PublicIdentity, BaseModel]:
        """Signature and decryption first (one uniform 401), then kind, clock and replay, then payload.

        ``fresh=False`` only for the body of a committed chunked upload, whose clock and sequence
        number were checked when its session began (``uploads.py``).
        """
        header = envelope.header
        client = store.client(header.client_id)
        known = client is not None and not client.revoked
        sender = PublicIdentity.from_b64(client.sign_key, client.kex_key) if known and client else decoy
        try:
            plain = open_envelope(envelope, sender, identity, Direction.TO_COORDINATOR)
        except CryptoError:
            raise ApiError(401, "unauthenticated", UNAUTHENTICATED) from None
        if not known or client is None:  # a decoy cannot verify; kept for the type checker
            raise ApiError(401, "unauthenticated", UNAUTHENTICATED)
        if header.kind != kind:
            raise ApiError(400, "wrong_kind", f"this endpoint takes {kind!r} messages, not {header.kind!r}")
        if fresh:
            check_clock(header.sent_at)
            if header.seq <= client.last_seq:
                raise ApiError(
                    409,
                    "replay",
                    f"sequence number {header.seq} is not above the last accepted one",
                    last_seq=client.last_seq,
                )
        return client, sender, parse_payload(KIND_PAYLOADS[kind], plain)

    def check_clock(sent_at: float) -> None:
        now = time.time()
        if abs(sent_at - now) > config.max_clock_skew_s:
            raise ApiError(
                400,
                "clock_skew",
                f"sent_at is {sent_at - now:+.0f}s off the coordinator's clock"
                f" (at most ±{config.max_clock_skew_s:.0f}s)",
                server_time=now,
            )

    def seal_reply(header: EnvelopeHeader, reply: BaseModel, recipient: PublicIdentity) -> SealedEnvelope:
        reply_header = header.model_copy(update={"sent_at": time.time()})
        return seal(attachments.dump(reply), reply_header, identity, recipient, Direction.TO_CLIENT)

    def sealed(kind: str, body: bytes, handler: Handler) -> bytes:
        """One sealed request's binary body to its sealed reply's."""
        try:
            envelope = SealedEnvelope.from_bytes(body)
        except ValueError as exc:  # pydantic's ValidationError (of the header) included
            raise ApiError(422, "malformed", problem(exc, "header")) from None
        header = envelope.header
        try:
            client, sender, payload = authenticate(kind, envelope)
            with store.transaction(durable=kind not in READ_KINDS) as db:
                store.lock_client(db, client.client_id)  # its requests one at a time, on every replica
                reply = handler(db, client, header, payload)
                out = seal_reply(header, reply, sender).to_bytes()
                if not store.accept(db, client.client_id, header.seq, len(body), len(out)):
                    raise ApiError(409, "replay", f"sequence number {header.seq} was already used")
        except UploadRejected as exc:
            raise refuse(header, exc) from exc
        engine.wake.set()
        return out

    def refuse(header: EnvelopeHeader, exc: UploadRejected) -> ApiError:
        """An authenticated round upload the engine could not use: set the device aside for the
        round (in its own transaction: the refused request itself changed nothing)."""
        t, _ = current()
        target = header.kind
        if header.round == t and t > 0 and (target in UPLOAD_KINDS or target == "upload.commit"):
            if store.quarantine(t, header.client_id, target, f"{exc.error}: {exc.detail}"):
                log.warning("round %d: %s quarantined (%s): %s", t, header.client_id, target, exc.detail)
            engine.wake.set()
            return ApiError(422, exc.error, f"{exc.detail}; this device takes no further part in round {t}")
        return ApiError(422, exc.error, exc.detail)

    def refuse_if_quarantined(t: int, client: ClientRecord) -> None:
        why = store.quarantined(t).get(client.client_id)
        if why is not None:
            raise ApiError(
                409,
                "quarantined",
                f"this device was set aside for round {t} ({why}); it can take part in the next round",
            )

    def check_round(header: EnvelopeHeader, payload_round: int, want_phase: Phase) -> None:
        t, phase = current()
        if header.round != payload_round:
            raise ApiError(400, "round_mismatch", "header round and payload round differ")
        if payload_round != t:
            raise ApiError(409, "wrong_round", f"round {payload_round} is not the current round ({t})")
        if phase != want_phase:
            raise ApiError(409, "wrong_phase", f"round {t} is in phase '{phase}', not '{want_phase}'")

    # ----------------------------------------------------------------- public and operator
    @app.get(ROUTES["health"])
    def healthz() -> dict[str, str]:
        """Liveness for load balancers; says nothing about rounds or devices."""
        return {"status": "ok"}

    @app.get(ROUTES["dashboard"], response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        """The operator's live page: static, it holds no data; its script reads ``/v1/status`` with
        the operator token the operator types in (kept in the tab's session storage only)."""
        headers = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Content-Security-Policy": DASHBOARD_CSP}
        return HTMLResponse(DASHBOARD_HTML, headers=headers)

    @app.get(ROUTES["identity"], response_model=CoordinatorKeys)
    def coordinator_identity() -> CoordinatorKeys:
        """The coordinator's public keys; devices check them against their token's fingerprint."""
        return CoordinatorKeys(sign_key=own_keys["sign_key"], kex_key=own_keys["kex_key"], fingerprint=fingerprint)

    @app.get(ROUTES["status"], responses={401: {"model": ErrorBody}})
    def status(authorization: str | None = Header(default=None)) -> dict:
        """Operator view (``Authorization: Bearer`` + ``state_dir/operator.token``): rounds, devices
        (revoked ones too, with when each was last seen and whether it is set aside this round),
        how many uploads of the current round arrived, quarantines and the engine's errors.
        ``now`` is the coordinator's clock, so "last seen" reads right on an operator's machine
        whose clock differs."""
        if not check_operator(authorization, operator_token):
            raise ApiError(
                401,
                "operator_only",
                "this view needs the operator token (Authorization: Bearer …)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        t, phase = current()
        devices = store.devices()
        active = [c for c in devices if not c.revoked]
        names = {c.client_id: c.name for c in devices}
        aside = store.quarantined(t) if t > 0 else {}
        features = store.uploaders(t, "features.put") if t > 0 else set()
        rewards = store.uploaders(t, "reward.put") if t > 0 else set()
        return {
            "now": time.time(),
            "round": t,
            "phase": phase,
            "total_rounds": engine.config.rounds,
            "phase_timeout_s": engine.config.phase_timeout_s,
            "engine": engine.status.to_dict(),
            # this replica, and the one whose round engine runs (the same unless replicas share
            # a PostgreSQL database)
            "leadership": {**engine.lease.describe(), "database": store.backend},
            "clients": len(active),
            "arrived": {
                "features": len(features),
                "rewards": len(rewards),
                "expected": len([c for c in active if c.client_id not in aside]),
            },
            "devices": [
                {
                    "name": c.name,
                    "client_id": c.client_id,
                    "domain": c.domain,
                    "model_name": c.model_name,
                    "secagg_group": c.secagg_group,
                    "capabilities": c.capabilities.model_dump(),
                    "bytes_in": c.bytes_in,
                    "bytes_out": c.bytes_out,
                    "enrolled_at": c.enrolled_at,
                    "last_seen": c.last_seen_at,
                    "revoked": c.revoked,
                    "quarantined": aside.get(c.client_id),
                    "uploaded": {"features": c.client_id in features, "rewards": c.client_id in rewards},
                }
                for c in devices
            ],
            "quarantine": [
                {**dataclasses.asdict(q), "name": names.get(q.client_id, q.client_id)} for q in store.quarantine_log()
            ],
            "rounds": [m.to_dict() for m in store.round_metrics()],
        }

    # --------------------------------------------------------------------------- enrollment
    @app.post(
        ROUTES["enroll"],
        response_class=Response,
        responses={200: SEALED_REPLY, **{s: {"model": ErrorBody} for s in (400, 401, 409, 422, 429)}},
    )
    def enroll(body: EnrollEnvelope, request: Request) -> Response:
        """A device's keys and its sealed :class:`EnrollRequest` → the sealed :class:`EnrollResponse`."""
        source = request.client.host if request.client else "?"
        wait = enroll_failures.retry_after(source)
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"too many failed enrollments from {source}; retry in {wait:.0f}s",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        try:
            return Response(enroll_device(body).to_bytes(), media_type=SEALED_MEDIA_TYPE)
        except ApiError:
            enroll_failures.charge(source)
            raise

    def enroll_device(body: EnrollEnvelope) -> SealedEnvelope:
        try:
            device = PublicIdentity.from_b64(body.sign_key, body.kex_key)
            device.check_usable()
        except CryptoError as exc:
            raise ApiError(422, "bad_keys", str(exc)) from exc
        header = body.envelope.header
        if header.kind != "enroll" or header.round != 0:
            raise ApiError(400, "wrong_kind", "an enrollment is sealed as kind 'enroll' for round 0")
        try:
            plain = open_envelope(body.envelope, device, identity, Direction.TO_COORDINATOR)
        except CryptoError:
            raise ApiError(
                401,
                "unauthenticated",
                "the enrollment is not signed by the keys it carries, or not sealed to this coordinator",
            ) from None
        check_clock(header.sent_at)
        try:
            request = EnrollRequest.model_validate_json(plain)
        except ValidationError as exc:
            raise ApiError(422, "malformed_payload", problem(exc)) from exc
        if request.client_name != header.client_id:
            raise ApiError(422, "malformed_payload", "the envelope must be addressed as the requested client name")
        try:
            token = EnrollmentToken.parse(request.token)
        except TokenFormatError as exc:
            raise ApiError(401, "bad_token", str(exc)) from exc
        if not token.names(fingerprint):
            raise ApiError(401, "bad_token", "this token was issued by another coordinator")
        record = ClientRecord(
            f"{request.client_name}-{secrets.token_hex(4)}",
            request.client_name,
            body.sign_key,
            body.kex_key,
            request.domain,
            request.model_name,
            request.capabilities,
            0,
            0,
            0,
        )
        try:
            stored = store.enroll(token.secret_hash, record)
        except EnrollmentRefused as exc:
            raise ApiError(401 if exc.reason == "bad_token" else 409, exc.reason, str(exc)) from exc
        engine.wake.set()
        log.info(
            "enrolled %s (domain %r, model %r, group %r)",
            stored.client_id,
            stored.domain,
            stored.model_name,
            stored.secagg_group,
        )
        return seal_reply(header, EnrollResponse(client_id=stored.client_id), device)

    # ------------------------------------------------------------------------------- rounds
    errors: dict[int | str, dict[str, Any]] = {s: {"model": ErrorBody} for s in (400, 401, 404, 408, 409, 413, 422)}

    def handle_round(db: Connection, client: ClientRecord, header: EnvelopeHeader, payload: RoundQuery) -> RoundInfo:
        t, phase = current()
        if t == 0:
            return RoundInfo(round=0, phase=Phase.WAITING, total_rounds=engine.config.rounds)
        if phase != Phase.FEATURES:  # candidates only matter while features are being collected
            return RoundInfo(round=t, phase=phase, total_rounds=engine.config.rounds)
        info, _ = store.round_info(t)
        group = group_id(client)  # each device sees its own group's parameters only
        own = {group: info.secagg_configs[group]} if group in info.secagg_configs else {}
        return info.model_copy(update={"secagg_configs": own, "secagg_group": group if own else None})

    def handle_features(db: Connection, client: ClientRecord, header: EnvelopeHeader, payload: FeatureUpload) -> Ack:
        check_round(header, payload.round, Phase.FEATURES)
        refuse_if_quarantined(payload.round, client)
        info, _ = store.round_info(payload.round)
        check_features(payload, RoundContext.of(info))
        if payload.secagg_keys is not None:
            group = group_id(client)
            if group not in info.secagg_configs:
                raise UploadRejected(
                    "bad_secagg", "this device has no secure-aggregation group this round; send no keys"
                )
            try:
                engine.secure.check_advert(payload.round, group, client.client_id, payload.secagg_keys)
            except SecAggError as exc:
                raise UploadRejected("bad_secagg", str(exc)) from exc
        # stored with its features as the engine uses them, so a round is not parsed twice
        fresh = store.put_upload(
            db, payload.round, client.client_id, "features.put", payload.model_dump_json(), feature_matrix(payload)
        )
        return Ack(message="stored" if fresh else "already stored")

    def handle_allocation(
        db: Connection, client: ClientRecord, header: EnvelopeHeader, payload: AllocationQuery
    ) -> Allocation:
        t, phase = current()
        if header.round != payload.round:
            raise ApiError(400, "round_mismatch", "header round and payload round differ")
        if payload.round != t:
            raise ApiError(409, "wrong_round", f"round {payload.round} is not the current round ({t})")
        refuse_if_quarantined(t, client)
        found = store.allocation(t, client.client_id, SLM)
        if found is None:
            if phase != Phase.FEATURES:
                raise ApiError(409, "not_allocated", f"round {t} was allocated without this client's features")
            return Allocation(round=t, status="pending")
        group = engine.secure.group_of(t, client)
        return Allocation(
            round=t,
            status="ready",
            sample_ids=found[0],
            reason=found[1],
            secagg_roster=roster.view_for(client.client_id)
            if group and (roster := store.secagg(t, group, "roster")) is not None
            else None,
            server_update=store.server_update(t, client.client_id),
        )

    def handle_reward(db: Connection, client: ClientRecord, header: EnvelopeHeader, payload: RewardReport) -> Ack:
        check_round(header, payload.round, Phase.TRAINING)
        refuse_if_quarantined(payload.round, client)
        allocation = store.allocation(payload.round, client.client_id, SLM)
        if allocation is None:
            raise ApiError(409, "no_allocation", f"client has no allocation in round {payload.round}")
        check_reward(payload, len(allocation[0]))
        fresh = store.put_upload(db, payload.round, client.client_id, "reward.put", payload.model_dump_json())
        return Ack(message="stored" if fresh else "already stored")

    def handle_secagg(db: Connection, client: ClientRecord, header: EnvelopeHeader, payload: SecAggUpload) -> Ack:
        """Co-tuning: a client's secure-aggregation message (shares, masked adapter, unmask shares)."""
        check_round(header, payload.round, Phase.TRAINING)
        refuse_if_quarantined(payload.round, client)
        group = engine.secure.group_of(payload.round, client)
        if group is None:
            raise ApiError(409, "no_secagg", f"client takes no part in secure aggregation in round {payload.round}")
        try:
            engine.secure.check(payload.round, group, client.client_id, payload.step, payload.body)
        except NotNow as exc:
            raise ApiError(409, "wrong_step", str(exc)) from exc
        except SecAggError as exc:
            raise UploadRejected("bad_secagg", str(exc)) from exc
        fresh = store.put_upload(
            db, payload.round, client.client_id, f"secagg.{payload.step}", payload.model_dump_json()
        )
        return Ack(message="stored" if fresh else "already stored")

    def handle_secagg_poll(
        db: Connection, client: ClientRecord, header: EnvelopeHeader, payload: SecAggQuery
    ) -> SecAggReply:
        """Co-tuning: poll for the shares routed to this client, the unmask request, or the average;
        ``failed`` once the group cannot finish this round."""
        t = payload.round
        if header.round != t:
            raise ApiError(400, "round_mismatch", "header round and payload round differ")
        if t > current()[0]:
            raise ApiError(409, "wrong_round", f"round {t} has not begun")
        refuse_if_quarantined(t, client)
        group = engine.secure.group_of(t, client)
        if group is None:
            return SecAggReply(round=t, status="none")
        result = store.secagg(t, group, "result")
        if isinstance(result, SecAggFailure):
            return SecAggReply(round=t, status="failed", body=result)
        if payload.step == "inbox":
            routed = store.secagg(t, group, "routed")
            if routed is None:
                return SecAggReply(round=t, status="pending")
            if client.client_id not in routed.inbox:
                return SecAggReply(round=t, status="none")
            return SecAggReply(round=t, status="ready", body=SecAggInbox(shares=routed.inbox[client.client_id]))
        if payload.step == "unmask":
            request = store.secagg(t, group, "unmask_request")
            if request is None:
                return SecAggReply(round=t, status="pending")
            if client.client_id not in request.survivors:
                return SecAggReply(round=t, status="none")
            return SecAggReply(round=t, status="ready", body=request)
        if result is None:
            return SecAggReply(round=t, status="pending")
        return SecAggReply(round=t, status="ready", body=result)

    # every sealed kind's handler, mounted where the shared route table puts that kind
    handlers: dict[str, Handler] = {
        "round.get": handle_round,
        "features.put": handle_features,
        "allocation.get": handle_allocation,
        "reward.put": handle_reward,
        "secagg.put": handle_secagg,
        "secagg.get": handle_secagg_poll,
        "upload.begin": uploads.begin,
        "upload.chunk": uploads.chunk,
        "upload.status": uploads.status,
        "upload.commit": uploads.commit,
        "upload.abort": uploads.abort,
    }
    upload_handlers = {kind: handlers[kind] for kind in UPLOAD_KINDS}

    def mount(kind: str, handler: Handler) -> None:
        """Serve ``kind`` at its route; the API docs describe it by its sealed payload's model."""

        async def endpoint(request: Request) -> Response:
            body = await request.body()
            return Response(await run_in_threadpool(sealed, kind, body, handler), media_type=SEALED_MEDIA_TYPE)

        description = inspect.getdoc(KIND_PAYLOADS[kind]) or ""
        app.post(
            ROUTES[kind],
            response_class=Response,
            responses={200: SEALED_REPLY, **errors},
            name=kind,
            description=description,
            openapi_extra={"requestBody": {"required": True, "content": {SEALED_MEDIA_TYPE: SEALED_SCHEMA}}},
        )(endpoint)

    for kind, handler in handlers.items():
        mount(kind, handler)

    def run_target(db: Connection, client: ClientRecord, envelope: SealedEnvelope) -> SealedEnvelope:
        """A reassembled upload goes through its endpoint's own checks and handler, in ``db``."""
        kind = envelope.header.kind
        owner, sender, payload = authenticate(kind, envelope, fresh=False)
        if owner.client_id != client.client_id:
            raise ApiError(422, "bad_upload", "the uploaded envelope must come from this client")
        return seal_reply(envelope.header, upload_handlers[kind](db, client, envelope.header, payload), sender)

    served = {getattr(r, "path", None) for r in app.routes}
    missing = sorted(
        {name for name, path in ROUTES.items() if path not in served} | (set(KIND_PAYLOADS) - set(handlers))
    )
    if missing:  # the route table and the handlers disagree: a programming error, caught at start-up
        raise RuntimeError(f"no handler for route(s) {missing}")
    return app
