"""Build ONNX Runtime *training artifacts* for an SLM with a LoRA adapter (done off the device).

The on-device backend (:mod:`lada_client.training.ort_backend`) trains with
``onnxruntime.training.api`` alone, no torch. What it runs is prepared here, once per base model,
on a build machine, in two steps:

1. :func:`export_training_graph` (needs torch, transformers, peft: the ``train`` extra) wraps the
   peft model (base + LoRA, initialised exactly as :class:`~lada_client.training.lora.LoraTrainer`
   does) in a module whose *output is the loss* and exports it with ``torch.onnx``. The loss is
   computed in the graph from its inputs as in :mod:`lada_client.training.losses` (``sft_loss``,
   ``sequence_logprob`` are those functions; token log-probs and L_CD are restated so the
   exporter can trace them: a 4-D attention mask instead of transformers' vmap mask builder, and
   −log σ(z) as a stable softplus instead of Log(Sigmoid)):

   * ``input_ids``, ``attention_mask`` ``[R, T]`` and ``completion_mask`` ``[R, T-1]``: all rows of
     one step (the L_SFT rows, then the chosen paths, then the rejected paths), right-padded; the
     rows of the paths carry L_CD's token weights (``backend.path_weights``: the mask, or the mask
     over the row's length for mean log-probs), so the graph serves either ``cd_logprob``;
   * ``sft_weight`` ``[R]``: 1 for the rows of L_SFT, 0 elsewhere;
   * ``chosen_index``, ``rejected_index`` ``[N]`` (int64): the rows of each pair;
   * ``ref_chosen``, ``ref_rejected`` ``[N]``: π_ref path scores, computed before the step;
   * ``alpha``, ``beta``: scalars.

   Outputs: ``loss = L_SFT + α·L_CD`` (what is differentiated), ``sft_loss``, ``cd_loss`` and
   ``seq_logprobs`` ``[R]`` (the eval model gives π_ref and any path log-prob from this output).
   All LoRA weights are kept as named initializers (no constant folding), the base weights too.

2. :func:`generate_training_artifacts` (needs ``onnxruntime-training``) calls
   ``onnxruntime.training.artifacts.generate_artifacts`` with the LoRA weights as the trainable
   parameters and every other weight frozen, AdamW as the optimizer (switched to PyTorch's AdamW
   update rule, ``adam_mode=0``, with torch's defaults eps=1e-8, weight decay 0.01, so both
   backends take the same step), and writes ``training_model.onnx``, ``eval_model.onnx``,
   ``optimizer_model.onnx``, ``checkpoint`` and :data:`MANIFEST` (parameter order of the adapter
   vector, LoRA scaling, base-weight names for the scorer weight swap, peft adapter config).

The two steps may run in different environments: onnxruntime-training 1.19.2 needs onnx 1.17,
while the main environment has a newer onnx. ``python -m lada_client.training.ort_artifacts build``
runs both where both are installed (e.g. ``.venv-ort`` set up with ``--build``); otherwise run
``export`` with torch and ``generate`` in the ORT environment (see the README).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TypedDict

log = logging.getLogger(__name__)

#: file names inside an artifact directory
TRAINING_GRAPH = "forward_loss.onnx"
MANIFEST = "lada_ort.json"
ARTIFACT_FILES = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint", MANIFEST)
INPUT_NAMES = (
    "input_ids",
    "attention_mask",
    "completion_mask",
    "sft_weight",
    "chosen_index",
    "rejected_index",
    "ref_chosen",
    "ref_rejected",
    "alpha",
    "beta",
)
OUTPUT_NAMES = ("loss", "sft_loss", "cd_loss", "seq_logprobs")


class _AdamW(TypedDict):
    betas: tuple[float, float]
    eps: float
    weight_decay: float


#: what torch.optim.AdamW does by default (LoraTrainer builds it with only ``lr``)
ADAMW: _AdamW = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
OPSET = 17
FORMAT_VERSION = 1


def _loss_module(peft_model: Any) -> Any:
    import torch

    from lada_client.training.losses import sequence_logprob, sft_loss

    def contrastive_loss(
        policy_chosen: torch.Tensor,
        policy_rejected: torch.Tensor,
        reference_chosen: torch.Tensor,
        reference_rejected: torch.Tensor,
        beta: torch.Tensor,
    ) -> torch.Tensor:
        """:func:`~lada_client.training.losses.contrastive_distillation_loss`, with −log σ(z)
        written stably as −s·z + log(1 + exp(−|z|)), s = [z ≤ 0], −|z| = (2s − 1)·z: the exporter
        turns ``logsigmoid`` into Log(Sigmoid(z)), which is inf once σ(z) underflows. s is a
        constant for the gradient, so d/dz is exact everywhere, also at z = 0 (every round's first
        step, where policy = reference): −1 + ½ = −½ (relu/abs forms give 0 there)."""
        margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
        z = beta * margin
        s = (z <= 0).to(z.dtype)
        return (torch.log(1.0 + torch.exp(z * (2.0 * s - 1.0))) - s * z).mean()

    class LossGraph(torch.nn.Module):
        """L = L_SFT + α·L_CD over one step's rows, computed exactly as LoraTrainer computes it."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            """:func:`~lada_client.training.losses.token_logprobs` with the causal + padding mask
            built here as a 4-D additive mask: transformers' own mask builder uses ``vmap``, which
            the TorchScript exporter cannot trace. Same positions, same masked keys, same values."""
            position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
            steps = torch.arange(input_ids.shape[1], device=input_ids.device)
            causal = steps.unsqueeze(0) <= steps.unsqueeze(1)  # [T(query), T(key)]
            allowed = causal.unsqueeze(0).unsqueeze(0) & attention_mask.bool().unsqueeze(1).unsqueeze(2)
            bias = (~allowed).to(torch.float32) * torch.finfo(torch.float32).min
            logits = self.model(input_ids=input_ids, attention_mask=bias, position_ids=position_ids).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            return torch.gather(logp, 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            completion_mask: torch.Tensor,
            sft_weight: torch.Tensor,
            chosen_index: torch.Tensor,
            rejected_index: torch.Tensor,
            ref_chosen: torch.Tensor,
            ref_rejected: torch.Tensor,
            alpha: torch.Tensor,
            beta: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
            token_lp = self.token_logprobs(input_ids, attention_mask)
            seq = sequence_logprob(token_lp, completion_mask)
            loss_sft = sft_loss(token_lp, completion_mask * sft_weight.unsqueeze(1))
            loss_cd = contrastive_loss(seq[chosen_index], seq[rejected_index], ref_chosen, ref_rejected, beta)
            return loss_sft + alpha * loss_cd, loss_sft, loss_cd, seq

    return LossGraph(peft_model)


def _example_inputs(special: Any) -> tuple:
    import torch

    ids = torch.tensor(
        [[special.bos or 1, 5, 6, 7, special.eos], [special.bos or 1, 8, 9, special.eos, special.pad]],
        dtype=torch.int64,
    )
    mask = (torch.arange(5).unsqueeze(0) < torch.tensor([[5], [4]])).to(torch.int64)
    cmask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.float32)
    return (
        ids,
        mask,
        cmask,
        torch.tensor([1.0, 0.0]),
        torch.tensor([0], dtype=torch.int64),
        torch.tensor([1], dtype=torch.int64),
        torch.tensor([-3.0]),
        torch.tensor([-4.0]),
        torch.tensor(0.5),
        torch.tensor(0.1),
    )


def export_training_graph(
    base_dir: Path,
    out_dir: Path,
    lora: Any = None,
    seed: int = 0,
    adapter_dir: Path | None = None,
) -> Path:
    """Export base+LoRA with the in-graph loss to ``out_dir/forward_loss.onnx`` plus a manifest.

    ``lora`` (a :class:`~lada_client.config.LoraSettings`) and ``seed`` must be those the device's
    config uses, so the adapter starts where the torch backend's would (co-tuning aligns adapters
    by seed). ``adapter_dir`` starts from a saved peft adapter instead.
    """
    import torch
    from peft import get_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    from lada_client.config import ComputeSettings, LoraSettings
    from lada_client.models.checkpoint import architecture_id
    from lada_client.training.lora import LoraTrainer

    lora = lora or LoraSettings()
    if lora.dropout > 0:
        log.warning("LoRA dropout %.3f is not exported: the ONNX training graph has no dropout", lora.dropout)
    started = time.perf_counter()
    # the export traces the float32 graph on the CPU, whatever GPU this machine has
    trainer = LoraTrainer(Path(base_dir), adapter_dir, lora, seed, ComputeSettings(device="cpu", dtype="float32"))
    model = trainer.model
    model.eval()
    # eager attention: plain MatMul/Softmax, every op of it has a gradient in onnxruntime-training
    model.base_model.model.config._attn_implementation = "eager"
    module = _loss_module(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    graph_path = out_dir / TRAINING_GRAPH
    dyn = {
        "input_ids": {0: "rows", 1: "seq"},
        "attention_mask": {0: "rows", 1: "seq"},
        "completion_mask": {0: "rows", 1: "targets"},
        "sft_weight": {0: "rows"},
        "chosen_index": {0: "pairs"},
        "rejected_index": {0: "pairs"},
        "ref_chosen": {0: "pairs"},
        "ref_rejected": {0: "pairs"},
        "seq_logprobs": {0: "rows"},
    }
    params = [(n, p) for n, p in sorted(model.named_parameters()) if "lora_" in n]  # LoraTrainer's vector order
    every = list(model.named_parameters())
    real = {n: p.detach().clone() for n, p in every}
    with torch.no_grad():
        # The exporter merges initializers of equal value (fresh lora_B weights are all zero, norm
        # weights all one) behind Identity nodes, which the gradient builder rejects; so trace with
        # distinct placeholder values and write the real ones back by name afterwards.
        generator = torch.Generator().manual_seed(0)
        for _, p in every:
            p.copy_(torch.randn(p.shape, generator=generator))
        torch.onnx.export(
            module,
            _example_inputs(trainer.special),
            str(graph_path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dyn,
            opset_version=OPSET,
            do_constant_folding=False,  # keeps every weight a named initializer (trainable/frozen by name)
            export_params=True,
            dynamo=False,
            external_data=False,
        )
        for n, p in every:
            p.copy_(real[n])
    _write_initializers(
        graph_path, {f"model.{n}": v.numpy() for n, v in real.items()}, [f"model.{n}" for n, _ in params]
    )
    peft_keys = list(get_peft_model_state_dict(model).keys())
    projections = []
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            (adapter,) = layer.active_adapters
            projections.append(
                {
                    "weight": name.removeprefix("base_model.model.") + ".weight",  # as in the base checkpoint
                    "base": f"model.{name}.base_layer.weight",
                    "lora_A": f"model.{name}.lora_A.{adapter}.weight",
                    "lora_B": f"model.{name}.lora_B.{adapter}.weight",
                    "scaling": float(layer.scaling[adapter]),
                }
            )
    peft_config = model.peft_config["default"].to_dict()
    manifest = {
        "format": FORMAT_VERSION,
        "base_dir": str(Path(base_dir).resolve()),
        "architecture_id": architecture_id(Path(base_dir)),  # co-tuning groups devices by it
        "seed": seed,
        "opset": OPSET,
        "inputs": list(INPUT_NAMES),
        "outputs": list(OUTPUT_NAMES),
        "trainable": [
            {"name": f"model.{n}", "shape": list(p.shape), "peft_key": _peft_key(n, peft_keys)} for n, p in params
        ],
        "projections": projections,
        "special_tokens": {"bos": trainer.special.bos, "eos": trainer.special.eos, "pad": trainer.special.pad},
        "adamw": {"betas": list(ADAMW["betas"]), "eps": ADAMW["eps"], "weight_decay": ADAMW["weight_decay"]},
        "peft_config": json.loads(json.dumps(peft_config, default=_jsonable)),
    }
    _check_initializers(graph_path, manifest)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.copy(Path(base_dir) / "tokenizer.json", out_dir / "tokenizer.json")
    log.info("exported the training graph of %s to %s in %.1fs", base_dir, graph_path, time.perf_counter() - started)
    return graph_path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    return str(value)


def _peft_key(param_name: str, peft_keys: list[str]) -> str:
    """The key peft writes for a parameter: the adapter name (``.default``) dropped."""
    key = param_name.replace(".default.", ".")
    if key not in peft_keys:
        raise ValueError(f"no peft state-dict key for {param_name} (tried {key})")
    return key


def _write_initializers(graph_path: Path, values: dict[str, Any], required: list[str]) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph_path))
    seen = set()
    for i, init in enumerate(model.graph.initializer):
        if init.name in values:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(values[init.name].astype("float32"), init.name))
            seen.add(init.name)
    missing = sorted(set(required) - seen)
    if missing:
        raise RuntimeError(f"the exported graph lost weight names: {missing[:5]}")
    onnx.save(model, str(graph_path))


def _check_initializers(graph_path: Path, manifest: dict[str, Any]) -> None:
    """Every trainable and every swapped base weight must be an initializer of the graph, by name."""
    import onnx

    names = {i.name for i in onnx.load(str(graph_path), load_external_data=False).graph.initializer}
    wanted = [t["name"] for t in manifest["trainable"]] + [p["base"] for p in manifest["projections"]]
    missing = [n for n in wanted if n not in names]
    if missing:
        raise RuntimeError(f"the exported graph lost weight names (constant folding?): {missing[:5]}")


def generate_training_artifacts(export_dir: Path, out_dir: Path | None = None) -> Path:
    """Run ``generate_artifacts`` on an exported training graph; returns the artifact directory."""
    import onnx

    from lada_client.training.ort_backend import import_ort_training

    training = import_ort_training()
    artifacts, onnxblock = training.artifacts, training.onnxblock
    export_dir = Path(export_dir)
    out_dir = Path(out_dir or export_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((export_dir / MANIFEST).read_text())
    started = time.perf_counter()
    model = onnx.load(str(export_dir / TRAINING_GRAPH))
    _clamp_ir_version(model)
    trainable = [t["name"] for t in manifest["trainable"]]
    frozen = [i.name for i in model.graph.initializer if i.name not in set(trainable) and _is_weight(i)]
    adamw = manifest["adamw"]
    optimizer = onnxblock.optim.AdamW(
        bias_correction=True, betas=tuple(adamw["betas"]), eps=adamw["eps"], weight_decay=adamw["weight_decay"]
    )
    artifacts.generate_artifacts(
        model,
        requires_grad=trainable,
        frozen_params=frozen,
        loss=None,  # the graph's first output already is the loss
        optimizer=optimizer,
        artifact_directory=str(out_dir),
    )
    _use_torch_adamw(out_dir / "optimizer_model.onnx")
    if out_dir != export_dir:
        for name in (MANIFEST, "tokenizer.json"):
            shutil.copy(export_dir / name, out_dir / name)
    log.info("generated ORT training artifacts in %s in %.1fs", out_dir, time.perf_counter() - started)
    return out_dir


def _is_weight(init: Any) -> bool:
    """Float initializers with a name from the module tree are weights; exporter constants are not."""
    from onnx import TensorProto

    return init.data_type == TensorProto.FLOAT and init.name.startswith("model.")


def _clamp_ir_version(model: Any) -> None:
    """A newer onnx/torch may stamp an IR version onnxruntime 1.19 does not read; opset 17 needs IR 8."""
    model.ir_version = min(model.ir_version, 9)


def _use_torch_adamw(path: Path) -> None:
    """onnxblock emits HF-style AdamW (``adam_mode=1``); switch it to PyTorch's rule (0)."""
    import onnx

    model = onnx.load(str(path))
    found = False
    for node in model.graph.node:
        if node.op_type == "AdamWOptimizer":
            for attr in node.attribute:
                if attr.name == "adam_mode":
                    attr.i = 0
                    found = True
    if not found:
        raise RuntimeError(f"{path} has no AdamWOptimizer node with adam_mode")
    onnx.save(model, str(path))


