"""The coordinator's HTTP API (FastAPI/ASGI).

Handlers authenticate, decrypt, validate and record; the round engine decides. Every rejection is
a 4xx with an :class:`~lada_client.common.wire.ErrorBody` saying why, raised before or inside the
database transaction, so a rejected request changes nothing.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from lada_client.common.crypto import CryptoError, Direction, Identity, PublicIdentity, open_envelope, seal
from lada_client.common.wire import (
    KIND_PAYLOADS,
    Ack,
    Allocation,
    AllocationQuery,
    EnrollRequest,
    EnrollResponse,
    EnvelopeHeader,
    ErrorBody,
    FeatureUpload,
    LoraFactor,
    RewardReport,
    RoundInfo,
    SealedEnvelope,
    SecAggQuery,
    SecAggReply,
    SecAggUpload,
    secagg_round_id,
)
from lada_client.common.secagg import AdvertiseKeys, MaskedInput, SecAggError, ShareKeys, UnmaskResponse
from lada_coordinator.allocation.allocator import SLM
from lada_coordinator.rounds import RoundEngine
from lada_coordinator.server.uploads import UploadError, UploadSessions
from lada_coordinator.store import ClientRecord, Store

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse(ErrorBody(error=error, detail=detail).model_dump(), status_code=status)


Handler = Callable[[sqlite3.Connection, ClientRecord, EnvelopeHeader, BaseModel], BaseModel]


def create_app(
    store: Store,
    identity: Identity,
    engine: RoundEngine,
    max_body_bytes: int,
    upload_ttl_s: float = 3600.0,
    upload_max_client_bytes: int = 1024**3,
) -> FastAPI:
    app = FastAPI(title="LaDa coordinator", version="1", description="Federated reasoning distillation with learnability-aware data allocation.")

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return _error(413, "too_large", f"request body over {max_body_bytes} bytes (send larger bodies as a chunked upload)")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, "malformed", f"{where}: {first.get('msg', 'invalid body')}")

    @app.exception_handler(ApiError)
    @app.exception_handler(UploadError)
    async def api_error(_: Request, exc: ApiError | UploadError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.detail)

    def authenticate(kind: str, envelope: SealedEnvelope, check_seq: bool = True) -> tuple[ClientRecord, PublicIdentity, BaseModel]:
        """Kind, client, replay, signature, decryption and payload checks of one sealed request.

        ``check_seq=False`` only for the body of a committed chunked upload, whose sequence number
        was checked when its session began (``uploads.py``).
        """
        header = envelope.header
        if header.kind != kind:
            raise ApiError(400, "wrong_kind", f"this endpoint takes {kind!r} messages, not {header.kind!r}")
        client = store.client(header.client_id)
        if client is None:
            raise ApiError(401, "unknown_client", f"client {header.client_id!r} is not enrolled")
        if check_seq and header.seq <= client.last_seq:
            raise ApiError(409, "replay", f"sequence number {header.seq} is not above the last accepted one")
        sender = PublicIdentity.from_b64(client.sign_key, client.kex_key)
        try:
            plain = open_envelope(envelope, sender, identity, Direction.TO_COORDINATOR)
        except CryptoError as exc:
            raise ApiError(401, "bad_envelope", str(exc)) from exc
        try:
            payload = KIND_PAYLOADS[kind].model_validate_json(plain)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ApiError(422, "malformed_payload", f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
        return client, sender, payload

    def seal_reply(header: EnvelopeHeader, reply: BaseModel, recipient: PublicIdentity) -> SealedEnvelope:
        reply_header = header.model_copy(update={"sent_at": time.time()})
        return seal(reply.model_dump_json().encode(), reply_header, identity, recipient, Direction.TO_CLIENT)

    def sealed(kind: str, envelope: SealedEnvelope, handler: Handler) -> SealedEnvelope:
        header = envelope.header
        client, sender, payload = authenticate(kind, envelope)
        with store.transaction() as db:
            reply = handler(db, client, header, payload)
            out = seal_reply(header, reply, sender)
            size_in = len(envelope.model_dump_json())
            if not store.accept(db, client.client_id, header.seq, size_in, len(out.model_dump_json())):
                raise ApiError(409, "replay", f"sequence number {header.seq} was already used")
        engine.wake.set()
        return out

    def check_advert(client: ClientRecord, payload: FeatureUpload) -> None:
        try:
            advert = AdvertiseKeys.from_dict(payload.secagg_keys or {})
        except SecAggError as exc:
            raise ApiError(422, "bad_secagg", str(exc)) from exc
        if advert.client_id != client.client_id or advert.round_id != secagg_round_id(payload.round, client.model_name):
            raise ApiError(422, "bad_secagg", "secagg keys must name this client and its group's round")
        if payload.adapter_size < 1:
            raise ApiError(422, "bad_secagg", "adapter_size is required with secagg keys")

    def current() -> tuple[int, str]:
        return store.current_round() or (0, "waiting")

    def check_round(header: EnvelopeHeader, payload_round: int, want_phase: str) -> None:
        t, phase = current()
        if header.round != payload_round:
            raise ApiError(400, "round_mismatch", "header round and payload round differ")
        if payload_round != t:
            raise ApiError(409, "wrong_round", f"round {payload_round} is not the current round ({t})")
        if phase != want_phase:
            raise ApiError(409, "wrong_phase", f"round {t} is in phase {phase!r}, not {want_phase!r}")

    # ---------------------------------------------------------------------------- endpoints
    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/status")
    def status() -> dict:
        """Public progress: rounds and per-round metrics (no keys, no private data)."""
        t, phase = current()
        return {
            "round": t,
            "phase": phase,
            "engine": {"phase": engine.status.phase, "round": engine.status.round, "error": engine.status.error},
            "clients": len(store.clients()),
            "rounds": store.round_metrics(),
        }

    @app.post("/v1/enroll", response_model=EnrollResponse, responses={401: {"model": ErrorBody}, 409: {"model": ErrorBody}})
    def enroll(request: EnrollRequest) -> EnrollResponse:
        try:
            PublicIdentity.from_b64(request.sign_key, request.kex_key)
        except CryptoError as exc:
            raise ApiError(422, "bad_keys", str(exc)) from exc
        client_id = f"{request.client_name}-{secrets.token_hex(4)}"
        record = ClientRecord(
            client_id, request.client_name, request.sign_key, request.kex_key, request.domain,
            request.model_name, request.capabilities.model_dump(), 0, 0, 0,
        )
        try:
            store.enroll(request.token, record)
        except PermissionError as exc:
            raise ApiError(401, "bad_token", str(exc)) from exc
        except ValueError as exc:
            raise ApiError(409, "duplicate_client", str(exc)) from exc
        engine.wake.set()
        keys = identity.public.to_b64()
        log.info("enrolled %s (domain %r)", client_id, request.domain)
        return EnrollResponse(client_id=client_id, coordinator_sign_key=keys["sign_key"], coordinator_kex_key=keys["kex_key"])

    errors = {s: {"model": ErrorBody} for s in (400, 401, 404, 409, 413, 422)}

    @app.post("/v1/round", response_model=SealedEnvelope, responses=errors)
    def get_round(envelope: SealedEnvelope) -> SealedEnvelope:
        def handle(db, client, header, payload) -> RoundInfo:
            t, phase = current()
            if t == 0:
                return RoundInfo(round=0, phase="waiting", total_rounds=engine.config.rounds)
            info, _ = store.round_info(t)
            if phase != "features":  # candidates only matter while features are being collected
                return RoundInfo(round=t, phase=phase, total_rounds=engine.config.rounds)
            return RoundInfo.model_validate(info)

        return sealed("round.get", envelope, handle)

    def handle_features(db, client, header, payload: FeatureUpload) -> Ack:
        check_round(header, payload.round, "features")
        info, _ = store.round_info(payload.round)
        expected = [c["sample_id"] for c in info["candidates"]]
        if payload.sample_ids != expected:
            raise ApiError(422, "bad_features", "sample_ids must list this round's candidates in order")
        if payload.feature_names != info["feature_names"]:
            raise ApiError(422, "bad_features", f"feature_names must be {info['feature_names']}")
        if len(payload.features) != len(expected) or any(len(r) != len(payload.feature_names) for r in payload.features):
            raise ApiError(422, "bad_features", "features must be one row per candidate, one column per feature name")
        if payload.secagg_keys is not None:
            check_advert(client, payload)
        offered = {q["sample_id"] for q in info["offer_questions"]}
        if any(o.sample_id not in offered for o in payload.offers):
            raise ApiError(422, "bad_offer", "offers must answer this round's offer questions")
        fresh = store.put_upload(db, payload.round, client.client_id, "features.put", payload.model_dump_json())
        return Ack(message="stored" if fresh else "already stored")

    @app.post("/v1/features", response_model=SealedEnvelope, responses=errors)
    def put_features(envelope: SealedEnvelope) -> SealedEnvelope:
        return sealed("features.put", envelope, handle_features)

    @app.post("/v1/allocation", response_model=SealedEnvelope, responses=errors)
    def get_allocation(envelope: SealedEnvelope) -> SealedEnvelope:
        def handle(db, client, header, payload: AllocationQuery) -> Allocation:
            t, phase = current()
            if payload.round != t:
                raise ApiError(409, "wrong_round", f"round {payload.round} is not the current round ({t})")
            found = store.allocation(t, client.client_id, SLM)
            if found is None:
                if phase != "features":
                    raise ApiError(409, "not_allocated", f"round {t} was allocated without this client's features")
                return Allocation(round=t, status="pending")
            group = engine.secure.group_of(t, client.client_id, client.model_name)
            roster = store.secagg(t, group, "roster") if group else None
            update = store.server_update(t, client.client_id)
            return Allocation(
                round=t, status="ready", sample_ids=found[0], reason=found[1], secagg_roster=roster,
                server_update=None if update is None else [LoraFactor.model_validate(f) for f in update],
            )

        return sealed("allocation.get", envelope, handle)

    def handle_reward(db, client, header, payload: RewardReport) -> Ack:
        check_round(header, payload.round, "training")
        if store.allocation(payload.round, client.client_id, SLM) is None:
            raise ApiError(409, "no_allocation", f"client has no allocation in round {payload.round}")
        fresh = store.put_upload(db, payload.round, client.client_id, "reward.put", payload.model_dump_json())
        return Ack(message="stored" if fresh else "already stored")

    @app.post("/v1/reward", response_model=SealedEnvelope, responses=errors)
    def put_reward(envelope: SealedEnvelope) -> SealedEnvelope:
        return sealed("reward.put", envelope, handle_reward)

    secagg_parsers = {"shares": ShareKeys.from_dict, "masked": MaskedInput.from_dict, "unmask": UnmaskResponse.from_dict}

    def handle_secagg(db, client, header, payload: SecAggUpload) -> Ack:
        check_round(header, payload.round, "training")
        group = engine.secure.group_of(payload.round, client.client_id, client.model_name)
        if group is None:
            raise ApiError(409, "no_secagg", f"client takes no part in secure aggregation in round {payload.round}")
        try:
            message = secagg_parsers[payload.step](payload.body)
        except SecAggError as exc:
            raise ApiError(422, "bad_secagg", str(exc)) from exc
        if message.client_id != client.client_id or message.round_id != secagg_round_id(payload.round, group):
            raise ApiError(422, "bad_secagg", "message must come from this client for its group's round")
        fresh = store.put_upload(db, payload.round, client.client_id, f"secagg.{payload.step}", payload.model_dump_json())
        return Ack(message="stored" if fresh else "already stored")

    @app.post("/v1/secagg/put", response_model=SealedEnvelope, responses=errors)
    def put_secagg(envelope: SealedEnvelope) -> SealedEnvelope:
        """Co-tuning: a client's secure-aggregation message (shares, masked adapter, unmask shares)."""
        return sealed("secagg.put", envelope, handle_secagg)

    @app.post("/v1/secagg/get", response_model=SealedEnvelope, responses=errors)
    def get_secagg(envelope: SealedEnvelope) -> SealedEnvelope:
        """Co-tuning: poll for the shares routed to this client, the unmask request, or the average."""

        def handle(db, client, header, payload: SecAggQuery) -> SecAggReply:
            t = payload.round
            group = engine.secure.group_of(t, client.client_id, client.model_name)
            if group is None:
                return SecAggReply(round=t, status="none")
            if payload.step == "inbox":
                routed = store.secagg(t, group, "routed")
                if routed is None:
                    return SecAggReply(round=t, status="pending")
                return SecAggReply(round=t, status="ready", body={"shares": routed["inbox"].get(client.client_id, [])})
            if payload.step == "unmask":
                request = store.secagg(t, group, "unmask_request")
                if request is None:
                    return SecAggReply(round=t, status="pending")
                if client.client_id not in request["survivors"]:
                    return SecAggReply(round=t, status="none")
                return SecAggReply(round=t, status="ready", body=request)
            result = store.secagg(t, group, "result")
            if result is None:
                return SecAggReply(round=t, status="pending")
            if "vector" not in result:
                return SecAggReply(round=t, status="none", body=result)
            return SecAggReply(round=t, status="ready", body=result)

        return sealed("secagg.get", envelope, handle)

    # --------------------------------------------------------------------- chunked uploads
    upload_handlers: dict[str, Handler] = {
        "features.put": handle_features, "reward.put": handle_reward, "secagg.put": handle_secagg,
    }

    def run_target(db: sqlite3.Connection, client: ClientRecord, envelope: SealedEnvelope) -> SealedEnvelope:
        """A reassembled upload goes through its endpoint's own checks and handler, in ``db``."""
        kind = envelope.header.kind
        owner, sender, payload = authenticate(kind, envelope, check_seq=False)
        if owner.client_id != client.client_id:
            raise ApiError(422, "bad_upload", "the uploaded envelope must come from this client")
        return seal_reply(envelope.header, upload_handlers[kind](db, client, envelope.header, payload), sender)

    uploads = UploadSessions(
        store, max_body_bytes, upload_ttl_s, upload_max_client_bytes, run_target,
        lambda client, header, reply: seal_reply(header, reply, PublicIdentity.from_b64(client.sign_key, client.kex_key)),
    )
    uploads.cleanup()
    app.state.uploads = uploads

    @app.post("/v1/upload/begin", response_model=SealedEnvelope, responses=errors)
    def upload_begin(envelope: SealedEnvelope) -> SealedEnvelope:
        """A sealed body over max_body_bytes: declare it (header, length, SHA-256, chunk length);
        beginning again returns the same session and the chunks already held (resume)."""
        return sealed("upload.begin", envelope, uploads.begin)

    @app.post("/v1/upload/chunk", response_model=SealedEnvelope, responses=errors)
    def upload_chunk(envelope: SealedEnvelope) -> SealedEnvelope:
        """One chunk of the sealed body, stored durably before the reply."""
        return sealed("upload.chunk", envelope, uploads.chunk)

    @app.post("/v1/upload/status", response_model=SealedEnvelope, responses=errors)
    def upload_status(envelope: SealedEnvelope) -> SealedEnvelope:
        """Which chunks of a session the coordinator holds."""
        return sealed("upload.status", envelope, uploads.status)

    @app.post("/v1/upload/commit", response_model=SealedEnvelope, responses=errors)
    def upload_commit(envelope: SealedEnvelope) -> SealedEnvelope:
        """Reassemble, verify and process the body through its endpoint; idempotent."""
        return sealed("upload.commit", envelope, uploads.commit)

    @app.post("/v1/upload/abort", response_model=SealedEnvelope, responses=errors)
    def upload_abort(envelope: SealedEnvelope) -> SealedEnvelope:
        """Drop an uncommitted session and its chunks; a session that is gone is not an error."""
        return sealed("upload.abort", envelope, uploads.abort)

    return app
