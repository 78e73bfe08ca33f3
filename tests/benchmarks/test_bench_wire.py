"""The wire-encoding benchmark runs and compares like with like (sizes, not times)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_wire_quick(tmp_path: Path) -> None:
    out = tmp_path / "wire.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_wire.py"), "--quick", "--sizes", "3000", "--out", str(out)]
    cmd += ["--repeats", "2", "--chunk-bytes", "5000"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["raw_bytes"] == 12_000
    assert row["base64"]["body_over_raw"] > 1.7  # base64 in JSON, sealed, base64 again
    assert 1.0 < row["binary"]["body_over_raw"] < 1.05  # the raw bytes and a few hundred of frame
    assert row["binary"]["chunked_bytes"] < 12_000 + 3 * 600  # three chunks, each its bytes and a frame
    assert row["base64"]["chunked_bytes"] > 2 * 12_000
