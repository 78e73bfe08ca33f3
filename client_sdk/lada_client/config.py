"""Typed configuration of a LaDa client. One object; JSON file and CLI flags fill it.

Every class here validates itself on construction (types, ranges, choices; see
:mod:`lada_client.common.config_io`): a bad value is a :class:`ConfigError` naming the field, and
the file when it was read from one, before the device enrolls or scores anything.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from lada_client.capabilities import TrainingSupport, can_train_ort, training_support
from lada_client.common.config_io import (
    Bool,
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Str,
    load_json,
    settings,
    validate,
)
from lada_client.common.wire import ClientName, Domain, ModelName
from lada_client.privacy.dp import DPSettings

__all__ = [
    "DEFAULT_BETA",
    "FEATURE_NAMES",
    "ClientConfig",
    "ComputeSettings",
    "ConfigError",
    "CreditKind",
    "DPSettings",
    "DistillSettings",
    "FeatureName",
    "LoraSettings",
    "PrivateSft",
    "RewardKind",
    "RewardSettings",
]

Name = Annotated[Str, Field(min_length=1)]

#: the learnability features a device can compute (scoring/features.py); the one list of them
FeatureName = Literal[
    "slm_path_nll",
    "slm_answer_nll",
    "logp_gap",
    "path_tokens",
    "slm_greedy_correct",
    "local_similarity",
]
FEATURE_NAMES: tuple[FeatureName, ...] = typing.get_args(FeatureName)
CdLogprob = Literal["mean", "sum"]
TrainBackend = Literal["torch", "ort"]
#: how a device measures a round's reward (:attr:`RewardSettings.kind`)
RewardKind = Literal["heldout", "ppl_drop"]
#: how that reward is credited to the allocated samples (:attr:`RewardSettings.credit`)
CreditKind = Literal["gradient", "round"]
#: which private samples a device fine-tunes on (:attr:`ClientConfig.private_sft`)
PrivateSft = Literal["all", "with_rationale"]


@settings
class LoraSettings:
    """LoRA shape. Defaults adapt every projection of a Llama block (tiny models need the capacity)."""

    r: PositiveInt = 8
    alpha: PositiveInt = 16
    dropout: Annotated[NonNegativeFloat, Field(lt=1)] = 0.0
    target_modules: Annotated[tuple[Name, ...], Field(min_length=1)] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )


#: where a torch trainer runs: "auto" (the first CUDA device when there is one, else the CPU), "cpu",
#: "cuda" or "cuda:<index>"
Device = Annotated[Str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")]
#: the base weights' precision: "auto" is bfloat16 on a CUDA device that supports it, else float32
TrainDtype = Literal["auto", "float32", "bfloat16"]


@settings
class ComputeSettings:
    """Where and in which precision a torch LoRA trainer holds its model (peft's adapter weights
    stay float32 either way). bfloat16 halves the base weights' memory and runs the matmuls on a
    GPU's tensor cores; on a CPU it is usually slower than float32, so "auto" keeps float32 there."""

    device: Device = "auto"
    dtype: TrainDtype = "auto"


#: L_CD's β when none is given: the method's 0.1 for summed log-probs; for per-token means the
#: margin is ~1/length as large, and 1.0 is the value measured (docs/method.md, step 4)
DEFAULT_BETA: dict[str, float] = {"sum": 0.1, "mean": 1.0}


