"""Wire encoding of a masked adapter: raw attachments in a binary envelope against base64 twice.

A co-tuning device uploads its masked adapter (``secagg.put``, step ``masked``: L uint32 values).
Measured side by side in one run, per L, on the same message, identities and AES-GCM/Ed25519:

* ``base64`` — the encoding before: the payload's JSON carries the vector as base64 text, the
  sealed envelope is JSON again with the ciphertext as base64 (``SealedEnvelope`` as it was), and a
  body over the chunk size travels as chunks of one character per byte inside a sealed JSON
  ``upload.chunk`` (base64 once more). Kept here, built from the same models' JSON form, as the
  reference;
* ``binary`` — now: :func:`lada_client.common.attachments.dump` (the vector as raw bytes after the
  JSON) in :meth:`SealedEnvelope.to_bytes`, chunks as raw attachments.

Per side: the device's time (encode + seal + body bytes), the coordinator's (parse body + open +
validate into the model), the bytes of one body and of a chunked upload (``--chunk-bytes``,
the client's default 4 MiB), medians of ``--repeats``. Both decode to the same vector, checked.

    python benchmarks/bench_wire.py [--quick] [--sizes 10000 100000 1000000] [--chunk-bytes N]
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_wire"


def _before_envelope(env) -> bytes:
    """The sealed envelope's JSON body before the binary form: every byte field base64."""
    return json.dumps(
        {
            "header": env.header.model_dump(),
            "nonce": base64.b64encode(env.nonce).decode(),
            "ciphertext": base64.b64encode(env.ciphertext).decode(),
            "signature": base64.b64encode(env.signature).decode(),
        },
        separators=(",", ":"),
    ).encode()


def _before_open(body: bytes):
    from lada_client.common.wire import EnvelopeHeader, SealedEnvelope

    doc = json.loads(body)
    return SealedEnvelope(
        header=EnvelopeHeader.model_validate(doc["header"]),
        nonce=base64.b64decode(doc["nonce"]),
        ciphertext=base64.b64decode(doc["ciphertext"]),
        signature=base64.b64decode(doc["signature"]),
    )


def run(length: int, chunk_bytes: int, repeats: int) -> dict:
    from lada_client.common import attachments
    from lada_client.common.crypto import Direction, Identity, open_envelope, seal
    from lada_client.common.secagg import MaskedInput
    from lada_client.common.wire import EnvelopeHeader, SealedEnvelope, SecAggUpload

    device, coordinator = Identity.generate(), Identity.generate()
    vector = np.random.default_rng(length).integers(0, 2**32, length, dtype=np.uint32)
    message = SecAggUpload(
        round=3,
        step="masked",
        body=MaskedInput(
            client_id="device-0001", round_id="r3-g0", peers=tuple(f"p{i}" for i in range(8)), vector=vector
        ),
    )
    header = EnvelopeHeader(client_id="device-0001", round=3, seq=7, kind="secagg.put", sent_at=time.time())

    def sealed(plain: bytes):
        return seal(plain, header, device, coordinator.public, Direction.TO_COORDINATOR)

    def opened(env) -> bytes:
        return open_envelope(env, device.public, coordinator, Direction.TO_COORDINATOR)

    ways = {
        "base64": (
            lambda: _before_envelope(sealed(message.model_dump_json().encode())),
            lambda body: SecAggUpload.model_validate_json(opened(_before_open(body))),
        ),
        "binary": (
            lambda: sealed(attachments.dump(message)).to_bytes(),
            lambda body: attachments.load(SecAggUpload, opened(SealedEnvelope.from_bytes(body))),
        ),
    }
    out: dict = {"length": length, "raw_bytes": 4 * length}
    times: dict[str, dict[str, list[float]]] = {w: {"device": [], "coordinator": []} for w in ways}
    bodies: dict[str, bytes] = {}
    for _ in range(repeats):
        for way, (encode, decode) in ways.items():  # alternating, so drift hits both alike
            started = time.perf_counter()
            body = encode()
            mid = time.perf_counter()
            got = decode(body)
            end = time.perf_counter()
            assert isinstance(got.body, MaskedInput) and np.array_equal(got.body.vector, vector), way
            times[way]["device"].append(mid - started)
            times[way]["coordinator"].append(end - mid)
            bodies[way] = body
    for way in ways:
        out[way] = {
            "body_bytes": len(bodies[way]),
            "body_over_raw": len(bodies[way]) / (4 * length),
            "chunked_bytes": _chunked_bytes(way, bodies[way], chunk_bytes, device, coordinator),
            "device_ms": 1000 * C.median(times[way]["device"]),
            "coordinator_ms": 1000 * C.median(times[way]["coordinator"]),
        }
    for key in ("body_bytes", "chunked_bytes", "device_ms", "coordinator_ms"):
        out[f"{key}_binary_over_base64"] = out["binary"][key] / out["base64"][key]
    return out


