"""Typed configuration of a LaDa client. One object; JSON file and CLI flags fill it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lada_client.common.config_io import from_mapping, load_json
from lada_client.privacy.dp import DPSettings


@dataclass(frozen=True)
class LoraSettings:
    """LoRA shape. Defaults adapt every projection of a Llama block (tiny models need the capacity)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


CD_LOGPROBS = ("mean", "sum")
#: L_CD's β when none is given: the method's 0.1 for summed log-probs; for per-token means the
#: margin is ~1/length as large, and 1.0 is the value measured (docs/method.md, step 4)
DEFAULT_BETA = {"sum": 0.1, "mean": 1.0}


@dataclass(frozen=True)
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

    alpha: float = 0.5
    beta: float | None = None
    cd_logprob: str = "mean"
    lr: float = 2e-3
    epochs: int = 2
    batch_size: int = 8
    micro_batch_size: int = 4
    max_length: int = 256
    rejected_temperature: float = 0.8
    drop_correct_rejected: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cd_logprob not in CD_LOGPROBS:
            raise ValueError(f"distill: cd_logprob must be one of {', '.join(CD_LOGPROBS)}, got {self.cd_logprob!r}")
        if self.alpha < 0 or self.cd_beta <= 0 or self.lr <= 0 or self.epochs < 0 or self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("distill: alpha must be >= 0, beta and lr > 0, epochs >= 0, batch_size and micro_batch_size >= 1")

    @property
    def cd_beta(self) -> float:
        """The β L_CD uses: ``beta`` if set, else the default for ``cd_logprob``."""
        return DEFAULT_BETA[self.cd_logprob] if self.beta is None else self.beta


REWARD_KINDS = ("heldout", "ppl_drop")
CREDITS = ("gradient", "round")


@dataclass(frozen=True)
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

    kind: str = "heldout"
    credit: str = "gradient"
    heldout_size: int = 32
    temperature: float = 0.05

    def __post_init__(self) -> None:
        if self.kind not in REWARD_KINDS:
            raise ValueError(f"reward.kind must be one of {', '.join(REWARD_KINDS)}, got {self.kind!r}")
        if self.credit not in CREDITS:
            raise ValueError(f"reward.credit must be one of {', '.join(CREDITS)}, got {self.credit!r}")
        if self.heldout_size < 1 or not self.temperature > 0:
            raise ValueError("reward.heldout_size must be >= 1 and reward.temperature > 0")

    @property
    def uses_heldout(self) -> bool:
        return self.kind == "heldout" or self.credit == "gradient"


PRIVATE_SFT = ("all", "with_rationale")


@dataclass(frozen=True)
class ClientConfig:
    """Everything a device needs to take part in a federation.

    ``state_dir`` holds what the device accumulates: its identity key, enrollment record, LoRA
    adapter and the current ONNX scoring model. ``base_model_dir`` is the SLM checkpoint the LoRA
    adapter sits on (only needed on devices that train).
    """

    coordinator_url: str
    name: str
    state_dir: Path
    data_dir: Path
    scoring_model: Path
    base_model_dir: Path | None = None
    token: str | None = None
    ca_cert: Path | None = None  # PEM file to trust for https coordinators (e.g. a self-signed one)
    domain: str = ""
    model_name: str = ""  # architecture id; derived from base_model_dir when empty
    features: tuple[str, ...] = (
        "slm_path_nll", "slm_answer_nll", "logp_gap", "path_tokens", "slm_greedy_correct", "local_similarity",
    )
    eval_size: int = 64
    max_new_tokens: int = 48  # generation cap for own paths, offers and evaluation
    scorer_refresh: str = "swap"  # after a LoRA step: "swap" weights into the ONNX graph, or "export" again
    max_offers: int = 64
    batch_size: int = 16
    # CPU threads for scoring (onnxruntime) and training (torch); 0 = the libraries' defaults (all
    # cores). Several SLMs sharing a machine (a local federation) each get their share, or they
    # oversubscribe the cores and every one of them runs slower than its share.
    threads: int = 0
    request_timeout_s: float = 60.0
    upload_chunk_bytes: int = 4 * 1024 * 1024  # larger sealed uploads go in resumable chunks of this size
    poll_interval_s: float = 0.5
    max_wait_s: float = 1800.0
    lora: LoraSettings = field(default_factory=LoraSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)
    # Private samples trained with L_SFT: "all" (those without a rationale as bare answers,
    # "The answer is X."), or "with_rationale" only (answer-only samples then serve the reward
    # and local_similarity alone: imitating bare answers can teach an SLM to skip the reasoning
    # the teacher's paths teach). See docs/method.md, step 4.
    private_sft: str = "all"
    dp: DPSettings = field(default_factory=DPSettings)
    # LoRA training backend: "torch" (torch + peft on base_model_dir) or "ort" (ONNX Runtime
    # training artifacts in ort_artifacts, no torch; see lada_client/training/ort_backend.py)
    train_backend: str = "torch"
    ort_artifacts: Path | None = None

    @property
    def can_train(self) -> bool:
        """Training needs, with ``train_backend="torch"``, a base checkpoint and the ``train`` extra
        (torch) installed; with ``"ort"``, training artifacts and onnxruntime-training."""
        import importlib.util

        if self.train_backend == "ort":
            return self.ort_artifacts is not None and self.can_train_ort
        return self.base_model_dir is not None and importlib.util.find_spec("torch") is not None

    @property
    def can_train_ort(self) -> bool:
        """onnxruntime.training is importable here (declared at enrollment)."""
        from lada_client.training.backend import can_train_ort

        return can_train_ort()

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = all cores), got {self.threads}")
        if self.private_sft not in PRIVATE_SFT:
            raise ValueError(f"private_sft must be one of {', '.join(PRIVATE_SFT)}, got {self.private_sft!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientConfig:
        if isinstance(data, dict) and data.get("train_backend", "torch") not in ("torch", "ort"):
            raise ValueError(f"train_backend must be 'torch' or 'ort', not {data['train_backend']!r}")
        return from_mapping(cls, data, "client config")

    @classmethod
    def load(cls, path: Path) -> ClientConfig:
        return load_json(cls, path, "client config")

    def with_overrides(self, **changes: Any) -> ClientConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
