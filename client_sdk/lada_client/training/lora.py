"""The LoRA step: one round's local update of a model with L = L_SFT + α·L_CD.

Used by the client on its SLM and, mirrored, by the coordinator on its LLM. Needs the ``train``
extra (torch, transformers, peft). The adapter is saved and loaded with peft, so a checkpoint
written here loads in any peft tool, and the base weights never change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lada_client.common.wire import LoraFactor
from lada_client.config import ComputeSettings, DistillSettings, LoraSettings
from lada_client.models.checkpoint import load_causal_lm
from lada_client.models.encoding import encode_pairs
from lada_client.models.tokenizer import SpecialTokens
from lada_client.training.backend import (
    PreferencePair,
    TrainReport,
    batch_schedule,
    path_weights,
)  # torch-free, shared with ORT
from lada_client.training.losses import (
    contrastive_distillation_loss,
    sequence_logprob,
    sft_loss,
    token_logprobs,
)

log = logging.getLogger(__name__)


def placement(compute: ComputeSettings) -> tuple[torch.device, torch.dtype]:
    """The torch device and base-weight dtype ``compute`` asks for on this machine; a device it
    does not have is a ``ValueError`` that says so, not a CUDA stack trace at the first step."""
    if compute.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(compute.device)
        if device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
        ):
            seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise ValueError(
                f"device {compute.device!r}: torch {torch.__version__} sees {seen} CUDA device(s) here;"
                " use 'auto' or 'cpu'"
            )
    if compute.dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return device, torch.bfloat16 if bf16 else torch.float32
    return device, getattr(torch, compute.dtype)


class LoraTrainer:
    """Holds a base model with a trainable LoRA adapter for one party.

    ``compute`` places the model (:func:`placement`): on a GPU the base weights are bfloat16 by
    default while peft keeps the adapter's weights in float32, so the optimiser's updates are not
    rounded away; whatever leaves the trainer (adapter vectors, factors, log-probs) is float32 on
    the CPU."""

    def __init__(
        self,
        base_dir: Path,
        adapter_dir: Path | None = None,
        lora: LoraSettings = LoraSettings(),
        seed: int = 0,
        compute: ComputeSettings = ComputeSettings(),
    ) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model

        self.device, self.dtype = placement(compute)
        model, self.tokenizer = load_causal_lm(Path(base_dir), adapter_dir, self.dtype)
        if not isinstance(model, PeftModel):
            config = LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            )
            torch.manual_seed(seed)  # same seed → same LoRA init, so co-tuned adapters start aligned
            model = get_peft_model(model, config)  # autocast_adapter_dtype: float32 LoRA weights
        self.model = model.to(self.device)
        self.base_dir = Path(base_dir)
        self.special = SpecialTokens.from_model_config(model.config)

    def _lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in sorted(self.model.named_parameters()) if "lora_" in n]

    def adapter_vector(self) -> np.ndarray:
        """All LoRA weights flattened in a fixed order (what co-tuning averages)."""
        return torch.cat([p.detach().reshape(-1) for p in self._lora_parameters()]).cpu().numpy().astype("float64")

    def load_adapter_vector(self, vector: np.ndarray) -> None:
        params = self._lora_parameters()
        total = sum(p.numel() for p in params)
        if vector.shape != (total,):
            raise ValueError(f"adapter vector has {vector.shape} values; this adapter has {total}")
        with torch.no_grad():
            offset = 0
            for p in params:
                p.copy_(torch.from_numpy(vector[offset : offset + p.numel()].reshape(p.shape)).to(p.device, p.dtype))
                offset += p.numel()

    def save(self, adapter_dir: Path) -> Path:
        adapter_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(adapter_dir))
        return adapter_dir

    def _batch(
        self, prompts: Sequence[str], completions: Sequence[str], max_length: int, cd_logprob: str = "sum"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids, attention mask and per-token weights (the completion mask, or L_CD's path weights)."""
        enc = encode_pairs(self.tokenizer, prompts, completions, max_length, self.special)
        return (
            torch.from_numpy(enc.input_ids).to(self.device),
            torch.from_numpy(enc.attention_mask).to(self.device),
            torch.from_numpy(path_weights(enc.completion_mask, cd_logprob)).to(self.device),
        )

    def _path_scores(
        self, prompts: Sequence[str], completions: Sequence[str], max_length: int, cd_logprob: str
    ) -> torch.Tensor:
        """Path scores (summed or mean token log-probs, as L_CD uses them) with gradients."""
        ids, mask, weights = self._batch(prompts, completions, max_length, cd_logprob)
        return sequence_logprob(token_logprobs(self.model, ids, mask, weights), weights)

    def _reference_scores(
        self, prompts: Sequence[str], completions: Sequence[str], max_length: int, cd_logprob: str
    ) -> torch.Tensor:
        """Path scores under the current weights, without gradients (π_ref at round start)."""
        self.model.eval()
        with torch.no_grad():
            return self._path_scores(prompts, completions, max_length, cd_logprob)

    def sequence_logprobs(
        self, prompts: Sequence[str], completions: Sequence[str], max_length: int = 256
    ) -> torch.Tensor:
        """Summed path log-probs under the current weights, without gradients (on the CPU)."""
        return self._reference_scores(prompts, completions, max_length, "sum").cpu()

    def train_round(
        self,
        teacher: Sequence[tuple[str, str]],
        pairs: Sequence[PreferencePair],
        private: Sequence[tuple[str, str]],
        settings: DistillSettings,
        progress: Callable[[int, int], None] | None = None,
    ) -> TrainReport:
        """Fit the adapter on the allocated teacher paths, the pairs and private data.

        ``teacher`` and ``private`` are (prompt, completion) pairs for L_SFT. Each epoch is one
        shuffled pass over their union, so a round trains on all private data whatever the
        allocation: allocated teacher paths add steps on top of what local-only training does
        instead of replacing it (otherwise a small allocation would also mean less training on
        the client's own task). ``pairs`` feed L_CD against references computed once, before any
        step, spread evenly over the round's batches.
        """
        report = TrainReport(n_pairs=len(pairs))
        if not teacher and not private:
            return report
        ref_chosen = ref_rejected = None
        if pairs and settings.alpha > 0:
            prompts = [p.prompt for p in pairs]
            ref_chosen = self._reference_scores(
                prompts, [p.chosen for p in pairs], settings.max_length, settings.cd_logprob
            )
            ref_rejected = self._reference_scores(
                prompts, [p.rejected for p in pairs], settings.max_length, settings.cd_logprob
            )
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=settings.lr)
        self.model.train()
        schedule = list(batch_schedule(teacher, pairs, private, settings, with_pairs=ref_chosen is not None))
        for step, (items, sel) in enumerate(schedule):
            if progress is not None:
                progress(step, len(schedule))
            optimizer.zero_grad()
            micro = settings.micro_batch_size
            # L_SFT is a token mean over the whole batch: each micro-batch's share is its token sum over the
            # batch's token count, so the accumulated gradient is the full batch's
            ids, mask, cmask = self._batch([p for p, _ in items], [c for _, c in items], settings.max_length)
            tokens = cmask.sum().clamp(min=1.0)
            loss_sft = torch.zeros((), device=self.device)
            for start in range(0, len(items), micro):
                rows = slice(start, start + micro)
                part = -(token_logprobs(self.model, ids[rows], mask[rows], cmask[rows]) * cmask[rows]).sum() / tokens
                part.backward()
                loss_sft = loss_sft + part.detach()
            loss_cd = torch.tensor(float("nan"))
            if sel is not None:  # only with reference scores (with_pairs)
                assert ref_chosen is not None and ref_rejected is not None
                loss_cd = torch.zeros((), device=self.device)
                half = max(1, micro // 2)  # each pair is two sequences
                for start in range(0, len(sel), half):
                    part_ids = sel[start : start + half]
                    batch_pairs = [pairs[i] for i in part_ids]
                    batch_prompts = [p.prompt for p in batch_pairs]
                    pol_c = self._path_scores(
                        batch_prompts, [p.chosen for p in batch_pairs], settings.max_length, settings.cd_logprob
                    )
                    pol_r = self._path_scores(
                        batch_prompts, [p.rejected for p in batch_pairs], settings.max_length, settings.cd_logprob
                    )
                    index = torch.tensor(part_ids, device=self.device)
                    share = len(part_ids) / len(sel)
                    cd = contrastive_distillation_loss(
                        pol_c, pol_r, ref_chosen[index], ref_rejected[index], settings.cd_beta
                    )
                    (settings.alpha * share * cd).backward()
                    loss_cd = loss_cd + share * cd.detach()
            optimizer.step()
            report.steps += 1
            report.sft_loss = loss_sft.item()
            report.cd_loss = loss_cd.item()
            report.history.append({"sft": report.sft_loss, "cd": report.cd_loss})
        if progress is not None:
            progress(len(schedule), len(schedule))
        self.model.eval()
        log.info(
            "LoRA round: %d steps, L_SFT=%.3f, L_CD=%.3f, %d pairs",
            report.steps,
            report.sft_loss,
            report.cd_loss,
            len(pairs),
        )
        return report

    def gradient_alignment(
        self,
        samples: Sequence[tuple[str, str]],
        reference: Sequence[tuple[str, str]],
        max_length: int = 256,
        batch_size: int = 4,
    ) -> np.ndarray:
        """Cosine between each sample's L_SFT gradient and the mean L_SFT gradient of ``reference``,
        over the LoRA weights at their current values (dropout off).

        A positive cosine means a small step on the sample lowers the reference loss (to first
        order; the TracIn view of a sample's influence). Used as the per-sample credit of the
        held-out reward (``RewardSettings.credit="gradient"``): ``reference`` is the held-out
        answer-NLL pairs, ``samples`` the allocated teacher paths.
        """
        if not samples:
            return np.zeros(0)
        params = self._lora_parameters()
        was_training = self.model.training
        self.model.eval()
        try:
            ref = torch.zeros(sum(p.numel() for p in params), device=self.device)
            for start in range(0, len(reference), batch_size):
                chunk = reference[start : start + batch_size]
                ids, mask, cmask = self._batch([p for p, _ in chunk], [c for _, c in chunk], max_length)
                loss = sft_loss(token_logprobs(self.model, ids, mask, cmask), cmask)
                ref += torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]) * (
                    len(chunk) / len(reference)
                )
            offsets = np.cumsum([0] + [p.numel() for p in params])
            ref_parts = {id(p): ref[offsets[i] : offsets[i + 1]].view_as(p) for i, p in enumerate(params)}
            out: list[float] = []
            for start in range(0, len(samples), batch_size):
                dots, norms = self._per_sample_dot(samples[start : start + batch_size], ref_parts, max_length)
                denominator = norms.sqrt() * ref.norm()
                out += [float(d / n) if n > 0 else 0.0 for d, n in zip(dots, denominator)]
        finally:
            self.model.train(was_training)
            self.model.zero_grad(set_to_none=True)
        return np.asarray(out)

    def _per_sample_dot(
        self,
        pairs: Sequence[tuple[str, str]],
        ref: dict[int, torch.Tensor],
        max_length: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For each pair of one batch: (⟨its L_SFT gradient, ref⟩, ‖its gradient‖²) over the LoRA weights,
        from one forward and one backward pass. A LoRA factor is a linear map ``y = x Wᵀ``, so a
        sample's gradient of ``W`` is ``Σ_t δ_tᵀ x_t`` over its own tokens: hooks keep each factor's
        input ``x`` and output gradient ``δ`` per row (a forward hook and a hook on its output)
        instead of letting autograd sum them over the batch."""
        weights = set(ref)  # ids of the LoRA factor weights
        dots = torch.zeros(len(pairs), device=self.device)
        norms = torch.zeros(len(pairs), device=self.device)

        def on_forward(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x, target = inputs[0].detach(), ref[id(module.weight)]

            def on_output_grad(delta: torch.Tensor) -> None:
                g = torch.einsum("bto,bti->boi", delta, x)  # per-sample gradient of the factor's weight
                dots.add_((g * target).sum(dim=(1, 2)))
                norms.add_((g * g).sum(dim=(1, 2)))

            output.register_hook(on_output_grad)

        hooks = [
            module.register_forward_hook(on_forward)
            for module in self.model.modules()
            if isinstance(module, torch.nn.Linear) and id(module.weight) in weights and module.bias is None
        ]
        try:
            ids, mask, cmask = self._batch([p for p, _ in pairs], [c for _, c in pairs], max_length)
            lp = token_logprobs(self.model, ids, mask, cmask)
            per_row = -(lp * cmask).sum(dim=1) / cmask.sum(dim=1).clamp(min=1.0)  # each row's own mean NLL
            per_row.sum().backward()  # d(sum)/d(row b's activations) = d(loss_b)/d(...)
        finally:
            for h in hooks:
                h.remove()
        self.model.zero_grad(set_to_none=True)
        return dots, norms

    def _lora_layers(self) -> Iterator[tuple[str, Any]]:  # (name, peft LoraLayer)
        """The LoRA-adapted projections, each with its weight's name in the base checkpoint."""
        from peft.tuners.lora import LoraLayer

        for name, module in self.model.named_modules():
            if isinstance(module, LoraLayer):
                yield name.removeprefix("base_model.model.") + ".weight", module

    def projection_weights(self, merged: bool = True) -> dict[str, np.ndarray]:
        """Weights of the LoRA-adapted projections, named as in the base checkpoint: base only, or
        merged with the adapter (``W + scale·B·A``) — what the ONNX weight swap writes."""
        out: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for name, module in self._lora_layers():
                w = module.base_layer.weight.detach().float()
                if merged:
                    for adapter in module.active_adapters:
                        w = w + module.get_delta_weight(adapter).float()
                out[name] = w.cpu().numpy()
        return out

    def lora_factors(self) -> list[LoraFactor]:
        """The adapter as per-projection factors (A, B, scale) with digests of the base weights:
        what a score-only device needs to merge it into its ONNX scorer
        (:func:`~lada_client.models.weight_swap.apply_lora_factors`)."""
        from lada_client.models.weight_swap import encode_array, weight_digests

        out: list[LoraFactor] = []
        with torch.no_grad():
            for name, module in self._lora_layers():
                digest, digest_t = weight_digests(module.base_layer.weight.detach().float().cpu().numpy())
                for adapter in module.active_adapters:
                    a = module.lora_A[adapter].weight.detach().float().cpu().numpy()
                    b = module.lora_B[adapter].weight.detach().float().cpu().numpy()
                    out.append(
                        LoraFactor(
                            name=name,
                            a=encode_array(a),
                            a_shape=a.shape,
                            b=encode_array(b),
                            b_shape=b.shape,
                            scale=float(module.scaling[adapter]),
                            digest=digest,
                            digest_t=digest_t,
                        )
                    )
        return out

    def merged_checkpoint(self, out_dir: Path) -> Path:
        """Write base+adapter merged to ``out_dir`` (for ONNX export: float32, whatever this
        trainer's precision), leaving this trainer intact."""
        import copy

        merged = copy.deepcopy(self.model).merge_and_unload().to("cpu", torch.float32)
        out_dir.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(str(out_dir))
        self.tokenizer.save_pretrained(str(out_dir))
        return out_dir