def _chunked_bytes(way: str, body: bytes, chunk_bytes: int, device, coordinator) -> int:
    """Request bytes of the chunks of ``body`` (the sealed ``upload.chunk`` bodies, begin and commit
    aside), each chunk sealed the way ``way`` sends it."""
    from lada_client.common import attachments
    from lada_client.common.crypto import Direction, seal
    from lada_client.common.wire import EnvelopeHeader, UploadChunk

    total = 0
    for index in range(-(-len(body) // chunk_bytes)):
        data = body[index * chunk_bytes : (index + 1) * chunk_bytes]
        header = EnvelopeHeader(client_id="device-0001", round=3, seq=8 + index, kind="upload.chunk", sent_at=0.0)
        if way == "base64":  # one character per byte in the payload JSON, sealed, base64 again
            doc = {"session_id": "ab" * 16, "index": index, "data": data.decode("latin-1")}
            plain = json.dumps(doc, separators=(",", ":")).encode()
            total += len(_before_envelope(seal(plain, header, device, coordinator.public, Direction.TO_COORDINATOR)))
        else:
            plain = attachments.dump(UploadChunk(session_id="ab" * 16, index=index, data=data))
            total += len(seal(plain, header, device, coordinator.public, Direction.TO_COORDINATOR).to_bytes())
    return total


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="L values (default 10k 100k 1M; --quick 10k 100k)"
    )
    p.add_argument("--chunk-bytes", type=int, default=4 * 2**20, help="chunk size of a chunked upload")
    args = p.parse_args()
    sizes = args.sizes or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    repeats = args.repeats or (3 if args.quick else 7)
    rows = []
    for length in sizes:
        rows.append(run(length, args.chunk_bytes, repeats))
        r = rows[-1]
        C.say(
            f"  L={length:>9,}  body {r['base64']['body_bytes']:>11,} -> {r['binary']['body_bytes']:>11,} B"
            f"  device {r['base64']['device_ms']:.2f} -> {r['binary']['device_ms']:.2f} ms"
            f"  coordinator {r['base64']['coordinator_ms']:.2f} -> {r['binary']['coordinator_ms']:.2f} ms"
        )
    C.say()
    C.say(
        C.table(
            [
                "L",
                "body B (base64)",
                "body B (binary)",
                "over raw (base64)",
                "over raw (binary)",
                "chunked B ratio",
                "device ms ratio",
                "coordinator ms ratio",
            ],
            [
                [
                    r["length"],
                    r["base64"]["body_bytes"],
                    r["binary"]["body_bytes"],
                    r["base64"]["body_over_raw"],
                    r["binary"]["body_over_raw"],
                    r["chunked_bytes_binary_over_base64"],
                    r["device_ms_binary_over_base64"],
                    r["coordinator_ms_binary_over_base64"],
                ]
                for r in rows
            ],
        )
    )
    path = C.write_results(NAME, {"chunk_bytes": args.chunk_bytes, "repeats": repeats, "rows": rows}, args.out)
    C.say(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
