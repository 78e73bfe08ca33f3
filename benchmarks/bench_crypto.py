"""Cost of the protocol's cryptography: sealed envelopes per message, and secure aggregation.

Part 1, envelopes (:mod:`lada_client.common.crypto`): ``seal`` (AES-256-GCM + Ed25519 signature)
and ``open_envelope`` (verify + decrypt) per message for realistic payloads (round info with M
candidates, a feature upload of M x 5, small queries and acks), split into signature, AEAD, key
derivation (X25519 + HKDF, once per client, round and direction) and the JSON/pydantic work around
them. The crypto of one client round (every message a client sends and receives) is set against a
reference round time: ``--round-time-s`` if given, otherwise the measured client scoring pass
(learnability features of M candidates on the tiny ``slm-small`` SLM, greedy generation included).

Part 2, secure aggregation (:mod:`lada_client.common.secagg`, the server in
:mod:`lada_coordinator.aggregation.secagg_server`): the whole SecAgg protocol in one
process (every client's and the server's steps, timed per party) for n clients and adapters of L
floats, against plain FedAvg (:func:`lada_client.common.secagg.fedavg`) on the same vectors; the
averages are checked equal within the quantisation error.

Part 3, the server's unmasking side by side (``SecAggServer.aggregate`` on one finished round, the
two alternating): Shamir reconstruction with one Lagrange interpolation per owner (the code before
the basis was cached, kept here as the reference) against the basis computed once per responder set
(:func:`lada_client.common.secagg.lagrange_coefficients`) and reused as a dot product per owner.
Both must give the same sum to the bit.

    python benchmarks/bench_crypto.py [--quick] [--round-time-s SECONDS] [--clients 5 10 20 50]
        [--unmask-clients 20 50 100] [--unmask-dropout 0.1] [--unmask-length 10000]
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_crypto"


# ------------------------------------------------------------------------------------ payloads
def payloads(m: int, offers: int, adapter_floats: int) -> dict[str, tuple[str, object]]:
    """(kind, payload model) per message of a client round, built from the public pool, plus the
    co-tuning message that carries a masked adapter of ``adapter_floats`` values."""
    from lada_client.common.secagg import MaskedInput
    from lada_client.common.wire import (
        Ack,
        Allocation,
        AllocationQuery,
        FeatureUpload,
        PathOffer,
        PublicQuestion,
        RewardReport,
        RoundInfo,
        RoundQuery,
        SecAggUpload,
    )
    from lada_client.scoring.features import FEATURE_NAMES

    samples = C.public_samples(C.world())
    cands = C.candidates(samples, m)
    rng = np.random.default_rng(0)
    feats = rng.normal(2.0, 1.0, (m, len(FEATURE_NAMES)))
    questions = [
        PublicQuestion(sample_id=f"o{i}", question=s.question, answer=s.answer) for i, s in enumerate(samples[:offers])
    ]
    info = RoundInfo(
        round=3,
        phase="features",
        total_rounds=10,
        candidates=cands,
        offer_questions=questions,
        feature_names=list(FEATURE_NAMES),
    )
    upload = FeatureUpload(
        round=3,
        feature_names=list(FEATURE_NAMES),
        sample_ids=[c.sample_id for c in cands],
        features=feats.tolist(),
        offers=[PathOffer(sample_id=q.sample_id, path=s.rationale) for q, s in zip(questions, samples[:offers])][
            : offers // 2
        ],
    )
    return {
        f"round info ({m} candidates, {offers} questions)": ("round.get reply", info),
        f"feature upload ({m}x{len(FEATURE_NAMES)}, {offers // 2} offers)": ("features.put", upload),
        "allocation (32 ids)": (
            "allocation.get reply",
            Allocation(round=3, status="ready", sample_ids=[c.sample_id for c in cands[:32]], reason="cap"),
        ),
        "reward report": (
            "reward.put",
            RewardReport(
                round=3,
                reward=0.12,
                ppl_before=3.1,
                ppl_after=2.7,
                n_allocated=32,
                test_accuracy=0.4,
                bytes_sent=123456,
                bytes_received=654321,
            ),
        ),
        "round query": ("round.get", RoundQuery()),
        "allocation query": ("allocation.get", AllocationQuery(round=3)),
        "ack": ("reply", Ack(message="stored")),
        f"secagg masked adapter ({adapter_floats:,} floats)": (
            "secagg.put",
            SecAggUpload(
                round=3,
                step="masked",
                body=MaskedInput(
                    client_id="client-0001",
                    round_id="r3/g",
                    peers=("client-0002",),
                    vector=rng.integers(0, 2**32, adapter_floats, dtype=np.uint32),
                ),
            ),
        ),
    }


def bench_envelopes(m: int, offers: int, adapter_floats: int, repeats: int) -> list[dict]:
    from lada_client.common.crypto import Identity

    client, coordinator = Identity.generate(), Identity.generate()
    rows = []
    for label, (kind, model) in payloads(m, offers, adapter_floats).items():
        row = envelope_row(label, kind, model, client, coordinator, repeats)
        rows.append(row)
        C.say(f"  {label:<42} {row['payload_bytes']:>8,} B  seal {row['seal_ms']:.3f} ms  open {row['open_ms']:.3f} ms")
    return rows


def envelope_row(label: str, kind: str, model, client, coordinator, repeats: int) -> dict:
    """One message's costs: seal, open and their parts, each the median of 5 timed batches."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from lada_client.common import attachments, crypto
    from lada_client.common.crypto import Direction, Identity, open_envelope, seal
    from lada_client.common.wire import EnvelopeHeader, SealedEnvelope

    raw = attachments.dump(model)
    header = EnvelopeHeader(client_id="client-0001", round=3, seq=1, kind=kind.split()[0], sent_at=time.time())
    n = max(20, repeats) if len(raw) < 1_000_000 else 3
    env = seal(raw, header, client, coordinator.public, Direction.TO_COORDINATOR)
    wire = env.to_bytes()
    signed = crypto._signed_bytes(header.canonical_bytes(), env.nonce, env.ciphertext)
    aead = client._aead(coordinator.public.kex_key, header.client_id, header.round, Direction.TO_COORDINATOR)
    nonce = b"\0" * 12
    ct = aead.encrypt(nonce, raw, header.canonical_bytes())
    sig = client.sign(signed)
    verify_key = Ed25519PublicKey.from_public_bytes(client.public.sign_key)

    def per_call(fn) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(n):
                fn()
            times.append((time.perf_counter() - started) / n)
        return C.median(times)

    def derive():
        Identity._aead.cache_clear()
        client._aead(coordinator.public.kex_key, header.client_id, header.round, Direction.TO_COORDINATOR)

    row = {
        "message": label,
        "kind": kind,
        "payload_bytes": len(raw),
        "envelope_bytes": len(wire),
        "seal_ms": 1000 * per_call(lambda: seal(raw, header, client, coordinator.public, Direction.TO_COORDINATOR)),
        "open_ms": 1000 * per_call(lambda: open_envelope(env, client.public, coordinator, Direction.TO_COORDINATOR)),
        "sign_ms": 1000 * per_call(lambda: client.sign(signed)),
        "verify_ms": 1000 * per_call(lambda: verify_key.verify(sig, signed)),
        "aead_encrypt_ms": 1000 * per_call(lambda: aead.encrypt(nonce, raw, header.canonical_bytes())),
        "aead_decrypt_ms": 1000 * per_call(lambda: aead.decrypt(nonce, ct, header.canonical_bytes())),
        "key_derivation_ms": 1000 * per_call(derive),
        # what surrounds the crypto on the wire: payload out, envelope out and back in, payload in
        "json_ms": 1000
        * per_call(
            lambda: (
                attachments.dump(model),
                env.to_bytes(),
                SealedEnvelope.from_bytes(wire),
                attachments.load(type(model), raw),
            )
        ),
    }
    Identity._aead.cache_clear()
    return row


