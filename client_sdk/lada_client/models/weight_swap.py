"""Refresh an ONNX scoring model after a LoRA update by swapping weights, not re-exporting.

A LoRA step changes only the adapted projections. Re-exporting means tracing the whole model
again (optimum + torch.onnx: seconds, and a heavy import on a device); swapping writes the merged
weights ``W + scale·B·A`` straight into the matching ONNX initializers of the graph exported once.

The exporter renames and transposes initializers (``q_proj.weight`` becomes ``onnx::MatMul_123``
holding ``Wᵀ``), so the map from parameter names to initializers is found by *value* against the
checkpoint that produced the graph, once, and cached beside the model. If any weight cannot be
matched unambiguously, :func:`build_weight_map` says so and callers fall back to re-exporting.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lada_client.common.wire import LoraFactor

log = logging.getLogger(__name__)

WEIGHT_MAP_FILE = "weight_map.json"


class WeightMapError(Exception):
    """The graph's initializers do not match the given weights one to one."""


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def weight_digests(w: np.ndarray) -> tuple[str, str]:
    """(digest of W, digest of Wᵀ): how a device finds W's initializer without holding W."""
    return _digest(w), _digest(w.T)


def encode_array(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def decode_array(text: str, shape: tuple[int, int]) -> np.ndarray:
    data = base64.b64decode(text.encode("ascii"), validate=True)
    if len(data) != 4 * shape[0] * shape[1]:
        raise WeightMapError(f"array of shape {tuple(shape)} needs {4 * shape[0] * shape[1]} bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<f4").reshape(shape).astype(np.float32)


def apply_lora_factors(onnx_path: Path, out_path: Path, factors: Sequence[LoraFactor]) -> Path:
    """Write ``W + scale·B·A`` for every factor into a copy of ``onnx_path`` (the base export).

    What a score-only device does with an adapter the coordinator trained for it: ``W`` is read
    from the graph itself, found by the digest the coordinator sent, so the device needs neither
    the checkpoint nor torch. Raises :class:`WeightMapError` if a factor matches no initializer.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=True)
    by_digest: dict[str, list[str]] = {}
    for init in model.graph.initializer:
        by_digest.setdefault(_digest(numpy_helper.to_array(init)), []).append(init.name)
    arrays = {init.name: init for init in model.graph.initializer}
    mapping: dict[str, dict[str, object]] = {}
    merged: dict[str, np.ndarray] = {}
    for f in factors:
        for transposed, digest in ((False, f.digest), (True, f.digest_t)):  # noqa: B007 - read after the loop
            found = by_digest.get(digest, [])
            if len(found) > 1:
                raise WeightMapError(f"{f.name} matches several initializers {found}; cannot apply safely")
            if found:
                break
        else:
            raise WeightMapError(f"no initializer of {onnx_path.name} holds the base weights of {f.name}")
        base = numpy_helper.to_array(arrays[str(found[0])])
        base = base.T if transposed else base
        delta = f.scale * decode_array(f.b, f.b_shape) @ decode_array(f.a, f.a_shape)
        if delta.shape != base.shape:
            raise WeightMapError(f"{f.name}: B·A has shape {delta.shape}, the base weights {base.shape}")
        mapping[f.name] = {"initializer": found[0], "transposed": transposed}
        merged[f.name] = base + delta
    return swap_weights(onnx_path, out_path, mapping, merged)


def build_weight_map(onnx_path: Path, weights: Mapping[str, np.ndarray]) -> dict[str, dict[str, object]]:
    """Map each of ``weights`` (name → array as in the checkpoint) to ``{"initializer", "transposed"}``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=True)
    by_digest: dict[str, list[str]] = {}
    for init in model.graph.initializer:
        by_digest.setdefault(_digest(numpy_helper.to_array(init)), []).append(init.name)
    mapping: dict[str, dict[str, object]] = {}
    for name, w in weights.items():
        for transposed, candidate in ((True, w.T), (False, w)):
            found = by_digest.get(_digest(candidate), [])
            if len(found) == 1:
                mapping[name] = {"initializer": found[0], "transposed": transposed}
                break
            if len(found) > 1:
                raise WeightMapError(f"{name} matches several initializers {found}; cannot swap safely")
        else:
            raise WeightMapError(f"no initializer of {onnx_path.name} holds {name}")
    return mapping


def swap_weights(
    onnx_path: Path, out_path: Path, mapping: Mapping[str, Mapping[str, object]], weights: Mapping[str, np.ndarray]
) -> Path:
    """Write ``weights`` into a copy of ``onnx_path`` at ``out_path`` (atomic replace). A graph whose
    weights live beside it (``<name>.data``, models of 2 GiB or more) is not swapped in place: the
    caller re-exports instead (:class:`WeightMapError`)."""
    import onnx
    from onnx import numpy_helper

    if Path(str(onnx_path) + ".data").exists():
        raise WeightMapError(f"{onnx_path.name} keeps its weights in external data; re-export instead")
    model = onnx.load(str(onnx_path), load_external_data=True)
    index = {init.name: i for i, init in enumerate(model.graph.initializer)}
    for name, w in weights.items():
        entry = mapping.get(name)
        if entry is None:
            raise WeightMapError(f"{name} is not in the weight map")
        i = index.get(str(entry["initializer"]))
        if i is None:  # a map built for another export of the model
            raise WeightMapError(f"{name}: initializer {entry['initializer']} is not in {onnx_path.name}")
        old = model.graph.initializer[i]
        value = np.ascontiguousarray(w.T if entry["transposed"] else w, dtype=np.float32)
        if tuple(old.dims) != value.shape:
            raise WeightMapError(f"{name}: shape {value.shape} does not fit initializer {old.name} {tuple(old.dims)}")
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, old.name))
    tmp = out_path.with_suffix(".onnx.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, out_path)
    return out_path


def load_or_build_map(
    directory: Path, onnx_path: Path, weights: Mapping[str, np.ndarray]
) -> dict[str, dict[str, object]]:
    """The cached map in ``directory``, built from ``onnx_path`` and ``weights`` on first use, and
    again when ``onnx_path`` changed since (a re-export renames the initializers)."""
    cached = directory / WEIGHT_MAP_FILE
    stat = Path(onnx_path).stat()
    source = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if cached.exists():
        stored = json.loads(cached.read_text())
        mapping = stored.get("map", {}) if isinstance(stored, dict) else {}
        if stored.get("source") == source and set(mapping) >= set(weights):
            return mapping
    mapping = build_weight_map(onnx_path, weights)
    cached.write_text(json.dumps({"source": source, "map": mapping}))
    return mapping
