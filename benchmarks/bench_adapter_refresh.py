"""After a LoRA step, refresh the ONNX scorer: weight swap vs full re-export, side by side.

    python benchmarks/bench_adapter_refresh.py [--quick] [--preset slm-large]

Both paths run on the same trained adapter in one process, alternating, after one warm-up each
(so import costs are excluded); the script checks both give the same log-probs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from lada_client.common.reasoning import format_prompt, format_target
from lada_client.config import DistillSettings
from lada_client.data.federation import load_client
from lada_client.models.export import export_scoring_model
from lada_client.models.weight_swap import build_weight_map, swap_weights
from lada_client.scoring.onnx_slm import OnnxSLM
from lada_client.training.lora import LoraTrainer
from lada_coordinator.federation import FederationSettings, prepare

CACHE = Path(__file__).parent / ".cache" / "refresh"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    repeats = 2 if args.quick else args.repeats
    paths = prepare(
        FederationSettings(
            workdir=CACHE, clients=3, n_train=40, n_test=8, n_public=120, llm_warmup_steps=2, slm_warmup_steps=2
        )
    )
    rows = []
    for client in ("client0", "client1", "client2"):  # slm-large, slm-medium, slm-small
        base = paths[client]
        trainer = LoraTrainer(base / "base")
        data = load_client(paths["data"], client)
        pairs = [(format_prompt(s.question), format_target(s.rationale)) for s in data.train[:8]]
        trainer.train_round(pairs, [], [], DistillSettings(epochs=1))
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            t0 = time.perf_counter()
            mapping = build_weight_map(base / "onnx" / "model.onnx", trainer.projection_weights(merged=False))
            map_s = time.perf_counter() - t0
            swap_t, export_t = [], []
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                swap_weights(base / "onnx" / "model.onnx", tmp / "swap.onnx", mapping, trainer.projection_weights())
                swap_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                export_scoring_model(trainer.merged_checkpoint(tmp / f"merged{i}"), tmp / f"exp{i}" / "model.onnx")
                export_t.append(time.perf_counter() - t0)
            (tmp / "exp0" / "swap.onnx").write_bytes((tmp / "swap.onnx").read_bytes())
            a = OnnxSLM(tmp / "exp0" / "swap.onnx").completion_logprobs([p for p, _ in pairs], [c for _, c in pairs])
            b = OnnxSLM(tmp / "exp0" / "model.onnx").completion_logprobs([p for p, _ in pairs], [c for _, c in pairs])
            diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
        swap_s, export_s = statistics.median(swap_t[1:]), statistics.median(export_t[1:])
        params = sum(v.size for v in trainer.projection_weights(merged=False).values())
        rows.append(
            {
                "model": client,
                "adapted_params": params,
                "map_build_s": map_s,
                "swap_s": swap_s,
                "export_s": export_s,
                "speedup": export_s / swap_s,
                "max_abs_logprob_diff": diff,
            }
        )
    print(
        f"{'model':8} {'adapted params':>14} {'map (once)':>10} {'swap s':>8} {'export s':>9} "
        f"{'export/swap':>11} {'max diff':>9}"
    )
    for r in rows:
        print(
            f"{r['model']:8} {r['adapted_params']:>14,} {r['map_build_s']:>10.3f} {r['swap_s']:>8.3f} "
            f"{r['export_s']:>9.3f} {r['speedup']:>10.1f}x {r['max_abs_logprob_diff']:>9.1e}"
        )
    out = Path(__file__).parent / "results" / "adapter_refresh.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
