"""Raw attachments beside a payload's JSON (``lada_client.common.attachments``)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from pydantic import ValidationError

from lada_client.common import attachments
from lada_client.common.secagg import MaskedInput, SecAggResult
from lada_client.common.wire import Ack, SecAggReply, SecAggUpload, UploadChunk


def _masked(n: int) -> SecAggUpload:
    vector = np.random.default_rng(0).integers(0, 2**32, n, dtype=np.uint32)
    body = MaskedInput(client_id="c1", round_id="r1", peers=("c2", "c3"), vector=vector)
    return SecAggUpload(round=1, step="masked", body=body)


def test_a_masked_vector_travels_as_its_raw_bytes() -> None:
    up = _masked(10_000)
    raw = attachments.dump(up)
    assert raw.startswith(b"LDP1") and len(raw) < 40_000 + 400  # 4 bytes a value, a few hundred of JSON
    back = attachments.load(SecAggUpload, raw)
    assert isinstance(back.body, MaskedInput)
    np.testing.assert_array_equal(back.body.vector, up.body.vector)
    assert back.body.peers == ("c2", "c3") and back.round == 1
    # the same message as JSON (what the stores keep) is base64, 4/3 of the bytes, and reads back alike
    text = up.model_dump_json()
    assert len(text) > 53_000
    assert np.array_equal(attachments.load(SecAggUpload, text).body.vector, up.body.vector)


def test_a_message_without_attachments_is_its_plain_json() -> None:
    ack = Ack(message="stored")
    assert attachments.dump(ack) == ack.model_dump_json().encode()
    assert attachments.load(Ack, attachments.dump(ack)) == ack


def test_several_attachments_and_a_reply() -> None:
    average = np.linspace(-1, 1, 300, dtype=np.float32)
    reply = SecAggReply(round=2, status="ready", body=SecAggResult(contributors=("a", "b"), average=average))
    back = attachments.load(SecAggReply, attachments.dump(reply))
    assert isinstance(back.body, SecAggResult) and np.array_equal(back.body.average, average)
    chunk = UploadChunk(session_id="ab" * 16, index=3, data=bytes(range(256)) * 4)
    raw = attachments.dump(chunk)
    assert len(raw) < 1024 + 120 and attachments.load(UploadChunk, raw).data == chunk.data


def _frame(doc: dict, tail: bytes) -> bytes:
    text = json.dumps(doc).encode()
    return b"LDP1" + len(text).to_bytes(4, "big") + text + tail


def _masked_doc(ref: object) -> dict:
    doc = json.loads(_masked(4).model_dump_json())
    doc["body"]["vector"] = ref
    return doc


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_frame(_masked_doc({"$blob": [0, 64]}), b"\0" * 16), "outside the message"),
        (_frame(_masked_doc({"$blob": [-4, 4]}), b"\0" * 16), "outside the message"),
        (_frame(_masked_doc({"$blob": [0, "4"]}), b"\0" * 16), "start, length"),
        (_frame(_masked_doc({"$blob": [0, True]}), b"\0" * 16), "start, length"),
        (_frame(_masked_doc({"$blob": [0, 4], "x": 1}), b"\0" * 16), "start, length"),
    ],
)
def test_a_hostile_reference_is_refused_before_validation(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        attachments.load(SecAggUpload, data)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_frame(_masked_doc({"$blob": [0, 6]}), b"\0" * 16), "4-byte values"),
        (_frame(_masked_doc("not base64!"), b""), "not valid base64"),
        (_frame({**_masked_doc("AAAAAA=="), "round": {"$blob": [0, 4]}}, b"\0" * 4), "round"),
    ],
)
def test_bytes_a_field_cannot_take_are_a_validation_error(data: bytes, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        attachments.load(SecAggUpload, data)


@pytest.mark.parametrize("data", [b"LDP1\0\0", b"LDP1\xff\xff\xff\xff{}", b"LDP1\0\0\0\x09{}", b"LDP1\0\0\0\x02{x"])
def test_a_bad_frame_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"frame|truncated"):
        attachments.load(Ack, data)


def test_json_nested_past_any_message_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        text = b'{"message": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        attachments.load(Ack, b"LDP1" + len(text).to_bytes(4, "big") + text)


def test_a_reference_outside_a_frame_is_refused() -> None:
    """Plain JSON has no attachments: a reference in it cannot reach any bytes."""
    doc = json.dumps(_masked_doc({"$blob": [0, 4]})).encode()
    with pytest.raises(ValidationError, match="base64 text or an attachment"):
        attachments.load(SecAggUpload, doc)
    assert base64.b64encode(b"\0" * 4)  # (the JSON form of the same field is base64 text)


def test_short_byte_values_stay_base64_text() -> None:
    """Keys and nonces (32 and 12 bytes) cost less as base64 than as a reference and its bytes."""
    from lada_client.common.secagg import SecAggClient, SecAggConfig

    keys = SecAggClient("c1", "r1", SecAggConfig(threshold=1)).advertise()
    assert attachments.dump(keys) == keys.model_dump_json().encode()  # no frame: plain JSON
    chunk = UploadChunk(session_id="ab" * 16, index=0, data=b"x" * (attachments.MIN_ATTACHMENT - 1))
    assert attachments.dump(chunk) == chunk.model_dump_json().encode()
    longer = chunk.model_copy(update={"data": b"x" * attachments.MIN_ATTACHMENT})
    assert attachments.dump(longer).startswith(b"LDP1")