def build_artifacts(base_dir: Path, out_dir: Path, lora: Any = None, seed: int = 0) -> Path:
    """Both steps in one environment (needs torch + peft and onnxruntime-training)."""
    export_training_graph(base_dir, out_dir, lora, seed)
    return generate_training_artifacts(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lada_client.training.ort_artifacts", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("export", "export the loss graph with torch (train extra)"),
        ("build", "export + generate, where torch and onnxruntime-training are both installed"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--base-model", type=Path, required=True, help="the SLM checkpoint directory (base_model_dir)")
        p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
        p.add_argument("--client-config", type=Path, help="take LoRA shape and seed from this client.json")
        p.add_argument("--seed", type=int, default=None)
    g = sub.add_parser("generate", help="generate_artifacts on an exported graph (onnxruntime-training)")
    g.add_argument("--export-dir", type=Path, required=True, help="directory written by `export`")
    g.add_argument("--out", type=Path, help="artifact directory (default: the export directory)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "generate":
        print(generate_training_artifacts(args.export_dir, args.out))
        return 0
    from lada_client.config import ClientConfig, LoraSettings

    lora, seed = LoraSettings(), 0
    if args.client_config:
        try:
            cfg = ClientConfig.load(args.client_config)
        except ValueError as exc:  # names the file and every bad field
            print(f"ort_artifacts: error: {exc}", file=sys.stderr)
            return 2
        lora, seed = cfg.lora, cfg.distill.seed
    if args.seed is not None:
        seed = args.seed
    if args.command == "export":
        print(export_training_graph(args.base_model, args.out, lora, seed))
    else:
        print(build_artifacts(args.base_model, args.out, lora, seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
