"""On-device LoRA training with ONNX Runtime training artifacts: no torch on the device.

:class:`OrtTrainer` is the ``"ort"`` training backend (:mod:`lada_client.training.backend`). It
loads the artifacts written by :mod:`lada_client.training.ort_artifacts` (training, eval and
optimizer graphs, the parameter checkpoint and ``lada_ort.json``) with
``onnxruntime.training.api`` and takes a round exactly like
:class:`~lada_client.training.lora.LoraTrainer`: same shuffles from the same seed, same batches,
π_ref computed once before the first step, a fresh AdamW every round. The loss
``L_SFT + α·L_CD`` is computed inside the training graph; this module feeds token ids and masks
(numpy) and reads the losses back.

Differences to the torch backend, all without effect on the result beyond float rounding:

* a step's L_SFT rows, chosen paths and rejected paths go through the model as *one* right-padded
  batch (torch pads the three separately and runs three forwards);
* LoRA dropout is not in the graph (the default dropout is 0);
* a round without preference pairs feeds one dummy pair (a row against itself, zero references)
  with α = 0, which contributes exactly zero gradient.

Dependencies: ``onnxruntime-training`` (which *replaces* the ``onnxruntime`` wheel), numpy,
tokenizers, and ``onnx`` only for the scorer weight swap. onnxruntime-training 1.19's package
``__init__`` imports torch for its ORTModule tooling (microsoft/onnxruntime#22070);
:func:`import_ort_training` loads ``onnxruntime.training.api`` without running it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import struct
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lada_client.capabilities import ORT_INSTALL_HINT, can_train_ort
from lada_client.config import DistillSettings
from lada_client.models.encoding import encode_pairs
from lada_client.models.tokenizer import SpecialTokens
from lada_client.training.backend import BackendUnavailable, PreferencePair, TrainReport, batch_schedule, path_weights

log = logging.getLogger(__name__)

MANIFEST = "lada_ort.json"  # = ort_artifacts.MANIFEST (that module imports torch lazily only)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ORT_CHECKPOINT = "ort_checkpoint"
EVAL_BATCH = 16


def import_ort_training() -> types.SimpleNamespace:
    """``onnxruntime.training``'s ``api`` (and, when importable, ``artifacts``/``onnxblock``).

    With torch installed this is a plain import. Without it, the package ``__init__`` of
    onnxruntime-training 1.19 fails on ``import torch`` (its ``optim`` helpers are for ORTModule),
    although ``api``, ``artifacts`` and ``onnxblock`` do not need torch; then the package is
    registered as a bare namespace so its submodules import without its ``__init__``.
    """
    if not can_train_ort():
        raise BackendUnavailable(f"onnxruntime.training is not importable here; {ORT_INSTALL_HINT}")
    if "onnxruntime.training" not in sys.modules and importlib.util.find_spec("torch") is None:
        import onnxruntime

        shell = types.ModuleType("onnxruntime.training")
        shell.__path__ = [str(Path(onnxruntime.__file__).parent / "training")]
        shell.__package__ = "onnxruntime.training"
        shell.__doc__ = "onnxruntime.training without its torch-only __init__ (lada_client.training.ort_backend)"
        sys.modules["onnxruntime.training"] = shell
        onnxruntime.training = shell
    api = importlib.import_module("onnxruntime.training.api")
    found = types.SimpleNamespace(api=api, artifacts=None, onnxblock=None)
    try:
        found.artifacts = importlib.import_module("onnxruntime.training.artifacts")
        found.onnxblock = importlib.import_module("onnxruntime.training.onnxblock")
    except ImportError as exc:  # generate_artifacts needs the onnx package; training does not
        log.debug("onnxruntime.training.artifacts not importable: %s", exc)
    return found


def artifact_architecture_id(artifacts_dir: Path) -> str | None:
    """The base model's architecture id recorded at export (what co-tuning groups devices by)."""
    try:
        return json.loads((Path(artifacts_dir) / MANIFEST).read_text()).get("architecture_id")
    except (OSError, ValueError):
        return None