@settings
class DistillSettings:
    """One round's optimisation. ``alpha`` weighs L_CD (0 = SFT-only distillation), ``beta`` is
    the L_CD temperature (None: :data:`DEFAULT_BETA` for ``cd_logprob``), ``rejected_temperature``
    samples the learner's own path r^S. ``micro_batch_size`` rows go through one forward and
    backward pass and gradients accumulate up to ``batch_size``: it bounds a device's memory
    (activations are ~0.35 GB per 256-token row for a 135 M-parameter SLM in float32) without
    changing the step.

    ``cd_logprob`` is how L_CD scores a path: ``"mean"`` (default) the mean token log-prob,
    ``"sum"`` the summed one (the joint probability, as the method is written). Why the default
    departs from the method: with sums a path's margin grows with its length and, for tiny SLMs,
    L_CD lowered accuracy against α = 0 under the same allocation; per-token means removed that
    loss (docs/benchmarks.md, learning quality)."""

    alpha: NonNegativeFloat = 0.5
    beta: PositiveFloat | None = None
    cd_logprob: CdLogprob = "mean"
    lr: PositiveFloat = 2e-3
    epochs: NonNegativeInt = 2
    batch_size: PositiveInt = 8
    micro_batch_size: PositiveInt = 4
    max_length: PositiveInt = 256
    rejected_temperature: NonNegativeFloat = 0.8
    drop_correct_rejected: Bool = True
    seed: NonNegativeInt = 0

    @property
    def cd_beta(self) -> float:
        """The β L_CD uses: ``beta`` if set, else the default for ``cd_logprob``."""
        return DEFAULT_BETA[self.cd_logprob] if self.beta is None else self.beta


@settings
class RewardSettings:
    """How the device scores what an allocation did for it (method step 5, as implemented here).

    ``kind="heldout"`` (default) measures the device's own task: ``heldout_size`` private training
    samples are kept out of training, and the reward is the relative drop of their answer NLL —
    the NLL of " The answer is <gold>." after the SLM's own greedy reasoning — from before to after
    the round's update. ``kind="ppl_drop"`` is the method as written: the relative perplexity drop
    on the allocated teacher paths themselves.

    ``credit="gradient"`` (default, torch backend) gives each allocated sample its own reward: the
    cosine between its L_SFT gradient and the held-out answer-NLL gradient at the round's start (a
    first-order estimate of how much a step on it lowers the held-out loss), squashed to (0, 1) as
    ``sigmoid(cos / temperature)``. ``credit="round"`` shares one reward by all samples of a round
    (the paper's common reward). Only these scalars leave the device. See docs/method.md, step 5.
    """

    kind: RewardKind = "heldout"
    credit: CreditKind = "gradient"
    heldout_size: PositiveInt = 32
    temperature: PositiveFloat = 0.05

    @property
    def uses_heldout(self) -> bool:
        return self.kind == "heldout" or self.credit == "gradient"


