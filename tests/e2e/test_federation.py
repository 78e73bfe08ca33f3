"""End to end: the real coordinator process and real client processes, on loopback."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

from lada_client.data.federation import FederationData


def test_local_federation_runs_rounds(tiny_world, free_port):
    work = tiny_world["workdir"]
    cmd = [
        sys.executable, "-m", "lada_coordinator.cli", "federation", "--workdir", str(work),
        "--clients", "3", "--rounds", "2", "--candidates", "24", "--budget", "6", "--port", str(free_port),
        "--n-train", "40", "--n-test", "16", "--n-public", "160", "--offer-questions", "8",
        "--llm-warmup-steps", "4", "--slm-warmup-steps", "4", "--timeout", "600", "--tls",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=660)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "round 1: SLM accuracy" in proc.stdout and "round 2: SLM accuracy" in proc.stdout

    status = json.loads((work / "last_run.json").read_text())
    assert [r["phase"] for r in status["rounds"]] == ["closed", "finished"]
    for r in status["rounds"]:
        assert sorted(r["clients"]) == ["client0", "client1", "client2"]
        for c in r["clients"].values():
            assert 0 <= c["reward"] <= 1 and c["n_allocated"] >= 1
            assert c["bytes_client_sent"] > 0 and c["bytes_client_received"] > 0

    # Every client trained: an adapter and a re-exported scoring model exist on its "device".
    for name in ("client0", "client1", "client2"):
        assert (work / "run" / name / "adapter" / "adapter_config.json").exists()
        assert (work / "run" / name / "model.onnx").exists()
        results = json.loads((work / "run" / f"{name}.results.json").read_text())
        assert [r["round"] for r in results] == [1, 2]

    # Private data never reached the coordinator: no private question appears in its database.
    db_bytes = b"".join(
        line.encode() for line in sqlite3.connect(str(work / "run" / "coordinator.sqlite")).iterdump()
    )
    fed = FederationData.load(work / "data")
    private = [s.question for c in fed.clients for s in c.train + c.test]
    assert not [q for q in private if q.encode() in db_bytes]
    assert any(s.question.encode() in db_bytes for s in fed.public)  # sanity: public ones are there
