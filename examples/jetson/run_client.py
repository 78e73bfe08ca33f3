"""Run a LaDa client on an NVIDIA Jetson, with the device's runtime settings from one JSON file.

``jetson.json`` has two sections: ``client`` (the usual :class:`ClientConfig` fields) and
``device`` (how to use this board)::

    power_mode          nvpmodel mode the board should be in (checked; applied if allowed)
    apply_power_mode    set it with `nvpmodel -m` when it differs (needs root)
    memory_limit_mb     memory budget of the client process; 0 = none
    gpu_mem_limit_mb    onnxruntime CUDA arena cap; 0 = half of memory_limit_mb
    intra_op_threads    onnxruntime CPU threads; 0 = one per core
    providers           execution providers, in order of preference
    trt_fp16            let TensorRT build FP16 engines
    trt_engine_cache_dir  keep built TensorRT engines across restarts ("" = no cache)

Providers are chosen by availability (TensorRT, then CUDA, then CPU by default) with
:func:`lada_client.select_providers`, and each gets options derived from the
memory budget. A Jetson's GPU shares DRAM with the CPU, so the CUDA arena, TensorRT's workspace
and the process's own heap all draw on the same ``memory_limit_mb``; the systemd unit enforces
the budget on the whole process with ``MemoryMax``.

Usage::

    python run_client.py --config jetson.json --check          # providers, power, memory; no network
    python run_client.py --config jetson.json --enroll-only --token <one-time token>
    python run_client.py --config jetson.json                  # take part until the federation ends
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from lada_client import (
    ClientConfig,
    ConfigError,
    CoordinatorError,
    LadaClient,
    ModelLoadError,
    OnnxSLM,
    format_prompt,
    format_target,
    select_providers,
)

log = logging.getLogger("lada_jetson")

DEFAULT_PROVIDERS: tuple[str, ...] = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
MIB = 1024 * 1024
# TensorRT needs scratch memory to try tactics while building an engine; more than this buys little
# for a small decoder and takes it from the shared DRAM.
MAX_TRT_WORKSPACE_MB = 1024


@dataclass(frozen=True)
class DeviceSettings:
    """The ``device`` section of ``jetson.json``."""

    power_mode: int | None = None
    apply_power_mode: bool = False
    memory_limit_mb: int = 0
    gpu_mem_limit_mb: int = 0
    intra_op_threads: int = 0
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    trt_fp16: bool = True
    trt_engine_cache_dir: str = ""

    def __post_init__(self) -> None:
        ints = {
            "memory_limit_mb": self.memory_limit_mb,
            "gpu_mem_limit_mb": self.gpu_mem_limit_mb,
            "intra_op_threads": self.intra_op_threads,
        }
        for name, value in ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"device.{name} must be an integer >= 0 (got {value!r})")
        if self.power_mode is not None and (not isinstance(self.power_mode, int) or self.power_mode < 0):
            raise ValueError(f"device.power_mode must be an nvpmodel mode id >= 0 or null (got {self.power_mode!r})")
        if not self.providers or not all(isinstance(p, str) and p for p in self.providers):
            raise ValueError("device.providers must be a non-empty list of onnxruntime provider names")
        if self.memory_limit_mb and self.gpu_mem_limit_mb > self.memory_limit_mb:
            raise ValueError(
                "device.gpu_mem_limit_mb cannot exceed device.memory_limit_mb (the GPU shares that memory)"
            )

    @property
    def gpu_limit_mb(self) -> int:
        """CUDA arena cap: explicit, or half the budget (the rest: Python, tokenizer, data, graph)."""
        return self.gpu_mem_limit_mb or self.memory_limit_mb // 2

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown device setting(s) {sorted(unknown)}; known: {sorted(known)}")
        d = dict(data)
        if "providers" in d:
            if not isinstance(d["providers"], list):
                raise ValueError("device.providers must be a list")
            d["providers"] = tuple(d["providers"])
        return cls(**d)


def load_settings(path: Path) -> tuple[ClientConfig, DeviceSettings]:
    """Read ``jetson.json``: ``{"client": {...ClientConfig...}, "device": {...}}``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("client"), dict):
        raise ValueError(f'{path} must be an object with a "client" section (and optionally "device")')
    unknown = set(data) - {"client", "device"}
    if unknown:
        raise ValueError(f'{path}: unknown section(s) {sorted(unknown)}; expected "client" and "device"')
    try:
        client = ClientConfig.from_dict(data["client"])
    except ConfigError as exc:  # one line per bad field, each named
        raise exc.located(f"{path}: client section") from None
    try:
        return client, DeviceSettings.from_dict(data.get("device") or {})
    except TypeError as exc:
        raise ValueError(f"{path}: {exc}") from exc


