"""Typed configuration of the coordinator: one object, filled from a JSON file and CLI flags."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from lada_client.common.config_io import from_mapping, load_json
from lada_client.config import FEATURE_NAMES, DistillSettings, LoraSettings
from lada_coordinator.aggregation.secure import SecAggSettings
from lada_coordinator.allocation.filter_config import FilterConfig

AllocationMode = Literal["lada", "random", "all", "none"]
HostFramework = Literal["mkt", "cotuning"]


@dataclass(frozen=True)
class CoordinatorConfig:
    """Where things live and how rounds run.

    ``allocation`` is the LaDa on/off switch: ``lada`` uses the learnability filters, ``random``
    allocates the same budget uniformly at random, ``all`` sends every candidate, ``none`` sends
    nothing (local-only baseline: clients train on their private data alone). α = 0 in
    ``client_distill``/``llm_distill`` gives the SFT-only baseline.
    """

    db_path: Path
    state_dir: Path
    llm_dir: Path | None  # None only with teacher_paths and train_llm=False: then no LLM runs here
    public_data: Path
    host: str = "127.0.0.1"
    port: int = 8765
    rounds: int = 3
    min_clients: int = 3
    candidates_per_round: int = 256
    paths_per_question: int = 2
    path_temperature: float = 0.7
    path_fallback: Literal["gold", "drop"] = "gold"
    # Teacher paths computed ahead of time (`lada-coordinator teacher-paths`, llm/paths.py): candidates
    # are drawn from the questions with a verified path in this store, and the LLM is not run for them.
    teacher_paths: Path | None = None
    max_new_tokens: int = 48  # generation cap for LLM paths (longer is never a right answer here)
    offer_questions: int = 64
    allocation: AllocationMode = "lada"
    host_framework: HostFramework = "mkt"
    feature_names: tuple[str, ...] = FEATURE_NAMES
    slm_filter: FilterConfig = field(default_factory=FilterConfig)
    llm_filter: FilterConfig = field(default_factory=lambda: FilterConfig(budget=16))
    llm_distill: DistillSettings = field(default_factory=lambda: DistillSettings(lr=1e-3, epochs=1))
    llm_lora: LoraSettings = field(default_factory=LoraSettings)
    secagg: SecAggSettings = field(default_factory=SecAggSettings)
    train_llm: bool = True
    phase_timeout_s: float = 600.0  # after this, a phase proceeds with the clients that answered ...
    quorum_fraction: float = 0.5  # ... if they are at least this fraction of those expected
    max_body_bytes: int = 16 * 1024 * 1024  # enforced while the body streams in (server/limits.py)
    upload_ttl_s: float = 3600.0  # a chunked upload session expires this long after its last chunk
    upload_max_client_bytes: int = 1024**3  # bytes of open upload sessions one client may hold
    upload_sweep_s: float = 60.0  # how often expired upload sessions and their chunks are deleted
    # Slow or hostile connections (server/limits.py): the request head must arrive within
    # header_timeout_s, the body within body_timeout_s; at most max_connections stay open and
    # max_concurrent_requests are served at once (503 above).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 120.0
    max_connections: int = 2048
    max_concurrent_requests: int = 512
    # A sealed request whose sent_at is further than this from the coordinator's clock is refused
    # (clock_skew, with the coordinator's time, so the device corrects and retries).
    max_clock_skew_s: float = 600.0
    # Failed enrollments per source address: this many per second, in bursts of enroll_burst.
    enroll_failures_per_s: float = 0.5
    enroll_burst: int = 10
    # A device that can score but not train: "skip" its adapter update (nothing is allocated to it),
    # or train it here ("server") on the teacher paths allocated to it, from the base checkpoint of
    # its model named in slm_checkpoints, and send it the adapter (see rounds.py, _server_update).
    score_only_update: str = "skip"
    slm_checkpoints: dict[str, Path] = field(default_factory=dict)
    score_only_distill: DistillSettings = field(default_factory=lambda: DistillSettings(alpha=0.0))
    seed: int = 0

    def __post_init__(self) -> None:
        if self.allocation not in ("lada", "random", "all", "none"):
            raise ValueError(f"allocation must be 'lada', 'random', 'all' or 'none', not {self.allocation!r}")
        if self.host_framework not in ("mkt", "cotuning"):
            raise ValueError(f"host_framework must be 'mkt' or 'cotuning', not {self.host_framework!r}")
        if self.score_only_update not in ("skip", "server"):
            raise ValueError(f"score_only_update must be 'skip' or 'server', not {self.score_only_update!r}")
        object.__setattr__(self, "slm_checkpoints", {str(k): Path(v) for k, v in dict(self.slm_checkpoints).items()})
        if self.score_only_update == "server" and not self.slm_checkpoints:
            raise ValueError(
                "score_only_update='server' needs slm_checkpoints: model name -> base checkpoint directory"
            )
        if self.llm_dir is None and (self.teacher_paths is None or self.train_llm):
            raise ValueError(
                "llm_dir is required unless teacher_paths serves the candidates' paths and train_llm is false"
            )
        if not 0 < self.quorum_fraction <= 1 or self.phase_timeout_s <= 0:
            raise ValueError("quorum_fraction must be in (0, 1] and phase_timeout_s > 0")
        if self.rounds < 1 or self.min_clients < 1 or self.candidates_per_round < 1:
            raise ValueError("rounds, min_clients and candidates_per_round must be >= 1")
        if self.upload_ttl_s <= 0 or self.upload_max_client_bytes < 1 or self.max_body_bytes < 4096:
            raise ValueError("upload_ttl_s and upload_max_client_bytes must be > 0, max_body_bytes >= 4096")
        positive = ("upload_sweep_s", "header_timeout_s", "body_timeout_s", "max_clock_skew_s", "enroll_failures_per_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_connections < 1 or self.max_concurrent_requests < 1 or self.enroll_burst < 1:
            raise ValueError("max_connections, max_concurrent_requests and enroll_burst must be >= 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoordinatorConfig:
        return from_mapping(cls, data, "coordinator config")

    @classmethod
    def load(cls, path: Path) -> CoordinatorConfig:
        return load_json(cls, path, "coordinator config")

    def with_overrides(self, **changes: Any) -> CoordinatorConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
