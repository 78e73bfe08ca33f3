"""Secure aggregation of adapter updates (SecAgg, Bonawitz et al. 2017; SecAgg+, Bell et al. 2020).

The coordinator must learn the *sum* of the surviving clients' LoRA updates and nothing about any
single update, even when clients drop out mid-round. This module is what both roles share: the
typed messages (frozen pydantic models, which the wire schema embeds; ``to_dict``/``from_dict``
give and take their JSON form), the primitives (Shamir sharing, quantisation, the mask streams and
the self-mask commitment) and the client's side,
:class:`SecAggClient`. The coordinator's side, ``SecAggServer``, lives in the coordinator
distribution (``lada_coordinator.aggregation.secagg_server``). Nothing here does networking: the
coordinator and client carry the messages inside their sealed envelopes (:mod:`.crypto`). As there,
the hazardous primitives (X25519, HKDF, AES-GCM, AES-CTR) stay inside; callers see the client, the
messages, a few pure helpers, and keys as bytes.

Round, with ``U1 ⊇ U2 ⊇ U3`` the clients still present after each step::

    client.advertise()               -> AdvertiseKeys      server.receive_advertise(); roster()
    client.share_keys(roster)        -> ShareKeys          server.receive_shares(); route_shares()
    client.masked_input(x, shares)   -> MaskedInput        server.receive_masked_input(); unmask_request()
    client.unmask(survivors, dropped)-> UnmaskResponse     server.receive_unmask(); aggregate()

* Each client has two fresh X25519 key pairs per round: one for pairwise masks, one for the channel
  that carries its secret shares to its neighbours *through* the coordinator (AES-256-GCM under
  ``HKDF(X25519(channel_i, channel_j))``, bound to round, sender and recipient).
* Client ``i`` adds a self mask ``PRG(b_i)`` and, for each neighbour ``j`` that shared keys,
  ``+PRG(s_ij)`` if ``i < j`` else ``-PRG(s_ij)`` with ``s_ij = HKDF(X25519(mask_i, mask_j))``.
  Pair masks cancel in the sum; the PRG is AES-256-CTR read as little-endian ``uint32``.
* ``b_i`` and the masking private key are Shamir-shared (threshold ``t``) among the neighbours.
  To unmask, every survivor reveals the ``b`` shares of survivors and the mask-key shares of
  clients that dropped after sharing, and *never both for one client*: both would let the
  coordinator strip every mask off that client's input. Clients enforce this across calls.
* Neighbours: ``None`` pairs everyone with everyone (SecAgg, ``O(n)`` work per client);
  ``k`` builds a ``k``-regular circulant graph over a ring shuffled by a seed hashed from the
  roster (SecAgg+, ``O(k)`` work per client). The threshold then counts within a neighbourhood.

Threat model: the coordinator is honest-but-curious and may collude with fewer than ``t``
neighbours of a client. With ``2t > degree`` an actively lying coordinator still cannot collect
both share kinds for one client from honest neighbours (a warning is logged otherwise). The
consistency-check round of Bonawitz et al. (signed survivor lists) is not implemented, so the
protocol does not claim security against a coordinator colluding with malicious clients.

Precision: values are clipped to ``[-clip, clip]`` and rounded to multiples of ``1/scale``, then
summed modulo ``2**32`` as two's-complement integers. The decoded sum is exact up to
``n/(2*scale)`` per entry as long as ``n * ceil(clip * scale) < 2**31`` (checked, see
:meth:`SecAggConfig.max_clients`); e.g. ``scale=2**16, clip=1`` allows 32 767 clients with an
absolute error below ``n * 7.7e-6`` per entry.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from typing_extensions import Self

from lada_client.common.attachments import Blob, array_codec

__all__ = [
    "MASK_KEY",
    "SELF_MASK_SEED",
    "SHAMIR_PRIME",
    "AdvertiseKeys",
    "EncryptedShare",
    "MaskedInput",
    "Roster",
    "SecAggClient",
    "SecAggConfig",
    "SecAggError",
    "SecAggFailure",
    "SecAggInbox",
    "SecAggResult",
    "Share",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "check_id",
    "commit_self_mask",
    "dequantize",
    "fedavg",
    "is_mask_key",
    "lagrange_coefficients",
    "neighbour_graph",
    "pair_mask",
    "quantize",
    "self_mask",
    "shamir_reconstruct",
    "shamir_split",
]

logger = logging.getLogger(__name__)

#: The Mersenne prime 2**521 - 1: any 32-byte secret is one field element, and a reconstruction
#: from garbled shares lands below 2**256 only with probability 2**-265, so it is detected. A
#: deliberate tamper can stay in range; the server also checks each rebuilt secret against the
#: owner's commitment (self-mask seed) or advertised public key (mask key).
SHAMIR_PRIME = 2**521 - 1
_SHARE_BYTES = 66
_SECRET_BYTES = 32
_KEY_BYTES = 32
_NONCE_BYTES = 12
_GCM_TAG_BYTES = 16
_SHARE_CIPHERTEXT_BYTES = 2 * _SHARE_BYTES + _GCM_TAG_BYTES
_GROUP_HALF = 2**31
_PROTOCOL = b"lada/secagg/v1"
_MAX_ID_CHARS = 256
_RAW_PUBLIC = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
_RAW_PRIVATE = (serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


#: the two secrets a client Shamir-shares, as messages and the never-both rule name them
SELF_MASK_SEED, MASK_KEY = "self-mask seed", "mask key"


class SecAggError(ValueError):
    """The protocol cannot proceed safely; the message says which check failed and for whom.

    ``suspect`` names the member whose message made it fail, where one can be named."""

    def __init__(self, message: str, suspect: str | None = None) -> None:
        super().__init__(message)
        self.suspect = suspect


# ----------------------------------------------------------------------------------- primitives
def _encode(*parts: str | bytes) -> bytes:
    """Length-prefixed concatenation, so no two distinct contexts serialise to the same bytes."""
    out = bytearray()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def _kdf(secret: bytes, *context: str | bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_PROTOCOL, info=_encode(*context)).derive(secret)


def _expand(key: bytes, length: int) -> npt.NDArray[np.uint32]:
    """Mask stream: AES-256-CTR keystream as ``uint32``. Each key is used for one stream only."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(4 * length)), dtype="<u4")


