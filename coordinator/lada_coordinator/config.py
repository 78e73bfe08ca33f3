"""Typed configuration of the coordinator: one object, filled from a JSON file and CLI flags."""

from __future__ import annotations

import json
from dataclasses import asdict, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, Strict, ValidationInfo, field_validator

from lada_client.common.config_io import (
    Bool,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Str,
    load_json,
    settings,
    validate,
)
from lada_client.common.wire import HostFramework
from lada_client.config import FEATURE_NAMES, ComputeSettings, DistillSettings, FeatureName, LoraSettings, Name
from lada_coordinator.aggregation.secure import SecAggSettings
from lada_coordinator.allocation.filter_config import FilterConfig

AllocationMode = Literal["lada", "random", "all", "none"]
Port = Annotated[int, Strict(), Field(ge=0, le=65535)]  # 0: any free port
Fraction = Annotated[float, Strict(), Field(gt=0, le=1, allow_inf_nan=False)]
BodyBytes = Annotated[int, Strict(), Field(ge=4096)]
#: how an LLM server scores a prompt's tokens (:attr:`LLMServerSettings.prompt_logprobs`)
PromptLogprobs = Literal["vllm", "echo", "none"]
#: what one completions request carries (:attr:`LLMServerSettings.batching`)
Batching = Literal["lists", "single"]
ServerUrl = Annotated[str, Strict(), Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]
#: a PostgreSQL connection URL (``CoordinatorConfig.database_url``)
DatabaseUrl = Annotated[str, Strict(), Field(pattern=r"^postgres(ql)?://\S*$")]


@settings
class LLMServerSettings:
    """An inference engine that serves the LLM over the OpenAI-compatible completions API
    (``llm/serving.py``, ``docs/serving.md``): vLLM in production, a llama.cpp server on a CPU.

    ``url`` is the server's root (``http://gpu-host:8000``; a trailing ``/v1`` is accepted) and
    ``model`` the name it serves the LLM under. ``prompt_logprobs`` is how it scores a prompt's
    tokens: ``"vllm"`` (vLLM's ``prompt_logprobs``), ``"echo"`` (``echo`` + ``logprobs``, the
    OpenAI way; vLLM serves both), or ``"none"``: the engine only generates and log-probs are
    computed by the in-process LLM of ``llm_dir`` (llama.cpp's servers: llama-cpp-python's echo
    log-probs are wrong, llama-server has none). ``lora_name``: the LLM's adapter is loaded into
    vLLM (``--enable-lora``) under this name after each LLM update, through its dynamic LoRA
    endpoint, and served from then on; without it the engine serves the base weights.
    ``batching``: ``"lists"`` sends up to ``max_batch`` prompts and ``n`` samples per request
    (vLLM); ``"single"`` one prompt and one sample (llama-cpp-python's server takes one prompt
    and ignores ``n``). ``api_key_env`` names the environment variable holding the engine's API
    key (vLLM ``--api-key``), so that no secret is written in the config file. Connection
    failures are retried ``retries`` times with backoff; a request may take ``timeout_s``.
    """

    url: ServerUrl
    model: Name
    prompt_logprobs: PromptLogprobs = "vllm"
    lora_name: Name | None = None
    batching: Batching = "lists"
    max_batch: PositiveInt = 64
    api_key_env: Name | None = None
    timeout_s: PositiveFloat = 600.0
    retries: NonNegativeInt = 3


#: the LLM's LoRA step: a larger learning rate than a device's, one pass over what SLMs contributed
LLM_DISTILL = DistillSettings(lr=1e-3, epochs=1)
#: the SLM filters: a quarter of each scored selection spread over the pool (FilterConfig's
#: coverage_fraction; 0 is the method as written). Measured on real models over nine seeds, six
#: of them fresh after the value was fixed: above random allocation on eight and above the method
#: as written on every seed compared (docs/method.md, "Filters"; docs/benchmarks.md)
SLM_FILTER = FilterConfig(coverage_fraction=0.25)
#: the LLM's filter: a smaller budget (the LLM trains on what SLMs offer, a few paths a round)
LLM_FILTER = FilterConfig(budget=16)
#: sections whose defaults here differ from their class's own: a partial JSON section keeps these
#: for the fields it leaves out (``{"slm_filter": {"budget": 8}}`` keeps the coverage share)
_SECTION_DEFAULTS: dict[str, Any] = {"slm_filter": SLM_FILTER, "llm_filter": LLM_FILTER, "llm_distill": LLM_DISTILL}


