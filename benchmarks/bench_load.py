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

The store variants (``--variants``) run one after the other within each repeat, each with its own
coordinator process and database: ``per-request`` (one transaction and one fsync per request) and
``group`` (group commit, the default: requests share a commit, read-only kinds skip the fsync).
Both acknowledge an upload only once it is committed and its WAL flushed.

    python benchmarks/bench_load.py [--quick] [--clients 200] [--candidates 64] [--repeats 1]
        [--variants per-request,group] [--time-limit-s 120]
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
        "label": name,
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
    from lada_client.common import attachments
    from lada_client.common.crypto import Direction, Identity, PublicIdentity, open_envelope, seal
    from lada_client.common.wire import (
        Ack,
        Capabilities,
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
        store.open_round(1, info)
        rng = np.random.default_rng(1)
        for k in range(iterations):
            ident = Identity.generate()
            keys = ident.public.to_b64()
            cid = f"step{k:04d}"
            store.add_client(ClientRecord(cid, cid, keys["sign_key"], keys["kex_key"], "", "", Capabilities(), 0, 0, 0))
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
                body = seal(
                    attachments.dump(payload), header, ident, coordinator.public, Direction.TO_COORDINATOR
                ).to_bytes()
                t0 = time.perf_counter()
                env = SealedEnvelope.from_bytes(body)
                t = tick(kind, "parse envelope", t0)
                rec = store.client(cid)
                t = tick(kind, "client lookup", t)
                sender = PublicIdentity.from_b64(rec.sign_key, rec.kex_key)
                plain = open_envelope(env, sender, coordinator, Direction.TO_COORDINATOR)
                t = tick(kind, "open envelope", t)
                got = attachments.load(payload_type, plain)
                t = tick(kind, "validate payload", t)
                store.current_round()
                round_info, _ = store.round_info(1)  # parsed into its model by the store
                t = tick(kind, "read round (json)", t)
                with store.transaction() as db:
                    t = tick(kind, "lock + BEGIN", t)
                    if kind == "features.put":
                        store.put_upload(db, 1, cid, kind, got.model_dump_json())
                        reply = Ack(message="stored")
                    else:
                        reply = round_info.model_copy(update={"secagg_configs": {}, "secagg_group": None})
                    t = tick(kind, "handler body", t)
                    out = seal(
                        attachments.dump(reply),
                        header.model_copy(update={"sent_at": time.time()}),
                        coordinator,
                        sender,
                        Direction.TO_CLIENT,
                    )
                    t = tick(kind, "seal reply", t)
                    sizes = len(body), len(out.to_bytes())
                    t = tick(kind, "serialise reply + sizes", t)
                    store.accept(db, cid, seq, *sizes)
                    t = tick(kind, "accept (UPDATE)", t)
                tick(kind, "COMMIT (fsync)", t)
        store.close()
    in_txn = (
        "lock + BEGIN",
        "handler body",
        "seal reply",
        "serialise reply + sizes",
        "accept (UPDATE)",
        "COMMIT (fsync)",
    )
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


#: the store variants compared side by side (``CoordinatorConfig.group_commit``); the same durability:
#: every acknowledged upload is committed and its WAL flushed before the reply
VARIANTS = {"per-request": False, "group": True}


def load_run(variant: str, args, paths: dict, cands: list, names: list[str]) -> dict:
    """One coordinator process with the ``variant`` store, the clients enrolled, ``args.rounds`` rounds."""
    from lada_client.common.crypto import Identity
    from lada_client.common.wire import Ack, FeatureUpload, RoundInfo, RoundQuery
    from lada_client.transport import RetryPolicy, Transport
    from lada_coordinator.credentials import issue_tokens, load_identity
    from lada_coordinator.store import Store

    n, m = args.clients, args.candidates
    phases: list[dict] = []
    stored: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="lada-bench-load-") as tmp_dir:
        tmp = Path(tmp_dir)
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
            "group_commit": VARIANTS[variant],
            # the server sheds load above this with 503 (a device retries); here every client is
            # let in, so that what is measured is serving, not shedding
            "max_concurrent_requests": max(512, n),
        }
        (tmp / "coordinator.json").write_text(json.dumps(config))
        store = Store(Path(config["db_path"]))
        tokens = issue_tokens(store, load_identity(Path(config["state_dir"])), n)
        log_path = tmp / "server.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [
                    sys.executable,
                    str(C.BENCH_DIR / "_load_server.py"),
                    "--config",
                    str(tmp / "coordinator.json"),
                    "--stats-out",
                    str(tmp / "store_stats.json"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, server, 120)
            deadline = time.monotonic() + args.time_limit_s
            C.say(f"[{variant}] coordinator on {url} (pid {server.pid}); {n} clients, {m} candidates")
            clients = [
                Transport(url, Identity.generate(), timeout_s=args.time_limit_s, retry=RetryPolicy(attempts=1))
                for _ in range(n)
            ]

            def enroll(i: int, t: Transport) -> None:
                t.enroll(tokens[i], f"load{i:04d}")

            phases.append({"phase": "enroll", **run_phase("enroll", clients, enroll, deadline)})
            rng = np.random.default_rng(0)
            for r in range(1, args.rounds + 1):
                info = RoundInfo(
                    round=r, phase="features", total_rounds=args.rounds + 1, candidates=cands, feature_names=names
                )
                store.open_round(r, info)

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
                        phases.append(
                            {"round": r, "phase": name, **run_phase(f"{name} r{r}", clients, action, deadline)}
                        )
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
        stats_path = tmp / "store_stats.json"
        store_stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    complete = (
        len(phases) == 1 + 2 * args.rounds and len(stored) == args.rounds and all(v == n for v in stored.values())
    )
    return {
        "variant": variant,
        "phases": phases,
        "uploads_stored": stored,
        "errors": sum(ph["errors"] for ph in phases),
        "complete": complete,
        "bytes_sent_by_clients": request_bytes,
        "store_stats": store_stats,  # the server's transactions and commits (requests per commit)
        "server_log_tail": server_log,
    }


