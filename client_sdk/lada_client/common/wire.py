"""The wire schema: every message exchanged between a client and the coordinator.

Both sides import these models, so a field renamed here is renamed everywhere. Except for
enrollment (a JSON body protected by a one-time token) and the public GET routes, every request
and reply body is a :class:`SealedEnvelope` in its binary form (:meth:`SealedEnvelope.to_bytes`,
``application/octet-stream``) whose decrypted payload is one of the models below, written by
:func:`~lada_client.common.attachments.dump`: JSON, with large byte fields (masked vectors, upload
chunks) as raw attachments after it. The envelope header's ``kind`` names the model.

Only text and scalars cross the wire (never logits over a vocabulary), so client and coordinator
models may use different tokenizers.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from enum import Enum
from typing import Annotated, Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from lada_client.common.attachments import Blob
from lada_client.common.secagg import (
    AdvertiseKeys,
    MaskedInput,
    Roster,
    SecAggConfig,
    SecAggFailure,
    SecAggInbox,
    SecAggResult,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)

PROTOCOL_VERSION: Final = 1
#: Longest flattened adapter a co-tuning device may declare: its masked vector (4 bytes a value,
#: base64 in JSON) must fit one chunked upload of at most 4 GiB.
MAX_ADAPTER_SIZE = 2**29

#: Every integer a device sends is stored in SQLite, whose INTEGER is a signed 64-bit value: larger
#: ones are refused at parse time instead of overflowing in the database (a 500).
INT64_MAX = 2**63 - 1
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
RoundIndex = Annotated[int, Field(ge=0, le=INT64_MAX)]
#: The largest magnitude a learnability feature may have. The filters standardise features in
#: float32 and square them (k-means distances, the scaler's variance); ±1e6 keeps every such
#: intermediate finite with room to spare, and no real feature (NLLs, log-prob gaps, token counts)
#: comes near it.
FEATURE_ABS_MAX = 1e6
#: Perplexities are reported for the operator's metrics only; bounded so a report cannot carry a
#: value that breaks JSON or float32 consumers.
PPL_MAX = 1e12

ClientId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
# the coordinator appends "-" + 8 hex digits to a name to form the client id, which must fit ClientId
ClientName = Annotated[str, Field(min_length=1, max_length=55, pattern=r"^[A-Za-z0-9_.-]+$")]
#: the binary envelope's parts: an AES-GCM nonce and an Ed25519 signature
NONCE_BYTES: Final = 12
SIGNATURE_BYTES: Final = 64
_ENVELOPE_MAGIC: Final = b"LDE1"
#: the content type of a sealed envelope's binary body, both ways
SEALED_MEDIA_TYPE: Final = "application/octet-stream"
_U32 = struct.Struct(">I")
#: longest envelope header in the binary form (a header is a few short fields: ~150 bytes)
_MAX_HEADER_BYTES: Final = 4096


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite(values: list[float], what: str, limit: float = math.inf) -> list[float]:
    for v in values:
        if not math.isfinite(v):
            raise ValueError(f"{what} must be finite numbers (got NaN or inf)")
        if abs(v) > limit:
            raise ValueError(f"{what} must lie within ±{limit:g} (got {v:g})")
    return values


# --------------------------------------------------------------------------------------- envelope
class EnvelopeHeader(_Message):
    """Routing data sent in clear and authenticated as AES-GCM associated data."""

    version: Literal[1] = PROTOCOL_VERSION
    client_id: ClientId
    round: RoundIndex
    seq: int = Field(ge=1, le=INT64_MAX, description="strictly increasing per client; older values are replays")
    kind: str = Field(min_length=1, max_length=64)
    sent_at: float = Field(allow_inf_nan=False, description="sender's clock (s); the coordinator refuses large skews")

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":")).encode()


class SealedEnvelope(_Message):
    """An encrypted, signed payload (``crypto.seal``). Its HTTP body is :meth:`to_bytes`:

        b"LDE1" | u32 header length | header (canonical JSON) | nonce (12) | signature (64) | ciphertext

    raw bytes, one encoding layer; nested in a JSON message (enrollment) its byte fields are base64.
    """

    header: EnvelopeHeader
    nonce: Blob
    ciphertext: Blob
    signature: Blob

    def to_bytes(self) -> bytes:
        header = self.header.canonical_bytes()
        return b"".join([_ENVELOPE_MAGIC, _U32.pack(len(header)), header, self.nonce, self.signature, self.ciphertext])

    @classmethod
    def from_bytes(cls, data: bytes | bytearray) -> SealedEnvelope:
        """Inverse of :meth:`to_bytes`; ``ValueError`` (pydantic's for the header) naming what is
        wrong. Each part is copied once out of ``data``, which the caller may then drop."""
        head = len(_ENVELOPE_MAGIC) + _U32.size
        if len(data) < head or data[: len(_ENVELOPE_MAGIC)] != _ENVELOPE_MAGIC:
            raise ValueError("not a sealed envelope (a binary body starting with b'LDE1')")
        (length,) = _U32.unpack_from(data, len(_ENVELOPE_MAGIC))
        if length > _MAX_HEADER_BYTES or head + length + NONCE_BYTES + SIGNATURE_BYTES > len(data):
            raise ValueError("truncated sealed envelope, or a header longer than the envelope")
        view, at = memoryview(data), head + length
        return cls(
            header=EnvelopeHeader.model_validate_json(bytes(view[head:at])),
            nonce=bytes(view[at : at + NONCE_BYTES]),
            signature=bytes(view[at + NONCE_BYTES : at + NONCE_BYTES + SIGNATURE_BYTES]),
            ciphertext=bytes(view[at + NONCE_BYTES + SIGNATURE_BYTES :]),
        )


class ErrorBody(_Message):
    """Every 4xx/5xx reply carries this, so clients can show the reason to their user.

    ``last_seq`` comes only with ``replay`` and ``server_time`` only with ``clock_skew``, both
    after the request was authenticated, so a device can resynchronise its sequence counter or
    clock while nobody without its key learns either.
    """

    error: str
    detail: str
    last_seq: int | None = None
    server_time: float | None = None


# ------------------------------------------------------------------------------------ enrollment
class Capabilities(_Message):
    """What a device can do; the coordinator plans rounds around it."""

    can_score: bool = True
    can_train: bool = True
    can_train_ort: bool = False  # onnxruntime-training importable (LoRA training without torch)
    memory_mb: Count = Field(default=0, description="0 = not declared")


#: Architecture ids and domains are free text chosen by the device; they appear in logs, config
#: lookups and secure-aggregation group ids, so they are kept to a plain character set.
ModelName = Annotated[str, Field(default="", max_length=128, pattern=r"^[A-Za-z0-9_.:@+=-]*$")]
Domain = Annotated[str, Field(default="", max_length=64, pattern=r"^[A-Za-z0-9_.:@+=-]*$")]


class CoordinatorKeys(_Message):
    """``GET /v1/identity``: the coordinator's public keys. A device checks their fingerprint
    against the one in its enrollment token before it sends anything (see ``common/enrollment.py``)."""

    sign_key: str
    kex_key: str
    fingerprint: str


class EnrollRequest(_Message):
    """The sealed payload of an enrollment (kind ``enroll``).

    It travels encrypted to the coordinator's key-agreement key and signed by the device's key,
    inside an :class:`EnrollEnvelope`, so the one-time token is never readable on the wire and
    a proxy cannot enroll its own keys with it.
    """

    token: str = Field(min_length=8, max_length=256)
    client_name: ClientName
    domain: Domain
    model_name: ModelName
    capabilities: Capabilities = Capabilities()


class EnrollEnvelope(_Message):
    """``POST /v1/enroll``: the device's public keys in clear, and the sealed :class:`EnrollRequest`
    (header ``client_id`` = the requested name, round 0, kind ``enroll``)."""

    sign_key: str = Field(min_length=40, max_length=64)
    kex_key: str = Field(min_length=40, max_length=64)
    envelope: SealedEnvelope


class EnrollResponse(_Message):
    """The sealed reply to an enrollment: the id the device uses from now on."""

    client_id: ClientId
    protocol_version: int = PROTOCOL_VERSION


# ---------------------------------------------------------------------------------------- rounds
class _Named(str, Enum):
    """A ``str`` enum that compares equal to, prints, formats, serialises and is stored as its value
    (``Phase.FEATURES == "features"``, ``f"{Phase.FEATURES}" == "features"``) on every Python."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Phase(_Named):
    """A round's phase as devices see it and the store keeps it."""

    WAITING = "waiting"  # no round open yet
    FEATURES = "features"  # candidates out, feature uploads in
    TRAINING = "training"  # allocations out, rewards (and masked adapters) in
    CLOSED = "closed"  # the round is done; the next one opens
    FINISHED = "finished"  # the last round is done


class EnginePhase(_Named):
    """What the round engine is doing (the operator's view): the round phases plus the two steps
    the engine takes between them."""

    WAITING = "waiting"
    PREPARING = "preparing"  # drawing candidates, generating or fetching teacher paths
    FEATURES = "features"
    TRAINING = "training"
    CLOSING = "closing"  # rewards into the filters, the LLM update, evaluation
    CLOSED = "closed"
    FINISHED = "finished"


class RoundQuery(_Message):
    """Ask for the current round (kind ``round.get``)."""


class Candidate(_Message):
    """A public sample with the LLM's verified reasoning path and its sequence log-prob."""

    sample_id: str = Field(max_length=128)
    question: str = Field(max_length=4096)
    path: str = Field(max_length=8192)
    llm_logprob: float
    llm_tokens: int = Field(ge=1)


class PublicQuestion(_Message):
    """A public sample the client may answer with its own path (LLM direction)."""

    sample_id: str = Field(max_length=128)
    question: str = Field(max_length=4096)
    answer: str = Field(max_length=64)


#: The host framework (docs/method.md, step 7): ``mkt`` (mutual knowledge transfer, no weight
#: sharing) or ``cotuning`` (devices of one SLM architecture also average their LoRA adapters by
#: secure aggregation). Defined here, for both sides: ``CoordinatorConfig.host_framework`` takes it.
HostFramework = Literal["mkt", "cotuning"]


class RoundInfo(_Message):
    round: RoundIndex
    phase: Phase
    total_rounds: Count
    candidates: list[Candidate] = []
    offer_questions: list[PublicQuestion] = []
    feature_names: list[str] = []
    host_framework: HostFramework = "mkt"
    secagg_configs: dict[str, SecAggConfig] = Field(
        default={},
        description="co-tuning: secure-aggregation parameters per group (in a reply: the asking device's group only)",
    )
    secagg_group: str | None = Field(
        default=None, description="co-tuning: the asking device's group, None if it has none"
    )


class PathOffer(_Message):
    sample_id: str = Field(max_length=128)
    path: str = Field(max_length=8192)


class FeatureUpload(_Message):
    """kind ``features.put``: learnability features over this round's candidates.

    Values must be finite and within ±:data:`FEATURE_ABS_MAX`; what else the engine needs of them
    (the round's candidates in order, offers for offered questions only) is checked against the
    round in ``lada_coordinator/validation.py``.
    """

    round: RoundIndex
    feature_names: list[str] = Field(min_length=1, max_length=32)
    sample_ids: list[str] = Field(max_length=8192)
    features: list[list[float]] = Field(max_length=8192)
    offers: list[PathOffer] = Field(default=[], max_length=1024)
    secagg_keys: AdvertiseKeys | None = Field(default=None, description="co-tuning: this round's public keys")
    adapter_size: int = Field(
        default=0, ge=0, le=MAX_ADAPTER_SIZE, description="co-tuning: length of the flattened LoRA adapter"
    )

    @field_validator("features")
    @classmethod
    def _check_features(cls, rows: list[list[float]]) -> list[list[float]]:
        """Every value finite and within ±:data:`FEATURE_ABS_MAX`, checked in one numpy pass over
        all rows (of any lengths); the first offending value in row order is refused with
        :func:`_finite`'s message, as a check value by value would refuse it."""
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64)
        bad = ~(np.abs(flat) <= FEATURE_ABS_MAX)  # NaN compares False, so NaN and ±inf are bad too
        if bad.any():
            _finite([float(flat[int(bad.argmax())])], "features", FEATURE_ABS_MAX)
        return rows