@settings
class CoordinatorConfig:
    """Where things live and how rounds run.

    ``allocation`` is the LaDa on/off switch: ``lada`` uses the learnability filters, ``random``
    allocates the same budget uniformly at random, ``all`` sends every candidate, ``none`` sends
    nothing (local-only baseline: clients train on their private data alone). α = 0 in
    ``client_distill``/``llm_distill`` gives the SFT-only baseline.
    """

    state_dir: Path
    # None only with train_llm=False and the LLM's part served by teacher_paths or llm_server: then
    # no LLM runs in this process
    llm_dir: Path | None
    public_data: Path
    # Where the state lives (stores/): the SQLite file db_path (one coordinator process), or the
    # PostgreSQL database at database_url (postgresql://user@host:5432/lada), which several
    # replicas behind one load balancer share (docs/deployment.md). One of the two, not both.
    db_path: Path | None = None
    database_url: DatabaseUrl | None = None
    host: Name = "127.0.0.1"
    port: Port = 8765
    rounds: PositiveInt = 3
    min_clients: PositiveInt = 3
    candidates_per_round: PositiveInt = 256
    paths_per_question: PositiveInt = 2
    path_temperature: NonNegativeFloat = 0.7
    path_fallback: Literal["gold", "drop"] = "gold"
    # Teacher paths computed ahead of time (`lada-coordinator teacher-paths`, llm/paths.py): candidates
    # are drawn from the questions with a verified path in this store, and the LLM is not run for them.
    teacher_paths: Path | None = None
    # The LLM's generation and log-probs on an inference engine (vLLM) instead of in this process;
    # its LoRA training stays here (llm_dir), and each update is loaded into the engine.
    llm_server: LLMServerSettings | None = None
    max_new_tokens: PositiveInt = 48  # generation cap for LLM paths (longer is never a right answer here)
    offer_questions: NonNegativeInt = 64
    # The LLM direction's rehearsal: per SLM path the LLM trains on, this many of the round's own
    # verified teacher paths join its LoRA step as plain L_SFT, so a few student paths do not
    # overwrite what the teacher already answers (0 = off; docs/method.md, LLM direction).
    llm_rehearsal: NonNegativeFloat = 0.0
    allocation: AllocationMode = "lada"
    host_framework: HostFramework = "mkt"
    feature_names: Annotated[tuple[FeatureName, ...], Field(min_length=1)] = FEATURE_NAMES
    slm_filter: FilterConfig = field(default_factory=lambda: SLM_FILTER)
    llm_filter: FilterConfig = field(default_factory=lambda: LLM_FILTER)
    llm_distill: DistillSettings = field(default_factory=lambda: LLM_DISTILL)
    llm_lora: LoraSettings = field(default_factory=LoraSettings)
    # where the in-process LLM runs and in which precision: by default the first GPU in bfloat16,
    # or the CPU in float32 (ComputeSettings; --llm-device, --llm-dtype)
    llm_compute: ComputeSettings = field(default_factory=ComputeSettings)
    secagg: SecAggSettings = field(default_factory=SecAggSettings)
    train_llm: Bool = True
    phase_timeout_s: PositiveFloat = 600.0  # after this, a phase proceeds with the clients that answered ...
    quorum_fraction: Fraction = 0.5  # ... if they are at least this fraction of those expected
    max_body_bytes: BodyBytes = 16 * 1024 * 1024  # enforced while the body streams in (server/limits.py)
    upload_ttl_s: PositiveFloat = 3600.0  # a chunked upload session expires this long after its last chunk
    upload_max_client_bytes: PositiveInt = 1024**3  # bytes of open upload sessions one client may hold
    upload_sweep_s: PositiveFloat = 60.0  # how often expired upload sessions and their chunks are deleted
    # SQLite: requests that arrive during a commit share the next one (stores/sqlite.py); False: one
    # fsync per request. (PostgreSQL shares WAL flushes among concurrent commits by itself.)
    group_commit: Bool = True
    # Slow or hostile connections (server/limits.py): the request head must arrive within
    # header_timeout_s, the body within body_timeout_s; at most max_connections stay open and
    # max_concurrent_requests are served at once (503 above).
    header_timeout_s: PositiveFloat = 10.0
    body_timeout_s: PositiveFloat = 120.0
    max_connections: PositiveInt = 2048
    max_concurrent_requests: PositiveInt = 512
    # A sealed request whose sent_at is further than this from the coordinator's clock is refused
    # (clock_skew, with the coordinator's time, so the device corrects and retries).
    max_clock_skew_s: PositiveFloat = 600.0
    # Failed enrollments per source address: this many per second, in bursts of enroll_burst.
    enroll_failures_per_s: PositiveFloat = 0.5
    enroll_burst: PositiveInt = 10
    # A device that can score but not train: "skip" its adapter update (nothing is allocated to it),
    # or train it here ("server") on the teacher paths allocated to it, from the base checkpoint of
    # its model named in slm_checkpoints, and send it the adapter (see rounds.py, _server_update).
    score_only_update: Literal["skip", "server"] = "skip"
    slm_checkpoints: dict[Str, Path] = field(default_factory=dict)
    score_only_distill: DistillSettings = field(default_factory=lambda: DistillSettings(alpha=0.0))
    seed: NonNegativeInt = 0

    @field_validator(*_SECTION_DEFAULTS, mode="before")
    @classmethod
    def _section_defaults(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, dict):
            return {**asdict(_SECTION_DEFAULTS[str(info.field_name)]), **value}
        return value

    def __post_init__(self) -> None:
        """What one field's type cannot say (each field's own type and range is checked before)."""
        if self.database_url is not None and self.db_path is not None:
            raise ValueError(
                "db_path and database_url name two databases: give db_path (SQLite, one coordinator process)"
                " or database_url (PostgreSQL, shared by replicas), not both"
            )
        if self.database_url is None and self.db_path is None:
            raise ValueError("db_path (a SQLite file) or database_url (postgresql://…) is required")
        if self.score_only_update == "server" and not self.slm_checkpoints:
            raise ValueError(
                "score_only_update='server' needs slm_checkpoints: model name -> base checkpoint directory"
            )
        if self.llm_dir is None and (self.train_llm or (self.teacher_paths is None and self.llm_server is None)):
            raise ValueError(
                "llm_dir is required unless train_llm is false and teacher_paths or llm_server serves the"
                " candidates' paths"
            )
        if (
            self.llm_dir is None
            and self.teacher_paths is None
            and self.llm_server is not None
            and self.llm_server.prompt_logprobs == "none"
        ):
            raise ValueError(
                "llm_server.prompt_logprobs='none' (--llm-server-logprobs none): the engine cannot score"
                " the teacher's paths, and without llm_dir no LLM here can; give llm_dir, or an engine"
                " that scores prompts ('vllm' or 'echo')"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoordinatorConfig:
        return validate(cls, data, "coordinator config")

    @classmethod
    def load(cls, path: Path, **given: Any) -> CoordinatorConfig:
        """The config of the file at ``path``; ``given`` fields that are not None replace the file's
        before it is checked, so a flag may complete a file (``--database-url`` for a file that names
        no ``db_path``)."""
        return load_json(cls, path, "coordinator config", {k: v for k, v in given.items() if v is not None})

    def with_overrides(self, **changes: Any) -> CoordinatorConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