def store_bound(variant: str, threads: int, per_thread: int, payload: str) -> dict:
    """The store alone, in process: ``threads`` threads each storing ``per_thread`` uploads the way
    ``features.put`` does (insert + replay counter, one durable transaction each), no HTTP, no crypto.
    Its rate bounds what the coordinator can acknowledge, whatever the CPU spent around it."""
    from lada_client.common.wire import Capabilities
    from lada_coordinator.store import ClientRecord, Store

    with tempfile.TemporaryDirectory(prefix="lada-bench-store-") as tmp:
        store = Store(Path(tmp) / "c.sqlite", group_commit=VARIANTS[variant])
        for i in range(threads):
            store.add_client(ClientRecord(f"c{i}", f"c{i}", f"s{i}", f"k{i}", "", "", Capabilities(), 0, 0, 0))
        before = dict(store.stats)
        barrier = threading.Barrier(threads + 1)

        def worker(i: int) -> None:
            barrier.wait()
            for r in range(1, per_thread + 1):
                with store.transaction() as db:
                    store.put_upload(db, r, f"c{i}", "features.put", payload)
                    store.accept(db, f"c{i}", r, len(payload), 100)

        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        barrier.wait()
        started = time.perf_counter()
        for t in pool:
            t.join()
        wall = time.perf_counter() - started
        done = store.stats["transactions"] - before["transactions"]
        commits = store.stats["commits"] - before["commits"]
        stored = sum(len(store.uploaders(r, "features.put")) for r in range(1, per_thread + 1))
        store.close()
    return {
        "variant": variant,
        "transactions": done,
        "commits": commits,
        "stored": stored,
        "wall_s": wall,
        "tx_per_s": done / wall,
        "requests_per_commit": done / commits if commits else float("nan"),
    }


