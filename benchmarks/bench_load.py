"""The coordinator under load on loopback: many clients enrolling and uploading features at once.

A real coordinator (``lada_coordinator.server.run.build`` + uvicorn, real SQLite, in its own
process) serves N clients, each with its own :class:`~lada_client.common.crypto.Identity` and
:class:`~lada_client.transport.Transport` (its own HTTP connection), driven by one thread per
client in this process. Phases, each started by a barrier so every client fires at once:

1. ``enroll``: N enrollments with one-time tokens (once);
2. ``round.get``: N sealed requests for the round (replies carry M candidates), every round;
3. ``features.put``: N sealed feature uploads (M x 5 features each), each committed to SQLite
   before its reply, every round (``--rounds``, each opened through the store).

Retries are off, so every failed request counts as an error. Per phase: p50/p99/max latency
(client-side, sealing and opening included), throughput (requests / wall time of the phase) and
errors; afterwards the database must hold exactly N uploads.

    python benchmarks/bench_load.py [--quick] [--clients 200] [--candidates 64] [--time-limit-s 120]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_load"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"coordinator exited with code {proc.returncode} during start-up")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"coordinator did not answer on {url} within {timeout_s:.0f}s")


def run_phase(name: str, clients: list, action, deadline: float) -> dict:
    """Run ``action(i, client)`` in one thread per client, all released together by a barrier."""
    n = len(clients)
    latencies: list[float | None] = [None] * n
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n + 1)

    def worker(i: int) -> None:
        barrier.wait()
        started = time.perf_counter()
        try:
            action(i, clients[i])
            latencies[i] = time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - every failure is an error to count and show
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    wall = time.perf_counter() - started
    unfinished = sum(t.is_alive() for t in threads)
    done = [x for x in latencies if x is not None]
    result = {
        "phase": name,
        "requests": n,
        "ok": len(done),
        "errors": len(errors) + unfinished,
        "unfinished": unfinished,
        "wall_s": wall,
        "throughput_rps": len(done) / wall if wall > 0 else float("nan"),
        "p50_ms": 1000 * C.percentile(done, 50),
        "p90_ms": 1000 * C.percentile(done, 90),
        "p99_ms": 1000 * C.percentile(done, 99),
        "max_ms": 1000 * max(done) if done else float("nan"),
        "error_samples": sorted(set(errors))[:5],
    }
    C.say(
        f"  {name:<13} {result['ok']}/{n} ok in {wall:.2f}s  p50 {result['p50_ms']:.0f} ms  "
        f"p99 {result['p99_ms']:.0f} ms  {result['throughput_rps']:.1f} req/s  errors {result['errors']}"
    )
    return result


def server_breakdown(cands, names: list[str], iterations: int) -> dict:
    """In-process cost of each step the coordinator's ``features.put`` and ``round.get`` handlers take
    (the steps of ``create_app``'s ``sealed()``), one request at a time, medians in ms.

    Under load the steps inside the store transaction run one at a time (one SQLite connection, one
    lock), so ``1 / (in-transaction time)`` bounds the write throughput whatever the concurrency.
    """
    from lada_client.common.crypto import Direction, Identity, PublicIdentity, open_envelope, seal
    from lada_client.common.wire import (
        Ack,
        EnvelopeHeader,
        FeatureUpload,
        RoundInfo,
        RoundQuery,
        SealedEnvelope,
    )
    from lada_coordinator.store import ClientRecord, Store

    steps: dict[str, dict[str, list[float]]] = {"features.put": {}, "round.get": {}}

    def tick(kind: str, step: str, started: float) -> float:
        now = time.perf_counter()
        steps[kind].setdefault(step, []).append(1000 * (now - started))
        return now

    with tempfile.TemporaryDirectory(prefix="lada-bench-steps-") as tmp:
        store = Store(Path(tmp) / "c.sqlite")
        coordinator = Identity.generate()
        m = len(cands)
        info = RoundInfo(round=1, phase="features", total_rounds=2, candidates=cands, feature_names=names)
        store.open_round(1, info.model_dump(), {})
        rng = np.random.default_rng(1)
        for k in range(iterations):
            ident = Identity.generate()
            keys = ident.public.to_b64()
            cid = f"step{k:04d}"
            store.add_client(ClientRecord(cid, cid, keys["sign_key"], keys["kex_key"], "", "", {}, 0, 0, 0))
            for seq, (kind, payload, payload_type) in enumerate(
                (
                    ("round.get", RoundQuery(), RoundQuery),
                    (
                        "features.put",
                        FeatureUpload(
                            round=1,
                            feature_names=names,
                            sample_ids=[c.sample_id for c in cands],
                            features=rng.normal(2.0, 1.0, (m, len(names))).tolist(),
                        ),
                        FeatureUpload,
                    ),
                ),
                start=1,
            ):
                header = EnvelopeHeader(client_id=cid, round=1, seq=seq, kind=kind, sent_at=time.time())
                body = (
                    seal(
                        payload.model_dump_json().encode(), header, ident, coordinator.public, Direction.TO_COORDINATOR
                    )
                    .model_dump_json()
                    .encode()
                )
                t0 = time.perf_counter()
                env = SealedEnvelope.model_validate_json(body)
                t = tick(kind, "parse envelope", t0)
                rec = store.client(cid)
                t = tick(kind, "client lookup", t)
                sender = PublicIdentity.from_b64(rec.sign_key, rec.kex_key)
                plain = open_envelope(env, sender, coordinator, Direction.TO_COORDINATOR)
                t = tick(kind, "open envelope", t)
                got = payload_type.model_validate_json(plain)
                t = tick(kind, "validate payload", t)
                store.current_round()
                round_info, _ = store.round_info(1)
                t = tick(kind, "read round (json)", t)
                with store.transaction() as db:
                    t = tick(kind, "lock + BEGIN", t)
                    if kind == "features.put":
                        store.put_upload(db, 1, cid, kind, got.model_dump_json())
                        reply = Ack(message="stored")
                    else:
                        reply = RoundInfo.model_validate(round_info)
                    t = tick(kind, "handler body", t)
                    out = seal(
                        reply.model_dump_json().encode(),
                        header.model_copy(update={"sent_at": time.time()}),
                        coordinator,
                        sender,
                        Direction.TO_CLIENT,
                    )
                    t = tick(kind, "seal reply", t)
                    sizes = len(env.model_dump_json()), len(out.model_dump_json())
                    t = tick(kind, "size accounting", t)
                    store.accept(db, cid, seq, *sizes)
                    t = tick(kind, "accept (UPDATE)", t)
                t = tick(kind, "COMMIT (fsync)", t)
                out.model_dump_json()
                tick(kind, "serialise reply", t)
        store.close()
    in_txn = ("lock + BEGIN", "handler body", "seal reply", "size accounting", "accept (UPDATE)", "COMMIT (fsync)")
    result = {}
    for kind, by_step in steps.items():
        med = {k: C.median(v) for k, v in by_step.items()}
        total = sum(med.values())
        txn = sum(v for k, v in med.items() if k in in_txn)
        result[kind] = {
            "steps_ms": med,
            "total_ms": total,
            "in_transaction_ms": txn,
            "serial_bound_rps": 1000 / txn if txn else float("nan"),
            "cpu_bound_rps_per_core": 1000 / total if total else float("nan"),
        }
    return result


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=None, help="concurrent clients (default 200; quick 50)")
    p.add_argument("--candidates", type=int, default=64, help="candidates in the round")
    p.add_argument("--rounds", type=int, default=None, help="rounds of round.get + features.put (default 3; quick 1)")
    p.add_argument("--time-limit-s", type=float, default=120.0, help="bound on the whole load run (after start-up)")
    p.add_argument(
        "--no-breakdown", dest="breakdown", action="store_false", help="skip the in-process timing of each server step"
    )
    args = p.parse_args()
    n = args.clients or (50 if args.quick else 200)
    args.rounds = args.rounds or (1 if args.quick else 3)
    m = args.candidates

    from lada_client.common.crypto import Identity
    from lada_client.common.wire import Ack, FeatureUpload, RoundInfo, RoundQuery
    from lada_client.scoring.features import FEATURE_NAMES
    from lada_client.transport import RetryPolicy, Transport
    from lada_coordinator.credentials import issue_tokens, load_identity
    from lada_coordinator.store import Store

    paths = C.world()
    samples = C.public_samples(paths)
    cands = C.candidates(samples, m)
    names = list(FEATURE_NAMES)
    phases: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lada-bench-load-") as tmp:
        tmp = Path(tmp)
        port = free_port()
        config = {
            "db_path": str(tmp / "coordinator.sqlite"),
            "state_dir": str(tmp / "state"),
            "llm_dir": str(paths["llm"]),
            "public_data": str(paths["data"]),
            "host": "127.0.0.1",
            "port": port,
            "rounds": 2,
            "min_clients": n,
            "candidates_per_round": m,
        }
        (tmp / "coordinator.json").write_text(json.dumps(config))
        store = Store(Path(config["db_path"]))
        tokens = issue_tokens(store, load_identity(Path(config["state_dir"])), n)
        log_path = tmp / "server.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [sys.executable, str(C.BENCH_DIR / "_load_server.py"), "--config", str(tmp / "coordinator.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, server, 120)
            deadline = time.monotonic() + args.time_limit_s
            C.say(
                f"coordinator on {url} (pid {server.pid}); {n} clients, {m} candidates, "
                f"time limit {args.time_limit_s:.0f}s"
            )
            clients = [
                Transport(url, Identity.generate(), timeout_s=args.time_limit_s, retry=RetryPolicy(attempts=1))
                for _ in range(n)
            ]

            def enroll(i: int, t: Transport) -> None:
                t.enroll(tokens[i], f"load{i:04d}")

            phases.append(run_phase("enroll", clients, enroll, deadline))
            rng = np.random.default_rng(0)
            stored = {}
            for r in range(1, args.rounds + 1):
                info = RoundInfo(
                    round=r, phase="features", total_rounds=args.rounds + 1, candidates=cands, feature_names=names
                )
                store.open_round(r, info.model_dump(), {})

                def get_round(i: int, t: Transport, r=r) -> None:
                    got = t.call("round.get", RoundQuery(), r, RoundInfo)
                    if got.round != r or len(got.candidates) != m:
                        raise RuntimeError(f"round info for round {got.round} carried {len(got.candidates)} candidates")

                uploads = [
                    FeatureUpload(
                        round=r,
                        feature_names=names,
                        sample_ids=[c.sample_id for c in cands],
                        features=rng.normal(2.0, 1.0, (m, len(names))).tolist(),
                    )
                    for _ in range(n)
                ]

                def put_features(i: int, t: Transport, r=r, uploads=uploads) -> None:
                    ack = t.call("features.put", uploads[i], r, Ack)
                    if ack.message != "stored":
                        raise RuntimeError(f"upload answered {ack.message!r}")

                for name, action in (("round.get", get_round), ("features.put", put_features)):
                    if time.monotonic() < deadline:
                        phases.append({"round": r, **run_phase(f"{name} r{r}", clients, action, deadline)})
                        phases[-1]["phase"] = name
                stored[r] = len(store.uploads(r, "features.put"))
            request_bytes = sum(t.bytes_sent for t in clients)
            for t in clients:
                t.close()
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
            store.close()
        server_log = log_path.read_text()[-2000:]

    breakdown = {}
    if args.breakdown:
        try:
            breakdown = server_breakdown(cands, names, 20 if args.quick else 50)
        except Exception as exc:  # noqa: BLE001 - the breakdown mirrors internals; report, do not fail the run
            breakdown = {"error": f"{type(exc).__name__}: {exc}"}
    errors = sum(ph["errors"] for ph in phases)
    complete = (
        len(phases) == 1 + 2 * args.rounds and all(v == n for v in stored.values()) and len(stored) == args.rounds
    )
    summary = []
    for name in ("enroll", "round.get", "features.put"):
        runs = [ph for ph in phases if ph["phase"] == name]
        if runs:
            summary.append(
                {
                    "phase": name,
                    "runs": len(runs),
                    "requests": sum(ph["requests"] for ph in runs),
                    "errors": sum(ph["errors"] for ph in runs),
                    **{
                        k: C.median([ph[k] for ph in runs])
                        for k in ("wall_s", "throughput_rps", "p50_ms", "p90_ms", "p99_ms", "max_ms")
                    },
                }
            )
    C.say()
    C.say(
        C.table(
            ["phase", "rounds", "requests", "errors", "wall s", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"],
            [
                [
                    ph["phase"],
                    ph["runs"],
                    ph["requests"],
                    ph["errors"],
                    ph["wall_s"],
                    ph["throughput_rps"],
                    ph["p50_ms"],
                    ph["p90_ms"],
                    ph["p99_ms"],
                    ph["max_ms"],
                ]
                for ph in summary
            ],
            title=f"{n} concurrent clients, {m} candidates; medians over rounds",
        )
    )
    C.say(
        f"\nuploads in SQLite per round: {stored} (expected {n} each); errors: {errors}"
        + ("" if complete else " (run incomplete)")
    )
    if "error" in breakdown:
        C.say(f"\nserver step breakdown unavailable: {breakdown['error']}")
    elif breakdown:
        kinds = list(breakdown)
        step_names = list(dict.fromkeys(k for kind in kinds for k in breakdown[kind]["steps_ms"]))
        C.say()
        C.say(
            C.table(
                ["server step (ms, one request)", *kinds],
                [[name, *(breakdown[k]["steps_ms"].get(name, float("nan")) for k in kinds)] for name in step_names]
                + [
                    ["total", *(breakdown[k]["total_ms"] for k in kinds)],
                    ["in the store transaction", *(breakdown[k]["in_transaction_ms"] for k in kinds)],
                    ["bound: 1/transaction (req/s)", *(breakdown[k]["serial_bound_rps"] for k in kinds)],
                    ["bound: 1/total per core (req/s)", *(breakdown[k]["cpu_bound_rps_per_core"] for k in kinds)],
                ],
            )
        )
    for ph in phases:
        for e in ph["error_samples"]:
            C.say(f"  {ph['phase']} error: {e}")
    if server_log.strip():
        C.say(f"server log tail:\n{server_log}")
    path = C.write_results(
        NAME,
        {
            "settings": {
                "clients": n,
                "candidates": m,
                "rounds": args.rounds,
                "time_limit_s": args.time_limit_s,
                "quick": args.quick,
                "server": "uvicorn, 1 process, round engine not started; clients: 1 thread each in one process",
            },
            "summary": summary,
            "server_steps": breakdown,
            "phases": phases,
            "uploads_stored": stored,
            "errors": errors,
            "bytes_sent_by_clients": request_bytes,
            "server_log_tail": server_log,
        },
        args.out,
    )
    C.say(f"results: {path}")
    return 0 if errors == 0 and complete else 1


if __name__ == "__main__":
    sys.exit(main())
