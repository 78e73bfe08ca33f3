"""Choosing a training backend by name: a :class:`~lada_client.training.backend.TrainerBackend`.

* ``"torch"`` — :class:`~lada_client.training.lora.LoraTrainer` (the ``train`` extra);
* ``"ort"`` — :class:`~lada_client.training.ort_backend.OrtTrainer` (onnxruntime-training, no torch).

Each trainer module is imported only when its trainer is built, so choosing one never imports the
other backend's packages; whether a backend can run here is :mod:`lada_client.capabilities`' one
answer (the same for the config, enrollment and the bridge).
"""

from __future__ import annotations

from pathlib import Path

from lada_client.capabilities import (
    ORT_INSTALL_HINT,
    TORCH_INSTALL_HINT,
    can_train_ort,
    can_train_torch,
    missing_modules,
)
from lada_client.config import ClientConfig, ComputeSettings, LoraSettings
from lada_client.training.backend import BackendUnavailable, TrainerBackend

__all__ = ["BACKENDS", "available_backends", "make_trainer", "trainer_for"]

#: the backend names a config may ask for
BACKENDS = ("torch", "ort")


def available_backends() -> dict[str, bool]:
    return {"torch": can_train_torch(), "ort": can_train_ort()}


def make_trainer(
    backend: str,
    *,
    base_dir: Path | None = None,
    artifacts_dir: Path | None = None,
    adapter_dir: Path | None = None,
    lora: LoraSettings | None = None,
    seed: int = 0,
    threads: int | None = None,
    compute: ComputeSettings | None = None,
) -> TrainerBackend:
    """A trainer of the named backend; a clear :class:`BackendUnavailable` if it is not installed.

    ``torch`` needs ``base_dir`` (the SLM checkpoint); ``ort`` needs ``artifacts_dir`` (from
    ``python -m lada_client.training.ort_artifacts``). ``adapter_dir`` resumes a saved adapter.
    ``compute`` places the torch trainer (default: float32, the best available device).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown training backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        if not can_train_torch():
            raise BackendUnavailable(
                "the 'torch' training backend needs the train extra (torch, transformers, peft), which is not "
                f"fully installed here (missing: {', '.join(missing_modules()) or '?'}): {TORCH_INSTALL_HINT}; "
                "or use train_backend='ort'"
            )
        if base_dir is None:
            raise ValueError("the 'torch' training backend needs base_model_dir (the SLM checkpoint)")
        from lada_client.training.lora import LoraTrainer  # imports torch

        compute = compute or ComputeSettings(dtype="float32")  # as a client trains by default (ClientConfig)
        return LoraTrainer(Path(base_dir), adapter_dir, lora or LoraSettings(), seed, compute)
    if not can_train_ort():
        raise BackendUnavailable(
            f"the 'ort' training backend needs onnxruntime.training, which is not importable here; {ORT_INSTALL_HINT}"
        )
    if artifacts_dir is None:
        raise ValueError(
            "the 'ort' training backend needs ort_artifacts: a directory built by "
            "`python -m lada_client.training.ort_artifacts build --base-model <base_model_dir> --out <dir>`"
        )
    from lada_client.training.ort_backend import OrtTrainer

    return OrtTrainer(Path(artifacts_dir), adapter_dir, threads=threads)


def trainer_for(config: ClientConfig, adapter_dir: Path | None) -> TrainerBackend:
    """The trainer a client config asks for (``train_backend``, default ``"torch"``)."""
    return make_trainer(
        getattr(config, "train_backend", "torch"),
        base_dir=config.base_model_dir,
        artifacts_dir=getattr(config, "ort_artifacts", None),
        adapter_dir=adapter_dir,
        lora=config.lora,
        seed=config.distill.seed,
        compute=config.compute,
    )