def _exchange(private: X25519PrivateKey, public: bytes, what: str) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # a low-order point gives an all-zero secret
        raise SecAggError(f"key agreement with {what} failed: invalid public key") from exc


def _pair_seed(private: X25519PrivateKey, peer_public: bytes, round_id: str, a: str, b: str) -> bytes:
    low, high = sorted((a, b))
    return _kdf(_exchange(private, peer_public, f"the mask key of {b}"), "pair", round_id, low, high)


def _self_mask_key(seed: bytes, round_id: str, client_id: str) -> bytes:
    return _kdf(seed, "self", round_id, client_id)


def commit_self_mask(seed: bytes, round_id: str, client_id: str) -> bytes:
    """Binds a client to its self-mask seed so a corrupted reconstruction is caught, not summed."""
    return hashlib.sha256(_PROTOCOL + _encode("commit", round_id, client_id, seed)).digest()


def self_mask(seed: bytes, round_id: str, client_id: str, length: int) -> npt.NDArray[np.uint32]:
    """``PRG(b_i)``: the self mask ``client_id`` adds to its input, from its self-mask seed."""
    return _expand(_self_mask_key(seed, round_id, client_id), length)


def pair_mask(
    private: X25519PrivateKey | bytes, peer_public: bytes, round_id: str, owner: str, peer: str, length: int
) -> npt.NDArray[np.uint32]:
    """``PRG(s_ij)`` of ``owner``'s mask key (the key, or its raw private bytes) and ``peer``'s public
    mask key: the same stream from either side of the pair. ``owner`` adds it when ``owner < peer``
    and subtracts it otherwise."""
    if isinstance(private, bytes):
        private = X25519PrivateKey.from_private_bytes(private)
    return _expand(_pair_seed(private, peer_public, round_id, owner, peer), length)


def is_mask_key(raw_private: bytes, public: bytes) -> bool:
    """Whether ``raw_private`` is the X25519 private key of the advertised ``public`` mask key."""
    return _public_bytes(X25519PrivateKey.from_private_bytes(raw_private)) == public


def _share_aead(private: X25519PrivateKey, peer: AdvertiseKeys, round_id: str, sender: str, recipient: str) -> AESGCM:
    """Key for the shares ``sender`` sends ``recipient``: only the two channel private keys give it."""
    if peer.channel_key is None:
        raise SecAggError(f"the roster does not carry the channel key of {peer.client_id}", peer.client_id)
    shared = _exchange(private, peer.channel_key, f"the channel key of {peer.client_id}")
    return AESGCM(_kdf(shared, "share", round_id, sender, recipient))