def reference_round_time(m: int, repeats: int) -> dict:
    """A client's scoring pass over ``m`` candidates on the tiny slm-small SLM (one thread each
    for 1 and for all CPUs is not needed here: onnxruntime's default threads, as a client runs)."""
    from lada_client.common.reasoning import format_prompt, format_target
    from lada_client.scoring.features import learnability_features
    from lada_client.scoring.onnx_slm import OnnxSLM

    paths = C.world()
    slm = OnnxSLM(paths["slm-small"] / "onnx" / "model.onnx", providers=["CPUExecutionProvider"])
    cands = C.candidates(C.public_samples(paths), m)
    learnability_features(slm, cands[:16])  # warm-up
    full = [C.timed(lambda: learnability_features(slm, cands))[0] for _ in range(max(1, repeats // 2))]
    prompts = [format_prompt(c.question) for c in cands]
    logprobs = [
        C.timed(lambda: slm.completion_logprobs(prompts, [format_target(c.path) for c in cands]))[0]
        for _ in range(repeats)
    ]
    return {
        "model": "slm-small",
        "candidates": m,
        "features_pass_s": C.median(full),
        "logprob_pass_s": C.median(logprobs),
    }


def client_round_crypto(rows: list[dict]) -> dict:
    """Crypto of every message of one client round, on the client and on the coordinator.

    Client: seal round query, open round info, seal features, open ack, seal allocation query,
    open allocation, seal reward, open ack; the coordinator does the mirror image. Key derivation
    happens once per direction per round on each side (cached afterwards).
    """
    by_kind = {r["kind"]: r for r in rows}
    sent = [by_kind["round.get"], by_kind["features.put"], by_kind["allocation.get"], by_kind["reward.put"]]
    received = [by_kind["round.get reply"], by_kind["reply"], by_kind["allocation.get reply"], by_kind["reply"]]
    kdf = 2 * by_kind["reply"]["key_derivation_ms"]
    client_ms = sum(r["seal_ms"] for r in sent) + sum(r["open_ms"] for r in received) + kdf
    coordinator_ms = sum(r["open_ms"] for r in sent) + sum(r["seal_ms"] for r in received) + kdf
    json_ms = sum(r["json_ms"] for r in sent + received)
    return {
        "client_ms": client_ms,
        "coordinator_ms_per_client": coordinator_ms,
        "json_ms": json_ms,
        "messages": len(sent) + len(received),
    }


# ------------------------------------------------------------------------------------- secagg
def secagg_config(n: int, neighbours: int | None):
    """The coordinator's per-group configuration (``SecAggSettings.config_for``) when available."""
    try:
        from lada_coordinator.aggregation.secure import SecAggSettings

        return SecAggSettings(neighbours=neighbours).config_for(n)
    except ImportError:
        from lada_client.common.secagg import SecAggConfig

        degree = n - 1 if neighbours is None else min(neighbours, n - 1)
        return SecAggConfig(threshold=max(1, min(degree, math.ceil(0.67 * degree))), neighbours=neighbours, clip=4.0)


def run_secagg(n: int, length: int, neighbours: int | None, dropouts: int, seed: int = 0) -> dict:
    from lada_client.common.secagg import (
        MaskedInput,
        Roster,
        SecAggClient,
        ShareKeys,
        UnmaskRequest,
        UnmaskResponse,
        fedavg,
    )
    from lada_coordinator.aggregation.secagg_server import SecAggServer

    config = secagg_config(n, neighbours)
    rng = np.random.default_rng(seed)
    vectors = [rng.normal(0.0, 0.02, length) for _ in range(n)]
    ids = [f"client{k:03d}" for k in range(n)]
    round_id = "r1/bench"
    client_s = dict.fromkeys(ids, 0.0)
    server_s = 0.0
    wire_s = 0.0

    def on_client(cid, fn):
        elapsed, out = C.timed(fn)
        client_s[cid] += elapsed
        return out

    def on_server(fn):
        nonlocal server_s
        elapsed, out = C.timed(fn)
        server_s += elapsed
        return out

    def wire(message, cls):
        """JSON out and back, as the message travels inside an envelope."""
        nonlocal wire_s
        elapsed, out = C.timed(lambda: cls.from_dict(json.loads(json.dumps(message.to_dict()))))
        wire_s += elapsed
        return out

    server = on_server(lambda: SecAggServer(round_id, config, length))
    clients = {c: on_client(c, lambda c=c: SecAggClient(c, round_id, config)) for c in ids}
    for c in ids:
        advert = on_client(c, clients[c].advertise)
        on_server(lambda a=advert: server.receive_advertise(a))
    roster = wire(on_server(server.roster), Roster)
    for c in ids:
        shares = wire(on_client(c, lambda c=c: clients[c].share_keys(roster)), ShareKeys)
        on_server(lambda s=shares: server.receive_shares(s))
    routed = on_server(server.route_shares)
    dropped = set(ids[-dropouts:]) if dropouts else set()
    survivors = [c for c in ids if c not in dropped]
    for c in survivors:
        masked = on_client(c, lambda c=c: clients[c].masked_input(vectors[ids.index(c)], routed[c]))
        masked = wire(masked, MaskedInput)
        on_server(lambda mi=masked: server.receive_masked_input(mi))
    request = wire(on_server(server.unmask_request), UnmaskRequest)
    for c in survivors:
        response = wire(on_client(c, lambda c=c: clients[c].unmask(request.survivors, request.dropped)), UnmaskResponse)
        on_server(lambda r=response: server.receive_unmask(r))
    aggregate = on_server(server.aggregate)
    mean_secure = aggregate.total / len(survivors)
    plain = [vectors[ids.index(c)] for c in survivors]
    first, mean_plain = C.timed(lambda: fedavg(plain))
    loops = max(1, min(200, math.ceil(0.05 / max(first, 1e-6))))  # >= 50 ms per sample: above scheduler noise
    t_fedavg = []
    for _ in range(5):
        elapsed, _ = C.timed(lambda: [fedavg(plain) for _ in range(loops)])
        t_fedavg.append(elapsed / loops)
    error = float(np.max(np.abs(mean_secure - mean_plain)))
    per_client = [client_s[c] for c in survivors]
    return {
        "clients": n,
        "length": length,
        "neighbours": neighbours,
        "threshold": config.threshold,
        "dropouts": dropouts,
        "client_s_mean": float(np.mean(per_client)),
        "client_s_max": float(np.max(per_client)),
        "server_s": server_s,
        "wire_s": wire_s,
        "total_compute_s": float(sum(client_s.values())) + server_s,
        "fedavg_s": C.median(t_fedavg),
        "max_abs_error": error,
        "error_bound": 1.0 / config.scale,
        "equal": error <= 1.0 / config.scale,
    }


def profile_aggregate(n: int, length: int, neighbours: int | None) -> dict:
    """cProfile of ``SecAggServer.aggregate`` (the server's unmasking) in one protocol run."""
    import cProfile
    import pstats

    from lada_coordinator.aggregation import secagg_server

    prof = cProfile.Profile()
    original = secagg_server.SecAggServer.aggregate

    def profiled(self):
        prof.enable()
        try:
            return original(self)
        finally:
            prof.disable()

    secagg_server.SecAggServer.aggregate = profiled
    try:
        run_secagg(n, length, neighbours, 0)
    finally:
        secagg_server.SecAggServer.aggregate = original
    stats = pstats.Stats(prof)
    total = max((v[3] for k, v in stats.stats.items() if k[2] == "aggregate"), default=stats.total_tt) or 1.0
    rows = sorted(
        (
            {"function": f"{Path(f).name}:{line}({fn})", "calls": v[1], "cumulative_pct": round(100 * v[3] / total, 1)}
            for (f, line, fn), v in stats.stats.items()
            if "secagg" in f
        ),
        key=lambda r: -r["cumulative_pct"],
    )
    return {"clients": n, "length": length, "aggregate_s": total, "functions": rows[:8]}


# ----------------------------------------------------------------- unmasking: basis reuse
def shamir_reconstruct_per_owner(shares, threshold: int, secret_len: int = 32) -> bytes:
    """The reference: ``shamir_reconstruct`` as it was before the Lagrange basis was cached, one
    full interpolation (one 521-bit modular inverse per point) per owner."""
    from lada_client.common.secagg import SHAMIR_PRIME, SecAggError

    points = sorted(shares, key=lambda s: s.x)
    if len({s.x for s in points}) != len(points):
        raise SecAggError("malformed share: two shares have the same x coordinate")
    if len(points) < threshold:
        raise SecAggError(f"need at least {threshold} shares to reconstruct, got {len(points)}")
    total = 0
    for i, pi in enumerate(points[:threshold]):
        num, den = 1, 1
        for j, pj in enumerate(points[:threshold]):
            if i != j:
                num = num * (0 - pj.x) % SHAMIR_PRIME
                den = den * (pi.x - pj.x) % SHAMIR_PRIME
        total = (total + pi.y * num * pow(den, -1, SHAMIR_PRIME)) % SHAMIR_PRIME
    if total >= 1 << (8 * secret_len):
        raise SecAggError("malformed share: the shares are inconsistent")
    return total.to_bytes(secret_len, "big")


def round_to_unmask(n: int, length: int, neighbours: int | None, dropouts: int, seed: int = 0):
    """One round up to the server's unmasking: every survivor's unmask response received."""
    from lada_client.common.secagg import SecAggClient
    from lada_coordinator.aggregation.secagg_server import SecAggServer

    config = secagg_config(n, neighbours)
    rng = np.random.default_rng(seed)
    ids = [f"client{k:03d}" for k in range(n)]
    round_id = "r1/unmask"
    server = SecAggServer(round_id, config, length)
    clients = {c: SecAggClient(c, round_id, config) for c in ids}
    for c in ids:
        server.receive_advertise(clients[c].advertise())
    roster = server.roster()
    for c in ids:
        server.receive_shares(clients[c].share_keys(roster))
    routed = server.route_shares()
    for c in ids[: n - dropouts]:
        server.receive_masked_input(clients[c].masked_input(rng.normal(0.0, 0.02, length), routed[c]))
    request = server.unmask_request()
    for c in request.survivors:
        server.receive_unmask(clients[c].unmask(request.survivors, request.dropped))
    return server


def bench_unmask(n: int, length: int, neighbours: int | None, dropout: float, repeats: int) -> dict:
    """``SecAggServer.aggregate`` on one round, per-owner interpolation vs the reused basis, the two
    alternating (median of ``repeats`` each). The basis cache is cleared before each reused run, so
    it counts computing the basis of every responder set of the round ("cold"); "warm" is a second
    unmask over the same responders (the next round of a stable group), nothing left to compute."""
    from lada_client.common import secagg
    from lada_coordinator.aggregation import secagg_server

    dropouts = round(dropout * n)
    server = round_to_unmask(n, length, neighbours, dropouts)
    reconstruct = server._reconstruct
    spent = [0.0, 0]  # seconds in secret reconstruction, secrets rebuilt

    def timed_reconstruct(*args):
        elapsed, secret = C.timed(lambda: reconstruct(*args))
        spent[0] += elapsed
        spent[1] += 1
        return secret

    server._reconstruct = timed_reconstruct

    def unmask(per_owner: bool, cold: bool = True):
        spent[:] = [0.0, 0]
        if cold:
            secagg.lagrange_coefficients.cache_clear()
        if per_owner:
            secagg_server.shamir_reconstruct = shamir_reconstruct_per_owner
        try:
            elapsed, aggregate = C.timed(server.aggregate)
        finally:
            secagg_server.shamir_reconstruct = secagg.shamir_reconstruct
        return elapsed, spent[0], aggregate.total

    unmask(False)  # warm-up: imports, allocator
    results: dict[str, list] = {"per_owner": [], "reused": [], "warm": []}
    totals = []
    for _ in range(repeats):
        for mode in ("per_owner", "reused"):
            elapsed, rebuild_s, total = unmask(mode == "per_owner")
            results[mode].append((elapsed, rebuild_s))
            totals.append(total)
        x_sets = secagg.lagrange_coefficients.cache_info().misses
        elapsed, rebuild_s, total = unmask(False, cold=False)
        results["warm"].append((elapsed, rebuild_s))
        totals.append(total)
    secrets_rebuilt = spent[1]

    def med(mode: str, k: int) -> float:
        return C.median([r[k] for r in results[mode]])

    row = {
        "clients": n,
        "length": length,
        "neighbours": neighbours,
        "threshold": server.config.threshold,
        "dropout": dropout,
        "dropped": dropouts,
        "secrets_rebuilt": secrets_rebuilt,
        "responder_x_sets": x_sets,
        "repeats": repeats,
        "aggregate_per_owner_s": med("per_owner", 0),
        "aggregate_reused_s": med("reused", 0),
        "aggregate_warm_s": med("warm", 0),
        "reconstruct_per_owner_s": med("per_owner", 1),
        "reconstruct_reused_s": med("reused", 1),
        "reconstruct_warm_s": med("warm", 1),
        "identical": all(np.array_equal(totals[0], t) for t in totals[1:]),
    }
    row["aggregate_ratio"] = row["aggregate_per_owner_s"] / row["aggregate_reused_s"]
    row["reconstruct_ratio"] = row["reconstruct_per_owner_s"] / row["reconstruct_reused_s"]
    row["reconstruct_warm_ratio"] = row["reconstruct_per_owner_s"] / row["reconstruct_warm_s"]
    return row


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=int, default=256, help="M: candidates in a round")
    p.add_argument("--offer-questions", type=int, default=64, help="public questions offered in a round")
    p.add_argument("--adapter-floats", type=int, default=100_000, help="masked adapter size in the envelope table")
    p.add_argument(
        "--round-time-s",
        type=float,
        default=None,
        help="reference round time; default: measure a client scoring pass of M candidates",
    )
    p.add_argument("--clients", type=int, nargs="+", default=None, help="secagg n values (default 5 10 20 50)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="adapter sizes in floats (default 10k 100k 1M)")
    p.add_argument("--neighbours", type=int, default=None, help="SecAgg+ graph degree (default: all pairs)")
    p.add_argument("--dropouts", type=int, default=0, help="clients that drop after sharing keys")
    p.add_argument("--no-secagg", dest="secagg", action="store_false")
    p.add_argument(
        "--unmask-clients",
        type=int,
        nargs="*",
        default=None,
        help="n values of the unmasking side by side (default 20 50 100; --quick 20 50; none: skip it)",
    )
    p.add_argument("--unmask-dropout", type=float, default=0.1, help="fraction of clients dropped, unmasking bench")
    p.add_argument("--unmask-length", type=int, default=10_000, help="adapter floats, unmasking bench")
    args = p.parse_args()
    repeats = args.repeats or (5 if args.quick else 11)
    clients = args.clients or ([5, 10, 20] if args.quick else [5, 10, 20, 50])
    sizes = args.sizes or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    secagg_repeats = 1 if args.quick else 3
    unmask_clients = (
        args.unmask_clients if args.unmask_clients is not None else [20, 50] if args.quick else [20, 50, 100]
    )

    C.say(f"sealed envelopes, per message (median of 5 x >= {max(20, repeats)} calls; 5 x 3 for payloads over 1 MB)")
    rows = bench_envelopes(args.candidates, args.offer_questions, args.adapter_floats, repeats)
    if args.round_time_s is not None:
        reference = {"given_round_time_s": args.round_time_s}
        round_s = args.round_time_s
    else:
        C.say(f"measuring the reference round: scoring {args.candidates} candidates on slm-small ...")
        reference = reference_round_time(args.candidates, 3 if args.quick else 5)
        round_s = reference["features_pass_s"]
    per_round = client_round_crypto(rows)
    per_round["reference_round_s"] = round_s
    per_round["client_pct_of_round"] = 100 * per_round["client_ms"] / 1000 / round_s
    if "logprob_pass_s" in reference:  # the tightest reference: scoring without generation
        per_round["client_pct_of_logprob_pass"] = 100 * per_round["client_ms"] / 1000 / reference["logprob_pass_s"]
    for r in rows:
        r["seal_open_pct_of_round"] = 100 * (r["seal_ms"] + r["open_ms"]) / 1000 / round_s

    C.say()
    C.say(
        C.table(
            [
                "message",
                "payload B",
                "envelope B",
                "seal ms",
                "open ms",
                "sign ms",
                "verify ms",
                "AEAD enc ms",
                "AEAD dec ms",
                "KDF ms",
                "JSON ms",
                "seal+open % of round",
            ],
            [
                [
                    r["message"],
                    r["payload_bytes"],
                    r["envelope_bytes"],
                    r["seal_ms"],
                    r["open_ms"],
                    r["sign_ms"],
                    r["verify_ms"],
                    r["aead_encrypt_ms"],
                    r["aead_decrypt_ms"],
                    r["key_derivation_ms"],
                    r["json_ms"],
                    f"{r['seal_open_pct_of_round']:.4f}%",
                ]
                for r in rows
            ],
        )
    )
    ref_text = (
        f"given {round_s:.2f}s"
        if args.round_time_s is not None
        else f"measured features pass of {args.candidates} candidates on slm-small: {round_s:.2f}s "
        f"(log-prob pass alone {reference['logprob_pass_s']:.2f}s)"
    )
    C.say(
        f"\none client round ({per_round['messages']} messages): client crypto {per_round['client_ms']:.2f} ms = "
        f"{per_round['client_pct_of_round']:.3f}% of the reference round ({ref_text}"
        + (
            f"; {per_round['client_pct_of_logprob_pass']:.2f}% of the log-prob pass alone"
            if "client_pct_of_logprob_pass" in per_round
            else ""
        )
        + f"); coordinator crypto "
        f"{per_round['coordinator_ms_per_client']:.2f} ms per client; "
        f"JSON/pydantic around it {per_round['json_ms']:.2f} ms"
    )

    secagg_rows = []
    if args.secagg:
        C.say(f"\nsecure aggregation vs FedAvg (neighbours {args.neighbours or 'all'}, {args.dropouts} dropouts)")
        for length in sizes:
            for n in clients:
                reps = [
                    run_secagg(n, length, args.neighbours, args.dropouts, seed=k)
                    for k in range(secagg_repeats if length <= 100_000 else 1)
                ]
                r = {k: (C.median([x[k] for x in reps]) if isinstance(v, float) else v) for k, v in reps[0].items()}
                r["max_abs_error"] = max(x["max_abs_error"] for x in reps)
                r["equal"] = all(x["equal"] for x in reps)
                r["repeats"] = len(reps)
                r["server_over_fedavg"] = r["server_s"] / r["fedavg_s"]
                r["total_over_fedavg"] = r["total_compute_s"] / r["fedavg_s"]
                secagg_rows.append(r)
                C.say(
                    f"  n={n:<3} L={length:>9,}  client {r['client_s_mean']:.3f}s  server {r['server_s']:.3f}s  "
                    f"fedavg {r['fedavg_s'] * 1000:.2f}ms  max|err| {r['max_abs_error']:.1e}"
                )
        prof = profile_aggregate(max(clients), min(sizes), args.neighbours)
        C.say(
            f"\nprofile of SecAggServer.aggregate, n={prof['clients']}, L={prof['length']:,} "
            f"({1000 * prof['aggregate_s']:.0f} ms):"
        )
        for f in prof["functions"]:
            C.say(f"  {f['cumulative_pct']:5.1f}% cum  {f['calls']:>6} calls  {f['function']}")
        C.say()
        C.say(
            C.table(
                [
                    "n",
                    "floats",
                    "threshold",
                    "client ms (mean)",
                    "client ms (max)",
                    "server ms",
                    "all parties ms",
                    "JSON wire ms",
                    "fedavg ms",
                    "server/fedavg",
                    "all/fedavg",
                    "max|err|",
                    "equal",
                ],
                [
                    [
                        r["clients"],
                        r["length"],
                        r["threshold"],
                        1000 * r["client_s_mean"],
                        1000 * r["client_s_max"],
                        1000 * r["server_s"],
                        1000 * r["total_compute_s"],
                        1000 * r["wire_s"],
                        1000 * r["fedavg_s"],
                        f"{r['server_over_fedavg']:.2f}x",
                        f"{r['total_over_fedavg']:.1f}x",
                        f"{r['max_abs_error']:.1e}",
                        r["equal"],
                    ]
                    for r in secagg_rows
                ],
            )
        )
    unmask_rows = []
    if args.secagg and unmask_clients:
        C.say(
            f"\nserver unmasking, per-owner interpolation vs Lagrange basis reused per responder set "
            f"(neighbours {args.neighbours or 'all'}, dropout {args.unmask_dropout:.0%}, L={args.unmask_length:,}, "
            f"median of {repeats} alternating runs)"
        )
        for n in unmask_clients:
            r = bench_unmask(n, args.unmask_length, args.neighbours, args.unmask_dropout, repeats)
            unmask_rows.append(r)
            C.say(
                f"  n={n:<4} t={r['threshold']:<3} dropped {r['dropped']:<3} aggregate: per-owner "
                f"{1000 * r['aggregate_per_owner_s']:.1f} ms, reused {1000 * r['aggregate_reused_s']:.1f} ms "
                f"({r['aggregate_ratio']:.2f}x); reconstruction {1000 * r['reconstruct_per_owner_s']:.1f} -> "
                f"{1000 * r['reconstruct_reused_s']:.1f} ms ({r['reconstruct_ratio']:.2f}x; warm "
                f"{1000 * r['reconstruct_warm_s']:.1f} ms, {r['reconstruct_warm_ratio']:.1f}x)  "
                f"identical {r['identical']}"
            )
        C.say()
        C.say(
            C.table(
                [
                    "n",
                    "threshold",
                    "dropped",
                    "secrets",
                    "x sets",
                    "aggregate ms per-owner",
                    "aggregate ms reused",
                    "ratio",
                    "reconstruct ms per-owner",
                    "reconstruct ms reused",
                    "ratio",
                    "reconstruct ms warm",
                    "identical",
                ],
                [
                    [
                        r["clients"],
                        r["threshold"],
                        r["dropped"],
                        r["secrets_rebuilt"],
                        r["responder_x_sets"],
                        1000 * r["aggregate_per_owner_s"],
                        1000 * r["aggregate_reused_s"],
                        f"{r['aggregate_ratio']:.2f}x",
                        1000 * r["reconstruct_per_owner_s"],
                        1000 * r["reconstruct_reused_s"],
                        f"{r['reconstruct_ratio']:.2f}x",
                        1000 * r["reconstruct_warm_s"],
                        r["identical"],
                    ]
                    for r in unmask_rows
                ],
            )
        )
    path = C.write_results(
        NAME,
        {
            "settings": {
                "candidates": args.candidates,
                "offer_questions": args.offer_questions,
                "repeats": repeats,
                "quick": args.quick,
                "clients": clients,
                "sizes": sizes,
                "neighbours": args.neighbours,
                "dropouts": args.dropouts,
                "unmask_clients": unmask_clients if args.secagg else [],
                "unmask_dropout": args.unmask_dropout,
                "unmask_length": args.unmask_length,
            },
            "reference_round": reference,
            "envelopes": rows,
            "client_round": per_round,
            "secagg": secagg_rows,
            "secagg_server_profile": prof if args.secagg else None,
            "secagg_unmask": unmask_rows,
        },
        args.out,
    )
    C.say(f"\nresults: {path}")
    return 0 if all(r["equal"] for r in secagg_rows) and all(r["identical"] for r in unmask_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
