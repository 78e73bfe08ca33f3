"""End to end: the real coordinator process and real client processes, on loopback."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lada_client.data.federation import FederationData

pytestmark = pytest.mark.e2e  # real coordinator and client processes

TINY = [
    "--clients",
    "3",
    "--rounds",
    "2",
    "--candidates",
    "16",
    "--budget",
    "6",
    "--n-train",
    "40",
    "--n-test",
    "16",
    "--n-public",
    "160",
    "--offer-questions",
    "4",
    "--llm-warmup-steps",
    "4",
    "--slm-warmup-steps",
    "4",
    "--timeout",
    "600",
]


def _run(work: Path, port: int, *extra: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "lada_coordinator.cli",
        "federation",
        "--workdir",
        str(work),
        "--port",
        str(port),
        *TINY,
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # what a person reads (captured here: not a terminal, so plain lines): set-up stages, a table
    # per round, the end; no library chatter, no third-party warnings
    lines = proc.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("✓ ")][:2] == ["data", "tokenizer"]
    assert [line.split(" · ")[0] for line in lines if line.startswith("round ")] == ["round 1/2", "round 2/2"]
    assert sum(line.startswith("client") for line in lines) == 3 * 2 and lines[-1].startswith("✓ done in ")
    assert len(lines) <= 30 and proc.stderr == "", proc.stdout + proc.stderr
    assert "httpx" not in proc.stdout and "Warning" not in proc.stdout
    assert "HTTP Request" not in (work / "federation.log").read_text()  # its full log: our records, not httpx's
    status = json.loads((work / "last_run.json").read_text())
    assert [r["phase"] for r in status["rounds"]] == ["closed", "finished"]
    assert lines[-1].endswith(f"report {work / 'report.html'} (metrics in {work / 'last_run.json'})")
    assert '<script type="application/json" id="lada-status">' in (work / "report.html").read_text()
    for r in status["rounds"]:
        assert sorted(r["clients"]) == ["client0", "client1", "client2"]
        for c in r["clients"].values():
            assert 0 <= c["reward"] <= 1 and c["n_allocated"] >= 1
            assert c["bytes_client_sent"] > 0 and c["bytes_client_received"] > 0
    for name in ("client0", "client1", "client2"):
        # every client trained: an adapter and a re-exported scoring model exist on its "device"
        assert (work / "run" / name / "adapter" / "adapter_config.json").exists()
        assert (work / "run" / name / "model.onnx").exists()
        results = json.loads((work / "run" / f"{name}.results.json").read_text())
        assert [r["round"] for r in results] == [1, 2]
    return status


def _private_questions_absent(work: Path) -> None:
    db_bytes = b"".join(line.encode() for line in sqlite3.connect(str(work / "run" / "coordinator.sqlite")).iterdump())
    fed = FederationData.load(work / "data")
    private = [s.question for c in fed.clients for s in c.train + c.test]
    assert not [q for q in private if q.encode() in db_bytes]
    assert any(s.question.encode() in db_bytes for s in fed.public)  # sanity: public ones are there


def test_mutual_knowledge_transfer_over_tls(tiny_world, free_port):
    """Heterogeneous SLMs (three sizes), LaDa allocation, https with a generated certificate."""
    work = tiny_world["workdir"]
    _run(work, free_port)  # https is the default
    _private_questions_absent(work)


@pytest.mark.parametrize("dp_noise", ["0.8"])
def test_cotuning_with_secure_aggregation_and_dp(tmp_path, free_port, dp_noise):
    """Same-architecture SLMs average adapters through secure aggregation; features carry DP noise;
    one training pass per round (--epochs 1)."""
    status = _run(
        tmp_path / "fed",
        free_port,
        "--host-framework",
        "cotuning",
        "--slm-presets",
        "slm-small",
        "--dp-noise",
        dp_noise,
        "--epochs",
        "1",
    )
    for name in ("client0", "client1", "client2"):
        results = json.loads((tmp_path / "fed" / "run" / f"{name}.results.json").read_text())
        allocated = [r["n_allocated"] for r in results]
        steps = [r["training"]["steps"] for r in results]  # the client's own record, no log parsing
        # one pass over 30 private (40 minus the reward's held-out quarter) + allocated, batch 8
        assert steps == [math.ceil((30 + n) / 8) for n in allocated]
    for r in status["rounds"]:
        ((_group, summary),) = r["secagg"].items()
        assert summary == {"contributors": 3, "error": None}
        assert all(c["dp_epsilon"] > 0 for c in r["clients"].values())
    eps = [[c["dp_epsilon"] for c in r["clients"].values()] for r in status["rounds"]]
    assert all(b > a for a, b in zip(eps[0], eps[1]))  # the budget accumulates over rounds
    # members adopted the same average: their saved adapters are identical
    import numpy as np
    from safetensors.numpy import load_file

    adapters = [
        load_file(str(tmp_path / "fed" / "run" / n / "adapter" / "adapter_model.safetensors"))
        for n in ("client0", "client1", "client2")
    ]
    for key in adapters[0]:
        np.testing.assert_allclose(adapters[0][key], adapters[1][key], atol=1e-6)
        np.testing.assert_allclose(adapters[0][key], adapters[2][key], atol=1e-6)
    _private_questions_absent(tmp_path / "fed")


def test_score_only_device_gets_its_adapter_trained_by_the_coordinator(tiny_world, free_port):
    """A device without a trainer (no base checkpoint) declares itself score-only; with
    score_only_update='server' the coordinator trains its adapter and the device merges it."""
    import time

    from lada_coordinator.federation import FederationSettings, prepare, start_processes

    work = tiny_world["workdir"]
    settings = FederationSettings(
        workdir=work,
        clients=3,
        rounds=2,
        candidates=16,
        budget=6,
        port=free_port,
        n_train=40,
        n_test=16,
        n_public=160,
        llm_warmup_steps=4,
        slm_warmup_steps=4,
        offer_questions=4,
    )
    paths = prepare(settings)
    procs = start_processes(
        settings,
        paths,
        coordinator_overrides={
            "score_only_update": "server",
            "slm_checkpoints": {"phone-slm": str(paths["client2"] / "base")},
        },
        client_overrides={"client2": {"base_model_dir": None, "model_name": "phone-slm"}},
    )
    try:
        deadline = time.monotonic() + 600
        while any(p.poll() is None for p in procs.clients.values()) and time.monotonic() < deadline:
            time.sleep(1)
        assert all(p.poll() == 0 for p in procs.clients.values()), (procs.logs / "client2.log").read_text()[-3000:]
        status = procs.status()
    finally:
        procs.stop()
    phone = [r["clients"]["client2"] for r in status["rounds"]]
    assert all(c["n_allocated"] >= 1 for c in phone) and any(c["reward"] > 0 for c in phone)
    device = procs.run_dir / "client2"
    assert (device / "model.onnx").exists() and not (device / "adapter").exists()  # merged, not trained, on the device
    trained_here = list((procs.run_dir / "coordinator" / "score_only").glob("client2-*/round*/adapter_config.json"))
    assert [p.parent.name for p in trained_here] == ["round2"]  # round 1's, the start of round 2, pruned
