"""Smoke test of the learning-quality benchmark: ``benchmarks/quality.py --quick`` runs to the end.

It builds a tiny federation and runs two real federations (coordinator + three client processes,
about a minute on two cores), then runs ``benchmarks/fit_check.py`` on the work directories it
built, and ``benchmarks/llm_uptake.py`` on its teacher. Everything they write (work directories,
per-run results, report, plots) goes to a temporary directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # the benchmark's real federations (processes)

REPO = Path(__file__).resolve().parents[2]


def _script(tmp_path: Path, name: str, *args: str, timeout: int = 600) -> None:
    """Run ``benchmarks/<name>.py`` on the quick run's work directories; fail with its output."""
    cmd = [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--cache-dir", str(tmp_path / "cache"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_quality_quick_writes_its_report(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "report" / "quality_quick.md"
    _script(tmp_path, "quality", "--quick", "--results-dir", str(tmp_path / "results"), "--out", str(out), timeout=1800)
    assert out.exists() and "# Learning quality" in out.read_text()
    assert (out.parent / "quality_quick_accuracy.png").stat().st_size > 0
    assert (out.parent / "quality_quick_bytes.png").stat().st_size > 0
    assert (tmp_path / "results" / "summary.json").exists()

    fit = tmp_path / "fit_check.json"
    _script(tmp_path, "fit_check", "--n", "8", "--out", str(fit))
    rows = json.loads(fit.read_text())["rows"]
    assert [r["client"] for r in rows] == ["client0", "client1", "client2"]
    for r in rows:
        for key in ("train_accuracy", "test_accuracy", "test_seen_in_train", "test_seen_in_public"):
            assert 0.0 <= r[key] <= 1.0, (key, r)

    uptake = tmp_path / "llm_uptake.json"
    _script(tmp_path, "llm_uptake", "--seeds", "0", "--arms", "2x2,2x1+r", "--eval", "4", "--out", str(uptake))
    world = json.loads(uptake.read_text())["worlds"]["seed0-mkt"]
    assert [len(world["arms"][a]) for a in ("2x2", "2x1+r")] == [3, 2]  # round 0 plus each trained round
    assert [r["paths"] for r in world["arms"]["2x2"]] == [0, 2, 4]
    for rounds in world["arms"].values():
        for r in rounds:
            assert set(r) == {"round", "paths", "client0", "client1", "client2"}
            assert all(0.0 <= r[c] <= 1.0 for c in ("client0", "client1", "client2")), r
    # the quick run's last federation (lada) offered paths, which the script reads from its database
    assert world["offered_last_federation"] is not None