def _share_ad(round_id: str, sender: str, recipient: str) -> bytes:
    return _PROTOCOL + _encode("share", round_id, sender, recipient)


def _public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(*_RAW_PUBLIC)


def check_id(client_id: Any, what: str = "client id") -> str:
    """A client or round id as the protocol accepts it (a non-empty string, bounded in length)."""
    if not isinstance(client_id, str) or not 0 < len(client_id) <= _MAX_ID_CHARS:
        raise SecAggError(f"{what} must be a non-empty string of at most {_MAX_ID_CHARS} characters")
    return client_id


def _check_key(key: Any, what: str) -> bytes:
    """A 32-byte X25519 public key of full order: a low-order key gives every peer an all-zero
    (or predictable) pair secret, so it is refused where it is first seen, not where it breaks."""
    if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
        raise SecAggError(f"{what} must be a {_KEY_BYTES}-byte X25519 public key")
    _exchange(X25519PrivateKey.generate(), key, what)
    return key


# ----------------------------------------------------------------------------- message models
class _Model(BaseModel):
    """A frozen, strict protocol message. Its wire form is ``to_dict()`` (JSON-safe: bytes as
    base64); ``from_dict()`` and the constructor raise :class:`SecAggError`, naming the field, for
    anything the protocol would refuse later, so a hostile message stops where it arrives. Nested
    in a wire model (:mod:`.wire`) the same checks surface as that model's validation errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _protocol_error(exc) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _protocol_error(exc) from None


def _protocol_error(exc: ValidationError) -> SecAggError:
    """The first failed check as a :class:`SecAggError`: a protocol check keeps its own message."""
    error = exc.errors()[0]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, SecAggError):
        return SecAggError(str(cause), cause.suspect)
    where = ".".join(str(part) for part in error["loc"]) or exc.title
    if error["type"] == "missing":
        return SecAggError(f"malformed message: missing field {where!r}")
    return SecAggError(f"malformed message: field {where!r}: {error['msg']}")


#: 1-D arrays in memory, raw bytes beside the JSON on the wire (``attachments.py``)
_MASKED_CODEC = array_codec("<u4", "masked vector", SecAggError)
_AVERAGE_CODEC = array_codec("<f4", "average adapter", SecAggError)
_MaskedVector = Annotated[npt.NDArray[np.uint32], _MASKED_CODEC[0], _MASKED_CODEC[1]]
_AverageVector = Annotated[npt.NDArray[np.float32], _AVERAGE_CODEC[0], _AVERAGE_CODEC[1]]
#: a client or round id (:func:`check_id`)
_Id = Annotated[StrictStr, AfterValidator(check_id)]
_RoundId = Annotated[StrictStr, AfterValidator(lambda v: check_id(v, "round id"))]


# ------------------------------------------------------------------------------- configuration
class SecAggConfig(_Model):
    """Parameters every party of a round must agree on; the roster carries them for checking.

    ``threshold`` is the number of a client's neighbours needed to rebuild its secrets: more
    tolerates less dropout but more collusion. ``neighbours`` is ``None`` for all pairs, or the
    degree ``k`` of the SecAgg+ graph (an odd ``k`` with an odd roster rounds up to ``k + 1``).
    """

    threshold: StrictInt
    neighbours: StrictInt | None = None
    scale: StrictFloat = 2.0**16
    clip: StrictFloat = 1.0

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.threshold < 1:
            raise SecAggError("threshold must be a positive integer")
        if self.neighbours is not None and self.neighbours < self.threshold:
            raise SecAggError(f"neighbours ({self.neighbours}) must be at least the threshold ({self.threshold})")
        for name in ("scale", "clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise SecAggError(f"{name} must be a positive finite number")
        if self.max_clients() < 1:
            raise SecAggError("clip * scale must stay below 2**31 so one update fits the group")
        return self

    def max_clients(self) -> int:
        """Most contributors whose sum cannot wrap around: ``n * ceil(clip * scale) < 2**31``."""
        return (_GROUP_HALF - 1) // math.ceil(self.clip * self.scale)


# --------------------------------------------------------------------------------- quantisation
def quantize(vector: npt.ArrayLike, config: SecAggConfig) -> npt.NDArray[np.uint32]:
    """Clip to ``±clip``, round to ``1/scale`` and map to ``Z/2**32`` (two's complement)."""
    values = np.asarray(vector, dtype=np.float64)
    if values.ndim != 1:
        raise SecAggError(f"the update must be a 1-D vector (got shape {values.shape})")
    if not np.all(np.isfinite(values)):
        raise SecAggError("the update contains NaN or infinite values")
    clipped = np.clip(values, -config.clip, config.clip)
    if logger.isEnabledFor(logging.DEBUG):
        n_clipped = int(np.count_nonzero(clipped != values))
        logger.debug("secagg: clipped %d of %d entries to ±%g", n_clipped, values.size, config.clip)
    return np.rint(clipped * config.scale).astype(np.int32).view(np.uint32)


def dequantize(total: npt.NDArray[np.uint32], n_contributors: int, config: SecAggConfig) -> npt.NDArray[np.float64]:
    """Decode a sum of ``n_contributors`` quantised vectors; refuses counts that could have wrapped."""
    if n_contributors > config.max_clients():
        raise SecAggError(
            f"{n_contributors} contributors exceed the {config.max_clients()} that clip={config.clip} and "
            f"scale={config.scale} allow without wrap-around"
        )
    return np.asarray(total, dtype=np.uint32).view(np.int32).astype(np.float64) / config.scale


def fedavg(plain_vectors: Sequence[npt.ArrayLike], weights: Sequence[float] | None = None) -> npt.NDArray[np.float64]:
    """Weighted mean of plain (unmasked) updates: the baseline that secure aggregation replaces.

    For a weighted mean under SecAgg, clients submit ``w_k * x_k`` and the coordinator divides
    the aggregate by the sum of the (non-secret) weights.
    """
    arrays = [np.asarray(v, dtype=np.float64) for v in plain_vectors]
    if not arrays or len({a.shape for a in arrays}) != 1:
        raise SecAggError("fedavg needs at least one vector, all of the same shape")
    stacked = np.stack(arrays)
    w = np.ones(len(plain_vectors)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(plain_vectors),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise SecAggError("fedavg weights must be one non-negative finite number per vector, not all zero")
    return np.tensordot(w / w.sum(), stacked, axes=1)


# -------------------------------------------------------------------------------------- Shamir
@dataclass(frozen=True)
class Share:
    """One point ``(x, y)`` of a Shamir polynomial over GF(:data:`SHAMIR_PRIME`)."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if not 0 < self.x < SHAMIR_PRIME or not 0 <= self.y < SHAMIR_PRIME:
            raise SecAggError("malformed share: coordinates outside the field")

    def to_bytes(self) -> bytes:
        return self.y.to_bytes(_SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, x: int, data: bytes) -> Share:
        if len(data) != _SHARE_BYTES:
            raise SecAggError(f"malformed share: expected {_SHARE_BYTES} bytes, got {len(data)}")
        return cls(x, int.from_bytes(data, "big"))


def shamir_split(secret: bytes, threshold: int, holders: Sequence[int]) -> list[Share]:
    """Split ``secret`` so that any ``threshold`` of the ``holders`` (distinct x > 0) rebuild it
    and fewer learn nothing about it."""
    if len(secret) >= _SHARE_BYTES - 1:
        raise SecAggError(f"a Shamir secret must be shorter than {_SHARE_BYTES - 1} bytes")
    if len(set(holders)) != len(holders) or not all(0 < x < SHAMIR_PRIME for x in holders):
        raise SecAggError("Shamir holders must be distinct non-zero field elements")
    if not 1 <= threshold <= len(holders):
        raise SecAggError(f"threshold {threshold} needs between 1 and {len(holders)} holders")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(SHAMIR_PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in holders:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % SHAMIR_PRIME
        shares.append(Share(x, y))
    return shares


def _product_mod(values: Sequence[int]) -> int:
    """``prod(values) mod`` :data:`SHAMIR_PRIME`, multiplying exact integers in chunks: fast for the
    small x coordinates of a roster, and bounded in size for any field elements."""
    out = 1
    for start in range(0, len(values), 16):
        out = out * math.prod(values[start : start + 16]) % SHAMIR_PRIME
    return out


@functools.lru_cache(maxsize=128)
def lagrange_coefficients(xs: tuple[int, ...], at: int = 0) -> tuple[int, ...]:
    """The Lagrange basis of the points with x coordinates ``xs`` (distinct in the field), evaluated
    at ``at``: the polynomial through ``(x_i, y_i)`` has ``p(at) = sum_i c_i * y_i`` mod :data:`SHAMIR_PRIME`.

    They depend on the x coordinates only, so the coordinator computes them once per set of
    responders and rebuilds every owner's secret from it as a dot product (cached per ``xs`` and
    ``at``). Basis ``i`` is ``F / d_i`` with ``F = prod_j (at - x_j)`` and ``d_i = (at - x_i) *
    prod_{j != i} (x_i - x_j)``: one modular inverse for the whole set (batch inversion).
    """
    p = SHAMIR_PRIME
    k = len(xs)
    if len({x % p for x in xs}) != k:
        raise SecAggError("malformed share: two shares have the same x coordinate")
    factors = [at - x for x in xs]
    for i, f in enumerate(factors):
        if f % p == 0:  # ``at`` is one of the points: the basis there is the indicator of that point
            return tuple(int(j == i) for j in range(k))
    dens = [
        _product_mod([factors[i], *(xi - xj for xj in xs[:i]), *(xi - xj for xj in xs[i + 1 :])])
        for i, xi in enumerate(xs)
    ]
    running = [1] * (k + 1)
    for i, den in enumerate(dens):
        running[i + 1] = running[i] * den % p
    scaled = _product_mod(factors) * pow(running[k], -1, p) % p  # F / prod_i d_i
    out = [0] * k
    for i in range(k - 1, -1, -1):
        out[i] = scaled * running[i] % p
        scaled = scaled * dens[i] % p
    return tuple(out)


def _interpolate(points: Sequence[Share], at: int = 0) -> int:
    """Lagrange interpolation of the polynomial through ``points``, evaluated at ``at``."""
    coefficients = lagrange_coefficients(tuple(pt.x for pt in points), at)
    return sum(c * pt.y for c, pt in zip(coefficients, points, strict=True)) % SHAMIR_PRIME


def shamir_reconstruct(shares: Iterable[Share], threshold: int, secret_len: int = _SECRET_BYTES) -> bytes:
    """Rebuild a ``secret_len``-byte secret from at least ``threshold`` shares.

    Raises :class:`SecAggError` when there are too few shares, duplicates, or when the result is
    not a ``secret_len``-byte value (the signature of inconsistent or tampered shares).
    """
    points = sorted(shares, key=lambda s: s.x)
    if len({s.x for s in points}) != len(points):
        raise SecAggError("malformed share: two shares have the same x coordinate")
    if len(points) < threshold:
        raise SecAggError(f"need at least {threshold} shares to reconstruct, got {len(points)}")
    value = _interpolate(points[:threshold])
    if value >= 1 << (8 * secret_len):
        raise SecAggError("malformed share: the shares are inconsistent")
    return value.to_bytes(secret_len, "big")


# ------------------------------------------------------------------------------------- messages
class AdvertiseKeys(_Model):
    """Client → server: the public keys of a fresh round key pair for masks and for the channel.

    ``channel_key`` is ``None`` only in one client's view of the roster (:meth:`Roster.view_for`),
    for a participant that is not its neighbour: it never exchanges shares with it."""

    client_id: _Id
    round_id: _RoundId
    mask_key: Blob
    channel_key: Blob | None

    @model_validator(mode="after")
    def _check(self) -> Self:
        _check_key(self.mask_key, f"mask key of {self.client_id}")
        if self.channel_key is not None:
            _check_key(self.channel_key, f"channel key of {self.client_id}")
        return self


def neighbour_graph(client_ids: Sequence[str], neighbours: int | None, seed: bytes) -> dict[str, frozenset[str]]:
    """Who masks with whom: everyone (``None``) or a ``k``-regular circulant graph on a ring
    shuffled by ``seed``. :class:`Roster` hashes the seed from the round and every advertised
    mask key, so all parties derive the same graph and no single party picks it."""
    ids = sorted(client_ids)
    n = len(ids)
    if neighbours is None or neighbours >= n - 1:
        return {c: frozenset(ids) - {c} for c in ids}
    ring = sorted(ids, key=lambda c: hmac.new(seed, c.encode(), hashlib.sha256).digest())
    offsets = set(range(1, neighbours // 2 + 1))
    if neighbours % 2:
        offsets.add(n // 2 if n % 2 == 0 else neighbours // 2 + 1)
    graph: dict[str, set[str]] = {c: set() for c in ids}
    for pos, c in enumerate(ring):
        for off in offsets:
            for other in (ring[(pos + off) % n], ring[(pos - off) % n]):
                if other != c:
                    graph[c].add(other)
    return {c: frozenset(peers) for c, peers in graph.items()}


class Roster(_Model):
    """Server → all: who takes part, with their keys, plus the parameters everyone must share.

    A client's Shamir x coordinate is its 1-based position in ``participants`` (sorted by id).
    """

    round_id: _RoundId
    config: SecAggConfig
    vector_length: StrictInt
    participants: tuple[AdvertiseKeys, ...]

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.vector_length < 1:
            raise SecAggError("vector_length must be a positive integer")
        ids = [p.client_id for p in self.participants]
        if ids != sorted(set(ids)):
            raise SecAggError("roster participants must have distinct ids, sorted")
        if any(p.round_id != self.round_id for p in self.participants):
            raise SecAggError("roster mixes keys advertised for another round")
        if len(ids) > self.config.max_clients():
            raise SecAggError(f"{len(ids)} participants exceed the {self.config.max_clients()} the group can sum")
        short = sorted(c for c, peers in self.graph.items() if len(peers) < self.config.threshold)
        if short:
            raise SecAggError(
                f"threshold {self.config.threshold} exceeds the number of neighbours of {', '.join(short)}; "
                f"need more participants or a lower threshold"
            )
        return self

    @cached_property
    def keys(self) -> dict[str, AdvertiseKeys]:
        return {p.client_id: p for p in self.participants}

    @cached_property
    def index(self) -> dict[str, int]:
        return {p.client_id: i for i, p in enumerate(self.participants, start=1)}

    @cached_property
    def graph(self) -> dict[str, frozenset[str]]:
        seed = hashlib.sha256(
            _PROTOCOL + _encode("graph", self.round_id, *(p.client_id.encode() + p.mask_key for p in self.participants))
        ).digest()
        return neighbour_graph(list(self.keys), self.config.neighbours, seed)

    def view_for(self, client_id: str) -> Roster:
        """What ``client_id`` is sent: every participant's id and mask key (the graph is hashed from
        all of them, so the client derives its neighbours itself and the server cannot pick them),
        but channel keys only of itself and its neighbours, the only ones it uses. With a sparse
        graph (SecAgg+) that drops about a third of each other participant's entry from what a
        client downloads, and half of the keys it validates (an X25519 exchange each)."""
        keep = self.graph.get(client_id, frozenset()) | {client_id}
        participants = tuple(
            p if p.client_id in keep else AdvertiseKeys.model_construct(**{**dict(p), "channel_key": None})
            for p in self.participants
        )
        # built from checked parts (no key is checked twice); a new object, so no cached property
        # of this roster (``keys``) is carried over
        return Roster.model_construct(
            round_id=self.round_id, config=self.config, vector_length=self.vector_length, participants=participants
        )


class EncryptedShare(_Model):
    """A sender's shares for one recipient; the coordinator routes it but cannot open it."""

    sender: Annotated[StrictStr, AfterValidator(lambda v: check_id(v, "share sender"))]
    recipient: Annotated[StrictStr, AfterValidator(lambda v: check_id(v, "share recipient"))]
    nonce: Blob
    ciphertext: Blob

    @model_validator(mode="after")
    def _check(self) -> Self:
        if len(self.nonce) != _NONCE_BYTES or len(self.ciphertext) != _SHARE_CIPHERTEXT_BYTES:
            raise SecAggError(f"malformed share from {self.sender} to {self.recipient}: wrong size")
        return self


