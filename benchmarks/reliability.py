"""Reliability figures: faults injected into a real coordinator, uploads lost, requests fuzzed,
hostile devices held.

    python benchmarks/reliability.py [--rounds 3] [--kills-per-round 2] [--fuzz 1000] [--upload-mib 40]
    python benchmarks/reliability.py --upload-only        # just the resumed large upload
    python benchmarks/reliability.py --hostile-only       # just the hostile-client suite

Runs a real coordinator process (SQLite, HTTP on 127.0.0.1) with real sealed clients; while the
clients upload features and rewards, the coordinator is SIGKILLed and restarted at random moments.
Every upload the coordinator acknowledged must be in its database afterwards ("lost" must be 0).
Then the schema fuzzer runs against the API (no 5xx, no state change on rejected input).
Then a large sealed ``secagg.put`` (``--upload-mib``, a masked adapter vector) goes as a chunked
upload while the coordinator is SIGKILLed mid-body and restarted: it must resume with the missing
chunks only. Last, the hostile-client suite (``_hostile.py``): every attack of its catalogue against
a coordinator process, then a real co-tuning federation with one hostile member among honest
devices; every attack must be held, every round finish, and the honest results be complete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

import _hostile
from lada_client.common import attachments
from lada_client.common.crypto import Identity
from lada_client.common.secagg import MaskedInput, SecAggClient, SecAggConfig
from lada_client.common.wire import (
    Ack,
    Allocation,
    AllocationQuery,
    Candidate,
    Capabilities,
    FeatureUpload,
    Phase,
    PublicQuestion,
    RewardReport,
    RoundInfo,
    RoundQuery,
    SecAggUpload,
    secagg_round_id,
)
from lada_client.transport import RetryPolicy, Transport
from lada_coordinator.aggregation.secure import SecAggSettings, SecureAggregation, group_id
from lada_coordinator.allocation.allocator import SLM
from lada_coordinator.config import CoordinatorConfig
from lada_coordinator.credentials import issue_tokens, load_identity, operator_token
from lada_coordinator.federation import FederationSettings, prepare
from lada_coordinator.store import ClientRecord, Store

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache" / "reliability"


def _start(cfg: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lada_coordinator.cli", "serve", "--config", str(cfg)],
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
    )


def _status(url: str, state_dir: Path) -> dict | None:
    try:
        return httpx.get(
            f"{url}/v1/status", timeout=5, headers={"Authorization": f"Bearer {operator_token(state_dir)}"}
        ).json()
    except httpx.HTTPError:
        return None


def _coordinator(tmp: Path, cfg: dict, n_tokens: int) -> list[str]:
    """Write the config, make the coordinator's keys and operator token, return enrollment tokens."""
    (tmp / "c.json").write_text(json.dumps(cfg))
    store = Store(Path(cfg["db_path"]))
    tokens = issue_tokens(store, load_identity(Path(cfg["state_dir"])), n_tokens) if n_tokens else []
    store.close()
    operator_token(Path(cfg["state_dir"]))
    return tokens