class OrtTrainer:
    """A LoRA adapter trained with ONNX Runtime training artifacts (see the module docstring)."""

    backend = "ort"

    def __init__(
        self,
        artifacts_dir: Path,
        adapter_dir: Path | None = None,
        *,
        checkpoint: Path | None = None,
        threads: int | None = None,
    ) -> None:
        self._ort = import_ort_training().api
        self.artifacts_dir = Path(artifacts_dir)
        missing = [
            n
            for n in (
                "training_model.onnx",
                "eval_model.onnx",
                "optimizer_model.onnx",
                "checkpoint",
                MANIFEST,
                "tokenizer.json",
            )
            if not (self.artifacts_dir / n).exists()
        ]
        if missing:
            raise FileNotFoundError(
                f"{self.artifacts_dir} is not a complete ORT training artifact directory "
                f"(missing {', '.join(missing)}); build it with "
                "`python -m lada_client.training.ort_artifacts build --base-model <base_model_dir> --out <dir>`"
            )
        self.manifest = json.loads((self.artifacts_dir / MANIFEST).read_text())
        self._trainable = [(t["name"], tuple(t["shape"]), t["peft_key"]) for t in self.manifest["trainable"]]
        self.special = SpecialTokens(**self.manifest["special_tokens"])
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(self.artifacts_dir / "tokenizer.json"))
        self.threads = threads
        self._state = self._ort.CheckpointState.load_checkpoint(str(checkpoint or self.artifacts_dir / "checkpoint"))
        self._module: Any = None
        self._optimizer: Any = None
        peft_weights = None
        if checkpoint is None and adapter_dir is not None:
            adapter_dir = Path(adapter_dir)
            if (adapter_dir / ORT_CHECKPOINT).exists():
                self._state = self._ort.CheckpointState.load_checkpoint(str(adapter_dir / ORT_CHECKPOINT))
            elif (adapter_dir / ADAPTER_WEIGHTS).exists():
                peft_weights = adapter_dir / ADAPTER_WEIGHTS
        self._open(fresh_optimizer=False)  # parameters can only be written once a Module holds the state
        if peft_weights is not None:
            self.load_adapter_vector(self._vector_from_peft(peft_weights))

    # ------------------------------------------------------------------------------ sessions
    def _session_options(self) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        return options

    def _open(self, fresh_optimizer: bool) -> None:
        """(Re)build Module and Optimizer. A fresh optimizer needs a fresh state: ORT keeps the
        AdamW moments and step in the CheckpointState, LoraTrainer starts AdamW anew each round."""
        vector = None
        if fresh_optimizer:
            vector = self.adapter_vector()
            self._module = self._optimizer = None
            self._state = self._ort.CheckpointState.load_checkpoint(str(self.artifacts_dir / "checkpoint"))
        a = self.artifacts_dir
        self._module = self._ort.Module(
            str(a / "training_model.onnx"),
            self._state,
            str(a / "eval_model.onnx"),
            device="cpu",
            session_options=self._session_options(),
        )
        self._optimizer = self._ort.Optimizer(str(a / "optimizer_model.onnx"), self._module)
        names = self._module.input_names()
        expected = list(self.manifest["inputs"])
        if names[: len(expected)] != expected:
            raise RuntimeError(f"training graph inputs {names} do not match the manifest {expected}")
        if vector is not None:
            self.load_adapter_vector(vector)

    def _inputs(
        self,
        rows: Sequence[tuple[str, str]],
        n_sft: int,
        chosen: Sequence[int],
        rejected: Sequence[int],
        ref_chosen: np.ndarray,
        ref_rejected: np.ndarray,
        alpha: float,
        beta: float,
        max_length: int,
        cd_logprob: str = "sum",
    ) -> list[np.ndarray]:
        """The graph's inputs. Rows from ``n_sft`` on are L_CD paths: their completion mask carries
        the path weights (:func:`path_weights`), which the SFT term never sees (weight 0)."""
        enc = encode_pairs(self.tokenizer, [p for p, _ in rows], [c for _, c in rows], max_length, self.special)
        completion_mask = enc.completion_mask.copy()
        completion_mask[n_sft:] = path_weights(completion_mask[n_sft:], cd_logprob)
        sft_weight = np.zeros(len(rows), dtype=np.float32)
        sft_weight[:n_sft] = 1.0
        if not len(chosen):  # no pairs: one row against itself, zero references, α = 0 → zero gradient
            chosen, rejected, ref_chosen, ref_rejected, alpha = [0], [0], np.zeros(1), np.zeros(1), 0.0
        return [
            enc.input_ids,
            enc.attention_mask,
            completion_mask,
            sft_weight,
            np.asarray(chosen, dtype=np.int64),
            np.asarray(rejected, dtype=np.int64),
            np.asarray(ref_chosen, dtype=np.float32),
            np.asarray(ref_rejected, dtype=np.float32),
            np.asarray(alpha, dtype=np.float32),
            np.asarray(beta, dtype=np.float32),
        ]

    # ------------------------------------------------------------------------------ training
    def sequence_logprobs(
        self, prompts: Sequence[str], completions: Sequence[str], max_length: int = 256
    ) -> np.ndarray:
        """Path log-probs under the current weights (the eval graph), shape ``[N]``."""
        return self._path_scores(prompts, completions, max_length, "sum")

    def _path_scores(
        self, prompts: Sequence[str], completions: Sequence[str], max_length: int, cd_logprob: str
    ) -> np.ndarray:
        self._module.eval()
        out: list[np.ndarray] = []
        rows = list(zip(prompts, completions))
        for start in range(0, len(rows), EVAL_BATCH):
            chunk = rows[start : start + EVAL_BATCH]
            outputs = self._module(
                *self._inputs(chunk, 0, [], [], np.zeros(0), np.zeros(0), 0.0, 1.0, max_length, cd_logprob)
            )
            out.append(np.asarray(outputs[3], dtype=np.float32))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def train_round(
        self,
        teacher: Sequence[tuple[str, str]],
        pairs: Sequence[PreferencePair],
        private: Sequence[tuple[str, str]],
        settings: DistillSettings,
        progress: Callable[[int, int], None] | None = None,
    ) -> TrainReport:
        """Same contract and batching as :meth:`LoraTrainer.train_round`."""
        report = TrainReport(n_pairs=len(pairs))
        if not teacher and not private:
            return report
        self._open(fresh_optimizer=True)
        ref_chosen = ref_rejected = None
        if pairs and settings.alpha > 0:
            prompts = [p.prompt for p in pairs]
            ref_chosen = self._path_scores(prompts, [p.chosen for p in pairs], settings.max_length, settings.cd_logprob)
            ref_rejected = self._path_scores(
                prompts, [p.rejected for p in pairs], settings.max_length, settings.cd_logprob
            )
        self._optimizer.set_learning_rate(settings.lr)
        schedule = list(batch_schedule(teacher, pairs, private, settings, with_pairs=ref_chosen is not None))
        for step, (items, sel) in enumerate(schedule):
            if progress is not None:
                progress(step, len(schedule))
            rows = list(items)
            chosen: list[int] = []
            rejected: list[int] = []
            ref_c = ref_r = np.zeros(0)
            if sel is not None:  # only with reference scores (with_pairs)
                assert ref_chosen is not None and ref_rejected is not None
                batch_pairs = [pairs[i] for i in sel]
                chosen = list(range(len(rows), len(rows) + len(sel)))
                rows += [(p.prompt, p.chosen) for p in batch_pairs]
                rejected = list(range(len(rows), len(rows) + len(sel)))
                rows += [(p.prompt, p.rejected) for p in batch_pairs]
                ref_c, ref_r = ref_chosen[sel], ref_rejected[sel]
            inputs = self._inputs(
                rows,
                len(items),
                chosen,
                rejected,
                ref_c,
                ref_r,
                settings.alpha,
                settings.cd_beta,
                settings.max_length,
                settings.cd_logprob,
            )
            self._module.train()
            _, loss_sft, loss_cd, _ = self._module(*inputs)
            self._optimizer.step()
            self._module.lazy_reset_grad()
            report.steps += 1
            report.sft_loss = float(loss_sft)
            report.cd_loss = float(loss_cd) if ref_chosen is not None else float("nan")
            report.history.append({"sft": report.sft_loss, "cd": report.cd_loss})
        if progress is not None:
            progress(len(schedule), len(schedule))
        self._module.eval()
        log.info(
            "ORT LoRA round: %d steps, L_SFT=%.3f, L_CD=%.3f, %d pairs",
            report.steps,
            report.sft_loss,
            report.cd_loss,
            len(pairs),
        )
        return report

    # ------------------------------------------------------------------------ adapter weights
    def _param(self, name: str) -> np.ndarray:
        return np.asarray(self._state.parameters[name].data)

    def adapter_vector(self) -> np.ndarray:
        """All LoRA weights flattened in LoraTrainer's order (sorted peft parameter names)."""
        return np.concatenate([self._param(n).reshape(-1) for n, _, _ in self._trainable]).astype("float64")

    def load_adapter_vector(self, vector: np.ndarray) -> None:
        total = sum(int(np.prod(s)) for _, s, _ in self._trainable)
        if vector.shape != (total,):
            raise ValueError(f"adapter vector has {vector.shape} values; this adapter has {total}")
        offset = 0
        for name, shape, _ in self._trainable:
            size = int(np.prod(shape))
            self._state.parameters[name] = np.ascontiguousarray(
                vector[offset : offset + size].reshape(shape), dtype=np.float32
            )
            offset += size

    def projection_weights(self, merged: bool = True) -> dict[str, np.ndarray]:
        """Base projection weights by checkpoint name, or merged ``W + scale·B·A`` (the swap's input)."""
        out: dict[str, np.ndarray] = {}
        for p in self.manifest["projections"]:
            w = self._param(p["base"]).astype(np.float32)
            if merged:
                w = w + np.float32(p["scaling"]) * (self._param(p["lora_B"]) @ self._param(p["lora_A"]))
            out[p["weight"]] = w
        return out

    def merged_checkpoint(self, out_dir: Path) -> Path:
        raise NotImplementedError(
            "the 'ort' training backend cannot write a merged Hugging Face checkpoint (that needs torch); "
            "refresh the scorer with scorer_refresh='swap'"
        )

    # --------------------------------------------------------------------------- persistence
    def save(self, adapter_dir: Path) -> Path:
        """Write the adapter in peft's format (``adapter_config.json``, ``adapter_model.safetensors``),
        loadable by this backend and by the torch backend (``PeftModel.from_pretrained``)."""
        adapter_dir = Path(adapter_dir)
        adapter_dir.mkdir(parents=True, exist_ok=True)
        tensors = {key: self._param(name).astype(np.float32) for name, _, key in self._trainable}
        write_safetensors(adapter_dir / ADAPTER_WEIGHTS, tensors, {"format": "pt"})
        (adapter_dir / ADAPTER_CONFIG).write_text(json.dumps(self.manifest["peft_config"], indent=2))
        stale = adapter_dir / ORT_CHECKPOINT
        if stale.exists():  # an older full checkpoint would shadow these weights on the next load
            stale.unlink()
        return adapter_dir

    def save_checkpoint(self, path: Path, include_optimizer_state: bool = False) -> Path:
        """The full ORT CheckpointState (all weights, frozen ones too; optionally AdamW moments)."""
        self._ort.CheckpointState.save_checkpoint(self._state, str(path), include_optimizer_state)
        return Path(path)

    def _vector_from_peft(self, path: Path) -> np.ndarray:
        tensors = read_safetensors(path)
        missing = [key for _, _, key in self._trainable if key not in tensors]
        if missing:
            raise ValueError(f"{path} is not an adapter of this model (missing {missing[:3]})")
        return np.concatenate([tensors[key].reshape(-1) for _, _, key in self._trainable]).astype("float64")


# ------------------------------------------------------------------- safetensors without torch
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    """A ``.safetensors`` file (8-byte header size, JSON header, raw little-endian data)."""
    names = {v: k for k, v in _DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    blobs = []
    for key in sorted(tensors):
        array = np.ascontiguousarray(tensors[key])
        dtype = names.get(array.dtype.type)
        if dtype is None:
            raise ValueError(f"{key}: dtype {array.dtype} is not supported")
        blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[key] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = Path(path).with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)
    tmp.replace(path)
    return Path(path)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    data = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    base = 8 + size
    out = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
        out[key] = np.frombuffer(data[base + start : base + end], dtype=dtype).reshape(entry["shape"]).copy()
    return out
