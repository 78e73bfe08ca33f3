"""The SecAgg-vs-Flower benchmark: our side at toy size, and its refusal without a Flower venv.

The Flower side needs ``flwr``, which lives in a separate virtualenv (never the project's), so its
test skips here; run the script itself (``benchmarks/bench_secagg_flower.py --quick``) for that.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_secagg_flower.py"

#: what both sides report per round, and the table and the JSON rely on
RECORD_KEYS = {
    "side",
    "clients",
    "length",
    "degree",
    "threshold",
    "dropped",
    "survivors",
    "client_s_mean",
    "client_s_max",
    "client_cpu_s_mean",
    "client_stage_s_mean",
    "server_s",
    "server_cpu_s",
    "server_stage_s",
    "client_wire_s_mean",
    "server_wire_s",
    "client_with_wire_s_mean",
    "server_with_wire_s",
    "client_up_bytes_mean",
    "client_down_bytes_mean",
    "dropped_client_up_bytes_mean",
    "server_in_bytes",
    "server_out_bytes",
    "max_abs_error",
    "tolerance",
    "correct",
    "inputs_digest",
}


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_secagg_flower")


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_our_side_sums_right_and_reports_every_key(bench, dropout: float) -> None:
    record = bench.run_ours(n=3, length=100, dropout=dropout, seed=1)
    assert set(record) == RECORD_KEYS
    assert record["side"] == "ours" and record["clients"] == 3 and record["length"] == 100
    assert record["dropped"] == (1 if dropout else 0)  # 0.1 of 3 still drops one client
    assert record["survivors"] == 3 - record["dropped"]
    assert set(record["client_stage_s_mean"]) == set(record["server_stage_s"]) == set(bench.STAGES)
    # the check the script fails on, redone here against the inputs it drew
    vectors = bench.inputs(3, 100, 1)
    plain = np.mean(vectors[: record["survivors"]], axis=0)
    assert record["correct"] and record["max_abs_error"] <= record["tolerance"]
    assert record["tolerance"] < 1e-5 and np.max(np.abs(plain)) > 1e-3  # a real bound on non-trivial inputs
    assert record["inputs_digest"] == bench.digest(vectors)
    # every survivor uploads its 4 messages, a dropped client only its keys and shares
    assert record["client_up_bytes_mean"] > 4 * 100  # the masked vector alone is 4 B per entry
    if dropout:
        assert 0 < record["dropped_client_up_bytes_mean"] < record["client_up_bytes_mean"]
    assert record["server_in_bytes"] > 0 and record["server_out_bytes"] > 0
    assert record["client_s_mean"] > 0 and record["server_s"] > 0


def test_flower_side(bench) -> None:
    pytest.importorskip("flwr", reason="flwr lives in its own venv (/work/flwr-venv), not the project's")
    record = bench.run_flower(n=5, length=100, dropout=0.1, neighbours=None, threshold=3, seed=1)
    assert set(RECORD_KEYS) <= set(record) and record["correct"]


def test_refuses_an_interpreter_without_flwr() -> None:
    if importlib.util.find_spec("flwr") is not None:
        pytest.skip("this interpreter has flwr")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--flower-python", sys.executable],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "cannot import flwr" in done.stderr