def _enroll(t: Transport, token: str, name: str, **kwargs) -> None:
    """Enroll, waiting for a coordinator that is still starting."""
    deadline = time.monotonic() + 120
    while True:
        try:
            t.enroll(token, name, **kwargs)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _wait(url: str, state_dir: Path, t: int, phases: tuple[str, ...], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = _status(url, state_dir)
        if s and s["round"] == t and s["phase"] in phases:
            return
        time.sleep(0.3)
    raise RuntimeError(f"round {t} did not reach {phases}")


def resumed_upload(paths: dict, port: int, mib: float, seed: int) -> dict:
    """One large ``secagg.put`` in 4 MiB chunks; the coordinator is SIGKILLed after 40% of them.

    The masked vector is a real one: the uploading device and two helpers form a secure-aggregation
    group whose roster and routed shares are set up through the coordinator's own code, so the
    upload passes every check the coordinator makes of a masked input."""
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="lada-upload-"))
    cfg = {
        "db_path": str(tmp / "c.sqlite"),
        "state_dir": str(tmp / "state"),
        "llm_dir": str(paths["llm"]),
        "public_data": str(paths["data"]),
        "port": port,
        "min_clients": 99,
    }  # the engine idles; we drive the round
    (token,) = _coordinator(tmp, cfg, 1)
    store = Store(tmp / "c.sqlite")
    log = tmp / "coordinator.log"
    proc = _start(tmp / "c.json", log)
    t = Transport(
        url, Identity.generate(), timeout_s=60, retry=RetryPolicy(attempts=40, initial_backoff_s=0.3, max_backoff_s=1.0)
    )
    _enroll(t, token, "big", model_name="smollm2")
    n_values = int(mib * 2**20 * 9 / 64)  # sealed body ~ 16/9 x 4 bytes per value
    helpers = [
        ClientRecord(f"helper{i}-0", f"helper{i}", f"s{i}", f"k{i}", "", "smollm2", Capabilities(), 0, 0, 0)
        for i in range(2)
    ]
    for h in helpers:
        store.add_client(h)
    members = [store.client(t.client_id), *helpers]
    secure = SecureAggregation(store, SecAggSettings())
    configs = secure.configs(members)
    group = group_id(members[0])
    info = RoundInfo(round=1, phase="features", total_rounds=1, host_framework="cotuning", secagg_configs=configs)
    store.open_round(1, info)
    parties = {m.client_id: SecAggClient(m.client_id, secagg_round_id(1, group), configs[group]) for m in members}
    secure.setup(
        1,
        {  # each member's feature upload, as far as key advertisement reads it
            c: FeatureUpload(
                round=1,
                feature_names=["slm_path_nll"],
                sample_ids=[],
                features=[],
                secagg_keys=p.advertise(),
                adapter_size=n_values,
            )
            for c, p in parties.items()
        },
        members,
        configs,
    )
    roster = store.secagg(1, group, "roster")
    assert roster is not None, "the roster was not stored"
    for cid, party in parties.items():
        with store.transaction() as db:
            body = SecAggUpload(round=1, step="shares", body=party.share_keys(roster))
            store.put_upload(db, 1, cid, "secagg.shares", body.model_dump_json())
    secure.route(1, group)
    store.set_phase(1, "training")
    routed = store.secagg(1, group, "routed")
    assert routed is not None, "the shares were not routed"
    inbox = routed.inbox[t.client_id]
    update = np.random.default_rng(seed).uniform(-1, 1, n_values)
    masked = parties[t.client_id].masked_input(update, inbox)
    payload = SecAggUpload(round=1, step="masked", body=masked)
    sealed_bytes = len(t._seal("secagg.put", attachments.dump(payload), 1)[1])
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
    import psutil

    baseline = round(psutil.Process(proc.pid).memory_info().rss / 2**20, 1)
    peak = _PeakRSS(lambda: proc.pid)
    try:
        ack = t.call("secagg.put", payload, 1, Ack)
        seconds = time.perf_counter() - started
    finally:
        peak.stop()
        proc.terminate()
        proc.wait(10)
    stored = store.uploads(1, "secagg.masked").get(t.client_id)
    intact = (
        stored is not None
        and isinstance(stored.body, MaskedInput)
        and stored.body.vector.tobytes() == masked.vector.tobytes()
    )
    store.close()
    return {
        "sealed_body_mib": round(sealed_bytes / 2**20, 1),
        "vector_values": n_values,
        "chunk_mib": t.upload_chunk_bytes / 2**20,
        "chunks": n_chunks,
        "sigkill_after_chunks": kill_after,
        "chunk_requests_refused_while_down": stats["refused"],
        "chunks_delivered": stats["ok"],
        "chunks_resent": stats["ok"] - n_chunks,
        "mib_on_the_wire": round(stats["delivered_bytes"] / 2**20, 1),
        "ack": ack.message,
        "stored_intact": intact,
        "seconds_including_restart": round(seconds, 1),
        "coordinator_rss_mib_before": baseline,
        "coordinator_peak_rss_mib": peak.mib,
    }


