"""The operator's side of a running coordinator: where it listens, and its operator endpoints.

``lada-coordinator serve`` writes ``state_dir/endpoint.json`` (the URL it serves on and, for a
self-signed certificate, the file that verifies it), so ``lada-coordinator status`` and ``clients``
need nothing but ``--config``: the token comes from ``state_dir/operator.token`` and the address
from that file. Every failure becomes one :class:`OperatorError` whose message says what to do,
because an operator reading a traceback at the end of a long day learns nothing from it.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from lada_client.common.wire import ROUTES
from lada_coordinator.config import CoordinatorConfig
from lada_coordinator.credentials import existing_operator_token

__all__ = ["ENDPOINT_FILE", "Endpoint", "OperatorClient", "OperatorError", "read_endpoint", "write_endpoint"]

ENDPOINT_FILE = "endpoint.json"


class OperatorError(RuntimeError):
    """A request of the operator CLI that cannot be answered; the message is for a person."""


@dataclass(frozen=True)
class Endpoint:
    """Where a coordinator serves, as an operator on the same machine reaches it."""

    url: str
    ca_cert: Path | None = None  # the self-signed certificate to verify it with; None: the system's trust store


def _is_self_signed(cert: Path) -> bool:
    from cryptography import x509

    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    return parsed.issuer == parsed.subject


def write_endpoint(state_dir: Path, scheme: str, host: str, port: int, cert: Path | None) -> Endpoint:
    """Record where this coordinator serves (``serve`` calls it on start). A wildcard address is
    recorded as loopback, and a certificate only when it is self-signed: a CA-issued one is
    verified through the system's trust store, which a leaf certificate cannot stand in for."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    endpoint = Endpoint(
        f"{scheme}://{shown}:{port}", cert.resolve() if cert is not None and _is_self_signed(cert) else None
    )
    (state_dir / ENDPOINT_FILE).write_text(
        json.dumps({"url": endpoint.url, "ca_cert": None if endpoint.ca_cert is None else str(endpoint.ca_cert)}) + "\n"
    )
    return endpoint


def read_endpoint(config: CoordinatorConfig) -> Endpoint:
    """Where the coordinator of ``config`` serves: its ``endpoint.json``, or (from a version that
    wrote none) plain http on its configured host and port."""
    path = config.state_dir / ENDPOINT_FILE
    if path.exists():
        data = json.loads(path.read_text())
        return Endpoint(data["url"], Path(data["ca_cert"]) if data.get("ca_cert") else None)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "", "::") else config.host
    return Endpoint(f"http://{host}:{config.port}")


class OperatorClient:
    """The operator endpoints of one coordinator (``/v1/status``), with its operator token."""

    def __init__(self, endpoint: Endpoint, token: str, timeout_s: float = 10.0) -> None:
        self.endpoint = endpoint
        self._token = token
        self._timeout_s = timeout_s

    @classmethod
    def for_config(
        cls, config: CoordinatorConfig, url: str | None = None, ca_cert: Path | None = None
    ) -> OperatorClient:
        """The coordinator that runs with ``config``; ``url``/``ca_cert`` override where it is and
        what verifies it (a coordinator behind a proxy, or a certificate from elsewhere)."""
        if not config.state_dir.is_dir():
            raise OperatorError(
                f"no coordinator state directory at {config.state_dir}: has the coordinator of this config "
                "been started (lada-coordinator serve --config …)?"
            )
        try:
            token = existing_operator_token(config.state_dir)
        except FileNotFoundError as exc:
            raise OperatorError(str(exc)) from None
        found = read_endpoint(config)
        endpoint = Endpoint(
            url.rstrip("/") if url else found.url, ca_cert if ca_cert is not None else (None if url else found.ca_cert)
        )
        return cls(endpoint, token)

    def status(self) -> dict[str, Any]:
        """The coordinator's operator view: rounds, phases, devices, quarantines, engine errors."""
        where = self.endpoint.url
        verify: str | bool = str(self.endpoint.ca_cert) if self.endpoint.ca_cert is not None else True
        try:
            with httpx.Client(verify=verify, timeout=self._timeout_s) as http:
                response = http.get(f"{where}{ROUTES['status']}", headers={"Authorization": f"Bearer {self._token}"})
        except httpx.ConnectError as exc:
            if isinstance(exc.__cause__, ssl.SSLError) or "SSL" in str(exc):
                raise OperatorError(
                    f"the TLS certificate of {where} does not verify ({exc}); give the one it serves with --ca-cert"
                ) from None
            raise OperatorError(
                f"cannot reach the coordinator at {where} ({exc}): is it running? (--url to ask another address)"
            ) from None
        except httpx.TimeoutException:
            raise OperatorError(f"the coordinator at {where} did not answer within {self._timeout_s:.0f}s") from None
        except httpx.HTTPError as exc:
            raise OperatorError(f"request to the coordinator at {where} failed: {exc}") from None
        if response.status_code == 401:
            raise OperatorError(
                f"the coordinator at {where} refused the operator token (401): it runs with another state "
                "directory than this --config names, or the token file changed after it started"
            )
        if response.status_code != 200:
            raise OperatorError(f"the coordinator at {where} answered {response.status_code}: {response.text[:200]}")
        try:
            return response.json()
        except ValueError:
            raise OperatorError(f"{where}{ROUTES['status']} did not answer JSON: is this a LaDa coordinator?") from None