class ShareKeys(_Model):
    """Client → server: one encrypted share bundle per neighbour, and a commitment to ``b_i``."""

    client_id: _Id
    round_id: _RoundId
    self_mask_commitment: Blob
    shares: tuple[EncryptedShare, ...]


class MaskedInput(_Model):
    """Client → server: the masked, quantised update and the peers whose pair masks it holds.

    Compared by identity (a masked vector is summed, never looked up)."""

    client_id: _Id
    round_id: _RoundId
    peers: tuple[_Id, ...]
    vector: _MaskedVector

    __eq__ = object.__eq__
    __hash__ = object.__hash__


class UnmaskRequest(_Model):
    """Server → survivors: who sent a masked input and who dropped after sharing keys."""

    round_id: _RoundId
    survivors: tuple[_Id, ...]
    dropped: tuple[_Id, ...]


class UnmaskResponse(_Model):
    """Survivor → server: its shares of survivors' self-mask seeds and of dropped clients' mask keys.

    The share's x coordinate is the responder's roster index, so it is not sent.
    """

    client_id: _Id
    round_id: _RoundId
    self_mask_shares: dict[_Id, Blob]
    mask_key_shares: dict[_Id, Blob]


class SecAggInbox(_Model):
    """Server → client: the encrypted shares its neighbours sent it (routed after step 2)."""

    shares: tuple[EncryptedShare, ...]