class _PeakRSS:
    """Samples a process's resident memory every 50 ms in a thread; ``mib`` is the peak seen."""

    def __init__(self, pid: Callable[[], int]) -> None:
        import psutil

        self._psutil, self._pid, self._peak = psutil, pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(self._psutil.Error):
                self._peak = max(self._peak, self._psutil.Process(self._pid()).memory_info().rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return round(self._peak / 2**20, 1)


def hostile(paths: dict, port: int) -> dict:
    """The hostile-client suite: the catalogue against a coordinator process (its engine idle, the
    round set up here), then a real co-tuning federation with one hostile member."""
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="lada-hostile-"))
    cfg = {
        "db_path": str(tmp / "c.sqlite"),
        "state_dir": str(tmp / "state"),
        "llm_dir": str(paths["llm"]),
        "public_data": str(paths["data"]),
        "port": port,
        "min_clients": 999,
        "header_timeout_s": 2.0,
        "body_timeout_s": 4.0,
    }
    _coordinator(tmp, cfg, 0)
    config = CoordinatorConfig.from_dict(cfg)
    store = Store(config.db_path)
    info = RoundInfo(
        round=1,
        phase="features",
        total_rounds=1,
        feature_names=["slm_path_nll", "logp_gap"],
        host_framework="cotuning",
        candidates=[
            Candidate(
                sample_id=f"p{i}", question=f"{i}+1?", path=f"The answer is {i + 1}.", llm_logprob=-2.0, llm_tokens=6
            )
            for i in range(8)
        ],
        offer_questions=[PublicQuestion(sample_id=f"o{i}", question=f"2+{i}?", answer=str(2 + i)) for i in range(2)],
        secagg_configs={"default/any": SecAggConfig(threshold=1)},
    )
    store.open_round(1, info)

    def issue(ttl_s: float | None = None) -> str:
        return issue_tokens(store, load_identity(config.state_dir), 1, ttl_s or 3600.0)[0]

    proc = _start(tmp / "c.json", tmp / "coordinator.log")
    target = _hostile.Target(
        url,
        issue,
        config.header_timeout_s,
        config.body_timeout_s,
        config.max_body_bytes,
        enroll_burst=config.enroll_burst,
        slow_connections=1000,
    )
    while not _hostile._healthy(target):
        time.sleep(0.2)
    import psutil

    before = round(psutil.Process(proc.pid).memory_info().rss / 2**20, 1)
    peak = _PeakRSS(lambda: proc.pid)
    try:
        outcomes = _hostile.run_all(target, "any") + _hostile.run_all(target, "features")
        t = _hostile.device(target)
        t.call(
            "features.put",
            FeatureUpload(
                round=1,
                feature_names=info.feature_names,
                sample_ids=[c.sample_id for c in info.candidates],
                features=[[1.0, 0.5]] * len(info.candidates),
            ),
            1,
            Ack,
        )
        store.put_allocations(1, SLM, {t.client_id: (["p0", "p1"], "benchmark")})
        store.set_phase(1, "training")
        outcomes += _hostile.poison_reward(t, 1, 2) + _hostile.run_all(target, "last")
        alive = _hostile._healthy(target) and proc.poll() is None
    finally:
        peak.stop()
        proc.terminate()
        proc.wait(10)
    quarantined = len(store.quarantined(1))
    store.close()
    catalogue = {
        "attacks": len(outcomes),
        "held": sum(o.held for o in outcomes),
        "requests": sum(o.requests for o in outcomes),
        "coordinator_alive_after": alive,
        "devices_quarantined": quarantined,
        "coordinator_rss_mib_before": before,
        "coordinator_peak_rss_mib": peak.mib,
        "outcomes": [{"attack": o.attack, "held": o.held, "answer": o.answer} for o in outcomes],
    }
    print(json.dumps({k: v for k, v in catalogue.items() if k != "outcomes"}, indent=2))
    for o in outcomes:
        print(f"  {'held ' if o.held else 'BROKE'} {o.attack:34} {o.answer[:110]}")

    fed_settings = FederationSettings(
        workdir=CACHE / "hostile-fed",
        clients=3,
        rounds=3,
        candidates=16,
        budget=6,
        port=port,
        n_train=40,
        n_test=16,
        n_public=160,
        llm_warmup_steps=4,
        slm_warmup_steps=4,
        offer_questions=4,
        host_framework="cotuning",
        slm_presets=("slm-small",),
        epochs=1,
    )
    run = _hostile.hostile_federation(fed_settings, prepare(fed_settings))
    rounds = run["status"]["rounds"]
    federation = {
        "honest_devices": fed_settings.clients,
        "hostile_members": 1,
        "rounds": fed_settings.rounds,
        "rounds_finished": sum(r["phase"] in ("closed", "finished") for r in rounds),
        "honest_results_per_round": [len(r["clients"]) for r in rounds],
        "secure_average_contributors_per_round": [[g["contributors"] for g in r["secagg"].values()] for r in rounds],
        "hostile_quarantined_rounds": sum("mallory" in r["quarantined"] for r in rounds),
        "member_attacks": [{"attack": o.attack, "held": o.held, "answer": o.answer} for o in run["member"].outcomes],
        "engine_errors": run["status"]["engine"]["errors"],
        "honest_exit_codes": run["exit_codes"],
        "seconds": run["seconds"],
    }
    print(json.dumps(federation, indent=2))
    return {"catalogue": catalogue, "federation": federation}


