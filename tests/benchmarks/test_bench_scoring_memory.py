"""The scoring-memory benchmark runs every setting in its own process and reports what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_bench_scoring_memory_quick(tiny_world, tmp_path: Path) -> None:
    pytest.importorskip("reasoning_gym")
    out = tmp_path / "memory.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_scoring_memory.py"), "--quick", "--candidates", "8"]
    cmd += ["--model-dir", str(tiny_world["client0"]), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [(r["cpu_mem_arena"], r["logits_budget_mib"]) for r in results] == [
        (True, 0),
        (True, 1024),
        (False, 0),
        (False, 1024),
    ]
    for r in results:
        assert 0 < r["rss_loaded_gib"] <= r["peak_gib"] and 0 < r["rss_after_gib"] <= r["peak_gib"] and r["seconds"] > 0
