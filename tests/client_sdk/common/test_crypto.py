from __future__ import annotations

import time

import pytest

from lada_client.common.crypto import CryptoError, Direction, Identity, open_envelope, seal
from lada_client.common.wire import EnvelopeHeader, SealedEnvelope


def _header(round_index: int = 3, seq: int = 7, client_id: str = "c1") -> EnvelopeHeader:
    return EnvelopeHeader(client_id=client_id, round=round_index, seq=seq, kind="features.put", sent_at=time.time())


@pytest.fixture()
def parties() -> tuple[Identity, Identity]:
    return Identity.generate(), Identity.generate()


def test_round_trip(parties):
    client, server = parties
    env = seal(b"payload", _header(), client, server.public, Direction.TO_COORDINATOR)
    assert b"payload" not in env.ciphertext
    assert open_envelope(env, client.public, server, Direction.TO_COORDINATOR) == b"payload"
    wire = env.to_bytes()  # the HTTP body: one layer, 100 bytes of frame beside the header
    assert SealedEnvelope.from_bytes(wire) == env
    assert len(wire) == 8 + len(env.header.canonical_bytes()) + 12 + 64 + len(b"payload") + 16
    assert open_envelope(SealedEnvelope.from_bytes(wire), client.public, server, Direction.TO_COORDINATOR) == b"payload"


@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        (lambda b: b"{" + b[1:], "not a sealed envelope"),
        (lambda b: b[:6], "not a sealed envelope"),
        (lambda b: b[:4] + (2**31).to_bytes(4, "big") + b[8:], "truncated"),
        (lambda b: b[:40], "truncated"),
        (lambda b: b[:4] + (5).to_bytes(4, "big") + b"12345" + b"\0" * 76, "EnvelopeHeader"),
    ],
)
def test_a_mangled_binary_envelope_is_refused_with_its_reason(parties, mangle, match):
    client, server = parties
    wire = seal(b"payload", _header(), client, server.public, Direction.TO_COORDINATOR).to_bytes()
    with pytest.raises(ValueError, match=match):
        SealedEnvelope.from_bytes(mangle(wire))


def test_reply_direction_uses_a_different_key(parties):
    client, server = parties
    env = seal(b"x", _header(), client, server.public, Direction.TO_COORDINATOR)
    with pytest.raises(CryptoError, match="decryption failed"):
        open_envelope(env, client.public, server, Direction.TO_CLIENT)


@pytest.mark.parametrize("change", [{"round": 4}, {"seq": 8}, {"client_id": "c2"}, {"kind": "reward.put"}])
def test_header_is_authenticated(parties, change):
    client, server = parties
    env = seal(b"x", _header(), client, server.public, Direction.TO_COORDINATOR)
    forged = env.model_copy(update={"header": env.header.model_copy(update=change)})
    with pytest.raises(CryptoError, match="bad signature"):
        open_envelope(forged, client.public, server, Direction.TO_COORDINATOR)


def test_tampered_ciphertext_and_wrong_signer(parties):
    client, server = parties
    env = seal(b"hello world", _header(), client, server.public, Direction.TO_COORDINATOR)
    raw = bytearray(env.ciphertext)
    raw[0] ^= 1
    tampered = env.model_copy(update={"ciphertext": bytes(raw)})
    with pytest.raises(CryptoError):
        open_envelope(tampered, client.public, server, Direction.TO_COORDINATOR)
    impostor = Identity.generate()
    with pytest.raises(CryptoError, match="bad signature"):
        open_envelope(env, impostor.public, server, Direction.TO_COORDINATOR)


def test_key_bound_to_round_even_with_valid_signature(parties):
    """Re-signing a captured ciphertext under another round still fails to decrypt."""
    client, server = parties
    env = seal(b"x", _header(round_index=3), client, server.public, Direction.TO_COORDINATOR)
    moved = seal(b"y", _header(round_index=4), client, server.public, Direction.TO_COORDINATOR)
    spliced = SealedEnvelope(header=moved.header, nonce=env.nonce, ciphertext=env.ciphertext, signature=moved.signature)
    with pytest.raises(CryptoError):
        open_envelope(spliced, client.public, server, Direction.TO_COORDINATOR)


def test_identity_save_load(tmp_path, parties):
    client, server = parties
    path = tmp_path / "id.key"
    client.save(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    loaded = Identity.load(path)
    assert loaded.public == client.public
    env = seal(b"z", _header(), loaded, server.public, Direction.TO_COORDINATOR)
    assert open_envelope(env, client.public, server, Direction.TO_COORDINATOR) == b"z"
    path.write_text("garbage")
    with pytest.raises(CryptoError, match="malformed"):
        Identity.load(path)


def test_secret_files_are_0600_even_when_saved_over_a_wider_file(tmp_path):
    import os
    import stat

    from lada_client.common.crypto import write_private

    path = tmp_path / "identity.key"
    path.write_text("old")
    os.chmod(path, 0o644)  # e.g. restored from a backup, or created by an earlier version
    Identity.generate().save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_text().split()) == 2
    write_private(path, b"new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["identity.key"]  # no staged file left behind


def test_low_order_key_agreement_keys_are_refused():
    import base64

    from lada_client.common.crypto import PublicIdentity

    good = Identity.generate().public
    good.check_usable()
    for kex in (bytes(32), bytes([1]) + bytes(31)):  # the all-zero point and the point of order 1
        with pytest.raises(CryptoError, match="low-order"):
            PublicIdentity(good.sign_key, kex).check_usable()
    assert len(good.fingerprint()) == 64 and base64.b64decode(good.to_b64()["kex_key"]) == good.kex_key
