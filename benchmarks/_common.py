"""Shared plumbing of the performance benchmarks: arguments, machine facts, timing, tables, results.

Every benchmark is a standalone script (``python benchmarks/<name>.py [--quick]``) that prints its
figures as a table and writes them to ``benchmarks/results/<name>.json``. Machines running these
are often shared, so the scripts compare *ratios* measured side by side (interleaved runs of the
two contenders) and report medians over repeats rather than single timings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_DIR = BENCH_DIR / "results"


# ----------------------------------------------------------------------------------- arguments
def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a smoke run)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per configuration (default: per script)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the JSON results (default: benchmarks/results/<name>.json)",
    )
    return p


# ------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    versions = {}
    for name in ("numpy", "onnxruntime", "torch", "transformers", "cryptography", "fastapi", "uvicorn", "httpx"):
        try:
            from importlib import metadata

            versions[name] = metadata.version(name)
        except Exception:  # noqa: BLE001 - a missing package is just not reported
            pass
    info["versions"] = versions
    return info


# -------------------------------------------------------------------------------------- timing
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated timings (seconds), plus the count."""
    if not values:
        return {"n": 0}
    return {"median": median(values), "min": float(min(values)), "max": float(max(values)), "n": len(values)}


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean, std and count of the values that are numbers (None and NaN left out); std is NaN
    for one value: a spread needs two."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan"), 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else float("nan")), len(vals)


def pm(values: Sequence[float | None], digits: int = 3) -> str:
    """``mean ± std`` over seeds, the mean alone for one seed, ``n/a`` for none."""
    m, s, n = mean_std(values)
    if n == 0:
        return "n/a"
    return f"{m:.{digits}f}" if n == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def percentile(values: Sequence[float], q: float) -> float:
    """``q``-th percentile (0..100) with linear interpolation, as numpy's default."""
    if not values:
        return float("nan")
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo, hi = int(pos), min(int(pos) + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


# -------------------------------------------------------------------------------------- output
def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines.append(title)
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        **payload,
    }
    path.write_text(json.dumps(document, indent=2, default=_json_default) + "\n")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:
        pass
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


#: Settings of the learning-quality benchmarks added after runs were saved, with the value those
#: runs had: a saved signature without one ran with it. Explicit rather than "today's default", so
#: that changing a default later (e.g. turning coverage on) does not make old runs look as if they
#: had run with the new value.
ADDED_SETTINGS: dict[str, Any] = {
    "coverage": 0.0,
    "llm_epochs": 1,
    "llm_alpha": 0.5,
    "llm_rehearsal": 0.0,
    "students": [],  # the toy worlds' signature; the real-model one records "student" instead
}
ADDED_FILTER_SETTINGS: dict[str, Any] = {"coverage_fraction": 0.0}
#: Settings that runs were saved with and that no longer exist, at the value that means the same
#: as not having them: the toy worlds' ``student`` (None) before imported students became a list.
REMOVED_SETTINGS: dict[str, Any] = {"student": None}


def same_run(saved: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Whether a saved run's settings are ``expected``, counting a setting it lacks at the value it
    ran with (:data:`ADDED_SETTINGS`, where ``expected`` has it) and one it has that no longer
    exists at its neutral value (:data:`REMOVED_SETTINGS`), so a new option does not throw away
    hours of saved runs."""
    filled = {**{k: v for k, v in ADDED_SETTINGS.items() if k in expected}, **saved}
    for key, neutral in REMOVED_SETTINGS.items():
        if key not in expected and key in filled and filled[key] == neutral:
            del filled[key]
    if "slm_filter" in saved:
        filled["slm_filter"] = {**ADDED_FILTER_SETTINGS, **saved["slm_filter"]}
    return filled == expected


def say(*parts: Any) -> None:
    print(*parts, flush=True)


# ------------------------------------------------------------------------------------ fixtures
def world(n_public: int = 320) -> dict[str, Path]:
    """A tiny offline federation (data, tokenizer, LLM, slm-large/medium/small + ONNX exports),
    built once with :func:`lada_coordinator.federation.prepare` and cached under
    ``benchmarks/.cache/world``. Client ``i`` holds preset ``SLM_PRESETS[i % 3]``."""
    from lada_coordinator.federation import SLM_PRESETS, FederationSettings, prepare

    settings = FederationSettings(
        workdir=CACHE_DIR / "world",
        clients=len(SLM_PRESETS),
        n_train=40,
        n_test=16,
        n_public=n_public,
        llm_warmup_steps=4,
        slm_warmup_steps=4,
    )
    paths = prepare(settings)
    paths["tokenizer"] = settings.workdir / "tokenizer"
    for i, preset in enumerate(SLM_PRESETS):
        paths[preset] = paths[f"client{i}"]
    return paths


def slm_accuracy(onnx_model: Path, samples) -> float:
    """Greedy exact-match accuracy of an exported SLM on ``samples``, with the client's own
    evaluation settings (``ClientConfig`` generation cap and batch size), so benchmark figures
    match what a client reports during rounds."""
    from lada_client.common.reasoning import format_prompt, is_correct
    from lada_client.config import ClientConfig, DistillSettings
    from lada_client.scoring.onnx_slm import OnnxSLM

    defaults = ClientConfig.__dataclass_fields__
    model = OnnxSLM(
        onnx_model, max_length=DistillSettings().max_length, max_new_tokens=defaults["max_new_tokens"].default
    )
    answers = model.generate([format_prompt(s.question) for s in samples], batch_size=defaults["batch_size"].default)
    return float(sum(is_correct(a, s.answer) for a, s in zip(answers, samples)) / max(1, len(samples)))


def public_samples(paths: dict[str, Path]):
    from lada_client.data.federation import load_public

    return load_public(paths["data"])


def candidates(samples, n: int):
    """``n`` round candidates built from public samples (teacher path = the sample's rationale),
    cycling through the pool if it is smaller than ``n``; sample ids stay unique."""
    from lada_client.common.wire import Candidate

    out = []
    for i in range(n):
        s = samples[i % len(samples)]
        tokens = max(1, len(s.rationale.split()) + 2)
        out.append(
            Candidate(
                sample_id=f"{s.sample_id}#{i}",
                question=s.question,
                path=s.rationale,
                llm_logprob=-0.8 * tokens,
                llm_tokens=tokens,
            )
        )
    return out