# ----------------------------------------------------------------------------- onnxruntime
def choose_providers(device: DeviceSettings) -> list[str]:
    """The providers to use, by availability in ``device.providers`` order, logged."""
    chosen = select_providers(device.providers)
    skipped = [p for p in device.providers if p not in chosen]
    log.info("execution providers: using %s%s", chosen, f" (not available here: {skipped})" if skipped else "")
    return chosen


def provider_options(providers: Sequence[str], device: DeviceSettings) -> list[dict[str, str]]:
    """Per-provider options (onnxruntime takes them as strings) that keep to the memory budget."""
    options: list[dict[str, str]] = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            opts = {"trt_fp16_enable": str(device.trt_fp16)}
            if device.gpu_limit_mb:
                opts["trt_max_workspace_size"] = str(min(device.gpu_limit_mb, MAX_TRT_WORKSPACE_MB) * MIB)
            if device.trt_engine_cache_dir:
                # Engines take minutes to build on a Jetson; caching them makes restarts cheap.
                opts["trt_engine_cache_enable"] = "True"
                opts["trt_engine_cache_path"] = device.trt_engine_cache_dir
            options.append(opts)
        elif name == "CUDAExecutionProvider":
            opts = {}
            if device.gpu_limit_mb:
                # kSameAsRequested: grow the arena by what is asked, not by doubling past the cap.
                opts = {"gpu_mem_limit": str(device.gpu_limit_mb * MIB), "arena_extend_strategy": "kSameAsRequested"}
            options.append(opts)
        else:
            options.append({})
    return options


