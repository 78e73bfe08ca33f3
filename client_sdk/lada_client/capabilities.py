"""Can this device train? One answer, used by the config, the trainer factory, enrollment and the bridge.

A device declares ``can_train`` when it enrolls, and the coordinator plans rounds around it: a
device that declares it wrongly is allocated teacher paths and then fails in its first update. So
the check asks for every package the configured backend imports (for ``"torch"``: torch,
transformers *and* peft), and the files it needs, without importing anything: importing torch
costs seconds on a phone, and a device that only scores has none of it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ORT_INSTALL_HINT",
    "TORCH_MODULES",
    "TrainingSupport",
    "can_train_ort",
    "can_train_torch",
    "has_module",
    "missing_modules",
    "training_support",
]

#: what the ``"torch"`` backend imports (the ``train`` extra)
TORCH_MODULES: tuple[str, ...] = ("torch", "transformers", "peft")

TORCH_INSTALL_HINT = "pip install torch==2.13.0 './client_sdk[train]'"
ORT_INSTALL_HINT = (
    "install onnxruntime-training in its own environment (it replaces onnxruntime and needs onnx 1.17): "
    "`bash scripts/setup_ort_training.sh`, or `pip install onnxruntime-training-cpu==1.19.2 onnx==1.17.0 'numpy<2'` "
    "then `pip install --no-deps ./client_sdk`; or use train_backend='torch'"
)


def has_module(name: str) -> bool:
    """``name`` is importable here, found without importing it. A module set to ``None`` in
    ``sys.modules`` (Python's way to block an import) counts as missing."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module without a spec
        return False


def missing_modules(names: tuple[str, ...] = TORCH_MODULES) -> list[str]:
    return [name for name in names if not has_module(name)]


def can_train_torch() -> bool:
    """torch, transformers and peft are all installed (the ``train`` extra)."""
    return not missing_modules(TORCH_MODULES)


def can_train_ort() -> bool:
    """``onnxruntime.training.api`` is installed (the onnxruntime-training wheel), found without
    importing anything: the plain onnxruntime wheel ships no ``training`` package, and importing
    ``onnxruntime.training`` itself would pull torch in (see :mod:`~lada_client.training.ort_backend`)."""
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(p) / "training" / "api" / "__init__.py").is_file() for p in spec.submodule_search_locations)


@dataclass(frozen=True)
class TrainingSupport:
    """Whether a device configured with ``backend`` can run LoRA updates, and if not, why."""

    backend: str
    can_train: bool
    reason: str = ""  # empty when it can train

    def __bool__(self) -> bool:
        return self.can_train


def training_support(backend: str, base_model_dir: Path | None, ort_artifacts: Path | None) -> TrainingSupport:
    """Can a device train with ``backend`` (``"torch"`` or ``"ort"``) and these files? The one
    check behind ``ClientConfig.can_train``, the ``can_train`` a device declares at enrollment,
    and the bridge's ``train``."""
    if backend == "ort":
        if ort_artifacts is None:
            return TrainingSupport(
                backend,
                False,
                "no ort_artifacts configured (built off the device with "
                "`python -m lada_client.training.ort_artifacts build`)",
            )
        if not can_train_ort():
            return TrainingSupport(backend, False, f"onnxruntime.training is not importable here; {ORT_INSTALL_HINT}")
        return TrainingSupport(backend, True)
    if backend != "torch":
        return TrainingSupport(backend, False, f"unknown training backend {backend!r}; choose 'torch' or 'ort'")
    if base_model_dir is None:
        return TrainingSupport(
            backend, False, "no base_model_dir configured (the SLM checkpoint the LoRA adapter sits on)"
        )
    missing = missing_modules(TORCH_MODULES)
    if missing:
        return TrainingSupport(
            backend,
            False,
            f"the 'train' extra is not fully installed here (missing: {', '.join(missing)}): {TORCH_INSTALL_HINT}",
        )
    return TrainingSupport(backend, True)
