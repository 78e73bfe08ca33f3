"""Enrollment tokens: what the operator hands a device so it can join, and whom it joins.

A token is ``lada1-<fingerprint>-<secret>``: the first 32 hex digits (128 bits) of the SHA-256
fingerprint of the coordinator's public keys, and 24 random bytes in hex. The device fetches the
coordinator's keys (``GET /v1/identity``), refuses them unless their fingerprint matches the token,
and then sends its enrollment *sealed to those keys* and signed by its own (``wire.EnrollEnvelope``).
So a proxy in the middle can neither read the secret nor swap keys in either direction: the
coordinator's keys are pinned by the token, and the device's keys are bound to the secret by the
encryption and signature. The coordinator stores only a SHA-256 of the secret.

Hex throughout, so a token never starts with "-" (command lines would read it as an option).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = ["TOKEN_PREFIX", "EnrollmentToken", "TokenFormatError"]

TOKEN_PREFIX = "lada1"
FINGERPRINT_HEX = 32
_SECRET_BYTES = 24
_PATTERN = re.compile(rf"^{TOKEN_PREFIX}-([0-9a-f]{{{FINGERPRINT_HEX}}})-([0-9a-f]{{{2 * _SECRET_BYTES}}})$")


class TokenFormatError(ValueError):
    """The text is not an enrollment token of this protocol; the message says what to do."""


@dataclass(frozen=True)
class EnrollmentToken:
    fingerprint: str  # of the coordinator's public keys, FINGERPRINT_HEX hex digits
    secret: str

    @classmethod
    def new(cls, coordinator_fingerprint: str) -> EnrollmentToken:
        return cls(coordinator_fingerprint[:FINGERPRINT_HEX], secrets.token_hex(_SECRET_BYTES))

    @classmethod
    def parse(cls, text: str) -> EnrollmentToken:
        match = _PATTERN.match(text.strip())
        if match is None:
            if re.fullmatch(r"[0-9a-f]{48}", text.strip()):
                raise TokenFormatError(
                    "this enrollment token comes from an older coordinator and names no coordinator key; "
                    "ask the operator for a new one (lada-coordinator issue-token)"
                )
            raise TokenFormatError(f"not an enrollment token (expected {TOKEN_PREFIX}-<32 hex>-<48 hex>)")
        return cls(match.group(1), match.group(2))

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}-{self.fingerprint}-{self.secret}"

    @property
    def secret_hash(self) -> str:
        """What the coordinator stores and looks the token up by."""
        return hashlib.sha256(self.secret.encode()).hexdigest()

    @property
    def token_id(self) -> str:
        """A short public name for the token (listing, revocation); reveals nothing of the secret."""
        return self.secret_hash[:12]

    def names(self, coordinator_fingerprint: str) -> bool:
        """Whether the token was issued by the coordinator with this key fingerprint."""
        return hmac.compare_digest(self.fingerprint, coordinator_fingerprint[:FINGERPRINT_HEX])