class TunedOnnxSLM(OnnxSLM):
    """:class:`OnnxSLM` with the device's providers, per-provider options (arena cap, TensorRT
    workspace and engine cache) and, under a memory budget, no CPU arena; scoring and generation
    stay OnnxSLM's."""

    def __init__(
        self, model_path: Path, device: DeviceSettings, max_length: int = 256, max_new_tokens: int = 48
    ) -> None:
        providers = choose_providers(device)
        per_provider = provider_options(providers, device)
        if device.trt_engine_cache_dir and "TensorrtExecutionProvider" in providers:
            Path(device.trt_engine_cache_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(
            model_path,
            providers=providers,
            max_length=max_length,
            intra_op_threads=device.intra_op_threads,
            max_new_tokens=max_new_tokens,
            provider_options=dict(zip(providers, per_provider, strict=True)),
            # The CPU arena keeps every peak allocation for the life of the session; with a
            # budget, give memory back instead.
            cpu_mem_arena=not device.memory_limit_mb,
        )
        log.info("scoring session on %s (options %s)", self.providers, dict(zip(providers, per_provider, strict=True)))
        if self.providers[0] != providers[0]:
            log.warning("onnxruntime could not start %s; the session runs on %s", providers[0], self.providers)


class JetsonClient(LadaClient):
    """A :class:`LadaClient` whose scoring model runs with the device settings, at start-up and
    after every adapter refresh."""

    def __init__(self, config: ClientConfig, device: DeviceSettings) -> None:
        self.device = device  # set first: LadaClient.__init__ loads the model
        super().__init__(config)

    def load_slm(self, path: Path) -> OnnxSLM:
        return TunedOnnxSLM(path, self.device, self.config.distill.max_length, self.config.max_new_tokens)


# -------------------------------------------------------------------------- power and memory
def read_power_mode() -> int | None:
    """The current nvpmodel mode id, or None where there is no nvpmodel (not a Jetson)."""
    nvpmodel = shutil.which("nvpmodel")
    if nvpmodel is None:
        return None
    try:
        out = subprocess.run([nvpmodel, "-q"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot query the power mode with nvpmodel -q: %s", exc)
        return None
    # "NV Power Mode: 15W\n2\n": the mode id is the last line that is a bare number.
    ids = [int(line) for line in out.split() if re.fullmatch(r"\d+", line)]
    return ids[-1] if ids else None


def check_power_mode(device: DeviceSettings) -> int | None:
    """Compare the board's power mode with the configured one; set it if allowed and needed."""
    current = read_power_mode()
    if device.power_mode is None:
        log.info("power mode: %s (not configured)", "unknown" if current is None else current)
        return current
    if current is None:
        log.info("power mode: nvpmodel not found; is this a Jetson? (configured mode %d ignored)", device.power_mode)
        return None
    if current == device.power_mode:
        log.info("power mode: %d, as configured", current)
        return current
    if device.apply_power_mode and os.geteuid() == 0:
        subprocess.run(["nvpmodel", "-m", str(device.power_mode)], check=True, timeout=30)
        log.info("power mode: set %d (was %d)", device.power_mode, current)
        return device.power_mode
    log.warning(
        "power mode is %d but %d is configured; run `sudo nvpmodel -m %d` (the systemd unit does it with ExecStartPre)",
        current,
        device.power_mode,
        device.power_mode,
    )
    return current


def memory_report(device: DeviceSettings) -> dict[str, int | None]:
    """Physical memory and the cgroup limit in MiB, with a warning if the budget cannot fit."""
    meminfo: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                meminfo[key] = int(value.split()[0]) // 1024  # kB -> MiB
    except (OSError, ValueError, IndexError):
        pass
    total, available = meminfo.get("MemTotal"), meminfo.get("MemAvailable")
    cgroup = None
    try:
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        cgroup = None if raw == "max" else int(raw) // MIB
    except (OSError, ValueError):
        pass
    limit = device.memory_limit_mb
    if limit:
        if total is not None and limit > total:
            log.warning("memory_limit_mb %d exceeds the board's %d MiB", limit, total)
        if cgroup is not None and cgroup < limit:
            log.warning(
                "the service's MemoryMax (%d MiB) is below memory_limit_mb (%d): expect OOM kills", cgroup, limit
            )
    log.info(
        "memory: budget %s MiB (GPU arena %s MiB), board %s MiB, available %s MiB, cgroup limit %s",
        limit or "unlimited",
        device.gpu_limit_mb or "uncapped",
        total,
        available,
        "none" if cgroup is None else f"{cgroup} MiB",
    )
    return {
        "budget_mb": limit,
        "gpu_arena_mb": device.gpu_limit_mb,
        "total_mb": total,
        "available_mb": available,
        "cgroup_mb": cgroup,
    }


def check(config: ClientConfig, device: DeviceSettings) -> dict[str, Any]:
    """Load the model as a round would and score one example: first-run engine builds happen here."""
    power = check_power_mode(device)
    memory = memory_report(device)
    model_path = config.state_dir / "model.onnx"
    if not model_path.exists():
        model_path = config.scoring_model
    started = time.perf_counter()
    slm = TunedOnnxSLM(model_path, device, config.distill.max_length, config.max_new_tokens)
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    lps = slm.completion_logprobs([format_prompt("What is 2 + 3?")], [format_target("2 + 3 = 5. The answer is 5.")])
    warmup = time.perf_counter() - started
    log.info("model %s loaded in %.1fs, first score in %.1fs", model_path, loaded, warmup)
    return {
        "model": str(model_path),
        "providers": slm.providers,
        "power_mode": power,
        "memory": memory,
        "device": asdict(device),
        "load_s": round(loaded, 3),
        "first_score_s": round(warmup, 3),
        "first_score_tokens": len(lps[0]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="LaDa client for NVIDIA Jetson")
    parser.add_argument("--config", type=Path, required=True, help="jetson.json (client + device sections)")
    parser.add_argument("--token", help="one-time enrollment token (first run only)")
    parser.add_argument("--coordinator-url", help="override client.coordinator_url")
    parser.add_argument("--max-rounds", type=int)
    parser.add_argument("--results", type=Path, help="write per-round results as JSON here")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="check providers, power and memory, score once, exit")
    mode.add_argument("--enroll-only", action="store_true", help="enroll with --token and exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        config, device = load_settings(args.config)
        config = config.with_overrides(token=args.token, coordinator_url=args.coordinator_url)
        if args.check:
            print(json.dumps(check(config, device), indent=2))
            return 0
        check_power_mode(device)
        memory_report(device)
        with JetsonClient(config, device) as client:
            if args.enroll_only:
                log.info("enrolled as %s", client.enroll())
                return 0
            results = client.run(args.max_rounds)
    except (ValueError, FileNotFoundError, ModelLoadError, CoordinatorError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.results:
        args.results.write_text(json.dumps([asdict(r) for r in results], indent=2))
    log.info("done: took part in %d round(s)", len(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