class AllocationQuery(_Message):
    """kind ``allocation.get``."""

    round: RoundIndex


class LoraFactor(_Message):
    """One LoRA-adapted projection of an adapter the coordinator trained for a score-only device.

    The device adds ``scale · B·A`` to the ONNX initializer whose base weights hash (SHA-256 of
    float32 bytes) to ``digest`` (W as in the checkpoint) or ``digest_t`` (Wᵀ, as exporters often
    store it), so it needs neither the checkpoint nor torch. ``a`` and ``b`` are base64 float32
    (little-endian, row-major) of shapes ``[r, in]`` and ``[out, r]``.
    """

    name: str = Field(min_length=1, max_length=256)
    a: str
    a_shape: tuple[int, int]
    b: str
    b_shape: tuple[int, int]
    scale: float
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    digest_t: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, v: float) -> float:
        return _finite([v], "scale")[0]


class Allocation(_Message):
    round: int
    status: Literal["pending", "ready"]
    sample_ids: list[str] = []
    reason: str = ""
    secagg_roster: Roster | None = Field(default=None, description="co-tuning: the roster of the client's group")
    server_update: list[LoraFactor] | None = Field(
        default=None, description="score-only device, score_only_update='server': the adapter trained for it this round"
    )


class RewardReport(_Message):
    """kind ``reward.put``: the outcome of the client's local update.

    ``reward`` is the round's measured reward (``RewardSettings.kind``); ``sample_rewards``, when
    sent, is one reward per allocated sample, and the filter learns from those instead."""

    round: RoundIndex
    reward: float = Field(ge=0.0, le=1.0)
    ppl_before: float = Field(gt=0.0, le=PPL_MAX, allow_inf_nan=False)
    ppl_after: float = Field(gt=0.0, le=PPL_MAX, allow_inf_nan=False)
    n_allocated: Count
    test_accuracy: float = Field(ge=0.0, le=1.0)
    bytes_sent: Count
    bytes_received: Count
    dp_epsilon: float = Field(
        default=0.0, ge=0.0, le=PPL_MAX, allow_inf_nan=False, description="privacy budget spent so far (0 = DP off)"
    )
    sample_rewards: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(
        default=None,
        max_length=8192,
        description="per allocated sample, in allocation order (credit finer than one scalar); "
        "None: ``reward`` for all",
    )


