"""Bounds on what one connection can cost the coordinator, enforced below the endpoints.

* :class:`RequestLimits` (ASGI middleware) reads every request body itself, counting bytes as they
  stream in, whether or not a ``Content-Length`` was sent (``Transfer-Encoding: chunked`` included),
  and answers 413 the moment the limit is passed, or 408 when the body does not arrive within its
  deadline; the endpoints then see a body already in memory and bounded. It also bounds the
  requests being *handled* at once (503 above it). Requests still sending their head or body do not
  count: they are bounded by the connection cap and their deadlines, so slow clients cannot take
  the slots of the ones that are ready (uvicorn's own ``limit_concurrency`` counts open connections,
  which would let a slowloris answer 503 to everyone).
* :func:`guarded_protocol` is uvicorn's h11 protocol with a deadline for the request head (a
  connection that opens and never finishes its headers is closed) and a cap on open connections
  (above it, new ones are closed at once).
* :class:`RateLimiter` is a token bucket per source address, for the unauthenticated endpoints.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from lada_client.common.wire import ErrorBody

Scope = dict[str, Any]
Message = dict[str, Any]


async def send_error(
    send: Any, status: int, error: str, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps(ErrorBody(error=error, detail=detail).model_dump(exclude_none=True)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """Read the body up to ``max_bytes`` within ``timeout_s``, then hand the app a replay of it,
    unless ``max_in_flight`` requests are being handled already (503)."""

    def __init__(self, app: Any, max_bytes: int, timeout_s: float, max_in_flight: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # the event loop is single-threaded: a plain counter is enough

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body over {self.max_bytes} bytes (send larger bodies as a chunked upload)"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await send_error(send, 413, "too_large", too_large)
            return
        body = bytearray()
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                await send_error(send, 408, "body_timeout", f"request body not received within {self.timeout_s:.0f}s")
                return
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await send_error(send, 413, "too_large", too_large)
                return
            if not message.get("more_body", False):
                break
        if self.in_flight >= self.max_in_flight:
            await send_error(
                send, 503, "busy", "the coordinator is at its request limit; retry shortly", [(b"retry-after", b"1")]
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for a disconnect, as the server would
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        self.in_flight += 1
        try:
            await self.app(scope, replay, send)
        finally:
            self.in_flight -= 1


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol, plus: close a connection whose request head is not complete within
    ``header_timeout_s`` of its start (or of the previous response on a kept-alive connection),
    and refuse connections beyond ``max_connections``."""

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        # H11Protocol's own signature: asyncio.Transport, narrower than asyncio.BaseProtocol's BaseTransport
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self.logger.warning("more than %d open connections; closing a new one", max_connections)
                transport.close()
                return
            self._arm_head_timer()

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # headers never completed: a slow or half-open client

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head is parsed: the body has its own deadline
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()  # the next request on this connection gets the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol


class RateLimiter:
    """Token bucket per key (a source address): ``rate`` tokens per second, at most ``burst``.

    Used for failed enrollments: each failure takes a token (:meth:`charge`), and while a bucket
    is empty the address is refused before any work is done (:meth:`retry_after`). So a legitimate
    fleet enrolling from one NAT is not slowed, and guessing tokens is. At most ``max_keys``
    buckets are kept (least recently used go first), so a flood from many addresses costs bounded
    memory.
    """

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()  # endpoints run in a thread pool

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return tokens

    def retry_after(self, key: str, now: float | None = None) -> float:
        """0 while ``key`` has a token left, else the seconds until it has one."""
        with self._lock:
            tokens = self._level(key, time.monotonic() if now is None else now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def charge(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens = self._level(key, now)
            self._buckets[key] = (max(0.0, tokens - 1.0), now)
