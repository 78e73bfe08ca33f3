"""Smoke test of the real-model benchmark's pipeline: ``benchmarks/quality_real.py --quick``.

The quick run swaps the real models for toy ones (the test suite downloads no model and builds no
llama.cpp), but goes through everything else: reasoning-gym families as client domains, answer-only
private data, the held-out reward with per-sample credit, two real federations, the own-family
diagnostics, summary, report and plots.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # the benchmark's real federations (processes)

REPO = Path(__file__).resolve().parents[2]


def test_quality_real_quick_writes_summary_report_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("reasoning_gym")
    results = tmp_path / "results"
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "quality_real.py"),
        "--quick",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--results-dir",
        str(results),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["seeds"] == [0] and set(summary["methods"]) == {"local", "lada"}
    for entry in summary["methods"].values():
        (final,) = entry["final_mean_accuracy"]
        assert 0.0 <= final <= 1.0 and len(entry["mean_accuracy_per_round"][0]) == 2  # round 0 and round 1
    assert summary["methods"]["local"]["own_domain_share"] == [None]  # nothing allocated
    (share,) = summary["methods"]["lada"]["own_domain_share"]
    assert 0.0 <= share <= 1.0
    report = (results / "report.md").read_text()
    assert "lada − local" in report and "own-family share" in report
    assert all(
        (results / png).stat().st_size > 1000 for png in ("accuracy.png", "own_domain_share.png", "time_per_phase.png")
    )
    run = json.loads((results / "runs" / "seed0-lada" / "run.json").read_text())
    rewards = [r["sample_rewards"] for rs in run["clients"].values() for r in rs]
    assert all(
        r is not None and all(0.0 <= x <= 1.0 for x in r) for r in rewards
    )  # per-sample credit reached the filter
    trace = json.loads((results / "runs" / "seed0-lada" / "trace.json").read_text())
    for per_round in trace.values():  # what benchmarks/replay_allocation.py replays
        rec = per_round["1"]
        assert per_round["family"] and len(rec["families"]) == len(rec["sample_ids"]) == len(rec["features"])
        assert set(rec["allocated"]) <= set(rec["sample_ids"]) and len(rec["credits"]) == len(rec["allocated"])