SecAggStep = Literal["shares", "masked", "unmask"]
#: what a client polls for with ``secagg.get``
SecAggPoll = Literal["inbox", "unmask", "result"]


#: the protocol message each ``secagg.put`` step carries
SECAGG_STEP_BODY: Final[dict[str, type[ShareKeys | MaskedInput | UnmaskResponse]]] = {
    "shares": ShareKeys,
    "masked": MaskedInput,
    "unmask": UnmaskResponse,
}


class SecAggUpload(_Message):
    """kind ``secagg.put``: one client message of the secure-aggregation protocol (co-tuning),
    the model :data:`SECAGG_STEP_BODY` names for its ``step``.

    What the round needs of it beyond its own checks (the group's roster, the protocol's state)
    is checked before it is stored (``lada_coordinator/aggregation/secure.py``)."""

    round: RoundIndex
    step: SecAggStep
    body: ShareKeys | MaskedInput | UnmaskResponse

    @field_validator("body", mode="before")
    @classmethod
    def _body_of_step(cls, body: Any, info: ValidationInfo) -> Any:
        step = info.data.get("step")
        if step is None:
            raise ValueError("no valid step, so the body cannot be read")
        model = SECAGG_STEP_BODY[step]
        return body if isinstance(body, model) else model.from_dict(body)