def summarise(runs: list[dict]) -> list[dict]:
    """Per variant and phase: medians over rounds and repeats, requests and errors summed."""
    out = []
    for variant in VARIANTS:
        for name in ("enroll", "round.get", "features.put"):
            got = [ph for run in runs if run["variant"] == variant for ph in run["phases"] if ph["phase"] == name]
            if got:
                out.append(
                    {
                        "variant": variant,
                        "phase": name,
                        "runs": len(got),
                        "requests": sum(ph["requests"] for ph in got),
                        "errors": sum(ph["errors"] for ph in got),
                        **{
                            k: C.median([ph[k] for ph in got])
                            for k in ("wall_s", "throughput_rps", "p50_ms", "p90_ms", "p99_ms", "max_ms")
                        },
                    }
                )
    return out


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=None, help="concurrent clients (default 200; quick 50)")
    p.add_argument("--candidates", type=int, default=64, help="candidates in the round")
    p.add_argument("--rounds", type=int, default=None, help="rounds of round.get + features.put (default 3; quick 1)")
    p.add_argument(
        "--time-limit-s", type=float, default=120.0, help="bound on each variant's load run (after start-up)"
    )
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"store variants to compare, in order (of {', '.join(VARIANTS)})"
    )
    p.add_argument(
        "--no-breakdown", dest="breakdown", action="store_false", help="skip the in-process timing of each server step"
    )
    args = p.parse_args()
    args.clients = args.clients or (50 if args.quick else 200)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.repeats = args.repeats or 1
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        p.error(f"--variants: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(VARIANTS)}")
    n, m = args.clients, args.candidates

    from lada_client.scoring.features import FEATURE_NAMES

    paths = C.world()
    cands = C.candidates(C.public_samples(paths), m)
    names = list(FEATURE_NAMES)
    runs = []
    for repeat in range(args.repeats):  # the variants alternate within each repeat: same machine state
        for variant in variants:
            C.say(f"repeat {repeat + 1}/{args.repeats}, store {variant}")
            runs.append({"repeat": repeat, **load_run(variant, args, paths, cands, names)})
    payload = json.dumps({"features": np.random.default_rng(0).normal(2.0, 1.0, (m, len(names))).tolist()})
    bound = []
    for repeat in range(args.repeats):
        for variant in variants:
            got = store_bound(variant, n, 2 if args.quick else 5, payload)
            C.say(
                f"store alone [{variant}]: {got['transactions']} uploads in {got['wall_s']:.2f}s, "
                f"{got['tx_per_s']:.0f}/s, {got['requests_per_commit']:.1f} per commit"
            )
            bound.append({"repeat": repeat, **got})

    breakdown = {}
    if args.breakdown:
        try:
            breakdown = server_breakdown(cands, names, 20 if args.quick else 50)
        except Exception as exc:  # noqa: BLE001 - the breakdown mirrors internals; report, do not fail the run
            breakdown = {"error": f"{type(exc).__name__}: {exc}"}
    errors = sum(run["errors"] for run in runs)
    complete = all(run["complete"] for run in runs)
    summary = summarise(runs)
    C.say()
    C.say(
        C.table(
            ["store", "phase", "runs", "requests", "errors", "wall s", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"],
            [
                [
                    ph["variant"],
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
            title=f"{n} concurrent clients, {m} candidates; medians over rounds and repeats",
        )
    )
    ratios = {}
    for name in ("round.get", "features.put"):
        per_repeat = []
        for repeat in range(args.repeats):
            rps = {}
            for run in runs:
                if run["repeat"] == repeat:
                    got = [ph["throughput_rps"] for ph in run["phases"] if ph["phase"] == name]
                    if got:
                        rps[run["variant"]] = C.median(got)
            if {"group", "per-request"} <= set(rps):
                per_repeat.append(rps["group"] / rps["per-request"])
        if per_repeat:
            ratios[name] = C.median(per_repeat)
    if ratios:
        C.say(
            "\nreq/s, group commit / one commit per request (median of per-repeat ratios): "
            + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
        )
    for run in runs:
        st = run["store_stats"]
        if st.get("commits"):
            C.say(
                f"[{run['variant']}] server store: {st['transactions']} transactions in {st['commits']} commits "
                f"({st['transactions'] / st['commits']:.1f} per commit; "
                f"{st.get('commits_without_fsync', 0)} without fsync)"
            )
        C.say(
            f"[{run['variant']}] uploads in SQLite per round: {run['uploads_stored']} (expected {n} each); "
            f"errors: {run['errors']}" + ("" if run["complete"] else " (run incomplete)")
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
    for run in runs:
        for ph in run["phases"]:
            for e in ph["error_samples"]:
                C.say(f"  [{run['variant']}] {ph['phase']} error: {e}")
        if run["errors"] and run["server_log_tail"].strip():
            C.say(f"[{run['variant']}] server log tail:\n{run['server_log_tail']}")
    path = C.write_results(
        NAME,
        {
            "settings": {
                "clients": n,
                "candidates": m,
                "rounds": args.rounds,
                "repeats": args.repeats,
                "variants": variants,
                "time_limit_s": args.time_limit_s,
                "quick": args.quick,
                "server": "uvicorn, 1 process, round engine not started; clients: 1 thread each in one process",
            },
            "summary": summary,
            "ratios_group_over_per_request": ratios,
            "store_alone": bound,
            "server_steps": breakdown,
            "runs": runs,
            "errors": errors,
        },
        args.out,
    )
    C.say(f"results: {path}")
    return 0 if errors == 0 and complete else 1


if __name__ == "__main__":
    sys.exit(main())
