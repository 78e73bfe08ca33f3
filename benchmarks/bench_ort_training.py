"""LoRA training step: ONNX Runtime training backend vs torch + peft, same SLM, same batches.

    python benchmarks/bench_ort_training.py --ort-python .venv-ort/bin/python [--preset slm-small] [--threads 2]

The two backends live in different environments (onnxruntime-training 1.19 needs onnx 1.17; see
``scripts/setup_ort_training.sh``), so each runs in its own child process: this interpreter (torch)
builds the tiny SLM and exports the training graph, ``--ort-python`` generates the artifacts, then
one child per backend (alternating, ``--repeats`` times) trains and reports:

* seconds per training step = (time of a 5-epoch round − time of a 1-epoch round) / (extra steps),
  after a warm-up round, so session set-up and π_ref scoring cancel out;
* peak RSS of the child (``VmHWM``: imports, model, training), and its peak before training.

Each step: 8 L_SFT rows + 4 preference pairs (chosen + rejected), α = 0.5, max_length 256. The ORT
child blocks ``import torch`` (as on a device without it) unless ``--ort-allow-torch``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
CACHE = BENCH_DIR / ".cache" / "ort_training"

CHILD = r"""
import json, sys, time
from pathlib import Path
def hwm_mb():  # peak RSS of this process image (VmHWM; ru_maxrss would include the parent's before exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
backend, base, artifacts, threads, block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
if block:
    for name in ("torch", "transformers", "peft"):
        sys.modules[name] = None
pairs = [tuple(p) for p in json.loads(Path(sys.argv[6]).read_text())]
from lada_client.config import DistillSettings
from lada_client.training.backend import PreferencePair
from lada_client.training.trainers import make_trainer
if backend == "torch":
    import torch
    torch.set_num_threads(threads)
    trainer = make_trainer("torch", base_dir=Path(base))
else:
    trainer = make_trainer("ort", artifacts_dir=Path(artifacts), threads=threads)
rss_loaded = hwm_mb()
teacher = pairs[:32]
prefs = [PreferencePair(p, c, c.replace("The answer is", "So it is 0. The answer is 0 and")) for p, c in pairs[32:48]]
def round_(epochs):
    settings = DistillSettings(alpha=0.5, epochs=epochs, batch_size=8, lr=1e-3)
    start = time.perf_counter()
    report = trainer.train_round(teacher, prefs, [], settings)
    return time.perf_counter() - start, report.steps
round_(1)  # warm-up
t1, s1 = round_(1)
t5, s5 = round_(5)
print(json.dumps({"backend": backend, "step_s": (t5 - t1) / (s5 - s1), "round1_s": t1, "steps": [s1, s5],
                  "rss_loaded_mb": rss_loaded, "rss_peak_mb": hwm_mb(),
                  "torch_imported": "torch" in sys.modules and sys.modules["torch"] is not None}))
"""


def _run(python: str, args: list[str], timeout: float = 1800) -> str:
    result = subprocess.run([python, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{python} {' '.join(args[:2])} failed:\n{result.stderr[-4000:]}")
    return result.stdout


def prepare(preset: str, ort_python: str) -> tuple[Path, Path, Path]:
    from lada_client.common.reasoning import format_prompt, format_target
    from lada_client.training.ort_artifacts import MANIFEST, export_training_graph
    from lada_coordinator.simulation.domains import DOMAINS, generate
    from lada_coordinator.simulation.factory import create_model
    from lada_coordinator.simulation.tokenizer import build_tokenizer, save_tokenizer

    root = CACHE / preset
    base, artifacts, data = root / "base", root / "artifacts", root / "pairs.json"
    if not data.exists():
        samples = generate(DOMAINS[0], 64, 0, "bench")
        pairs = [(format_prompt(s.question), format_target(s.rationale)) for s in samples]
        save_tokenizer(build_tokenizer([p + c for p, c in pairs]), root / "tokenizer")
        create_model(preset, root / "tokenizer", base, seed=1)
        data.write_text(json.dumps(pairs))
    if not (artifacts / "training_model.onnx").exists():
        export_training_graph(base, artifacts)
        _run(ort_python, ["-m", "lada_client.training.ort_artifacts", "generate", "--export-dir", str(artifacts)])
    assert (artifacts / MANIFEST).exists()
    return base, artifacts, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ort-python", required=True, help="interpreter of the onnxruntime-training environment")
    ap.add_argument("--torch-python", default=sys.executable, help="interpreter of the torch environment")
    ap.add_argument("--preset", default="slm-small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--ort-allow-torch", action="store_true")
    ap.add_argument("--out", type=Path, help="results file (default results/bench_ort_training_<preset>.json)")
    args = ap.parse_args()
    base, artifacts, data = prepare(args.preset, args.ort_python)
    runs: dict[str, list[dict]] = {"torch": [], "ort": []}
    for _ in range(args.repeats):
        for backend, python in (("torch", args.torch_python), ("ort", args.ort_python)):
            block = "1" if backend == "ort" and not args.ort_allow_torch else "0"
            out = _run(python, ["-c", CHILD, backend, str(base), str(artifacts), str(args.threads), block, str(data)])
            runs[backend].append(json.loads(out.strip().splitlines()[-1]))
    med = {
        b: {k: statistics.median(r[k] for r in rs) for k in ("step_s", "round1_s", "rss_loaded_mb", "rss_peak_mb")}
        for b, rs in runs.items()
    }
    result = {
        "preset": args.preset,
        "threads": args.threads,
        "repeats": args.repeats,
        "batch": "8 SFT rows + 4 pairs (chosen + rejected) per step",
        "median": med,
        "ratio_step_torch_over_ort": med["torch"]["step_s"] / med["ort"]["step_s"],
        "ratio_peak_rss_torch_over_ort": med["torch"]["rss_peak_mb"] / med["ort"]["rss_peak_mb"],
        "runs": runs,
    }
    print(f"{'backend':8} {'s/step':>8} {'1-epoch round s':>16} {'RSS loaded MB':>14} {'peak RSS MB':>12}")
    for b, m in med.items():
        print(f"{b:8} {m['step_s']:8.3f} {m['round1_s']:16.2f} {m['rss_loaded_mb']:14.0f} {m['rss_peak_mb']:12.0f}")
    print(
        f"torch/ort: step time x{result['ratio_step_torch_over_ort']:.2f}, "
        f"peak RSS x{result['ratio_peak_rss_torch_over_ort']:.2f}"
    )
    args.out = args.out or BENCH_DIR / "results" / f"bench_ort_training_{args.preset}.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