class SecAggQuery(_Message):
    """kind ``secagg.get``: poll for what the coordinator routes to this client."""

    round: RoundIndex
    step: SecAggPoll


class SecAggReply(_Message):
    """``ready``: ``body`` holds what the step polls for (``inbox``: the routed shares,
    ``unmask``: the request, ``result``: the group's average); ``none``: the client takes no part
    (not in the group, or not a survivor); ``failed``: the group cannot finish this round
    (``body.error`` says why), so there is nothing to wait for."""

    round: int
    status: Literal["pending", "ready", "none", "failed"]
    body: SecAggInbox | UnmaskRequest | SecAggResult | SecAggFailure | None = None


class Ack(_Message):
    ok: bool = True
    message: str = ""


def secagg_round_id(round_index: int, group: str) -> str:
    """The secure-aggregation round id of an architecture group (keys are bound to it)."""
    return f"r{round_index}/{group}"


# ------------------------------------------------------------------------------- chunked uploads
# A sealed request body too large for one HTTP request (a big masked adapter in ``secagg.put``)
# travels in pieces: ``upload.begin`` announces it, ``upload.chunk`` carries its bytes (each chunk
# request is itself a sealed, signed, sequence-numbered envelope), ``upload.status`` says which
# chunks the coordinator holds (resume), ``upload.commit`` reassembles the body, checks its SHA-256
# and hands the original sealed envelope to its endpoint's handler; ``upload.abort`` drops a session
# the client gives up on. See docs/protocol.md.

