"""Raw bytes beside a message's JSON: the one encoding layer of masked vectors, averages and chunks.

A payload is JSON, except that a field declared :data:`Blob` (bytes) or with :func:`array_codec`
(a 1-D array of 4-byte values) can travel as raw bytes after it. :func:`dump` writes

    b"LDP1" | u32 length of the JSON | the JSON | the attachments, one after another

where each such field's JSON value is ``{"$blob": [start, length]}`` into the attachments (values
under :data:`MIN_ATTACHMENT` bytes stay base64 text); a message without one is its plain JSON
(``{`` first), as every small message is. :func:`load` reads both. Why: a masked adapter is
megabytes of incompressible bytes; as base64 text inside JSON, sealed and base64-encoded again, it
grew ~1.8x and its encoding cost more CPU than its encryption (docs/benchmarks.md, "Wire encoding").

Outside :func:`dump` / :func:`load` (``model_dump_json()``, the stores' JSON columns) the same
fields are base64 text, so what is stored and what older tools read stays JSON.

Hostile input: the frame's lengths are checked against the data and every reference against the
attachments' bounds before the message is validated; a field then checks its bytes as it checks
base64 text (an array field: a whole number of values). An array is a read-only view of the
received bytes (no copy, so a reference repeated many times costs no memory).
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from typing import Annotated, Any, Final, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, PlainSerializer, PlainValidator, SerializationInfo, ValidationInfo

__all__ = ["Blob", "array_codec", "dump", "load"]

M = TypeVar("M", bound=BaseModel)

_MAGIC: Final = b"LDP1"
_LENGTH = struct.Struct(">I")
_KEY: Final = "$blob"
#: shorter byte values (keys, nonces, a small share) are cheaper as base64 text than as a reference
MIN_ATTACHMENT: Final = 64


class _Attachments:
    """The attachments of one message being written."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.size = 0

    def add(self, raw: bytes) -> dict[str, list[int]]:
        ref = {_KEY: [self.size, len(raw)]}
        self.out.append(raw)
        self.size += len(raw)
        return ref


def _context(info: SerializationInfo) -> _Attachments | None:
    ctx = info.context
    found = ctx.get("attachments") if isinstance(ctx, dict) else None
    return found if isinstance(found, _Attachments) else None


def _decoded(value: Any, what: str) -> bytes | memoryview:
    """A field's bytes: given as bytes (an attachment :func:`load` resolved) or as base64 text."""
    if isinstance(value, (bytes, memoryview)):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{what} must be base64 text or an attachment")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"{what} is not valid base64") from exc


def _encoded(raw: bytes, info: SerializationInfo) -> Any:
    """An attachment in :func:`dump` (bytes under :data:`MIN_ATTACHMENT` stay base64 text there:
    a reference costs ~20 bytes of JSON, base64 of 32 bytes 12), base64 text in any other JSON."""
    attachments = _context(info)
    if attachments is not None and len(raw) >= MIN_ATTACHMENT:
        return attachments.add(raw)
    return base64.b64encode(raw).decode("ascii")


def _blob(value: Any, info: ValidationInfo) -> bytes:
    raw = _decoded(value, info.field_name or "bytes")
    return raw if isinstance(raw, bytes) else raw.tobytes()


#: bytes in memory; an attachment in :func:`dump`, base64 text in any other JSON
Blob = Annotated[
    bytes,
    PlainValidator(_blob, json_schema_input_type=str),
    PlainSerializer(_encoded, return_type=Any, when_used="json"),
]


def array_codec(
    dtype: str, what: str, error: Callable[[str], Exception] = ValueError
) -> tuple[PlainValidator, PlainSerializer]:
    """Validator and serialiser of a 1-D array of 4-byte ``dtype`` (little-endian on the wire): an
    attachment in :func:`dump`, base64 text in any other JSON. ``error`` builds the exception a
    malformed value raises (the caller's protocol error)."""
    kind = np.dtype(dtype)

    def validate(value: Any) -> npt.NDArray[Any]:
        if isinstance(value, np.ndarray):
            if value.dtype != kind or value.ndim != 1:
                raise error(f"the {what} must be a 1-D {kind.name} array")
            return value
        try:
            raw = _decoded(value, f"the {what}")
        except ValueError as exc:
            raise error(f"malformed message: {exc}") from None
        if len(raw) % kind.itemsize:
            raise error(f"malformed message: the {what} is not a whole number of {kind.itemsize}-byte values")
        # a read-only view of the received bytes, not a copy: these vectors are only summed or loaded
        return np.frombuffer(raw, dtype=kind)

    def serialise(value: npt.NDArray[Any], info: SerializationInfo) -> Any:
        return _encoded(np.asarray(value, dtype=kind).tobytes(), info)

    return (
        PlainValidator(validate, json_schema_input_type=str),
        PlainSerializer(serialise, return_type=Any, when_used="json"),
    )


def dump(message: BaseModel) -> bytes:
    """``message`` as payload bytes: its JSON, framed with its attachments if it has any."""
    attachments = _Attachments()
    text = message.model_dump_json(context={"attachments": attachments}).encode()
    if not attachments.out:
        return text
    return b"".join([_MAGIC, _LENGTH.pack(len(text)), text, *attachments.out])


def load(model: type[M], data: bytes | str) -> M:
    """Inverse of :func:`dump` (plain JSON too, as bytes or text); pydantic's ``ValidationError``
    for a bad message, ``ValueError`` for a bad frame or reference.

    The references are resolved before the message is validated (a validation context does not
    reach the fields of a nested model whose class has its own ``__init__``, as the secure
    aggregation messages have): each becomes a read-only view of its bytes, which a bytes or array
    field takes as it takes base64 text, and any other field refuses or reads as it would the same
    bytes sent as a JSON string."""
    if isinstance(data, str) or not data.startswith(_MAGIC):
        return model.model_validate_json(data)
    head = len(_MAGIC) + _LENGTH.size
    if len(data) < head:
        raise ValueError("truncated payload frame")
    (length,) = _LENGTH.unpack_from(data, len(_MAGIC))
    if head + length > len(data):
        raise ValueError("the payload frame's JSON is longer than the payload")
    view = memoryview(data)
    try:
        document = _resolved(json.loads(bytes(view[head : head + length])), view[head + length :])
    except RecursionError:  # nested deeper than any message is
        raise ValueError("the payload frame's JSON is nested too deeply") from None
    except json.JSONDecodeError as exc:  # (UnicodeDecodeError and a reference's ValueError pass as they are)
        raise ValueError(f"the payload frame's JSON is not valid: {exc}") from None
    return model.model_validate(document)


def _resolved(node: Any, attached: memoryview) -> Any:
    """``node`` with every ``{"$blob": [start, length]}`` replaced by those bytes of ``attached``."""
    if isinstance(node, list):
        return [_resolved(v, attached) for v in node]
    if not isinstance(node, dict):
        return node
    if _KEY not in node:
        return {k: _resolved(v, attached) for k, v in node.items()}
    span = node[_KEY]
    if len(node) != 1 or not (isinstance(span, list) and len(span) == 2 and all(type(v) is int for v in span)):
        raise ValueError(f"an attachment reference is {{{_KEY!r}: [start, length]}}, not {node!r:.80}")
    start, size = span
    if start < 0 or size < 0 or start + size > len(attached):
        raise ValueError(f"the attachment [{start}, {size}] lies outside the message")
    return attached[start : start + size]
