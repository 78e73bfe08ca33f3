"""Talking to the coordinator: sealed, signed requests over httpx, with clear errors.

Every call seals its payload under a key bound to (client, round, direction), signs it, posts it,
and opens the sealed reply with the coordinator's pinned keys. Sequence numbers come from a
counter kept on disk (:mod:`lada_client.sequence`), not from the clock; the coordinator's
authenticated ``replay`` and ``clock_skew`` answers carry what the device needs to resynchronise
its counter or its clock, and the transport retries such a request once.

Enrollment (:meth:`Transport.enroll`) pins the coordinator's keys to the fingerprint in the
operator's token before anything is sent, and seals the token to those keys
(:mod:`lada_client.common.enrollment`).

A sealed upload larger than ``upload_chunk_bytes`` (a big masked adapter in ``secagg.put``) is sent
as a chunked upload session (``upload.begin`` / ``upload.chunk`` / ``upload.status`` /
``upload.commit``, see ``docs/protocol.md``): each chunk is retried on its own, after a failure the
coordinator is asked which chunks it holds and only the missing ones are sent, and a call that
failed can be repeated with the same payload to resume the same session. A session the
coordinator refuses for good (a 4xx) is aborted (``upload.abort``) so it stops holding quota.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, overload

import httpx
from pydantic import BaseModel, ValidationError

from lada_client.common import attachments
from lada_client.common.crypto import CryptoError, Direction, Identity, PublicIdentity, open_envelope, seal
from lada_client.common.enrollment import EnrollmentToken
from lada_client.common.wire import (
    ROUTES,
    SEALED_MEDIA_TYPE,
    UPLOAD_KINDS,
    Ack,
    Capabilities,
    CoordinatorKeys,
    EnrollEnvelope,
    EnrollRequest,
    EnrollResponse,
    EnvelopeHeader,
    SealedEnvelope,
    UploadAbort,
    UploadBegin,
    UploadChunk,
    UploadCommit,
    UploadCommitted,
    UploadStatus,
    UploadStatusQuery,
)
from lada_client.sequence import SequenceCounter

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

DEFAULT_UPLOAD_CHUNK_BYTES = 4 * 1024 * 1024  # well under the coordinator's max_body_bytes (16 MiB)
_RESTART_ERRORS = ("replay", "unknown_upload", "upload_conflict")  # a resumable session is gone: reseal


def _sealed_size(payload_bytes: int) -> int:
    """Length of the sealed envelope of a payload: the payload, its GCM tag, and under 1 KiB of
    frame, header, nonce and signature (``SealedEnvelope.to_bytes``)."""
    return payload_bytes + 16 + 1024


def _retriable(exc: CoordinatorError) -> bool:
    return exc.status is None or exc.status >= 500


class CoordinatorError(Exception):
    """The coordinator refused a request (4xx/5xx) or could not be reached; says why.

    ``error`` is the coordinator's error code (``ErrorBody.error``), e.g. ``unauthenticated``,
    ``replay``, ``wrong_phase``, ``quarantined``; ``last_seq`` / ``server_time`` come with
    ``replay`` / ``clock_skew`` answers.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        error: str = "",
        last_seq: int | None = None,
        server_time: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.last_seq = last_seq
        self.server_time = server_time


@dataclass(frozen=True)
class RetryPolicy:
    """Retry connection failures and 5xx with exponential backoff (edge links drop).

    Retrying is safe: every attempt is a freshly sealed request with a new sequence number, and
    the coordinator stores each (round, client, kind) upload once, so a retried upload whose first
    attempt was committed is answered "already stored" instead of being applied twice.
    """

    attempts: int = 6
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 15.0


@dataclass
class _PendingUpload:
    """A sealed body being uploaded in chunks; kept until committed so a repeated call resumes it."""

    header: EnvelopeHeader
    body: bytes
    sha256: str
    chunk_bytes: int


