"""Talking to the coordinator: sealed, signed requests over httpx, with clear errors.

Every call seals its payload under a key bound to (client, round, direction), signs it, posts it,
and opens the sealed reply with the coordinator's pinned keys. Sequence numbers are derived from
the clock (microseconds, strictly increasing within a process), so they keep increasing across
restarts without a counter on disk.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from lada_client.common.crypto import CryptoError, Direction, Identity, PublicIdentity, open_envelope, seal
from lada_client.common.wire import EnrollRequest, EnrollResponse, EnvelopeHeader, SealedEnvelope

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

ENDPOINTS: dict[str, str] = {
    "round.get": "/v1/round",
    "features.put": "/v1/features",
    "allocation.get": "/v1/allocation",
    "reward.put": "/v1/reward",
    "secagg.put": "/v1/secagg/put",
    "secagg.get": "/v1/secagg/get",
}


class CoordinatorError(Exception):
    """The coordinator refused a request (4xx/5xx) or could not be reached; says why."""

    def __init__(self, message: str, status: int | None = None, error: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error = error


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


class Transport:
    def __init__(
        self,
        base_url: str,
        identity: Identity,
        timeout_s: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        verify: str | bool = True,
    ) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, verify=verify)
        self._retry = retry
        self._identity = identity
        self._last_seq = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.client_id: str | None = None
        self.coordinator: PublicIdentity | None = None

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: bytes) -> httpx.Response:
        try:
            response = self._http.post(path, content=body, headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise CoordinatorError(f"cannot reach coordinator at {self._http.base_url}: {exc}", None, "unreachable") from exc
        self.bytes_sent += len(body)
        self.bytes_received += len(response.content)
        if response.status_code >= 400:
            try:
                err = response.json()
                error, detail = err.get("error", ""), err.get("detail", response.text)
            except (json.JSONDecodeError, AttributeError):
                error, detail = "", response.text[:500]
            raise CoordinatorError(f"{path}: {response.status_code} {error}: {detail}", response.status_code, error)
        return response

    def enroll(self, request: EnrollRequest) -> EnrollResponse:
        response = self._post("/v1/enroll", request.model_dump_json().encode())
        reply = EnrollResponse.model_validate_json(response.content)
        self.attach(reply.client_id, PublicIdentity.from_b64(reply.coordinator_sign_key, reply.coordinator_kex_key))
        return reply

    def attach(self, client_id: str, coordinator: PublicIdentity) -> None:
        self.client_id = client_id
        self.coordinator = coordinator

    def _next_seq(self) -> int:
        self._last_seq = max(self._last_seq + 1, time.time_ns() // 1000)
        return self._last_seq

    def call(self, kind: str, payload: BaseModel, round_index: int, reply_type: type[M]) -> M:
        """Seal ``payload`` as ``kind``, post it, open and validate the sealed reply.

        Retries per :class:`RetryPolicy`; 4xx answers are final and raised at once.
        """
        if self.client_id is None or self.coordinator is None:
            raise CoordinatorError("not enrolled: call enroll() first")
        backoff = self._retry.initial_backoff_s
        for attempt in range(1, self._retry.attempts + 1):
            try:
                return self._call_once(kind, payload, round_index, reply_type)
            except CoordinatorError as exc:
                retriable = exc.status is None or exc.status >= 500
                if not retriable or attempt == self._retry.attempts:
                    raise
                log.warning("%s failed (%s); retry %d/%d in %.1fs", kind, exc, attempt, self._retry.attempts - 1, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, self._retry.max_backoff_s)
        raise AssertionError("unreachable")

    def _call_once(self, kind: str, payload: BaseModel, round_index: int, reply_type: type[M]) -> M:
        assert self.client_id is not None and self.coordinator is not None
        header = EnvelopeHeader(
            client_id=self.client_id, round=round_index, seq=self._next_seq(), kind=kind, sent_at=time.time()
        )
        envelope = seal(payload.model_dump_json().encode(), header, self._identity, self.coordinator, Direction.TO_COORDINATOR)
        response = self._post(ENDPOINTS[kind], envelope.model_dump_json().encode())
        try:
            reply = SealedEnvelope.model_validate_json(response.content)
            if reply.header.client_id != self.client_id or reply.header.seq != header.seq:
                raise CoordinatorError("reply does not answer this request (client id or sequence differs)")
            plain = open_envelope(reply, self.coordinator, self._identity, Direction.TO_CLIENT)
            return reply_type.model_validate_json(plain)
        except (ValidationError, CryptoError) as exc:
            raise CoordinatorError(f"{kind}: invalid reply from coordinator: {exc}", 0, "bad_reply") from exc
