"""Scoring throughput: the ONNX in-graph log-prob scorer against PyTorch eager on the same checkpoint.

For each SLM and batch size, the same (prompt, completion) pairs are scored by

* **onnx**: :meth:`lada_client.scoring.onnx_slm.OnnxSLM.completion_logprobs` (onnxruntime, the
  log-softmax and gather inside the graph), and
* **torch**: the same checkpoint loaded with :func:`lada_client.models.checkpoint.load_causal_lm`,
  scored with :func:`lada_client.training.losses.token_logprobs` under ``torch.no_grad()``, with
  the same batching (pairs sorted by length, :func:`~lada_client.models.encoding.encode_pairs`)
  and the same completion masks,

with equal thread counts (``torch.set_num_threads(T)`` and ``intra_op_threads=T``). The two runs
alternate within each repeat, so the ratio compares them under the same machine load. Results are
checked equal (max |difference| of every completion-token log-prob) in the same run.

    python benchmarks/bench_scoring.py [--quick] [--threads 1 2] [--batch-sizes 1 4 16 64] [--no-smollm2]
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_scoring"
TARGET_RATIO = 1.5
MAX_ABS_DIFF = 1e-4


def torch_completion_logprobs(model, tokenizer, special, max_length, prompts, completions, batch_size):
    """The eager-PyTorch twin of ``OnnxSLM.completion_logprobs`` (same ordering, batches, masks)."""
    import torch

    from lada_client.models.encoding import encode_pairs
    from lada_client.training.losses import token_logprobs

    order = np.argsort([len(p) + len(c) for p, c in zip(prompts, completions)])
    results: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = encode_pairs(
                tokenizer, [prompts[i] for i in idx], [completions[i] for i in idx], max_length, special
            )
            token_lp = token_logprobs(
                model, torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
            ).numpy()
            for row, i in enumerate(idx):
                mask = batch.completion_mask[row, : token_lp.shape[1]] > 0
                results[int(i)] = token_lp[row][mask].astype(np.float64)
    return [results[i] for i in range(len(prompts))]


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            return float("inf")
        worst = max(worst, float(np.max(np.abs(x - y), initial=0.0)))
    return worst


def models_to_run(args) -> list[dict]:
    """(label, checkpoint dir, onnx path) of the tiny presets, plus SmolLM2 when available."""
    paths = C.world()
    out = [
        {"model": preset, "checkpoint": paths[preset] / "base", "onnx": paths[preset] / "onnx" / "model.onnx"}
        for preset in args.presets
    ]
    if args.smollm2:
        try:
            from lada_client.models import smollm2  # optional, may be absent
        except ImportError as exc:
            out.append({"model": "smollm2-135m", "skipped": f"lada_client.models.smollm2 not importable: {exc}"})
            return out
        try:
            checkpoint, onnx_path = smollm2.prepare_smollm2_slm(C.CACHE_DIR / "smollm2")
        except (FileNotFoundError, ImportError, ValueError) as exc:
            out.append({"model": "smollm2-135m", "skipped": str(exc)})
            return out
        out.append({"model": "smollm2-135m", "checkpoint": checkpoint, "onnx": onnx_path, "large": True})
    return out


def bench_model(
    spec: dict, pairs: list[tuple[str, str]], batch_sizes: list[int], threads: int, repeats: int
) -> list[dict]:
    import torch

    from lada_client.models.checkpoint import load_causal_lm
    from lada_client.models.encoding import encode_pairs
    from lada_client.models.tokenizer import SpecialTokens
    from lada_client.scoring.onnx_slm import OnnxSLM

    torch.set_num_threads(threads)
    slm = OnnxSLM(Path(spec["onnx"]), providers=["CPUExecutionProvider"], intra_op_threads=threads)
    model, tokenizer = load_causal_lm(Path(spec["checkpoint"]))
    model.eval()
    special = SpecialTokens.from_model_config(model.config)
    if special != slm.special:
        raise SystemExit(f"{spec['model']}: special tokens differ (checkpoint {special}, onnx {slm.special})")
    prompts = [p for p, _ in pairs]
    completions = [c for _, c in pairs]
    tokens = int(
        sum(encode_pairs(slm.tokenizer, [p], [c], slm.max_length, slm.special).attention_mask.sum() for p, c in pairs)
    )
    n_params = sum(p.numel() for p in model.parameters())

    def run_onnx(bs: int, n: int | None = None):
        return slm.completion_logprobs(prompts[:n], completions[:n], batch_size=bs)

    def run_torch(bs: int, n: int | None = None):
        return torch_completion_logprobs(model, tokenizer, special, slm.max_length, prompts[:n], completions[:n], bs)

    rows = []
    for bs in batch_sizes:
        run_onnx(bs, bs), run_torch(bs, bs)  # warm-up on one batch: allocators, thread pools, first calls
        t_onnx, t_torch, c_onnx, c_torch, diffs = [], [], [], [], []
        for r in range(repeats):
            order = (
                (("onnx", run_onnx), ("torch", run_torch)) if r % 2 == 0 else (("torch", run_torch), ("onnx", run_onnx))
            )
            got = {}
            for label, fn in order:
                gc.collect()
                time.sleep(0.05)  # let the other runtime's spinning workers park
                cpu = time.process_time()
                elapsed, got[label] = C.timed(lambda fn=fn, bs=bs: fn(bs))
                (t_onnx if label == "onnx" else t_torch).append(elapsed)
                (c_onnx if label == "onnx" else c_torch).append(time.process_time() - cpu)
            diffs.append(max_abs_diff(got["onnx"], got["torch"]))
        paired = [tt / to for to, tt in zip(t_onnx, t_torch)]
        # process CPU time: with 1 thread both runtimes compute in this thread, so this ratio is
        # not inflated by waiting for a core on a loaded machine (with T > 1 it sums the threads)
        paired_cpu = [tt / to for to, tt in zip(c_onnx, c_torch)]
        scored = int(sum(len(lp) for lp in got["onnx"]))
        row = {
            "model": spec["model"],
            "params_m": round(n_params / 1e6, 3),
            "batch_size": bs,
            "pairs": len(pairs),
            "tokens": tokens,
            "completion_tokens": scored,
            "threads": threads,
            "loadavg_1m": os.getloadavg()[0],
            "onnx_s": C.summary(t_onnx),
            "torch_s": C.summary(t_torch),
            "onnx_tokens_per_s": tokens / C.median(t_onnx),
            "torch_tokens_per_s": tokens / C.median(t_torch),
            "ratio_onnx_over_torch": C.median(paired),
            "ratio_range": [min(paired), max(paired)],
            "onnx_cpu_s": C.summary(c_onnx),
            "torch_cpu_s": C.summary(c_torch),
            "cpu_ratio_onnx_over_torch": C.median(paired_cpu),
            "max_abs_diff": max(diffs),
            "equal": max(diffs) <= MAX_ABS_DIFF,
            "meets_target": C.median(paired) >= TARGET_RATIO,
        }
        rows.append(row)
        C.say(
            f"  {spec['model']:>13} bs={bs:<3} onnx {row['onnx_tokens_per_s']:>9,.0f} tok/s  "
            f"torch {row['torch_tokens_per_s']:>9,.0f} tok/s  ratio {row['ratio_onnx_over_torch']:.2f}x  "
            f"(cpu {row['cpu_ratio_onnx_over_torch']:.2f}x)  "
            f"max|diff| {row['max_abs_diff']:.2e}"
        )
    gc.collect()
    return rows


def profile_onnx(spec: dict, pairs: list[tuple[str, str]], batch_size: int, threads: int, runs: int = 3) -> dict:
    """onnxruntime's per-node profile of ``completion_logprobs``: where the scorer spends its time."""
    import collections
    import json
    import tempfile

    import onnxruntime as ort

    from lada_client.scoring.onnx_slm import OnnxSLM

    slm = OnnxSLM(Path(spec["onnx"]), providers=["CPUExecutionProvider"], intra_op_threads=threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="lada-ortprof-") as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        slm._session = ort.InferenceSession(str(spec["onnx"]), options, providers=["CPUExecutionProvider"])
        prompts, completions = [p for p, _ in pairs], [c for _, c in pairs]
        slm.completion_logprobs(prompts, completions, batch_size=batch_size)  # warm-up, also profiled
        for _ in range(runs):
            slm.completion_logprobs(prompts, completions, batch_size=batch_size)
        events = json.loads(Path(slm._session.end_profiling()).read_text())
    by_op: collections.Counter = collections.Counter()
    by_node: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            by_op[e["args"].get("op_name", "?")] += e["dur"]
            by_node[f"{e['args'].get('op_name', '?')} {e['name'][: -len('_kernel_time')]}"] += e["dur"]
    total = sum(by_op.values()) or 1
    # The attention-mask plumbing of the exported SDPA: bool mask -> additive mask (Where) per layer,
    # and Softmax -> IsNaN -> Where to zero fully-masked rows; all O(B * H * T^2) elementwise work.
    mask_ops = sum(
        d for n, d in by_node.items() if "self_attn" in n and (n.startswith(("Where ", "IsNaN ")) or "/Add_2" in n)
    )
    return {
        "model": spec["model"],
        "batch_size": batch_size,
        "threads": threads,
        "by_op_pct": {op: round(100 * d / total, 1) for op, d in by_op.most_common(12)},
        "top_nodes_pct": {n: round(100 * d / total, 1) for n, d in by_node.most_common(10)},
        "attention_mask_ops_pct": round(100 * mask_ops / total, 1),
        # the log-prob head added at export (gathers, lm_head on the requested positions, log-softmax)
        "head_ops_pct": round(100 * sum(d for n, d in by_node.items() if " lada_head/" in n) / total, 1),
    }


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="thread counts to run, each set equal for both runtimes (default: 1 and all CPUs)",
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--presets", nargs="*", default=["slm-small", "slm-large"], help="tiny SLM presets to run")
    p.add_argument("--pairs", type=int, default=None, help="pairs scored per pass, tiny SLMs")
    p.add_argument(
        "--smollm2-pairs", type=int, default=None, help="pairs per pass for SmolLM2 (default 8 quick, 16 full)"
    )
    p.add_argument("--no-smollm2", dest="smollm2", action="store_false", help="skip SmolLM2 even if available")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the onnxruntime per-node profile")
    args = p.parse_args()
    cpus = len(os.sched_getaffinity(0))
    thread_counts = args.threads or sorted({1, cpus})
    repeats = args.repeats or (3 if args.quick else 5)
    n_pairs = args.pairs or 64
    n_smol = args.smollm2_pairs or (8 if args.quick else 16)

    from lada_client.common.reasoning import format_prompt, format_target

    samples = C.public_samples(C.world())
    cands = C.candidates(samples, max(n_pairs, n_smol))
    all_pairs = [(format_prompt(c.question), format_target(c.path)) for c in cands]

    C.say(
        f"scoring throughput, threads {thread_counts} (equal for both runtimes), {repeats} repeats, "
        f"median; target onnx/torch >= {TARGET_RATIO}x"
    )
    rows, skipped, profiles = [], [], []
    specs = models_to_run(args)
    for spec in specs:
        if "skipped" in spec:
            skipped.append({"model": spec["model"], "reason": spec["skipped"]})
            C.say(f"  {spec['model']}: skipped ({spec['skipped']})")
            continue
        large = spec.get("large", False)
        pairs = all_pairs[: n_smol if large else n_pairs]
        sizes = [b for b in args.batch_sizes if not large or b <= len(pairs)]
        for b in sorted(set(args.batch_sizes) - set(sizes)):
            skipped.append(
                {"model": spec["model"], "batch_size": b, "reason": f"larger than the {len(pairs)} pairs scored"}
            )
        for threads in thread_counts:
            rows += bench_model(spec, pairs, sizes, threads, max(2, repeats - 2) if large else repeats)
            C.say(f"  ({spec['model']}, {threads} thread(s) done; load average {os.getloadavg()[0]:.1f})")
        if args.profile:
            profiles.append(profile_onnx(spec, pairs, max(sizes), min(thread_counts), runs=1 if large else 3))

    C.say()
    C.say(
        C.table(
            [
                "model",
                "threads",
                "batch",
                "pairs",
                "tokens",
                "onnx tok/s",
                "torch tok/s",
                "onnx/torch",
                "range",
                "cpu onnx/torch",
                "max|diff|",
                "target 1.5x",
            ],
            [
                [
                    r["model"],
                    r["threads"],
                    r["batch_size"],
                    r["pairs"],
                    r["tokens"],
                    r["onnx_tokens_per_s"],
                    r["torch_tokens_per_s"],
                    f"{r['ratio_onnx_over_torch']:.2f}x",
                    f"{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}",
                    f"{r['cpu_ratio_onnx_over_torch']:.2f}x",
                    f"{r['max_abs_diff']:.1e}",
                    "met" if r["meets_target"] else "MISSED",
                ]
                for r in rows
            ],
        )
    )
    for prof in profiles:
        C.say(
            f"\nonnxruntime profile, {prof['model']} batch {prof['batch_size']}, {prof['threads']} thread(s): "
            f"attention-mask ops (Where/IsNaN/mask Add in self_attn) {prof['attention_mask_ops_pct']}% of node time, "
            f"log-prob head (lada_head/*: gathers, lm_head, log-softmax) {prof['head_ops_pct']}%"
        )
        C.say("  by op:   " + ", ".join(f"{k} {v}%" for k, v in prof["by_op_pct"].items()))
        C.say("  top nodes:\n" + "\n".join(f"    {v:5.1f}%  {k}" for k, v in prof["top_nodes_pct"].items()))
    bad = [r for r in rows if not r["equal"]]
    path = C.write_results(
        NAME,
        {
            "settings": {
                "threads": thread_counts,
                "repeats": repeats,
                "quick": args.quick,
                "batch_sizes": args.batch_sizes,
                "pairs": n_pairs,
                "smollm2_pairs": n_smol,
            },
            "target_ratio": TARGET_RATIO,
            "max_abs_diff_allowed": MAX_ABS_DIFF,
            "rows": rows,
            "skipped": skipped,
            "onnx_profiles": profiles,
        },
        args.out,
    )
    C.say(f"\nresults: {path}")
    if bad:
        C.say(
            f"ERROR: ONNX and torch disagree beyond {MAX_ABS_DIFF} for {[(r['model'], r['batch_size']) for r in bad]}"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