class Transport:
    def __init__(
        self,
        base_url: str,
        identity: Identity,
        timeout_s: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        verify: str | bool = True,
        upload_chunk_bytes: int = DEFAULT_UPLOAD_CHUNK_BYTES,
        seq_path: Path | None = None,
    ) -> None:
        """``seq_path`` keeps the sequence counter across restarts (``state_dir/seq`` on a device);
        without it the counter starts at 1 and resynchronises on the coordinator's first ``replay``."""
        if upload_chunk_bytes < 1024:
            raise ValueError("upload_chunk_bytes must be at least 1024")
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, verify=verify)
        self._retry = retry
        self._identity = identity
        self._seq = SequenceCounter(seq_path)
        self._clock_offset = 0.0  # coordinator time - local time, learnt from a clock_skew answer
        self.upload_chunk_bytes = upload_chunk_bytes
        self._pending: dict[tuple[str, int, str], _PendingUpload] = {}
        self.bytes_sent = 0
        self.bytes_received = 0
        self.chunks_sent = 0
        self.client_id: str | None = None
        self.coordinator: PublicIdentity | None = None

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: bytes | None = None, content_type: str = SEALED_MEDIA_TYPE) -> httpx.Response:
        try:
            if body is None:
                response = self._http.get(path)
            else:
                response = self._http.post(path, content=body, headers={"content-type": content_type})
        except httpx.HTTPError as exc:
            raise CoordinatorError(
                f"cannot reach coordinator at {self._http.base_url}: {exc}", None, "unreachable"
            ) from exc
        self.bytes_sent += len(body or b"")
        self.bytes_received += len(response.content)
        if response.status_code >= 400:
            try:
                err = response.json()
                error, detail = err.get("error", ""), err.get("detail", response.text)
                last_seq, server_time = err.get("last_seq"), err.get("server_time")
            except (json.JSONDecodeError, AttributeError):
                error, detail, last_seq, server_time = "", response.text[:500], None, None
            if isinstance(last_seq, int):
                self._seq.advance_past(last_seq)
            raise CoordinatorError(
                f"{path}: {response.status_code} {error}: {detail}",
                response.status_code,
                error,
                last_seq if isinstance(last_seq, int) else None,
                float(server_time) if isinstance(server_time, (int, float)) else None,
            )
        return response

    def enroll(
        self,
        token: str,
        client_name: str,
        *,
        domain: str = "",
        model_name: str = "",
        capabilities: Capabilities = Capabilities(),
    ) -> str:
        """Enroll with the operator's one-time ``token``; returns the client id.

        The coordinator's keys are fetched and refused unless their fingerprint is the token's
        (error ``fingerprint_mismatch``: the URL points at another server, or something in between
        swapped keys). The request is then sealed to those keys and signed with this identity, and
        so is the reply: neither the token nor the keys can be read or replaced on the way.
        """
        parsed = EnrollmentToken.parse(token)
        request = EnrollRequest(
            token=token,
            client_name=client_name,
            domain=domain,
            model_name=model_name,
            capabilities=capabilities,
        )
        keys = self._parse(CoordinatorKeys, self._post(ROUTES["identity"]).content, "identity")
        try:
            coordinator = PublicIdentity.from_b64(keys.sign_key, keys.kex_key)
        except CryptoError as exc:
            raise CoordinatorError(f"the coordinator's keys are malformed: {exc}", 0, "bad_reply") from exc
        if not parsed.names(coordinator.fingerprint()):
            raise CoordinatorError(
                f"the coordinator at {self._http.base_url} holds key {coordinator.fingerprint()[:16]}…, not the "
                f"{parsed.fingerprint[:16]}… the enrollment token names: wrong URL, or an interception; not enrolling",
                0,
                "fingerprint_mismatch",
            )
        own = self._identity.public.to_b64()

        def attempt() -> EnrollResponse:
            header = self._header(client_name, 0, "enroll")
            sealed = seal(
                request.model_dump_json().encode(), header, self._identity, coordinator, Direction.TO_COORDINATOR
            )
            body = EnrollEnvelope(sign_key=own["sign_key"], kex_key=own["kex_key"], envelope=sealed)
            sent = self._post(ROUTES["enroll"], body.model_dump_json().encode(), "application/json")
            reply = self._parse_sealed(sent.content, "enroll")
            return self._open_reply("enroll", reply, header, EnrollResponse, coordinator)

        response = self._resynchronising("enroll", attempt)
        self.attach(response.client_id, coordinator)
        return response.client_id

    def attach(self, client_id: str, coordinator: PublicIdentity) -> None:
        self.client_id = client_id
        self.coordinator = coordinator

    def _header(self, client_id: str, round_index: int, kind: str) -> EnvelopeHeader:
        return EnvelopeHeader(
            client_id=client_id,
            round=round_index,
            seq=self._seq.next(),
            kind=kind,
            sent_at=time.time() + self._clock_offset,
        )

    def _resynchronising(self, what: str, attempt: Callable[[], T]) -> T:
        """Run ``attempt``; after an authenticated ``replay`` (the counter was behind: state lost)
        or ``clock_skew`` (this device's clock is off) answer, correct and try once more."""
        try:
            return attempt()
        except CoordinatorError as exc:
            if exc.error == "clock_skew" and exc.server_time is not None:
                skew = time.time() + self._clock_offset - exc.server_time
                self._clock_offset = exc.server_time - time.time()
                log.warning("%s: this device's clock is %+.0fs off the coordinator's; correcting", what, skew)
            elif exc.error == "replay" and exc.last_seq is not None:
                log.info("%s: sequence counter resynchronised past %d", what, exc.last_seq)
            else:
                raise
        return attempt()

    @staticmethod
    def _parse(model: type[M], content: bytes, what: str) -> M:
        try:
            return model.model_validate_json(content)
        except ValidationError as exc:
            raise CoordinatorError(f"{what}: invalid reply from coordinator: {exc}", 0, "bad_reply") from exc

    @staticmethod
    def _parse_sealed(content: bytes, what: str) -> SealedEnvelope:
        try:
            return SealedEnvelope.from_bytes(content)
        except ValueError as exc:  # pydantic's ValidationError included
            raise CoordinatorError(f"{what}: invalid reply from coordinator: {exc}", 0, "bad_reply") from exc

    def call(self, kind: str, payload: BaseModel, round_index: int, reply_type: type[M]) -> M:
        """Seal ``payload`` as ``kind``, post it, open and validate the sealed reply.

        Retries per :class:`RetryPolicy`; 4xx answers are final and raised at once. An upload whose
        sealed body is over ``upload_chunk_bytes`` goes as a chunked upload session (resumable).
        """
        if self.client_id is None or self.coordinator is None:
            raise CoordinatorError("not enrolled: call enroll() first")
        plain = attachments.dump(payload)
        if kind in UPLOAD_KINDS and _sealed_size(len(plain)) > self.upload_chunk_bytes:
            return self._call_chunked(kind, plain, round_index, reply_type)
        return self._retrying(kind, lambda: self._call_once(kind, plain, round_index, reply_type))

    @overload
    def _retrying(self, what: str, attempt: Callable[[], T], recovered: None = None) -> T: ...

    @overload
    def _retrying(self, what: str, attempt: Callable[[], T], recovered: Callable[[], bool]) -> T | None: ...

    def _retrying(self, what: str, attempt: Callable[[], T], recovered: Callable[[], bool] | None = None) -> T | None:
        """Run ``attempt`` per the retry policy; ``recovered`` (asked after each backoff) may end it early."""
        backoff = self._retry.initial_backoff_s
        for n in range(1, self._retry.attempts + 1):
            try:
                return attempt()
            except CoordinatorError as exc:
                if not _retriable(exc) or n == self._retry.attempts:
                    raise
                log.warning("%s failed (%s); retry %d/%d in %.1fs", what, exc, n, self._retry.attempts - 1, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, self._retry.max_backoff_s)
                if recovered is not None and recovered():
                    return None
        raise AssertionError("unreachable")

    def _seal(self, kind: str, plain: bytes, round_index: int) -> tuple[EnvelopeHeader, bytes]:
        assert self.client_id is not None and self.coordinator is not None
        header = self._header(self.client_id, round_index, kind)
        envelope = seal(plain, header, self._identity, self.coordinator, Direction.TO_COORDINATOR)
        return header, envelope.to_bytes()

    def _open_reply(
        self,
        kind: str,
        reply: SealedEnvelope,
        header: EnvelopeHeader,
        reply_type: type[M],
        coordinator: PublicIdentity | None = None,
    ) -> M:
        sender = coordinator or self.coordinator
        assert sender is not None
        try:
            if reply.header.client_id != header.client_id or reply.header.seq != header.seq:
                raise CoordinatorError("reply does not answer this request (client id or sequence differs)")
            plain = open_envelope(reply, sender, self._identity, Direction.TO_CLIENT)
            return attachments.load(reply_type, plain)
        except (ValueError, CryptoError) as exc:  # pydantic's ValidationError included
            raise CoordinatorError(f"{kind}: invalid reply from coordinator: {exc}", 0, "bad_reply") from exc

    def _call_once(self, kind: str, payload: BaseModel | bytes, round_index: int, reply_type: type[M]) -> M:
        plain = payload if isinstance(payload, bytes) else attachments.dump(payload)

        def attempt() -> M:
            header, body = self._seal(kind, plain, round_index)
            reply = self._parse_sealed(self._post(ROUTES[kind], body).content, kind)
            return self._open_reply(kind, reply, header, reply_type)

        return self._resynchronising(kind, attempt)

    # ------------------------------------------------------------------------ chunked uploads
    def _call_chunked(self, kind: str, plain: bytes, round_index: int, reply_type: type[M]) -> M:
        """Upload one sealed body in chunks. A repeated call with the same payload resumes it."""
        key = (kind, round_index, hashlib.sha256(plain).hexdigest())
        for first in (True, False):
            pending = self._pending.get(key)
            if pending is None:
                header, body = self._seal(kind, plain, round_index)
                pending = _PendingUpload(header, body, hashlib.sha256(body).hexdigest(), self.upload_chunk_bytes)
                # only the current round's uploads can still be resumed
                self._pending = {k: v for k, v in self._pending.items() if k[1] == round_index}
                self._pending[key] = pending
            try:
                reply = self._upload(kind, pending, round_index, reply_type)
            except CoordinatorError as exc:
                if first and exc.error in _RESTART_ERRORS:
                    log.info("%s: the coordinator no longer has this upload (%s); sealing it afresh", kind, exc.error)
                    self._pending.pop(key, None)
                    continue
                if exc.status is not None and 400 <= exc.status < 500:
                    self._pending.pop(key, None)  # refused for good: nothing left to resume
                raise
            self._pending.pop(key, None)
            return reply
        raise AssertionError("unreachable")

    def _upload(self, kind: str, up: _PendingUpload, round_index: int, reply_type: type[M]) -> M:
        begin = UploadBegin(target=up.header, total_bytes=len(up.body), sha256=up.sha256, chunk_bytes=up.chunk_bytes)
        status = self._retrying(
            "upload.begin", lambda: self._call_once("upload.begin", begin, round_index, UploadStatus)
        )
        assert status is not None
        sid = status.session_id
        held = set(status.received)
        missing = [] if status.committed else [i for i in range(status.n_chunks) if i not in held]
        log.info(
            "%s: uploading a %.1f MiB sealed body as %d chunks of %d bytes (session %s, %d already held)",
            kind,
            len(up.body) / 2**20,
            status.n_chunks,
            up.chunk_bytes,
            sid,
            status.n_chunks - len(missing),
        )
        step = max(1, len(missing) // 10)
        commit = UploadCommit(session_id=sid)
        try:
            for done, index in enumerate(missing, 1):
                self._send_chunk(up, sid, index, round_index)
                if done % step == 0 or done == len(missing):
                    log.info(
                        "%s: upload %s: %d/%d chunks sent (%.0f%%)",
                        kind,
                        sid,
                        done,
                        len(missing),
                        100 * done / len(missing),
                    )
            committed = self._retrying(
                "upload.commit", lambda: self._call_once("upload.commit", commit, round_index, UploadCommitted)
            )
        except CoordinatorError as exc:
            if exc.status is not None and 400 <= exc.status < 500:  # refused for good: free the session now
                self._abort(sid, round_index)
            raise  # unreachable coordinator: keep the session, a repeated call resumes it
        assert committed is not None
        log.info("%s: upload %s committed", kind, sid)
        return self._open_reply(kind, committed.reply, up.header, reply_type)

    def _abort(self, session_id: str, round_index: int) -> None:
        """Best effort: tell the coordinator to drop a session this client gave up on (else it
        expires after the server's TTL, counting against this client's quota until then)."""
        try:
            self._call_once("upload.abort", UploadAbort(session_id=session_id), round_index, Ack)
            log.info("upload %s aborted", session_id)
        except CoordinatorError as exc:
            log.warning("could not abort upload %s (%s); it expires on the coordinator", session_id, exc)

    def _send_chunk(self, up: _PendingUpload, session_id: str, index: int, round_index: int) -> None:
        """Send one chunk per the retry policy; after a failure, skip it if the coordinator holds it."""
        data = up.body[index * up.chunk_bytes : (index + 1) * up.chunk_bytes]
        message = UploadChunk(session_id=session_id, index=index, data=data)

        def attempt() -> None:
            self._call_once("upload.chunk", message, round_index, Ack)
            self.chunks_sent += 1

        def held() -> bool:  # the reply may have been lost after the chunk was stored
            try:
                status = self._call_once(
                    "upload.status", UploadStatusQuery(session_id=session_id), round_index, UploadStatus
                )
            except CoordinatorError as exc:
                if _retriable(exc):
                    return False
                raise
            return index in status.received

        self._retrying(f"upload.chunk {index}", attempt, held)