def _hostile_ok(h: dict) -> bool:
    fed = h["federation"]
    return (
        h["catalogue"]["held"] == h["catalogue"]["attacks"]
        and h["catalogue"]["coordinator_alive_after"]
        and fed["rounds_finished"] == fed["rounds"]
        and all(n == fed["honest_devices"] for n in fed["honest_results_per_round"])
        and all(m["held"] for m in fed["member_attacks"])
        and not fed["engine_errors"]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--kills-per-round", type=int, default=2)
    ap.add_argument("--fuzz", type=int, default=1000, help="requests generated by the schema fuzzer")
    ap.add_argument("--port", type=int, default=8931)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--upload-mib", type=float, default=40.0, help="sealed size of the resumed chunked upload (0 = skip)"
    )
    ap.add_argument("--upload-only", action="store_true", help="only the resumed chunked upload")
    ap.add_argument("--hostile-only", action="store_true", help="only the hostile-client suite")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    paths = prepare(
        FederationSettings(
            workdir=CACHE, clients=3, n_train=20, n_test=8, n_public=120, llm_warmup_steps=2, slm_warmup_steps=2
        )
    )
    out = ROOT / "benchmarks" / "results" / "reliability.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.upload_only:
        upload = resumed_upload(paths, args.port, args.upload_mib, args.seed)
        print(json.dumps(upload, indent=2))
        out.write_text(json.dumps({**results, "resumed_upload": upload}, indent=2))
        sys.exit(0 if upload["stored_intact"] and upload["chunks_resent"] == 0 else 1)
    if args.hostile_only:
        h = hostile(paths, args.port)
        out.write_text(json.dumps({**results, "hostile": h}, indent=2, default=str))
        sys.exit(0 if _hostile_ok(h) else 1)
    url = f"http://127.0.0.1:{args.port}"
    tmp = Path(tempfile.mkdtemp(prefix="lada-reliability-"))
    cfg = {
        "db_path": str(tmp / "c.sqlite"),
        "state_dir": str(tmp / "state"),
        "llm_dir": str(paths["llm"]),
        "public_data": str(paths["data"]),
        "port": args.port,
        "rounds": args.rounds,
        "min_clients": args.clients,
        "candidates_per_round": 8,
        "offer_questions": 0,
        "slm_filter": {"budget": 4},
        "train_llm": False,
    }
    tokens = _coordinator(tmp, cfg, args.clients)
    state = tmp / "state"
    log = tmp / "coordinator.log"
    proc = _start(tmp / "c.json", log)
    retry = RetryPolicy(attempts=12, initial_backoff_s=0.3, max_backoff_s=4.0)
    clients: list[Transport] = []
    for i, token in enumerate(tokens):
        t = Transport(url, Identity.generate(), timeout_s=10, retry=retry)
        _enroll(t, token, f"d{i}")
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
            _wait(url, state, t, ("features",))
            info = clients[0].call("round.get", RoundQuery(), t, RoundInfo)
            ids = [c.sample_id for c in info.candidates]
            z = np.random.default_rng(t).uniform(0, 3, (len(ids), len(info.feature_names))).tolist()

            def put_features(c: Transport, t=t, ids=ids, z=z, names=info.feature_names) -> None:
                c.call("features.put", FeatureUpload(round=t, feature_names=names, sample_ids=ids, features=z), t, Ack)
                with lock:
                    acked.append((t, c.client_id, "features.put"))

            storm(put_features)
            _wait(url, state, t, ("training",))
            allocated = {}
            for c in clients:
                a = c.call("allocation.get", AllocationQuery(round=t), t, Allocation)
                assert a.status == "ready"
                allocated[c.client_id] = len(a.sample_ids)

            def put_reward(c: Transport, t=t, allocated=allocated) -> None:
                r = RewardReport(
                    round=t,
                    reward=0.1,
                    ppl_before=2.0,
                    ppl_after=1.8,
                    n_allocated=allocated[c.client_id],
                    test_accuracy=0.0,
                    bytes_sent=1,
                    bytes_received=1,
                )
                c.call("reward.put", r, t, Ack)
                with lock:
                    acked.append((t, c.client_id, "reward.put"))

            storm(put_reward)
            _wait(url, state, t, ("closed", "finished"))
    finally:
        proc.terminate()
        proc.wait(10)
    store = Store(tmp / "c.sqlite")
    lost = [a for a in acked if a[1] not in store.uploads(a[0], a[2])]
    rounds_closed = sum(1 for m in store.round_metrics() if m.phase in (Phase.CLOSED, Phase.FINISHED))
    store.close()
    faults = {
        "coordinator_sigkills": kills,
        "acknowledged_uploads": len(acked),
        "uploads_lost": len(lost),
        "rounds_completed": rounds_closed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(faults, indent=2))

    fuzz_report = tmp / "fuzz.json"
    env = {**os.environ, "LADA_FUZZ_EXAMPLES": str(args.fuzz), "LADA_FUZZ_REPORT": str(fuzz_report)}
    rc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/coordinator/server/test_fuzz.py"], cwd=ROOT, env=env
    ).returncode
    fuzz = json.loads(fuzz_report.read_text()) if fuzz_report.exists() else {}
    fuzz["passed"] = rc == 0
    print(json.dumps(fuzz, indent=2))
    upload = resumed_upload(paths, args.port, args.upload_mib, args.seed) if args.upload_mib > 0 else None
    print(json.dumps(upload, indent=2))
    h = hostile(paths, args.port)
    out.write_text(
        json.dumps({"faults": faults, "fuzz": fuzz, "resumed_upload": upload, "hostile": h}, indent=2, default=str)
    )
    if (
        lost
        or rc != 0
        or (upload is not None and not (upload["stored_intact"] and upload["chunks_resent"] == 0))
        or not _hostile_ok(h)
    ):
        sys.exit(1)


if __name__ == "__main__":
    main()