class SecAggResult(_Model):
    """Server → members: the group's average adapter (float32) and who contributed to it."""

    contributors: tuple[_Id, ...]
    average: _AverageVector


class SecAggFailure(_Model):
    """Server → members: the group cannot finish this round, and why."""

    error: StrictStr


# --------------------------------------------------------------------------------------- client


class SecAggClient:
    """One client's side of one round. Create a new instance per round: keys are single-use."""

    def __init__(self, client_id: str, round_id: str, config: SecAggConfig) -> None:
        self.client_id = check_id(client_id)
        self.round_id = check_id(round_id, "round id")
        self.config = config
        self._mask_key: X25519PrivateKey | None = X25519PrivateKey.generate()
        self._channel_key: X25519PrivateKey | None = X25519PrivateKey.generate()
        self._advert = AdvertiseKeys(
            client_id=client_id,
            round_id=round_id,
            mask_key=_public_bytes(self._mask_key),
            channel_key=_public_bytes(self._channel_key),
        )
        self._roster: Roster | None = None
        self._seed: bytes | None = None
        self._held: dict[str, tuple[Share, Share]] = {}
        self._masked = False
        self._revealed: dict[str, str] = {}

    def advertise(self) -> AdvertiseKeys:
        """The round's public keys; the same message on every call, so it can be resent."""
        return self._advert

    def share_keys(self, roster: Roster) -> ShareKeys:
        """Check the roster, pick ``b_i`` and Shamir-share it and the mask key with the neighbours."""
        if self._roster is not None:
            raise SecAggError(f"{self.client_id} already shared its keys this round")
        if self._mask_key is None or self._channel_key is None:
            raise SecAggError(f"{self.client_id} has no round keys left")
        if roster.round_id != self.round_id:
            raise SecAggError(f"roster is for round {roster.round_id!r}, not {self.round_id!r}")
        if roster.config != self.config:
            raise SecAggError(f"roster config {roster.config} differs from the client's {self.config}")
        if roster.keys.get(self.client_id) != self._advert:
            raise SecAggError(f"roster does not carry {self.client_id}'s advertised keys")
        peers = sorted(roster.graph[self.client_id])
        blind = [p for p in peers if roster.keys[p].channel_key is None]
        if blind:
            raise SecAggError(f"the roster does not carry the channel keys of neighbours {', '.join(blind)}")
        holders = [roster.index[p] for p in peers]
        seed = os.urandom(_SECRET_BYTES)
        seed_shares = shamir_split(seed, self.config.threshold, holders)
        key_shares = shamir_split(self._mask_key.private_bytes(*_RAW_PRIVATE), self.config.threshold, holders)
        out = []
        for peer, s_share, k_share in zip(peers, seed_shares, key_shares, strict=True):
            aead = _share_aead(self._channel_key, roster.keys[peer], self.round_id, self.client_id, peer)
            nonce = os.urandom(_NONCE_BYTES)
            plain = s_share.to_bytes() + k_share.to_bytes()
            ciphertext = aead.encrypt(nonce, plain, _share_ad(self.round_id, self.client_id, peer))
            out.append(EncryptedShare(sender=self.client_id, recipient=peer, nonce=nonce, ciphertext=ciphertext))
        self._roster, self._seed = roster, seed
        logger.debug("secagg %s: %s shared keys with %d neighbours", self.round_id, self.client_id, len(peers))
        return ShareKeys(
            client_id=self.client_id,
            round_id=self.round_id,
            self_mask_commitment=commit_self_mask(seed, self.round_id, self.client_id),
            shares=tuple(out),
        )

    def masked_input(self, vector: npt.ArrayLike, encrypted_shares_for_me: Iterable[EncryptedShare]) -> MaskedInput:
        """Open the neighbours' shares and mask the update against exactly those neighbours.

        Callable once: two inputs under the same masks would reveal their difference.
        """
        roster = self._roster
        if self._masked:
            raise SecAggError(f"{self.client_id} already sent a masked input this round")
        if roster is None or self._seed is None or self._mask_key is None or self._channel_key is None:
            raise SecAggError(f"{self.client_id} must share keys before sending a masked input")
        values = quantize(vector, self.config)
        if values.size != roster.vector_length:
            raise SecAggError(f"update has {values.size} entries; the round expects {roster.vector_length}")
        neighbours = roster.graph[self.client_id]
        my_x = roster.index[self.client_id]
        held: dict[str, tuple[Share, Share]] = {}
        for share in encrypted_shares_for_me:
            sender = share.sender
            if share.recipient != self.client_id or sender not in neighbours:
                raise SecAggError(f"malformed share: {sender} → {share.recipient} is not for {self.client_id}")
            if sender in held:
                raise SecAggError(f"malformed share: two share bundles from {sender}")
            aead = _share_aead(self._channel_key, roster.keys[sender], self.round_id, sender, self.client_id)
            try:
                plain = aead.decrypt(share.nonce, share.ciphertext, _share_ad(self.round_id, sender, self.client_id))
                held[sender] = (
                    Share.from_bytes(my_x, plain[:_SHARE_BYTES]),
                    Share.from_bytes(my_x, plain[_SHARE_BYTES:]),
                )
            except (InvalidTag, SecAggError):
                # Leave the sender out of this input's masks: the coordinator sees it missing from
                # ``peers`` and drops it from the sum, instead of the whole group failing on it.
                logger.warning(
                    "secagg %s: the shares %s sent %s do not open; masking without it",
                    self.round_id,
                    sender,
                    self.client_id,
                )
        if len(held) < self.config.threshold:
            raise SecAggError(
                f"only {len(held)} neighbours of {self.client_id} shared keys; threshold is {self.config.threshold}"
            )
        masked = values.copy()
        masked += self_mask(self._seed, self.round_id, self.client_id, values.size)
        for peer in held:
            stream = pair_mask(
                self._mask_key, roster.keys[peer].mask_key, self.round_id, self.client_id, peer, values.size
            )
            if self.client_id < peer:
                masked += stream
            else:
                masked -= stream
        # The secrets are now only recoverable through the neighbours' shares.
        self._seed = self._mask_key = self._channel_key = None
        self._held, self._masked = held, True
        return MaskedInput(client_id=self.client_id, round_id=self.round_id, peers=tuple(sorted(held)), vector=masked)

    def unmask(self, survivors: Iterable[str], dropped: Iterable[str]) -> UnmaskResponse:
        """Reveal self-mask shares of survivors and mask-key shares of dropped clients, never both."""
        if not self._masked or self._roster is None:
            raise SecAggError(f"{self.client_id} cannot unmask before sending its masked input")
        alive, gone = set(survivors), set(dropped)
        both = sorted(alive & gone)
        if both:
            raise SecAggError(f"refusing to reveal both the self-mask seed and the mask key of {', '.join(both)}")
        if self.client_id not in alive:
            raise SecAggError(f"{self.client_id} sent its masked input but is not listed as a survivor")
        unknown = sorted((alive | gone) - set(self._roster.keys))
        if unknown:
            raise SecAggError(f"unmask request names clients outside the roster: {', '.join(unknown)}")
        if len(alive) < self.config.threshold:
            raise SecAggError(f"only {len(alive)} survivors; threshold is {self.config.threshold}")
        wanted: dict[str, str] = {}
        for owner in self._held:
            if owner not in alive and owner not in gone:
                raise SecAggError(f"unmask request does not say whether {owner} survived")
            wanted[owner] = SELF_MASK_SEED if owner in alive else MASK_KEY
            if self._revealed.get(owner, wanted[owner]) != wanted[owner]:
                raise SecAggError(
                    f"refusing to reveal the {wanted[owner]} of {owner}: "
                    f"its {self._revealed[owner]} was already revealed"
                )
        self._revealed.update(wanted)
        seeds = {o: self._held[o][0].to_bytes() for o, kind in wanted.items() if kind == SELF_MASK_SEED}
        keys = {o: self._held[o][1].to_bytes() for o, kind in wanted.items() if kind == MASK_KEY}
        return UnmaskResponse(
            client_id=self.client_id, round_id=self.round_id, self_mask_shares=seeds, mask_key_shares=keys
        )
