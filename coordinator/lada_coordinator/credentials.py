"""The coordinator's secrets: its identity key, the operator token, and enrollment tokens.

* ``state_dir/coordinator.key`` — the coordinator's Ed25519 + X25519 identity (0600). Its public
  fingerprint is embedded in every enrollment token, so devices can tell the real coordinator
  from anything in between.
* ``state_dir/operator.token`` — a bearer token (0600) for the operator's endpoints
  (``/v1/status``): whoever runs the coordinator can read it, devices cannot.
* enrollment tokens — one-time, with an expiry and an operator-chosen secure-aggregation group,
  stored only as a hash (``CoordinatorStore.add_token``).
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from pathlib import Path

from lada_client.common.crypto import Identity, write_private
from lada_client.common.enrollment import EnrollmentToken
from lada_coordinator.stores import CoordinatorStore
from lada_coordinator.stores.records import DEFAULT_GROUP

__all__ = [
    "DEFAULT_TOKEN_TTL_S",
    "GROUP_PATTERN",
    "check_operator",
    "existing_operator_token",
    "issue_tokens",
    "load_identity",
    "operator_token",
]

DEFAULT_TOKEN_TTL_S = 7 * 24 * 3600.0
GROUP_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def load_identity(state_dir: Path) -> Identity:
    return Identity.load_or_create(state_dir / "coordinator.key")


def operator_token(state_dir: Path) -> str:
    """The operator's bearer token, created on first use."""
    path = state_dir / "operator.token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    write_private(path, f"{token}\n".encode())
    return token


def existing_operator_token(state_dir: Path) -> str:
    """The operator token a running coordinator already uses. Unlike :func:`operator_token` it
    never creates one: a token made by the operator's CLI would not be the server's, and the
    request would fail later with a less telling 401."""
    path = state_dir / "operator.token"
    token = path.read_text().strip() if path.exists() else ""
    if not token:
        raise FileNotFoundError(f"no operator token in {path}: the coordinator writes it when it starts")
    return token


def check_operator(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization: Bearer <token>`` header carries the operator token (constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def issue_tokens(
    store: CoordinatorStore,
    identity: Identity,
    count: int,
    ttl_s: float = DEFAULT_TOKEN_TTL_S,
    secagg_group: str = DEFAULT_GROUP,
) -> list[str]:
    """``count`` one-time enrollment tokens naming this coordinator's key, valid for ``ttl_s``."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if not ttl_s > 0:
        raise ValueError("the token lifetime must be positive")
    if not GROUP_PATTERN.match(secagg_group):
        raise ValueError("a secure-aggregation group is 1-64 letters, digits, '_', '.' or '-'")
    out = []
    for _ in range(count):
        token = EnrollmentToken.new(identity.public.fingerprint())
        store.add_token(token.secret_hash, time.time() + ttl_s, secagg_group)
        out.append(str(token))
    return out