UPLOAD_KINDS: tuple[str, ...] = ("features.put", "reward.put", "secagg.put")  # kinds that may be chunked
#: kinds that only read round state: repeating one changes nothing, so a device may retry it freely
#: and the coordinator commits its bookkeeping (the replay counter) without an fsync (store.py)
READ_KINDS: frozenset[str] = frozenset({"round.get", "allocation.get", "secagg.get", "upload.status"})

#: Every endpoint, one table for both sides (``server/app.py`` checks at start-up that it serves
#: each path). A sealed request of kind ``k`` (:data:`KIND_PAYLOADS`) is posted to ``ROUTES[k]``,
#: where the server mounts its handler for ``k``. The others are not sealed to an enrolled
#: identity: ``health`` and ``identity`` (public GETs), ``enroll`` (a POST sealed to the
#: coordinator's key, :class:`EnrollEnvelope`), and the operator's ``status`` and ``dashboard``.
ROUTES: Final[dict[str, str]] = {
    "health": "/healthz",
    "identity": "/v1/identity",
    "enroll": "/v1/enroll",
    "status": "/v1/status",
    "dashboard": "/dashboard",
    "round.get": "/v1/round",
    "features.put": "/v1/features",
    "allocation.get": "/v1/allocation",
    "reward.put": "/v1/reward",
    "secagg.put": "/v1/secagg/put",
    "secagg.get": "/v1/secagg/get",
    "upload.begin": "/v1/upload/begin",
    "upload.chunk": "/v1/upload/chunk",
    "upload.status": "/v1/upload/status",
    "upload.commit": "/v1/upload/commit",
    "upload.abort": "/v1/upload/abort",
}
MAX_UPLOAD_BYTES = 4 * 1024**3
SessionId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class UploadBegin(_Message):
    """kind ``upload.begin``: announce a sealed request body (``target`` is its envelope header).

    Idempotent: beginning again with the same target returns the existing session (resume).
    """

    target: EnvelopeHeader
    total_bytes: int = Field(ge=1, le=MAX_UPLOAD_BYTES, description="length of the whole sealed body")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the whole sealed body")
    chunk_bytes: int = Field(ge=1024, le=64 * 1024 * 1024, description="every chunk but the last has this length")


class UploadChunk(_Message):
    """kind ``upload.chunk``: bytes ``[index * chunk_bytes, ...)`` of the sealed body, as an
    attachment (raw bytes: a chunk costs its own length)."""

    session_id: SessionId
    index: int = Field(ge=0, le=INT64_MAX)
    data: Blob


class UploadStatusQuery(_Message):
    """kind ``upload.status``: which chunks of a session the coordinator holds."""

    session_id: SessionId


class UploadCommit(_Message):
    """kind ``upload.commit``: reassemble, verify and process the body. Committing again is idempotent."""

    session_id: SessionId


class UploadAbort(_Message):
    """kind ``upload.abort``: drop an uncommitted session and its chunks now instead of at expiry,
    which also frees the client's upload quota. Aborting a session that is gone is not an error."""

    session_id: SessionId


class UploadStatus(_Message):
    session_id: SessionId
    total_bytes: int
    chunk_bytes: int
    n_chunks: int
    received: list[int] = Field(default=[], description="indices of the chunks held (durably)")
    committed: bool = False
    expires_at: float


class UploadCommitted(_Message):
    """The target endpoint's own sealed reply (it echoes the target envelope's ``seq``)."""

    session_id: SessionId
    reply: SealedEnvelope


def upload_chunk_count(total_bytes: int, chunk_bytes: int) -> int:
    return -(-total_bytes // chunk_bytes)


def max_chunk_bytes(max_body_bytes: int) -> int:
    """The largest chunk whose ``upload.chunk`` request still fits in ``max_body_bytes``: the chunk
    travels as raw bytes, plus under 1 KiB of frame, payload JSON, header, nonce, signature and tag."""
    return max(0, max_body_bytes - 1024)


KIND_PAYLOADS: dict[str, type[BaseModel]] = {
    "round.get": RoundQuery,
    "features.put": FeatureUpload,
    "allocation.get": AllocationQuery,
    "reward.put": RewardReport,
    "secagg.put": SecAggUpload,
    "secagg.get": SecAggQuery,
    "upload.begin": UploadBegin,
    "upload.chunk": UploadChunk,
    "upload.status": UploadStatusQuery,
    "upload.commit": UploadCommit,
    "upload.abort": UploadAbort,
}
