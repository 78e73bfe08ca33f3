"""Identities and the sealed envelope every LaDa message travels in.

The hazardous primitives (X25519, HKDF, AES-256-GCM, Ed25519) stay inside this module; callers
only see :class:`Identity`, :class:`PublicIdentity`, :func:`seal` and :func:`open_envelope`.

Construction (see ``docs/protocol.md``):

* each party owns an Ed25519 signing key and an X25519 key-agreement key;
* the AES-256-GCM key for one message is ``HKDF-SHA256(X25519(a, B), salt="lada/v1",
  info="lada/v1|<client_id>|<round>|<direction>")`` so a key is bound to one client, one round and
  one direction (a reply can never be replayed as a request, nor a round-3 message in round 4);
* the header (client id, round, sequence number, kind, time) is the GCM associated data, so it is
  authenticated but readable for routing;
* the sender signs ``header || nonce || ciphertext`` with Ed25519, so a peer that only knows the
  shared secret still cannot forge the other party's messages.
"""

from __future__ import annotations

import base64
import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lada_client.common.wire import NONCE_BYTES, EnvelopeHeader, SealedEnvelope

__all__ = [
    "CryptoError",
    "Direction",
    "Identity",
    "PublicIdentity",
    "open_envelope",
    "seal",
    "write_private",
]

_SALT = b"lada/v1"


class CryptoError(Exception):
    """A message could not be authenticated or decrypted. The message says which check failed."""


class Direction:
    """Which way a message travels; part of the key derivation so keys never serve both ways."""

    TO_COORDINATOR = "c2s"
    TO_CLIENT = "s2c"


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise CryptoError(f"{what} is not valid base64") from exc


@dataclass(frozen=True)
class PublicIdentity:
    """The public half of a party's keys, as exchanged at enrollment."""

    sign_key: bytes
    kex_key: bytes

    def __post_init__(self) -> None:
        if len(self.sign_key) != 32 or len(self.kex_key) != 32:
            raise CryptoError("public keys must be 32-byte Ed25519 and X25519 keys")

    @classmethod
    def from_b64(cls, sign_key: str, kex_key: str) -> PublicIdentity:
        return cls(b64d(sign_key, "sign_key"), b64d(kex_key, "kex_key"))

    def to_b64(self) -> dict[str, str]:
        return {"sign_key": b64e(self.sign_key), "kex_key": b64e(self.kex_key)}

    def fingerprint(self) -> str:
        """SHA-256 (hex) of both public keys: what enrollment tokens pin (``common/enrollment.py``)."""
        digest = hashes.Hash(hashes.SHA256())
        digest.update(self.sign_key + self.kex_key)
        return digest.finalize().hex()

    def check_usable(self) -> None:
        """Refuse a key-agreement key of low order: X25519 with it gives an all-zero secret, so
        every envelope to or from that party would fail (or be predictable). Checked once, at
        enrollment, by a trial exchange."""
        try:
            X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(self.kex_key))
        except ValueError as exc:
            raise CryptoError("kex_key is not a usable X25519 public key (low-order point)") from exc
        try:
            Ed25519PublicKey.from_public_bytes(self.sign_key)
        except ValueError as exc:
            raise CryptoError("sign_key is not an Ed25519 public key") from exc


class Identity:
    """A party's private keys. Generate once per device/server and keep the file private."""

    def __init__(self, sign_key: Ed25519PrivateKey, kex_key: X25519PrivateKey) -> None:
        self._sign = sign_key
        self._kex = kex_key
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        self.public = PublicIdentity(sign_key.public_key().public_bytes(*raw), kex_key.public_key().public_bytes(*raw))

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    def save(self, path: Path) -> None:
        """Write both private keys (raw, base64) to ``path`` with mode 0600 (see :func:`write_private`)."""
        raw = serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        write_private(path, f"{b64e(self._sign.private_bytes(*raw))}\n{b64e(self._kex.private_bytes(*raw))}\n".encode())

    @classmethod
    def load(cls, path: Path) -> Identity:
        try:
            lines = path.read_text().split()
        except OSError as exc:
            raise CryptoError(f"cannot read identity file {path}: {exc.strerror}") from exc
        if len(lines) != 2:
            raise CryptoError(f"identity file {path} is malformed (expected two keys)")
        return cls(
            Ed25519PrivateKey.from_private_bytes(b64d(lines[0], "signing key")),
            X25519PrivateKey.from_private_bytes(b64d(lines[1], "key-agreement key")),
        )

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        if path.exists():
            return cls.load(path)
        identity = cls.generate()
        identity.save(path)
        return identity

    def sign(self, data: bytes) -> bytes:
        return self._sign.sign(data)

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - keyed by (self, peer, ...); identities are long-lived
    def _aead(self, peer_kex: bytes, client_id: str, round_index: int, direction: str) -> AESGCM:
        shared = self._kex.exchange(X25519PublicKey.from_public_bytes(peer_kex))
        info = f"lada/v1|{client_id}|{round_index}|{direction}".encode()
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(shared)
        return AESGCM(key)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only, whatever was there before.

    ``os.open(..., 0o600)`` sets the mode only when it creates the file, so re-saving over an
    existing 0644 file would keep it world-readable: the data goes to a fresh 0600 file beside it,
    which then replaces the old one atomically (a crash leaves the old file or the new, never half).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staged.unlink(missing_ok=True)  # left by a crash of an earlier process with this pid
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(staged, stat.S_IRUSR | stat.S_IWUSR)  # umask cannot widen it, but be explicit
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def _signed_bytes(header_bytes: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    return len(header_bytes).to_bytes(4, "big") + header_bytes + nonce + ciphertext


def seal(
    payload: bytes,
    header: EnvelopeHeader,
    sender: Identity,
    recipient: PublicIdentity,
    direction: str,
) -> SealedEnvelope:
    """Encrypt and sign ``payload``; ``header`` travels in clear but authenticated."""
    header_bytes = header.canonical_bytes()
    aead = sender._aead(recipient.kex_key, header.client_id, header.round, direction)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = aead.encrypt(nonce, payload, header_bytes)
    signature = sender.sign(_signed_bytes(header_bytes, nonce, ciphertext))
    return SealedEnvelope(header=header, nonce=nonce, ciphertext=ciphertext, signature=signature)


def open_envelope(
    envelope: SealedEnvelope,
    sender: PublicIdentity,
    recipient: Identity,
    direction: str,
) -> bytes:
    """Verify the sender's signature, then decrypt. Raises :class:`CryptoError` on any failure."""
    header_bytes = envelope.header.canonical_bytes()
    nonce, ciphertext, signature = envelope.nonce, envelope.ciphertext, envelope.signature
    if len(nonce) != NONCE_BYTES:
        raise CryptoError(f"nonce must be {NONCE_BYTES} bytes")
    try:
        Ed25519PublicKey.from_public_bytes(sender.sign_key).verify(
            signature, _signed_bytes(header_bytes, nonce, ciphertext)
        )
    except InvalidSignature as exc:
        raise CryptoError("bad signature: the message was not signed by the enrolled key") from exc
    aead = recipient._aead(sender.kex_key, envelope.header.client_id, envelope.header.round, direction)
    try:
        return aead.decrypt(nonce, ciphertext, header_bytes)
    except InvalidTag as exc:
        raise CryptoError("decryption failed: ciphertext or header was altered, or wrong key") from exc