@settings
class ClientConfig:
    """Everything a device needs to take part in a federation.

    ``state_dir`` holds what the device accumulates: its identity key, enrollment record, LoRA
    adapter and the current ONNX scoring model. ``base_model_dir`` is the SLM checkpoint the LoRA
    adapter sits on (only needed on devices that train).
    """

    coordinator_url: Name
    name: ClientName
    state_dir: Path
    data_dir: Path
    scoring_model: Path
    base_model_dir: Path | None = None
    token: Name | None = None
    ca_cert: Path | None = None  # PEM file to trust for https coordinators (e.g. a self-signed one)
    domain: Domain = ""
    model_name: ModelName = ""  # architecture id; derived from base_model_dir when empty
    features: Annotated[tuple[FeatureName, ...], Field(min_length=1)] = FEATURE_NAMES
    eval_size: NonNegativeInt = 64
    max_new_tokens: PositiveInt = 48  # generation cap for own paths, offers and evaluation
    # after a LoRA step: "swap" weights into the ONNX graph, or "export" the merged model again
    scorer_refresh: Literal["swap", "export"] = "swap"
    max_offers: NonNegativeInt = 64
    batch_size: PositiveInt = 16
    # bound on one scoring call's vocabulary-wide log-probs (scored tokens x vocabulary x 4 bytes);
    # a batch over it is split. Lower it on a device with little memory or a large vocabulary.
    logits_budget_mib: PositiveInt = 1024
    # onnxruntime's CPU arena keeps every peak allocation for reuse: a little faster scoring, but
    # it grows with each new batch shape and never shrinks (Gemma-3-270M, 128 candidates: 7.1 GiB
    # held after scoring with it, 2.2 GiB without; benchmarks/bench_scoring_memory.py). Off: memory
    # comes back.
    cpu_mem_arena: Bool = False
    # CPU threads for scoring (onnxruntime) and training (torch); 0 = the libraries' defaults (all
    # cores). Several SLMs sharing a machine (a local federation) each get their share, or they
    # oversubscribe the cores and every one of them runs slower than its share.
    threads: NonNegativeInt = 0
    request_timeout_s: PositiveFloat = 60.0
    # larger sealed uploads go in resumable chunks of this size (the transport's floor: 1 KiB)
    upload_chunk_bytes: Annotated[PositiveInt, Field(ge=1024)] = 4 * 1024 * 1024
    poll_interval_s: PositiveFloat = 0.5
    max_wait_s: PositiveFloat = 1800.0
    lora: LoraSettings = field(default_factory=LoraSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)
    # Private samples trained with L_SFT: "all" (those without a rationale as bare answers,
    # "The answer is X."), or "with_rationale" only (answer-only samples then serve the reward
    # and local_similarity alone: imitating bare answers can teach an SLM to skip the reasoning
    # the teacher's paths teach). See docs/method.md, step 4.
    private_sft: PrivateSft = "all"
    dp: DPSettings = field(default_factory=DPSettings)
    # LoRA training backend: "torch" (torch + peft on base_model_dir) or "ort" (ONNX Runtime
    # training artifacts in ort_artifacts, no torch; see lada_client/training/ort_backend.py)
    train_backend: TrainBackend = "torch"
    ort_artifacts: Path | None = None
    # where the torch trainer runs: the first GPU if there is one (a Jetson), else the CPU; float32
    # by default, because the "swap" refresh writes the trainer's base weights into the float32
    # ONNX scorer (bfloat16 goes with scorer_refresh "export")
    compute: ComputeSettings = field(default_factory=lambda: ComputeSettings(dtype="float32"))

    @field_validator("coordinator_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        scheme, separator, host = value.partition("://")
        if scheme not in ("http", "https") or not separator or not host:
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value

    @field_validator("features")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({n for n in value if value.count(n) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClientConfig:
        # the ORT backend has no merged checkpoint to export (training/ort_backend.py)
        if self.scorer_refresh == "export" and self.train_backend == "ort":
            raise ValueError(
                "scorer_refresh: 'export' needs train_backend 'torch' (the ort backend only swaps weights)"
            )
        if self.compute.dtype != "float32" and self.scorer_refresh == "swap" and self.train_backend == "torch":
            raise ValueError(
                f"compute.dtype {self.compute.dtype!r} with scorer_refresh 'swap' would write rounded base"
                " weights into the float32 ONNX scorer: use compute.dtype 'float32' or scorer_refresh 'export'"
            )
        return self

    # ------------------------------------------------------------------------- capabilities
    def training_support(self) -> TrainingSupport:
        """Whether this device can run LoRA updates as configured, and if not, why (packages or
        files missing); see :func:`lada_client.capabilities.training_support`."""
        return training_support(self.train_backend, self.base_model_dir, self.ort_artifacts)

    @property
    def can_train(self) -> bool:
        """Training needs, with ``train_backend="torch"``, a base checkpoint and the ``train`` extra
        (torch, transformers and peft) installed; with ``"ort"``, training artifacts and
        onnxruntime-training. Declared at enrollment: a device that cannot train scores only."""
        return self.training_support().can_train

    @property
    def can_train_ort(self) -> bool:
        """onnxruntime.training is importable here (declared at enrollment)."""
        return can_train_ort()

    # --------------------------------------------------------------------------------- JSON
    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientConfig:
        """From a JSON record; a :class:`ConfigError` names every bad field."""
        return validate(cls, data, "client config")

    @classmethod
    def load(cls, path: Path) -> ClientConfig:
        """From a JSON file; a ``ValueError`` (a :class:`ConfigError` for bad fields) names the file."""
        return load_json(cls, path, "client config")

    def with_overrides(self, **changes: Any) -> ClientConfig:
        """A copy with the given fields replaced (validated); ``None`` values are ignored, so CLI
        flags that were not given leave the file's values."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
