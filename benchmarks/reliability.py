"""Reliability figures: faults injected into a real coordinator, uploads lost, requests fuzzed.

    python benchmarks/reliability.py [--rounds 3] [--kills-per-round 2] [--fuzz 1000] [--upload-mib 40]
    python benchmarks/reliability.py --upload-only        # just the resumed large upload

Runs a real coordinator process (SQLite, HTTP on 127.0.0.1) with real sealed clients; while the
clients upload features and rewards, the coordinator is SIGKILLed and restarted at random moments.
Every upload the coordinator acknowledged must be in its database afterwards ("lost" must be 0).
Then the schema fuzzer runs against the API (no 5xx, no state change on rejected input).
Finally a large sealed ``secagg.put`` (``--upload-mib``, a masked adapter vector) goes as a chunked
upload while the coordinator is SIGKILLed mid-body and restarted: it must resume with the missing
chunks only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from lada_client.common.crypto import Identity
from lada_client.common.secagg import MaskedInput
from lada_client.common.wire import (
    Ack, Allocation, AllocationQuery, EnrollRequest, FeatureUpload, RewardReport, RoundInfo, RoundQuery, SecAggUpload,
    secagg_round_id,
)
from lada_client.transport import RetryPolicy, Transport
from lada_coordinator.federation import FederationSettings, prepare
from lada_coordinator.store import Store

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache" / "reliability"


def _start(cfg: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lada_coordinator.cli", "serve", "--config", str(cfg)],
                            stdout=open(log, "a"), stderr=subprocess.STDOUT)


def _status(url: str) -> dict | None:
    try:
        return httpx.get(f"{url}/v1/status", timeout=5).json()
    except httpx.HTTPError:
        return None


def _wait(url: str, t: int, phases: tuple[str, ...], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = _status(url)
        if s and s["round"] == t and s["phase"] in phases:
            return
        time.sleep(0.3)
    raise RuntimeError(f"round {t} did not reach {phases}")


def resumed_upload(paths: dict, port: int, mib: float, seed: int) -> dict:
    """One large ``secagg.put`` in 4 MiB chunks; the coordinator is SIGKILLed after 40% of them."""
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="lada-upload-"))
    cfg = {"db_path": str(tmp / "c.sqlite"), "state_dir": str(tmp / "state"), "llm_dir": str(paths["llm"]),
           "public_data": str(paths["data"]), "port": port, "min_clients": 99}  # the engine idles; we drive the round
    (tmp / "c.json").write_text(json.dumps(cfg))
    store = Store(tmp / "c.sqlite")
    token = store.issue_token()
    store.open_round(1, RoundInfo(round=1, phase="features", total_rounds=1, host_framework="cotuning").model_dump(), {})
    store.set_phase(1, "training")
    log = tmp / "coordinator.log"
    proc = _start(tmp / "c.json", log)
    ident = Identity.generate()
    t = Transport(url, ident, timeout_s=60, retry=RetryPolicy(attempts=40, initial_backoff_s=0.3, max_backoff_s=1.0))
    while True:
        try:
            t.enroll(EnrollRequest(token=token, client_name="big", model_name="smollm2", **ident.public.to_b64()))
            break
        except Exception:
            time.sleep(0.3)
    store.put_secagg(1, "smollm2", "roster", {"participants": [{"client_id": t.client_id}]})
    n_values = int(mib * 2**20 * 9 / 64)  # sealed body ~ 16/9 x 4 bytes per value
    vector = np.random.default_rng(seed).integers(0, 2**32, n_values, dtype=np.uint64).astype(np.uint32)
    masked = MaskedInput(t.client_id, secagg_round_id(1, "smollm2"), (), vector)
    payload = SecAggUpload(round=1, step="masked", body=masked.to_dict())
    sealed_bytes = len(t._seal("secagg.put", payload.model_dump_json().encode(), 1)[1])
    n_chunks = -(-sealed_bytes // t.upload_chunk_bytes)
    kill_after = max(1, int(n_chunks * 0.4))
    stats = {"ok": 0, "refused": 0, "delivered_bytes": 0}
    post = t._http.post

    def post_and_kill(path, **kw):
        nonlocal proc
        try:
            response = post(path, **kw)
        except httpx.HTTPError:
            stats["refused"] += path == "/v1/upload/chunk"
            raise
        stats["delivered_bytes"] += len(kw.get("content", b""))
        if path == "/v1/upload/chunk" and response.status_code == 200:
            stats["ok"] += 1
            if stats["ok"] == kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                proc = _start(tmp / "c.json", log)
        return response

    t._http.post = post_and_kill
    started = time.perf_counter()
    try:
        ack = t.call("secagg.put", payload, 1, Ack)
        seconds = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(10)
    stored = store.uploads(1, "secagg.masked").get(t.client_id)
    intact = stored is not None and MaskedInput.from_dict(stored["body"]).vector.tobytes() == vector.tobytes()
    store.close()
    return {
        "sealed_body_mib": round(sealed_bytes / 2**20, 1), "vector_values": n_values, "chunk_mib": t.upload_chunk_bytes / 2**20,
        "chunks": n_chunks, "sigkill_after_chunks": kill_after, "chunk_requests_refused_while_down": stats["refused"],
        "chunks_delivered": stats["ok"], "chunks_resent": stats["ok"] - n_chunks,
        "mib_on_the_wire": round(stats["delivered_bytes"] / 2**20, 1), "ack": ack.message, "stored_intact": intact,
        "seconds_including_restart": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--kills-per-round", type=int, default=2)
    ap.add_argument("--fuzz", type=int, default=1000, help="requests generated by the schema fuzzer")
    ap.add_argument("--port", type=int, default=8931)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--upload-mib", type=float, default=40.0, help="sealed size of the resumed chunked upload (0 = skip)")
    ap.add_argument("--upload-only", action="store_true", help="only the resumed chunked upload")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    paths = prepare(FederationSettings(workdir=CACHE, clients=3, n_train=20, n_test=8, n_public=120, llm_warmup_steps=2, slm_warmup_steps=2))
    out = ROOT / "benchmarks" / "results" / "reliability.json"
    if args.upload_only:
        upload = resumed_upload(paths, args.port, args.upload_mib, args.seed)
        print(json.dumps(upload, indent=2))
        results = json.loads(out.read_text()) if out.exists() else {}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**results, "resumed_upload": upload}, indent=2))
        sys.exit(0 if upload["stored_intact"] and upload["chunks_resent"] == 0 else 1)
    url = f"http://127.0.0.1:{args.port}"
    tmp = Path(tempfile.mkdtemp(prefix="lada-reliability-"))
    cfg = {
        "db_path": str(tmp / "c.sqlite"), "state_dir": str(tmp / "state"), "llm_dir": str(paths["llm"]),
        "public_data": str(paths["data"]), "port": args.port, "rounds": args.rounds, "min_clients": args.clients,
        "candidates_per_round": 8, "offer_questions": 0, "slm_filter": {"budget": 4}, "train_llm": False,
    }
    (tmp / "c.json").write_text(json.dumps(cfg))
    store = Store(tmp / "c.sqlite")
    tokens = [store.issue_token() for _ in range(args.clients)]
    store.close()
    log = tmp / "coordinator.log"
    proc = _start(tmp / "c.json", log)
    retry = RetryPolicy(attempts=12, initial_backoff_s=0.3, max_backoff_s=4.0)
    clients: list[Transport] = []
    for i, token in enumerate(tokens):
        ident = Identity.generate()
        t = Transport(url, ident, timeout_s=10, retry=retry)
        while True:
            try:
                keys = ident.public.to_b64()
                t.enroll(EnrollRequest(token=token, client_name=f"d{i}", sign_key=keys["sign_key"], kex_key=keys["kex_key"]))
                break
            except Exception:
                time.sleep(0.3)
        clients.append(t)

    acked: list[tuple[int, str, str]] = []
    kills = 0
    lock = threading.Lock()

    def storm(action) -> None:
        """Run one upload per client in threads while the coordinator is killed and restarted."""
        nonlocal proc, kills
        threads = [threading.Thread(target=action, args=(c,)) for c in clients]
        for th in threads:
            th.start()
        for _ in range(args.kills_per_round):
            time.sleep(rng.uniform(0.05, 0.6))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            kills += 1
            proc = _start(tmp / "c.json", log)
        for th in threads:
            th.join(300)

    started = time.perf_counter()
    try:
        for t in range(1, args.rounds + 1):
            _wait(url, t, ("features",))
            info = clients[0].call("round.get", RoundQuery(), t, RoundInfo)
            ids = [c.sample_id for c in info.candidates]
            z = np.random.default_rng(t).uniform(0, 3, (len(ids), len(info.feature_names))).tolist()

            def put_features(c: Transport, t=t, ids=ids, z=z, names=info.feature_names) -> None:
                c.call("features.put", FeatureUpload(round=t, feature_names=names, sample_ids=ids, features=z), t, Ack)
                with lock:
                    acked.append((t, c.client_id, "features.put"))

            storm(put_features)
            _wait(url, t, ("training",))
            for c in clients:
                assert c.call("allocation.get", AllocationQuery(round=t), t, Allocation).status == "ready"

            def put_reward(c: Transport, t=t) -> None:
                r = RewardReport(round=t, reward=0.1, ppl_before=2.0, ppl_after=1.8, n_allocated=4, test_accuracy=0.0, bytes_sent=1, bytes_received=1)
                c.call("reward.put", r, t, Ack)
                with lock:
                    acked.append((t, c.client_id, "reward.put"))

            storm(put_reward)
            _wait(url, t, ("closed", "finished"))
    finally:
        proc.terminate()
        proc.wait(10)
    store = Store(tmp / "c.sqlite")
    lost = [a for a in acked if a[1] not in store.uploads(a[0], a[2])]
    rounds_closed = sum(1 for m in store.round_metrics() if m["phase"] in ("closed", "finished"))
    store.close()
    faults = {"coordinator_sigkills": kills, "acknowledged_uploads": len(acked), "uploads_lost": len(lost),
              "rounds_completed": rounds_closed, "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(faults, indent=2))

    fuzz_report = tmp / "fuzz.json"
    env = {**os.environ, "LADA_FUZZ_EXAMPLES": str(args.fuzz), "LADA_FUZZ_REPORT": str(fuzz_report)}
    rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/coordinator/server/test_fuzz.py"], cwd=ROOT, env=env).returncode
    fuzz = json.loads(fuzz_report.read_text()) if fuzz_report.exists() else {}
    fuzz["passed"] = rc == 0
    print(json.dumps(fuzz, indent=2))
    upload = resumed_upload(paths, args.port, args.upload_mib, args.seed) if args.upload_mib > 0 else None
    print(json.dumps(upload, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"faults": faults, "fuzz": fuzz, "resumed_upload": upload}, indent=2))
    if lost or rc != 0 or (upload is not None and not (upload["stored_intact"] and upload["chunks_resent"] == 0)):
        sys.exit(1)


if __name__ == "__main__":
    main()
